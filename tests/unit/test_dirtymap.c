/*
 * Tests of storage/dirtymap: rounding of set (outward) and clear (inward),
 * runs from next() clipped to the volume and max_len, the running dirty
 * byte count against a model, persist and reopen, parameter and argument
 * errors, damaged files, failed persists, power cuts at every data
 * operation of a workload (the shim: the map comes back as exactly the
 * last completed generation or the one in flight, never a mix), and
 * set/clear/persist from several threads.
 */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "storage/dirtymap.h"
#include "storage/io.h"
#include "storage/segment.h"

#define G 4096u

static int fx_setup(void **state)
{
	return cdp_test_dirfile_setup(state, "dirtymap");
}

static struct cdp_dirtymap *open_ok(const char *path, const struct cdp_dirtymap_opts *o)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m;
	int rc = cdp_dirtymap_open(path, o, &m, &err);

	if (rc)
		fail_msg("open %s: %d %s", path, rc, err.msg);
	return m;
}

static void persist_ok(struct cdp_dirtymap *m)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc = cdp_dirtymap_persist(m, &err);

	if (rc)
		fail_msg("persist: %d %s", rc, err.msg);
}

static uint64_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static void poke(const char *path, uint64_t off, uint8_t x)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= x;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static void expect_next(struct cdp_dirtymap *m, uint32_t v, uint64_t from, uint64_t max_len,
			uint64_t want_off, uint64_t want_len)
{
	uint64_t off = 0, len = 0;

	if (!cdp_dirtymap_next(m, v, from, max_len, &off, &len))
		fail_msg("next(%" PRIu32 ", %" PRIu64 "): none, want %" PRIu64 "+%" PRIu64, v,
			 from, want_off, want_len);
	if (off != want_off || len != want_len)
		fail_msg("next(%" PRIu32 ", %" PRIu64 "): %" PRIu64 "+%" PRIu64 ", want %" PRIu64
			 "+%" PRIu64, v, from, off, len, want_off, want_len);
}

static void expect_none(struct cdp_dirtymap *m, uint32_t v, uint64_t from)
{
	uint64_t off, len;

	if (cdp_dirtymap_next(m, v, from, 0, &off, &len))
		fail_msg("next(%" PRIu32 ", %" PRIu64 "): %" PRIu64 "+%" PRIu64 ", want none", v,
			 from, off, len);
}

/* The map of @v as one bool per block, read back through next() only. */
static void read_blocks(struct cdp_dirtymap *m, uint32_t v, uint64_t size, bool *blk)
{
	uint64_t nb = (size + G - 1) / G, from = 0, off, len;

	memset(blk, 0, nb * sizeof(*blk));
	while (cdp_dirtymap_next(m, v, from, 0, &off, &len)) {
		assert_true(len > 0);
		assert_true(off >= from && off + len <= size);
		/* Maximal runs: the block before and after are clean. */
		if (off % G == 0 && off > 0 && from < off)
			assert_false(blk[off / G - 1]);
		for (uint64_t b = off / G; b < (off + len + G - 1) / G; b++)
			blk[b] = true;
		from = off + len;
	}
}

/* ---- bits ------------------------------------------------------------- */

static void test_open_creates_a_clean_map(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t sizes[2] = { UINT64_C(64) << 30, 0 };
	struct cdp_dirtymap_opts o = { .nvolumes = 2, .volume_sizes = sizes };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);

	assert_int_equal(cdp_dirtymap_granularity(m), 65536);
	assert_int_equal(cdp_dirtymap_generation(m), 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 1), 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 2), 0);
	expect_none(m, 0, 0);
	expect_none(m, 1, 0);
	expect_none(m, 2, 0);
	/* Nothing changed: persist writes nothing. */
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 0);
	/* A volume of size 0 has no blocks: set and clear do nothing. */
	cdp_dirtymap_set(m, 1, 0, 100);
	cdp_dirtymap_clear(m, 1, 0, 100);
	expect_none(m, 1, 0);
	cdp_dirtymap_close(m);
	/* 4 KiB header; slots: 16 + 16384 words * 8 + 4 -> 132 KiB. */
	assert_int_equal(file_size(fx->path), 4096 + 2 * (16 * 8192 + 4096));
	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 0);
	cdp_dirtymap_close(m);
	cdp_dirtymap_close(NULL);
}

