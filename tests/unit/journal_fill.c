/*
 * tests/unit/journal_fill - the helper of tests/integration/test-journal-disk-full.sh:
 * drives a journal on a small file system until the disk is full, then checks
 * that nothing acknowledged was lost and that appending resumes once there is
 * room again. Not a cmocka test: each mode is one process, so every step of
 * the shell test reopens the journal as a restarted server would.
 *
 *	journal_fill fill DIR                  append until an append fails
 *	journal_fill check DIR MIN_SEQ OUTDIR  reopen, verify, restore the newest point
 *	journal_fill append DIR COUNT          append COUNT more segments
 *
 * Output is "key=value" lines on stdout (last_acked, error_code, error,
 * resent, resent_same_error, durable_seq, checked_segments, restored_seq);
 * diagnostics go to stderr.
 * Exit status: 0 when the mode did what it says (fill: it stopped at a
 * failed append), 1 otherwise.
 *
 * Content is a function of the seq alone, so any process can regenerate and
 * compare it: seq 1 is SYNC_BEGIN, seq 2 zeroes the volume, seq 3 is
 * SYNC_END (so later points are consistent), and every seq >= 4 is a 64 KiB
 * WRITE of incompressible bytes (a hash of seq and offset) at block
 * (seq - 4) % NBLK. Each segment closes a point; its time is its last seq's.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "storage/journal.h"
#include "storage/segment.h"

#define PLAN 7
#define VOL (4u << 20)
#define REC (64u << 10)
#define NBLK (VOL / REC)
#define RECS_PER_SEG 4		/* ~256 KiB segments: several per 1 MiB extent file */
#define MAX_SEGS 100000		/* a fill that never fails is a failure */
#define RESENDS 5		/* resends of the segment that failed, in fill mode */
#define T0 (INT64_C(1700000000) * 1000000000)

static struct cdp_journal *jopen(const char *dir)
{
	struct cdp_journal_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal *j;

	o.extent_max_bytes = 1u << 20;	/* small files: the disk fills file by file */
	o.no_verifier = true;
	j = cdp_journal_open(dir, &o, &err);
	if (!j) {
		fprintf(stderr, "journal_fill: open %s: %s (%d)\n", dir, err.msg, err.code);
		printf("error_code=%d\nerror=open: %s\n", err.code, err.msg);
		exit(1);
	}
	return j;
}

static int64_t seq_time(uint64_t seq)
{
	return T0 + (int64_t)seq * 1000;
}

static uint64_t seq_off(uint64_t seq)
{
	return (seq - 4) % NBLK * REC;
}

static void fill_pattern(uint8_t *p, size_t len, uint64_t seq, uint64_t off)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = (seq * 0x9E3779B97F4A7C15ull) ^ ((off + i) * 0xC2B2AE3D27D4EB4Full);

		v ^= v >> 29;
		v *= 0xBF58476D1CE4E5B9ull;
		v ^= v >> 32;
		memcpy(p + i, &v, CDP_MIN((size_t)8, len - i));
	}
}

/* The record with @seq (payload in @buf, REC bytes). */
static void make_record(uint64_t seq, struct cdp_record *r, uint8_t *buf, uint8_t *sip)
{
	struct cdp_sync_info si = { 1, CDP_SYNC_FULL };

	memset(r, 0, sizeof(*r));
	r->seq = seq;
	r->time_ns = seq_time(seq);
	if (seq == 1 || seq == 3) {
		cdp_sync_info_encode(&si, sip);
		r->kind = seq == 1 ? CDP_REC_SYNC_BEGIN : CDP_REC_SYNC_END;
		r->length = CDP_SYNC_INFO_LEN;
		r->payload = sip;
	} else if (seq == 2) {
		r->kind = CDP_REC_ZERO;
		r->flags = CDP_REC_F_RESYNC;
		r->length = VOL;
	} else {
		r->kind = CDP_REC_WRITE;
		r->offset = seq_off(seq);
		r->length = REC;
		fill_pattern(buf, REC, seq, r->offset);
		r->payload = buf;
	}
}

/* Encodes the segment that starts at @first (the sync at 1, else RECS_PER_SEG writes). */
static uint64_t make_segment(struct cdp_seg_enc *enc, uint64_t first, struct cdp_buf *out,
			     uint8_t *buf)
{
	uint64_t last = first == 1 ? 3 : first + RECS_PER_SEG - 1;
	struct cdp_seg_seal_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t sip[CDP_SYNC_INFO_LEN];

	for (uint64_t s = first; s <= last; s++) {
		struct cdp_record r;

		make_record(s, &r, buf, sip);
		if (cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err)) {
			fprintf(stderr, "journal_fill: encode seq %" PRIu64 ": %s\n", s, err.msg);
			exit(1);
		}
	}
	o.flags = CDP_SEG_F_POINT_END;
	o.compression = CDP_COMP_ZSTD;	/* incompressible: the encoder stores it raw */
	o.level = 1;
	cdp_buf_reset(out);
	if (cdp_seg_enc_seal(enc, &o, out, NULL, &err)) {
		fprintf(stderr, "journal_fill: seal: %s\n", err.msg);
		exit(1);
	}
	return last;
}

