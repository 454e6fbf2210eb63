#!/usr/bin/python3
"""Capture correctness through cdp-agent, with an independent NBD client.

    capture_check.py write LOG NWRITES QD SECTORS URI...
        Random writes (1-16 sectors, 512-byte aligned, overlapping) at queue
        depth QD over the NBD exports URI... (one per volume), through
        libnbd. Every sector written carries (write id, sector index,
        volume); each write's submit and completion times (monotonic, as
        seen by this client) go to LOG as JSON lines. Every 16th write waits
        for every earlier one to complete first, so some writes are ordered
        across volumes by construction.

    capture_check.py verify LOG IMG...
        Checks that the images (one per volume: a restored point) are an
        image a power cut could have left:
        - no torn write: if a sector shows write W, every other sector of W
          shows W or a write that was not finished before W started;
        - order: if write B shows anywhere and write A completed before B
          was submitted, every sector of A shows A or a write not finished
          before A started (also across volumes).
        Prints "ok: N writes visible".

    capture_check.py crash LOG QD SECTORS DEADLINE READY URI
        The client side of a crash of the server (the test SIGKILLs the
        agent): random stamped writes at queue depth QD over the first
        SECTORS sectors of URI until the export fails; READY is created once
        64 writes were acknowledged (the test kills then). From the first
        failure on nothing new is submitted, and every write still in
        flight must complete with an error within DEADLINE seconds: an
        error, never success after the connection died, never a hang. LOG
        gets every write as a JSON line with "ok" (acknowledged) or "failed"
        and its end time (for a failed one, when the error was seen). Fails
        when no write was in flight at the crash, or the export never fails
        (120 s).

    capture_check.py acked LOG IMG...
        Every write LOG says was acknowledged is in the images (a restored
        point, or the sources): each of its sectors shows it, or a write of
        LOG that had not finished (acknowledged or failed) before it
        started. Sectors of other content (the volume's own data) never
        count as a write. Prints "ok: N acknowledged writes present".
"""
import errno
import os
import json
import random
import struct
import sys
import time

SECTOR = 512
STAMP = struct.Struct("<QII")    # write id, sector index, volume


def stamp_buf(wid, vol, n):
    out = bytearray(n * SECTOR)
    for i in range(n):
        s = i * SECTOR
        STAMP.pack_into(out, s, wid, i, vol)
        out[s + STAMP.size:s + SECTOR] = bytes([wid & 0xff]) * (SECTOR - STAMP.size)
    return bytes(out)


