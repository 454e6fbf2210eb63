/*
 * tests/unit/test_splitter - capture/splitter with real files, the real
 * activity log and bitmap, and a fake clock: requests go in through the
 * export's submit() exactly as the NBD front end sends them, and what comes
 * out is decoded from the sealed segments in the log cache.
 *
 *  - the range lock: the first of two overlapping writes is held in the I/O
 *    seam, and the second does not reach the source until the first is done;
 *    non-overlapping writes reach it at the same time;
 *  - records: seqs in completion order, payloads, a FLUSH on receipt,
 *    POINT_END at each point interval, heartbeats when idle, a chain that
 *    verifies from the continue digest;
 *  - incremental mode: changes land in the bitmap, and a resync sends them
 *    back as RESYNC records between SYNC_BEGIN and SYNC_END;
 *  - the full sync turns holes and zero blocks into ZERO records;
 *  - with a spill file: segments past the memory bound decode from it in
 *    chain order, and a spill write error sends the splitter to incremental
 *    mode with every cached write (memory and spill) in the bitmap;
 *  - CDP_IO_F_INLINE runs a request whose range is free on the caller's
 *    thread; the tick flushes the source only when half the log is busy;
 *  - the full sync at queue depth 4, with O_DIRECT and with the buffered
 *    fallback: the records replayed in seq order give every volume's image
 *    (holes, zero blocks, data, a tail that is not a multiple of 4 KiB),
 *    also with writes running during the sync, and no page cache is left;
 *    a write holding a chunk's range is a record before the chunk's;
 *  - the pacing and read-cap arithmetic, and a network cap that holds.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "capture/splitter.h"
#include "common/util.h"
#include "storage/io.h"
#include "testutil.h"

#define VOL_SIZE (8u << 20)
#define VOL1_SIZE (VOL_SIZE + 1536)	/* a tail shorter than 4 KiB */
#define WAIT_NS (30 * CDP_NS_PER_SEC)

struct seam {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool hold_first;	/* hold the first write that arrives */
	bool held, release;
	unsigned arrived;	/* writes that reached the seam */
	uint64_t order[64];	/* their offsets, in arrival order */
	bool went_incremental;	/* on_incremental: the fallback is complete */
};

struct fx {
	char dir[64];
	char path[2][96];
	struct cdp_clock clk;
	struct cdp_actlog *al;
	struct cdp_dirtymap *dm;
	struct cdp_cache *cache;
	struct cdp_splitter *sp;
	struct seam seam;
	struct cdp_io_shim *shim;	/* the spill file's I/O (setup_spill) */
};

#define SPILL_MEM (100u << 10)	/* setup_spill: one 64 KiB write fits in memory, not two */
static bool with_spill;
/* The spill file's I/O: the shim's, with reads that fail on demand. */
static struct cdp_io spill_io;
static const struct cdp_io *spill_base;
static _Atomic int spill_read_fail;	/* -errno for every read, 0: none */

static long spill_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
	int fail = atomic_load(&spill_read_fail);

	return fail ? fail : spill_base->pread(ctx, fd, buf, len, off);
}

struct done {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned n;
	int rc[64];
};

static struct done dn = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, { 0 } };

static void on_done(struct cdp_io_req *req, int rc)
{
	pthread_mutex_lock(&dn.mu);
	dn.rc[dn.n++ % 64] = rc;
	pthread_cond_broadcast(&dn.cond);
	pthread_mutex_unlock(&dn.mu);
}

static bool wait_cond(pthread_mutex_t *mu, pthread_cond_t *c, bool (*pred)(void *), void *arg)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += WAIT_NS / CDP_NS_PER_SEC;
	pthread_mutex_lock(mu);
	while (!pred(arg))
		if (pthread_cond_timedwait(c, mu, &until) == ETIMEDOUT)
			break;
	bool ok = pred(arg);

	pthread_mutex_unlock(mu);
	return ok;
}

static unsigned want_done;
static bool done_reached(void *arg)
{
	return dn.n >= want_done;
}

static void wait_done(unsigned n)
{
	want_done = n;
	assert_true(wait_cond(&dn.mu, &dn.cond, done_reached, NULL));
}

/* The seal thread's seam: it waits here while the gate is closed. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool closed;
	unsigned waiting;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0 };

static void gate_hook(void *arg)
{
	pthread_mutex_lock(&gate.mu);
	gate.waiting++;
	pthread_cond_broadcast(&gate.cond);
	while (gate.closed)
		pthread_cond_wait(&gate.cond, &gate.mu);
	gate.waiting--;
	pthread_mutex_unlock(&gate.mu);
}

static void gate_set(bool closed)
{
	pthread_mutex_lock(&gate.mu);
	gate.closed = closed;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.mu);
}

static bool gate_has_waiter(void *arg)
{
	return gate.waiting > 0;
}

static void seam_hook(void *arg, unsigned volume, const struct cdp_io_req *req)
{
	struct seam *s = arg;

	pthread_mutex_lock(&s->mu);
	s->order[s->arrived++ % 64] = req->offset;
	pthread_cond_broadcast(&s->cond);
	if (s->hold_first && !s->held) {
		s->held = true;
		while (!s->release)
			pthread_cond_wait(&s->cond, &s->mu);
	}
	pthread_mutex_unlock(&s->mu);
}

static unsigned setup_extent_shift, setup_max_active;	/* 0: the log's defaults */

static void seam_incremental(void *arg, const char *why)
{
	struct seam *s = arg;

	pthread_mutex_lock(&s->mu);
	s->went_incremental = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
}

static bool went_incremental(void *arg)
{
	return ((struct seam *)arg)->went_incremental;
}

