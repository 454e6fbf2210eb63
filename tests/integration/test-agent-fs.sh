#!/usr/bin/env bash
# A file system through time: ext4 on cdp-agent's NBD export (nbdfuse + a loop
# device) under a file workload for ~5 s: files of 4 KiB - 1 MiB created,
# rewritten, partly overwritten and deleted, each fsync'd (and its directory
# on create/delete). A log outside the volume ($T/fslog) records each step's
# start and, right after fsync returned, its end (wall clock ns, comparable
# with the points' time_ns: the agent stamps records with the wall clock of
# its start plus CLOCK_MONOTONIC, which NTP slews alike), the file and its
# sha256 or "deleted". Then a point in each third of the workload's window
# and the newest point after it are restored and checked: for a point at T,
# every file whose last step ended before T holds exactly that step's content
# (absent if deleted), and every file is in its state before T when its next
# step started after T (nothing from the future); only the one step in flight
# at T (the workload is sequential) is skipped. The newest point holds all.
#
# The points are taken under load, without fsfreeze: a restored image is what
# a power cut leaves, with committed transactions still in ext4's journal.
# `mount -o ro,noload` would skip them (missing files, and e2fsck -fn would
# flag the unreplayed metadata); e2fsck -fy would "repair" and hide real
# damage. So, as after a crash: a scratch copy (the restored image stays as
# cdpctl wrote it) goes on a read-write loop device, the kernel replays the
# journal (and orphans) on mount, the files are compared, and after umount
# `e2fsck -fn` must find nothing. Root only (loop devices, FUSE, mount).
source "$(dirname "$0")/agent-lib.sh"
requires_root
requires losetup mkfs.ext4 e2fsck mount umount fusermount3 sha256sum
command -v nbdfuse >/dev/null 2>&1 || skip "requires nbdfuse (apt-get install nbdfuse)"
[ -c /dev/fuse ] || skip "requires /dev/fuse (modprobe fuse)"

PY=/usr/bin/python3
PLAN=fs01
SOCK=$T/j.sock
SIZE=$((128 << 20))
passed=0

alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
# stop_pid PIDFILE [GRACE]: after GRACE s (default 0) SIGTERM, 10 s later SIGKILL.
stop_pid() {
	local pid end=$((SECONDS + ${2:-0}))
	pid=$(cat "$1" 2>/dev/null) || return 0
	while alive "$pid" && [ $SECONDS -lt $end ]; do sleep 0.05; done
	kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
	end=$((SECONDS + 10))
	while alive "$pid" && [ $SECONDS -lt $end ]; do sleep 0.05; done
	alive "$pid" && kill -KILL "$pid"
	wait "$pid" 2>/dev/null || true
}
under_T() { awk -v p="$T/" 'index($2, p) == 1 { print $1, $2, $3 }'; }
# Mounts under $T newest first (FUSE last), their loops, nbdfuse, the daemons.
undo() {
	local dev m fs i
	while read -r dev m fs; do
		[[ $fs == fuse* ]] || umount "$m" || umount -l "$m"
	done < <(under_T </proc/mounts | tac)
	while read -r dev m; do losetup -d "$dev"; done < <(losetup -ln -O NAME,BACK-FILE | under_T)
	for ((i = 0; i < 100; i++)); do [ -z "$(losetup -ln -O NAME,BACK-FILE | under_T)" ] && break; sleep 0.05; done
	if grep -q " $T/fuse fuse" /proc/mounts; then fusermount3 -u "$T/fuse" || fusermount3 -uz "$T/fuse"; fi
	stop_pid "$T/fuse.pid" 5 # it ends by itself once unmounted
	stop_pid "$T/agent.pid"
	stop_pid "$T/jd.pid"
	[ $passed = 1 ] || [ ! -s "$T/nbdfuse.log" ] || { echo "--- $T/nbdfuse.log" >&2; tail -n 15 "$T/nbdfuse.log" >&2; }
	true # agent-lib.sh's dump_logs shows the daemons' logs after this
}
cleanup_fn undo
consistent_points() { # "SEQ TIME_NS" of each consistent point, oldest first
	ctl --json points "$PLAN" | $PY -c '
import json, sys
for x in json.load(sys.stdin):
    if x["consistent"]: print(x["seq"], x["time_ns"])'
}
point_after() { consistent_points | awk -v t="$1" '$2 > t { f = 1 } END { exit !f }'; }

