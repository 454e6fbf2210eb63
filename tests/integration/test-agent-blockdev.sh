#!/usr/bin/env bash
# cdp-agent with a block device as its source: a sparse file with some data
# is attached as a loop device (losetup --find --show) and the agent serves
# and captures /dev/loopN. Root only; skipped without losetup or a free loop
# device.
#  1. The full sync reads the device (no SEEK_DATA there: every block is
#     read) and still sends the zero blocks as ZERO records, not bytes.
#  2. Writes, zeroes and discards through NBD (qemu-io): ZERO and TRIM leave
#     zeros on the device, as the journal restores them.
#  3. Random overlapping writes at queue depth 8 (capture_check.py, libnbd):
#     the newest point restores to the loop device byte for byte.
# The loop device is detached on every exit path (after the agent, which
# holds it open, is stopped).
source "$(dirname "$0")/agent-lib.sh"

requires_root
requires losetup blockdev qemu-io cmp
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "requires python3-libnbd"

CHECK=$CDP_SRC/tests/integration/capture_check.py
SOCK=$T/j.sock
NBD=$T/vol0.nbd
IMG=$T/backing.img
SIZE=$((64 << 20))
LOOP=

detach_loop() {
	if [ -f "$T/agent.pid" ]; then
		kill "$(cat "$T/agent.pid")" 2>/dev/null && wait "$(cat "$T/agent.pid")" 2>/dev/null
	fi
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	true
}
cleanup_fn detach_loop

# A sparse backing file: data at the start, a hole, data further on.
truncate -s "$SIZE" "$IMG"
head -c $((2 << 20)) /dev/urandom | dd of="$IMG" conv=notrunc status=none
head -c $((1 << 20)) /dev/urandom | dd of="$IMG" bs=1M seek=48 conv=notrunc status=none
LOOP=$(losetup --find --show "$IMG" 2>"$T/losetup.err") ||
	skip "no loop device: $(cat "$T/losetup.err")"
[ -b "$LOOP" ] || die "losetup gave $LOOP, not a block device"
[ "$(blockdev --getsize64 "$LOOP")" -eq "$SIZE" ] || die "$LOOP is not $SIZE bytes"
VOLS=("vol0=$LOOP")

write_plan "vol0:$SIZE"
write_agent_conf "unix:$SOCK" "vol0=$LOOP=$NBD"
agent_conf_extra <<EOF
[capture]
point_interval = 100ms
EOF

start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK"
wait_for 20 test -S "$SOCK" || die "journald did not start"
ctl plan create "$T/db01.plan" >/dev/null || die "plan create"
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 20 test -S "$NBD" || die "agent did not start: $(tail -n 5 "$T/cdp-agent.log")"
qio() { qemu-io -f raw "nbd+unix:///?socket=$NBD" "$@" >/dev/null || die "qemu-io $*"; }

# 1. The full sync of the device.
wait_for 60 grep -q "sync done" "$T/cdp-agent.log" || die "the full sync did not finish"
zero=$(sed -n 's/.*sync done: [0-9]* bytes sent, \([0-9]*\) bytes as zero ranges.*/\1/p' \
	"$T/cdp-agent.log" | head -n 1)
sent=$(sed -n 's/.*sync done: \([0-9]*\) bytes sent.*/\1/p' "$T/cdp-agent.log" | head -n 1)
[ -n "$zero" ] && [ -n "$sent" ] || die "no full sync figures in the agent log"
# 3 MiB of data (plus blocks the first writes may touch): the zero blocks
# of the device went as ZERO records.
[ "$zero" -ge $((SIZE - (8 << 20))) ] || die "only $zero bytes went as zero ranges"
[ "$sent" -lt $((8 << 20)) ] || die "the full sync sent $sent bytes of a mostly zero device"
echo "ok: full sync of $LOOP: $sent bytes sent, $zero bytes as zero ranges"
check_restore "full sync of the block device"

# 2. Zeroes and discards over data: the device reads zeros there after them.
qio -c "write -P 0x5a 0 1048576" -c "write -z 4096 65536" -c "discard 262144 131072" \
	-c "write -P 0x5b 50331648 8192" -c "discard 50335744 4096"
cmp -s -n 65536 -i 4096:0 "$LOOP" /dev/zero || die "write -z did not leave zeros on $LOOP"
cmp -s -n 131072 -i 262144:0 "$LOOP" /dev/zero || die "discard did not leave zeros on $LOOP"
check_restore "zeroes and discards on the block device"

# 3. Random overlapping writes at queue depth 8.
/usr/bin/python3 "$CHECK" write "$T/writes.log" 2000 8 $((SIZE / 512)) \
	"nbd+unix:///?socket=$NBD" || die "the writes failed"
check_restore "concurrent writes on the block device"
/usr/bin/python3 "$CHECK" verify "$T/writes.log" "$T/out/vol0.img" >/dev/null ||
	die "the newest point is not crash-consistent"

kill -TERM "$(cat "$T/agent.pid")"
wait "$(cat "$T/agent.pid")" 2>/dev/null || true
rm -f "$T/agent.pid"
echo "PASS"