static int setup_opts(void **state, bool buffered)
{
	struct fx *f = cdp_xcalloc(1, sizeof(*f));
	struct cdp_actlog_opts ao = { .nvolumes = 2, .extent_shift = setup_extent_shift,
				      .max_active = setup_max_active };
	struct cdp_dirtymap_opts mo = { 0 };
	struct cdp_splitter_opts so = { 0 };
	static const uint64_t sizes[2] = { VOL_SIZE, VOL1_SIZE };
	const char *names[2] = { "a", "b" }, *paths[2];
	struct cdp_err err = CDP_ERR_INIT;
	char p[128];

	snprintf(f->dir, sizeof(f->dir), "/var/tmp/cdp-split-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	for (int i = 0; i < 2; i++) {
		int fd;

		snprintf(f->path[i], sizeof(f->path[i]), "%s/vol%d.img", f->dir, i);
		fd = open(f->path[i], O_CREAT | O_RDWR, 0600);
		assert_true(fd >= 0);
		assert_int_equal(ftruncate(fd, (off_t)sizes[i]), 0);
		close(fd);
		paths[i] = f->path[i];
	}
	pthread_mutex_init(&f->seam.mu, NULL);
	pthread_cond_init(&f->seam.cond, NULL);
	cdp_clock_fake_init(&f->clk, 1700000000 * CDP_NS_PER_SEC, 1000 * CDP_NS_PER_SEC);
	snprintf(p, sizeof(p), "%s/actlog", f->dir);
	assert_int_equal(cdp_actlog_open(p, &ao, &f->al, &err), 0);
	mo.nvolumes = 2;
	mo.volume_sizes = sizes;
	mo.granularity = 4096;
	snprintf(p, sizeof(p), "%s/bitmap", f->dir);
	assert_int_equal(cdp_dirtymap_open(p, &mo, &f->dm, &err), 0);
	if (with_spill) {
		f->shim = cdp_io_shim_new(1);
		spill_base = cdp_io_shim_ops(f->shim);
		spill_io = *spill_base;
		spill_io.pread = spill_pread;
		atomic_store(&spill_read_fail, 0);
		f->cache = cdp_cache_new(SPILL_MEM);
		snprintf(p, sizeof(p), "%s/spill", f->dir);
		assert_int_equal(cdp_cache_spill_open(f->cache, p, 1 << 20, &spill_io, &err), 0);
	} else {
		f->cache = cdp_cache_new(64u << 20);
	}
	so.nvolumes = 2;
	so.names = names;
	so.paths = paths;
	so.clock = &f->clk;
	so.point_interval_ns = CDP_NS_PER_SEC;
	so.io_threads = 4;
	/* Above ours (tools/test may run niced): permitted without privileges. */
	so.io_nice = CDP_MIN(getpriority(PRIO_PROCESS, 0) + 2, 19);
	so.al = f->al;
	so.dm = f->dm;
	so.cache = f->cache;
	so.before_source_write = seam_hook;
	so.before_seal = gate_hook;
	so.on_incremental = seam_incremental;
	so.arg = &f->seam;
	so.sync_buffered = buffered;
	assert_int_equal(cdp_splitter_open(&so, &f->sp, &err), 0);
	dn.n = 0;
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_opts(state, false);
}

static int setup_buffered(void **state)
{
	return setup_opts(state, true);
}

