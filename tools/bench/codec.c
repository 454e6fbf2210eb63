/*
 * tools/bench/codec - throughput of the segment codec against zstd alone.
 *
 *	codec [--smoke] [--runs N] [--mib N]
 *
 * Work: 4 MiB segments of WRITE records (63 of 64 KiB and one of 62976
 * bytes, which fill CDP_SEG_MAX_RAW exactly), over two inputs of the same
 * size: "mixed" (real files read from /usr/lib and /usr/share, in sorted
 * order, at most 1 MiB from each: what a tar of them holds) and "random".
 *
 * Headline: seal (add the records, zstd level 1, CRCs, chain digest) +
 * verify (cdp_seg_decode() with the previous digest: body CRC, decompress,
 * record CRCs, digest) on mixed data, against zstd alone doing the same
 * compression and decompression (ZSTD_compressCCtx level 1 +
 * ZSTD_decompressDCtx on the same data in 4 MiB buffers). Also: the same on
 * random data, and seal alone at each level the adaptive codec may pick
 * (zstd -5, -1, 1, 3 and none) against zstd compressing alone at that level,
 * and the chain digest (SHA-256) alone, the work zstd alone does not do.
 * Throughput counts input bytes (payload for the codec), 10^6 bytes per MB.
 *
 * Each figure is the median of --runs runs (default 5); the codec and its
 * peer run back to back inside each run so they share the machine's noise.
 * Prints a table on stderr and, as the last line on stdout, one JSON object:
 * {"bench":"codec","metric":...,"value":N,"unit":"MB/s","peer":...,
 *  "peer_value":N,"ratio":N,"more":[{same shape}, ...]}.
 * --smoke: 8 MiB of each input and one run (ctest runs this so it cannot rot).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "common/buf.h"
#include "common/util.h"
#include "storage/segment.h"

#define SEG_RECORDS 64
#define REC_BIG (64u << 10)
/* 63 * (40 + 64 KiB) + 40 + 62976 = 4 MiB exactly. */
#define REC_LAST (CDP_SEG_MAX_RAW - (SEG_RECORDS - 1) * (CDP_REC_HDR_LEN + REC_BIG) - \
		  CDP_REC_HDR_LEN)
#define SEG_PAYLOAD ((SEG_RECORDS - 1) * REC_BIG + REC_LAST)
#define FILE_CAP (1u << 20)	/* bytes taken from one file at most */
#define MAX_RUNS 101

_Static_assert(REC_LAST % CDP_SECTOR == 0 && REC_LAST <= REC_BIG, "last record");

struct input {
	const char *name;
	uint8_t *data;
	size_t len;
	unsigned files;
};

/* ---- inputs ----------------------------------------------------------------- */

struct loader {
	uint8_t *data;
	size_t len, cap;
	unsigned files;
};

/* Appends regular files under @dir (depth first, sorted, no symlinks) up to @limit bytes. */
static void load_tree(struct loader *l, const char *dir, size_t limit)
{
	struct dirent **ents;
	int n = scandir(dir, &ents, NULL, alphasort);

	if (n < 0)
		return;
	for (int i = 0; i < n; i++) {
		char path[4096];
		struct stat st;
		const char *name = ents[i]->d_name;

		if (l->len >= limit || !strcmp(name, ".") || !strcmp(name, "..") ||
		    snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
		    lstat(path, &st) < 0) {
			free(ents[i]);
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			load_tree(l, path, limit);
		} else if (S_ISREG(st.st_mode) && st.st_size > 0) {
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			size_t want = CDP_MIN((size_t)st.st_size, FILE_CAP);

			want = CDP_MIN(want, limit - l->len);
			if (fd >= 0) {
				long got = cdp_read_full(fd, l->data + l->len, want);

				if (got > 0) {
					l->len += (size_t)got;
					l->files++;
				}
				close(fd);
			}
		}
		free(ents[i]);
	}
	free(ents);
}

