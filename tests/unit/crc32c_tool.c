/*
 * tests/unit/crc32c_tool - prints cdp_crc32c() of files, for the cross-check
 * against an independent implementation (tests/integration/test-crc32c.sh,
 * which recomputes them with Python's crc32c module).
 *
 *	crc32c_tool FILE...
 *
 * For each file prints "WHOLE CHAINED PATH": the CRC of the whole file in one
 * call, and the CRC chained over pieces of growing odd sizes (1, 3, 5, ...
 * bytes), both as 8 hex digits. Exit 1 on a read error.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "storage/segment.h"

static int one(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	size_t len = 0, cap = 1 << 16, n, off, piece;
	uint32_t whole, chained = 0;

	if (!f) {
		perror(path);
		return 1;
	}
	buf = cdp_xmalloc(cap);
	while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap)
			buf = cdp_xrealloc(buf, cap *= 2);
	}
	if (ferror(f)) {
		perror(path);
		fclose(f);
		free(buf);
		return 1;
	}
	fclose(f);
	whole = cdp_crc32c(0, buf, len);
	for (off = 0, piece = 1; off < len; off += n, piece += 2) {
		n = CDP_MIN(piece, len - off);
		chained = cdp_crc32c(chained, buf + off, n);
	}
	printf("%08x %08x %s\n", whole, chained, path);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int rc = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: crc32c_tool FILE...\n");
		return 2;
	}
	for (int i = 1; i < argc; i++)
		rc |= one(argv[i]);
	return rc;
}