/* A log of 16 extents of 64 KiB. */
static int setup_small_log(void **state)
{
	int rc;

	setup_extent_shift = 16;
	setup_max_active = 16;
	rc = setup(state);
	setup_extent_shift = setup_max_active = 0;
	return rc;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	gate_set(false);	/* a failed test may have left the seal thread held */
	cdp_splitter_close(f->sp);
	cdp_cache_free(f->cache);
	if (f->shim)
		cdp_io_shim_free(f->shim);
	cdp_dirtymap_close(f->dm);
	cdp_actlog_close(f->al);
	pthread_mutex_destroy(&f->seam.mu);
	pthread_cond_destroy(&f->seam.cond);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static int setup_spill(void **state)
{
	int rc;

	with_spill = true;
	rc = setup(state);
	with_spill = false;
	return rc;
}

static void start_capture(struct fx *f)
{
	static const uint8_t zero[CDP_DIGEST_LEN];

	cdp_splitter_continue(f->sp, 7, 1, 0, zero, 0);
	assert_int_equal(cdp_splitter_mode(f->sp), CDP_SPLIT_CONTINUOUS);
}

/* A welcome after going incremental: the journal still has nothing. */
static void start_capture_incremental(struct fx *f)
{
	static const uint8_t zero[CDP_DIGEST_LEN];

	cdp_splitter_continue(f->sp, 7, 1, 0, zero, 0);
	assert_int_equal(cdp_splitter_mode(f->sp), CDP_SPLIT_INCREMENTAL);	/* bits are set */
}

static void submit_flags(struct fx *f, unsigned vol, struct cdp_io_req *r,
			 enum cdp_io_kind kind, uint32_t flags, uint64_t off, uint32_t len,
			 void *data)
{
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->flags = flags;
	r->offset = off;
	r->length = len;
	r->data = data;
	r->done = on_done;
	assert_int_equal(cdp_splitter_export(f->sp, vol)->submit(cdp_splitter_export(f->sp, vol),
								  r), 0);
}

static void submit(struct fx *f, unsigned vol, struct cdp_io_req *r, enum cdp_io_kind kind,
		   uint64_t off, uint32_t len, void *data)
{
	submit_flags(f, vol, r, kind, 0, off, len, data);
}

/* Cuts a point (fake clock one interval on) and waits for it in the cache. */
/* @ticks point ticks 1 s apart, then waits until a segment is cached and sealing is idle. */
static void ticks(struct fx *f, unsigned ticks)
{
	struct cdp_cache_stats st, st2;
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;

	cdp_cache_stats(f->cache, &st);
	for (unsigned i = 0; i < ticks; i++) {
		cdp_clock_fake_advance(&f->clk, CDP_NS_PER_SEC);
		cdp_splitter_tick(f->sp);
	}
	do {
		cdp_cache_stats(f->cache, &st2);
	} while (st2.pushed == st.pushed && cdp_clock_mono_ns(cdp_clock_real()) < until);
	assert_true(st2.pushed > st.pushed);
	/* and anything still being sealed */
	for (struct cdp_splitter_stats ss;; ) {
		cdp_splitter_stats(f->sp, &ss);
		if (!ss.seal_backlog || cdp_clock_mono_ns(cdp_clock_real()) >= until)
			break;
	}
}

/* A point cut now: two ticks, as the first tick only arms the interval. */
static void point(struct fx *f)
{
	ticks(f, 2);
}

/* Decodes every cached segment in order, checking the chain; calls @fn per record. */
static unsigned walk(struct fx *f, void (*fn)(void *arg, const struct cdp_record *r,
					     uint32_t seg_flags), void *arg)
{
	uint8_t prev[CDP_DIGEST_LEN] = { 0 };
	unsigned nseg = 0;
	uint64_t pos = 0;

	for (;;) {
		struct cdp_cache_seg *s = cdp_cache_next(f->cache, pos, 0);
		struct cdp_seg_expect ex = { .min_time = INT64_MIN, .prev_digest = prev };
		struct cdp_segment *seg;
		struct cdp_err err = CDP_ERR_INIT;

		if (!s)
			break;
		pos = s->pos;
		if (cdp_seg_decode(s->data, s->len, &ex, &seg, &err))
			fail_msg("segment %u: %s", nseg, err.msg);
		memcpy(prev, seg->h.digest, CDP_DIGEST_LEN);
		for (uint32_t i = 0; i < seg->h.nrecords && fn; i++)
			fn(arg, &seg->recs[i], seg->h.flags);
		if (!seg->h.nrecords && fn)
			fn(arg, NULL, seg->h.flags);
		cdp_segment_free(seg);
		cdp_cache_put(s);
		nseg++;
	}
	return nseg;
}

static bool seam_held(void *arg)
{
	return ((struct seam *)arg)->held;
}

static unsigned want_arrived;
static bool seam_arrived(void *arg)
{
	return ((struct seam *)arg)->arrived >= want_arrived;
}

static void test_overlapping_write_waits_in_the_range_lock(void **state)
{
	struct fx *f = *state;
	struct cdp_io_req r1, r2, r3;
	static uint8_t a[8192], b[4096], c[4096];
	struct cdp_splitter_stats st;

	start_capture(f);
	memset(a, 0xaa, sizeof(a));
	memset(b, 0xbb, sizeof(b));
	memset(c, 0xcc, sizeof(c));
	f->seam.hold_first = true;
	submit(f, 0, &r1, CDP_IO_WRITE, 4096, sizeof(a), a);
	assert_true(wait_cond(&f->seam.mu, &f->seam.cond, seam_held, &f->seam));
	/* Overlaps r1: queued. Does not overlap: reaches the source meanwhile. */
	submit(f, 0, &r2, CDP_IO_WRITE, 8192, sizeof(b), b);
	submit(f, 0, &r3, CDP_IO_WRITE, 1 << 20, sizeof(c), c);
	want_arrived = 2;
	assert_true(wait_cond(&f->seam.mu, &f->seam.cond, seam_arrived, &f->seam));
	wait_done(1);	/* r3 answered while r1 is held */
	pthread_mutex_lock(&f->seam.mu);
	assert_int_equal(f->seam.arrived, 2);	/* r2 did not reach the source */
	assert_int_equal(f->seam.order[1], 1 << 20);
	f->seam.release = true;
	pthread_cond_broadcast(&f->seam.cond);
	pthread_mutex_unlock(&f->seam.mu);
	wait_done(3);
	pthread_mutex_lock(&f->seam.mu);
	assert_int_equal(f->seam.arrived, 3);
	assert_int_equal(f->seam.order[2], 8192);	/* only after r1 */
	pthread_mutex_unlock(&f->seam.mu);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(dn.rc[i], 0);
	cdp_splitter_stats(f->sp, &st);
	assert_int_equal(st.range_waits, 1);
	/* The source has r2 over r1 (the later write wins). */
	{
		uint8_t got[12288];
		int fd = open(f->path[0], O_RDONLY);

		assert_int_equal(pread(fd, got, sizeof(got), 4096), (ssize_t)sizeof(got));
		close(fd);
		for (size_t i = 0; i < 4096; i++)
			assert_int_equal(got[i], 0xaa);
		for (size_t i = 4096; i < 8192; i++)
			assert_int_equal(got[i], 0xbb);
	}
}

struct rec_log {
	unsigned n, points, heartbeats, flushes, writes, zeros;
	uint64_t last_seq;
	uint64_t first_off[16];
};

static void log_rec(void *arg, const struct cdp_record *r, uint32_t seg_flags)
{
	struct rec_log *l = arg;

	if (!r) {
		l->heartbeats++;
		l->points += !!(seg_flags & CDP_SEG_F_POINT_END);
		return;
	}
	assert_true(r->seq == l->last_seq + 1);	/* contiguous, in order */
	l->last_seq = r->seq;
	if (l->n < 16)
		l->first_off[l->n] = r->offset;
	l->n++;
	l->flushes += r->kind == CDP_REC_FLUSH;
	l->writes += r->kind == CDP_REC_WRITE;
	l->zeros += r->kind == CDP_REC_ZERO;
}

/*
 * CDP_IO_F_INLINE: a request whose range is free runs on the caller's thread
 * (done() before submit() returns); one that overlaps a request in flight
 * still waits for it in the range lock.
 */
static void test_inline_submit(void **state)
{
	struct fx *f = *state;
	struct cdp_io_req r1, r2, r3, r4;
	static uint8_t a[4096], b[4096];

	start_capture(f);
	memset(a, 0xa1, sizeof(a));
	memset(b, 0xb2, sizeof(b));
	submit_flags(f, 0, &r1, CDP_IO_WRITE, CDP_IO_F_INLINE, 0, sizeof(a), a);
	pthread_mutex_lock(&dn.mu);
	assert_int_equal(dn.n, 1);	/* answered inside submit() */
	pthread_mutex_unlock(&dn.mu);
	submit_flags(f, 0, &r2, CDP_IO_FLUSH, CDP_IO_F_INLINE, 0, 0, NULL);
	pthread_mutex_lock(&dn.mu);
	assert_int_equal(dn.n, 2);
	pthread_mutex_unlock(&dn.mu);
	/* r3 (not inline) is held at the source; r4 overlaps it: it must wait. */
	f->seam.hold_first = true;
	submit(f, 0, &r3, CDP_IO_WRITE, 4096, sizeof(a), a);
	assert_true(wait_cond(&f->seam.mu, &f->seam.cond, seam_held, &f->seam));
	submit_flags(f, 0, &r4, CDP_IO_WRITE, CDP_IO_F_INLINE, 4096, sizeof(b), b);
	pthread_mutex_lock(&f->seam.mu);
	assert_int_equal(f->seam.arrived, 2);	/* r1, r3: r4 did not reach the source */
	f->seam.release = true;
	pthread_cond_broadcast(&f->seam.cond);
	pthread_mutex_unlock(&f->seam.mu);
	wait_done(4);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(dn.rc[i], 0);
	{
		uint8_t got[4096];
		int fd = open(f->path[0], O_RDONLY);

		assert_int_equal(pread(fd, got, sizeof(got), 4096), (ssize_t)sizeof(got));
		close(fd);
		assert_int_equal(got[0], 0xb2);	/* r4 after r3 */
		assert_int_equal(got[4095], 0xb2);
	}
}

/* The compression of each cached segment with records, in order; returns how many. */
static unsigned seg_compressions(struct fx *f, uint8_t *out, unsigned max)
{
	unsigned n = 0;
	uint64_t pos = 0;

	for (struct cdp_cache_seg *s; (s = cdp_cache_next(f->cache, pos, 0));) {
		struct cdp_seg_expect ex = { .min_time = INT64_MIN };
		struct cdp_segment *seg;
		struct cdp_err err = CDP_ERR_INIT;

		pos = s->pos;
		if (cdp_seg_decode(s->data, s->len, &ex, &seg, &err))
			fail_msg("segment at %" PRIu64 ": %s", pos, err.msg);
		if (seg->h.nrecords && n < max)
			out[n++] = seg->h.compression;
		cdp_segment_free(seg);
		cdp_cache_put(s);
	}
	return n;
}

/*
 * A segment zstd cannot shrink is stored raw, and so are the next 8 with
 * records (heartbeats do not count) without trying; then zstd again.
 */
static void test_incompressible_data_skips_zstd(void **state)
{
	struct fx *f = *state;
	static uint8_t rnd[65536], same[65536];
	struct cdp_io_req r[10];
	uint8_t comp[16];

	cdp_test_noise(rnd, sizeof(rnd), 1);
	memset(same, 0x11, sizeof(same));
	start_capture(f);
	for (unsigned i = 0; i < 10; i++) {
		submit(f, 0, &r[i], CDP_IO_WRITE, (uint64_t)i << 16, sizeof(rnd), i ? same : rnd);
		wait_done(i + 1);
		point(f);
	}
	assert_int_equal(seg_compressions(f, comp, 16), 10);
	for (unsigned i = 1; i <= 8; i++)
		assert_int_equal(comp[i], CDP_COMP_NONE);	/* compressible, not tried */
	assert_int_equal(comp[9], CDP_COMP_ZSTD);
}

/*
 * A segment zstd's level 1 shrinks by less than a quarter (but enough to
 * keep) makes the next 8 with records use the fast level; then level 1
 * again, which finds the same and goes fast once more. A segment the fast
 * level shrinks well sends the next ones back to level 1.
 */
static void test_poorly_compressible_data_goes_fast(void **state)
{
	struct fx *f = *state;
	static uint8_t poor[65536], good[65536];
	struct cdp_io_req r[20];
	struct cdp_splitter_stats st;

	cdp_test_noise(poor, sizeof(poor), 7);
	for (size_t b = 0; b < sizeof(poor); b += 4096)
		memset(poor + b, 0x5a, 512);	/* ~1/8 of it compressible */
	for (size_t i = 0; i < sizeof(good); i++)
		good[i] = (uint8_t)(i % 7);
	start_capture(f);
	point(f);	/* the interval armed: from now on one tick seals one segment */
	for (unsigned i = 0; i < 11; i++) {
		submit(f, 0, &r[i], CDP_IO_WRITE, (uint64_t)i << 16, sizeof(poor), poor);
		wait_done(i + 1);
		ticks(f, 1);	/* alone in the seal queue: not fast for a backlog */
	}
	cdp_splitter_stats(f->sp, &st);
	assert_int_equal(st.seals_raw, 0);
	assert_int_equal(st.seals_fast, 9);	/* 2nd to 9th, and the 11th */
	assert_int_equal(seg_compressions(f, (uint8_t[16]){ 0 }, 16), 11);
	for (unsigned i = 11; i < 20; i++) {
		submit(f, 0, &r[i], CDP_IO_WRITE, (uint64_t)i << 16, sizeof(good), good);
		wait_done(i + 1);
		ticks(f, 1);
	}
	cdp_splitter_stats(f->sp, &st);
	/* The first of these still goes fast (the 11th's verdict), shrinks well: level 1 after. */
	assert_int_equal(st.seals_fast, 10);
	assert_int_equal(st.seals_raw, 0);
}

/* Polls until the seal thread has sealed everything cut so far. */
static void seal_wait_drained(struct fx *f)
{
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;
	struct cdp_splitter_stats st;

	do
		cdp_splitter_stats(f->sp, &st);
	while (st.seal_backlog && cdp_clock_mono_ns(cdp_clock_real()) < until);
	assert_int_equal(st.seal_backlog, 0);
}

/* Cuts the open segment (one write in it) and waits until the seal thread is at the gate. */
static void cut_to_gate(struct fx *f, struct cdp_io_req *r, unsigned n, uint8_t *data)
{
	submit(f, 0, r, CDP_IO_WRITE, (uint64_t)n * 4096, 4096, data);
	wait_done(n + 1);
	cdp_clock_fake_advance(&f->clk, CDP_NS_PER_SEC);
	cdp_splitter_tick(f->sp);
	assert_true(wait_cond(&gate.mu, &gate.cond, gate_has_waiter, NULL));
}

/*
 * The seal thread computes as SCHED_IDLE while it seals one segment at a
 * time, and is SCHED_OTHER outside the compute (the locks it shares); the
 * cut that makes a second segment wait puts it back to SCHED_OTHER at once
 * (a busy machine must not starve it).
 */
static void test_seal_thread_idle_while_it_keeps_up(void **state)
{
	struct fx *f = *state;
	static uint8_t data[4096];
	struct cdp_io_req r[3];
	struct cdp_splitter_stats st;

	if (!cdp_thread_may_raise()) {
		print_message("needs CAP_SYS_NICE (the seal thread cannot leave SCHED_IDLE)\n");
		skip();
	}
	memset(data, 0x42, sizeof(data));
	start_capture(f);
	point(f);
	assert_int_equal(cdp_test_thread_stat_is("split/seal", 41, SCHED_OTHER), SCHED_OTHER);

	/* One segment, held at the gate inside its compute: idle. */
	gate_set(true);
	cut_to_gate(f, &r[0], 0, data);
	assert_int_equal(cdp_test_thread_stat_is("split/seal", 41, SCHED_IDLE), SCHED_IDLE);
	cdp_splitter_stats(f->sp, &st);
	assert_true(st.seal_idle);
	assert_int_equal(st.seal_promotions, 0);
	/* A second one waits behind it: the cut that queued it promoted the thread. */
	submit(f, 0, &r[1], CDP_IO_WRITE, 4096, sizeof(data), data);
	wait_done(2);
	cdp_clock_fake_advance(&f->clk, CDP_NS_PER_SEC);
	cdp_splitter_tick(f->sp);
	cdp_splitter_stats(f->sp, &st);
	assert_false(st.seal_idle);
	assert_int_equal(st.seal_promotions, 1);
	assert_int_equal(cdp_test_thread_stat_is("split/seal", 41, SCHED_OTHER), SCHED_OTHER);
	gate_set(false);
	seal_wait_drained(f);	/* no cut meanwhile: it may go idle for the second */
	assert_int_equal(cdp_test_thread_stat_is("split/seal", 41, SCHED_OTHER), SCHED_OTHER);

	/* Alone again: idle in its compute. */
	gate_set(true);
	cut_to_gate(f, &r[2], 2, data);
	assert_int_equal(cdp_test_thread_stat_is("split/seal", 41, SCHED_IDLE), SCHED_IDLE);
	gate_set(false);
	seal_wait_drained(f);
	cdp_splitter_stats(f->sp, &st);
	assert_false(st.seal_idle);
	assert_int_equal(st.seal_promotions, 1);
	assert_int_equal(st.segments - st.heartbeats, 3);
}

/* io_nice sets the I/O threads, not the caller; out of -20..19 it is refused. */
static void test_io_threads_nice(void **state)
{
	struct fx *f = *state;
	struct cdp_splitter_opts so = { .nvolumes = 1, .al = f->al, .dm = f->dm,
					.cache = f->cache, .io_nice = -21 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_splitter *sp;
	int ours = getpriority(PRIO_PROCESS, 0);

	assert_int_equal(cdp_splitter_open(&so, &sp, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "io_nice -21"));
	assert_int_equal(cdp_test_thread_nice_is("split/io", CDP_MIN(ours + 2, 19)),
			 CDP_MIN(ours + 2, 19));
	assert_int_equal(cdp_test_thread_nice_is("split/seal", CDP_MIN(ours + 5, 19)),
			 CDP_MIN(ours + 5, 19));	/* SEAL_NICE */
}

/* The journal acknowledges every record so far (all sealed: point() waited). */
static void ack_all(struct fx *f)
{
	struct cdp_splitter_stats st;

	cdp_splitter_stats(f->sp, &st);
	cdp_splitter_acked(f->sp, st.next_seq - 1, NULL);
}

static unsigned busy_extents(struct fx *f)
{
	struct cdp_actlog_stats st;

	cdp_actlog_stats(f->al, &st);
	return st.busy;
}

/*
 * The point tick flushes the source only when half of the activity log's
 * extents are busy (acknowledged by the journal but not yet flushed);
 * below that the application's own FLUSH lets them go idle.
 */
static void test_tick_flushes_only_when_the_log_fills(void **state)
{
	struct fx *f = *state;
	struct cdp_io_req r[12];
	static uint8_t a[4096];

	start_capture(f);
	memset(a, 0x3c, sizeof(a));
	for (unsigned i = 0; i < 4; i++)	/* 4 of 16 extents */
		submit(f, 0, &r[i], CDP_IO_WRITE, (uint64_t)i << 16, sizeof(a), a);
	wait_done(4);
	point(f);
	ack_all(f);
	point(f);
	assert_int_equal(busy_extents(f), 4);	/* acked, not flushed: the tick left them */
	submit(f, 0, &r[4], CDP_IO_FLUSH, 0, 0, NULL);
	wait_done(5);
	point(f);
	assert_int_equal(busy_extents(f), 0);	/* the application's flush did */
	for (unsigned i = 0; i < 8; i++)	/* 8 of 16: half */
		submit(f, 1, &r[4 + i], CDP_IO_WRITE, (uint64_t)i << 16, sizeof(a), a);
	wait_done(13);
	point(f);	/* 8 busy: this tick flushes volume b */
	ack_all(f);
	assert_int_equal(busy_extents(f), 0);	/* acked and flushed: idle at once */
}

static void test_records_points_and_heartbeats(void **state)
{
	struct fx *f = *state;
	struct cdp_io_req r[4];
	static uint8_t a[4096];
	struct rec_log l = { 0 };
	unsigned nseg;

	start_capture(f);
	memset(a, 0x5a, sizeof(a));
	submit(f, 0, &r[0], CDP_IO_WRITE, 0, sizeof(a), a);
	wait_done(1);
	submit(f, 1, &r[1], CDP_IO_WRITE, 512, sizeof(a), a);	/* 512-aligned, other volume */
	wait_done(2);
	submit(f, 0, &r[2], CDP_IO_FLUSH, 0, 0, NULL);
	wait_done(3);
	submit(f, 1, &r[3], CDP_IO_ZERO, 65536, 65536, NULL);
	wait_done(4);
	point(f);
	point(f);	/* idle: a heartbeat */
	nseg = walk(f, log_rec, &l);
	assert_true(nseg >= 2);
	assert_int_equal(l.n, 4);
	assert_int_equal(l.writes, 2);
	assert_int_equal(l.flushes, 1);
	assert_int_equal(l.zeros, 1);
	assert_int_equal(l.first_off[1], 512);
	assert_true(l.heartbeats >= 1);
	assert_true(l.points >= 1);
	/* Acked: the cache lets go, and the activity log may too. */
	cdp_splitter_acked(f->sp, l.last_seq, NULL);
	{
		struct cdp_cache_stats st;

		cdp_cache_stats(f->cache, &st);
		assert_int_equal(st.first_seq, 0);
	}
}

static void test_incremental_then_resync(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_io_req r[2];
	static uint8_t a[8192];
	struct cdp_splitter_stats st;
	struct rec_log l = { 0 };

	start_capture(f);
	memset(a, 0x77, sizeof(a));
	submit(f, 0, &r[0], CDP_IO_WRITE, 1 << 20, sizeof(a), a);	/* cached, unacked */
	wait_done(1);
	assert_int_equal(cdp_splitter_go_incremental(f->sp, "test", &err), 0);
	assert_int_equal(cdp_splitter_mode(f->sp), CDP_SPLIT_INCREMENTAL);
	submit(f, 1, &r[1], CDP_IO_WRITE, 2 << 20, 4096, a);	/* only a dirty bit */
	wait_done(2);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 0), 8192);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 1), 4096);
	assert_int_equal(walk(f, NULL, NULL), 0);	/* the cache was dropped */
	/* Not before the chain is anchored on the journal's head again. */
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_INCREMENTAL, 0, 0, NULL, NULL, &err),
			 -EAGAIN);
	start_capture_incremental(f);
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_INCREMENTAL, 0, 0, NULL, NULL, &err), 0);
	assert_int_equal(cdp_splitter_mode(f->sp), CDP_SPLIT_CONTINUOUS);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 0), 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 1), 0);
	point(f);
	cdp_splitter_stats(f->sp, &st);
	assert_int_equal(st.resync_bytes, 8192 + 4096);
	walk(f, log_rec, &l);	/* the journal never had seq 1: the chain starts over */
	assert_int_equal(l.writes, 2);	/* the two RESYNC blocks, between the markers */
	assert_int_equal(l.n, 4);
}

