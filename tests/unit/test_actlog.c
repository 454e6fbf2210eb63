/*
 * Tests of storage/actlog: the active set and its log writes, recovery at
 * open, parameter and argument errors, damaged files, eviction of idle
 * extents and spills of busy ones, I/O errors, power cuts at every data
 * operation (the shim), and the thread rules (a write in progress never
 * holds up a caller whose extents are already logged; callers that add
 * extents meanwhile share the next write). No sleeps: the threaded tests
 * hold a log write inside fdatasync with a gate and release it when they
 * have seen what they wait for.
 */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "storage/actlog.h"
#include "storage/io.h"

#define SHIFT 16
#define EXT (UINT64_C(1) << SHIFT)

static int fx_setup(void **state)
{
	return cdp_test_dirfile_setup(state, "actlog");
}

static struct cdp_actlog_opts opts(unsigned nvolumes, unsigned max_active)
{
	return (struct cdp_actlog_opts){
		.nvolumes = nvolumes, .extent_shift = SHIFT, .max_active = max_active,
	};
}

static struct cdp_actlog *open_ok(const char *path, const struct cdp_actlog_opts *o)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al;
	int rc = cdp_actlog_open(path, o, &al, &err);

	if (rc)
		fail_msg("open %s: %d %s", path, rc, err.msg);
	return al;
}

static void begin_ok(struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc = cdp_actlog_begin(al, volume, off, len, &err);

	if (rc)
		fail_msg("begin %" PRIu32 " %" PRIu64 "+%" PRIu64 ": %d %s", volume, off, len, rc,
			 err.msg);
}

static struct cdp_actlog_stats stats(struct cdp_actlog *al)
{
	struct cdp_actlog_stats st;

	cdp_actlog_stats(al, &st);
	return st;
}

static bool recovered_has(const struct cdp_al_extent *x, size_t n, uint32_t volume,
			  uint64_t index)
{
	for (size_t i = 0; i < n; i++)
		if (x[i].volume == volume && x[i].index == index)
			return true;
	return false;
}

/* Records every spill; fails with ->rc when set. */
struct spill_log {
	struct cdp_al_extent x[256];
	unsigned n;
	int rc;
};

