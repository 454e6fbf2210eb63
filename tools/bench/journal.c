/*
 * tools/bench/journal - the journal store against the disk it runs on:
 * durable ingest, restore, fold and point lookups, each with its peer
 * measured in the same run (SPEC "Performance targets").
 *
 *	journal [--dir DIR] [--runs N] [--mib N] [--restore-mib N] [--tail-mib N]
 *		[--window N] [--extent-mib N] [--points N] [--lookups N]
 *		[--no-verifier] [--only inc1,inc4,txt1,txt4,restore,points]
 *		[--keep] [--smoke]
 *
 * Defaults: DIR /var/tmp (a real disk: O_DIRECT), 5 runs, 512 MiB per ingest
 * measurement, a 1 GiB restore volume with a 64 MiB tail, window 16 (64 MiB in
 * flight per plan, a quarter of the agent's default log cache), extent
 * files of 256 MiB (the journal's default), 86,400 points, 100,000 lookups,
 * the background verifier on (as in production). Like the daemons
 * (TOOLCHAIN.md) the program sets mallopt(M_MMAP_THRESHOLD 64 MiB,
 * M_TRIM_THRESHOLD 256 MiB) first.
 *
 * Ingest. Segments of ~4 MiB raw body (WRITE records of 64 KiB) are encoded
 * before any timing, incompressible (random bytes: the encoder stores them
 * raw) and compressible (text files from /usr/share, zstd level 1). One
 * submitter thread per plan (1 or 4 plans) keeps up to --window segments in
 * flight with cdp_journal_submit(); the figure is MB/s of acknowledged
 * segment bytes (as stored: compressed ones count compressed), from the
 * start of the first submit to the last ack. Extent files are ready before
 * timing: the journal is first opened with spare_extents = the files the
 * measurement needs, the spare directory is polled (with a deadline) until
 * the prep thread has written them all, the journal is closed and opened
 * again with spare_extents = 0, so the timed run takes already-written files
 * and no background refill competes with it (in steady state folding
 * recycles freed files into the pool, so that refill is a start-up cost).
 *
 * Peer: the disk itself. After each journal measurement a minimal writer
 * puts the same bytes into an already-written file with O_DIRECT pwrite(),
 * one fdatasync() per group of the size the journal's group commits had on
 * average in that measurement (cdp_journal_commit_stats()).
 *
 * Restore: a plan with one volume (--restore-mib, default 1 GiB) filled by a
 * full sync of random data, folded into the base image (that fold is the
 * fold figure: MB/s of segment bytes folded, caches dropped first), then a
 * tail of segments (--tail-mib) at random offsets; cdp_journal_restore_to_dir()
 * of the newest point is timed against `dd if=IMG of=OUT bs=1M oflag=direct
 * conv=fdatasync` of the restored image, both after dropping the page cache
 * (root only; otherwise noted and not dropped). dd is also the fold's peer.
 *
 * Point lookups: a plan with --points small segments, each closing a point;
 * cdp_journal_point_find() at uniformly random times, p50 and p99.
 *
 * Each figure is the median over --runs; a ratio is the median of the
 * per-run ratios (journal and peer run back to back, so drift cancels).
 * Human table on stderr; the last stdout line is one JSON object:
 * {"bench","metric","value","unit","peer","peer_value","ratio","more":[...]}.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "storage/journal.h"
#include "storage/segment.h"
#include "tools/bench/benchlib.h"

#define MAX_PLANS 4
#define INGEST_VOL (1ull << 30)		/* volume size of the ingest plans */
#define PLAN_BASE 1			/* ingest plans 1..4 */
#define PLAN_RESTORE 100
#define PLAN_POINTS 200

struct opts {
	const char *dir;
	unsigned runs;
	uint64_t mib;
	uint64_t restore_mib;
	uint64_t tail_mib;
	uint64_t extent_mib;
	unsigned window;
	unsigned points;
	unsigned lookups;
	bool verifier;
	const char *only;	/* comma-separated measurements, NULL = all */
	bool keep;
	bool smoke;
};

static char g_base[4096];	/* scratch directory of this run, removed at exit */
static bool g_keep;


static void cleanup(void)
{
	if (g_base[0] && !g_keep)
		rmtree(g_base);
}


/* ---- payload sources ----------------------------------------------------- */


/* The text corpus: regular text files under /usr/share, up to a cap. */
static struct cdp_buf g_corpus;
static size_t g_corpus_cap;
static unsigned g_corpus_files;

