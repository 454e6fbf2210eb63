/*
 * Tests of storage/syncckpt: a checkpoint written reads back; no file is
 * "none"; a torn (every shorter length), overlong, garbage, bit-flipped,
 * other-version or reserved-bytes file is one -EBADMSG line naming the file;
 * a stale temporary file from a crash changes nothing; power cuts at every
 * data operation of a write leave the old checkpoint or the new one; the
 * write policy (due) without sleeping, the sync order (before), and how the
 * local copy weighs against the journal's at start (compare).
 */
#include "tests/unit/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>

#include "common/util.h"
#include "storage/io.h"
#include "storage/segment.h"
#include "storage/syncckpt.h"

static int fx_setup(void **state)
{
	return cdp_test_dirfile_setup(state, "sync-checkpoint");
}

static const struct cdp_syncckpt CK1 = { .sync_id = 0x1122334455667788ull, .kind = 1,
					 .volume = 2, .offset = 0xa0000000ull };
static const struct cdp_syncckpt CK2 = { .sync_id = 0x1122334455667788ull, .kind = 1,
					 .volume = 3, .offset = 4096 };

static void write_ok(const char *path, const struct cdp_syncckpt *ck)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc = cdp_syncckpt_write(path, ck, NULL, &err);

	if (rc)
		fail_msg("write %s: %d %s", path, rc, err.msg);
}

static void assert_reads(const char *path, const struct cdp_syncckpt *want)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_syncckpt got;
	int rc = cdp_syncckpt_read(path, &got, NULL, &err);

	if (rc != 1)
		fail_msg("read %s: %d %s", path, rc, err.msg);
	assert_int_equal(got.sync_id, want->sync_id);
	assert_int_equal(got.kind, want->kind);
	assert_int_equal(got.volume, want->volume);
	assert_int_equal(got.offset, want->offset);
}

static void put_file(const char *path, const void *b, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, b, n), (ssize_t)n);
	close(fd);
}

static size_t get_file(const char *path, uint8_t *b, size_t n)
{
	int fd = open(path, O_RDONLY);
	ssize_t r;

	assert_true(fd >= 0);
	r = read(fd, b, n);
	close(fd);
	assert_true(r >= 0);
	return (size_t)r;
}

/* The file fails with -EBADMSG and one line naming it and containing @needle. */
static void assert_bad(const char *path, const char *needle)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_syncckpt got;
	int rc = cdp_syncckpt_read(path, &got, NULL, &err);

	assert_err(&err, rc, -EBADMSG, needle);
	if (!strstr(err.msg, path))
		fail_msg("error '%s' does not name %s", err.msg, path);
	assert_null(strchr(err.msg, '\n'));
}

static void test_write_then_read(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint8_t b[64];

	write_ok(fx->path, &CK1);
	assert_reads(fx->path, &CK1);
	assert_int_equal(get_file(fx->path, b, sizeof(b)), CDP_SYNCCKPT_LEN);
	assert_memory_equal(b, "CDP-SCKP", 8);
	write_ok(fx->path, &CK2);	/* replaces */
	assert_reads(fx->path, &CK2);
	assert_int_equal(access(fx->path, F_OK), 0);
	assert_int_equal(get_file(fx->path, b, sizeof(b)), CDP_SYNCCKPT_LEN);
}

static void test_missing_file_is_none(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_syncckpt got;

	assert_int_equal(cdp_syncckpt_read(fx->path, &got, NULL, &err), 0);
	assert_int_equal(err.code, 0);
}

static void test_torn_file_is_an_error(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint8_t b[CDP_SYNCCKPT_LEN];

	write_ok(fx->path, &CK1);
	get_file(fx->path, b, sizeof(b));
	for (size_t n = 0; n < CDP_SYNCCKPT_LEN; n++) {
		char want[64];

		put_file(fx->path, b, n);
		snprintf(want, sizeof(want), "%zu bytes, expected %d", n, CDP_SYNCCKPT_LEN);
		assert_bad(fx->path, want);
	}
}