static int spill_cb(void *arg, const struct cdp_al_extent *x, struct cdp_err *err)
{
	struct spill_log *sl = arg;

	if (sl->rc)
		return cdp_err_set(err, sl->rc, "bitmap persist failed");
	if (sl->n < CDP_ARRAY_SIZE(sl->x))
		sl->x[sl->n] = *x;
	sl->n++;
	return 0;
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

/* ---- basics ----------------------------------------------------------- */

static void test_open_creates_an_empty_log(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(2, 8);
	struct cdp_al_extent x[8];
	struct cdp_actlog *al = open_ok(fx->path, &o);
	struct cdp_actlog_stats st = stats(al);

	assert_int_equal(cdp_actlog_recovered(al, x, 8), 0);
	assert_int_equal(st.active, 0);
	assert_int_equal(st.busy, 0);
	assert_int_equal(st.log_writes, 0);
	assert_int_equal(st.spills, 0);
	cdp_actlog_close(al);
	/* 4 KiB header + 4 slots of 4 KiB (8 entries fit one block). */
	assert_int_equal(file_size(fx->path), 4096 + 4 * 4096);
	al = open_ok(fx->path, &o);
	assert_int_equal(cdp_actlog_recovered(al, x, 8), 0);
	cdp_actlog_close(al);

	/* Defaults: 4 MiB extents, 1024 of them (slot: 16 + 12 * 1024 + 4 -> 16 KiB). */
	{
		char p2[320];
		struct cdp_actlog_opts d = { .nvolumes = 1 };

		snprintf(p2, sizeof(p2), "%s/default", fx->dir);
		al = open_ok(p2, &d);
		begin_ok(al, 0, (4u << 20) - 1, 2);	/* two 4 MiB extents */
		assert_int_equal(stats(al).active, 2);
		cdp_actlog_close(al);
		assert_int_equal(file_size(p2), 4096 + 4 * 16384);
	}
}

static void test_hot_extents_cost_no_log_write(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(2, 8);
	struct cdp_actlog *al = open_ok(fx->path, &o);
	struct cdp_actlog_stats st;

	begin_ok(al, 0, 0, 4096);
	assert_int_equal(stats(al).log_writes, 1);
	for (int i = 0; i < 10; i++)
		begin_ok(al, 0, (uint64_t)i * 4096, 4096);	/* the same extent */
	assert_int_equal(stats(al).log_writes, 1);
	/* One range over extents 0..2: two new ones, one write. */
	begin_ok(al, 0, EXT - 512, EXT + 1024);
	st = stats(al);
	assert_int_equal(st.log_writes, 2);
	assert_int_equal(st.active, 3);
	/* The same index on another volume is another extent. */
	begin_ok(al, 1, 0, 1);
	st = stats(al);
	assert_int_equal(st.log_writes, 3);
	assert_int_equal(st.active, 4);
	assert_int_equal(st.busy, 4);	/* in flight */
	cdp_actlog_close(al);
}

/*
 * A sequential writer: the extents after a run of active ones enter ahead,
 * in the same log write, so a stream costs a log write per AL_AHEAD_MAX
 * (32) extents, never one past the volume's end; random writes take none.
 */
static void test_sequential_writer_takes_extents_ahead(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	const uint64_t sizes[2] = { 200 * EXT, 200 * EXT - 512 };
	struct cdp_actlog_opts o = opts(2, 1024);
	struct cdp_al_extent x[1024];
	struct cdp_actlog_stats st;
	struct cdp_actlog *al;
	uint64_t seq = 0;
	size_t n;

	o.volume_sizes = sizes;
	al = open_ok(fx->path, &o);
	for (uint64_t i = 0; i < 200; i++) {
		begin_ok(al, 0, i * EXT, EXT);
		cdp_actlog_note(al, 0, i * EXT, EXT, ++seq);
	}
	st = stats(al);
	/* 1, 2, 4, 8, 16, 32 ahead: 6 writes for the first 63 extents, then one per 33. */
	assert_true(st.log_writes <= 12);
	assert_true(st.ahead > 150);
	assert_int_equal(st.active, 200);	/* the volume's 200 extents, none past them */
	/* Random, one extent apart: no run before any of them, nothing taken ahead. */
	for (uint64_t i = 0; i < 40; i++) {
		uint64_t at = ((i * 37) % 100) * 2;

		begin_ok(al, 1, at * EXT, 512);
		cdp_actlog_note(al, 1, at * EXT, 512, ++seq);
	}
	assert_int_equal(stats(al).ahead, st.ahead);
	assert_int_equal(stats(al).log_writes, st.log_writes + 40);
	cdp_actlog_close(al);
	/* Taken ahead means logged: an unclean stop resyncs them too. */
	al = open_ok(fx->path, &o);
	n = cdp_actlog_recovered(al, x, 1024);
	assert_int_equal(n, 240);
	for (size_t i = 0; i < n; i++)
		assert_true(x[i].index < 200);
	cdp_actlog_close(al);
}

/*
 * Ahead only into free or idle room: a stream of writes the journal never
 * acknowledges spills exactly the extents the set cannot hold, as without
 * taking ahead (the idle ones taken ahead leave first).
 */
static void test_taking_ahead_never_spills(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	const uint64_t sizes[1] = { 1000 * EXT };
	struct cdp_actlog_opts o = opts(1, 64);
	struct spill_log sl = { 0 };
	struct cdp_actlog_stats st;
	struct cdp_actlog *al;

	o.volume_sizes = sizes;
	o.spill = spill_cb;
	o.spill_arg = &sl;
	al = open_ok(fx->path, &o);
	for (uint64_t i = 0; i < 128; i++) {
		begin_ok(al, 0, i * EXT, EXT);
		cdp_actlog_note(al, 0, i * EXT, EXT, i + 1);	/* busy: never settled */
		assert_true(stats(al).active <= 64);
	}
	st = stats(al);
	assert_true(st.ahead > 0);
	assert_int_equal(st.spills, 128 - 64);
	assert_int_equal(st.busy, 64);
	assert_int_equal(sl.n, 64);
	for (unsigned k = 0; k < sl.n; k++)
		assert_int_equal(sl.x[k].index, k);	/* the oldest writes, in order */
	cdp_actlog_close(al);
}

static void test_reopen_recovers_the_set_in_order(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(3, 16);
	struct cdp_al_extent x[16];
	struct cdp_actlog *al = open_ok(fx->path, &o);
	size_t n;

	begin_ok(al, 2, 5 * EXT, 10);
	begin_ok(al, 0, 7 * EXT, 2 * EXT);	/* 7, 8 */
	begin_ok(al, 1, 0, 1);
	begin_ok(al, 0, 1 * EXT, 1);
	cdp_actlog_note(al, 0, 1 * EXT, 1, 1);
	cdp_actlog_settle(al, 1);		/* idle, but still in the set */
	cdp_actlog_close(al);

	al = open_ok(fx->path, &o);
	n = cdp_actlog_recovered(al, x, 16);
	assert_int_equal(n, 5);
	assert_true(x[0].volume == 0 && x[0].index == 1);
	assert_true(x[1].volume == 0 && x[1].index == 7);
	assert_true(x[2].volume == 0 && x[2].index == 8);
	assert_true(x[3].volume == 1 && x[3].index == 0);
	assert_true(x[4].volume == 2 && x[4].index == 5);
	assert_int_equal(cdp_actlog_recovered(al, x, 2), 2);	/* clipped to max */
	assert_int_equal(stats(al).active, 5);
	assert_int_equal(stats(al).busy, 5);	/* recovered: pinned */
	/* Writing to a recovered extent needs no log write. */
	begin_ok(al, 0, 7 * EXT, 1);
	assert_int_equal(stats(al).log_writes, 0);
	cdp_actlog_note(al, 0, 7 * EXT, 1, 3);
	cdp_actlog_recovered_done(al);
	assert_int_equal(stats(al).busy, 1);	/* 7 has seq 3 > safe 0 */
	cdp_actlog_settle(al, 3);
	assert_int_equal(stats(al).busy, 0);
	assert_int_equal(stats(al).active, 5);
	cdp_actlog_close(al);
}

/* A clean stop: idle extents leave at once, busy ones stay and are recovered. */
static void test_trim_empties_the_log_of_idle_extents(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 16);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_al_extent x[16];
	struct cdp_actlog *al = open_ok(fx->path, &o);

	begin_ok(al, 0, 0, 1);
	begin_ok(al, 0, 3 * EXT, 1);
	cdp_actlog_note(al, 0, 0, 1, 1);
	cdp_actlog_note(al, 0, 3 * EXT, 1, 2);
	cdp_actlog_settle(al, 1);		/* extent 0 idle, extent 3 busy */
	assert_int_equal(cdp_actlog_trim(al, &err), 0);
	assert_int_equal(stats(al).active, 1);
	cdp_actlog_close(al);
	al = open_ok(fx->path, &o);
	assert_int_equal(cdp_actlog_recovered(al, x, 16), 1);
	assert_true(x[0].volume == 0 && x[0].index == 3);
	cdp_actlog_recovered_done(al);
	cdp_actlog_settle(al, 2);
	assert_int_equal(cdp_actlog_trim(al, &err), 0);
	cdp_actlog_close(al);
	al = open_ok(fx->path, &o);
	assert_int_equal(cdp_actlog_recovered(al, x, 16), 0);	/* nothing to resync */
	cdp_actlog_close(al);
}

static void test_recovered_extents_stay_until_done(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 4);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al = open_ok(fx->path, &o);
	int rc;

	begin_ok(al, 0, 0, 4 * EXT);
	cdp_actlog_close(al);

	al = open_ok(fx->path, &o);
	cdp_actlog_settle(al, 100);
	/* Full of recovered extents, no spill: nothing may leave. */
	rc = cdp_actlog_begin(al, 0, 9 * EXT, 1, &err);
	assert_err(&err, rc, -EBUSY, "no spill");
	assert_int_equal(stats(al).active, 4);
	cdp_actlog_recovered_done(al);
	begin_ok(al, 0, 9 * EXT, 1);	/* an idle one leaves */
	assert_int_equal(stats(al).active, 4);
	assert_int_equal(stats(al).spills, 0);
	cdp_actlog_close(al);

	/* With a spill, a recovered extent is spilled like any busy one. */
	{
		struct spill_log sl = { .n = 0 };

		o.spill = spill_cb;
		o.spill_arg = &sl;
		al = open_ok(fx->path, &o);
		begin_ok(al, 0, 20 * EXT, 1);
		assert_int_equal(sl.n, 1);
		assert_int_equal(stats(al).spills, 1);
		cdp_actlog_close(al);
	}
}