static bool skip_name(const char *path)
{
	static const char *const ext[] = { ".gz", ".xz", ".bz2", ".zst", ".png", ".jpg", ".gif",
					   ".ico", ".mo", ".ttf", ".otf", ".woff", ".pdf", ".zip",
					   ".jar", ".so", ".svgz", ".pf2", ".bin", ".db" };
	size_t n = strlen(path);

	for (size_t i = 0; i < CDP_ARRAY_SIZE(ext); i++) {
		size_t e = strlen(ext[i]);

		if (n > e && !strcmp(path + n - e, ext[i]))
			return true;
	}
	return false;
}

static bool looks_text(const uint8_t *p, size_t n)
{
	size_t odd = 0;

	n = CDP_MIN(n, (size_t)4096);
	for (size_t i = 0; i < n; i++) {
		if (!p[i])
			return false;
		if (p[i] < 0x09 || (p[i] > 0x0d && p[i] < 0x20))
			odd++;
	}
	return odd * 50 < n;
}

static int corpus_cb(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	uint8_t *data;
	long n;
	int fd;

	if (g_corpus.len >= g_corpus_cap)
		return 1;	/* stops the walk */
	if (flag != FTW_F || !S_ISREG(st->st_mode) || st->st_size < 1024 ||
	    st->st_size > (off_t)(2 * MiB) || skip_name(path))
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 0;
	data = cdp_xmalloc((size_t)st->st_size);
	n = cdp_read_full(fd, data, (size_t)st->st_size);
	close(fd);
	if (n > 0 && looks_text(data, (size_t)n)) {
		cdp_buf_append(&g_corpus, data, CDP_MIN((size_t)n, g_corpus_cap - g_corpus.len));
		g_corpus_files++;
	}
	free(data);
	return 0;
}

/* Words for a synthetic text when /usr/share has too little (a minimal system). */
static void corpus_synthesize(size_t cap)
{
	static const char *const words[] = {
		"the", "journal", "segment", "record", "volume", "point", "restore", "fold",
		"write", "extent", "file", "index", "commit", "group", "plan", "standby",
		"agent", "horizon", "base", "image", "sync", "of", "and", "a", "to", "is",
		"in", "for", "with", "on", "that", "by", "data", "block", "offset", "length",
	};
	uint64_t rng = 0x9E3779B97F4A7C15ull;

	while (g_corpus.len < cap) {
		const char *w = words[xorshift(&rng) % CDP_ARRAY_SIZE(words)];

		bool stop = xorshift(&rng) % 11 == 0;

		cdp_buf_append(&g_corpus, w, strlen(w));
		cdp_buf_append(&g_corpus, stop ? ".\n" : " ", stop ? 2 : 1);
	}
}

static void corpus_load(size_t cap)
{
	g_corpus_cap = cap;
	nftw("/usr/share", corpus_cb, 32, FTW_PHYS);
	if (g_corpus.len < 2 * (size_t)CDP_SEG_MAX_RAW) {
		note("note: only %zu bytes of text under /usr/share; adding synthetic text\n",
		     g_corpus.len);
		corpus_synthesize(cap);
	}
}

/* ---- encoding segments ahead of timing ----------------------------------- */


/* An ingest data set: plans 1..4; plan 1 has @n segments, plans 2..4 n/4 each. */
struct dataset {
	const char *name;
	struct arena a;
	struct seg *segs[MAX_PLANS];
	unsigned nsegs[MAX_PLANS];
	uint64_t raw_bytes;	/* raw body bytes of plan 1's segments */
	uint64_t wire_bytes;	/* their stored bytes */
};

static void dataset_build(struct dataset *ds, const char *name, unsigned n, bool text)
{
	struct src src = { 0 };

	ds->name = name;
	src.text = text;
	src.rng = 0x1234567890ABCDEFull;
	src.corpus = g_corpus.data;
	src.corpus_len = g_corpus.len;
	arena_init(&ds->a, (size_t)(n + 3 * (n / 4)) * (CDP_SEG_HDR_LEN + CDP_SEG_MAX_RAW) +
		   MAX_PLANS * 4096);
	/*
	 * Layout [plan 2][plan 3][plan 4][plan 1]: the 4-plan measurement's
	 * bytes (n/4 of each) and the 1-plan one's are each one contiguous span.
	 */
	for (unsigned k = 1; k <= MAX_PLANS; k++) {
		unsigned pi = k % MAX_PLANS;	/* 1, 2, 3, then 0 (plan 1) */
		unsigned cnt = pi ? n / 4 : n;
		struct gen g;

		gen_init(&g, PLAN_BASE + pi, INGEST_VOL, 1, &src);
		arena_align(&ds->a);
		ds->segs[pi] = cdp_xcalloc(cnt, sizeof(struct seg));
		ds->nsegs[pi] = cnt;
		for (unsigned i = 0; i < cnt; i++) {
			gen_ingest_seg(&g, &ds->a, &ds->segs[pi][i]);
			if (!pi) {
				ds->raw_bytes += ds->segs[pi][i].raw_len;
				ds->wire_bytes += ds->segs[pi][i].len;
			}
		}
		src = g.src;	/* the next plan continues the corpus / random stream */
		gen_release(&g);
	}
}