static void test_full_sync_skips_holes_and_zeros(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_splitter_stats st;
	uint8_t buf[65536];
	int fd = open(f->path[0], O_RDWR);

	memset(buf, 0x42, sizeof(buf));
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	memset(buf, 0, sizeof(buf));	/* written zeros: data, but all zero */
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 4 << 20), (ssize_t)sizeof(buf));
	close(fd);
	start_capture(f);
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_FULL, 0, 0, NULL, NULL, &err), 0);
	point(f);
	cdp_splitter_stats(f->sp, &st);
	/* Only data blocks are read and sent as bytes; at most one chunk per data run. */
	assert_true(st.resync_bytes >= 65536);
	assert_true(st.resync_bytes <= 2u << 20);
	assert_int_equal(st.resync_bytes + st.resync_zero_bytes, (uint64_t)VOL_SIZE + VOL1_SIZE);
}

/* ---- full sync at queue depth 4: what the records restore --------------- */

static const uint64_t vol_size[2] = { VOL_SIZE, VOL1_SIZE };

struct image {
	uint8_t *b[2];
	unsigned resync_writes;
	uint64_t first_write_seq;	/* the first non-RESYNC WRITE record */
	uint64_t chunk_seq;		/* the RESYNC record covering chunk_at on volume 0 */
	uint64_t chunk_at;
	bool chunk_has_write;		/* its payload holds the held write's bytes */
};