/* ---- errors ----------------------------------------------------------- */

static void test_mismatched_parameters_are_refused(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(2, 8), bad;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al = open_ok(fx->path, &o);
	int rc;

	cdp_actlog_close(al);
	bad = o;
	bad.nvolumes = 3;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "nvolumes 3, the log has 2");
	assert_null(al);
	bad = o;
	bad.extent_shift = 22;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "extent_shift 22, the log has 16");
	bad = o;
	bad.extent_shift = 0;	/* the default, 22 */
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "extent_shift");
	bad = o;
	bad.max_active = 0;	/* the default, 1024 */
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "max_active 1024, the log has 8");
	assert_non_null(strstr(err.msg, fx->path));
	/* The right ones still open. */
	al = open_ok(fx->path, &o);
	cdp_actlog_close(al);
}

static void test_bad_options_and_ranges(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(2, 4), bad;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al;
	int rc;

	bad = o;
	bad.nvolumes = 0;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "nvolumes 0");
	bad = o;
	bad.extent_shift = 15;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "extent_shift 15");
	bad.extent_shift = 31;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "extent_shift 31");
	bad = o;
	bad.max_active = 1u << 20;
	rc = cdp_actlog_open(fx->path, &bad, &al, &err);
	assert_err(&err, rc, -EINVAL, "max_active");
	assert_int_equal(access(fx->path, F_OK), -1);	/* nothing created */
	{
		char p2[320];

		snprintf(p2, sizeof(p2), "%s/no/such/dir/log", fx->dir);
		rc = cdp_actlog_open(p2, &o, &al, &err);
		assert_err(&err, rc, -ENOENT, "creating");
	}

	al = open_ok(fx->path, &o);
	rc = cdp_actlog_begin(al, 0, 0, 0, &err);
	assert_err(&err, rc, -EINVAL, "len 0");
	rc = cdp_actlog_begin(al, 2, 0, 1, &err);
	assert_err(&err, rc, -EINVAL, "volume 2 >= nvolumes 2");
	rc = cdp_actlog_begin(al, 0, UINT64_C(1) << 63, 1, &err);
	assert_err(&err, rc, -EINVAL, "2^63");
	rc = cdp_actlog_begin(al, 0, (UINT64_C(1) << 63) - 1, 2, &err);
	assert_err(&err, rc, -EINVAL, "2^63");
	rc = cdp_actlog_begin(al, 0, 1, UINT64_MAX, &err);
	assert_err(&err, rc, -EINVAL, "2^63");
	rc = cdp_actlog_begin(al, 0, EXT - 1, 4 * EXT, &err);
	assert_err(&err, rc, -EINVAL, "spans 5 extents > max_active 4");
	assert_int_equal(stats(al).active, 0);
	assert_int_equal(stats(al).log_writes, 0);
	/* The last byte below 2^63, and a whole-set range, are fine. */
	begin_ok(al, 0, (UINT64_C(1) << 63) - 1, 1);
	cdp_actlog_note(al, 0, (UINT64_C(1) << 63) - 1, 1, 1);
	cdp_actlog_settle(al, 1);
	begin_ok(al, 1, 0, 4 * EXT);	/* the idle one leaves */
	/* note() ignores what begin() would refuse. */
	cdp_actlog_note(al, 5, 0, 1, 1);
	cdp_actlog_note(al, 0, 0, 0, 1);
	cdp_actlog_note(al, 0, UINT64_MAX, 1, 1);
	cdp_actlog_close(al);
	cdp_actlog_close(NULL);

	al = open_ok(fx->path, &o);
	{
		struct cdp_al_extent x[4];

		assert_int_equal(cdp_actlog_recovered(al, x, 4), 4);
		assert_true(recovered_has(x, 4, 1, 3));
	}
	cdp_actlog_close(al);
}

static void test_damaged_header_is_refused(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 8);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al = open_ok(fx->path, &o);
	int rc, fd;

	begin_ok(al, 0, 0, 1);
	cdp_actlog_close(al);
	poke(fx->path, 17, 0x40);	/* nvolumes, under the CRC */
	rc = cdp_actlog_open(fx->path, &o, &al, &err);
	assert_err(&err, rc, -EBADMSG, "crc32c");
	poke(fx->path, 17, 0x40);
	al = open_ok(fx->path, &o);
	cdp_actlog_close(al);
	poke(fx->path, 0, 0x01);
	rc = cdp_actlog_open(fx->path, &o, &al, &err);
	assert_err(&err, rc, -EBADMSG, "magic");
	/* A short file is not an activity log either; it is never re-created. */
	fd = open(fx->path, O_RDWR | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "CDP-ALOG", 8), 8);
	close(fd);
	rc = cdp_actlog_open(fx->path, &o, &al, &err);
	assert_err(&err, rc, -EBADMSG, "8 bytes");
	assert_int_equal(file_size(fx->path), 8);
}

static void test_damaged_newest_slot_falls_back(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 8);
	struct cdp_al_extent x[8];
	struct cdp_actlog *al = open_ok(fx->path, &o);
	size_t n;

	begin_ok(al, 0, 0, 1);			/* generation 1, slot 0 */
	begin_ok(al, 0, 1 * EXT, 1);		/* generation 2, slot 1 */
	begin_ok(al, 0, 2 * EXT, 1);		/* generation 3, slot 2 */
	cdp_actlog_close(al);
	poke(fx->path, 4096 + 2 * 4096 + 20, 0xff);	/* an entry of slot 2 */
	al = open_ok(fx->path, &o);
	n = cdp_actlog_recovered(al, x, 8);
	assert_int_equal(n, 2);
	assert_true(recovered_has(x, n, 0, 0) && recovered_has(x, n, 0, 1));
	/* The next write skips the slot it fell back to, and wins. */
	begin_ok(al, 0, 5 * EXT, 1);
	cdp_actlog_close(al);
	al = open_ok(fx->path, &o);
	n = cdp_actlog_recovered(al, x, 8);
	assert_int_equal(n, 3);
	assert_true(recovered_has(x, n, 0, 5));
	cdp_actlog_close(al);

	/* Every slot damaged: an empty set, not an error. */
	for (unsigned i = 0; i < 4; i++)
		poke(fx->path, 4096 + i * 4096 + 8, 0x10);
	al = open_ok(fx->path, &o);
	assert_int_equal(cdp_actlog_recovered(al, x, 8), 0);
	cdp_actlog_close(al);
}

