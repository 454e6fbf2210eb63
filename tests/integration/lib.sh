# tests/integration/lib.sh - sourced by every integration test.
#
#   source "$(dirname "$0")/lib.sh"
#   requires nbdinfo qemu-io          # exit 77 (skipped) when a tool is missing
#   requires_root                     # exit 77 unless root
#   cleanup_fn my_cleanup             # runs at exit, also on failure, in reverse order
#   start_daemon -P pidfile CMD...    # starts CMD in the background, records its PID
#   wait_for 10 test -S "$sock"       # polls CMD until it succeeds or 10 s pass
#   die "message"                     # fails the test with a message
#
# Tests run the binaries of the build under test: $CDP_BUILD (set by ctest) is
# its directory. Scratch space: $T, removed at exit. Only processes this test
# started are ever killed, by their recorded PID.
set -euo pipefail

: "${CDP_BUILD:?CDP_BUILD must name the build directory (ctest sets it)}"
: "${CDP_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"

T=$(mktemp -d "${TMPDIR:-/var/tmp}/cdp-it-XXXXXX")
_cleanups=()
_daemon_pids=()

die() {
	echo "FAIL: $*" >&2
	exit 1
}

skip() {
	echo "SKIP: $*" >&2
	exit 77
}

requires() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null 2>&1 || skip "requires $tool"
	done
}

requires_root() {
	[ "$(id -u)" -eq 0 ] || skip "requires root"
}

cleanup_fn() {
	_cleanups+=("$1")
}

# Ends a daemon we started: SIGTERM, repeated every 50 ms (a SIGTERM that
# lands between our fork and the child's exec is lost: bash drops a trapped
# signal pending in a new subshell when it resets the traps), SIGKILL after
# 5 s. Then reaps it.
_running() {
	local st
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "${st%% *}" != Z ]	# a zombie has exited, only not reaped yet
}
_end_pid() {
	local n
	kill "$1" 2>/dev/null || return 0
	for ((n = 0; n < 100; n++)); do
		_running "$1" || break
		sleep 0.05
		kill "$1" 2>/dev/null || true
	done
	kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# EXIT_STATUS: the test's exit status, for cleanups that only speak on failure.
_run_cleanups() {
	local rc=$? i pid
	EXIT_STATUS=$rc
	set +e
	for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
		"${_cleanups[$i]}"
	done
	for pid in "${_daemon_pids[@]}"; do
		_end_pid "$pid"
	done
	rm -rf "$T"
	exit "$rc"
}
trap _run_cleanups EXIT
trap 'exit 130' INT TERM

# start_daemon -P PIDFILE CMD...: CMD runs in the background with its output
# in $T/<name>.log; its PID goes to PIDFILE and is ended at exit.
start_daemon() {
	local pidfile
	[ "${1:-}" = -P ] || die "start_daemon: usage: start_daemon -P PIDFILE CMD..."
	pidfile=$2
	shift 2
	"$@" >>"$T/$(basename "$1").log" 2>&1 &
	echo $! >"$pidfile"
	_daemon_pids+=($!)
}

# wait_for DEADLINE_SECONDS CMD...: polls CMD every 50 ms; fails after the deadline.
wait_for() {
	local deadline=$1 end
	shift
	end=$(($(date +%s%N) + deadline * 1000000000))
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s%N)" -ge "$end" ]; then
			echo "wait_for: '$*' did not succeed within ${deadline}s" >&2
			return 1
		fi
		sleep 0.05
	done
}