/* The restore plan: a full sync filling the volume, then a tail of random writes. */
struct restore_set {
	struct arena a;
	struct seg *segs;
	unsigned nsync, ntail;
	uint64_t sync_bytes;	/* stored bytes of the sync segments (what the fold reads) */
	uint64_t vol_size;
	uint64_t check_off;	/* the last tail write, for a spot check */
	uint8_t check_head[512];
};

static void restore_build(struct restore_set *rs, uint64_t vol_size, uint64_t tail_bytes)
{
	struct src src = { .rng = 0xC0FFEE1234567ull };
	struct cdp_sync_info si = { 1, CDP_SYNC_FULL };
	uint8_t sip[CDP_SYNC_INFO_LEN];
	unsigned cap = (unsigned)((vol_size + tail_bytes) / (CDP_SEG_MAX_RAW - 4096) + 4);
	uint64_t rng = 0xABCDEF;
	struct gen g;
	bool ended = false;
	unsigned n = 0;
	uint32_t len;

	rs->vol_size = vol_size;
	arena_init(&rs->a, (size_t)cap * (CDP_SEG_HDR_LEN + CDP_SEG_MAX_RAW));
	rs->segs = cdp_xcalloc(cap, sizeof(struct seg));
	gen_init(&g, PLAN_RESTORE, vol_size, 1, &src);
	cdp_sync_info_encode(&si, sip);
	gen_rec(&g, CDP_REC_SYNC_BEGIN, 0, 0, CDP_SYNC_INFO_LEN, sip);
	while (g.off < vol_size) {
		while (g.off < vol_size && (len = gen_fit(&g, REC_LEN))) {
			len = (uint32_t)CDP_MIN((uint64_t)len, vol_size - g.off);
			gen_rec(&g, CDP_REC_WRITE, CDP_REC_F_RESYNC, g.off, len, NULL);
			g.off += len;
		}
		if (g.off >= vol_size && cdp_seg_enc_raw_len(g.enc) +
		    cdp_seg_record_size(CDP_SYNC_INFO_LEN) <= CDP_SEG_MAX_RAW) {
			gen_rec(&g, CDP_REC_SYNC_END, 0, 0, CDP_SYNC_INFO_LEN, sip);
			ended = true;
		}
		gen_seal(&g, &rs->a, &rs->segs[n]);
		rs->sync_bytes += rs->segs[n++].len;
	}
	if (!ended) {
		/* SYNC_END did not fit the last data segment: a segment of its own. */
		gen_rec(&g, CDP_REC_SYNC_END, 0, 0, CDP_SYNC_INFO_LEN, sip);
		gen_seal(&g, &rs->a, &rs->segs[n]);
		rs->sync_bytes += rs->segs[n++].len;
	}
	rs->nsync = n;
	for (uint64_t done = 0; done < tail_bytes;) {
		while ((len = gen_fit(&g, REC_LEN)) == REC_LEN) {
			uint64_t off = (xorshift(&rng) % (vol_size / REC_LEN)) * REC_LEN;

			gen_rec(&g, CDP_REC_WRITE, 0, off, len, NULL);
			done += len;
		}
		gen_seal(&g, &rs->a, &rs->segs[n++]);
		if (n >= cap)
			die("internal: restore set capacity");
	}
	rs->ntail = n - rs->nsync;
	rs->check_off = g.last_off;
	memcpy(rs->check_head, g.last_head, sizeof(rs->check_head));
	gen_release(&g);
}



static bool g_can_drop = true;

static void drop_caches(void)
{
	int fd;

	sync();
	if (!g_can_drop)
		return;
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "3\n", 2) != 2) {
		note("note: cannot drop the page cache (%s); restore, fold and dd run warm\n",
		     strerror(errno));
		g_can_drop = false;
	}
	if (fd >= 0)
		close(fd);
}

/* ---- results ------------------------------------------------------------- */

struct metric {
	const char *name;
	const char *unit;
	const char *peer;	/* NULL (left out): no peer */
	double v[MAX_RUNS], pv[MAX_RUNS];
	unsigned n;
};

enum {
	M_INC1, M_INC4, M_TXT1, M_TXT4,
	M_INC1_G, M_INC4_G, M_TXT1_G, M_TXT4_G,
	M_TXT1_RAW, M_TXT4_RAW,
	M_RESTORE, M_FOLD, M_PT50, M_PT99,
	M_COUNT
};

static const char PEER_DISK[] = "disk_odirect_pwrite_fdatasync";
static const char PEER_DD[] = "dd_oflag_direct_conv_fdatasync";