static void test_set_rounds_outward_and_clear_inward(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t size = 10 * G + 100;	/* block 10 is partial: 100 bytes */
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = &size, .granularity = G };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);

	assert_int_equal(cdp_dirtymap_granularity(m), G);
	cdp_dirtymap_set(m, 0, G + 904, 10);		/* inside block 1 */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), G);
	expect_next(m, 0, 0, 0, G, G);
	cdp_dirtymap_clear(m, 0, G + 1, G - 1);		/* misses the first byte */
	cdp_dirtymap_clear(m, 0, G, G - 1);		/* misses the last byte */
	cdp_dirtymap_clear(m, 0, 0, G + 10);		/* block 0 only */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), G);
	cdp_dirtymap_clear(m, 0, G - 1, G + 2);		/* covers block 1 wholly */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 0);
	cdp_dirtymap_set(m, 0, G - 1, 2);		/* touches blocks 0 and 1 */
	expect_next(m, 0, 0, 0, 0, 2 * G);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G);

	/* The partial last block counts its real bytes. */
	cdp_dirtymap_set(m, 0, size - 1, 1);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G + 100);
	expect_next(m, 0, 2 * G, 0, 10 * G, 100);
	cdp_dirtymap_clear(m, 0, 10 * G, 99);		/* not to the end: stays */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G + 100);
	cdp_dirtymap_clear(m, 0, 10 * G, 100);		/* to the end: the whole block */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G);
	cdp_dirtymap_set(m, 0, size - 1, 1);
	cdp_dirtymap_clear(m, 0, 10 * G, UINT64_MAX);	/* past the end, no overflow */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G);

	/* Everything, and ranges past the end or the 64-bit space. */
	cdp_dirtymap_set(m, 0, 0, UINT64_MAX);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), size);
	expect_next(m, 0, 0, 0, 0, size);
	cdp_dirtymap_clear(m, 0, G, UINT64_MAX);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), G);
	cdp_dirtymap_set(m, 0, UINT64_MAX - 5, 100);
	cdp_dirtymap_set(m, 0, size, 1);
	cdp_dirtymap_set(m, 0, 5 * G, 0);
	cdp_dirtymap_set(m, 1, 0, G);
	cdp_dirtymap_clear(m, 1, 0, G);
	cdp_dirtymap_clear(m, 0, 0, 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), G);
	expect_none(m, 0, G);
	expect_none(m, 0, size);
	expect_none(m, 0, UINT64_MAX);
	cdp_dirtymap_close(m);
}

static void test_next_returns_runs_clipped(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t sizes[2] = { 300 * G, 200 * G + 1 };
	struct cdp_dirtymap_opts o = { .nvolumes = 2, .volume_sizes = sizes, .granularity = G };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);

	cdp_dirtymap_set(m, 0, 60 * G, 10 * G);		/* across the word boundary */
	cdp_dirtymap_set(m, 0, 128 * G, 2 * G);
	cdp_dirtymap_set(m, 0, 299 * G, G);
	cdp_dirtymap_set(m, 1, 200 * G, 1);		/* the 1-byte last block */
	expect_next(m, 0, 0, 0, 60 * G, 10 * G);
	expect_next(m, 0, 62 * G + 5, 0, 62 * G + 5, 8 * G - 5);	/* from inside */
	expect_next(m, 0, 0, G, 60 * G, G);				/* max_len */
	expect_next(m, 0, 61 * G, 3, 61 * G, 3);
	expect_next(m, 0, 70 * G, 0, 128 * G, 2 * G);
	expect_next(m, 0, 130 * G, 0, 299 * G, G);
	expect_none(m, 0, 300 * G);
	expect_next(m, 1, 0, 0, 200 * G, 1);
	expect_none(m, 1, 200 * G + 1);
	/* A run over whole words, to the end of the volume. */
	cdp_dirtymap_set(m, 0, 0, 300 * G);
	expect_next(m, 0, 0, 0, 0, 300 * G);
	expect_next(m, 0, 0, 1000 * G, 0, 300 * G);
	cdp_dirtymap_clear(m, 0, 64 * G, 64 * G);	/* exactly word 1 */
	expect_next(m, 0, 0, 0, 0, 64 * G);
	expect_next(m, 0, 64 * G, 0, 128 * G, 172 * G);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 236 * G);
	cdp_dirtymap_close(m);
}

