/*
 * tools/journal_demo - what tools/demo runs until the daemons exist: the
 * journal store at work, on this machine, with real files and real time.
 *
 * A plan with two volumes is created in a scratch journal. A workload writes
 * to both volumes (overlapping writes, zeroes, trims) and every
 * point_interval the writes so far are sealed into a segment that closes a
 * recovery point, exactly as cdp-agent will do. The demo keeps its own copy
 * of the volumes and the SHA-256 of each at every point, restores an earlier
 * point and the newest one from the journal, compares them, then folds the
 * older history into the base image and scrubs what is left.
 *
 *	cdp-journal-demo [--dir DIR] [--seconds N] [--interval-ms N] [--keep]
 */
#include <getopt.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/util.h"
#include "storage/journal.h"
#include "storage/segment.h"

#define VOL_SIZE (64u << 20)
#define NVOL 2
#define MAXPOINTS 4096

struct demo {
	struct cdp_journal *j;
	struct cdp_seg_enc *enc;
	struct cdp_stamp_clock stamp;
	uint8_t *vol[NVOL];
	uint64_t seq;
	uint64_t rng;
	struct cdp_buf seg;
	uint64_t bytes_written, records;
	struct {
		uint64_t seq;
		int64_t t;
		uint8_t sha[NVOL][32];
	} points[MAXPOINTS];
	unsigned npoints;
};

static uint64_t rnd(struct demo *d)
{
	d->rng ^= d->rng << 13;
	d->rng ^= d->rng >> 7;
	d->rng ^= d->rng << 17;
	return d->rng;
}