static struct metric g_m[M_COUNT] = {
	[M_INC1] = { .name = "ingest_incompressible_1plan", .unit = "MB/s", .peer = PEER_DISK },
	[M_INC4] = { .name = "ingest_incompressible_4plans", .unit = "MB/s", .peer = PEER_DISK },
	[M_TXT1] = { .name = "ingest_compressible_1plan", .unit = "MB/s", .peer = PEER_DISK },
	[M_TXT4] = { .name = "ingest_compressible_4plans", .unit = "MB/s", .peer = PEER_DISK },
	[M_INC1_G] = { .name = "ingest_incompressible_1plan_group", .unit = "MiB/step" },
	[M_INC4_G] = { .name = "ingest_incompressible_4plans_group", .unit = "MiB/step" },
	[M_TXT1_G] = { .name = "ingest_compressible_1plan_group", .unit = "MiB/step" },
	[M_TXT4_G] = { .name = "ingest_compressible_4plans_group", .unit = "MiB/step" },
	[M_TXT1_RAW] = { .name = "ingest_compressible_1plan_raw", .unit = "MB/s" },
	[M_TXT4_RAW] = { .name = "ingest_compressible_4plans_raw", .unit = "MB/s" },
	[M_RESTORE] = { .name = "restore_cold", .unit = "MB/s", .peer = PEER_DD },
	[M_FOLD] = { .name = "fold", .unit = "MB/s", .peer = PEER_DD },
	[M_PT50] = { .name = "point_find_p50", .unit = "us" },
	[M_PT99] = { .name = "point_find_p99", .unit = "us" },
};

static void record(int m, double v, double pv)
{
	struct metric *x = &g_m[m];

	if (x->n < MAX_RUNS) {
		x->v[x->n] = v;
		x->pv[x->n] = pv;
		x->n++;
	}
}


static double ratio_median(const struct metric *x, double *lo, double *hi)
{
	double r[MAX_RUNS];

	for (unsigned i = 0; i < x->n; i++)
		r[i] = x->pv[i] > 0 ? x->v[i] / x->pv[i] : 0;
	minmax(r, x->n, lo, hi);
	return median(r, x->n);
}

static void json_metric(const struct metric *x)
{
	double lo, hi;

	printf("\"bench\":\"journal\",\"metric\":\"%s\",\"value\":%.1f,\"unit\":\"%s\",",
	       x->name, median(x->v, x->n), x->unit);
	if (x->peer)
		printf("\"peer\":\"%s\",\"peer_value\":%.1f,\"ratio\":%.3f", x->peer,
		       median(x->pv, x->n), ratio_median(x, &lo, &hi));
	else
		printf("\"peer\":null,\"peer_value\":null,\"ratio\":null");
}

static void report(void)
{
	int head = M_INC1;

	note("\n%-38s %10s %10s %-10s %7s %s\n", "metric", "value", "peer", "unit", "ratio",
	     "(median of runs; ratio min-max)");
	for (int m = 0; m < M_COUNT; m++) {
		const struct metric *x = &g_m[m];
		double lo, hi;

		if (!x->n)
			continue;
		if (x->peer) {
			double r = ratio_median(x, &lo, &hi);

			note("%-38s %10.1f %10.1f %-10s %7.3f %.3f-%.3f\n", x->name,
			     median(x->v, x->n), median(x->pv, x->n), x->unit, r, lo, hi);
		} else {
			minmax(x->v, x->n, &lo, &hi);
			note("%-38s %10.1f %10s %-10s %7s %.1f-%.1f\n", x->name,
			     median(x->v, x->n), "-", x->unit, "-", lo, hi);
		}
	}
	fflush(stderr);
	/* The headline: incompressible ingest, 1 plan (or the first figure --only kept). */
	while (head < M_COUNT - 1 && !g_m[head].n)
		head++;
	printf("{");
	json_metric(&g_m[head]);
	printf(",\"more\":[");
	for (int m = 0, k = 0; m < M_COUNT; m++) {
		if (!g_m[m].n || m == head)
			continue;
		printf("%s{", k++ ? "," : "");
		json_metric(&g_m[m]);
		printf("}");
	}
	printf("]}\n");
	fflush(stdout);
}

/* ---- the measurements ---------------------------------------------------- */

static int g_peer_fd = -1;
static uint64_t g_peer_size;