/* ---- eviction and spills ---------------------------------------------- */

static void test_idle_extents_leave_before_busy_ones_spill(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct spill_log sl = { .n = 0 };
	struct cdp_actlog_opts o = opts(2, 4);
	struct cdp_actlog *al;
	struct cdp_actlog_stats st;

	o.spill = spill_cb;
	o.spill_arg = &sl;
	al = open_ok(fx->path, &o);
	for (uint64_t i = 0; i < 4; i++) {
		begin_ok(al, 0, i * EXT, 1);
		cdp_actlog_note(al, 0, i * EXT, 1, i + 1);
	}
	cdp_actlog_settle(al, 2);	/* extents 0 and 1 idle */
	st = stats(al);
	assert_int_equal(st.active, 4);
	assert_int_equal(st.busy, 2);
	/* Touching an idle extent keeps it (and makes it newest). */
	begin_ok(al, 0, 0, 1);
	cdp_actlog_note(al, 0, 0, 1, 2);
	assert_int_equal(stats(al).log_writes, 4);
	begin_ok(al, 1, 10 * EXT, 1);	/* evicts idle extent 1, not 0 */
	begin_ok(al, 1, 11 * EXT, 1);	/* evicts idle extent 0 */
	st = stats(al);
	assert_int_equal(st.spills, 0);
	assert_int_equal(sl.n, 0);
	assert_int_equal(st.log_writes, 6);
	/* Now all busy: the least recently used one (extent 2) is spilled. */
	begin_ok(al, 1, 12 * EXT, 1);
	assert_int_equal(sl.n, 1);
	assert_true(sl.x[0].volume == 0 && sl.x[0].index == 2);
	begin_ok(al, 1, 13 * EXT, 1);
	assert_int_equal(sl.n, 2);
	assert_true(sl.x[1].volume == 0 && sl.x[1].index == 3);
	st = stats(al);
	assert_int_equal(st.spills, 2);
	assert_int_equal(st.active, 4);
	/* A range that needs the whole set spills only others. */
	begin_ok(al, 0, 20 * EXT, 4 * EXT);
	assert_int_equal(sl.n, 6);
	for (unsigned i = 2; i < 6; i++)
		assert_int_equal(sl.x[i].volume, 1);
	cdp_actlog_close(al);

	al = open_ok(fx->path, &o);
	{
		struct cdp_al_extent x[4];

		assert_int_equal(cdp_actlog_recovered(al, x, 4), 4);
		for (uint64_t i = 20; i < 24; i++)
			assert_true(recovered_has(x, 4, 0, i));
	}
	cdp_actlog_close(al);
}

static void test_spill_failure_fails_begin(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct spill_log sl = { .rc = -EIO };
	struct cdp_actlog_opts o = opts(1, 2);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al;
	struct cdp_actlog_stats st;
	int rc;

	o.spill = spill_cb;
	o.spill_arg = &sl;
	al = open_ok(fx->path, &o);
	begin_ok(al, 0, 0, 2 * EXT);
	/* Range 1..2: extent 1 is kept, 2 needs room, spilling 0 fails. */
	rc = cdp_actlog_begin(al, 0, EXT, 2 * EXT, &err);
	assert_err(&err, rc, -EIO, "spilling extent 0 of volume 0: bitmap persist failed");
	st = stats(al);
	assert_int_equal(st.active, 2);
	assert_int_equal(st.spills, 0);
	assert_int_equal(st.log_writes, 1);
	/* The failed call left no in-flight count behind on extent 1. */
	cdp_actlog_note(al, 0, 0, 2 * EXT, 1);
	cdp_actlog_settle(al, 1);
	assert_int_equal(stats(al).busy, 0);
	sl.rc = 0;
	begin_ok(al, 0, 5 * EXT, 1);	/* idle ones leave, no spill */
	assert_int_equal(sl.n, 0);
	cdp_actlog_close(al);
}

static void test_spilled_extent_keeps_its_writes_in_flight(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct spill_log sl = { .n = 0 };
	struct cdp_actlog_opts o = opts(1, 2);
	struct cdp_actlog *al;

	o.spill = spill_cb;
	o.spill_arg = &sl;
	al = open_ok(fx->path, &o);
	begin_ok(al, 0, 0, 1);			/* A: extent 0, in flight */
	begin_ok(al, 0, EXT, 1);		/* extent 1 */
	cdp_actlog_note(al, 0, EXT, 1, 1);
	begin_ok(al, 0, 2 * EXT, 1);		/* spills 0 (LRU, busy) */
	assert_int_equal(sl.n, 1);
	assert_int_equal(sl.x[0].index, 0);
	cdp_actlog_note(al, 0, 2 * EXT, 1, 2);
	begin_ok(al, 0, 0, 1);			/* B: extent 0 again, spills 1 */
	assert_int_equal(sl.n, 2);
	assert_int_equal(sl.x[1].index, 1);
	assert_int_equal(stats(al).active, 2);
	cdp_actlog_note(al, 0, 0, 1, 3);	/* A completes */
	cdp_actlog_settle(al, 3);
	/* B is still in flight: extent 0 is busy, so extent 2 leaves first. */
	assert_int_equal(stats(al).busy, 1);
	begin_ok(al, 0, 3 * EXT, 1);
	assert_int_equal(sl.n, 2);
	cdp_actlog_note(al, 0, 3 * EXT, 1, 4);
	cdp_actlog_settle(al, 4);
	assert_int_equal(stats(al).busy, 1);
	cdp_actlog_note(al, 0, 0, 1, 5);	/* B completes */
	assert_int_equal(stats(al).busy, 1);
	cdp_actlog_settle(al, 5);
	assert_int_equal(stats(al).busy, 0);
	cdp_actlog_settle(al, 1);		/* never goes back */
	assert_int_equal(stats(al).busy, 0);
	cdp_actlog_close(al);
}

