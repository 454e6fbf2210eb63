#!/usr/bin/env bash
# capture/nbd against independent clients: tests/unit/nbd_serve serves a
# 64 MiB file (capture/export_file) on a unix socket and, read-only, on TCP
# loopback, and real clients use it:
#  1. nbdinfo: size, block sizes, flags (no multi-conn), the export list;
#  2. qemu-io: patterns written and verified at 512-aligned offsets that are
#     not 4 KiB-aligned, zeroing, discard, flush; the bytes checked in the file;
#  3. qemu-img info, and qemu-img convert into the export and back out (cmp);
#  4. nbdcopy both ways (cmp);
#  5. fio's nbd engine: a random-write job with crc32c verification;
#  6. the read-only export over TCP: writes refused, reads fine;
#  7. nbdfuse + a direct-I/O loop device + ext4: mkfs, files, sync, umount,
#     e2fsck -fn, remount and checksums (root with /dev/fuse only); and a
#     block device (a loop device) served directly (root only);
#  8. bad input from raw Python sockets: bad magic (that connection drops,
#     others are served), unknown command (NBD_EINVAL, connection usable), past
#     the end (NBD_ENOSPC for a write, NBD_EINVAL for a read), an oversized
#     write (payload skipped, NBD_EOVERFLOW, usable; too long to skip: dropped),
#     a disconnect mid-payload, and requests left in flight;
#  9. SIGTERM with a client connected: nbd_serve exits 0.
# Every process started here is ended by PID, every mount/loop/fuse undone,
# also on failure; every wait is bounded.
source "$(dirname "$0")/lib.sh"
requires qemu-io qemu-img nbdinfo nbdcopy fio cmp timeout
[ -x /usr/bin/python3 ] || skip "requires /usr/bin/python3"

SERVE=$CDP_BUILD/tests/nbd_serve
[ -x "$SERVE" ] || die "build first: $SERVE"
SOCK=$T/nbd.sock
IMG=$T/disk.img
SIZE=$((64 * 1024 * 1024))
URI="nbd+unix:///vol0?socket=$SOCK"
QOPTS="driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$SOCK,file.export=vol0"
py=/usr/bin/python3