static void test_overlong_file_is_an_error(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint8_t b[CDP_SYNCCKPT_LEN + 8] = { 0 };

	write_ok(fx->path, &CK1);
	get_file(fx->path, b, CDP_SYNCCKPT_LEN);
	put_file(fx->path, b, sizeof(b));
	assert_bad(fx->path, "more than 44 bytes");
}

static void test_garbage_and_flipped_bits_are_errors(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint8_t b[CDP_SYNCCKPT_LEN], g[CDP_SYNCCKPT_LEN];
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < sizeof(g); i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		g[i] = (uint8_t)x;
	}
	put_file(fx->path, g, sizeof(g));
	assert_bad(fx->path, "bad magic");

	write_ok(fx->path, &CK1);
	get_file(fx->path, b, sizeof(b));
	for (size_t bit = 8 * 8; bit < 8 * CDP_SYNCCKPT_LEN; bit++) {
		uint8_t f[CDP_SYNCCKPT_LEN];

		memcpy(f, b, sizeof(f));
		f[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		put_file(fx->path, f, sizeof(f));
		assert_bad(fx->path, "CRC");
	}
}

static void test_version_and_reserved_are_checked(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	uint8_t b[CDP_SYNCCKPT_LEN];

	write_ok(fx->path, &CK1);
	get_file(fx->path, b, sizeof(b));
	cdp_put_le32(b + 8, 2);
	cdp_put_le32(b + 40, cdp_crc32c(0, b, 40));
	put_file(fx->path, b, sizeof(b));
	assert_bad(fx->path, "version 2, expected 1");

	write_ok(fx->path, &CK1);
	get_file(fx->path, b, sizeof(b));
	b[29] = 1;
	cdp_put_le32(b + 40, cdp_crc32c(0, b, 40));
	put_file(fx->path, b, sizeof(b));
	assert_bad(fx->path, "reserved");
}

/* A crash between the temporary file and the rename leaves it behind. */
static void test_stale_tmp_changes_nothing(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	char tmp[320];

	write_ok(fx->path, &CK1);
	snprintf(tmp, sizeof(tmp), "%s.tmp", fx->path);
	put_file(tmp, "half", 4);
	assert_reads(fx->path, &CK1);
	write_ok(fx->path, &CK2);
	assert_reads(fx->path, &CK2);
	assert_int_not_equal(access(tmp, F_OK), 0);
}

/* A power cut at each data operation of a write: the old checkpoint or the new one. */
static void test_power_cut_leaves_old_or_new(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	bool saw_old = false, saw_new = false;

	for (unsigned long nth = 1; nth <= 4; nth++) {
		struct cdp_io_shim *shim = cdp_io_shim_new(nth);
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_syncckpt got;
		int rc;

		write_ok(fx->path, &CK1);
		cdp_io_shim_cut_at(shim, nth);
		rc = cdp_syncckpt_write(fx->path, &CK2, cdp_io_shim_ops(shim), &err);
		cdp_io_shim_power_cut(shim);
		cdp_io_shim_free(shim);
		assert_int_equal(cdp_syncckpt_read(fx->path, &got, NULL, &err), 1);
		if (rc) {
			assert_int_equal(got.volume, CK1.volume);
			assert_int_equal(got.offset, CK1.offset);
			saw_old = true;
		} else {
			assert_int_equal(got.volume, CK2.volume);
			assert_int_equal(got.offset, CK2.offset);
			saw_new = true;
		}
	}
	assert_true(saw_old);
	assert_true(saw_new);
}

static void test_due(void **state)
{
	const int64_t s = 1000000000;
	struct cdp_syncckpt last = { .sync_id = 7, .kind = 1, .volume = 0, .offset = 1 << 20 };
	struct cdp_syncckpt ck = last;

	(void)state;
	/* Nothing written yet, a new sync: at once. */
	assert_true(cdp_syncckpt_due(&ck, NULL, 0, 0, s, 2));
	ck.sync_id = 8;
	assert_true(cdp_syncckpt_due(&ck, &last, 10 * s, 10 * s, s, 2));
	/* The same checkpoint: never. */
	ck = last;
	assert_false(cdp_syncckpt_due(&ck, &last, 0, 100 * s, s, 2));
	assert_false(cdp_syncckpt_due(&ck, &last, 0, 100 * s, 0, 2));
	/* Progress: once the interval has passed. */
	ck.offset = 8 << 20;
	assert_false(cdp_syncckpt_due(&ck, &last, 10 * s, 10 * s + s - 1, s, 2));
	assert_true(cdp_syncckpt_due(&ck, &last, 10 * s, 11 * s, s, 2));
	assert_true(cdp_syncckpt_due(&ck, &last, 10 * s, 10 * s, 0, 2));
	ck.volume = 1;
	ck.offset = 0;
	assert_false(cdp_syncckpt_due(&ck, &last, 10 * s, 10 * s + 1, s, 2));
	/* Finished (past the last volume): at once. */
	ck.volume = 2;
	assert_true(cdp_syncckpt_due(&ck, &last, 10 * s, 10 * s + 1, s, 2));
}