static void test_dirty_bytes_and_runs_match_a_model(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	enum { NV = 3 };
	uint64_t sizes[NV] = { 1000 * G + 123, 64 * G, 129 * G + 4095 };
	struct cdp_dirtymap_opts o = { .nvolumes = NV, .volume_sizes = sizes, .granularity = G };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);
	bool *model[NV], *got = cdp_xcalloc(1001, sizeof(bool));
	uint64_t x = 99;
	int steps = cdp_test_rounds(3000, 1000, 30000);

	for (int v = 0; v < NV; v++)
		model[v] = cdp_xcalloc(1001, sizeof(bool));
	for (int step = 0; step < steps; step++) {
		unsigned v;
		uint64_t nb, off, len, dirty = 0, a, b;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		v = (unsigned)(x % NV);
		nb = (sizes[v] + G - 1) / G;
		off = (x >> 8) % (sizes[v] + G);
		len = (x >> 32) % 4 == 0 ? (x >> 40) % (sizes[v] + 1) : (x >> 40) % (8 * G);
		if ((x >> 4) & 1) {
			cdp_dirtymap_set(m, v, off, len);
			if (len && off < sizes[v]) {
				a = off / G;
				b = (CDP_MIN(off + len, sizes[v]) + G - 1) / G;
				for (uint64_t k = a; k < b; k++)
					model[v][k] = true;
			}
		} else {
			cdp_dirtymap_clear(m, v, off, len);
			if (len && off < sizes[v]) {
				a = (off + G - 1) / G;
				b = off + len >= sizes[v] ? nb : (off + len) / G;
				for (uint64_t k = a; k < b; k++)
					model[v][k] = false;
			}
		}
		for (uint64_t k = 0; k < nb; k++)
			if (model[v][k])
				dirty += k == nb - 1 ? sizes[v] - k * G : G;
		assert_int_equal(cdp_dirtymap_dirty_bytes(m, v), dirty);
		if (step % 10 == 0) {
			read_blocks(m, v, sizes[v], got);
			assert_memory_equal(got, model[v], nb * sizeof(bool));
		}
	}
	persist_ok(m);
	cdp_dirtymap_close(m);
	m = open_ok(fx->path, &o);
	for (int v = 0; v < NV; v++) {
		uint64_t nb = (sizes[v] + G - 1) / G;

		read_blocks(m, (uint32_t)v, sizes[v], got);
		assert_memory_equal(got, model[v], nb * sizeof(bool));
		free(model[v]);
	}
	free(got);
	cdp_dirtymap_close(m);
}

/* ---- persist ---------------------------------------------------------- */

static void test_persist_and_reopen_keep_the_bits(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t sizes[2] = { 100 * G, 70 * G };
	struct cdp_dirtymap_opts o = { .nvolumes = 2, .volume_sizes = sizes, .granularity = G };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);

	cdp_dirtymap_set(m, 0, 5 * G, 3 * G);
	cdp_dirtymap_set(m, 1, 69 * G, G);
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	persist_ok(m);					/* nothing new */
	cdp_dirtymap_set(m, 0, 6 * G, 1);		/* already set: nothing new */
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	cdp_dirtymap_close(m);

	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	expect_next(m, 0, 0, 0, 5 * G, 3 * G);
	expect_next(m, 1, 0, 0, 69 * G, G);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 3 * G);
	/* Unpersisted changes are lost at close; persisted ones are not. */
	cdp_dirtymap_clear(m, 0, 0, 100 * G);
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 2);
	cdp_dirtymap_set(m, 0, 0, G);
	cdp_dirtymap_close(m);

	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 2);
	expect_none(m, 0, 0);
	expect_next(m, 1, 0, 0, 69 * G, G);
	/* A set then a clear of the same bit is a change: it is written. */
	cdp_dirtymap_set(m, 0, 0, G);
	cdp_dirtymap_clear(m, 0, 0, G);
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 3);
	cdp_dirtymap_close(m);
}

