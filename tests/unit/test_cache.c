/*
 * tests/unit/test_cache - capture/cache with and without its spill file, on
 * real files in a scratch directory; faults through the I/O seam (the
 * storage/io shim for writes, a gate of our own for reads).
 *
 *  - memory first, then the spill file: cdp_cache_next() returns every
 *    entry's bytes, identical and in push order, wherever they are;
 *  - acks free memory and ring space; the ring wraps (an entry crossing the
 *    file's end) and the file never grows past spill_size;
 *  - memory and spill full: -ENOSPC, nothing cached is touched;
 *  - drop_all hands every entry's bytes to its callback, oldest first;
 *  - resume by digest lands in the spilled part;
 *  - a spill write error (ENOSPC, EIO) is a refused push, the message names
 *    the file and the error, nothing is lost; a read error shows as data
 *    NULL with read_err, in next() and drop_all;
 *  - a read of spilled bytes in progress pins its ring space: an ack and a
 *    push meanwhile cannot overwrite it;
 *  - a reader, an acker and a pusher thread at once (TSan runs this file).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "capture/cache.h"
#include "common/util.h"
#include "storage/io.h"

#define WAIT_NS (30 * CDP_NS_PER_SEC)

struct fx {
	char dir[64];
	char spill[128];
};

static int setup(void **state)
{
	struct fx *f = cdp_xcalloc(1, sizeof(*f));

	assert_non_null(cdp_test_mkdtemp(f->dir, sizeof(f->dir)));
	snprintf(f->spill, sizeof(f->spill), "%s/spill", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	cdp_test_rmrf(f->dir);
	free(f);
	return 0;
}

/* ---- segments with known bytes ------------------------------------------- */

/* Entry @i: 600..1499 bytes, so that ring positions fall anywhere. */
static size_t len_of(uint64_t i)
{
	return 600 + (size_t)((i * 337) % 900);
}

static void fill(uint8_t *p, size_t len, uint64_t i)
{
	cdp_test_noise(p, len, i);
}

static void digest_of(uint64_t i, uint8_t d[32])
{
	memset(d, 0xd1, 32);
	memcpy(d, &i, sizeof(i));
}

static struct cdp_cache_seg *mkseg_len(uint64_t i, size_t len)
{
	struct cdp_cache_seg *s = cdp_xcalloc(1, sizeof(*s));

	s->first_seq = i;
	s->last_seq = i;
	s->nrecords = 1;
	s->max_wid = i;
	digest_of(i, s->digest);
	s->data = cdp_xmalloc(len);
	fill(s->data, len, i);
	s->len = len;
	return s;
}

static struct cdp_cache_seg *mkseg(uint64_t i)
{
	return mkseg_len(i, len_of(i));
}

/* The bytes are entry @i's, of length @len. */
static void assert_bytes(const struct cdp_cache_seg *s, uint64_t i, size_t len)
{
	uint8_t *want = cdp_xmalloc(len);

	assert_non_null(s->data);
	assert_int_equal(s->len, len);
	assert_int_equal(s->first_seq, i);
	fill(want, len, i);
	assert_memory_equal(s->data, want, len);
	free(want);
}

static void push_ok(struct cdp_cache *c, uint64_t i)
{
	struct cdp_err err = CDP_ERR_INIT;

	assert_int_equal(cdp_cache_push(c, mkseg(i), &err), 0);
}

/* Walks every entry after @after: they must be @first, @first + 1, ... @last. */
static void assert_walk(struct cdp_cache *c, uint64_t after, uint64_t first, uint64_t last)
{
	uint64_t pos = after, want = first;

	for (;;) {
		struct cdp_cache_seg *s = cdp_cache_next(c, pos, 0);

		if (!s)
			break;
		assert_true(want <= last);
		assert_bytes(s, want, len_of(want));
		pos = s->pos;
		cdp_cache_put(s);
		want++;
	}
	assert_int_equal(want, last + 1);
}

static uint64_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

