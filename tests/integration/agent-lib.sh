# tests/integration/agent-lib.sh - what the cdp-agent tests share, on top of
# lib.sh: the binaries, cdpctl on the test's journald socket, logs on failure,
# points, and "the newest point restores to the sources".
#
# A test sets SOCK (journald's unix socket) and VOLS (an array of
# "NAME=SOURCE_FILE") before calling restore_matches / check_restore.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JD=$CDP_BUILD/journald/cdp-journald
AGENT=$CDP_BUILD/capture/cdp-agent
CTL=$CDP_BUILD/tools/cdpctl
PLAN=db01
[ -x "$JD" ] && [ -x "$AGENT" ] && [ -x "$CTL" ] || die "build first: $JD, $AGENT, $CTL"

ctl() { "$CTL" --server "unix:$SOCK" "$@"; }

# On failure, the tails of the daemons' logs; CDP_KEEP_LOG=FILE keeps the
# whole agent log for a closer look.
dump_logs() {
	[ -n "${CDP_KEEP_LOG:-}" ] && [ -f "$T/cdp-agent.log" ] && cp "$T/cdp-agent.log" "$CDP_KEEP_LOG"
	[ "${EXIT_STATUS:-1}" -ne 0 ] || return 0
	for f in "$T"/cdp-journald.log "$T"/cdp-agent.log; do
		[ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
	done
	true
}
cleanup_fn dump_logs

# Seqs of the plan's consistent points, oldest first.
points() {
	ctl --json points "$PLAN" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for x in json.load(sys.stdin):
    if x["consistent"]:
        print(x["seq"])'
}
newest() { points | tail -n 1; }

# The plan's durable seq.
durable() {
	ctl --json status 2>/dev/null | /usr/bin/python3 -c '
import json, sys
print(next(p["durable_seq"] for p in json.load(sys.stdin) if p["plan"] == sys.argv[1]))' "$PLAN"
}

# Restores the newest consistent point into $T/out; true when every volume
# equals its source (the journal has caught up with every write).
restore_matches() {
	local s v
	s=$(newest)
	[ -n "$s" ] || return 1
	rm -rf "$T/out"
	ctl restore "$PLAN" --at "seq:$s" -o "$T/out" >/dev/null 2>&1 || return 1
	for v in "${VOLS[@]}"; do
		cmp -s "${v#*=}" "$T/out/${v%%=*}.img" || return 1
	done
	echo "$s" >"$T/matched"
}
check_restore() {
	wait_for 60 restore_matches ||
		die "$1: the newest point never equalled the sources (last: seq $(newest))"
	echo "ok: $1 (seq $(cat "$T/matched"))"
}

# The agent log from line $1 on matches $2 (use with logmark: wait_for-safe).
logmark() { wc -l <"$T/cdp-agent.log"; }
seen_since() { tail -n "+$(($1 + 1))" "$T/cdp-agent.log" | grep -q -- "$2"; }

# Writes $T/agent.conf for the plan's agent: journald at $1 (unix:PATH or
# HOST:PORT), then one "NAME=SOURCE=NBD_SOCKET" per volume; points every
# 200ms, sync caps off. What a test sets on top goes in the drop-in
# $T/agent.conf.d/50-test.conf (agent_conf_extra), read after the file.
write_agent_conf() {
	local addr=$1 i=0 v rest
	shift
	{
		printf '[agent]\nid = agent-%s\nplan = %s\nstate_dir = %s\n' "$PLAN" "$PLAN" "$T/agent-state"
		printf '[server]\naddress = %s\n' "$addr"
		printf '[capture]\npoint_interval = 200ms\n[sync]\nrate = 0\n'
		for v in "$@"; do
			rest=${v#*=}
			printf '[volume%d]\nname = %s\npath = %s\nnbd = unix:%s\n' "$i" "${v%%=*}" \
				"${rest%%=*}" "${rest#*=}"
			i=$((i + 1))
		done
	} >"$T/agent.conf"
	mkdir -p "$T/agent.conf.d"
	: >"$T/agent.conf.d/50-test.conf"
}
# Appends standard input (INI lines) to the test's drop-in.
agent_conf_extra() { cat >>"$T/agent.conf.d/50-test.conf"; }

# Writes the plan file for volumes "NAME:SIZE, ..." ($1).
write_plan() {
	cat >"$T/$PLAN.plan" <<EOF
[plan]
name = $PLAN
agent = agent-$PLAN
volumes = $1
retention = 1h
EOF
}