static void apply_rec(void *arg, const struct cdp_record *r, uint32_t seg_flags)
{
	struct image *im = arg;

	if (!r || (r->kind != CDP_REC_WRITE && r->kind != CDP_REC_ZERO))
		return;
	assert_true(r->volume < 2);
	assert_true(r->offset + r->length <= vol_size[r->volume]);
	if (r->kind == CDP_REC_WRITE)
		memcpy(im->b[r->volume] + r->offset, r->payload, r->length);
	else
		memset(im->b[r->volume] + r->offset, 0, r->length);
	if (r->kind == CDP_REC_WRITE && !(r->flags & CDP_REC_F_RESYNC) && !im->first_write_seq)
		im->first_write_seq = r->seq;
	if ((r->flags & CDP_REC_F_RESYNC) && r->volume == 0 && r->offset <= im->chunk_at &&
	    im->chunk_at < r->offset + r->length && !im->chunk_seq) {
		im->chunk_seq = r->seq;
		im->chunk_has_write = r->kind == CDP_REC_WRITE &&
				      r->payload[im->chunk_at - r->offset] == 0xab;
	}
	im->resync_writes += r->kind == CDP_REC_WRITE && (r->flags & CDP_REC_F_RESYNC);
}

static void fill_random(uint8_t *p, size_t n, uint64_t *x)
{
	for (size_t i = 0; i < n; i++) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		p[i] = (uint8_t)*x | 1;	/* never a zero block by chance */
	}
}