static void test_mismatched_parameters_are_refused(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t sizes[3] = { 100 * G, 70 * G, G };
	struct cdp_dirtymap_opts o = { .nvolumes = 2, .volume_sizes = sizes, .granularity = G };
	struct cdp_dirtymap_opts bad;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m = open_ok(fx->path, &o);
	uint64_t other[2] = { 100 * G, 71 * G };
	int rc;

	cdp_dirtymap_close(m);
	bad = o;
	bad.nvolumes = 3;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "nvolumes 3, the map has 2");
	assert_null(m);
	bad.nvolumes = 1;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "nvolumes 1, the map has 2");
	bad = o;
	bad.granularity = 8192;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "granularity 8192, the map has 4096");
	bad.granularity = 0;	/* the default, 64 KiB */
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "granularity 65536");
	bad = o;
	bad.volume_sizes = other;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "volume 1 size 290816, the map has 286720");
	assert_non_null(strstr(err.msg, fx->path));
	m = open_ok(fx->path, &o);
	cdp_dirtymap_close(m);
}

static void test_bad_options_are_refused(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t sizes[1] = { 100 * G }, huge = UINT64_C(1) << 62;
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = sizes, .granularity = G };
	struct cdp_dirtymap_opts bad;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m;
	int rc;

	bad = o;
	bad.nvolumes = 0;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "nvolumes 0");
	bad = o;
	bad.volume_sizes = NULL;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "volume_sizes");
	bad = o;
	bad.granularity = 3 * 4096;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "granularity 12288");
	bad.granularity = 2048;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "granularity 2048");
	bad.granularity = 131072;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "granularity 131072");
	bad = o;
	bad.volume_sizes = &huge;
	rc = cdp_dirtymap_open(fx->path, &bad, &m, &err);
	assert_err(&err, rc, -EINVAL, "volume 0 size 4611686018427387904: map over");
	assert_int_equal(access(fx->path, F_OK), -1);
}

static void test_damaged_files(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t size = 100 * G;
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = &size, .granularity = G };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m = open_ok(fx->path, &o);
	uint64_t slot = 4096;	/* 16 + 2 words * 8 + 4 -> one block */
	int rc, fd;

	cdp_dirtymap_set(m, 0, 0, G);
	persist_ok(m);				/* generation 1, slot 0 */
	cdp_dirtymap_set(m, 0, 90 * G, G);
	persist_ok(m);				/* generation 2, slot 1 */
	cdp_dirtymap_close(m);

	/* The newest slot damaged: the older generation, exactly. */
	poke(fx->path, 4096 + slot + 16 + 11, 0x04);	/* a bit of generation 2 */
	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	expect_next(m, 0, 0, 0, 0, G);
	expect_none(m, 0, G);
	/* The next persist goes to the damaged slot, never over generation 1. */
	cdp_dirtymap_set(m, 0, 50 * G, G);
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 2);
	cdp_dirtymap_close(m);
	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 2);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G);
	cdp_dirtymap_close(m);

	/* A valid slot with bits past the volume is refused, not trimmed. */
	{
		uint8_t b[16 + 16 + 4];
		uint32_t crc;

		fd = open(fx->path, O_RDWR);
		assert_true(fd >= 0);
		assert_int_equal(pread(fd, b, sizeof(b), 4096 + slot), (ssize_t)sizeof(b));
		b[16 + 8 + 7] |= 0x80;		/* bit 127: block 127 of 100 */
		crc = cdp_crc32c(0, b, 32);
		cdp_put_le32(b + 32, crc);
		assert_int_equal(pwrite(fd, b, sizeof(b), 4096 + slot), (ssize_t)sizeof(b));
		close(fd);
		rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
		assert_err(&err, rc, -EBADMSG, "bits past its 100 blocks");
	}

	/* Header damage is -EBADMSG; nothing is re-created over it. */
	poke(fx->path, 33, 0x01);			/* volume size, under the CRC */
	rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
	assert_err(&err, rc, -EBADMSG, "crc32c");
	poke(fx->path, 0, 0x01);
	rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
	assert_err(&err, rc, -EBADMSG, "magic");
	poke(fx->path, 0, 0x01);
	poke(fx->path, 12, 0x01);			/* header size */
	rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
	assert_err(&err, rc, -EBADMSG, "not a valid header");
	fd = open(fx->path, O_RDWR | O_TRUNC);
	assert_true(fd >= 0);
	close(fd);
	rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
	assert_err(&err, rc, -EBADMSG, "0 bytes");
	assert_int_equal(file_size(fx->path), 0);
}

