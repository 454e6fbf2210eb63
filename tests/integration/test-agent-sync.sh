#!/usr/bin/env bash
# The full sync survives a crash of the agent: a volume of random data is
# synced at a capped rate; cdp-agent is killed with SIGKILL half way; after
# the restart the full sync resumes from the checkpoint the journal holds
# (not from offset 0), sends less than the volume again, and the newest
# point restores to the source byte for byte. A libnbd client writes at
# queue depth 8 when the agent is killed (capture_check.py crash): every
# write in flight fails (an error within 10 s, no success, no hang), and
# every write it saw acknowledged is in that newest point. The agent's local
# copy of the checkpoint (state_dir/sync-checkpoint) exists and advances
# during the sync, is read back at the restart and weighed against the
# journal's (the resume line), and is marked done at the end. On the way:
# SIGHUP lifts the sync rate cap at run time, and the agent logs its RSS and
# CPU per GB.
source "$(dirname "$0")/agent-lib.sh"
requires cmp
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "requires python3-libnbd"

CHECK=$CDP_SRC/tests/integration/capture_check.py

SOCK=$T/j.sock
SRC=$T/vol0.img
SIZE=$((32 << 20))
VOLS=("vol0=$SRC")

past_a_third() { local d; d=$(durable); [ -n "$d" ] && [ "$d" -ge 10 ]; }
# The local checkpoint file as "SYNC_ID VOLUME OFFSET" (docs/format.md).
ckpt() {
	/usr/bin/python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read()
assert len(b) == 44 and b[:8] == b"CDP-SCKP"
ver, kind, sid, vol, zero, off = struct.unpack_from("<IIQIIQ", b, 8)
print(sid, vol, off)' "$T/agent-state/sync-checkpoint" 2>/dev/null
}
# The local checkpoint is at volume $1, past offset $2.
ckpt_past() { local c; c=($(ckpt)) && [ "${c[1]}" -eq "$1" ] && [ "${c[2]}" -gt "$2" ]; }
resumed_done() { grep -A100000 "offset [1-9]" "$T/cdp-agent.log" | grep -q "sync done"; }

write_plan "vol0:$SIZE"
# 1 MiB records at 32 Mbit/s: about 8 s for the volume, ~4 records a second.
write_agent_conf "unix:$SOCK" "vol0=$SRC=$T/vol0.nbd"
agent_conf_extra <<EOF
[agent]
stats_interval = 1s
[sync]
rate = 32Mbit
EOF
head -c "$SIZE" /dev/urandom >"$SRC"
start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK"
wait_for 20 test -S "$SOCK" || die "journald did not start"
ctl plan create "$T/db01.plan" >/dev/null || die "plan create"
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 30 grep -q "full sync starts (volume 0, offset 0)" "$T/cdp-agent.log" ||
	die "the full sync did not start"
# A third of the volume is durable in the journal: kill the agent mid-sync,
# with a client's writes in flight (in the first 4 MiB: one activity log
# extent to resync on top of the rest of the full sync).
wait_for 30 past_a_third || die "the full sync made no progress"
# The local copy exists and advances (at most once a second) during the sync.
wait_for 20 ckpt_past 0 0 || die "no local sync checkpoint: $(ckpt)"
first=($(ckpt))
wait_for 20 ckpt_past 0 "${first[2]}" || die "the local sync checkpoint did not advance: $(ckpt)"
second=($(ckpt))
[ "${second[0]}" = "${first[0]}" ] || die "the local checkpoint changed sync: ${first[*]}, ${second[*]}"
echo "ok: local checkpoint of full sync ${first[0]} advanced from ${first[2]} to ${second[2]}"
/usr/bin/python3 "$CHECK" crash "$T/crash.log" 8 8192 10 "$T/ready" \
	"nbd+unix:///?socket=$T/vol0.nbd" >"$T/crash.out" 2>&1 &
cpid=$!
wait_for 30 test -e "$T/ready" || die "the crash client got no acks: $(cat "$T/crash.out")"
grep -q "sync done" "$T/cdp-agent.log" && die "the full sync ended before the kill"
kill -KILL "$(cat "$T/agent.pid")"
wait "$(cat "$T/agent.pid")" 2>/dev/null || true
wait "$cpid" || die "the client, when the agent died: $(cat "$T/crash.out")"
echo "$(cat "$T/crash.out") (client, agent SIGKILL during the full sync)"
killed=($(ckpt))

start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 30 grep -q "full sync starts (volume 0, offset [1-9]" "$T/cdp-agent.log" ||
	die "the full sync did not resume from a checkpoint: $(grep 'sync starts' "$T/cdp-agent.log" | tail -n 1)"
offset=$(sed -n 's/.*full sync starts (volume 0, offset \([0-9]*\)).*/\1/p' "$T/cdp-agent.log" | tail -n 1)
# The local copy was read at start and weighed against the journal's: the
# same sync, the journal's at or past it (it is written only after acks).
grep -q "local sync checkpoint: full sync ${killed[0]} at volume 0, offset ${killed[2]}" \
	"$T/cdp-agent.log" || die "the restart did not read the local checkpoint ${killed[*]}"
resume="full sync ${killed[0]}: resuming from the journal server's checkpoint (volume 0, offset $offset; local copy: volume 0, offset ${killed[2]})"
grep -qF "$resume" "$T/cdp-agent.log" ||
	die "no resume line '$resume': $(grep 'checkpoint' "$T/cdp-agent.log" | tail -n 3)"
[ "${killed[2]}" -ge "${second[2]}" ] && [ "${killed[2]}" -le "$offset" ] ||
	die "local checkpoint ${killed[2]} not between ${second[2]} and the journal's $offset"
grep -q "is behind the local one" "$T/cdp-agent.log" && die "the journal said to have lost data"
echo "ok: restart read the local checkpoint at ${killed[2]}, resumed from the journal's $offset"
# Lift the cap on the running sync: SIGHUP rereads sync.rate.
sed -i 's/^rate = 32Mbit/rate = 0/' "$T/agent.conf.d/50-test.conf"
kill -HUP "$(cat "$T/agent.pid")"
wait_for 20 grep -q "SIGHUP: config reread; sync.rate is 0 bit/s" "$T/cdp-agent.log" ||
	die "SIGHUP did not apply sync.rate"
wait_for 20 grep -q "stats: .*RSS [0-9.]* MiB, CPU [0-9.]* s" "$T/cdp-agent.log" ||
	die "no stats line from the agent"
wait_for 60 resumed_done || die "the resumed full sync did not finish"
sent=$(grep -A100000 "offset [1-9]" "$T/cdp-agent.log" | sed -n 's/.*sync done: \([0-9]*\) bytes sent.*/\1/p' | head -n 1)
[ "$sent" -lt "$SIZE" ] || die "the resumed sync sent $sent bytes: the whole volume again"
echo "ok: resumed at offset $offset, sent $sent of $SIZE bytes"
# Done: the local copy says the (resumed) sync finished, past the last volume.
wait_for 20 grep -q "local checkpoint marked done" "$T/cdp-agent.log" ||
	die "the local checkpoint was not marked done: $(ckpt)"
done_ck=($(ckpt))
[ "${done_ck[1]}" -eq 1 ] && [ "${done_ck[2]}" -eq 0 ] || die "local checkpoint at the end: $(ckpt)"
[ "${done_ck[0]}" != "${killed[0]}" ] || die "the resumed sync kept the old sync id"
check_restore "the newest point equals the source"
/usr/bin/python3 "$CHECK" acked "$T/crash.log" "$T/out/vol0.img" ||
	die "an acknowledged write is missing after the crash"
echo "PASS"
