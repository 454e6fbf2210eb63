#!/usr/bin/env bash
# cdp-agent when the link to cdp-journald goes silent. The agent dials
# journald over TCP through tests/integration/blackhole_proxy.py, which can
# stop forwarding without closing anything (a cut cable, not a clean close).
# Short limits come from the agent's config.
#  1. A cut shorter than link.down_limit: nothing lost, the agent catches up
#     from its log cache, no incremental mode.
#  2. A cut longer than link.down_limit: the agent notices (no acks for
#     link.ack_timeout), goes to incremental mode, and after the link returns
#     resyncs the dirty blocks and captures continuously again.
#  3. The log cache fills during a cut: incremental mode again, same ending.
#  4. With a spill file (the agent restarted with cache.spill_max), a cut
#     while more than the memory cache is written: the rest waits in the
#     spill file, and after the link returns the agent catches up from both,
#     with no incremental mode and no resync.
# After each, the newest consistent point restores to the source byte for byte.
source "$(dirname "$0")/agent-lib.sh"
requires qemu-io cmp

PROXY=$CDP_SRC/tests/integration/blackhole_proxy.py
SOCK=$T/j.sock
NBD=$T/vol0.nbd
SRC=$T/vol0.img
SIZE=$((32 << 20))
VOLS=("vol0=$SRC")

qio() { qemu-io -f raw "nbd+unix:///?socket=$NBD" "$@" >/dev/null || die "qemu-io $*"; }
start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK,127.0.0.1:0" \
	--set journal.verify_interval=50ms
wait_for 20 grep -q "port [0-9]" "$T/cdp-journald.log" || die "journald did not start"
JPORT=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$T/cdp-journald.log" | tail -n 1)
start_daemon -P "$T/proxy.pid" /usr/bin/python3 "$PROXY" 0 127.0.0.1 "$JPORT"
wait_for 20 grep -q "^ready" "$T/python3.log" || die "proxy did not start"
PPORT=$(awk '/^ready/ {print $2}' "$T/python3.log")

write_plan "vol0:$SIZE"
write_agent_conf "127.0.0.1:$PPORT" "vol0=$SRC=$NBD"
agent_conf_extra <<EOF
[cache]
size = 16MiB
[link]
ack_timeout = 1s
down_limit = 2s
reconnect_min = 50ms
reconnect_max = 300ms
EOF
truncate -s "$SIZE" "$SRC"
head -c $((2 << 20)) /dev/urandom | dd of="$SRC" conv=notrunc status=none
ctl plan create "$T/db01.plan" >/dev/null || die "plan create"
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 20 test -S "$NBD" || die "agent did not start"
wait_for 60 grep -q "sync done" "$T/cdp-agent.log" || die "the full sync did not finish"
check_restore "full sync through the proxy"
proxy=$(cat "$T/proxy.pid")

# 1. A short cut: frozen while a write completes, then thawed at once.
m=$(logmark)
kill -USR1 "$proxy"
qio -c "write -P 0x21 1048576 65536"
kill -USR2 "$proxy"
check_restore "a short cut"
seen_since "$m" "incremental mode" && die "a short cut sent the agent to incremental mode"

# 2. A cut longer than down_limit: incremental, then resync and back.
m=$(logmark)
kill -USR1 "$proxy"
qio -c "write -P 0x22 2097152 65536"
wait_for 30 seen_since "$m" "incremental mode: link down longer" ||
	die "the agent did not go incremental during a long cut"
qio -c "write -P 0x23 3145728 4096"	# while incremental: only a dirty bit
kill -USR2 "$proxy"
wait_for 60 seen_since "$m" "sync done" || die "no resync after the long cut"
check_restore "a cut longer than the limit"

# 3. The cache fills during a cut (random bytes: zstd cannot shrink them).
head -c $((1 << 20)) /dev/urandom >"$T/random"
m=$(logmark)
kill -USR1 "$proxy"
cmds=()
for i in $(seq 0 23); do
	cmds+=(-c "write -s $T/random $(((4 + i) << 20)) 1048576")
done
qio "${cmds[@]}"	# one client, quickly: faster than link.down_limit
wait_for 30 seen_since "$m" "incremental mode: log cache full" ||
	die "a full cache did not send the agent to incremental mode"
kill -USR2 "$proxy"
wait_for 60 seen_since "$m" "sync done" || die "no resync after the cache filled"
check_restore "the log cache filled during a cut"

# 4. Restarted with a spill file and a down_limit this cut cannot reach; the
#    stats line (every 200 ms) says the mode and what is spilled.
apid=$(cat "$T/agent.pid")
kill -TERM "$apid"
wait "$apid" 2>/dev/null || true
m=$(logmark)
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf" --set cache.spill_max=64MiB \
	--set link.down_limit=1min --set agent.stats_interval=200ms
wait_for 20 seen_since "$m" "stats: continuous" || die "the restarted agent is not continuous"
head -c $((1 << 20)) /dev/urandom >"$T/random"
m=$(logmark)
kill -USR1 "$proxy"
qio "${cmds[@]}"	# 24 MiB that zstd cannot shrink: more than cache.size (16 MiB)
wait_for 30 seen_since "$m" "spilled [1-9]" || die "nothing went to the spill file during the cut"
wait_for 30 seen_since "$m" "link cut" || die "the agent did not notice the cut"
kill -USR2 "$proxy"
check_restore "more than the memory cache written during a cut, with a spill file"
seen_since "$m" "resending from the cache" || die "the agent did not resend from its cache"
seen_since "$m" "incremental mode" && die "the spill file did not keep the agent continuous"
seen_since "$m" "sync starts" && die "the agent resynced what its spill file held"

apid=$(cat "$T/agent.pid")
kill -TERM "$apid"
wait "$apid" 2>/dev/null || true
[ -f "$T/agent-state/spill" ] && [ ! -s "$T/agent-state/spill" ] ||
	die "the spill file is not left empty by a clean stop"
echo "PASS"