static void test_failed_persist_keeps_the_last_generation(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t size = 100 * G;
	struct cdp_io_shim *s = cdp_io_shim_new(5);
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = &size, .granularity = G };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m;
	int rc;

	o.io = cdp_io_shim_ops(s);
	m = open_ok(fx->path, &o);
	cdp_dirtymap_set(m, 0, 0, G);
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	cdp_dirtymap_set(m, 0, 10 * G, G);
	cdp_io_shim_fail_nth(s, 1, EIO);
	rc = cdp_dirtymap_persist(m, &err);
	assert_err(&err, rc, -EIO, "writing slot 1 (generation 2)");
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	cdp_io_shim_fail_nth(s, 2, EIO);
	rc = cdp_dirtymap_persist(m, &err);
	assert_err(&err, rc, -EIO, "fdatasync of slot 1 (generation 3)");
	assert_int_equal(cdp_dirtymap_generation(m), 1);
	/* Still the other slot: generation 1 stays safe through every retry. */
	persist_ok(m);
	assert_int_equal(cdp_dirtymap_generation(m), 4);
	cdp_dirtymap_close(m);
	cdp_io_shim_free(s);

	o.io = NULL;
	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_generation(m), 4);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 2 * G);
	cdp_dirtymap_close(m);

	/* A failed creation leaves no map. */
	unlink(fx->path);
	for (unsigned long nth = 1; nth <= 2; nth++) {
		s = cdp_io_shim_new(nth);
		o.io = cdp_io_shim_ops(s);
		cdp_io_shim_fail_nth(s, nth, EIO);
		rc = cdp_dirtymap_open(fx->path, &o, &m, &err);
		assert_err(&err, rc, -EIO, "dirtymap.tmp");
		assert_int_equal(access(fx->path, F_OK), -1);
		cdp_io_shim_free(s);
	}
}

/*
 * fsyncgate: a persist whose fdatasync failed may land whole, torn or not at
 * all. Two in a row, then a power cut: the map is the synced generation or
 * the (same) map of the failed ones, never a mix, never empty.
 */
static void test_failed_syncs_then_a_cut_keep_the_last_generation(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t size = 32768 * G;	/* 512 words: a slot over 9 sectors (tears) */
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = &size, .granularity = G };
	struct cdp_err err = CDP_ERR_INIT;
	unsigned seeds = (unsigned)cdp_test_rounds(40, 20, 400);
	uint64_t slot = 8192;	/* 16 + 4096 + 4 bytes, rounded up */

	for (unsigned seed = 0; seed < seeds; seed++) {
		struct cdp_io_shim *s = cdp_io_shim_new(seed);
		struct cdp_dirtymap *m;
		uint64_t gen, bytes;
		uint8_t *before = cdp_xmalloc(slot), *after = cdp_xmalloc(slot);
		int fd;

		unlink(fx->path);
		o.io = cdp_io_shim_ops(s);
		m = open_ok(fx->path, &o);
		for (uint64_t b = 0; b < 32768; b += 4)
			cdp_dirtymap_set(m, 0, b * G, G);
		persist_ok(m);					/* generation 1, slot 0 */
		fd = open(fx->path, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(pread(fd, before, slot, 4096), (ssize_t)slot);
		for (uint64_t b = 2; b < 32768; b += 4)
			cdp_dirtymap_set(m, 0, b * G, G);
		for (int k = 0; k < 3; k++) {
			cdp_io_shim_fail_nth(s, 2, EIO);
			assert_int_equal(cdp_dirtymap_persist(m, &err), -EIO);
		}
		assert_int_equal(pread(fd, after, slot, 4096), (ssize_t)slot);
		close(fd);
		assert_memory_equal(before, after, slot);
		free(before);
		free(after);
		cdp_io_shim_power_cut(s);
		cdp_dirtymap_close(m);
		cdp_io_shim_free(s);
		o.io = NULL;
		m = open_ok(fx->path, &o);
		gen = cdp_dirtymap_generation(m);
		bytes = cdp_dirtymap_dirty_bytes(m, 0);
		if (!(gen == 1 && bytes == 8192 * G) && !(gen > 1 && bytes == 16384 * G))
			fail_msg("seed %u: generation %" PRIu64 " with %" PRIu64 " dirty bytes", seed,
				 gen, bytes);
		cdp_dirtymap_close(m);
	}
}