/* Disk use of @path in bytes. */
static uint64_t file_disk(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

static struct cdp_cache *spill_cache(struct fx *f, uint64_t mem, uint64_t spill,
				     const struct cdp_io *io)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_cache *c = cdp_cache_new(mem);

	assert_int_equal(cdp_cache_spill_open(c, f->spill, spill, io, &err), 0);
	return c;
}

/* ---- a read gate: fails or holds pread (writes go through) ---------------- */

struct gate {
	struct cdp_io ops;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int fail;		/* -errno for every pread, 0: none */
	bool hold;		/* the next pread waits for release */
	bool holding, release;
};

static const struct cdp_io *k(void)
{
	return cdp_io_plain();
}

static int g_open(void *ctx, const char *path, int flags, mode_t mode)
{
	return k()->open(k()->ctx, path, flags, mode);
}

static int g_close(void *ctx, int fd)
{
	return k()->close(k()->ctx, fd);
}

static int g_pwritev_batch(void *ctx, const struct cdp_io_write *w, unsigned n)
{
	return k()->pwritev_batch(k()->ctx, w, n);
}

static int g_ftruncate(void *ctx, int fd, uint64_t len)
{
	return k()->ftruncate(k()->ctx, fd, len);
}

static long g_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
	struct gate *g = ctx;
	int fail;

	pthread_mutex_lock(&g->mu);
	if (g->hold) {
		g->holding = true;
		pthread_cond_broadcast(&g->cond);
		while (!g->release)
			pthread_cond_wait(&g->cond, &g->mu);
		g->hold = false;
	}
	fail = g->fail;
	pthread_mutex_unlock(&g->mu);
	if (fail)
		return fail;
	return k()->pread(k()->ctx, fd, buf, len, off);
}

static void gate_init(struct gate *g)
{
	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cond, NULL);
	g->ops.ctx = g;
	g->ops.open = g_open;
	g->ops.close = g_close;
	g->ops.pwritev_batch = g_pwritev_batch;
	g->ops.pread = g_pread;
	g->ops.ftruncate = g_ftruncate;
}

static void gate_release(struct gate *g)
{
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cond);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_memory_only_refuses_past_its_bound(void **state)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_cache *c = cdp_cache_new(3000);
	struct cdp_cache_seg *s;
	struct cdp_cache_stats st;

	assert_int_equal(cdp_cache_push(c, mkseg_len(1, 1000), &err), 0);
	assert_int_equal(cdp_cache_push(c, mkseg_len(2, 2000), &err), 0);
	s = mkseg_len(3, 1);
	assert_err(&err, cdp_cache_push(c, s, &err), -ENOSPC, "log cache full");
	cdp_cache_seg_free(s);	/* still ours */
	cdp_cache_stats(c, &st);
	assert_int_equal(st.segments, 2);
	assert_int_equal(st.bytes, 3000);
	assert_int_equal(st.spilled_segments, 0);
	assert_int_equal(st.refused, 1);
	cdp_cache_free(c);
}

