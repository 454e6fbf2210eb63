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
"""
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
    else:
        sys.exit("usage: capture_check.py write|verify ...")
