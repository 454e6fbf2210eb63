/*
 * tools/bench/benchlib - what the benchmarks that drive the journal share:
 * incompressible or text segments encoded ahead of timing (struct gen into
 * struct arena), a windowed submitter (submit_all), a journal opened with
 * its spare extent files already written (jopen_ready), medians, and the
 * small helpers (die, note, now_ns, rmtree).
 *
 * Moved out of tools/bench/journal.c unchanged (journal.c's figures do not
 * move); the names stay short and unprefixed because only bench programs
 * link this file. die() and note() print to stderr; die() exits 1, so a
 * program's atexit() handlers clean up.
 */
#include "tools/bench/benchlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"

const char *bench_prog = "bench";

int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (remove(path))
		fprintf(stderr, "%s: warning: remove %s: %s\n", bench_prog, path, strerror(errno));
	return 0;
}

void rmtree(const char *path)
{
	char parent[4096];
	char *slash;
	int fd;

	nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	/*
	 * Settle the file system before the next timed part: with the "discard"
	 * mount option (the root fs of these VMs) freeing gigabytes issues
	 * discards at the next journal commit, which would otherwise land in
	 * whatever is measured next. syncfs() makes that commit happen now.
	 */
	snprintf(parent, sizeof(parent), "%s", path);
	slash = strrchr(parent, '/');
	if (slash && slash != parent)
		*slash = '\0';
	fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		syncfs(fd);
		close(fd);
	}
}

bool bench_selected(const char *only, const char *name)
{
	size_t n = strlen(name);

	if (!only)
		return true;
	for (const char *p = only; *p;) {
		size_t k = strcspn(p, ",");

		if (k == n && !strncmp(p, name, n))
			return true;
		p += k + (p[k] == ',');
	}
	return false;
}

void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", bench_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fflush(stderr);
}

uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

void src_fill(struct src *s, uint8_t *p, size_t n)
{
	if (!s->text) {
		for (size_t i = 0; i < n; i += 8) {
			uint64_t v = xorshift(&s->rng);

			memcpy(p + i, &v, CDP_MIN((size_t)8, n - i));
		}
		return;
	}
	while (n) {
		size_t k = CDP_MIN(n, s->corpus_len - s->pos);

		memcpy(p, s->corpus + s->pos, k);
		p += k;
		n -= k;
		s->pos += k;
		if (s->pos == s->corpus_len)
			s->pos = 0;
	}
}

void arena_init(struct arena *a, size_t cap)
{
	a->cap = CDP_ALIGN_UP(cap, (size_t)4096) + 2 * 4096;
	a->base = cdp_xaligned_alloc(4096, a->cap);
	a->len = 0;
}

void arena_align(struct arena *a)
{
	size_t n = CDP_ALIGN_UP(a->len, (size_t)4096);

	memset(a->base + a->len, 0, n - a->len);
	a->len = n;
}

void gen_init(struct gen *g, uint64_t plan, uint64_t vol_size, int level,
		     const struct src *src)
{
	memset(g, 0, sizeof(*g));
	g->plan = plan;
	g->next_seq = 1;
	g->t = T0;
	g->vol_size = vol_size;
	g->level = level;
	g->src = *src;
	g->enc = cdp_seg_enc_new(plan, 1, 1, NULL);
	g->scratch = cdp_xmalloc(CDP_SEG_MAX_RAW);
}

void gen_release(struct gen *g)
{
	cdp_seg_enc_free(g->enc);
	cdp_buf_release(&g->out);
	free(g->scratch);
}

void gen_rec(struct gen *g, uint16_t kind, uint16_t flags, uint64_t off, uint32_t len,
		    const void *payload)
{
	struct cdp_record r = { 0 };
	struct cdp_err err = CDP_ERR_INIT;

	r.seq = g->next_seq;
	r.kind = kind;
	r.flags = flags;
	r.offset = off;
	r.length = len;
	r.time_ns = g->t;
	r.payload = payload;
	if (kind == CDP_REC_WRITE) {
		src_fill(&g->src, g->scratch, len);
		r.payload = g->scratch;
		g->last_off = off;
		memcpy(g->last_head, g->scratch, CDP_MIN((size_t)len, sizeof(g->last_head)));
	}
	if (cdp_seg_enc_add(g->enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err))
		die("encode seq %" PRIu64 ": %s", r.seq, err.msg);
	g->next_seq++;
	g->t += 1000;
}