/* Spare-sized buffers come back for the next seals once their entry is gone, a bounded number. */
static void test_spare_buffers_are_recycled(void **state)
{
	enum { N = CDP_CACHE_SPARES + 4 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_cache *c = cdp_cache_new(0);
	struct cdp_cache_seg *held;
	uint8_t *pushed[N + 1], *p;
	unsigned got = 0;

	(void)state;
	for (uint64_t i = 1; i <= N + 1; i++) {
		struct cdp_cache_seg *s = mkseg_len(i, 100);

		if (i <= N) {
			s->data = cdp_xrealloc(s->data, CDP_CACHE_SPARE_CAP);
			s->cap = CDP_CACHE_SPARE_CAP;
		}
		pushed[i - 1] = s->data;
		assert_int_equal(cdp_cache_push(c, s, &err), 0);
	}
	assert_null(cdp_cache_spare(c));	/* nothing freed yet */
	held = cdp_cache_next(c, 0, 0);		/* the link still sends the first */
	assert_non_null(held);
	assert_ptr_equal(held->data, pushed[0]);
	cdp_cache_ack(c, N + 1, NULL);
	/* All but the held one are gone: at most CDP_CACHE_SPARES come back, each a spare-sized one. */
	while ((p = cdp_cache_spare(c))) {
		bool known = false;

		for (unsigned i = 1; i < N; i++)
			known = known || p == pushed[i];
		assert_true(known);	/* never the held one, never the ordinary last one */
		memset(p, 0xa5, CDP_CACHE_SPARE_CAP);	/* ours now, all of it */
		free(p);
		got++;
	}
	assert_int_equal(got, CDP_CACHE_SPARES);
	/* The held one's buffer comes back when the link lets it go. */
	cdp_cache_put(held);
	p = cdp_cache_spare(c);
	assert_ptr_equal(p, pushed[0]);
	free(p);
	assert_null(cdp_cache_spare(c));
	cdp_cache_free(c);
}

static void test_spill_keeps_order_and_bytes(void **state)
{
	struct fx *f = *state;
	struct cdp_cache *c = spill_cache(f, 5000, 1 << 20, NULL);
	struct cdp_cache_stats st;
	uint64_t mem = 0, spilled = 0;

	/* Memory takes each entry that fits (6 does, after 5 did not); the rest spill. */
	for (uint64_t i = 1; i <= 40; i++) {
		if (mem + len_of(i) <= 5000)
			mem += len_of(i);
		else
			spilled++;
		push_ok(c, i);
	}
	cdp_cache_stats(c, &st);
	assert_int_equal(st.segments, 40);
	assert_int_equal(st.spilled_segments, spilled);
	assert_int_equal(spilled, 40 - 5);
	assert_true(st.spilled_bytes > 0);
	assert_int_equal(st.bytes - st.spilled_bytes, mem);
	assert_int_equal(st.first_seq, 1);
	assert_int_equal(file_size(f->spill), st.spilled_bytes);
	assert_walk(c, 0, 1, 40);
	assert_walk(c, 0, 1, 40);	/* reading changes nothing */
	cdp_cache_free(c);
	assert_int_equal(file_size(f->spill), 0);	/* emptied at close */
}

static void test_acks_free_memory_and_ring_space(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	const uint64_t ring = 8192;
	struct cdp_cache *c = spill_cache(f, 3000, ring, NULL);
	struct cdp_cache_stats st, st2;
	uint64_t i = 1, last;

	/* Fill memory and ring until a push is refused. */
	for (;; i++) {
		struct cdp_cache_seg *s = mkseg(i);

		if (cdp_cache_push(c, s, &err)) {
			assert_int_equal(err.code, -ENOSPC);
			assert_non_null(strstr(err.msg, f->spill));
			cdp_cache_seg_free(s);
			break;
		}
	}
	last = i - 1;
	cdp_cache_stats(c, &st);
	assert_true(st.spilled_segments >= 4);
	assert_true(st.spilled_bytes <= ring && st.spilled_bytes + len_of(i) > ring);
	assert_walk(c, 0, 1, last);	/* full, nothing lost */

	/* Acks (by seq, then by digest) free memory first, then the ring's tail. */
	assert_int_equal(cdp_cache_ack(c, 2, NULL), 2);
	cdp_cache_stats(c, &st2);
	assert_int_equal(st2.segments, st.segments - 2);
	assert_int_equal(st2.spilled_bytes, st.spilled_bytes);
	{
		uint8_t d[32];
		uint64_t upto = last - st.spilled_segments + 2;	/* two spilled ones */

		digest_of(upto, d);
		assert_int_equal(cdp_cache_ack(c, 0, d), upto);
		cdp_cache_stats(c, &st2);
		assert_int_equal(st2.spilled_segments, st.spilled_segments - 2);
		assert_int_equal(st2.spilled_bytes,
				 st.spilled_bytes - len_of(upto - 1) - len_of(upto));
		assert_walk(c, 0, upto + 1, last);
	}
	/* The freed ring space takes new entries (memory is empty again too). */
	for (i = last + 1;; i++) {
		struct cdp_cache_seg *s = mkseg(i);

		if (cdp_cache_push(c, s, &err)) {
			cdp_cache_seg_free(s);
			break;
		}
	}
	assert_true(i - 1 > last + 2);
	assert_true(file_size(f->spill) <= ring);
	assert_true(file_disk(f->spill) <= ring);
	cdp_cache_stats(c, &st);
	assert_walk(c, 0, st.first_seq, i - 1);
	/* Everything acked: nothing left anywhere. */
	cdp_cache_ack(c, i, NULL);
	cdp_cache_stats(c, &st);
	assert_int_equal(st.segments, 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.spilled_bytes, 0);
	cdp_cache_free(c);
}

/* Many rounds of push and ack through a small ring: it wraps, entries cross its end. */
static void test_ring_wraps_around(void **state)
{
	struct fx *f = *state;
	const uint64_t ring = 5000;	/* no multiple of any entry's length */
	struct cdp_cache *c = spill_cache(f, 1, ring, NULL);	/* memory takes nothing */
	struct cdp_cache_stats st;
	uint64_t next = 1, acked = 0, pushed_bytes = 0;

	while (pushed_bytes < 20 * ring) {
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_cache_seg *s = mkseg(next);
		size_t len = s->len;

		if (cdp_cache_push(c, s, &err) == 0) {
			pushed_bytes += len;
			next++;
			continue;
		}
		assert_int_equal(err.code, -ENOSPC);
		cdp_cache_seg_free(s);
		/* Full: everything is there, in order; ack the older half. */
		assert_walk(c, 0, acked + 1, next - 1);
		acked += (next - 1 - acked + 1) / 2;
		cdp_cache_ack(c, acked, NULL);
	}
	assert_walk(c, 0, acked + 1, next - 1);
	cdp_cache_stats(c, &st);
	assert_int_equal(st.segments, st.spilled_segments);
	assert_true(st.spilled_bytes <= ring);
	assert_true(file_size(f->spill) <= ring);
	assert_true(file_disk(f->spill) <= ring + 4096);	/* a block's rounding */
	cdp_cache_free(c);
}

struct seen {
	uint64_t n, next;
	unsigned lost;		/* entries handed over without their bytes */
	int read_err;
};

static void collect(void *arg, const struct cdp_cache_seg *s)
{
	struct seen *v = arg;

	assert_int_equal(s->first_seq, v->next);
	if (s->data) {
		assert_bytes(s, v->next, len_of(v->next));
	} else {
		v->lost++;
		v->read_err = s->read_err;
	}
	v->next++;
	v->n++;
}

static void test_drop_all_reads_every_entry_back(void **state)
{
	struct fx *f = *state;
	struct cdp_cache *c = spill_cache(f, 4000, 1 << 16, NULL);
	struct cdp_cache_stats st;
	struct cdp_cache_seg *held;
	struct seen v = { .next = 1 };
	uint8_t d[32];
	uint64_t after;

	for (uint64_t i = 1; i <= 30; i++)
		push_ok(c, i);
	held = cdp_cache_next(c, 28, 0);	/* a holder of a spilled entry */
	assert_non_null(held);
	cdp_cache_drop_all(c, collect, &v);
	assert_int_equal(v.n, 30);
	assert_int_equal(v.lost, 0);
	cdp_cache_stats(c, &st);
	assert_int_equal(st.segments, 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.spilled_bytes, 0);
	assert_null(cdp_cache_next(c, 0, 0));
	/* The base is the newest dropped entry: a journal there needs nothing. */
	digest_of(30, d);
	assert_int_equal(cdp_cache_resume(c, d, &after), 0);
	/* The holder's bytes outlive the drop. */
	assert_bytes(held, 29, len_of(29));
	cdp_cache_put(held);
	/* And the whole ring is free again. */
	for (uint64_t i = 31; i <= 60; i++)
		push_ok(c, i);
	assert_walk(c, 0, 31, 60);
	cdp_cache_free(c);
}

static void test_resume_by_digest_into_the_spill(void **state)
{
	struct fx *f = *state;
	struct cdp_cache *c = spill_cache(f, 3000, 1 << 16, NULL);
	struct cdp_cache_stats st;
	uint8_t d[32];
	uint64_t after;

	for (uint64_t i = 1; i <= 20; i++)
		push_ok(c, i);
	cdp_cache_stats(c, &st);
	assert_true(st.spilled_segments >= 15);
	/* The journal's chain ends at entry 12 (spilled): resend from 13. */
	digest_of(12, d);
	assert_int_equal(cdp_cache_resume(c, d, &after), 0);
	assert_walk(c, after, 13, 20);
	/* It acks up to there; resuming from the new base resends 13.. again. */
	cdp_cache_ack(c, 0, d);
	assert_int_equal(cdp_cache_resume(c, d, &after), 0);
	assert_walk(c, after, 13, 20);
	/* A digest the cache never had: it cannot bridge the gap. */
	digest_of(99, d);
	assert_int_equal(cdp_cache_resume(c, d, &after), -ENOENT);
	cdp_cache_free(c);
}

/* A spill write that fails (a full file system, EIO): refused, nothing lost. */
static void test_spill_write_error_refuses_the_push(void **state)
{
	static const int codes[] = { ENOSPC, EIO };
	struct fx *f = *state;

	for (unsigned k = 0; k < CDP_ARRAY_SIZE(codes); k++) {
		struct cdp_io_shim *sh = cdp_io_shim_new(k + 1);
		struct cdp_cache *c = spill_cache(f, 3000, 1 << 16, cdp_io_shim_ops(sh));
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_cache_stats st, st2;
		struct cdp_cache_seg *s;

		for (uint64_t i = 1; i <= 10; i++)
			push_ok(c, i);
		cdp_cache_stats(c, &st);
		assert_true(st.spilled_segments > 0);
		cdp_io_shim_fail_nth(sh, 1, codes[k]);
		s = mkseg(11);
		assert_err(&err, cdp_cache_push(c, s, &err), -ENOSPC, f->spill);
		assert_non_null(strstr(err.msg, strerror(codes[k])));
		assert_non_null(strstr(err.msg, "log cache full"));
		cdp_cache_seg_free(s);
		cdp_cache_stats(c, &st2);
		assert_int_equal(st2.segments, st.segments);
		assert_int_equal(st2.spilled_bytes, st.spilled_bytes);
		assert_int_equal(st2.refused, 1);
		assert_walk(c, 0, 1, 10);
		/* The file system recovers: the next push goes where 11 would have. */
		push_ok(c, 11);
		assert_walk(c, 0, 1, 11);
		cdp_cache_free(c);
		cdp_io_shim_free(sh);
	}
}

/* A spilled entry that cannot be read back: its holder and drop_all say so. */
static void test_spill_read_error_shows_as_data_null(void **state)
{
	struct fx *f = *state;
	struct gate g;
	struct cdp_cache *c;
	struct cdp_cache_seg *s;
	struct seen v = { .next = 1 };
	struct cdp_cache_stats st;
	uint64_t spilled;

	gate_init(&g);
	c = spill_cache(f, 3000, 1 << 16, &g.ops);
	for (uint64_t i = 1; i <= 8; i++)
		push_ok(c, i);
	cdp_cache_stats(c, &st);
	spilled = st.spilled_segments;
	assert_true(spilled > 0);
	g.fail = -EIO;
	s = cdp_cache_next(c, 7, 0);	/* entry 8, spilled */
	assert_non_null(s);
	assert_int_equal(s->first_seq, 8);
	assert_null(s->data);
	assert_int_equal(s->read_err, -EIO);
	cdp_cache_put(s);
	s = cdp_cache_next(c, 0, 0);	/* entry 1, in memory: unaffected */
	assert_bytes(s, 1, len_of(1));
	cdp_cache_put(s);
	cdp_cache_drop_all(c, collect, &v);
	assert_int_equal(v.n, 8);
	assert_int_equal(v.lost, spilled);
	assert_int_equal(v.read_err, -EIO);
	cdp_cache_free(c);
	gate_release(&g);
}

struct reader {
	struct cdp_cache *c;
	struct cdp_cache_seg *got;
};

static void *read_first(void *arg)
{
	struct reader *r = arg;

	r->got = cdp_cache_next(r->c, 0, WAIT_NS);
	return NULL;
}

/* A read of spilled bytes in progress: an ack and pushes cannot overwrite them. */
static void test_read_in_progress_pins_ring_space(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct gate g;
	struct reader r = { 0 };
	struct cdp_cache_seg *s;
	uint64_t pos;
	pthread_t t;

	gate_init(&g);
	r.c = spill_cache(f, 1, 4096, &g.ops);	/* everything spills */
	assert_int_equal(cdp_cache_push(r.c, mkseg_len(1, 3000), &err), 0);	/* [0, 3000) */
	g.hold = true;
	assert_int_equal(pthread_create(&t, NULL, read_first, &r), 0);
	pthread_mutex_lock(&g.mu);
	while (!g.holding)
		pthread_cond_wait(&g.cond, &g.mu);
	pthread_mutex_unlock(&g.mu);

	/* Acked while being read: its 3000 bytes stay taken until the read ends. */
	assert_int_equal(cdp_cache_ack(r.c, 1, NULL), 1);
	s = mkseg_len(2, 2000);
	assert_err(&err, cdp_cache_push(r.c, s, &err), -ENOSPC, "log cache full");
	cdp_cache_seg_free(s);
	assert_int_equal(cdp_cache_push(r.c, mkseg_len(3, 1000), &err), 0);	/* [3000, 4000) */

	pthread_mutex_lock(&g.mu);
	g.release = true;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.mu);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_non_null(r.got);
	assert_bytes(r.got, 1, 3000);
	cdp_cache_put(r.got);

	/* Unpinned: 2000 bytes fit now, across the ring's end. */
	assert_int_equal(cdp_cache_push(r.c, mkseg_len(2, 2000), &err), 0);
	s = cdp_cache_next(r.c, 0, 0);
	assert_bytes(s, 3, 1000);
	pos = s->pos;
	cdp_cache_put(s);
	s = cdp_cache_next(r.c, pos, 0);
	assert_bytes(s, 2, 2000);
	cdp_cache_put(s);
	cdp_cache_free(r.c);
	gate_release(&g);
}