/* The peer's file, written once in full so that the timed writes are overwrites. */
static void peer_prepare(const char *path, uint64_t size)
{
	const size_t chunk = 4 * MiB;
	uint8_t *zero = cdp_xaligned_alloc(4096, chunk);
	int rc;

	memset(zero, 0, chunk);
	g_peer_size = CDP_ALIGN_UP(size, (uint64_t)chunk);
	g_peer_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0640);
	if (g_peer_fd < 0)
		die("create %s: %s", path, strerror(errno));
	for (uint64_t off = 0; off < g_peer_size; off += chunk)
		if ((rc = cdp_pwrite_all(g_peer_fd, zero, chunk, off)))
			die("write %s: %s", path, strerror(-rc));
	if (fdatasync(g_peer_fd))
		die("fdatasync %s: %s", path, strerror(errno));
	free(zero);
}

/* @total bytes from @src into the peer file: pwrite @group bytes, fdatasync, repeat. */
static double peer_write(const uint8_t *src, uint64_t total, uint64_t group)
{
	int64_t t0 = now_ns();

	for (uint64_t off = 0; off < total; off += group) {
		uint64_t len = CDP_ALIGN_UP(CDP_MIN(group, total - off), (uint64_t)4096);
		int rc;

		if (off + len > g_peer_size)
			die("internal: peer file too small");
		rc = cdp_pwrite_all(g_peer_fd, src + off, (size_t)len, off);
		if (rc)
			die("peer write: %s", strerror(-rc));
		if (fdatasync(g_peer_fd))
			die("peer fdatasync: %s", strerror(errno));
	}
	return (double)(now_ns() - t0) / 1e9;
}

static void ingest_one(const struct opts *o, struct dataset *ds, unsigned nplans, unsigned run,
		       int m, int mg, int mraw)
{
	const struct seg *segs[MAX_PLANS];
	uint64_t plans[MAX_PLANS], bytes = 0, raw = 0, steps, nsegs, sbytes, acked, group;
	uint64_t files = 0, ext = o->extent_mib * MiB;
	unsigned n[MAX_PLANS], spares = 0, left;
	const uint8_t *span;
	struct cdp_journal *j;
	char jdir[4200];
	double secs, psecs;

	for (unsigned p = 0; p < nplans; p++) {
		uint64_t pb = 0;

		plans[p] = PLAN_BASE + p;
		segs[p] = ds->segs[p];
		n[p] = nplans == 1 ? ds->nsegs[0] : ds->nsegs[0] / 4;
		for (unsigned i = 0; i < n[p]; i++) {
			pb += segs[p][i].len;
			raw += segs[p][i].raw_len;
		}
		bytes += pb;
		/* Files this plan fills, with room for groups that do not fit a file's end. */
		spares += (unsigned)((pb * 3 / 2 + ext - 1) / ext);
	}
	snprintf(jdir, sizeof(jdir), "%s/ingest-%s-%u-%u", g_base, ds->name, nplans, run);
	j = jopen_ready(jdir, o->extent_mib * MiB, spares, o->verifier);
	for (unsigned p = 0; p < nplans; p++)
		plan_create(j, plans[p], INGEST_VOL);
	secs = submit_all(j, plans, segs, n, nplans, o->window, &acked);
	cdp_journal_commit_stats(j, &steps, &nsegs, &sbytes);
	left = count_spares(jdir);
	for (unsigned p = 0; p < nplans; p++) {
		struct cdp_journal_stats st;
		struct cdp_err err = CDP_ERR_INIT;

		if (cdp_journal_stats(j, plans[p], &st, &err))
			die("stats of plan %" PRIu64 ": %s", plans[p], err.msg);
		files += st.extent_files;
	}
	cdp_journal_close(j);
	rmtree(jdir);
	if (acked != bytes || sbytes != bytes)
		die("%s %u plans: acked %" PRIu64 ", committed %" PRIu64 ", expected %" PRIu64,
		    ds->name, nplans, acked, sbytes, bytes);
	if (files > spares - left)
		note("note: the spare pool ran dry: %" PRIu64 " extent files used, %u of them "
		     "ready\n", files, spares - left);
	group = CDP_ALIGN_UP(sbytes / (steps ? steps : 1), (uint64_t)4096);

	/* The same bytes: plan 1's span, or the 4-plan span that starts the arena. */
	span = nplans == 1 ? ds->segs[0][0].p : ds->segs[1][0].p;
	psecs = peer_write(span, bytes, group);

	record(m, (double)bytes / secs / 1e6, (double)bytes / psecs / 1e6);
	record(mg, (double)sbytes / (double)(steps ? steps : 1) / MiB, 0);
	if (mraw >= 0)
		record(mraw, (double)raw / secs / 1e6, 0);
	note("run %u: %-14s %u plan%s: journal %7.1f MB/s, disk %7.1f MB/s, ratio %.3f "
	     "(%" PRIu64 " steps, %.1f MiB and %.1f segments per step)\n", run, ds->name, nplans,
	     nplans > 1 ? "s" : " ", (double)bytes / secs / 1e6, (double)bytes / psecs / 1e6,
	     psecs / secs, steps, (double)sbytes / (double)(steps ? steps : 1) / MiB,
	     (double)nsegs / (double)(steps ? steps : 1));
}