static void load_mixed(struct input *in, size_t size)
{
	struct loader l = { .data = cdp_xmalloc(size), .cap = size };

	/* Half from each tree (binaries and libraries, then text and data). */
	load_tree(&l, "/usr/lib", size / 2);
	load_tree(&l, "/usr/share", size);
	if (l.len < size)	/* a tiny system: repeat what there is */
		load_tree(&l, "/usr", size);
	while (l.len && l.len < size) {
		size_t n = CDP_MIN(l.len, size - l.len);

		memcpy(l.data + l.len, l.data, n);
		l.len += n;
	}
	in->name = "mixed";
	in->data = l.data;
	in->len = l.len;
	in->files = l.files;
}

static void load_random(struct input *in, size_t size)
{
	uint64_t x = 0x243F6A8885A308D3ull;

	in->name = "random";
	in->data = cdp_xmalloc(size);
	in->len = size;
	in->files = 0;
	for (size_t i = 0; i + 8 <= size; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(in->data + i, &x, 8);
	}
}

/* ---- the work ---------------------------------------------------------------- */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const struct cdp_err *err)
{
	fprintf(stderr, "codec: %s: %s\n", what, err ? err->msg : "");
	exit(1);
}

struct codec_result {
	double mbps;
	double ratio;	/* raw / sent */
};

/* Seals (and verifies when @verify) every whole segment of @in; returns MB/s of payload. */
static struct codec_result run_codec(const struct input *in, uint8_t comp, int level, int verify)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(1, 1, 1, NULL);
	struct cdp_seg_seal_opts o = { .compression = comp, .level = level };
	struct cdp_buf out = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t prev[CDP_DIGEST_LEN], digest[CDP_DIGEST_LEN];
	size_t nseg = in->len / SEG_PAYLOAD, sent = 0;
	uint64_t seq = 1;
	int64_t t = 1700000000000000000LL;
	double t0, dt;

	memcpy(prev, cdp_digest_zero, CDP_DIGEST_LEN);
	t0 = now();
	for (size_t s = 0; s < nseg; s++) {
		const uint8_t *p = in->data + s * SEG_PAYLOAD;

		for (int i = 0; i < SEG_RECORDS; i++) {
			uint32_t len = i < SEG_RECORDS - 1 ? REC_BIG : REC_LAST;
			struct cdp_record r = {
				.seq = seq++, .kind = CDP_REC_WRITE,
				.offset = (uint64_t)i * REC_BIG, .length = len, .time_ns = t++,
				.payload = p,
			};

			if (cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err))
				die("add", &err);
			p += len;
		}
		out.len = 0;
		if (cdp_seg_enc_seal(enc, &o, &out, digest, &err))
			die("seal", &err);
		sent += out.len;
		if (verify) {
			struct cdp_seg_expect ex = { .prev_digest = prev, .min_time = INT64_MIN };
			struct cdp_segment *seg;

			if (cdp_seg_decode(out.data, out.len, &ex, &seg, &err))
				die("verify", &err);
			cdp_segment_free(seg);
		}
		memcpy(prev, digest, CDP_DIGEST_LEN);
	}
	dt = now() - t0;
	cdp_buf_release(&out);
	cdp_seg_enc_free(enc);
	return (struct codec_result){ nseg * (double)SEG_PAYLOAD / dt / 1e6,
				      sent ? nseg * (double)SEG_PAYLOAD / (double)sent : 0 };
}