dump_logs() {
	local f
	for f in "$T"/*.log; do
		[ -s "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
	done
	true
}
cleanup_fn dump_logs

truncate -s "$SIZE" "$IMG"
start_daemon -P "$T/serve.pid" "$SERVE" --listen "unix:$SOCK" --name vol0 "$IMG"
wait_for 20 grep -q "^ready port=" "$T/nbd_serve.log" || die "nbd_serve did not start"
SERVE_PID=$(cat "$T/serve.pid")
alive() { kill -0 "$SERVE_PID" 2>/dev/null || die "nbd_serve died: $(tail -n 5 "$T/nbd_serve.log")"; }

# 1. nbdinfo
timeout 60 nbdinfo --json "$URI" >"$T/info.json" || die "nbdinfo failed"
$py - "$T/info.json" "$SIZE" <<'PY' || die "nbdinfo reported the wrong export: $(cat "$T/info.json")"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
want = {"export-name": "vol0", "export-size": int(sys.argv[2]), "block_size_minimum": 512,
        "block_size_preferred": 4096, "block_size_maximum": 4 << 20, "is_read_only": False,
        "can_flush": True, "can_fua": True, "can_trim": True, "can_zero": True,
        "can_multi_conn": False}
bad = {k: (e.get(k), v) for k, v in want.items() if e.get(k) != v}
if bad:
    sys.exit("mismatch (got, want): %s" % bad)
PY
timeout 60 nbdinfo --list "nbd+unix:///?socket=$SOCK" >"$T/list.out" || die "nbdinfo --list failed"
grep -q 'export="vol0"' "$T/list.out" || die "nbdinfo --list: $(cat "$T/list.out")"

# 2. qemu-io: 512-aligned but not 4 KiB-aligned I/O
qio() { timeout 60 qemu-io --image-opts "$QOPTS" "$@"; }
qio -c 'write -P 0xab 512 3584' -c 'write -P 0xcd 5120 7680' -c 'write -P 0x5a 1049088 512' \
	-c 'write -f -P 0x33 9728 1024' -c 'flush' >"$T/qio1.out" || die "qemu-io write: $(cat "$T/qio1.out")"
qio -c 'read -P 0xab 512 3584' -c 'read -P 0xcd 5120 4608' -c 'read -P 0x33 9728 1024' \
	-c 'read -P 0xcd 10752 2048' -c 'read -P 0x5a 1049088 512' -c 'read -P 0 0 512' \
	>"$T/qio2.out" || die "qemu-io verify: $(cat "$T/qio2.out")"
grep -q "Pattern verification failed" "$T/qio2.out" && die "qemu-io: $(cat "$T/qio2.out")"
qio -c 'write -z 1536 1024' -c 'discard 6144 1024' -c 'read -P 0 1536 1024' \
	-c 'read -P 0xab 512 1024' -c 'read -P 0xab 2560 1536' >"$T/qio3.out" ||
	die "qemu-io zero/discard: $(cat "$T/qio3.out")"
# The bytes in the file itself.
$py - "$IMG" <<'PY' || die "the file does not hold what qemu-io wrote"
import sys
d = open(sys.argv[1], "rb").read(2 << 20)
def want(off, n, b):
    if d[off:off + n] != bytes([b]) * n:
        sys.exit("bytes %d..%d are not 0x%02x" % (off, off + n, b))
want(0, 512, 0); want(512, 1024, 0xab); want(1536, 1024, 0); want(2560, 1536, 0xab)
want(5120, 1024, 0xcd); want(9728, 1024, 0x33); want(10752, 2048, 0xcd)
want(1049088, 512, 0x5a)
PY
alive

# 3. qemu-img info and convert, in and out
timeout 60 qemu-img info --output=json --image-opts "$QOPTS" >"$T/qimg.json" || die "qemu-img info"
$py -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["virtual-size"] != int(sys.argv[2]))' \
	"$T/qimg.json" "$SIZE" || die "qemu-img info: $(cat "$T/qimg.json")"
truncate -s "$SIZE" "$T/src1.img"
$py - "$T/src1.img" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for off, n in ((0, 65536), (3 << 20, 5 << 20), (20 << 20, 12345 * 512), ((64 << 20) - 4096, 4096)):
        f.seek(off); f.write(os.urandom(n))
PY
timeout 120 qemu-img convert -n -f raw -O raw "$T/src1.img" "$URI" || die "qemu-img convert into the export"
cmp "$T/src1.img" "$IMG" || die "the export differs from what qemu-img convert wrote"
timeout 120 qemu-img convert -f raw -O raw "$URI" "$T/out1.img" || die "qemu-img convert out of the export"
cmp "$T/src1.img" "$T/out1.img" || die "qemu-img convert read back something else"
alive

# 4. nbdcopy both ways
truncate -s "$SIZE" "$T/src2.img"
$py - "$T/src2.img" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for off in range(0, 64 << 20, 3 << 20):
        f.seek(off + 512); f.write(os.urandom(700 * 1024))
PY
timeout 120 nbdcopy "$T/src2.img" "$URI" || die "nbdcopy into the export"
timeout 120 nbdcopy "$URI" "$T/out2.img" || die "nbdcopy out of the export"
cmp "$T/src2.img" "$T/out2.img" || die "nbdcopy round trip differs"
cmp "$T/src2.img" "$IMG" || die "the export differs from what nbdcopy wrote"
alive

# 5. fio's nbd engine, with verification (fio's nbd engine syncs with --fsync, not fdatasync)
(cd "$T" && timeout 120 fio --name=nbdverify --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
	--size=16m --offset=8m --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--fsync=1 --output="$T/fio.out") || die "fio: $(tail -n 20 "$T/fio.out")"
grep -q "err= 0" "$T/fio.out" || die "fio reported errors: $(cat "$T/fio.out")"
alive
cp "$IMG" "$T/snap1.img"

# 6. read-only over TCP
ln -s "$SERVE" "$T/nbd_serve_ro"	# its own log: $T/nbd_serve_ro.log
start_daemon -P "$T/ro.pid" "$T/nbd_serve_ro" --listen 127.0.0.1:0 --name ro --read-only "$IMG"
wait_for 20 grep -q "^ready port=" "$T/nbd_serve_ro.log" || die "read-only nbd_serve did not start"
PORT=$(sed -n 's/^ready port=//p' "$T/nbd_serve_ro.log")
[ "$PORT" -gt 0 ] || die "no TCP port: $PORT"
timeout 60 nbdinfo --json "nbd://127.0.0.1:$PORT/ro" >"$T/ro.json" || die "nbdinfo over TCP"
grep -q '"is_read_only": true' "$T/ro.json" || die "not read-only: $(cat "$T/ro.json")"
timeout 120 nbdcopy "nbd://127.0.0.1:$PORT/ro" "$T/out3.img" || die "nbdcopy over TCP"
cmp "$T/snap1.img" "$T/out3.img" || die "read over TCP differs"
if timeout 60 qemu-io -f raw "nbd://127.0.0.1:$PORT/ro" -c 'write -P 1 0 512' >"$T/qio5.out" 2>&1 &&
	! grep -qi "error\|denied\|read-only\|not permitted" "$T/qio5.out"; then
	die "a write to the read-only export succeeded: $(cat "$T/qio5.out")"
fi
# The same write in raw NBD: NBD_EPERM, and the connection stays usable.
timeout 60 $py - "$PORT" <<'PY' || die "raw write to the read-only export"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        assert c, "closed"
        b += c
    return b
assert recvn(18)[:8] == b"NBDMAGIC"
s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 7, 8) +
          struct.pack(">I", 2) + b"ro" + struct.pack(">H", 0))
while True:
    _, _, typ, ln = struct.unpack(">QIII", recvn(20))
    recvn(ln)
    if typ == 1:
        break
for h, (typ, ln, payload, want) in enumerate([(1, 512, b"x" * 512, 1), (6, 512, b"", 1),
                                              (4, 512, b"", 1), (0, 512, b"", 0)]):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, typ, h, 0, ln) + payload)
    magic, err, got = struct.unpack(">IIQ", recvn(16))
    assert (magic, err, got) == (0x67446698, want, h), (typ, magic, err, got)
recvn(512)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 9, 0, 0))
assert s.recv(1) == b""
PY
cmp "$T/snap1.img" "$IMG" || die "the read-only export was written"
RO_PID=$(cat "$T/ro.pid")
kill -TERM "$RO_PID"
rc=0
wait "$RO_PID" || rc=$?
[ "$rc" -eq 0 ] || die "read-only nbd_serve exited $rc on SIGTERM"

# 7. nbdfuse + loop + ext4
fuse_part() {
	local fpid loop="" mnt=$T/mnt fdir=$T/fuse
	if [ "$(id -u)" -ne 0 ]; then
		echo "SKIP part 7 (nbdfuse + ext4): not root"
		return 0
	fi
	if [ ! -c /dev/fuse ] || ! command -v nbdfuse >/dev/null || ! command -v fusermount3 >/dev/null ||
		! command -v losetup >/dev/null || ! command -v mkfs.ext4 >/dev/null; then
		echo "SKIP part 7 (nbdfuse + ext4): needs /dev/fuse, nbdfuse, fusermount3, losetup, mkfs.ext4"
		return 0
	fi
	mkdir -p "$mnt" "$fdir"
	# nbdfuse stays a child of this shell (its connections break otherwise).
	nbdfuse -P "$T/nbdfuse.pid" "$fdir" "$URI" >>"$T/nbdfuse.log" 2>&1 &
	fpid=$!
	FUSE_PID=$fpid
	FUSE_DIR=$fdir
	wait_for 20 test -s "$T/nbdfuse.pid" || die "nbdfuse did not start"
	wait_for 20 test -e "$fdir/nbd" || die "nbdfuse: no $fdir/nbd"
	loop=$(losetup -f --show --direct-io=on "$fdir/nbd") || die "losetup"
	LOOP=$loop
	timeout 120 mkfs.ext4 -q -F "$loop" || die "mkfs.ext4"
	mount "$loop" "$mnt" || die "mount"
	MNT=$mnt
	for i in 1 2 3 4 5; do
		head -c $((i * 777 * 1024)) /dev/urandom >"$mnt/file$i"
	done
	mkdir "$mnt/dir"
	cp "$CDP_SRC"/capture/*.h "$mnt/dir/"
	(cd "$mnt" && sha256sum file* dir/*) >"$T/sums"
	sync
	umount "$mnt" || die "umount"
	MNT=""
	timeout 120 e2fsck -fn "$loop" >"$T/fsck.out" 2>&1 || die "e2fsck: $(cat "$T/fsck.out")"
	mount -o ro "$loop" "$mnt" || die "remount"
	MNT=$mnt
	(cd "$mnt" && sha256sum -c --quiet "$T/sums") || die "files differ after remount"
	umount "$mnt" || die "umount after checks"
	MNT=""
	losetup -d "$loop" || die "losetup -d"
	LOOP=""
	fusermount3 -u "$fdir" || die "fusermount3 -u"
	FUSE_DIR=""
	wait_for 30 sh -c "! kill -0 $fpid 2>/dev/null" || die "nbdfuse did not exit after unmount"
	wait "$fpid" || true
	FUSE_PID=""
	echo "part 7: ext4 on nbdfuse + loop (direct I/O): ok"
}
MNT="" LOOP="" FUSE_DIR="" FUSE_PID=""
fuse_cleanup() {
	[ -n "$MNT" ] && umount -l "$MNT" 2>/dev/null
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
	[ -n "$FUSE_DIR" ] && fusermount3 -u -z "$FUSE_DIR" 2>/dev/null
	if [ -n "$FUSE_PID" ]; then
		kill "$FUSE_PID" 2>/dev/null
		wait "$FUSE_PID" 2>/dev/null
	fi
	true
}
cleanup_fn fuse_cleanup
fuse_part
alive

# 7b. A block device (a loop device over a file; root only): its size comes
# from BLKGETSIZE64, zeroing and discard go through fallocate on the device.
BDEV=""
bdev_cleanup() {
	[ -n "$BDEV" ] && losetup -d "$BDEV" 2>/dev/null
	true
}
cleanup_fn bdev_cleanup
if [ "$(id -u)" -eq 0 ] && command -v losetup >/dev/null; then
	truncate -s 24M "$T/bdev.img"
	BDEV=$(losetup -f --show "$T/bdev.img") || die "losetup for the block device part"
	ln -s "$SERVE" "$T/nbd_serve_bdev"
	start_daemon -P "$T/bdev.pid" "$T/nbd_serve_bdev" --listen "unix:$T/bdev.sock" "$BDEV"
	wait_for 20 grep -q "^ready port=" "$T/nbd_serve_bdev.log" || die "nbd_serve on $BDEV"
	timeout 60 nbdinfo "nbd+unix:///?socket=$T/bdev.sock" >"$T/bdev.info" || die "nbdinfo (bdev)"
	grep -q "export-size: 25165824" "$T/bdev.info" || die "bdev size: $(cat "$T/bdev.info")"
	timeout 60 qemu-io -f raw "nbd+unix:///?socket=$T/bdev.sock" -c 'write -P 0x44 512 1M' \
		-c 'write -z 4608 8192' -c 'write -z -u 65536 65536' -c 'discard 262144 65536' \
		-c 'read -P 0x44 512 4096' -c 'read -P 0 4608 8192' -c 'read -P 0 65536 65536' \
		-c 'read -P 0x44 131072 131072' -c flush >"$T/bdev.out" ||
		die "qemu-io on the block device: $(cat "$T/bdev.out")"
	BDEV_PID=$(cat "$T/bdev.pid")
	kill -TERM "$BDEV_PID"
	rc=0
	wait "$BDEV_PID" || rc=$?
	[ "$rc" -eq 0 ] || die "nbd_serve on $BDEV exited $rc on SIGTERM"
	losetup -d "$BDEV" || die "losetup -d $BDEV"
	BDEV=""
	echo "part 7b: block device: ok"
else
	echo "SKIP part 7b (block device): not root or no losetup"
fi
cp "$IMG" "$T/snap2.img"

# 8. bad input from raw sockets
timeout 120 $py - "$SOCK" "$SIZE" <<'PY' || die "bad-input checks failed"
import socket, struct, sys

path, size = sys.argv[1], int(sys.argv[2])
REQ = 0x25609513

def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    h = recvn(s, 18)
    assert h[:16] == b"NBDMAGICIHAVEOPT", h
    s.sendall(struct.pack(">I", 3))
    name = b"vol0"
    data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, 3)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, ln)
        if typ == 1:
            return s
        assert typ == 3, "option reply type %#x" % typ

def req(s, typ, off, ln, handle, payload=b"", flags=0, magic=REQ):
    s.sendall(struct.pack(">IHHQQI", magic, flags, typ, handle, off, ln) + payload)

def reply(s, handle, want_err, data_len=0):
    magic, err, h = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == 0x67446698, hex(magic)
    assert h == handle, (h, handle)
    assert err == want_err, "handle %d: error %d, want %d" % (handle, err, want_err)
    return recvn(s, data_len) if err == 0 and data_len else b""

def closed(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

def works(s, handle):
    req(s, 0, 4096, 4096, handle)
    reply(s, handle, 0, 4096)

other = connect()
works(other, 1)

# Bad magic: that connection drops, the other one keeps working.
s = connect()
req(s, 0, 0, 512, 7, magic=0x25609514)
assert closed(s), "no close after a bad magic"
works(other, 2)

# Unknown command: NBD_EINVAL, and the connection stays usable.
s = connect()
req(s, 9, 0, 512, 10)
reply(s, 10, 22)
works(s, 11)

# Past the end: NBD_ENOSPC for a write (its payload is consumed), NBD_EINVAL for a read.
req(s, 1, size, 4096, 12, b"\xee" * 4096)
reply(s, 12, 28)
req(s, 1, size - 512, 1024, 13, b"\xee" * 1024)
reply(s, 13, 28)
req(s, 0, size, 512, 14)
reply(s, 14, 22)
req(s, 6, size - 512, 4096, 15)
reply(s, 15, 28)
works(s, 16)

# Oversized write (5 MiB > max_block 4 MiB): the payload is skipped, NBD_EOVERFLOW.
req(s, 1, 0, 5 << 20, 17, b"\x11" * (5 << 20))
reply(s, 17, 75)
works(s, 18)
# Misaligned and zero-length requests: NBD_EINVAL.
req(s, 0, 100, 512, 19)
reply(s, 19, 22)
req(s, 1, 0, 0, 20)
reply(s, 20, 22)
works(s, 21)
# Too long to skip (64 MiB > 32 MiB): the connection drops.
req(s, 1, 0, 64 << 20, 22)
assert closed(s), "no close after a 64 MiB write header"
works(other, 3)

# Disconnect in the middle of a write payload.
s = connect()
req(s, 1, 0, 1 << 20, 30, b"\x22" * 1000)
s.close()
# Requests left in flight by a client that goes away.
s = connect()
for i in range(32):
    req(s, 0, i * 65536, 65536, 100 + i)
s.close()
works(other, 4)
s = connect()
works(s, 200)
req(s, 2, 0, 0, 201)
assert closed(s), "no close after NBD_CMD_DISC"
other.close()
print("bad input: ok")
PY
alive
cmp "$T/snap2.img" "$IMG" || die "bad input changed the export"

# 9. SIGTERM with a client connected (idle in transmission): clean exit 0.
$py - "$SOCK" >"$T/idle.out" 2>&1 <<'PY' &
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sys.argv[1])
s.recv(18)
s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 7, 8) + struct.pack(">IHH", 0, 1, 3))
print("connected", flush=True)
while s.recv(65536):
    pass
print("closed by the server", flush=True)
PY
IDLE_PID=$!
wait_for 20 grep -q connected "$T/idle.out" || die "idle client did not connect"
kill -TERM "$SERVE_PID"
rc=0
wait "$SERVE_PID" || rc=$?
[ "$rc" -eq 0 ] || die "nbd_serve exited $rc on SIGTERM"
wait_for 20 grep -q "closed by the server" "$T/idle.out" || die "idle client not disconnected"
wait "$IDLE_PID" || true
[ -e "$SOCK" ] && die "the socket file is left behind"
grep -q "stopped listening" "$T/nbd_serve.log" || die "no stop line in the log"
echo "test-nbd: ok"