/* Largest WRITE payload that still fits the open segment, at most @max; 0 if none. */
uint32_t gen_fit(struct gen *g, uint64_t max)
{
	size_t room = CDP_SEG_MAX_RAW - cdp_seg_enc_raw_len(g->enc);

	if (room < CDP_REC_HDR_LEN + CDP_SECTOR)
		return 0;
	return (uint32_t)CDP_MIN((uint64_t)CDP_ALIGN_DOWN(room - CDP_REC_HDR_LEN,
							  (size_t)CDP_SECTOR), max);
}

/* Seals the open segment (a point) into @a and describes it in @s. */
void gen_seal(struct gen *g, struct arena *a, struct seg *s)
{
	struct cdp_seg_seal_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;

	s->raw_len = (uint32_t)cdp_seg_enc_raw_len(g->enc);
	o.flags = CDP_SEG_F_POINT_END;
	o.compression = g->level ? CDP_COMP_ZSTD : CDP_COMP_NONE;
	o.level = g->level;
	cdp_buf_reset(&g->out);
	if (cdp_seg_enc_seal(g->enc, &o, &g->out, NULL, &err))
		die("seal: %s", err.msg);
	if (a->len + g->out.len > a->cap)
		die("internal: arena too small (%zu + %zu > %zu)", a->len, g->out.len, a->cap);
	memcpy(a->base + a->len, g->out.data, g->out.len);
	s->p = a->base + a->len;
	s->len = g->out.len;
	s->last_seq = g->next_seq - 1;
	a->len += g->out.len;
}

/* One segment of sequential 64 KiB writes, as full as the raw limit allows. */
void gen_ingest_seg(struct gen *g, struct arena *a, struct seg *s)
{
	uint32_t len;

	while ((len = gen_fit(g, REC_LEN))) {
		len = (uint32_t)CDP_MIN((uint64_t)len, g->vol_size - g->off);
		gen_rec(g, CDP_REC_WRITE, 0, g->off, len, NULL);
		g->off = (g->off + len) % g->vol_size;
	}
	gen_seal(g, a, s);
}

/* ---- submitting ---------------------------------------------------------- */

struct submitter {
	struct cdp_journal *j;
	uint64_t plan;
	const struct seg *segs;
	unsigned n;
	unsigned window;
	pthread_barrier_t *start;
	struct cdp_journal_append *a;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned inflight;	/* guarded by mu */
	int rc;			/* guarded by mu: first failure */
	char msg[CDP_ERR_MSG_MAX];
	uint64_t acked;		/* guarded by mu: bytes */
};

static void on_done(struct cdp_journal_append *a)
{
	struct submitter *s = a->arg;

	pthread_mutex_lock(&s->mu);
	if (a->rc && !s->rc) {
		s->rc = a->rc;
		snprintf(s->msg, sizeof(s->msg), "%s", a->err.msg);
	} else if (!a->rc) {
		s->acked += a->len;
	}
	s->inflight--;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->mu);
}

