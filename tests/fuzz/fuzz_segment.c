/*
 * tests/fuzz/fuzz_segment - libFuzzer target for the segment decoder.
 *
 * Feeds the input to cdp_seg_decode() twice: without expectations, and with
 * volume sizes (so the bounds checks run); then does it all again on a copy
 * whose body and header CRCs are fixed up, so mutations get past them. Any
 * failure must be -EBADMSG with a message. A segment that decodes must also
 * walk cleanly through the streaming API, and is then re-encoded from its
 * records (differential check): the encoder must accept every record the
 * decoder accepted, and the new segment must decode to the same header
 * fields, the same raw body byte for byte, and the same records. A mismatch
 * abort()s.
 *
 * Seed corpus: tests/fuzz/corpus/fuzz_segment, written by
 * `test_segment --write-corpus DIR`.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "storage/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint64_t vol_sizes[3] = { 1u << 20, 64u << 10, 16u << 20 };

#define CHECK(cond, ...)                                                                \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "fuzz_segment: check failed: %s: ", #cond);     \
			fprintf(stderr, __VA_ARGS__);                                   \
			fputc('\n', stderr);                                            \
			abort();                                                        \
		}                                                                       \
	} while (0)

/* The streaming API agrees with cdp_seg_decode() on a segment that decoded. */
static void walk(const uint8_t *data, size_t size, const struct cdp_segment *seg)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_seg_header h;
	struct cdp_record r;
	uint8_t *raw;
	size_t pos = 0;
	uint32_t n = 0;
	int rc;

	CHECK(cdp_seg_parse_header(data, size, &h, &err) == 0, "%s", err.msg);
	CHECK(h.first_seq == seg->h.first_seq && h.nrecords == seg->h.nrecords &&
	      h.raw_len == seg->h.raw_len && h.body_len == seg->h.body_len &&
	      memcmp(h.digest, seg->h.digest, CDP_DIGEST_LEN) == 0, "parsed header differs");
	CHECK(cdp_seg_check_body(&h, data + CDP_SEG_HDR_LEN, &err) == 0, "%s", err.msg);
	raw = cdp_xmalloc(h.raw_len);
	CHECK(cdp_seg_decompress(&h, data + CDP_SEG_HDR_LEN, raw, &err) == 0, "%s", err.msg);
	CHECK(h.raw_len == 0 || memcmp(raw, seg->raw, h.raw_len) == 0, "raw body differs");
	while ((rc = cdp_seg_next_record(raw, h.raw_len, &pos, &r, &err)) == 1) {
		CHECK(n < h.nrecords, "more records than nrecords %" PRIu32, h.nrecords);
		CHECK(r.seq == seg->recs[n].seq && r.length == seg->recs[n].length,
		      "record %" PRIu32 " differs", n);
		n++;
	}
	CHECK(rc == 0, "walk: %s", err.msg);
	CHECK(n == h.nrecords, "walked %" PRIu32 " of %" PRIu32 " records", n, h.nrecords);
	free(raw);
}