static void plan_ensure(struct cdp_journal *j)
{
	struct cdp_journal_plan p = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	p.plan_id = PLAN;
	snprintf(p.name, sizeof(p.name), "fill");
	p.epoch = 1;
	p.nvolumes = 1;
	p.volume_size[0] = VOL;
	snprintf(p.volume_name[0], sizeof(p.volume_name[0]), "vol0");
	rc = cdp_journal_plan_create(j, &p, NULL, 0, &err);
	if (rc && rc != -EEXIST) {
		fprintf(stderr, "journal_fill: create plan: %s\n", err.msg);
		printf("error_code=%d\nerror=create plan: %s\n", rc, err.msg);
		exit(1);
	}
}

/*
 * Appends segments continuing the stored chain, at most @max of them; stops
 * at the first failure (reported) unless @must_succeed (then it is fatal).
 * After a failure the same segment is resent @retries times, as a writer
 * would, and the failures are counted by code. Returns the number appended.
 */
static unsigned append_more(struct cdp_journal *j, unsigned max, bool must_succeed,
			    unsigned retries)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_resume ri;
	struct cdp_buf seg = CDP_BUF_INIT;
	uint8_t *buf = cdp_xmalloc(REC);
	struct cdp_seg_enc *enc;
	uint64_t next, acked;
	unsigned n = 0;
	int rc = 0;

	if (cdp_journal_resume_info(j, PLAN, &ri, &err)) {
		fprintf(stderr, "journal_fill: resume info: %s\n", err.msg);
		exit(1);
	}
	acked = ri.durable_seq;
	next = ri.durable_seq + 1;
	enc = cdp_seg_enc_new(PLAN, 1, next, ri.durable_seq ? ri.digest : NULL);
	while (n < max) {
		uint64_t last = make_segment(enc, next, &seg, buf);

		rc = cdp_journal_append_wait(j, PLAN, seg.data, seg.len, NULL, NULL, &err);
		if (rc)
			break;
		acked = last;
		next = last + 1;
		n++;
	}
	printf("last_acked=%" PRIu64 "\nappended=%u\n", acked, n);
	if (rc) {
		unsigned same = 0;

		printf("error_code=%d\nerror=%s\n", rc, err.msg);
		fprintf(stderr, "journal_fill: append at seq %" PRIu64 " failed: %s (%d)\n", next,
			err.msg, rc);
		if (must_succeed)
			exit(1);
		for (unsigned i = 0; i < retries; i++) {
			struct cdp_err e2 = CDP_ERR_INIT;
			int rc2 = cdp_journal_append_wait(j, PLAN, seg.data, seg.len, NULL, NULL,
							  &e2);

			if (rc2 == rc)
				same++;
			else
				fprintf(stderr, "journal_fill: resend %u: %s (%d)\n", i + 1, e2.msg,
					rc2);
			if (!rc2)
				break;
		}
		if (retries)
			printf("resent=%u\nresent_same_error=%u\n", retries, same);
	}
	cdp_seg_enc_free(enc);
	cdp_buf_release(&seg);
	free(buf);
	return n;
}

static int mode_fill(const char *dir)
{
	struct cdp_journal *j = jopen(dir);
	unsigned n;

	plan_ensure(j);
	n = append_more(j, MAX_SEGS, false, RESENDS);
	cdp_journal_close(j);
	if (n == MAX_SEGS) {
		fprintf(stderr, "journal_fill: %u segments appended and no failure: is the file "
			"system small?\n", n);
		return 1;
	}
	return 0;
}

static int mode_append(const char *dir, unsigned count)
{
	struct cdp_journal *j = jopen(dir);

	append_more(j, count, true, 0);
	cdp_journal_close(j);
	return 0;
}

/* Is @r the record that seq @seq was (@scratch: REC bytes)? Says how not on stderr. */
static bool record_matches(const struct cdp_record *r, uint64_t seq, uint8_t *scratch)
{
	uint8_t sip[CDP_SYNC_INFO_LEN];
	struct cdp_record e;

	make_record(seq, &e, scratch, sip);
	if (r->seq == seq && r->kind == e.kind && r->offset == e.offset &&
	    r->length == e.length && r->time_ns == e.time_ns &&
	    (!e.payload || !memcmp(r->payload, e.payload, cdp_record_payload_len(&e))))
		return true;
	fprintf(stderr, "journal_fill: seq %" PRIu64 " differs from what was appended (found "
		"seq %" PRIu64 " kind %u offset %" PRIu64 ")\n", seq, r->seq, r->kind, r->offset);
	return false;
}

