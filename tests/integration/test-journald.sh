#!/usr/bin/env bash
# cdp-journald end to end, with real processes on a unix socket and TCP
# loopback: a plan's segments go in through Capture.Stream (tests/unit/
# capture_client, a test agent on proto/rpc) and come out of a restore by
# cdpctl byte for byte; bad input of every kind is refused with the expected
# status while a well-behaved stream on another plan keeps working; kill -9
# of the daemon mid-ingest loses nothing acknowledged and the agent resends
# only what the welcome says is missing; with mutual TLS the certificate's
# identity must match the plan's agent and Control needs the admin one; and
# Debian's python3-grpcio, with protoc's messages, lists plans and status; a
# standby is seeded and then fed every segment across a restart.
source "$(dirname "$0")/lib.sh"
requires openssl cmp

JD=$CDP_BUILD/journald/cdp-journald
CTL=$CDP_BUILD/tools/cdpctl
CLIENT=$CDP_BUILD/tests/capture_client
SOCK=$T/j.sock
[ -x "$JD" ] && [ -x "$CTL" ] && [ -x "$CLIENT" ] || die "build first: $JD, $CTL, $CLIENT"

start_jd() {
	start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK,127.0.0.1:0" \
		--set journal.extent_size=4MiB --set journal.verify_interval=50ms "$@"
	wait_for 20 grep -q "port [0-9]" "$T/cdp-journald.log" || die "journald did not start"
	PORT=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$T/cdp-journald.log" | tail -n 1)
}
stop_jd() {
	local pid
	pid=$(cat "$T/jd.pid")
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	cat "$T/cdp-journald.log" >>"$T/all-jd.log"
	rm -f "$T/cdp-journald.log"
}
dump_logs() { [ -f "$T/all-jd.log" ] && tail -n 30 "$T/all-jd.log" >&2; [ -f "$T/cdp-journald.log" ] && tail -n 30 "$T/cdp-journald.log" >&2; true; }
cleanup_fn dump_logs

ctl() { "$CTL" --server "unix:$SOCK" "$@"; }

for p in db01 db02 db03; do
	cat >"$T/$p.plan" <<EOF
[plan]
name = $p
agent = agent-$p
volumes = vol0:1MiB, vol1:1MiB
retention = 1h
EOF
done

# --help-config prints a sample file or (=markdown) the list in
# docs/configuration.md; another format is a usage error that names it.
"$JD" --help-config | grep -x '#verify_defer_max = 10s' >/dev/null || die "--help-config: no verify_defer_max"
"$JD" --help-config=markdown | grep '^- \*\*`verify_defer_max`\*\* = `10s`:$' >/dev/null ||
	die "--help-config=markdown: no verify_defer_max"
out=$("$JD" --help-config=man 2>&1) && die "--help-config=man succeeded"
[ "$out" = "cdp-journald: --help-config: 'man' is not one of: ini, markdown" ] ||
	die "--help-config=man: $out"
rc=0
"$JD" --help-config=man 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || die "--help-config=man: status $rc, not 2"
# --print-config: the files and flags in effect, as a file that loads to the same.
"$JD" --print-config --set journal.verify_defer_max=3s --state-dir "$T/x" >"$T/eff.conf" ||
	die "--print-config"
grep -qx 'verify_defer_max = 3s' "$T/eff.conf" || die "--print-config: no --set value"
grep -qx "state_dir = $T/x" "$T/eff.conf" || die "--print-config: no --state-dir value"
"$JD" --config "$T/eff.conf" --print-config | cmp -s - "$T/eff.conf" ||
	die "--print-config: its output does not load back to the same"

start_jd
ctl plan create "$T/db01.plan" >/dev/null || die "plan create db01"
ctl plan create "$T/db02.plan" >/dev/null || die "plan create db02"
ctl plan create "$T/db03.plan" >/dev/null || die "plan create db03"
out=$(ctl plan create "$T/db01.plan" 2>&1) && die "a second create of db01 succeeded"
case "$out" in *ALREADY_EXISTS*) ;; *) die "duplicate create: $out" ;; esac