/* Holes, written zeros, data, a run not 4 KiB-aligned, vol 1's short tail. */
static void make_volumes(struct fx *f)
{
	static uint8_t buf[1 << 20];
	uint64_t x = 88172645463325252ull;
	int fd = open(f->path[0], O_RDWR);

	assert_true(fd >= 0);
	fill_random(buf, sizeof(buf), &x);
	assert_int_equal(pwrite(fd, buf, 65536, 0), 65536);
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 2 << 20), (ssize_t)sizeof(buf));
	assert_int_equal(pwrite(fd, buf + 512, sizeof(buf) - 512, (4 << 20) + 512),
			 (ssize_t)sizeof(buf) - 512);
	memset(buf, 0, 65536);
	assert_int_equal(pwrite(fd, buf, 65536, 7 << 20), 65536);	/* data, all zero */
	fill_random(buf, sizeof(buf), &x);
	assert_int_equal(pwrite(fd, buf, 1536, (6 << 20) + 512), 1536);
	assert_int_equal(fdatasync(fd), 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
	fd = open(f->path[1], O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 1 << 20), (ssize_t)sizeof(buf));
	assert_int_equal(pwrite(fd, buf, 8192, VOL1_SIZE - 8192), 8192);	/* into the tail */
	assert_int_equal(fdatasync(fd), 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
}

/* Replays every cached record into images (0xee where nothing landed) and compares them. */
static void check_restore(struct fx *f, struct image *im)
{
	point(f);
	for (int v = 0; v < 2; v++) {
		im->b[v] = cdp_xmalloc(vol_size[v]);
		memset(im->b[v], 0xee, vol_size[v]);
	}
	walk(f, apply_rec, im);
	for (int v = 0; v < 2; v++) {
		uint8_t *src = cdp_xmalloc(vol_size[v]);
		int fd = open(f->path[v], O_RDONLY);

		assert_true(fd >= 0);
		assert_int_equal(pread(fd, src, vol_size[v], 0), (ssize_t)vol_size[v]);
		close(fd);
		for (uint64_t i = 0; i < vol_size[v]; i++)
			if (src[i] != im->b[v][i])
				fail_msg("volume %d: byte %" PRIu64 " is %#x restored, %#x on the "
					 "source", v, i, im->b[v][i], src[i]);
		free(src);
		free(im->b[v]);
	}
}

/* Pages of @path in the page cache. */
static size_t resident_pages(const char *path, uint64_t size)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t n = (size + (uint64_t)pg - 1) / (uint64_t)pg, res = 0;
	unsigned char *vec = cdp_xmalloc(n);
	int fd = open(path, O_RDONLY);
	void *m;

	assert_true(fd >= 0);
	m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(mincore(m, size, vec), 0);
	for (size_t i = 0; i < n; i++)
		res += vec[i] & 1;
	munmap(m, size);
	close(fd);
	free(vec);
	return res;
}

/* Whether this filesystem takes O_DIRECT at all (else the splitter falls back too). */
static bool direct_ok(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECT);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void full_sync_restores(struct fx *f, bool buffered)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_splitter_stats st;
	struct image im = { .chunk_at = UINT64_MAX };

	make_volumes(f);
	start_capture(f);
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_FULL, 0, 0, NULL, NULL, &err), 0);
	cdp_splitter_stats(f->sp, &st);
	assert_int_equal(st.resync_bytes + st.resync_zero_bytes, (uint64_t)VOL_SIZE + VOL1_SIZE);
	assert_true(st.resync_read_bytes >= st.resync_bytes);
	if (buffered || !direct_ok(f->path[0])) {
		if (!buffered)
			print_message("O_DIRECT refused here: the buffered path ran instead\n");
		assert_int_equal(st.resync_direct_bytes, 0);
	} else {
		/* Every read but the 1536-byte tail's end starts aligned: all direct. */
		assert_int_equal(st.resync_direct_bytes, st.resync_read_bytes);
	}
	/* Direct reads leave no pages behind; buffered ones are dropped. */
	assert_int_equal(resident_pages(f->path[0], VOL_SIZE), 0);
	assert_int_equal(resident_pages(f->path[1], VOL1_SIZE), 0);
	check_restore(f, &im);
	assert_true(im.resync_writes >= 5);
}

/*
 * A sync's data fills its segments to the brim: a 1 MiB chunk that does not
 * fit whole is split across two segments, and the image restores exactly.
 */
static void test_full_sync_fills_its_segments(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct image im = { .chunk_at = UINT64_MAX };
	static uint8_t buf[1 << 20];
	uint64_t x = 2463534242ull, pos = 0;
	unsigned full = 0, partial = 0;

	for (int v = 0; v < 2; v++) {
		int fd = open(f->path[v], O_RDWR);

		assert_true(fd >= 0);
		for (uint64_t off = 0; off < vol_size[v]; off += sizeof(buf)) {
			size_t n = (size_t)CDP_MIN((uint64_t)sizeof(buf), vol_size[v] - off);

			fill_random(buf, n, &x);
			assert_int_equal(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
		}
		assert_int_equal(fdatasync(fd), 0);
		close(fd);
	}
	start_capture(f);
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_FULL, 0, 0, NULL, NULL, &err), 0);
	point(f);
	for (struct cdp_cache_seg *cs; (cs = cdp_cache_next(f->cache, pos, 0)); cdp_cache_put(cs)) {
		struct cdp_seg_header h;

		pos = cs->pos;
		assert_int_equal(cdp_seg_parse_header(cs->data, cs->len, &h, &err), 0);
		if (h.raw_len < (1u << 20))
			continue;	/* markers, heartbeats */
		if (h.raw_len > CDP_SEG_MAX_RAW - 8192)
			full++;
		else
			partial++;
	}
	/* 16 MiB of data in 4 MiB segments: every one full but the last. */
	assert_true(full >= 3);
	assert_true(partial <= 1);
	check_restore(f, &im);
	assert_true(im.resync_writes > 16);	/* more records than chunks: some were split */
}

static void test_full_sync_qd4_direct_restores_the_image(void **state)
{
	full_sync_restores(*state, false);
}

static void test_full_sync_buffered_fallback_restores_the_image(void **state)
{
	full_sync_restores(*state, true);
}

struct sync_thread {
	struct fx *f;
	const struct cdp_sync_caps *caps;
	int rc;
	struct cdp_err err;
	_Atomic bool done;
};

static void *sync_thread_main(void *arg)
{
	struct sync_thread *t = arg;

	t->rc = cdp_splitter_resync(t->f->sp, CDP_SYNC_FULL, 0, 0, NULL, t->caps, &t->err);
	atomic_store(&t->done, true);
	return NULL;
}