def write(log, nwrites, qd, sectors, uris):
    import nbd
    hs = []
    for u in uris:
        h = nbd.NBD()
        h.connect_uri(u)
        hs.append(h)
    rng = random.Random(7)
    inflight = {}   # (vol, cookie) -> record
    recs = []

    def reap(block):
        while True:
            done = False
            for v, h in enumerate(hs):
                while True:
                    try:
                        c = h.aio_peek_command_completed()
                    except nbd.Error:   # none completed (or none in flight)
                        c = 0
                    if not c:
                        break
                    h.aio_command_completed(c)
                    r = inflight.pop((v, c))
                    r["end"] = time.monotonic_ns()
                    done = True
            if done or not block or not inflight:
                return
            for v, h in enumerate(hs):
                if any(k[0] == v for k in inflight):
                    h.poll(10)

    for wid in range(1, nwrites + 1):
        if wid % 16 == 0:
            while inflight:
                reap(True)
        while len(inflight) >= qd:
            reap(True)
        vol = rng.randrange(len(hs))
        n = rng.randint(1, 16)
        off = rng.randrange(0, sectors - n) * SECTOR
        r = {"id": wid, "vol": vol, "off": off, "n": n, "start": time.monotonic_ns()}
        c = hs[vol].aio_pwrite(nbd.Buffer.from_bytearray(bytearray(stamp_buf(wid, vol, n))),
                               off)
        inflight[(vol, c)] = r
        recs.append(r)
        reap(False)
    while inflight:
        reap(True)
    for h in hs:
        h.flush()
        h.shutdown()
    with open(log, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def crash(log, qd, sectors, deadline, ready, uri):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    rng = random.Random(11)
    inflight = {}   # cookie -> record
    recs = []
    acked = 0
    t0 = time.monotonic()
    failed_at = None    # monotonic s of the first failure
    died_inflight = 0   # writes that were in flight and failed
    late_ok = []        # acknowledged after a failure was seen

    def reap():
        """Retires what completed since the last poll: successes first (libnbd
        only moves inside poll, so they were read before any failure)."""
        nonlocal acked, failed_at, died_inflight
        oks, errs = [], []
        for c in list(inflight):
            try:
                if h.aio_command_completed(c):
                    oks.append(c)
            except nbd.Error as e:
                errs.append((c, e))
        for c in oks:
            r = inflight.pop(c)
            r["end"] = time.monotonic_ns()
            r["ok"] = True
            acked += 1
            if failed_at is not None:
                late_ok.append(r["id"])
        for c, e in errs:
            r = inflight.pop(c)
            r["end"] = time.monotonic_ns()
            r["ok"] = False
            r["error"] = errno.errorcode.get(e.errnum or 0, str(e))
        if errs:
            died_inflight += len(errs)
            failed_at = failed_at or time.monotonic()
        if acked >= 64 and not os.path.exists(ready):
            open(ready, "w").close()

    wid = 0
    while failed_at is None:
        if time.monotonic() - t0 > 120:
            sys.exit("FAIL: the export did not fail within 120 s (was the server killed?)")
        while len(inflight) < qd and failed_at is None:
            wid += 1
            n = rng.randint(1, 16)
            off = rng.randrange(0, sectors - n) * SECTOR
            r = {"id": wid, "vol": 0, "off": off, "n": n, "start": time.monotonic_ns()}
            recs.append(r)
            try:
                c = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(stamp_buf(wid, 0, n))),
                                 off)
            except nbd.Error as e:  # the handle is closed: refused, never sent
                r["ok"] = False
                r["end"] = time.monotonic_ns()
                r["error"] = "refused: " + str(e)
                failed_at = failed_at or time.monotonic()
                break
            inflight[c] = r
        try:
            h.poll(100)
        except nbd.Error:
            pass    # nothing to poll for: the connection is closed
        reap()
    # Every write still in flight must now fail, within the deadline.
    while inflight and time.monotonic() - failed_at < deadline:
        try:
            h.poll(100)
        except nbd.Error:
            time.sleep(0.01)    # closed: completions are retired, not polled
        reap()
    with open(log, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    if inflight:
        sys.exit(f"FAIL: {len(inflight)} writes still in flight {deadline} s after the "
                 f"export failed: the client hangs")
    if died_inflight == 0:
        sys.exit("FAIL: no write was in flight when the export failed")
    if late_ok:
        sys.exit(f"FAIL: writes {late_ok[:5]} succeeded after the export had failed")
    errs = sorted({r["error"] for r in recs if not r["ok"]})
    print(f"ok: {acked} writes acknowledged, {died_inflight} in flight at the crash failed "
          f"({', '.join(errs)}) within {time.monotonic() - failed_at:.3f} s")


def acked_present(log, imgs):
    recs = {}
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            recs[r["id"]] = r
    data = [open(p, "rb").read() for p in imgs]

    def shows(vol, off):
        wid, idx, v = STAMP.unpack_from(data[vol], off)
        r = recs.get(wid)
        if r is None or v != vol or r["vol"] != vol or off != r["off"] + idx * SECTOR:
            return None     # not a write of LOG: the volume's own content
        return r

    n = 0
    for a in recs.values():
        if not a["ok"]:
            continue
        n += 1
        for i in range(a["n"]):
            s = shows(a["vol"], a["off"] + i * SECTOR)
            if s is None or (s is not a and s["end"] < a["start"]):
                sys.exit(f"FAIL: acknowledged write {a['id']} (volume {a['vol']} offset "
                         f"{a['off']}) is missing: sector {i} shows "
                         f"{'write %d' % s['id'] if s else 'other data'}")
    print(f"ok: {n} acknowledged writes present")


def verify(log, imgs):
    recs = {}
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            recs[r["id"]] = r
    data = [open(p, "rb").read() for p in imgs]

    def shows(vol, off):
        wid, idx, v = STAMP.unpack_from(data[vol], off)
        if wid == 0 and idx == 0 and v == 0:
            return None
        r = recs.get(wid)
        if r is None or v != vol or r["vol"] != vol or off != r["off"] + idx * SECTOR:
            sys.exit(f"FAIL: volume {vol} offset {off}: a stamp no write put there "
                     f"({wid}, {idx}, {v})")
        return r

    def ok_over(sector_shows, w):
        """Whether a sector of @w may show @sector_shows (w itself or not older)."""
        return sector_shows is not None and (sector_shows is w or
                                             sector_shows["end"] >= w["start"])

    visible = {}
    for r in recs.values():
        for i in range(r["n"]):
            s = shows(r["vol"], r["off"] + i * SECTOR)
            if s is not None:
                visible[s["id"]] = s
    for w in visible.values():
        for i in range(w["n"]):
            s = shows(w["vol"], w["off"] + i * SECTOR)
            if not ok_over(s, w):
                sys.exit(f"FAIL: torn write {w['id']}: sector {i} shows "
                         f"{s['id'] if s else 'nothing'}")
    # Order: the newest visible write's start bounds what must be there.
    if visible:
        latest_start = max(w["start"] for w in visible.values())
        for a in recs.values():
            if a["end"] >= latest_start:
                continue
            for i in range(a["n"]):
                s = shows(a["vol"], a["off"] + i * SECTOR)
                if not ok_over(s, a):
                    b = max(visible.values(), key=lambda w: w["start"])
                    sys.exit(f"FAIL: write {b['id']} (volume {b['vol']}) is in the image but "
                             f"write {a['id']} (volume {a['vol']}), finished before it "
                             f"started, is not (sector {i} shows "
                             f"{s['id'] if s else 'nothing'})")
    print(f"ok: {len(visible)} writes visible")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "crash":
        crash(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6],
              sys.argv[7])
    elif sys.argv[1] == "acked":
        acked_present(sys.argv[2], sys.argv[3:])
    else:
        sys.exit("usage: capture_check.py write|verify|crash|acked ...")