# 1. Segments in, restore out, byte for byte (ingest on unix, restore on TCP).
mkdir -p "$T/model1" "$T/restore1"
"$CLIENT" "unix:$SOCK" db01 agent-db01 send 20 "$T/model1" >"$T/send1.out" ||
	die "send: $(tail -n 3 "$T/send1.out")"
acked=$(sed -n 's/^acked //p' "$T/send1.out")
[ -n "$acked" ] || die "no acked seq"
"$CTL" --server "127.0.0.1:$PORT" restore db01 --at "seq:$acked" -o "$T/restore1" >/dev/null ||
	die "restore over TCP"
cmp "$T/model1/vol0.img" "$T/restore1/vol0.img" || die "vol0 differs after restore"
cmp "$T/model1/vol1.img" "$T/restore1/vol1.img" || die "vol1 differs after restore"
npoints=$(ctl --json points db01 | /usr/bin/python3 -c 'import json,sys; p=json.load(sys.stdin); print(sum(1 for x in p if x["consistent"]))')
[ "$npoints" -ge 10 ] || die "only $npoints consistent points listed"
# cdpctl status --watch: reports keep coming over one channel, one JSON array
# a line; SIGTERM ends it with status 0. A bad interval is a usage error.
start_daemon -P "$T/watch.pid" "$CTL" --server "unix:$SOCK" --json status db01 --watch 50ms
watch_reports() { [ "$(grep -c '^\[{"plan":"db01"' "$T/cdpctl.log")" -ge 3 ]; }
wait_for 20 watch_reports || die "status --watch: fewer than 3 reports: $(tail -n 2 "$T/cdpctl.log")"
/usr/bin/python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$T/cdpctl.log" ||
	die "status --watch: a line that is not JSON"
wpid=$(cat "$T/watch.pid")
kill "$wpid"
wait "$wpid" || die "status --watch: exit status $? after SIGTERM"
out=$(ctl status --watch 1ms 2>&1) && die "status --watch 1ms was accepted"
case "$out" in *"--watch 1ms"*) ;; *) die "status --watch 1ms: $out" ;; esac
out=$(ctl plan list --watch 1s 2>&1) && die "plan list --watch was accepted"
case "$out" in *"only with status"*) ;; *) die "plan list --watch: $out" ;; esac
# A point inside a resync span is refused, naming the nearest consistent ones.
bad=$(ctl --json points db01 | /usr/bin/python3 -c 'import json,sys; print(next(x["seq"] for x in json.load(sys.stdin) if not x["consistent"]))')
out=$(ctl restore db01 --at "seq:$bad" -o "$T/restore-bad" 2>&1) && die "restored an inconsistent point"
case "$out" in *inconsistent*"nearest consistent"*) ;; *) die "inconsistent restore: $out" ;; esac

