#!/usr/bin/env bash
# The test scaffolding itself: wait_for gives up at its deadline, cleanups
# run on failure, start_daemon records the PID it ends (also through a lost
# SIGTERM), requires skips.
source "$(dirname "$0")/lib.sh"

# wait_for: succeeds once the condition holds, fails when it never does.
touch "$T/later" &
wait_for 5 test -e "$T/later" || die "wait_for missed a file that appeared"
start=$(date +%s%N)
if wait_for 1 test -e "$T/never"; then
	die "wait_for succeeded on a condition that never held"
fi
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
[ "$elapsed_ms" -ge 900 ] || die "wait_for gave up after ${elapsed_ms} ms, before its 1 s deadline"
[ "$elapsed_ms" -lt 5000 ] || die "wait_for overran its deadline: ${elapsed_ms} ms"

# A failing child test runs its cleanups and ends the daemons it started.
child=$T/child.sh
cat >"$child" <<CHILD
source "$CDP_SRC/tests/integration/lib.sh"
note() { echo cleaned >"$T/cleanup-ran"; }
cleanup_fn note
start_daemon -P "$T/sleeper.pid" sleep 300
die "deliberate failure"
CHILD
if CDP_BUILD=$CDP_BUILD bash "$child" 2>/dev/null; then
	die "a test that called die exited 0"
fi
[ "$(cat "$T/cleanup-ran" 2>/dev/null)" = cleaned ] || die "cleanup did not run on failure"
pid=$(cat "$T/sleeper.pid")
wait_for 5 bash -c "! kill -0 $pid" || die "daemon $pid outlived its test"

# Ending a daemon survives a lost first SIGTERM (one that lands between the
# fork and the exec is dropped): this one spends its first SIGTERM on
# removing its trap, and must still be gone, and reaped, at once.
start_daemon -P "$T/deaf.pid" bash -c 'trap "trap - TERM" TERM; while :; do sleep 0.01; done'
pid=$(cat "$T/deaf.pid")
wait_for 5 grep -q '^SigCgt:.*[1-9a-f]' "/proc/$pid/status" || die "the deaf daemon did not start"
start=$(date +%s%N)
_end_pid "$pid"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
[ ! -e "/proc/$pid" ] || die "daemon $pid still exists after _end_pid"
[ "$elapsed_ms" -lt 3000 ] || die "_end_pid took ${elapsed_ms} ms for a second SIGTERM"

# requires: a missing tool means exit 77 (skipped), never a pass.
rc=0
CDP_BUILD=$CDP_BUILD bash -c "source '$CDP_SRC/tests/integration/lib.sh'; requires no-such-tool-cdp" \
	2>/dev/null || rc=$?
[ "$rc" -eq 77 ] || die "requires of a missing tool exited $rc, not 77"
echo "lib.sh ok"
