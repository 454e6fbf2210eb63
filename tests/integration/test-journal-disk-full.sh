#!/usr/bin/env bash
# The journal on a full disk: a 256 MiB ext4 on a loop device (a real block
# device, so O_DIRECT behaves as on the journal server's disk), part of it
# taken by a filler file. tests/unit/journal_fill appends incompressible
# segments until an append fails; the failure must be ENOSPC with a message
# that says the disk is full (the journal refuses before the disk is full
# to the last block, keeping room for its index so that it always opens
# again; or the kernel's "No space left on device"), and resending the
# segment must fail the same way. Then, each step in a new process (a
# restarted server): the journal reopens with the filler still there and
# every acknowledged segment is there, byte for byte, and restores; the filler
# is deleted; appending resumes; and everything is checked again. Root only
# (losetup, mount); CI runs as root.
#
# Why 256 MiB: RocksDB preallocates each new WAL file (~70 MiB: 1.1 x its
# 64 MiB write buffer) with fallocate, which on ext4 keeps what it got even
# when it fails, so on a smaller file system the very first extent write
# already finds the disk full. That space comes back when the journal closes.
source "$(dirname "$0")/lib.sh"

requires_root
requires losetup mkfs.ext4 mount umount mountpoint
fill=$CDP_BUILD/tests/journal_fill
[ -x "$fill" ] || die "$fill not built"

img=$T/fs.img
mnt=$T/mnt
loop=
cleanup_mount() {
	if mountpoint -q "$mnt"; then
		umount "$mnt" || umount -l "$mnt"
	fi
	if [ -n "$loop" ]; then
		losetup -d "$loop"
	fi
}
cleanup_fn cleanup_mount

mkdir -p "$mnt" "$T/restore1" "$T/restore2"
truncate -s 256M "$img"
loop=$(losetup -f --show "$img") || die "losetup failed"
# -m 0: no blocks reserved for root (we are root, and would get them).
mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0 "$loop" ||
	die "mkfs.ext4 $loop failed"
mount "$loop" "$mnt" || die "mount $loop failed"
dd if=/dev/zero of="$mnt/filler" bs=1M count=64 conv=fsync status=none ||
	die "could not write the filler file"
jdir=$mnt/journal

# value KEY FILE: the value of a key=value line.
value() {
	sed -n "s/^$1=//p" "$2" | tail -n 1
}

# 1. Fill.
"$fill" fill "$jdir" >"$T/fill.out" 2>"$T/fill.err" ||
	die "fill: $(cat "$T/fill.err" "$T/fill.out")"
acked=$(value last_acked "$T/fill.out")
code=$(value error_code "$T/fill.out")
msg=$(value error "$T/fill.out")
echo "fill: last acknowledged seq $acked; then error $code: $msg"
df -k "$mnt" | tail -n 1
[ -n "$acked" ] && [ "$acked" -gt 3 ] || die "fill: nothing was acknowledged before the failure"
[ "$code" = -28 ] || die "fill: append failed with $code ($msg), expected -28 (ENOSPC)"
case "$msg" in
*"disk full"* | *"No space left on device"*) ;;
*) die "fill: the error does not say the disk is full: $msg" ;;
esac
# A writer resends what failed: the same clear error each time, no crash.
resent=$(value resent "$T/fill.out")
same=$(value resent_same_error "$T/fill.out")
[ -n "$resent" ] && [ "$same" = "$resent" ] ||
	die "fill: $same of $resent resends failed with the same error: $(cat "$T/fill.err")"

# 2. Reopen on the full disk: every acknowledged segment is there and restores.
"$fill" check "$jdir" "$acked" "$T/restore1" >"$T/check1.out" 2>"$T/check1.err" ||
	die "check after fill: $(cat "$T/check1.err" "$T/check1.out")"
echo "check after fill: $(tr '\n' ' ' <"$T/check1.out")"

# 3. Room again: appending resumes where the chain ended.
rm -f "$mnt/filler"
sync -f "$mnt"
"$fill" append "$jdir" 8 >"$T/append.out" 2>"$T/append.err" ||
	die "append after freeing space: $(cat "$T/append.err" "$T/append.out")"
acked2=$(value last_acked "$T/append.out")
[ -n "$acked2" ] && [ "$acked2" -gt "$acked" ] ||
	die "append after freeing space: last acknowledged seq $acked2, not above $acked"
echo "append after freeing space: last acknowledged seq $acked2"

# 4. Everything, old and new, checked once more.
"$fill" check "$jdir" "$acked2" "$T/restore2" >"$T/check2.out" 2>"$T/check2.err" ||
	die "final check: $(cat "$T/check2.err" "$T/check2.out")"
echo "final check: $(tr '\n' ' ' <"$T/check2.out")"
echo "PASS"