/* ---- power cuts ------------------------------------------------------- */

#define CNV 2
#define CNB 4096		/* blocks per volume: a slot over 3 sectors (tears) */
#define CMAXGEN 64

struct gens {
	bool map[CMAXGEN][CNV][CNB];	/* the map each generation holds */
	bool cur[CNV][CNB];		/* in memory now */
	uint64_t done;			/* newest generation persisted */
	uint64_t inflight;		/* the generation of a persist cut short, or 0 */
};

static void check_map(struct cdp_dirtymap *m, const bool want[CNV][CNB], const char *when,
		      unsigned long nth)
{
	bool got[CNB];

	for (uint32_t v = 0; v < CNV; v++) {
		read_blocks(m, v, CNB * G, got);
		if (memcmp(got, want[v], sizeof(got)))
			fail_msg("cut %lu, %s: volume %" PRIu32 " differs from its generation",
				 nth, when, v);
	}
}

/* Two sessions of sets, clears and persists, cut at the @nth data operation. */
static bool cut_run(const char *path, uint64_t seed, unsigned long nth, struct gens *g,
		    struct cdp_io_shim_stats *st)
{
	uint64_t sizes[CNV] = { CNB * G, CNB * G - 1000 };
	struct cdp_io_shim *s = cdp_io_shim_new(seed * 7919 + nth);
	struct cdp_dirtymap_opts o = { .nvolumes = CNV, .volume_sizes = sizes, .granularity = G };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_dirtymap *m;
	uint64_t x = seed | 1;
	bool cut = false;
	int rc;

	memset(g, 0, sizeof(*g));
	o.io = cdp_io_shim_ops(s);
	unlink(path);
	cdp_io_shim_cut_at(s, nth);
	for (int session = 0; session < 2 && !cut; session++) {
		rc = cdp_dirtymap_open(path, &o, &m, &err);
		if (rc) {
			assert_int_equal(rc, -EIO);
			cut = true;
			break;
		}
		assert_int_equal(cdp_dirtymap_generation(m), g->done);
		check_map(m, (const bool(*)[CNB])g->map[g->done], "clean reopen", nth);
		memcpy(g->cur, g->map[g->done], sizeof(g->cur));
		for (int step = 0; step < 60; step++) {
			uint32_t v;
			uint64_t off, len, a, b;

			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			if (x % 5 == 0) {
				uint64_t before = cdp_dirtymap_generation(m);

				assert_true(before + 1 < CMAXGEN);
				memcpy(g->map[before + 1], g->cur, sizeof(g->cur));
				rc = cdp_dirtymap_persist(m, &err);
				if (rc) {
					assert_int_equal(rc, -EIO);
					g->inflight = before + 1;
					cut = true;
					break;
				}
				g->done = cdp_dirtymap_generation(m);
				assert_true(g->done == before || g->done == before + 1);
				continue;
			}
			v = (uint32_t)(x >> 8) % CNV;
			off = (x >> 16) % sizes[v];
			len = 1 + (x >> 40) % (600 * G);
			if ((x >> 4) % 3) {
				cdp_dirtymap_set(m, v, off, len);
				a = off / G;
				b = (CDP_MIN(off + len, sizes[v]) + G - 1) / G;
				for (uint64_t k = a; k < b; k++)
					g->cur[v][k] = true;
			} else {
				cdp_dirtymap_clear(m, v, off, len);
				a = (off + G - 1) / G;
				b = off + len >= sizes[v] ? (sizes[v] + G - 1) / G : (off + len) / G;
				for (uint64_t k = a; k < b; k++)
					g->cur[v][k] = false;
			}
		}
		cdp_dirtymap_close(m);
	}
	if (cut) {
		struct cdp_io_shim_stats cs = cdp_io_shim_power_cut(s);
		uint64_t gen;

		st->torn += cs.torn;
		st->dropped += cs.dropped;
		st->kept += cs.kept;
		o.io = NULL;
		rc = cdp_dirtymap_open(path, &o, &m, &err);
		if (rc)
			fail_msg("cut %lu: reopen: %d %s", nth, rc, err.msg);
		gen = cdp_dirtymap_generation(m);
		if (gen != g->done && !(g->inflight && gen == g->inflight))
			fail_msg("cut %lu: generation %" PRIu64 ", want %" PRIu64 " or %" PRIu64,
				 nth, gen, g->done, g->inflight);
		check_map(m, (const bool(*)[CNB])g->map[gen], "after the cut", nth);
		cdp_dirtymap_close(m);
	}
	cdp_io_shim_free(s);
	return cut;
}