static void test_spill_open_errors_name_the_file(void **state)
{
	struct fx *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_cache *c = cdp_cache_new(1 << 20);

	assert_err(&err, cdp_cache_spill_open(c, f->dir, 1 << 20, NULL, &err), -EISDIR, f->dir);
	assert_err(&err, cdp_cache_spill_open(c, "/dev/null", 1 << 20, NULL, &err), -EINVAL,
		   "/dev/null: not a regular file");
	assert_err(&err, cdp_cache_spill_open(c, f->spill, 0, NULL, &err), -EINVAL, f->spill);
	/* An old file's contents are thrown away. */
	{
		FILE *old = fopen(f->spill, "w");

		assert_non_null(old);
		fputs("stale", old);
		fclose(old);
	}
	assert_int_equal(cdp_cache_spill_open(c, f->spill, 1 << 20, NULL, &err), 0);
	assert_int_equal(file_size(f->spill), 0);
	cdp_cache_free(c);
}

/* ---- threads: the link reads and sends, acks come back, the sealer pushes -- */

struct conc {
	struct cdp_cache *c;
	uint64_t n;
	_Atomic uint64_t sent;	/* the reader's newest entry */
	_Atomic bool failed;
};

static void *conc_reader(void *arg)
{
	struct conc *x = arg;
	uint64_t pos = 0, want = 1;
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;

	while (want <= x->n && cdp_clock_mono_ns(cdp_clock_real()) < until) {
		struct cdp_cache_seg *s = cdp_cache_next(x->c, pos, 10 * CDP_NS_PER_MS);
		uint8_t *exp;
		bool ok;

		if (!s)
			continue;
		exp = cdp_xmalloc(len_of(want));
		fill(exp, len_of(want), want);
		ok = s->data && s->first_seq == want && s->len == len_of(want) &&
		     !memcmp(s->data, exp, s->len);
		free(exp);
		pos = s->pos;
		cdp_cache_put(s);
		if (!ok) {
			atomic_store(&x->failed, true);
			break;
		}
		atomic_store(&x->sent, want);
		want++;
	}
	if (want <= x->n)
		atomic_store(&x->failed, true);
	return NULL;
}

