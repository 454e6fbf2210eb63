/*
 * tools/bench/benchlib - helpers shared by the benchmarks that drive the
 * journal store (journal, ingest).
 *
 * Owns nothing global but bench_prog (the prefix of die()'s messages, set
 * once by main). Segments are encoded before any timing into one 4 KiB-
 * aligned arena; submit_all() keeps a window of appends in flight per plan
 * and times from the first submit to the last ack. Threads: submit_all()
 * starts and joins its own; everything else runs on the caller's thread.
 * Errors: these are benchmarks, so every failure is fatal (die(): message on
 * stderr, exit 1, atexit() handlers run).
 */
#ifndef CDP_TOOLS_BENCH_BENCHLIB_H
#define CDP_TOOLS_BENCH_BENCHLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "storage/journal.h"
#include "storage/segment.h"

#define MiB (UINT64_C(1) << 20)
#define MAX_RUNS 64			/* most values median() takes */
#define REC_LEN (64u << 10)		/* WRITE payload of the ingest records */
#define T0 (INT64_C(1700000000) * 1000000000)	/* time of a generator's first record */

/* "journal bench": what die() and rmtree()'s warnings start with. */
extern const char *bench_prog;

int64_t now_ns(void);	/* CLOCK_MONOTONIC */
/* Removes @path and everything under it (warns about what it cannot remove). */
void rmtree(const char *path);

/* Is measurement @name in the comma-separated @only list (NULL: all are)? */
bool bench_selected(const char *only, const char *name);
void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...);
/* To stderr, flushed. */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- payload sources ---------------------------------------------------- */

/* Random bytes (text false) or a corpus (borrowed) repeated from @pos. */
struct src {
	bool text;
	uint64_t rng;
	const uint8_t *corpus;
	size_t corpus_len;
	size_t pos;
};

uint64_t xorshift(uint64_t *s);
void src_fill(struct src *s, uint8_t *p, size_t n);

/* ---- encoding segments ahead of timing ---------------------------------- */

/* One sealed segment: @p points into an arena (borrowed). */
struct seg {
	const uint8_t *p;
	size_t len;
	uint64_t last_seq;
	uint32_t raw_len;
};

/* Segments laid back to back in one 4 KiB-aligned allocation (the peer writes from it). */
struct arena {
	uint8_t *base;	/* caller frees with free() */
	size_t cap, len;
};

void arena_init(struct arena *a, size_t cap);
/* Pads to the next 4 KiB boundary with zeros. */
void arena_align(struct arena *a);

/* A writer of one plan (epoch 1, first seq 1, records from T0 1 us apart). */
struct gen {
	struct cdp_seg_enc *enc;
	uint64_t plan;
	uint64_t next_seq;
	int64_t t;
	uint64_t vol_size;
	uint64_t off;		/* next sequential write offset */
	int level;
	struct src src;
	struct cdp_buf out;
	uint8_t *scratch;
	/* the last WRITE, for a spot check of restored images */
	uint64_t last_off;
	uint8_t last_head[512];
};

/* @level: zstd level of the seal, 0 = stored raw. Copies *@src. */
void gen_init(struct gen *g, uint64_t plan, uint64_t vol_size, int level, const struct src *src);
void gen_release(struct gen *g);
/* Adds one record; a WRITE's payload comes from the source (@payload ignored). */
void gen_rec(struct gen *g, uint16_t kind, uint16_t flags, uint64_t off, uint32_t len,
	     const void *payload);
/* Largest WRITE payload that still fits the open segment, at most @max; 0 if none. */
uint32_t gen_fit(struct gen *g, uint64_t max);
/* Seals the open segment (a point) into @a and describes it in @s. */
void gen_seal(struct gen *g, struct arena *a, struct seg *s);
/* One segment of sequential REC_LEN writes, as full as the raw limit allows. */
void gen_ingest_seg(struct gen *g, struct arena *a, struct seg *s);

/* ---- submitting --------------------------------------------------------- */

/*
 * Appends segs[p][0..n[p]) to plans[p], one thread per plan, each keeping at
 * most @window appends in flight; returns the seconds from the start of the
 * first submit to the last ack and the acknowledged bytes in *@acked.
 */
double submit_all(struct cdp_journal *j, const uint64_t *plans, const struct seg *const *segs,
		  const unsigned *n, unsigned nplans, unsigned window, uint64_t *acked);

/* ---- journal set-up ----------------------------------------------------- */

/* Written spare extent files in @jdir/extents/spare (*.ext). */
unsigned count_spares(const char *jdir);
struct cdp_journal *jopen(const char *jdir, uint64_t extent_bytes, unsigned spares,
			  bool verifier);
/*
 * Opens a journal whose spare pool holds @spares written extent files: a
 * first open lets the prep thread write them (polled, with a deadline), then
 * the journal is reopened without a pool target, so nothing refills it while
 * a measurement runs.
 */
struct cdp_journal *jopen_ready(const char *jdir, uint64_t extent_bytes, unsigned spares,
				bool verifier);
/* Plan @id ("bench<id>", epoch 1) with one volume "vol<id>" of @vol_size bytes. */
void plan_create(struct cdp_journal *j, uint64_t id, uint64_t vol_size);

/* ---- results ------------------------------------------------------------ */

int cmp_double(const void *a, const void *b);	/* for qsort() of doubles */
double median(const double *v, unsigned n);	/* 0 for n = 0 */
void minmax(const double *v, unsigned n, double *lo, double *hi);

#endif