static void test_power_cut_at_every_persist(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct gens *g = cdp_xcalloc(1, sizeof(*g));
	int rounds = cdp_test_rounds(4, 2, 40);
	struct cdp_io_shim_stats st = { 0 };
	unsigned long cuts = 0;

	for (int r = 0; r < rounds; r++) {
		for (unsigned long nth = 1;; nth++) {
			if (!cut_run(fx->path, 31 + (uint64_t)r, nth, g, &st))
				break;
			cuts++;
		}
		assert_true(g->done > 5);
	}
	assert_true(cuts > 20);
	assert_true(st.torn > 0 && st.dropped > 0 && st.kept > 0);
	free(g);
}

/* ---- threads ---------------------------------------------------------- */

struct mt {
	pthread_t t;
	struct cdp_dirtymap *m;
	unsigned id;
	int iters;
	int fails;
};

/* Thread @id owns the blocks b with b % 4 == id: sets them all, clears the odd ones. */
static void *mt_worker(void *arg)
{
	struct mt *w = arg;
	struct cdp_err err = CDP_ERR_INIT;

	for (int n = 0; n < w->iters; n++) {
		uint64_t b = (uint64_t)(n % 256) * 4 + w->id;

		cdp_dirtymap_set(w->m, 0, b * G + 7, 10);
		if (b % 2)
			cdp_dirtymap_clear(w->m, 0, b * G, G);
		if (n % 8 == 0 && cdp_dirtymap_persist(w->m, &err))
			w->fails++;
	}
	return NULL;
}

static void test_threads_set_clear_persist(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint64_t size = 1024 * G;
	struct cdp_dirtymap_opts o = { .nvolumes = 1, .volume_sizes = &size, .granularity = G };
	struct cdp_dirtymap *m = open_ok(fx->path, &o);
	int iters = cdp_test_rounds(1024, 512, 8192);
	struct mt w[4];

	for (unsigned i = 0; i < 4; i++) {
		w[i] = (struct mt){ .m = m, .id = i, .iters = iters };
		assert_int_equal(pthread_create(&w[i].t, NULL, mt_worker, &w[i]), 0);
	}
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(w[i].t, NULL), 0);
		assert_int_equal(w[i].fails, 0);
	}
	/* Even blocks dirty, odd ones clean; every thread's last changes persisted. */
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 512 * G);
	assert_true(cdp_dirtymap_generation(m) > 0);
	persist_ok(m);
	cdp_dirtymap_close(m);
	m = open_ok(fx->path, &o);
	assert_int_equal(cdp_dirtymap_dirty_bytes(m, 0), 512 * G);
	for (uint64_t b = 0; b < 1024; b += 2)
		expect_next(m, 0, b * G, 0, b * G, G);
	cdp_dirtymap_close(m);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, cdp_test_dirfile_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_open_creates_a_clean_map),
		T(test_set_rounds_outward_and_clear_inward),
		T(test_next_returns_runs_clipped),
		T(test_dirty_bytes_and_runs_match_a_model),
		T(test_persist_and_reopen_keep_the_bits),
		T(test_mismatched_parameters_are_refused),
		T(test_bad_options_are_refused),
		T(test_damaged_files),
		T(test_failed_persist_keeps_the_last_generation),
		T(test_failed_syncs_then_a_cut_keep_the_last_generation),
		T(test_power_cut_at_every_persist),
		T(test_threads_set_clear_persist),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