static void *conc_acker(void *arg)
{
	struct conc *x = arg;
	uint64_t acked = 0;
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;

	while (acked < x->n && !atomic_load(&x->failed) &&
	       cdp_clock_mono_ns(cdp_clock_real()) < until) {
		uint64_t sent = atomic_load(&x->sent);

		if (sent <= acked) {
			sched_yield();
			continue;
		}
		/* Acks lag: sometimes by seq, sometimes by digest, a few at a time. */
		acked = sent;
		if (acked % 3) {
			cdp_cache_ack(x->c, acked, NULL);
		} else {
			uint8_t d[32];

			digest_of(acked, d);
			cdp_cache_ack(x->c, 0, d);
		}
	}
	return NULL;
}

static void test_reader_acker_and_pusher_at_once(void **state)
{
	struct fx *f = *state;
	struct conc x = { .n = (uint64_t)cdp_test_rounds(3000, 1000, 20000) };
	int64_t until = cdp_clock_mono_ns(cdp_clock_real()) + WAIT_NS;
	struct cdp_cache_stats st;
	pthread_t rt, at;
	uint64_t refused = 0;

	x.c = spill_cache(f, 8000, 12000, NULL);
	assert_int_equal(pthread_create(&rt, NULL, conc_reader, &x), 0);
	assert_int_equal(pthread_create(&at, NULL, conc_acker, &x), 0);
	for (uint64_t i = 1; i <= x.n && !atomic_load(&x.failed);) {
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_cache_seg *s = mkseg(i);

		if (cdp_cache_push(x.c, s, &err) == 0) {
			i++;
			continue;
		}
		/* Full: wait for acks (a bounded poll), retry the same entry. */
		cdp_cache_seg_free(s);
		refused++;
		assert_true(cdp_clock_mono_ns(cdp_clock_real()) < until);
		sched_yield();
	}
	assert_int_equal(pthread_join(rt, NULL), 0);
	assert_int_equal(pthread_join(at, NULL), 0);
	assert_false(atomic_load(&x.failed));
	cdp_cache_stats(x.c, &st);
	assert_int_equal(st.segments, 0);
	assert_int_equal(st.pushed, x.n);
	assert_int_equal(st.refused, refused);
	assert_true(file_size(f->spill) <= 12000);
	cdp_cache_free(x.c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_memory_only_refuses_past_its_bound),
		cmocka_unit_test(test_spare_buffers_are_recycled),
		cmocka_unit_test_setup_teardown(test_spill_keeps_order_and_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_acks_free_memory_and_ring_space, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_ring_wraps_around, setup, teardown),
		cmocka_unit_test_setup_teardown(test_drop_all_reads_every_entry_back, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_resume_by_digest_into_the_spill, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_spill_write_error_refuses_the_push, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_spill_read_error_shows_as_data_null, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_read_in_progress_pins_ring_space, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_spill_open_errors_name_the_file, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reader_acker_and_pusher_at_once, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