/* ---- I/O errors ------------------------------------------------------- */

static void test_failed_log_write_fails_begin_then_retries(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_io_shim *s = cdp_io_shim_new(1);
	struct cdp_actlog_opts o = opts(1, 8);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_al_extent x[8];
	struct cdp_actlog *al;
	size_t n;
	int rc;

	o.io = cdp_io_shim_ops(s);
	al = open_ok(fx->path, &o);
	begin_ok(al, 0, 0, 1);
	cdp_io_shim_fail_nth(s, 1, EIO);	/* the write */
	rc = cdp_actlog_begin(al, 0, EXT, 1, &err);
	assert_err(&err, rc, -EIO, "writing slot");
	assert_int_equal(stats(al).log_writes, 1);
	/* Its extent is not logged: a begin on it writes again. */
	begin_ok(al, 0, EXT, 1);
	assert_int_equal(stats(al).log_writes, 2);
	cdp_io_shim_fail_nth(s, 2, EIO);	/* the fdatasync */
	rc = cdp_actlog_begin(al, 0, 2 * EXT, 1, &err);
	assert_err(&err, rc, -EIO, "fdatasync of slot");
	begin_ok(al, 0, 2 * EXT, 1);
	begin_ok(al, 0, 3 * EXT, 1);
	cdp_actlog_close(al);
	cdp_io_shim_free(s);

	o.io = NULL;
	al = open_ok(fx->path, &o);
	n = cdp_actlog_recovered(al, x, 8);
	assert_int_equal(n, 4);
	for (uint64_t i = 0; i < 4; i++)
		assert_true(recovered_has(x, n, 0, i));
	cdp_actlog_close(al);
}

static void test_failed_creation_leaves_no_log(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 8);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_actlog *al;
	int rc;

	for (unsigned long nth = 1; nth <= 2; nth++) {
		struct cdp_io_shim *s = cdp_io_shim_new(nth);

		o.io = cdp_io_shim_ops(s);
		cdp_io_shim_fail_nth(s, nth, EIO);
		rc = cdp_actlog_open(fx->path, &o, &al, &err);
		assert_err(&err, rc, -EIO, "actlog.tmp");
		assert_int_equal(access(fx->path, F_OK), -1);
		cdp_io_shim_free(s);
	}
	o.io = NULL;
	al = open_ok(fx->path, &o);	/* the leftover .tmp is reused */
	cdp_actlog_close(al);
}

/*
 * fsyncgate: a write whose fdatasync failed may land whole, torn or not at
 * all. A run of them (more than the ring has slots) followed by a power cut
 * must still leave the last synced slot alone.
 */
static uint8_t *slurp_range(const char *path, uint64_t off, size_t len)
{
	uint8_t *b = cdp_xcalloc(1, len);
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, len, (off_t)off), (ssize_t)len);
	close(fd);
	return b;
}

static void test_failed_syncs_then_a_cut_keep_the_last_good_slot(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	/* 256 entries: a slot of 3 KiB + 4 bytes -> 4 KiB, over many sectors (tears). */
	struct cdp_actlog_opts o = opts(1, 256);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_al_extent x[256];
	unsigned seeds = (unsigned)cdp_test_rounds(40, 20, 400);

	for (unsigned seed = 0; seed < seeds; seed++) {
		struct cdp_io_shim *s = cdp_io_shim_new(seed);
		struct cdp_actlog *al;
		uint8_t *before, *after;
		size_t n;

		unlink(fx->path);
		o.io = cdp_io_shim_ops(s);
		al = open_ok(fx->path, &o);
		begin_ok(al, 0, 0, 200 * EXT);		/* synced: generation 1, slot 0 */
		before = slurp_range(fx->path, 4096, 4096);
		for (unsigned k = 0; k < 6; k++) {	/* more failures than slots */
			cdp_io_shim_fail_nth(s, 2, EIO);	/* each write's fdatasync */
			assert_int_equal(cdp_actlog_begin(al, 0, (300 + k) * EXT, 1, &err), -EIO);
		}
		after = slurp_range(fx->path, 4096, 4096);
		assert_memory_equal(before, after, 4096);
		free(before);
		free(after);
		cdp_io_shim_power_cut(s);
		cdp_actlog_close(al);
		cdp_io_shim_free(s);
		o.io = NULL;
		al = open_ok(fx->path, &o);
		n = cdp_actlog_recovered(al, x, 256);
		for (uint64_t i = 0; i < 200; i++)
			if (!recovered_has(x, n, 0, i))
				fail_msg("seed %u: synced extent %" PRIu64 " is gone (%zu recovered)",
					 seed, i, n);
		cdp_actlog_close(al);
	}
}

/* ---- power cuts ------------------------------------------------------- */

/*
 * The model of what the log must hold: an extent is required while a write
 * that begin() let through is in flight or above the safe seq, or while it
 * was recovered and not yet resynced; a spill releases it (the bitmap has
 * it) until its next begin().
 */
#define CV 2
#define CX 160		/* extents per volume, at most */
struct cut_model {
	unsigned inflight[CV][CX];
	uint64_t max_seq[CV][CX];
	bool spilled[CV][CX], rec[CV][CX];
	uint64_t safe;
};

/* A workload shape: a small set (mostly spills) or a large one (slots over many sectors). */
struct cut_shape {
	unsigned max_active;
	unsigned extents;	/* per volume, <= CX */
	unsigned max_len;	/* bytes per write */
};

static int cut_spill(void *arg, const struct cdp_al_extent *x, struct cdp_err *err)
{
	struct cut_model *m = arg;

	m->spilled[x->volume][x->index] = true;
	return 0;
}

static bool required(const struct cut_model *m, unsigned v, unsigned i)
{
	return !m->spilled[v][i] &&
	       (m->inflight[v][i] || m->max_seq[v][i] > m->safe || m->rec[v][i]);
}