/* Writes of 512 B..1 MiB, some across chunk boundaries, one at a time, while the sync runs. */
static void test_full_sync_with_concurrent_writes_restores_the_image(void **state)
{
	struct fx *f = *state;
	/* Slowed by the network cap (~0.5 s), so that the writes overlap it. */
	struct cdp_sync_caps caps = { .net_bps = 16u << 20 };
	struct sync_thread t = { .f = f, .caps = &caps, .err = CDP_ERR_INIT };
	struct image im = { .chunk_at = UINT64_MAX };
	uint8_t *buf = cdp_xmalloc(1 << 20);
	uint64_t x = 0x9e3779b97f4a7c15ull, bytes = 0;
	struct cdp_splitter_stats st;
	pthread_t th;
	unsigned n = 0;

	make_volumes(f);
	start_capture(f);
	pthread_create(&th, NULL, sync_thread_main, &t);
	/* At most 24 MiB of records besides the sync's: the cache (64 MiB) is never acked. */
	while (bytes < (24u << 20) && (n < 40 || !atomic_load(&t.done))) {
		struct cdp_io_req r;
		unsigned vol = (unsigned)(x & 1);
		uint32_t len = (uint32_t)(((x >> 8) % (n % 8 ? 128 : 2048)) + 1) * 512;
		uint64_t off = ((x >> 24) % ((vol_size[vol] - len) / 512 + 1)) * 512;

		if (n % 4 == 0)	/* across a chunk boundary */
			off = (((x >> 24) % 7 + 1) << 20) - len / 2 / 512 * 512;
		bytes += len;

		fill_random(buf, len, &x);
		submit(f, vol, &r, (x >> 40) % 5 ? CDP_IO_WRITE : CDP_IO_ZERO, off, len,
		       buf);
		wait_done(++n);
		assert_int_equal(dn.rc[(n - 1) % 64], 0);
	}
	pthread_join(th, NULL);
	cdp_splitter_stats(f->sp, &st);
	print_message("%u writes (%" PRIu64 " bytes) during and after the sync; %" PRIu64
		      " sync chunks waited for one\n", n, bytes, st.resync_range_waits);
	assert_int_equal(t.rc, 0);
	check_restore(f, &im);
	free(buf);
}

/* A write holding a chunk's range: the sync waits for it and reads what it wrote. */
static void test_full_sync_waits_for_a_write_in_its_chunk(void **state)
{
	struct fx *f = *state;
	struct sync_thread t = { .f = f, .err = CDP_ERR_INIT };
	struct image im = { .chunk_at = (3 << 20) + 4096 };
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;
	struct cdp_splitter_stats st;
	bool done_early;
	static uint8_t a[8192];
	struct cdp_io_req r;
	pthread_t th;

	make_volumes(f);
	start_capture(f);
	memset(a, 0xab, sizeof(a));
	f->seam.hold_first = true;
	submit(f, 0, &r, CDP_IO_WRITE, (3 << 20) + 4096, sizeof(a), a);
	assert_true(wait_cond(&f->seam.mu, &f->seam.cond, seam_held, &f->seam));
	pthread_create(&th, NULL, sync_thread_main, &t);
	/* The sync reaches the held range (a hole when it looked) and waits. */
	do {
		sched_yield();	/* polling: leave the CPU to the sync */
		cdp_splitter_stats(f->sp, &st);
	} while (!st.resync_range_waits && cdp_clock_mono_ns(cdp_clock_real()) < until);
	done_early = atomic_load(&t.done);
	/* Released before asserting: a held write would hang the teardown. */
	pthread_mutex_lock(&f->seam.mu);
	f->seam.release = true;
	pthread_cond_broadcast(&f->seam.cond);
	pthread_mutex_unlock(&f->seam.mu);
	wait_done(1);
	pthread_join(th, NULL);
	assert_int_equal(st.resync_range_waits, 1);
	assert_false(done_early);
	assert_int_equal(t.rc, 0);
	check_restore(f, &im);
	assert_true(im.first_write_seq);
	assert_true(im.chunk_seq > im.first_write_seq);
	assert_true(im.chunk_has_write);
}

/* ---- pacing ---------------------------------------------------------------- */

static void test_pacer_arithmetic(void **state)
{
	struct cdp_splitter_pacer p = { 0 };
	const int64_t t = 5 * CDP_NS_PER_SEC;

	assert_int_equal(cdp_splitter_pacer_wait(&p, 0, t), 0);	/* unlimited */
	cdp_splitter_pacer_add(&p, 1u << 30);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 0, t), 0);
	/* 1 MB/s: a new window; 1 MB in it is due 1 s after its start. */
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000, t), 0);
	cdp_splitter_pacer_add(&p, 1000000);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000, t), CDP_NS_PER_SEC);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000, t + CDP_NS_PER_SEC / 4),
			 3 * CDP_NS_PER_SEC / 4);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000, t + CDP_NS_PER_SEC), 0);
	/* A new rate restarts the window: what went before does not count. */
	cdp_splitter_pacer_add(&p, 500000);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 2000000, t + CDP_NS_PER_SEC), 0);
	cdp_splitter_pacer_add(&p, 1000000);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 2000000, t + CDP_NS_PER_SEC),
			 CDP_NS_PER_SEC / 2);
	/* Idle for 10 s: no 10 s burst afterwards. */
	assert_int_equal(cdp_splitter_pacer_wait(&p, 2000000, t + 11 * CDP_NS_PER_SEC), 0);
	cdp_splitter_pacer_add(&p, 2000000);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 2000000, t + 11 * CDP_NS_PER_SEC),
			 CDP_NS_PER_SEC);
	/* Bytes given back (a chunk that was all zero) shorten the wait. */
	cdp_splitter_pacer_sub(&p, 1000000);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 2000000, t + 11 * CDP_NS_PER_SEC),
			 CDP_NS_PER_SEC / 2);
	cdp_splitter_pacer_sub(&p, 5000000);	/* never below zero */
	assert_int_equal(p.bytes, 0);
	/* No overflow at large counts: 1 TB at 1 GB/s is 1000 s. */
	p = (struct cdp_splitter_pacer){ 0 };
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000000, 0), 0);
	cdp_splitter_pacer_add(&p, 1000000000000ull);
	assert_int_equal(cdp_splitter_pacer_wait(&p, 1000000000, 0), 1000 * CDP_NS_PER_SEC);
}

static void test_read_cap_arithmetic(void **state)
{
	/* 64 MiB in 0.5 s of reads in flight: 134 MB/s. */
	assert_int_equal(cdp_splitter_read_bandwidth(64u << 20, CDP_NS_PER_SEC / 2),
			 134217728);
	assert_int_equal(cdp_splitter_read_bandwidth(64u << 20, 0), 0);	/* not measurable */
	assert_int_equal(cdp_splitter_read_cap(134217728, 30), 40265318);
	assert_int_equal(cdp_splitter_read_cap(134217728, 0), 0);	/* off */
	assert_int_equal(cdp_splitter_read_cap(0, 30), 0);		/* not measured yet */
	assert_int_equal(cdp_splitter_read_cap(134217728, 100), 134217728);
	assert_int_equal(cdp_splitter_read_cap(UINT64_MAX, 50), UINT64_MAX / 2);
}