static void sha256(const void *p, size_t n, uint8_t out[32])
{
	unsigned len = 32;

	EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

static void die(const char *what, const struct cdp_err *err)
{
	fprintf(stderr, "cdp-journal-demo: %s: %s\n", what, err ? err->msg : "failed");
	exit(1);
}

static void seal(struct demo *d, bool point);

static void add(struct demo *d, uint16_t kind, uint16_t flags, uint32_t vol, uint64_t off,
		uint32_t len, const void *payload)
{
	struct cdp_record r = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	r.seq = ++d->seq;
	r.volume = vol;
	r.kind = kind;
	r.flags = flags;
	r.offset = off;
	r.length = len;
	r.time_ns = cdp_stamp_clock_now(&d->stamp);
	r.payload = payload;
	if (kind == CDP_REC_WRITE)
		memcpy(d->vol[vol] + off, payload, len);
	else if (kind == CDP_REC_ZERO || kind == CDP_REC_TRIM)
		memset(d->vol[vol] + off, 0, len);
	rc = cdp_seg_enc_add(d->enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err);
	if (rc == -E2BIG) {
		/* 4 MiB reached: this segment closes no point; go on in the next. */
		seal(d, false);
		rc = cdp_seg_enc_add(d->enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err);
	}
	if (rc)
		die("encode", &err);
	d->records++;
}

static void seal(struct demo *d, bool point)
{
	struct cdp_seg_seal_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	int64_t t = cdp_stamp_clock_now(&d->stamp);

	o.flags = point ? CDP_SEG_F_POINT_END : 0;
	o.compression = CDP_COMP_ZSTD;
	o.level = 1;
	o.t_first = t;
	o.t_last = point ? t : 0;	/* mid-interval: ends at its last record */
	cdp_buf_reset(&d->seg);
	if (cdp_seg_enc_seal(d->enc, &o, &d->seg, NULL, &err))
		die("seal", &err);
	if (cdp_journal_append_wait(d->j, 1, d->seg.data, d->seg.len, NULL, NULL, &err))
		die("append", &err);
	if (point && d->npoints < MAXPOINTS) {
		d->points[d->npoints].seq = d->seq;
		d->points[d->npoints].t = t;
		for (int v = 0; v < NVOL; v++)
			sha256(d->vol[v], VOL_SIZE, d->points[d->npoints].sha[v]);
		d->npoints++;
	}
}

/* A burst of application writes: files written, some overwritten, some deleted. */
static void workload(struct demo *d)
{
	static uint8_t buf[256u << 10];
	unsigned n = 20 + (unsigned)(rnd(d) % 40);

	for (unsigned i = 0; i < n; i++) {
		uint32_t vol = (uint32_t)(rnd(d) % NVOL);
		uint32_t len = CDP_SECTOR * (uint32_t)(1 + rnd(d) % (sizeof(buf) / CDP_SECTOR));
		uint64_t off = CDP_SECTOR * (rnd(d) % ((VOL_SIZE - len) / CDP_SECTOR));
		unsigned what = (unsigned)(rnd(d) % 10);

		if (what < 8) {
			for (uint32_t k = 0; k < len; k += 8) {
				uint64_t x = rnd(d);

				memcpy(buf + k, &x, 8);
			}
			/* Half of each write compresses, like real file data. */
			memset(buf, 'a' + (int)(rnd(d) % 26), len / 2);
			add(d, CDP_REC_WRITE, 0, vol, off, len, buf);
			d->bytes_written += len;
		} else {
			add(d, what == 8 ? CDP_REC_ZERO : CDP_REC_TRIM, 0, vol, off, len, NULL);
		}
	}
}

static int verify_restore(struct demo *d, unsigned idx, const char *dir, double *secs)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct timespec a, b;
	int ok = 1;

	clock_gettime(CLOCK_MONOTONIC, &a);
	if (cdp_journal_restore_to_dir(d->j, 1, d->points[idx].seq, false, dir, &err))
		die("restore", &err);
	clock_gettime(CLOCK_MONOTONIC, &b);
	*secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	for (int v = 0; v < NVOL; v++) {
		char path[4200];
		uint8_t sha[32];
		uint8_t *img = cdp_xmalloc(VOL_SIZE);
		FILE *f;

		snprintf(path, sizeof(path), "%s/vol%d.img", dir, v);
		f = fopen(path, "rb");
		if (!f || fread(img, 1, VOL_SIZE, f) != VOL_SIZE)
			die("read restored image", NULL);
		fclose(f);
		sha256(img, VOL_SIZE, sha);
		free(img);
		ok &= !memcmp(sha, d->points[idx].sha[v], 32);
	}
	return ok;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "seconds", required_argument, NULL, 's' },
		{ "interval-ms", required_argument, NULL, 'i' },
		{ "keep", no_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	struct cdp_journal_opts jo = { 0 };
	struct cdp_journal_plan plan = { 0 };
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	struct demo *d = cdp_xcalloc(1, sizeof(*d));
	char dir[4096] = "", jdir[4200], out[4200], tbuf[40];
	int seconds = 5, interval_ms = 200, keep = 0, made_dir = 0, c;
	int64_t end;
	double rs1, rs2;
	int ok1, ok2;
	unsigned early;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': snprintf(dir, sizeof(dir), "%s", optarg); break;
		case 's': seconds = atoi(optarg); break;
		case 'i': interval_ms = atoi(optarg); break;
		case 'k': keep = 1; break;
		default:
			fprintf(stderr, "usage: cdp-journal-demo [--dir DIR] [--seconds N] "
				"[--interval-ms N] [--keep]\n");
			return 2;
		}
	}
	if (seconds < 1 || seconds > 600 || interval_ms < 100 || interval_ms > 10000) {
		fprintf(stderr, "cdp-journal-demo: --seconds 1..600, --interval-ms 100..10000\n");
		return 2;
	}
	if (!dir[0]) {
		snprintf(dir, sizeof(dir), "/var/tmp/cdp-demo-XXXXXX");
		if (!mkdtemp(dir))
			die("mkdtemp", NULL);
		made_dir = 1;
	}
	snprintf(jdir, sizeof(jdir), "%s/journal", dir);
	snprintf(out, sizeof(out), "%s/restore", dir);
	mkdir(out, 0750);

	jo.extent_max_bytes = 16u << 20;
	jo.spare_extents = 2;
	d->j = cdp_journal_open(jdir, &jo, &err);
	if (!d->j)
		die("open journal", &err);
	plan.plan_id = 1;
	snprintf(plan.name, sizeof(plan.name), "demo");
	plan.nvolumes = NVOL;
	for (int v = 0; v < NVOL; v++) {
		plan.volume_size[v] = VOL_SIZE;
		snprintf(plan.volume_name[v], sizeof(plan.volume_name[v]), "vol%d", v);
		d->vol[v] = cdp_xcalloc(1, VOL_SIZE);
	}
	if (cdp_journal_plan_create(d->j, &plan, NULL, 0, &err))
		die("create plan", &err);
	d->enc = cdp_seg_enc_new(1, 0, 1, cdp_digest_zero);
	cdp_stamp_clock_init(&d->stamp, cdp_clock_real());
	d->rng = (uint64_t)cdp_clock_wall_ns(cdp_clock_real()) | 1;

	printf("journal in %s; plan 'demo', 2 volumes of %u MiB, a point every %d ms\n", jdir,
	       VOL_SIZE >> 20, interval_ms);
	/* The full sync of empty volumes: holes become ZERO records, not bytes. */
	{
		struct cdp_sync_info si = { 1, CDP_SYNC_FULL };
		uint8_t p[CDP_SYNC_INFO_LEN];

		cdp_sync_info_encode(&si, p);
		add(d, CDP_REC_SYNC_BEGIN, 0, 0, 0, CDP_SYNC_INFO_LEN, p);
		for (uint32_t v = 0; v < NVOL; v++)
			add(d, CDP_REC_ZERO, CDP_REC_F_RESYNC, v, 0, VOL_SIZE, NULL);
		add(d, CDP_REC_SYNC_END, 0, 0, 0, CDP_SYNC_INFO_LEN, p);
		seal(d, true);
	}
	end = cdp_clock_mono_ns(cdp_clock_real()) + seconds * CDP_NS_PER_SEC;
	while (cdp_clock_mono_ns(cdp_clock_real()) < end) {
		int64_t next = cdp_clock_mono_ns(cdp_clock_real()) + interval_ms * CDP_NS_PER_MS;
		struct timespec ts;

		/* The application writes during the interval... */
		while (cdp_clock_mono_ns(cdp_clock_real()) < next - 20 * CDP_NS_PER_MS) {
			workload(d);
			ts.tv_sec = 0;
			ts.tv_nsec = 20 * CDP_NS_PER_MS;	/* the application's think time */
			nanosleep(&ts, NULL);
		}
		/* ...and its end is a recovery point. */
		seal(d, true);
		printf("  point %s  seq %-7" PRIu64 " %6.1f MiB written so far\n",
		       cdp_time_format(d->points[d->npoints - 1].t, tbuf, sizeof(tbuf)), d->seq,
		       (double)d->bytes_written / (1 << 20));
		fflush(stdout);
	}

	early = d->npoints / 3;
	printf("restoring an earlier point (%s, seq %" PRIu64 ") and the newest (seq %" PRIu64
	       ")...\n", cdp_time_format(d->points[early].t, tbuf, sizeof(tbuf)),
	       d->points[early].seq, d->points[d->npoints - 1].seq);
	ok1 = verify_restore(d, early, out, &rs1);
	ok2 = verify_restore(d, d->npoints - 1, out, &rs2);
	printf("  earlier point: %s (%.2f s)\n", ok1 ? "identical to the volumes then" : "DIFFERS",
	       rs1);
	printf("  newest point:  %s (%.2f s)\n", ok2 ? "identical to the volumes now" : "DIFFERS",
	       rs2);

	printf("folding history up to the earlier point into the base image...\n");
	if (cdp_journal_fold_to(d->j, 1, d->points[early].seq, &err))
		die("fold", &err);
	ok1 = verify_restore(d, d->npoints - 1, out, &rs2);
	if (cdp_journal_scrub(d->j, 1, NULL, &err))
		die("scrub", &err);
	if (cdp_journal_stats(d->j, 1, &st, &err))
		die("stats", &err);
	printf("  newest point after the fold: %s; scrub: every stored segment verified\n",
	       ok1 ? "still identical" : "DIFFERS");

	printf("\nsummary: %u points, %" PRIu64 " records, %.1f MiB written, journal holds %.1f "
	       "MiB in %" PRIu64 " segments above horizon seq %" PRIu64 "\n", d->npoints,
	       d->records, (double)d->bytes_written / (1 << 20), (double)st.bytes / (1 << 20),
	       st.segments, st.horizon_seq);
	printf("built too: cdp-journald and cdpctl (docs/operations.md); next: cdp-agent (NBD "
	       "capture) and cdp-standby\n");

	cdp_journal_close(d->j);
	cdp_seg_enc_free(d->enc);
	for (int v = 0; v < NVOL; v++)
		free(d->vol[v]);
	cdp_buf_release(&d->seg);
	if (!keep) {
		char cmd[8300];

		/* Only what the demo made: a scratch dir, or its own two subdirectories. */
		if (made_dir)
			snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		else
			snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", jdir, out);
		if (system(cmd) != 0)
			fprintf(stderr, "cdp-journal-demo: could not remove %s\n", dir);
	}
	free(d);
	return ok1 && ok2 ? 0 : 1;
}
