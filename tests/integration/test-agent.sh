#!/usr/bin/env bash
# cdp-agent end to end with real processes: cdp-journald, cdp-agent serving a
# sparse source volume over NBD (unix socket), writes by qemu-io (an
# independent NBD client) at 512-byte-aligned offsets, and restores by cdpctl.
#  1. The full sync of a volume with data and holes, while a client writes:
#     the newest consistent point restores to the source, byte for byte.
#  2. More writes; the newest point again equals the source.
#  3. journald killed with SIGKILL and restarted: the agent resends from its
#     cache; the final image equals the source and no resync happened.
#  4. The agent stopped cleanly and restarted: capture goes on from the
#     journal's position, the image equals the source.
#  5. The agent killed with SIGKILL and restarted: its activity log's extents
#     are resynced, and the final image equals the source.
#  6. The agent killed with SIGKILL while a libnbd client has writes in
#     flight at queue depth 8 (capture_check.py crash): every write in
#     flight fails, as on a failed disk (an error within 10 s, no success,
#     no hang), and after the restart every write the client saw
#     acknowledged is in the newest point, which equals the source.
source "$(dirname "$0")/agent-lib.sh"
requires qemu-io cmp

SOCK=$T/j.sock
NBD=$T/vol0.nbd
SRC=$T/vol0.img
SIZE=$((64 << 20))
VOLS=("vol0=$SRC")

start_jd() {
	start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK" \
		--set journal.verify_interval=50ms
	wait_for 20 test -S "$SOCK" || die "journald did not start"
}
start_agent() {
	start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
	wait_for 20 test -S "$NBD" || die "agent did not start: $(tail -n 5 "$T/cdp-agent.log")"
}
stop_pid() {
	local pid
	pid=$(cat "$1")
	kill "${2:--TERM}" "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
qio() { qemu-io -f raw "nbd+unix:///?socket=$NBD" "$@" >/dev/null || die "qemu-io $*"; }

write_plan "vol0:$SIZE"
write_agent_conf "unix:$SOCK" "vol0=$SRC=$NBD"
agent_conf_extra <<EOF
[link]
ack_timeout = 2s
reconnect_min = 50ms
reconnect_max = 500ms
stop_timeout = 5s
EOF
# --print-config: the file with its drop-in applied, as the agent would run.
"$AGENT" --config "$T/agent.conf" --print-config >"$T/eff.conf" || die "--print-config"
grep -qx 'ack_timeout = 2s' "$T/eff.conf" || die "--print-config: the drop-in's ack_timeout"
grep -qx "state_dir = $T/agent-state" "$T/eff.conf" || die "--print-config: no state_dir"

# A source with data at the start, a hole, and data further on.
truncate -s "$SIZE" "$SRC"
head -c $((3 << 20)) /dev/urandom | dd of="$SRC" conv=notrunc status=none
head -c $((1 << 20)) /dev/urandom | dd of="$SRC" bs=1M seek=40 conv=notrunc status=none

start_jd
ctl plan create "$T/db01.plan" >/dev/null || die "plan create"
start_agent

# 1. Full sync while a client writes.
qio -c "write -P 0x11 512 7680" -c "write -P 0x22 5242880 65536" -c "write -P 0x33 41943552 1024"
wait_for 60 grep -q "sync done" "$T/cdp-agent.log" || die "the full sync did not finish"
qio -c "write -P 0x44 8192 4096"
check_restore "full sync with concurrent writes"

# 2. Overlapping writes and zeroes.
for i in $(seq 1 20); do
	qio -c "write -P $((i + 64)) $((i * 4096 + 512)) 12288" -c "write -z $((i * 65536)) 4096"
done
check_restore "overlapping writes and zeroes"

# 3. journald killed with SIGKILL mid-stream: resend from the cache, no resync.
qio -c "write -P 0x55 1048576 1048576" &
qpid=$!
stop_pid "$T/jd.pid" -KILL
wait "$qpid" || die "writes failed while the journal server was down"
qio -c "write -P 0x56 2097152 65536"
start_jd
check_restore "journal server SIGKILL and restart"
grep -q "sync starts" <(sed -n '/journal durable at seq [1-9]/,$p' "$T/cdp-agent.log") &&
	die "a resync ran after the journal server restart"

# 4. Clean agent restart.
stop_pid "$T/agent.pid" -TERM
start_agent
qio -c "write -P 0x66 3145728 4096"
check_restore "agent clean restart"

# 5. Agent SIGKILL: the activity log's extents are resynced, not the volume.
qio -c "write -P 0x77 4194304 8192"
stop_pid "$T/agent.pid" -KILL
start_agent
wait_for 60 grep -q "unclean stop" "$T/cdp-agent.log" || die "no activity log recovery"
resynced_after_crash() { grep -A100000 "unclean stop" "$T/cdp-agent.log" | grep -q "sync done"; }
wait_for 60 resynced_after_crash || die "the resync after the crash did not finish"
# Only the activity log's extents (4 MiB each) and the bitmap's bits went
# again: more than nothing, far less than the volume.
extents=$(sed -n 's/.*unclean stop: \([0-9]*\) activity log extents.*/\1/p' "$T/cdp-agent.log" | tail -n 1)
sent=$(grep -A100000 "unclean stop" "$T/cdp-agent.log" | sed -n 's/.*sync done: \([0-9]*\) bytes sent.*/\1/p' | head -n 1)
[ -n "$extents" ] && [ -n "$sent" ] || die "no resync figures in the agent log"
[ "$sent" -gt 0 ] || die "the resync after the crash sent nothing"
[ "$sent" -le $((extents * (4 << 20))) ] ||
	die "the resync sent $sent bytes, more than $extents extents of 4 MiB"
echo "ok: the crash resynced $sent bytes ($extents activity log extents)"
qio -c "write -P 0x78 4198400 4096"
check_restore "agent SIGKILL and restart"

# 6. Agent SIGKILL with writes in flight (the first 8 MiB of the volume).
if /usr/bin/python3 -c "import nbd" 2>/dev/null; then
	CHECK=$CDP_SRC/tests/integration/capture_check.py
	/usr/bin/python3 "$CHECK" crash "$T/crash.log" 8 16384 10 "$T/ready" \
		"nbd+unix:///?socket=$NBD" >"$T/crash.out" 2>&1 &
	cpid=$!
	wait_for 30 test -e "$T/ready" || die "the crash client got no acks: $(cat "$T/crash.out")"
	mark=$(logmark)
	stop_pid "$T/agent.pid" -KILL
	wait "$cpid" || die "the client, when the agent died: $(cat "$T/crash.out")"
	echo "$(cat "$T/crash.out") (client, agent SIGKILL during CDP)"
	start_agent
	wait_for 60 seen_since "$mark" "sync done" || die "the resync after the crash did not finish"
	check_restore "agent SIGKILL with writes in flight"
	/usr/bin/python3 "$CHECK" acked "$T/crash.log" "$T/out/vol0.img" ||
		die "an acknowledged write is missing after the crash"
else
	echo "SKIP part 6 (client during an agent SIGKILL): requires python3-libnbd"
fi

stop_pid "$T/agent.pid" -TERM
echo "PASS"