static void *submit_main(void *arg)
{
	struct submitter *s = arg;

	if (s->start)
		pthread_barrier_wait(s->start);
	for (unsigned i = 0; i < s->n; i++) {
		struct cdp_journal_append *a = &s->a[i];
		int rc;

		pthread_mutex_lock(&s->mu);
		while (s->inflight >= s->window && !s->rc)
			pthread_cond_wait(&s->cond, &s->mu);
		if (s->rc) {
			pthread_mutex_unlock(&s->mu);
			break;
		}
		s->inflight++;
		pthread_mutex_unlock(&s->mu);
		memset(a, 0, sizeof(*a));
		a->plan_id = s->plan;
		a->seg = s->segs[i].p;
		a->len = s->segs[i].len;
		a->done = on_done;
		a->arg = s;
		rc = cdp_journal_submit(s->j, a);
		if (rc) {
			pthread_mutex_lock(&s->mu);
			s->inflight--;
			if (!s->rc) {
				s->rc = rc;
				snprintf(s->msg, sizeof(s->msg), "%s", a->err.msg);
			}
			pthread_mutex_unlock(&s->mu);
			break;
		}
	}
	pthread_mutex_lock(&s->mu);
	while (s->inflight)
		pthread_cond_wait(&s->cond, &s->mu);
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/*
 * Appends segs[p][0..n[p]) to plans plan0 + p, one thread per plan, and
 * returns the seconds from the start of the first submit to the last ack.
 */
double submit_all(struct cdp_journal *j, const uint64_t *plans,
			 const struct seg *const *segs, const unsigned *n, unsigned nplans,
			 unsigned window, uint64_t *acked)
{
	struct submitter *s = cdp_xcalloc(nplans, sizeof(*s));
	pthread_t *t = cdp_xcalloc(nplans, sizeof(*t));
	pthread_barrier_t start;
	int64_t t0, t1;

	pthread_barrier_init(&start, NULL, nplans + 1);
	for (unsigned p = 0; p < nplans; p++) {
		memset(&s[p], 0, sizeof(s[p]));
		s[p].j = j;
		s[p].plan = plans[p];
		s[p].segs = segs[p];
		s[p].n = n[p];
		s[p].window = window;
		s[p].start = &start;
		s[p].a = cdp_xcalloc(n[p] ? n[p] : 1, sizeof(*s[p].a));
		pthread_mutex_init(&s[p].mu, NULL);
		pthread_cond_init(&s[p].cond, NULL);
		if (cdp_thread_start(&t[p], "submit", submit_main, &s[p]))
			die("cannot start a submitter thread");
	}
	pthread_barrier_wait(&start);
	t0 = now_ns();
	for (unsigned p = 0; p < nplans; p++)
		pthread_join(t[p], NULL);
	t1 = now_ns();
	*acked = 0;
	for (unsigned p = 0; p < nplans; p++) {
		if (s[p].rc)
			die("append to plan %" PRIu64 " failed: %s (%d)", plans[p], s[p].msg,
			    s[p].rc);
		*acked += s[p].acked;
		free(s[p].a);
		pthread_mutex_destroy(&s[p].mu);
		pthread_cond_destroy(&s[p].cond);
	}
	pthread_barrier_destroy(&start);
	free(s);
	free(t);
	return (double)(t1 - t0) / 1e9;
}

/* ---- journal set-up ------------------------------------------------------ */

unsigned count_spares(const char *jdir)
{
	char path[4200];
	struct dirent *e;
	unsigned n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/extents/spare", jdir);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);

		if (len > 4 && !strcmp(e->d_name + len - 4, ".ext"))
			n++;
	}
	closedir(d);
	return n;
}

struct cdp_journal *jopen(const char *jdir, uint64_t extent_bytes, unsigned spares,
				 bool verifier)
{
	struct cdp_journal_opts jo = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal *j;

	jo.extent_max_bytes = extent_bytes;
	jo.spare_extents = spares;
	jo.no_verifier = !verifier;
	j = cdp_journal_open(jdir, &jo, &err);
	if (!j)
		die("open journal %s: %s", jdir, err.msg);
	return j;
}

/*
 * Opens a journal whose spare pool holds @spares written extent files: a
 * first open lets the prep thread write them (polled, with a deadline), then
 * the journal is reopened without a pool target, so nothing refills it while
 * a measurement runs.
 */
struct cdp_journal *jopen_ready(const char *jdir, uint64_t extent_bytes, unsigned spares,
				       bool verifier)
{
	if (spares) {
		struct cdp_journal *j = jopen(jdir, extent_bytes, spares, false);
		int64_t deadline = now_ns() + (int64_t)(30 + 5 * spares) * 1000000000;
		struct timespec poll = { 0, 5 * 1000000 };

		while (count_spares(jdir) < spares) {
			if (now_ns() > deadline)
				die("journal %s: %u of %u spare extent files ready after the "
				    "deadline", jdir, count_spares(jdir), spares);
			nanosleep(&poll, NULL);
		}
		cdp_journal_close(j);
	}
	return jopen(jdir, extent_bytes, 0, verifier);
}

void plan_create(struct cdp_journal *j, uint64_t id, uint64_t vol_size)
{
	struct cdp_journal_plan p = { 0 };
	struct cdp_err err = CDP_ERR_INIT;

	p.plan_id = id;
	snprintf(p.name, sizeof(p.name), "bench%" PRIu64, id);
	p.epoch = 1;
	p.nvolumes = 1;
	p.volume_size[0] = vol_size;
	snprintf(p.volume_name[0], sizeof(p.volume_name[0]), "vol%" PRIu64, id);
	if (cdp_journal_plan_create(j, &p, NULL, 0, &err))
		die("create plan %" PRIu64 ": %s", id, err.msg);
}

int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double median(const double *v, unsigned n)
{
	double t[MAX_RUNS];

	if (!n)
		return 0;
	memcpy(t, v, n * sizeof(double));
	qsort(t, n, sizeof(double), cmp_double);
	return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

void minmax(const double *v, unsigned n, double *lo, double *hi)
{
	*lo = *hi = n ? v[0] : 0;
	for (unsigned i = 1; i < n; i++) {
		*lo = v[i] < *lo ? v[i] : *lo;
		*hi = v[i] > *hi ? v[i] : *hi;
	}
}