static void check_recovered(const struct cut_model *m, struct cdp_actlog *al, unsigned max,
			    const char *when, unsigned long nth)
{
	struct cdp_al_extent x[256];
	size_t n = cdp_actlog_recovered(al, x, 256);

	assert_true(n <= max);
	for (unsigned v = 0; v < CV; v++)
		for (unsigned i = 0; i < CX; i++)
			if (required(m, v, i) && !recovered_has(x, n, v, i))
				fail_msg("cut %lu, %s: extent %u of volume %u was active, not"
					 " recovered", nth, when, i, v);
}

/* A new session on the log: what it recovered is pinned, nothing is in flight. */
static void reset_model(struct cut_model *m, struct cdp_actlog *al)
{
	struct cdp_al_extent x[256];
	size_t n = cdp_actlog_recovered(al, x, 256);

	memset(m, 0, sizeof(*m));
	for (size_t k = 0; k < n; k++)
		m->rec[x[k].volume][x[k].index] = true;
}

struct pending_write {
	uint32_t volume;
	uint64_t off, len;
};

/*
 * One workload over two sessions, cut at the @nth data operation. Returns
 * true when the cut happened (and adds what the cut did to @st).
 */
static bool cut_run(const char *path, const struct cut_shape *sh, uint64_t seed,
		    unsigned long nth, unsigned *ops_out, struct cdp_io_shim_stats *st)
{
	struct cdp_io_shim *s = cdp_io_shim_new(seed * 1000003 + nth);
	struct cut_model m = { .safe = 0 };
	struct cdp_actlog_opts o = opts(CV, sh->max_active);
	struct cdp_err err = CDP_ERR_INIT;
	struct pending_write pw[8];
	struct cdp_actlog *al = NULL;
	uint64_t x = seed | 1, seq = 0;
	unsigned npw = 0, ops = 0;
	bool cut = false;
	int rc;

	o.io = cdp_io_shim_ops(s);
	o.spill = cut_spill;
	o.spill_arg = &m;
	unlink(path);
	cdp_io_shim_cut_at(s, nth);
	for (int session = 0; session < 2 && !cut; session++) {
		rc = cdp_actlog_open(path, &o, &al, &err);
		if (rc) {
			assert_int_equal(rc, -EIO);
			cut = true;
			break;
		}
		if (session)
			check_recovered(&m, al, sh->max_active, "clean reopen", nth);
		reset_model(&m, al);
		npw = 0;
		for (int step = 0; step < 40; step++) {
			unsigned v, i, k;
			uint64_t off, len;

			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			if (session && step == 20) {
				cdp_actlog_recovered_done(al);
				memset(m.rec, 0, sizeof(m.rec));
			}
			if (x % 7 == 0 && npw) {		/* a write completes */
				k = (unsigned)(x >> 8) % npw;
				cdp_actlog_note(al, pw[k].volume, pw[k].off, pw[k].len, ++seq);
				for (uint64_t e = pw[k].off >> SHIFT;
				     e <= (pw[k].off + pw[k].len - 1) >> SHIFT; e++) {
					m.inflight[pw[k].volume][e]--;
					m.max_seq[pw[k].volume][e] = seq;
				}
				pw[k] = pw[--npw];
				continue;
			}
			if (x % 11 == 0) {			/* journal + flush caught up */
				uint64_t safe = seq - CDP_MIN(seq, (x >> 16) % 3);

				cdp_actlog_settle(al, safe);
				m.safe = CDP_MAX(m.safe, safe);
				continue;
			}
			v = (unsigned)(x >> 20) % CV;
			len = 1 + (x >> 40) % sh->max_len;
			i = (unsigned)(x >> 24) % (sh->extents - (unsigned)(len >> SHIFT) - 1);
			off = (uint64_t)i * EXT + (x >> 32) % EXT;
			if (npw == CDP_ARRAY_SIZE(pw))
				continue;
			ops++;
			rc = cdp_actlog_begin(al, v, off, len, &err);
			if (rc) {
				assert_int_equal(rc, -EIO);
				cut = true;
				break;
			}
			for (uint64_t e = off >> SHIFT; e <= (off + len - 1) >> SHIFT; e++) {
				m.inflight[v][e]++;
				m.spilled[v][e] = false;
			}
			pw[npw++] = (struct pending_write){ v, off, len };
		}
		cdp_actlog_close(al);
		al = NULL;
	}
	if (cut) {
		struct cdp_io_shim_stats cs = cdp_io_shim_power_cut(s);

		st->unsynced_writes += cs.unsynced_writes;
		st->torn += cs.torn;
		st->dropped += cs.dropped;
		st->kept += cs.kept;
		/* Cut while creating: no log (it is created now) or a whole one. */
		o.io = NULL;
		rc = cdp_actlog_open(path, &o, &al, &err);
		if (rc)
			fail_msg("cut %lu: reopen: %d %s", nth, rc, err.msg);
		check_recovered(&m, al, sh->max_active, "after the cut", nth);
		cdp_actlog_close(al);
	}
	cdp_io_shim_free(s);
	*ops_out = ops;
	return cut;
}

static void test_power_cut_at_every_log_write(void **state)
{
	static const struct cut_shape shapes[] = {
		{ .max_active = 5, .extents = 12, .max_len = EXT / 2 },
		{ .max_active = 120, .extents = CX, .max_len = 6 * EXT },
	};
	struct cdp_test_dirfile *fx = *state;
	/* Each cut replays the workload up to it: ~100 cuts of ~50 fdatasyncs a round. */
	int rounds[2] = { cdp_test_rounds(3, 2, 30), cdp_test_rounds(1, 1, 30) };

	for (unsigned k = 0; k < CDP_ARRAY_SIZE(shapes); k++) {
		struct cdp_io_shim_stats st = { 0 };
		unsigned long cuts = 0;

		for (int r = 0; r < rounds[k]; r++) {
			unsigned ops;

			for (unsigned long nth = 1;; nth++) {
				if (!cut_run(fx->path, &shapes[k], 77 + (uint64_t)r, nth, &ops, &st))
					break;
				cuts++;
			}
			assert_true(ops > 20);
		}
		assert_true(cuts > 20);
		assert_true(st.dropped > 0 && st.kept > 0);
		if (k == 1)
			assert_true(st.torn > 0);	/* slots over several sectors */
	}
}