static void test_before(void **state)
{
	struct cdp_syncckpt a = { .volume = 0, .offset = 100 }, b = { .volume = 1, .offset = 0 };

	(void)state;
	assert_true(cdp_syncckpt_before(&a, &b));
	assert_false(cdp_syncckpt_before(&b, &a));
	assert_false(cdp_syncckpt_before(&a, &a));
	b.volume = 0;
	b.offset = 101;
	assert_true(cdp_syncckpt_before(&a, &b));
}

static void test_compare(void **state)
{
	const struct cdp_syncckpt l = { .sync_id = 5, .kind = CDP_SYNC_FULL, .volume = 1,
					.offset = 8 << 20 };
	struct cdp_syncckpt j = l, done = l;

	(void)state;
	done.volume = 2;
	done.offset = 0;
	/* No local copy, or not a full sync: nothing to say. */
	assert_int_equal(cdp_syncckpt_compare(NULL, &j, 2), CDP_SYNCCKPT_QUIET);
	j.kind = CDP_SYNC_INCREMENTAL;
	assert_int_equal(cdp_syncckpt_compare(&j, &l, 2), CDP_SYNCCKPT_QUIET);
	/* The same sync: resume from the journal's, at or past ours. */
	j = l;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_RESUME);
	j.offset += 4096;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_RESUME);
	/* ... or finished there: ours lagged, nothing to say. */
	assert_int_equal(cdp_syncckpt_compare(&l, &done, 2), CDP_SYNCCKPT_QUIET);
	assert_int_equal(cdp_syncckpt_compare(&done, &done, 2), CDP_SYNCCKPT_QUIET);
	/* The journal's behind ours (also behind a finished one): it lost data. */
	j.offset = l.offset - 4096;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_JOURNAL_BEHIND);
	j.volume = 0;
	j.offset = 100 << 20;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_JOURNAL_BEHIND);
	assert_int_equal(cdp_syncckpt_compare(&done, &l, 2), CDP_SYNCCKPT_JOURNAL_BEHIND);
	/* Ours unfinished, the journal at another sync or none (plan recreated). */
	j = l;
	j.sync_id = 6;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_JOURNAL_OTHER);
	assert_int_equal(cdp_syncckpt_compare(&l, NULL, 2), CDP_SYNCCKPT_JOURNAL_NONE);
	j.kind = CDP_SYNC_INCREMENTAL;
	assert_int_equal(cdp_syncckpt_compare(&l, &j, 2), CDP_SYNCCKPT_JOURNAL_NONE);
	/* Ours finished, the journal knows nothing of it: a new start, nothing to say. */
	assert_int_equal(cdp_syncckpt_compare(&done, NULL, 2), CDP_SYNCCKPT_QUIET);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_then_read, fx_setup, cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_missing_file_is_none, fx_setup, cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_torn_file_is_an_error, fx_setup, cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_overlong_file_is_an_error, fx_setup,
						cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_garbage_and_flipped_bits_are_errors, fx_setup,
						cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_version_and_reserved_are_checked, fx_setup,
						cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_stale_tmp_changes_nothing, fx_setup,
						cdp_test_dirfile_teardown),
		cmocka_unit_test_setup_teardown(test_power_cut_leaves_old_or_new, fx_setup,
						cdp_test_dirfile_teardown),
		cmocka_unit_test(test_due),
		cmocka_unit_test(test_before),
		cmocka_unit_test(test_compare),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
