#!/usr/bin/env bash
# cdp_crc32c() (ISA-L underneath) agrees with an independent CRC32C: Python's
# crc32c module (Debian python3-crc32c), on random buffers of many lengths,
# whole and chained over pieces. Skips (77) only when the module is missing.
source "$(dirname "$0")/lib.sh"

py=/usr/bin/python3
tool=$CDP_BUILD/tests/crc32c_tool
[ -x "$py" ] && "$py" -c 'import crc32c' 2>/dev/null || skip "requires $py with the crc32c module"
[ -x "$tool" ] || die "$tool not built"

# Lengths around the 8/16/32/64-byte strides and ISA-L's block sizes, and a few MiB.
"$py" - "$T" <<'PY' || die "could not write the test buffers"
import os, random, sys
rnd = random.Random(3720)
lens = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256,
        257, 511, 512, 1023, 1024, 4095, 4096, 4097, 65535, 65536, 65537, 1048576 + 13,
        3 * 1048576 + 5]
lens += [rnd.randrange(1, 200000) for _ in range(20)]
for i, n in enumerate(lens):
    with open(os.path.join(sys.argv[1], "buf-%02d" % i), "wb") as f:
        f.write(rnd.randbytes(n))
PY

"$tool" "$T"/buf-* >"$T/c.out" || die "crc32c_tool failed"
"$py" - "$T/c.out" <<'PY' || die "cdp_crc32c disagrees with python crc32c"
import crc32c, sys
bad = checked = 0
for line in open(sys.argv[1]):
    whole, chained, path = line.split()
    data = open(path, "rb").read()
    want = crc32c.crc32c(data)
    for name, got in (("whole", whole), ("chained", chained)):
        if int(got, 16) != want:
            print("%s (%d bytes): %s crc %s, python crc32c %08x" % (path, len(data), name, got, want))
            bad += 1
    checked += 1
if checked < 50:
    print("only %d buffers checked" % checked)
    bad += 1
print("crc32c: %d buffers checked, %d mismatches" % (checked, bad))
sys.exit(1 if bad else 0)
PY
echo "crc32c ok"