/* zstd alone on the same data in 4 MiB buffers: compress (and decompress when @roundtrip). */
static double run_zstd(const struct input *in, int level, int roundtrip)
{
	static ZSTD_CCtx *cctx;
	static ZSTD_DCtx *dctx;
	static uint8_t *zbuf, *back;
	size_t bound = ZSTD_compressBound(CDP_SEG_MAX_RAW), n = in->len / CDP_SEG_MAX_RAW;
	double t0, dt;

	if (!cctx) {
		cctx = ZSTD_createCCtx();
		dctx = ZSTD_createDCtx();
		zbuf = cdp_xmalloc(bound);
		back = cdp_xmalloc(CDP_SEG_MAX_RAW);
		if (!cctx || !dctx)
			die("zstd contexts", NULL);
	}
	t0 = now();
	for (size_t i = 0; i < n; i++) {
		const uint8_t *src = in->data + i * CDP_SEG_MAX_RAW;
		size_t z = ZSTD_compressCCtx(cctx, zbuf, bound, src, CDP_SEG_MAX_RAW, level);

		if (ZSTD_isError(z))
			die(ZSTD_getErrorName(z), NULL);
		if (roundtrip) {
			size_t d = ZSTD_decompressDCtx(dctx, back, CDP_SEG_MAX_RAW, zbuf, z);

			if (ZSTD_isError(d) || d != CDP_SEG_MAX_RAW)
				die("zstd decompress", NULL);
		}
	}
	dt = now() - t0;
	return n * (double)CDP_SEG_MAX_RAW / dt / 1e6;
}

/* The chain digest alone over 4 MiB buffers: the part of the codec's work zstd does not do. */
static double run_digest(const struct input *in)
{
	size_t n = in->len / CDP_SEG_MAX_RAW;
	uint8_t d[CDP_DIGEST_LEN] = { 0 };
	double t0 = now(), dt;

	for (size_t i = 0; i < n; i++)
		if (cdp_chain_digest(d, in->data + i * CDP_SEG_MAX_RAW, CDP_SEG_MAX_RAW, d, NULL))
			die("sha-256", NULL);
	dt = now() - t0;
	return n * (double)CDP_SEG_MAX_RAW / dt / 1e6;
}

/* ---- reporting ------------------------------------------------------------ */

struct figure {
	char metric[96];
	char peer[64];		/* "" = no peer */
	double v[MAX_RUNS], p[MAX_RUNS], cr[MAX_RUNS];
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
	double s[MAX_RUNS];