cat >"$T/fs.py" <<'EOF'
import hashlib, os, random, sys, time
def workload(mnt, log, secs):
    seed = int.from_bytes(os.urandom(4), "little"); rnd = random.Random(seed)
    dirs = [os.path.join(mnt, "d%d" % i) for i in range(3)]
    for d in dirs: os.mkdir(d)
    os.fsync(os.open(mnt, os.O_RDONLY))
    names = ["d%d/f%02d" % (i % 3, i) for i in range(24)]
    have, n, out = {}, 0, open(log, "w")
    out.write("# seed %d\n" % seed)
    deadline = time.time() + secs
    while time.time() < deadline:
        name = rnd.choice(names); path = os.path.join(mnt, name); n += 1
        op = "new" if name not in have else rnd.choice(["rewrite", "rewrite", "patch", "delete"])
        size = rnd.choice([4096 * rnd.randint(1, 256), rnd.randint(4096, 1 << 20)])
        data = os.urandom(size) if rnd.random() < 0.6 else (b"%s %d " % (name.encode(), n)) * (size // 12 + 1)
        start = time.time_ns()
        if op == "delete":
            os.unlink(path); del have[name]
        elif op == "patch": # part of the file overwritten in place, maybe extended
            old = have[name]; off = rnd.randint(0, len(old)); data = data[:rnd.randint(1, 256 << 10)]
            have[name] = old[:off] + data + old[off + len(data):]
            fd = os.open(path, os.O_WRONLY); os.pwrite(fd, data, off); os.fsync(fd); os.close(fd)
        else:
            have[name] = data[:size]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, have[name]); os.fsync(fd); os.close(fd)
        if op in ("new", "delete"):
            fd = os.open(os.path.dirname(path), os.O_RDONLY); os.fsync(fd); os.close(fd)
        end = time.time_ns() # right after fsync returned
        sha = hashlib.sha256(have[name]).hexdigest() if name in have else "deleted"
        out.write("%d %s %s %d\n" % (end, name, sha, start)); out.flush()
    print("workload: %d steps (seed %d), %d files at the end" % (n, seed, len(have)))
