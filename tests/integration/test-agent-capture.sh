#!/usr/bin/env bash
# Capture correctness through cdp-agent: two volumes, random overlapping
# writes at queue depth 8 from libnbd (tests/integration/capture_check.py),
# every sector stamped with its write. Then every recovery point taken while
# they ran is restored and must be an image a power cut could have left: no
# torn write, and no write without every write that finished before it was
# submitted (also across volumes). The newest point equals the sources.
source "$(dirname "$0")/agent-lib.sh"
requires cmp
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "requires python3-libnbd"

CHECK=$CDP_SRC/tests/integration/capture_check.py
SOCK=$T/j.sock
SIZE=$((16 << 20))
VOLS=("vol0=$T/vol0.img" "vol1=$T/vol1.img")

write_plan "vol0:$SIZE, vol1:$SIZE"
write_agent_conf "unix:$SOCK" "vol0=$T/vol0.img=$T/vol0.nbd" "vol1=$T/vol1.img=$T/vol1.nbd"
agent_conf_extra <<EOF
[capture]
point_interval = 100ms
EOF
truncate -s "$SIZE" "$T/vol0.img" "$T/vol1.img"
start_daemon -P "$T/jd.pid" "$JD" --state-dir "$T/state" --listen "unix:$SOCK"
wait_for 20 test -S "$SOCK" || die "journald did not start"
ctl plan create "$T/db01.plan" >/dev/null || die "plan create"
start_daemon -P "$T/agent.pid" "$AGENT" --config "$T/agent.conf"
wait_for 20 test -S "$T/vol1.nbd" || die "agent did not start"
wait_for 60 grep -q "sync done" "$T/cdp-agent.log" || die "the full sync did not finish"
before=$(points | tail -n 1)

/usr/bin/python3 "$CHECK" write "$T/writes.log" 4000 8 $((SIZE / 512)) \
	"nbd+unix:///?socket=$T/vol0.nbd" "nbd+unix:///?socket=$T/vol1.nbd" ||
	die "the writes failed"
check_restore "the newest point equals both sources"

# Every point taken while the writes ran (at most 12, evenly spread).
mapfile -t all < <(points | awk -v b="$before" '$1 > b')
[ "${#all[@]}" -ge 3 ] || die "only ${#all[@]} points while writing"
step=$(((${#all[@]} + 11) / 12))
checked=0
for ((i = 0; i < ${#all[@]}; i += step)); do
	s=${all[$i]}
	rm -rf "$T/p"
	ctl restore db01 --at "seq:$s" -o "$T/p" >/dev/null || die "restore at seq $s"
	/usr/bin/python3 "$CHECK" verify "$T/writes.log" "$T/p/vol0.img" "$T/p/vol1.img" ||
		die "point at seq $s is not crash-consistent"
	checked=$((checked + 1))
done
echo "ok: $checked of ${#all[@]} points are crash-consistent"
echo "PASS"