static double run_dd(const char *in, const char *out)
{
	char ifarg[4300], ofarg[4300];
	int64_t t0 = now_ns();
	int status;
	pid_t pid;

	snprintf(ifarg, sizeof(ifarg), "if=%s", in);
	snprintf(ofarg, sizeof(ofarg), "of=%s", out);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (!pid) {
		execlp("dd", "dd", ifarg, ofarg, "bs=1M", "oflag=direct", "conv=fdatasync",
		       "status=none", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		die("dd %s %s failed (status %d)", ifarg, ofarg, status);
	return (double)(now_ns() - t0) / 1e9;
}

static void restore_one(const struct opts *o, const struct restore_set *rs, unsigned run)
{
	const struct seg *segs[1];
	uint64_t plan = PLAN_RESTORE, acked, newest = rs->segs[rs->nsync + rs->ntail - 1].last_seq;
	struct cdp_err err = CDP_ERR_INIT;
	char jdir[4200], out[4200], img[4300], ddout[4300];
	uint8_t check[512];
	struct cdp_journal *j;
	double fold_s, rest_s, dd_s;
	int64_t t0;
	unsigned n;
	int fd;

	snprintf(jdir, sizeof(jdir), "%s/restore-%u", g_base, run);
	snprintf(out, sizeof(out), "%s/out-%u", g_base, run);
	if (mkdir(out, 0750))
		die("mkdir %s: %s", out, strerror(errno));
	j = jopen(jdir, o->extent_mib * MiB, 0, false);
	plan_create(j, plan, rs->vol_size);
	segs[0] = rs->segs;
	n = rs->nsync;
	submit_all(j, &plan, segs, &n, 1, o->window, &acked);

	drop_caches();
	t0 = now_ns();
	if (cdp_journal_fold_to(j, plan, rs->segs[rs->nsync - 1].last_seq, &err))
		die("fold: %s", err.msg);
	fold_s = (double)(now_ns() - t0) / 1e9;

	segs[0] = rs->segs + rs->nsync;
	n = rs->ntail;
	submit_all(j, &plan, segs, &n, 1, o->window, &acked);

	drop_caches();
	t0 = now_ns();
	if (cdp_journal_restore_to_dir(j, plan, newest, false, out, &err))
		die("restore: %s", err.msg);
	rest_s = (double)(now_ns() - t0) / 1e9;
	cdp_journal_close(j);

	snprintf(img, sizeof(img), "%s/vol%" PRIu64 ".img", out, plan);
	fd = open(img, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || cdp_pread_full(fd, check, sizeof(check), rs->check_off) != sizeof(check) ||
	    memcmp(check, rs->check_head, sizeof(check)))
		die("restored image %s: the last write (offset %" PRIu64 ") is not there", img,
		    rs->check_off);
	close(fd);

	snprintf(ddout, sizeof(ddout), "%s/dd.img", out);
	drop_caches();
	dd_s = run_dd(img, ddout);

	record(M_RESTORE, (double)rs->vol_size / rest_s / 1e6, (double)rs->vol_size / dd_s / 1e6);
	record(M_FOLD, (double)rs->sync_bytes / fold_s / 1e6, (double)rs->vol_size / dd_s / 1e6);
	note("run %u: restore %.1f MB/s, fold %.1f MB/s, dd %.1f MB/s (%" PRIu64 " MiB volume, "
	     "%u tail segments)\n", run, (double)rs->vol_size / rest_s / 1e6,
	     (double)rs->sync_bytes / fold_s / 1e6, (double)rs->vol_size / dd_s / 1e6,
	     rs->vol_size / MiB, rs->ntail);
	rmtree(out);
	rmtree(jdir);
}

/* A plan with @npoints small segments, each closing a point. */
static struct cdp_journal *points_build(const struct opts *o, int64_t *t_first, int64_t *t_last)
{
	struct src src = { .rng = 42 };
	struct arena a;
	struct seg *segs = cdp_xcalloc(o->points, sizeof(*segs));
	const struct seg *sp[1] = { segs };
	uint64_t plan = PLAN_POINTS, acked;
	struct cdp_journal *j;
	char jdir[4200];
	struct gen g;

	arena_init(&a, (size_t)o->points * (CDP_SEG_HDR_LEN + CDP_REC_HDR_LEN + 2 * CDP_SECTOR));
	gen_init(&g, plan, 64 * MiB, 0, &src);
	for (unsigned i = 0; i < o->points; i++) {
		gen_rec(&g, CDP_REC_WRITE, 0, (i % 1024) * (uint64_t)CDP_SECTOR, CDP_SECTOR, NULL);
		g.t += CDP_NS_PER_SEC - 2000;	/* one point a second, a day of them by default */
		gen_seal(&g, &a, &segs[i]);
	}
	*t_first = T0;
	*t_last = g.t;
	gen_release(&g);
	snprintf(jdir, sizeof(jdir), "%s/points", g_base);
	j = jopen(jdir, o->extent_mib * MiB, 0, false);
	plan_create(j, plan, 64 * MiB);
	submit_all(j, &plan, sp, &o->points, 1, 256, &acked);
	free(segs);
	free(a.base);
	return j;
}

static void points_one(struct cdp_journal *j, const struct opts *o, int64_t t_first,
		       int64_t t_last, unsigned run)
{
	double *lat = cdp_xcalloc(o->lookups, sizeof(double));
	uint64_t rng = 0x5151 + run;

	for (unsigned i = 0; i < o->lookups; i++) {
		int64_t at = t_first + (int64_t)(xorshift(&rng) % (uint64_t)(t_last - t_first));
		struct cdp_journal_point pt;
		struct cdp_err err = CDP_ERR_INIT;
		int64_t t0 = now_ns();
		int rc = cdp_journal_point_find(j, PLAN_POINTS, at, false, &pt, &err);

		lat[i] = (double)(now_ns() - t0) / 1e3;
		if (rc || pt.time_ns > at)
			die("point_find at %" PRId64 ": %s (%d)", at, err.msg, rc);
	}
	qsort(lat, o->lookups, sizeof(double), cmp_double);
	record(M_PT50, lat[o->lookups / 2], 0);
	record(M_PT99, lat[(size_t)((double)o->lookups * 0.99)], 0);
	note("run %u: point_find over %u points: p50 %.1f us, p99 %.1f us\n", run, o->points,
	     lat[o->lookups / 2], lat[(size_t)((double)o->lookups * 0.99)]);
	free(lat);
}

/* ---- main ---------------------------------------------------------------- */

/* Is measurement @name (inc1, inc4, txt1, txt4, restore, points) selected by --only? */
static bool want(const struct opts *o, const char *name)
{
	return bench_selected(o->only, name);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: journal [--dir DIR] [--runs N] [--mib N] [--restore-mib N] "
		"[--tail-mib N]\n"
		"               [--window N] [--extent-mib N] [--points N] [--lookups N]\n"
		"               [--no-verifier] [--only inc1,inc4,txt1,txt4,restore,points]\n"
		"               [--keep] [--smoke]\n");
}

static uint64_t num_arg(const char *name, const char *s, uint64_t min, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || !*s || v < min || v > max)
		die("--%s: '%s' is not a number in %" PRIu64 "..%" PRIu64, name, s, min, max);
	return v;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "runs", required_argument, NULL, 'r' },
		{ "mib", required_argument, NULL, 'm' },
		{ "restore-mib", required_argument, NULL, 'R' },
		{ "tail-mib", required_argument, NULL, 'T' },
		{ "window", required_argument, NULL, 'w' },
		{ "extent-mib", required_argument, NULL, 'e' },
		{ "points", required_argument, NULL, 'p' },
		{ "lookups", required_argument, NULL, 'l' },
		{ "no-verifier", no_argument, NULL, 'V' },
		{ "only", required_argument, NULL, 'o' },
		{ "keep", no_argument, NULL, 'k' },
		{ "smoke", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct opts o = { .dir = "/var/tmp", .verifier = true };	/* 0: the default */
	struct dataset inc = { 0 }, txt = { 0 };
	struct restore_set rs = { 0 };
	struct cdp_journal *pj;
	int64_t pt_first, pt_last;
	char path[4200];
	unsigned nsegs;
	int c;

	bench_prog = "journal bench";
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			o.dir = optarg;
			break;
		case 'r':
			o.runs = (unsigned)num_arg("runs", optarg, 1, MAX_RUNS);
			break;
		case 'm':
			o.mib = num_arg("mib", optarg, 16, 1 << 16);
			break;
		case 'R':
			o.restore_mib = num_arg("restore-mib", optarg, 16, 1 << 20);
			break;
		case 'T':
			o.tail_mib = num_arg("tail-mib", optarg, 4, 1 << 20);
			break;
		case 'w':
			o.window = (unsigned)num_arg("window", optarg, 1, 1000);
			break;
		case 'e':
			o.extent_mib = num_arg("extent-mib", optarg, 1, 1 << 16);
			break;
		case 'p':
			o.points = (unsigned)num_arg("points", optarg, 16, 10000000);
			break;
		case 'l':
			o.lookups = (unsigned)num_arg("lookups", optarg, 100, 100000000);
			break;
		case 'V':
			o.verifier = false;
			break;
		case 'o':
			o.only = optarg;
			break;
		case 'k':
			o.keep = true;
			break;
		case 's':
			o.smoke = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	/* Defaults; --smoke: tiny sizes, one run, caches left alone (a few seconds). */
	o.runs = o.runs ? o.runs : o.smoke ? 1 : 5;
	o.mib = o.mib ? o.mib : o.smoke ? 16 : 512;
	o.restore_mib = o.restore_mib ? o.restore_mib : o.smoke ? 32 : 1024;
	o.tail_mib = o.tail_mib ? o.tail_mib : o.smoke ? 8 : 64;
	o.extent_mib = o.extent_mib ? o.extent_mib : o.smoke ? 32 : 256;
	o.window = o.window ? o.window : 16;
	o.points = o.points ? o.points : o.smoke ? 500 : 86400;
	o.lookups = o.lookups ? o.lookups : o.smoke ? 2000 : 100000;
	if (o.smoke)
		g_can_drop = false;
	/*
	 * Like the daemons (TOOLCHAIN.md): big buffers come from the heap and
	 * stay there, instead of a fresh mmap whose pages fault in one by one.
	 */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	if (o.tail_mib >= o.restore_mib)
		die("--tail-mib %" PRIu64 " must be below --restore-mib %" PRIu64, o.tail_mib,
		    o.restore_mib);
	nsegs = (unsigned)CDP_MAX((uint64_t)4, CDP_ALIGN_UP(o.mib / 4, (uint64_t)4));

	snprintf(g_base, sizeof(g_base), "%s/cdp-bench-journal-XXXXXX", o.dir);
	if (!mkdtemp(g_base))
		die("mkdtemp %s: %s", g_base, strerror(errno));
	g_keep = o.keep;
	atexit(cleanup);
	if (!o.smoke && geteuid() != 0) {
		note("note: not root: the page cache is not dropped before restore, fold and dd\n");
		g_can_drop = false;
	}

	note("journal bench: %s, %u run%s, %u segments (%" PRIu64 " MiB raw) per ingest "
	     "measurement, window %u, extent files %" PRIu64 " MiB, verifier %s\n", g_base, o.runs,
	     o.runs > 1 ? "s" : "", nsegs, (uint64_t)nsegs * 4, o.window, o.extent_mib,
	     o.verifier ? "on" : "off");
	note("preparing: text corpus, segments, peer file, points plan...\n");
	if (want(&o, "inc1") || want(&o, "inc4"))
		dataset_build(&inc, "incompressible", nsegs, false);
	if (want(&o, "txt1") || want(&o, "txt4")) {
		corpus_load(o.smoke ? 8 * MiB : 32 * MiB);
		dataset_build(&txt, "compressible", nsegs, true);
		note("  text corpus %zu bytes from %u files under /usr/share; compressible "
		     "segments %.2fx (zstd -1), %" PRIu64 " of %" PRIu64 " bytes\n", g_corpus.len,
		     g_corpus_files, (double)txt.raw_bytes / (double)txt.wire_bytes,
		     txt.wire_bytes, txt.raw_bytes);
	}
	if (want(&o, "restore"))
		restore_build(&rs, o.restore_mib * MiB, o.tail_mib * MiB);
	snprintf(path, sizeof(path), "%s/peer.img", g_base);
	peer_prepare(path, CDP_MAX(inc.a.len, txt.a.len) + 64 * MiB);
	pj = want(&o, "points") ? points_build(&o, &pt_first, &pt_last) : NULL;

	for (unsigned r = 1; r <= o.runs; r++) {
		if (want(&o, "inc1"))
			ingest_one(&o, &inc, 1, r, M_INC1, M_INC1_G, -1);
		if (want(&o, "inc4"))
			ingest_one(&o, &inc, 4, r, M_INC4, M_INC4_G, -1);
		if (want(&o, "txt1"))
			ingest_one(&o, &txt, 1, r, M_TXT1, M_TXT1_G, M_TXT1_RAW);
		if (want(&o, "txt4"))
			ingest_one(&o, &txt, 4, r, M_TXT4, M_TXT4_G, M_TXT4_RAW);
		if (want(&o, "restore"))
			restore_one(&o, &rs, r);
		if (pj)
			points_one(pj, &o, pt_first, pt_last, r);
	}
	cdp_journal_close(pj);
	close(g_peer_fd);
	report();
	free(inc.a.base);
	free(txt.a.base);
	free(rs.a.base);
	free(rs.segs);
	for (unsigned p = 0; p < MAX_PLANS; p++) {
		free(inc.segs[p]);
		free(txt.segs[p]);
	}
	return 0;
}