	memcpy(s, v, sizeof(double) * (size_t)n);
	qsort(s, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void json_figure(const struct figure *f, int runs)
{
	double v = median(f->v, runs);

	printf("\"bench\":\"codec\",\"metric\":\"%s\",\"value\":%.1f,\"unit\":\"MB/s\",", f->metric,
	       v);
	if (f->peer[0]) {
		double p = median(f->p, runs);

		printf("\"peer\":\"%s\",\"peer_value\":%.1f,\"ratio\":%.3f", f->peer, p, v / p);
	} else {
		printf("\"peer\":null,\"peer_value\":null,\"ratio\":null");
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: codec [--smoke] [--runs N] [--mib N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		uint8_t comp;
		int level;
	} levels[] = {
		{ "zstd -5", CDP_COMP_ZSTD, -5 }, { "zstd -1", CDP_COMP_ZSTD, -1 },
		{ "zstd 1", CDP_COMP_ZSTD, 1 }, { "zstd 3", CDP_COMP_ZSTD, 3 },
		{ "none", CDP_COMP_NONE, 0 },
	};
	enum { NLEV = CDP_ARRAY_SIZE(levels), NFIG = 3 + 2 * NLEV };
	static struct figure fig[NFIG];
	struct input in[2];
	size_t mib = 128;
	int runs = 5, smoke = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--smoke"))
			smoke = 1;
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			mib = (size_t)atol(argv[++i]);
		else
			usage();
	}
	if (smoke) {
		mib = 8;
		runs = 1;
	}
	if (runs < 1 || runs > MAX_RUNS || mib < 8 || mib > 4096)
		usage();
	/* As the daemons do (docs/performance.md): big buffers stay in the heap. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);

	load_mixed(&in[0], mib << 20);
	load_random(&in[1], mib << 20);
	if (in[0].len < SEG_PAYLOAD) {
		fprintf(stderr, "codec: could not read %zu MiB of files under /usr\n", mib);
		return 1;
	}

	for (int d = 0; d < 2; d++) {
		struct figure *f = &fig[d];

		snprintf(f->metric, sizeof(f->metric), "seal+verify throughput, %s data",
			 in[d].name);
		snprintf(f->peer, sizeof(f->peer), "zstd -1 alone");
		for (size_t l = 0; l < CDP_ARRAY_SIZE(levels); l++) {
			f = &fig[2 + d * NLEV + l];
			snprintf(f->metric, sizeof(f->metric), "seal throughput, %s data, %s",
				 in[d].name, levels[l].name);
			if (levels[l].comp == CDP_COMP_ZSTD)
				snprintf(f->peer, sizeof(f->peer), "zstd %d compress alone",
					 levels[l].level);
		}
	}

	snprintf(fig[NFIG - 1].metric, sizeof(fig[0].metric),
		 "chain digest (SHA-256) alone, 4 MiB buffers");

	/* Warm up: fault in every buffer and context once. */
	run_codec(&in[0], CDP_COMP_ZSTD, 1, 1);
	run_zstd(&in[0], 1, 1);

	for (int r = 0; r < runs; r++) {
		for (int d = 0; d < 2; d++) {
			struct codec_result c = run_codec(&in[d], CDP_COMP_ZSTD, 1, 1);

			fig[d].v[r] = c.mbps;
			fig[d].cr[r] = c.ratio;
			fig[d].p[r] = run_zstd(&in[d], 1, 1);
			for (size_t l = 0; l < CDP_ARRAY_SIZE(levels); l++) {
				struct figure *f = &fig[2 + d * NLEV + l];

				c = run_codec(&in[d], levels[l].comp, levels[l].level, 0);
				f->v[r] = c.mbps;
				f->cr[r] = c.ratio;
				if (f->peer[0])
					f->p[r] = run_zstd(&in[d], levels[l].level, 0);
			}
		}
		fig[NFIG - 1].v[r] = run_digest(&in[0]);
		fig[NFIG - 1].cr[r] = 1;
		fprintf(stderr, "codec: run %d/%d: seal+verify mixed %.0f MB/s, "
			"zstd alone %.0f MB/s\n", r + 1, runs, fig[0].v[r], fig[0].p[r]);
	}

	fprintf(stderr, "\ncodec: %zu MiB mixed (%u files under /usr/lib, /usr/share) and %zu MiB "
		"random; 4 MiB segments of 64 KiB writes; median of %d run%s\n\n", in[0].len >> 20,
		in[0].files, in[1].len >> 20, runs, runs > 1 ? "s" : "");
	fprintf(stderr, "%-44s %10s %-24s %10s %7s %6s\n", "work", "cdp MB/s", "peer",
		"peer MB/s", "ratio", "x comp");
	for (int i = 0; i < NFIG; i++) {
		const struct figure *f = &fig[i];
		double v = median(f->v, runs);

		if (f->peer[0]) {
			double p = median(f->p, runs);

			fprintf(stderr, "%-44s %10.0f %-24s %10.0f %7.2f %6.2f\n", f->metric, v,
				f->peer, p, v / p, median(f->cr, runs));
		} else {
			fprintf(stderr, "%-44s %10.0f %-24s %10s %7s %6.2f\n", f->metric, v, "-",
				"-", "-", median(f->cr, runs));
		}
	}
	fputc('\n', stderr);

	putchar('{');
	json_figure(&fig[0], runs);
	printf(",\"more\":[");
	for (int i = 1; i < NFIG; i++) {
		printf("%s{", i > 1 ? "," : "");
		json_figure(&fig[i], runs);
		putchar('}');
	}
	printf("]}\n");
	free(in[0].data);
	free(in[1].data);
	return 0;
}