/* ---- threads ---------------------------------------------------------- */

/* An I/O table that holds the first fdatasync after arm() until release(). */
struct gate {
	struct cdp_io ops;
	const struct cdp_io *k;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool armed, holding, released;
	bool held_synced;	/* the held fdatasync has completed */
	bool nosync;		/* fdatasync does nothing (stress: speed, not durability) */
};

static struct gate *gate_of(void *ctx)
{
	return ctx;
}

static int g_open(void *ctx, const char *path, int flags, mode_t mode)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->open(k->ctx, path, flags, mode);
}

static int g_close(void *ctx, int fd)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->close(k->ctx, fd);
}

static int g_pwritev(void *ctx, const struct cdp_io_write *w, unsigned n)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->pwritev_batch(k->ctx, w, n);
}

static int g_fdatasync(void *ctx, const int *fds, unsigned n)
{
	struct gate *g = gate_of(ctx);

	bool held = false;
	int rc;

	if (g->nosync)
		return 0;
	pthread_mutex_lock(&g->mu);
	if (g->armed) {
		g->armed = false;
		g->holding = held = true;
		pthread_cond_broadcast(&g->cv);
		while (!g->released)
			pthread_cond_wait(&g->cv, &g->mu);
		g->holding = false;
	}
	pthread_mutex_unlock(&g->mu);
	rc = g->k->fdatasync_batch(g->k->ctx, fds, n);
	if (held) {
		pthread_mutex_lock(&g->mu);
		g->held_synced = true;
		pthread_mutex_unlock(&g->mu);
	}
	return rc;
}

static int g_fsync_dir(void *ctx, const char *dir)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->fsync_dir(k->ctx, dir);
}

static long g_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->pread(k->ctx, fd, buf, len, off);
}

static int g_ftruncate(void *ctx, int fd, uint64_t len)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->ftruncate(k->ctx, fd, len);
}

static int g_fallocate(void *ctx, int fd, int mode, uint64_t off, uint64_t len)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->fallocate(k->ctx, fd, mode, off, len);
}

static int g_unlink(void *ctx, const char *path)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->unlink(k->ctx, path);
}

static int g_rename(void *ctx, const char *from, const char *to)
{
	const struct cdp_io *k = gate_of(ctx)->k;

	return k->rename(k->ctx, from, to);
}

static void gate_init(struct gate *g)
{
	memset(g, 0, sizeof(*g));
	g->ops = (struct cdp_io){
		.ctx = g, .open = g_open, .close = g_close, .pwritev_batch = g_pwritev,
		.fdatasync_batch = g_fdatasync, .fsync_dir = g_fsync_dir, .pread = g_pread,
		.ftruncate = g_ftruncate, .fallocate = g_fallocate, .unlink = g_unlink,
		.rename = g_rename,
	};
	g->k = cdp_io_plain();
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
}

static void gate_arm(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->armed = true;
	g->released = false;
	pthread_mutex_unlock(&g->mu);
}

static void gate_wait_holding(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	while (!g->holding)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
}

static void gate_release(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->released = true;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

struct beginner {
	pthread_t t;
	struct cdp_actlog *al;
	struct gate *g;
	uint32_t volume;
	uint64_t off;
	int rc;
	_Atomic bool started;
	bool saw_synced;	/* the held sync had completed when begin() returned */
};

static void *begin_thread(void *arg)
{
	struct beginner *b = arg;
	struct cdp_err err = CDP_ERR_INIT;

	b->started = true;
	b->rc = cdp_actlog_begin(b->al, b->volume, b->off, 1, &err);
	pthread_mutex_lock(&b->g->mu);
	b->saw_synced = b->g->held_synced;
	pthread_mutex_unlock(&b->g->mu);
	return NULL;
}

static void test_logged_extents_never_wait_for_a_log_write(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 8);
	struct beginner a, b[2];
	struct cdp_actlog *al;
	struct gate g;

	gate_init(&g);
	o.io = &g.ops;
	al = open_ok(fx->path, &o);
	begin_ok(al, 0, 0, 1);			/* extent 0: logged */
	assert_int_equal(stats(al).log_writes, 1);

	gate_arm(&g);
	a = (struct beginner){ .al = al, .g = &g, .volume = 0, .off = EXT };
	assert_int_equal(pthread_create(&a.t, NULL, begin_thread, &a), 0);
	gate_wait_holding(&g);			/* extent 1's write is in fdatasync */

	/* Extent 0 is in a synced slot: no wait (a deadlock if there were one). */
	begin_ok(al, 0, 100, 1);
	cdp_actlog_note(al, 0, 100, 1, 1);
	cdp_actlog_settle(al, 1);
	assert_int_equal(stats(al).log_writes, 1);

	/* Extent 1 is in the slot being written: a begin on it waits for it. */
	/* Two new extents meanwhile: both ride the next write. */
	for (int i = 0; i < 2; i++) {
		b[i] = (struct beginner){ .al = al, .g = &g, .volume = 0,
					  .off = (uint64_t)(2 + i) * EXT };
		assert_int_equal(pthread_create(&b[i].t, NULL, begin_thread, &b[i]), 0);
	}
	while (stats(al).active < 4)		/* both added (then wait, same critical section) */
		sched_yield();
	gate_release(&g);
	assert_int_equal(pthread_join(a.t, NULL), 0);
	assert_int_equal(a.rc, 0);
	assert_true(a.saw_synced);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_join(b[i].t, NULL), 0);
		assert_int_equal(b[i].rc, 0);
		assert_true(b[i].saw_synced);
	}
	assert_int_equal(stats(al).log_writes, 3);	/* extent 0; 1; 2 and 3 together */
	cdp_actlog_close(al);

	{
		struct cdp_al_extent x[8];

		o.io = NULL;
		al = open_ok(fx->path, &o);
		assert_int_equal(cdp_actlog_recovered(al, x, 8), 4);
		cdp_actlog_close(al);
	}
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.mu);
}