def check(log, t, mnt): # the mounted image of a point at time t against the log
    steps = {}
    for l in open(log):
        if not l.startswith("#"):
            end, name, sha, start = l.split(); steps.setdefault(name, []).append((int(start), int(end), sha))
    want, skipped = {}, 0
    for name, s in steps.items():
        if any(a <= t <= b for a, b, _ in s): skipped += 1; continue
        done = [sha for a, b, sha in s if b < t]
        want[name] = done[-1] if done else "deleted"
    have = {}
    for d, _, files in os.walk(mnt):
        for f in files:
            p = os.path.join(d, f); rel = os.path.relpath(p, mnt)
            if not rel.startswith("lost+found/"): have[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    bad = [n for n in sorted(set(have) | set(want)) if n not in steps or (n in want and want[n] != have.get(n, "deleted"))]
    for n in bad: print("  %s: want %s, found %s" % (n, want.get(n, "(never written)"), have.get(n, "deleted")))
    print("%d files checked (%d present), %d skipped (in flight), %d wrong"
          % (len(want), sum(v != "deleted" for v in want.values()), skipped, len(bad)))
    sys.exit(1 if bad else 0)
workload(sys.argv[2], sys.argv[3], float(sys.argv[4])) if sys.argv[1] == "run" else check(sys.argv[2], int(sys.argv[3]), sys.argv[4])
EOF

cat >"$T/$PLAN.plan" <<EOF
[plan]
name = $PLAN
agent = agent-$PLAN
volumes = vol0:$SIZE
retention = 1h
point_interval = 200ms
EOF
write_agent_conf "unix:$SOCK" "vol0=$T/vol0.img=$T/vol0.nbd"
truncate -s "$SIZE" "$T/vol0.img"
start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK"
wait_for 20 test -S "$SOCK" || die "journald did not start"
ctl plan create "$T/$PLAN.plan" >/dev/null || die "plan create"
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 30 grep -q "sync done" "$T/cdp-agent.log" || die "the full sync did not finish"

mkdir -p "$T/fuse" "$T/mnt" "$T/pt"
start_daemon -P "$T/fuse.pid" nbdfuse "$T/fuse" "nbd+unix:///?socket=$T/vol0.nbd"
wait_for 20 test -e "$T/fuse/nbd" || die "nbdfuse did not mount"
loop=$(losetup -f --show --direct-io=on "$T/fuse/nbd") || die "losetup $T/fuse/nbd"
mkfs.ext4 -q -L cdp-fs -E lazy_itable_init=0,lazy_journal_init=0 "$loop" || die "mkfs.ext4 $loop"
mount -o noatime "$loop" "$T/mnt" || die "mount $loop"

$PY "$T/fs.py" run "$T/mnt" "$T/fslog" 5 || die "the workload failed"
read -r w0 w1 < <(awk '!/^#/ { if (!a) a = $4; b = $1 } END { print a, b }' "$T/fslog")
wait_for 20 point_after "$w1" || die "no consistent point after the workload"

# One point in the middle of each third of the window, and the newest.
consistent_points >"$T/points"
$PY - "$w0" "$w1" "$T/points" >"$T/picked" <<'EOF' || die "a third of the workload's window has no consistent point: $(cat "$T/points")"
import sys
w0, w1 = int(sys.argv[1]), int(sys.argv[2]); d = w1 - w0
pts = [tuple(map(int, l.split())) for l in open(sys.argv[3])]
for k, label in enumerate(["first-third", "middle", "last-third"]):
    inside = [p for p in pts if w0 + k * d / 3 < p[1] < w0 + (k + 1) * d / 3]
    if not inside: sys.exit(1)
    p = min(inside, key=lambda p: abs(p[1] - (w0 + (2 * k + 1) * d / 6)))
    print(p[0], p[1], label)
print(pts[-1][0], pts[-1][1], "newest")
EOF

# check_point SEQ TIME LABEL: restore, replay on a copy, compare, e2fsck -fn.
check_point() {
	local seq=$1 t=$2 label=$3 dev out
	rm -rf "$T/r"
	ctl restore "$PLAN" --at "seq:$seq" -o "$T/r" >/dev/null || die "$label: restore of seq $seq failed"
	cp --sparse=always "$T/r/vol0.img" "$T/copy.img"
	dev=$(losetup -f --show "$T/copy.img") || die "losetup $T/copy.img"
	mount -o noatime "$dev" "$T/pt" || die "$label: the image of seq $seq does not mount"
	out=$($PY "$T/fs.py" check "$T/fslog" "$t" "$T/pt") || die "$label (seq $seq, t+$(((t - w0) / 1000000)) ms): wrong files:
$out"
	umount "$T/pt"
	e2fsck -fn "$dev" >"$T/fsck.out" 2>&1 || die "$label: e2fsck -fn found errors in seq $seq: $(cat "$T/fsck.out")"
	losetup -d "$dev"
	rm -rf "$T/r" "$T/copy.img"
	echo "ok: $label seq $seq at t+$(((t - w0) / 1000000)) ms: mounts, e2fsck -fn clean, $out"
	[ "$label" != newest ] || [[ $out == *" 0 skipped"* ]] || die "the newest point has steps in flight"
}
echo "workload window: $(((w1 - w0) / 1000000)) ms, $(grep -vc '^#' "$T/fslog") fsync'd steps, $(wc -l <"$T/points") consistent points"
while read -r seq t label <&5; do check_point "$seq" "$t" "$label" 5<&-; done 5<"$T/picked"
passed=1
echo "PASS"