# The wire contract is standard gRPC: an independent Python client reads it.
requires protoc
mkdir -p "$T/py"
protoc -I"$CDP_SRC/proto" --python_out="$T/py" "$CDP_SRC"/proto/cdp/v1/*.proto ||
	die "protoc --python_out"
/usr/bin/python3 "$CDP_SRC/tests/integration/grpc_interop.py" "$T/py" "127.0.0.1:$PORT" db01 ||
	die "the python gRPC client failed"

# Clock skew: judged by when the agent says it sent each segment, not by the
# segments' own times (the test writer's are synthetic, as a cache's resend
# after a long link cut would be old): none above, one notice (KIND 2) when
# the agent's clock is 10 minutes ahead of the server's.
grep -q "^notice" "$T/send1.out" && die "a notice for an agent with the right clock: $(grep "^notice" "$T/send1.out")"
"$CLIENT" --clock-offset 600000 "unix:$SOCK" db01 agent-db01 send 22 >"$T/skew.out" ||
	die "send with a skewed clock: $(tail -n 3 "$T/skew.out")"
grep -Eq "^notice 2 plan db01: agent clock \+(59|60)[0-9]{4} ms" "$T/skew.out" ||
	die "no clock-skew notice: $(grep -c . "$T/skew.out") lines, $(grep "^notice" "$T/skew.out")"
# Behind: judged on a window of 16 segments (the least delayed of them).
"$CLIENT" --clock-offset -600000 "unix:$SOCK" db01 agent-db01 send 42 >"$T/skew2.out" ||
	die "send with a clock behind: $(tail -n 3 "$T/skew2.out")"
grep -Eq "^notice 2 plan db01: agent clock -(59|60)[0-9]{4} ms" "$T/skew2.out" ||
	die "no clock-skew notice for a clock behind: $(grep "^notice" "$T/skew2.out")"

# SIGHUP rereads the config and applies what applies at run time.
kill -HUP "$(cat "$T/jd.pid")"
wait_for 10 grep -q "reload: limits.max_clock_skew and limits.ingest_queue applied" \
	"$T/cdp-journald.log" || die "SIGHUP did not reload"
kill -0 "$(cat "$T/jd.pid")" || die "journald died on SIGHUP"

# 2. Bad input, each refused with its status, while db02 streams in parallel.
"$CLIENT" "unix:$SOCK" db02 agent-db02 send 60 >"$T/send2.out" 2>&1 &
good=$!
expect_status() {
	local mode=$1 want=$2 out
	out=$("$CLIENT" "unix:$SOCK" db01 agent-db01 "$mode" 2>&1) ||
		die "$mode: the server did not refuse it: $out"
	case "$out" in *"status $want"*) ;; *) die "$mode: expected $want, got: $out" ;; esac
}
expect_status unknown-plan NOT_FOUND
expect_status wrong-agent PERMISSION_DENIED
expect_status bad-epoch FAILED_PRECONDITION
expect_status bad-volumes INVALID_ARGUMENT
expect_status no-hello FAILED_PRECONDITION
expect_status gap OUT_OF_RANGE
expect_status corrupt INVALID_ARGUMENT
expect_status past-end INVALID_ARGUMENT
expect_status garbage INVALID_ARGUMENT
expect_status oversize RESOURCE_EXHAUSTED
wait "$good" || die "the well-behaved stream failed: $(tail -n 3 "$T/send2.out")"
grep -q '^acked ' "$T/send2.out" || die "db02 got no final ack"
kill -0 "$(cat "$T/jd.pid")" || die "journald died on bad input"

# 2b. A byte flipped in a stored extent after its ack is found (by the
# background verifier or by verify), and the agent is told to resync exactly
# the range that segment wrote.
"$CLIENT" "unix:$SOCK" db03 agent-db03 send 12 >/dev/null || die "send db03"
mkdir -p "$T/dmg"
"$CLIENT" "unix:$SOCK" db03 agent-db03 resync 0 "$T/dmg" >"$T/resync.out" 2>&1 &
rsc=$!
wait_for 30 grep -q "^acked " "$T/resync.out" || die "the damaged segment was not acked: $(cat "$T/resync.out")"
/usr/bin/python3 - "$T/state/extents/0000000000000003" "$T/dmg/last.seg" <<'PY' || die "flip"
import os, sys
d, seg = sys.argv[1], open(sys.argv[2], 'rb').read()
for name in sorted(os.listdir(d)):
    path = os.path.join(d, name)
    data = open(path, 'rb').read()
    at = data.find(seg)
    if at >= 0:
        with open(path, 'r+b') as f:
            f.seek(at + 160 + 40 + 100)   # header, record header, into the payload
            b = f.read(1)
            f.seek(at + 160 + 40 + 100)
            f.write(bytes([b[0] ^ 1]))
        sys.exit(0)
sys.exit("segment not found in " + d)
PY
# The verifier may have read it back already: an operator's verify (scrub)
# finds it then, and acts the same way.
out=$(ctl verify db03 2>&1) && die "verify passed over a damaged segment"
case "$out" in *seq*) ;; *) die "verify: $out" ;; esac
wait "$rsc" || die "resync client: $(tail -n 3 "$T/resync.out")"
grep -q '^resync 1:8192:4096$' "$T/resync.out" || die "resync command: $(cat "$T/resync.out")"
[ "$(grep -c '^resync ' "$T/resync.out")" -eq 1 ] || die "resync named more than the segment wrote"
st=$(ctl --json status db03 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["state"])')
case "$st" in damaged*) ;; *) die "db03 state after the damage: $st" ;; esac
# Found while no agent is connected: kept, and sent at the agent's next hello.
ctl verify db03 >/dev/null 2>&1 && die "verify passed over a damaged segment (2)"
"$CLIENT" "unix:$SOCK" db03 agent-db03 resync 0 "$T/dmg" >"$T/resync2.out" 2>&1 ||
	die "resync client (2): $(tail -n 3 "$T/resync2.out")"
grep -q '^resync 1:8192:4096$' "$T/resync2.out" ||
	die "no pending resync at the next hello: $(cat "$T/resync2.out")"

# 3. kill -9 mid-ingest: nothing acknowledged is lost; the agent resends the rest.
"$CLIENT" "unix:$SOCK" db01 agent-db01 send 3000 >"$T/send3.out" 2>&1 &
agent=$!
wait_for 30 grep -q '^ack ' "$T/send3.out" || die "no ack before the kill"
kill -9 "$(cat "$T/jd.pid")"
wait "$agent" 2>/dev/null && die "the agent did not notice the dead server"
maxack=$(sed -n 's/^ack //p' "$T/send3.out" | sort -n | tail -n 1)
cat "$T/cdp-journald.log" >>"$T/all-jd.log"; rm -f "$T/cdp-journald.log"
start_jd
durable=$(ctl --json status db01 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["durable_seq"])')
[ "$durable" -ge "$maxack" ] || die "acknowledged seq $maxack lost: journal holds $durable"
mkdir -p "$T/model3" "$T/restore3"
"$CLIENT" "unix:$SOCK" db01 agent-db01 send 3000 "$T/model3" >"$T/send4.out" 2>&1 ||
	die "resend after restart: $(tail -n 3 "$T/send4.out")"
acked=$(sed -n 's/^acked //p' "$T/send4.out")
ctl restore db01 --at "seq:$acked" -o "$T/restore3" >/dev/null || die "restore after restart"
cmp "$T/model3/vol0.img" "$T/restore3/vol0.img" || die "vol0 differs after the crash"
cmp "$T/model3/vol1.img" "$T/restore3/vol1.img" || die "vol1 differs after the crash"
ctl verify db01 >/dev/null || die "verify after the crash"
stop_jd

# 4. Mutual TLS: identities are checked.
"$CDP_SRC/tools/mkcerts" "$T/pki" agent-db01 agent-db02 admin >/dev/null || die "mkcerts"
P=$T/pki
start_jd --set tls.ca="$P/ca.crt" --set tls.cert="$P/server.crt" --set tls.key="$P/server.key"
tls() { echo --tls-ca "$P/ca.crt" --tls-cert "$P/$1.crt" --tls-key "$P/$1.key"; }
# shellcheck disable=SC2046
"$CLIENT" $(tls agent-db01) "127.0.0.1:$PORT" db01 agent-db01 send 3020 >"$T/send5.out" ||
	die "TLS send: $(tail -n 3 "$T/send5.out")"
# shellcheck disable=SC2046
out=$("$CLIENT" $(tls agent-db02) "127.0.0.1:$PORT" db01 agent-db01 send 3021 2>&1) &&
	die "db02's certificate streamed for db01"
case "$out" in *PERMISSION_DENIED*) ;; *) die "wrong certificate: $out" ;; esac
# shellcheck disable=SC2046
"$CTL" $(tls admin) --server "127.0.0.1:$PORT" status db01 >/dev/null || die "admin status over TLS"
# shellcheck disable=SC2046
out=$("$CTL" $(tls agent-db01) --server "127.0.0.1:$PORT" status 2>&1) && die "an agent used Control"
case "$out" in *PERMISSION_DENIED*) ;; *) die "agent on Control: $out" ;; esac
if [ -f "$P/rogue.crt" ]; then
	out=$("$CTL" --tls-ca "$P/ca.crt" --tls-cert "$P/rogue.crt" --tls-key "$P/rogue.key" \
		--server "127.0.0.1:$PORT" status 2>&1) && die "a rogue certificate was accepted"
fi
out=$("$CTL" --server "127.0.0.1:$PORT" status 2>&1) && die "plaintext reached a TLS server"
stop_jd

# 5. A standby is seeded (history was folded by the byte cap), then receives
# every segment in order, across a disconnect and a journald restart; its
# images equal the agent's volumes each time.
SB=$CDP_BUILD/tests/standby_client
cat >"$T/db04.plan" <<PLAN
[plan]
name = db04
agent = agent-db04
standbys = standby-db04
volumes = vol0:1MiB, vol1:1MiB
journal_max_bytes = 64KiB
; the test writer stamps 2023: keep its history and its standby's pin
retention = 2000d
standby_max_lag = 2000d
PLAN
start_jd --set journal.retain_interval=100ms
ctl plan create "$T/db04.plan" >/dev/null || die "plan create db04"
mkdir -p "$T/m4a" "$T/m4b" "$T/sb"
"$CLIENT" "unix:$SOCK" db04 agent-db04 send 40 "$T/m4a" >"$T/s4a.out" 2>&1 || die "send db04: $(tail -n 4 "$T/s4a.out")"
a=$(sed -n 's/^acked //p' "$T/s4a.out")
horizon() { ctl --json status db04 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["horizon_seq"])'; }
folded() { [ "$(horizon)" -gt 0 ]; }
wait_for 20 folded || die "the byte cap did not fold db04"
# Uncapped from here: the standby's cursor pins what it has not applied.
sed -i 's/^journal_max_bytes = .*/journal_max_bytes = 0/' "$T/db04.plan"
ctl plan apply "$T/db04.plan" >/dev/null || die "plan apply db04"
"$SB" "unix:$SOCK" db04 standby-db04 "$T/sb" "$a" >"$T/sb1.out" 2>&1 || die "standby: $(tail -n 3 "$T/sb1.out")"
grep -q '^seeded ' "$T/sb1.out" || die "the standby was not seeded: $(cat "$T/sb1.out")"
cmp "$T/m4a/vol0.img" "$T/sb/vol0.img" || die "standby vol0 differs"
cmp "$T/m4a/vol1.img" "$T/sb/vol1.img" || die "standby vol1 differs"
"$CLIENT" "unix:$SOCK" db04 agent-db04 send 80 "$T/m4b" >"$T/s4b.out" 2>&1 || die "send db04 more"
b=$(sed -n 's/^acked //p' "$T/s4b.out")
stop_jd
start_jd --set journal.retain_interval=100ms
"$SB" "unix:$SOCK" db04 standby-db04 "$T/sb" "$b" >"$T/sb2.out" 2>&1 || die "standby resume: $(tail -n 3 "$T/sb2.out")"
grep -q '^seeded ' "$T/sb2.out" && die "the standby was seeded again instead of resuming"
cmp "$T/m4b/vol0.img" "$T/sb/vol0.img" || die "standby vol0 differs after the restart"
cmp "$T/m4b/vol1.img" "$T/sb/vol1.img" || die "standby vol1 differs after the restart"
mkdir -p "$T/sb-other"
bad=$("$SB" "unix:$SOCK" db04 standby-other "$T/sb-other" "$b" 2>&1) && die "an unknown standby was served"
case "$bad" in *PERMISSION_DENIED*) ;; *) die "unknown standby: $bad" ;; esac
stop_jd
echo "journald ok"