static void test_begin_on_an_extent_being_logged_waits_for_it(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct cdp_actlog_opts o = opts(1, 8);
	struct beginner a, b;
	struct cdp_actlog *al;
	struct gate g;

	gate_init(&g);
	o.io = &g.ops;
	al = open_ok(fx->path, &o);
	gate_arm(&g);
	a = (struct beginner){ .al = al, .g = &g, .volume = 0, .off = 0 };
	assert_int_equal(pthread_create(&a.t, NULL, begin_thread, &a), 0);
	gate_wait_holding(&g);
	/*
	 * Same extent, in the slot being written: b must not return before
	 * that sync completed. Give b every chance to return early (a bounded
	 * number of yields, no sleep) before the sync is let go.
	 */
	b = (struct beginner){ .al = al, .g = &g, .volume = 0, .off = 10, .rc = 1 };
	assert_int_equal(pthread_create(&b.t, NULL, begin_thread, &b), 0);
	while (!b.started)
		sched_yield();
	for (int i = 0; i < 1000; i++)
		sched_yield();
	gate_release(&g);
	assert_int_equal(pthread_join(a.t, NULL), 0);
	assert_int_equal(pthread_join(b.t, NULL), 0);
	assert_int_equal(a.rc, 0);
	assert_int_equal(b.rc, 0);
	assert_true(a.saw_synced);
	assert_true(b.saw_synced);
	assert_int_equal(stats(al).log_writes, 1);	/* b wrote nothing of its own */
	cdp_actlog_close(al);
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.mu);
}

/* Many writers, a settler, spills: the counts add up at the end. */
struct stress {
	struct cdp_actlog *al;
	pthread_mutex_t mu;		/* seq order: seq and note together */
	uint64_t seq;
	unsigned spills;		/* guarded by the log's own mutex (spill) */
	unsigned bad_spills;		/* likewise */
};

static int stress_spill(void *arg, const struct cdp_al_extent *x, struct cdp_err *err)
{
	struct stress *s = arg;

	if (x->volume >= 2 || x->index >= 24)
		s->bad_spills++;
	s->spills++;
	return 0;
}

struct worker {
	pthread_t t;
	struct stress *s;
	uint64_t rng;
	int iters;
	int fails;
	int bad_stats;
};

static void *stress_worker(void *arg)
{
	struct worker *w = arg;
	struct cdp_err err = CDP_ERR_INIT;

	for (int n = 0; n < w->iters; n++) {
		uint64_t x = (w->rng ^= w->rng << 13, w->rng ^= w->rng >> 7,
			      w->rng ^= w->rng << 17);
		uint32_t v = (uint32_t)(x % 2);
		uint64_t off = ((x >> 8) % 22) * EXT + (x >> 16) % EXT;
		uint64_t len = 1 + (x >> 32) % (2 * EXT);
		uint64_t safe;

		if (cdp_actlog_begin(w->s->al, v, off, len, &err)) {
			w->fails++;
			continue;
		}
		pthread_mutex_lock(&w->s->mu);
		cdp_actlog_note(w->s->al, v, off, len, ++w->s->seq);
		safe = w->s->seq;
		pthread_mutex_unlock(&w->s->mu);
		if (x % 5 == 0)
			cdp_actlog_settle(w->s->al, safe > 4 ? safe - 4 : 0);
		if (x % 17 == 0) {
			struct cdp_actlog_stats st;

			cdp_actlog_stats(w->s->al, &st);
			w->bad_stats += st.active > 6 || st.busy > st.active;
		}
	}
	return NULL;
}

static void test_threads_begin_note_settle(void **state)
{
	struct cdp_test_dirfile *fx = *state;
	struct stress s = { .seq = 0 };
	struct cdp_actlog_opts o = opts(2, 6);
	struct worker w[4];
	struct cdp_actlog_stats st;
	int iters = cdp_test_rounds(3000, 1000, 30000);
	struct gate g;

	gate_init(&g);
	g.nosync = true;
	o.io = &g.ops;
	pthread_mutex_init(&s.mu, NULL);
	o.spill = stress_spill;
	o.spill_arg = &s;
	s.al = open_ok(fx->path, &o);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .s = &s, .rng = 0x1234567ull * (uint64_t)(i + 1),
					.iters = iters };
		assert_int_equal(pthread_create(&w[i].t, NULL, stress_worker, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(w[i].t, NULL), 0);
		assert_int_equal(w[i].fails, 0);
		assert_int_equal(w[i].bad_stats, 0);
	}
	assert_int_equal(s.bad_spills, 0);
	st = stats(s.al);
	assert_true(st.active <= 6);
	assert_true(st.log_writes > 0);
	assert_int_equal(st.spills, s.spills);
	assert_true(st.spills > 0);
	/* Everything noted: once all is safe nothing stays busy (no leaked count). */
	cdp_actlog_settle(s.al, s.seq);
	st = stats(s.al);
	assert_int_equal(st.busy, 0);
	cdp_actlog_close(s.al);
	pthread_mutex_destroy(&s.mu);
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.mu);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, cdp_test_dirfile_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_open_creates_an_empty_log),
		T(test_hot_extents_cost_no_log_write),
		T(test_sequential_writer_takes_extents_ahead),
		T(test_taking_ahead_never_spills),
		T(test_reopen_recovers_the_set_in_order),
		T(test_recovered_extents_stay_until_done),
		T(test_trim_empties_the_log_of_idle_extents),
		T(test_mismatched_parameters_are_refused),
		T(test_bad_options_and_ranges),
		T(test_damaged_header_is_refused),
		T(test_damaged_newest_slot_falls_back),
		T(test_idle_extents_leave_before_busy_ones_spill),
		T(test_spill_failure_fails_begin),
		T(test_spilled_extent_keeps_its_writes_in_flight),
		T(test_failed_log_write_fails_begin_then_retries),
		T(test_failed_creation_leaves_no_log),
		T(test_failed_syncs_then_a_cut_keep_the_last_good_slot),
		T(test_power_cut_at_every_log_write),
		T(test_logged_extents_never_wait_for_a_log_write),
		T(test_begin_on_an_extent_being_logged_waits_for_it),
		T(test_threads_begin_note_settle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