static void reencode(const struct cdp_segment *a)
{
	const struct cdp_seg_header *h = &a->h;
	struct cdp_seg_enc *enc = cdp_seg_enc_new(h->plan_id, h->epoch, h->first_seq, NULL);
	struct cdp_seg_seal_opts o = {
		.flags = h->flags,
		.compression = h->compression,
		/* Any level decodes alike; keep the fuzzer fast. */
		.level = h->level > 3 ? 3 : h->level,
		.t_first = h->t_first,
		.t_last = h->t_last,
	};
	struct cdp_seg_expect ex = {
		.prev_digest = cdp_digest_zero, .check_first_seq = true, .first_seq = h->first_seq,
		.check_plan = true, .plan_id = h->plan_id, .min_time = h->t_first,
	};
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf out = CDP_BUF_INIT;
	struct cdp_segment *b;
	int64_t t_last = h->t_last;
	uint8_t digest[CDP_DIGEST_LEN];

	/* The sync state before this segment travels in its flags. */
	cdp_seg_enc_set_sync_active(enc, h->flags & CDP_SEG_F_SYNC_ACTIVE);
	for (uint32_t i = 0; i < h->nrecords; i++)
		CHECK(cdp_seg_enc_add(enc, &a->recs[i], 0, &err) == 0,
		      "encoder refuses record %" PRIu32 " the decoder accepted: %s", i, err.msg);
	/* t_last 0 means "the last record's time" to the encoder. */
	if (h->nrecords && t_last == 0)
		t_last = a->recs[h->nrecords - 1].time_ns;
	CHECK(cdp_seg_enc_seal(enc, &o, &out, digest, &err) == 0, "seal: %s", err.msg);
	CHECK(cdp_seg_decode(out.data, out.len, &ex, &b, &err) == 0, "re-encoded: %s", err.msg);
	CHECK(b->h.version == h->version && b->h.flags == h->flags, "version/flags differ");
	CHECK(b->h.plan_id == h->plan_id && b->h.epoch == h->epoch, "plan/epoch differ");
	CHECK(b->h.first_seq == h->first_seq && b->h.last_seq == h->last_seq, "seqs differ");
	CHECK(b->h.t_first == h->t_first && b->h.t_last == t_last, "times differ");
	CHECK(b->h.nrecords == h->nrecords && b->h.raw_len == h->raw_len, "sizes differ");
	CHECK(h->raw_len == 0 || memcmp(a->raw, b->raw, h->raw_len) == 0, "raw bodies differ");
	CHECK(memcmp(b->h.digest, digest, CDP_DIGEST_LEN) == 0, "digest_out differs");
	for (uint32_t i = 0; i < h->nrecords; i++) {
		const struct cdp_record *x = &a->recs[i], *y = &b->recs[i];
		uint32_t plen = cdp_record_payload_len(x);

		CHECK(x->seq == y->seq && x->volume == y->volume && x->kind == y->kind &&
		      x->flags == y->flags && x->offset == y->offset && x->length == y->length &&
		      x->crc32c == y->crc32c && x->time_ns == y->time_ns,
		      "record %" PRIu32 " fields differ", i);
		CHECK(plen == 0 || memcmp(x->payload, y->payload, plen) == 0,
		      "record %" PRIu32 " payload differs", i);
	}
	cdp_segment_free(b);
	cdp_buf_release(&out);
	cdp_seg_enc_free(enc);
}

static void one(const uint8_t *data, size_t size)
{
	struct cdp_seg_expect ex = { .min_time = INT64_MIN, .volume_sizes = vol_sizes,
				     .nvolumes = CDP_ARRAY_SIZE(vol_sizes) };
	struct cdp_err e1 = CDP_ERR_INIT, e2 = CDP_ERR_INIT;
	struct cdp_segment *a = NULL, *b = NULL;
	int r1, r2;

	r1 = cdp_seg_decode(data, size, NULL, &a, &e1);
	r2 = cdp_seg_decode(data, size, &ex, &b, &e2);
	CHECK(r1 == 0 || (r1 == -EBADMSG && e1.code == r1 && e1.msg[0] && !a), "rc %d", r1);
	CHECK(r2 == 0 || (r2 == -EBADMSG && e2.code == r2 && e2.msg[0] && !b), "rc %d", r2);
	/* Expectations only add checks. */
	CHECK(r2 != 0 || r1 == 0, "decodes with volume sizes but not without: %s", e1.msg);
	if (r1 == 0) {
		walk(data, size, a);
		reencode(a);
	}
	cdp_segment_free(a);
	cdp_segment_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;
	uint32_t body_len;

	one(data, size);
	/*
	 * And again with the body and header CRCs made right, so that mutations
	 * reach the checks behind them (docs/format.md: body_len at 68, body
	 * CRC at 72, header CRC at 156 over the bytes before it).
	 */
	if (size < CDP_SEG_HDR_LEN)
		return 0;
	copy = cdp_xmalloc(size);
	memcpy(copy, data, size);
	body_len = cdp_get_le32(copy + 68);
	if (body_len == size - CDP_SEG_HDR_LEN)
		cdp_put_le32(copy + 72, cdp_crc32c(0, copy + CDP_SEG_HDR_LEN, body_len));
	cdp_put_le32(copy + 156, cdp_crc32c(0, copy, 156));
	one(copy, size);
	free(copy);
	return 0;
}