/*
 * The network cap holds: 6 MiB of data at 8 MiB/s. A chunk counts when its
 * read starts, so the sixth starts no earlier than 5 MiB / 8 MiB/s = 0.625 s
 * after the first (a lower bound: a loaded machine only adds). The read cap
 * is on too: its probe measures the source (6 MiB of data: enough).
 */
static void test_full_sync_network_cap_holds(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_sync_caps caps = { .net_bps = 8u << 20, .read_percent = 30 };
	static uint8_t buf[6 << 20];
	uint64_t x = 12345;
	int64_t t0, t1;
	int fd = open(f->path[0], O_RDWR);

	fill_random(buf, sizeof(buf), &x);
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	close(fd);
	start_capture(f);
	t0 = cdp_clock_mono_ns(cdp_clock_real());
	assert_int_equal(cdp_splitter_resync(f->sp, CDP_SYNC_FULL, 0, 0, NULL, &caps, &err), 0);
	t1 = cdp_clock_mono_ns(cdp_clock_real());
	assert_true(t1 - t0 >= 5 * CDP_NS_PER_SEC / 8);
	{
		struct cdp_splitter_stats st;

		cdp_splitter_stats(f->sp, &st);
		assert_int_equal(st.resync_bytes, 6u << 20);
		assert_true(st.resync_read_bps > 0);	/* measured */
	}
}

/* Bytes zstd cannot shrink: block @i's. */
static void noise(uint8_t *p, size_t len, uint64_t i)
{
	cdp_test_noise(p, len, i);
}

struct payloads {
	unsigned n;
	uint64_t off[8];
	bool same[8];
};

static void check_payload(void *arg, const struct cdp_record *r, uint32_t seg_flags)
{
	struct payloads *p = arg;
	uint8_t want[65536];

	if (!r || r->kind != CDP_REC_WRITE || p->n == 8)
		return;
	noise(want, sizeof(want), r->offset >> 16);
	p->off[p->n] = r->offset;
	p->same[p->n] = r->length == sizeof(want) && !memcmp(r->payload, want, sizeof(want));
	p->n++;
}

static uint8_t blk[4][65536];

/* Three 64 KiB writes at 64 KiB, 192 KiB, 320 KiB: one segment each, two spilled. */
static void three_segments(struct fx *f, struct cdp_io_req *r)
{
	struct cdp_cache_stats cst;

	start_capture(f);
	for (unsigned i = 0; i < 3; i++) {
		noise(blk[i], sizeof(blk[i]), 2 * i + 1);
		submit(f, 0, &r[i], CDP_IO_WRITE, (2 * i + 1) << 16, sizeof(blk[i]), blk[i]);
		wait_done(i + 1);
		point(f);	/* a segment per write */
	}
	cdp_cache_stats(f->cache, &cst);
	assert_true(cst.spilled_segments >= 2);
	assert_true(cst.bytes - cst.spilled_bytes <= SPILL_MEM);
}

static void test_spill_file_then_its_write_error(void **state)
{
	struct fx *f = *state;
	struct cdp_io_req r[4];
	struct cdp_cache_stats cst;
	struct payloads pl = { 0 };

	three_segments(f, r);
	/* What the link would send: the chain verifies, the payloads are intact. */
	assert_true(walk(f, check_payload, &pl) >= 3);
	assert_int_equal(pl.n, 3);
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(pl.off[i], (2 * i + 1) << 16);
		assert_true(pl.same[i]);
	}

	/* The file system fills: the next spilled segment is refused. */
	cdp_io_shim_fail_nth(f->shim, 1, ENOSPC);
	noise(blk[3], sizeof(blk[3]), 7);
	submit(f, 0, &r[3], CDP_IO_WRITE, 7 << 16, sizeof(blk[3]), blk[3]);
	wait_done(4);
	cdp_clock_fake_advance(&f->clk, CDP_NS_PER_SEC);
	cdp_splitter_tick(f->sp);
	cdp_clock_fake_advance(&f->clk, CDP_NS_PER_SEC);
	cdp_splitter_tick(f->sp);
	/* The mode flips first; the callback comes once the bitmap has it all. */
	assert_true(wait_cond(&f->seam.mu, &f->seam.cond, went_incremental, &f->seam));
	assert_int_equal(cdp_splitter_mode(f->sp), CDP_SPLIT_INCREMENTAL);
	/* Every write is in the bitmap: the refused one and the cached ones,
	 * those in the spill file read back to be marked. */
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 0), 4 * 65536);
	for (unsigned i = 0; i < 4; i++) {
		uint64_t off, len;

		assert_true(cdp_dirtymap_next(f->dm, 0, (2 * i) << 16, 0, &off, &len));
		assert_int_equal(off, (2 * i + 1) << 16);
		assert_int_equal(len, 65536);
	}
	assert_int_equal(walk(f, NULL, NULL), 0);	/* the cache was dropped */
	cdp_cache_stats(f->cache, &cst);
	assert_int_equal(cst.spilled_bytes, 0);
	assert_int_equal(cst.refused, 1);
}

/* A spilled segment that cannot be read back: which ranges it held is unknown. */
static void test_unreadable_spilled_segment_dirties_everything(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_io_req r[3];

	three_segments(f, r);
	atomic_store(&spill_read_fail, -EIO);
	assert_int_equal(cdp_splitter_go_incremental(f->sp, "test", &err), 0);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 0), VOL_SIZE);
	assert_int_equal(cdp_dirtymap_dirty_bytes(f->dm, 1), VOL1_SIZE);
	atomic_store(&spill_read_fail, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_overlapping_write_waits_in_the_range_lock,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_records_points_and_heartbeats, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inline_submit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_poorly_compressible_data_goes_fast, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_seal_thread_idle_while_it_keeps_up, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_io_threads_nice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incompressible_data_skips_zstd, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_tick_flushes_only_when_the_log_fills,
						setup_small_log, teardown),
		cmocka_unit_test_setup_teardown(test_incremental_then_resync, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_sync_skips_holes_and_zeros, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_spill_file_then_its_write_error, setup_spill,
						teardown),
		cmocka_unit_test_setup_teardown(test_unreadable_spilled_segment_dirties_everything,
						setup_spill, teardown),
		cmocka_unit_test_setup_teardown(test_full_sync_fills_its_segments, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_sync_qd4_direct_restores_the_image, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_full_sync_buffered_fallback_restores_the_image,
						setup_buffered, teardown),
		cmocka_unit_test_setup_teardown(
			test_full_sync_with_concurrent_writes_restores_the_image, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_sync_waits_for_a_write_in_its_chunk,
						setup, teardown),
		cmocka_unit_test(test_pacer_arithmetic),
		cmocka_unit_test(test_read_cap_arithmetic),
		cmocka_unit_test_setup_teardown(test_full_sync_network_cap_holds, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