/* Compares every stored segment, record by record, with what the seq says. */
static int check_segments(struct cdp_journal *j, uint64_t from, uint64_t durable,
			  unsigned *nsegs)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf seg = CDP_BUF_INIT;
	uint8_t *want = cdp_xmalloc(REC);
	struct cdp_journal_iter *it;
	struct cdp_seg_header h;
	uint64_t next = from;
	int rc, bad = 0;

	it = cdp_journal_iter_new(j, PLAN, from, &err);
	if (!it) {
		fprintf(stderr, "journal_fill: iterate from %" PRIu64 ": %s\n", from, err.msg);
		return 1;
	}
	while (!bad && (rc = cdp_journal_iter_next(it, &seg, &h, &err)) == 1) {
		struct cdp_segment *s;

		if (cdp_seg_decode(seg.data, seg.len, NULL, &s, &err)) {
			fprintf(stderr, "journal_fill: segment %" PRIu64 ": %s\n", h.first_seq,
				err.msg);
			bad = 1;
			break;
		}
		for (uint32_t i = 0; i < s->h.nrecords && !bad; i++)
			bad = !record_matches(&s->recs[i], next++, want);
		cdp_segment_free(s);
		(*nsegs)++;
	}
	if (!bad && rc < 0) {
		fprintf(stderr, "journal_fill: iterate: %s\n", err.msg);
		bad = 1;
	}
	if (!bad && next != durable + 1) {
		fprintf(stderr, "journal_fill: segments end at seq %" PRIu64 ", durable seq is %"
			PRIu64 "\n", next - 1, durable);
		bad = 1;
	}
	cdp_journal_iter_free(it);
	cdp_buf_release(&seg);
	free(want);
	return bad;
}

/* Restores the newest point into @outdir and compares it with the image the seqs make. */
static int check_restore(struct cdp_journal *j, const char *outdir)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_point pt;
	uint8_t *model = cdp_xcalloc(1, VOL), *got = cdp_xmalloc(VOL);
	char path[4200];
	int fd, bad = 0;

	if (cdp_journal_point_find(j, PLAN, INT64_MAX, true, &pt, &err)) {
		fprintf(stderr, "journal_fill: newest consistent point: %s\n", err.msg);
		return 1;
	}
	if (cdp_journal_restore_to_dir(j, PLAN, pt.seq, false, outdir, &err)) {
		fprintf(stderr, "journal_fill: restore seq %" PRIu64 ": %s\n", pt.seq, err.msg);
		return 1;
	}
	for (uint64_t s = 4; s <= pt.seq; s++)
		fill_pattern(model + seq_off(s), REC, s, seq_off(s));
	snprintf(path, sizeof(path), "%s/vol0.img", outdir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || cdp_pread_full(fd, got, VOL, 0) != (long)VOL) {
		fprintf(stderr, "journal_fill: read %s: %s\n", path, strerror(errno));
		bad = 1;
	} else if (memcmp(got, model, VOL)) {
		size_t i = 0;

		while (i < VOL && !memcmp(got + i, model + i, REC))
			i += REC;
		fprintf(stderr, "journal_fill: restored seq %" PRIu64 ": block at %zu differs\n",
			pt.seq, i);
		bad = 1;
	}
	if (fd >= 0)
		close(fd);
	if (!bad)
		printf("restored_seq=%" PRIu64 "\n", pt.seq);
	free(model);
	free(got);
	return bad;
}

static int mode_check(const char *dir, uint64_t min_seq, const char *outdir)
{
	struct cdp_journal *j = jopen(dir);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_resume ri;
	uint64_t bad_seq = 0;
	unsigned nsegs = 0;
	int bad = 0;

	if (cdp_journal_resume_info(j, PLAN, &ri, &err)) {
		fprintf(stderr, "journal_fill: resume info: %s\n", err.msg);
		cdp_journal_close(j);
		return 1;
	}
	printf("durable_seq=%" PRIu64 "\n", ri.durable_seq);
	if (ri.durable_seq < min_seq) {
		fprintf(stderr, "journal_fill: durable seq %" PRIu64 " < %" PRIu64 " acknowledged: "
			"acknowledged segments were lost\n", ri.durable_seq, min_seq);
		bad = 1;
	}
	if (!bad && cdp_journal_scrub(j, PLAN, &bad_seq, &err)) {
		fprintf(stderr, "journal_fill: scrub: %s (seq %" PRIu64 ")\n", err.msg, bad_seq);
		bad = 1;
	}
	if (!bad)
		bad = check_segments(j, ri.horizon_seq + 1, ri.durable_seq, &nsegs);
	if (!bad) {
		printf("checked_segments=%u\n", nsegs);
		bad = check_restore(j, outdir);
	}
	cdp_journal_close(j);
	return bad;
}

static void __attribute__((noreturn)) usage(void)
{
	fprintf(stderr, "usage: journal_fill fill DIR\n"
		"       journal_fill check DIR MIN_SEQ OUTDIR\n"
		"       journal_fill append DIR COUNT\n");
	exit(2);
}

static uint64_t num(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || !*s || *end)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	int rc;

	if (argc == 3 && !strcmp(argv[1], "fill"))
		rc = mode_fill(argv[2]);
	else if (argc == 5 && !strcmp(argv[1], "check"))
		rc = mode_check(argv[2], num(argv[3]), argv[4]);
	else if (argc == 4 && !strcmp(argv[1], "append"))
		rc = mode_append(argv[2], (unsigned)num(argv[3]));
	else
		usage();
	fflush(stdout);
	return rc;
}
