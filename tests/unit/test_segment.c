/*
 * Unit tests of storage/segment: CRC32C vectors and chaining, round trips of
 * every record kind through the encoder and decoder (none and zstd, heartbeats,
 * chains of seals), encoder misuse, and one test per malformed input, each
 * checking the error code and that the message names the field.
 *
 * Malformed inputs are made from a valid segment stored raw (compression none),
 * whose bytes are edited at the offsets of docs/format.md and then "resealed"
 * (body CRC, chain digest and header CRC recomputed), so that the decoder gets
 * past every earlier check and reaches the one under test.
 *
 * `test_segment --write-corpus DIR` writes the seed corpus of fuzz_segment.
 */
#include "tests/unit/testutil.h"

#include <pthread.h>

#include <zstd.h>

#include "common/util.h"
#include "storage/segment.h"

/* Segment header offsets (docs/format.md, "Segments and records"). */
enum {
	H_MAGIC = 0, H_VERSION = 4, H_HDR_LEN = 6, H_FLAGS = 8, H_COMPRESSION = 12,
	H_LEVEL = 13, H_CIPHER = 14, H_RESERVED0 = 15, H_PLAN = 16, H_EPOCH = 24,
	H_FIRST_SEQ = 32, H_LAST_SEQ = 40, H_T_FIRST = 48, H_T_LAST = 56, H_RAW_LEN = 64,
	H_BODY_LEN = 68, H_BODY_CRC = 72, H_NRECORDS = 76, H_KEY_ID = 80, H_NONCE = 84,
	H_TAG = 96, H_DIGEST = 112, H_RESERVED1 = 144, H_HDR_CRC = 156,
};
/* Record header offsets. */
enum {
	R_SEQ = 0, R_VOLUME = 8, R_KIND = 12, R_FLAGS = 14, R_OFFSET = 16, R_LENGTH = 24,
	R_CRC = 28, R_TIME = 32,
};

#define PLAN 7
#define EPOCH 3
#define SEQ0 100
#define T0 1700000000000000000LL
#define NSTD 10

static const uint64_t vol_sizes[2] = { 2u << 20, 64u << 10 };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rnd() >> 24);
}

/* Text-like bytes zstd can squeeze. */
static void fill_text(uint8_t *p, size_t n, unsigned seed)
{
	static const char *const words[] = { "journal ", "segment ", "record ", "volume ",
					     "standby ", "replay ", "digest ", "point " };

	for (size_t i = 0; i < n;) {
		const char *w = words[(i / 7 + seed) % CDP_ARRAY_SIZE(words)];

		for (size_t k = 0; w[k] && i < n; k++)
			p[i++] = (uint8_t)w[k];
	}
}

static struct cdp_record rec_make(unsigned kind, uint16_t flags, uint32_t volume, uint64_t offset,
				  uint32_t length, int64_t t, const uint8_t *payload)
{
	struct cdp_record r = {
		.volume = volume, .kind = (uint16_t)kind, .flags = flags, .offset = offset,
		.length = length, .time_ns = t, .payload = payload,
	};

	return r;
}

/* Payloads of the standard records (static: the records borrow them). */
static uint8_t pay_w0[8192], pay_w6[512], pay_w9[4096];
static const uint8_t mark_name[] = "before-upgrade";
static uint8_t sync_begin[CDP_SYNC_INFO_LEN], sync_end[CDP_SYNC_INFO_LEN];

/* The standard segment's records: every kind, both RESYNC kinds, two volumes. */
static void std_records(struct cdp_record r[NSTD])
{
	struct cdp_sync_info si = { .sync_id = 42, .kind = CDP_SYNC_FULL };

	fill_text(pay_w0, sizeof(pay_w0), 1);
	fill_text(pay_w6, sizeof(pay_w6), 2);
	fill_text(pay_w9, sizeof(pay_w9), 3);
	cdp_sync_info_encode(&si, sync_begin);
	cdp_sync_info_encode(&si, sync_end);
	r[0] = rec_make(CDP_REC_WRITE, 0, 0, 4096, sizeof(pay_w0), T0, pay_w0);
	r[1] = rec_make(CDP_REC_ZERO, 0, 1, 0, 1024, T0 + 1, NULL);
	r[2] = rec_make(CDP_REC_TRIM, 0, 0, 512, 512, T0 + 2, NULL);
	r[3] = rec_make(CDP_REC_FLUSH, 0, 0, 0, 0, T0 + 2, NULL);
	r[4] = rec_make(CDP_REC_MARK, 0, 0, 0, sizeof(mark_name) - 1, T0 + 3, mark_name);
	r[5] = rec_make(CDP_REC_SYNC_BEGIN, 0, 0, 0, CDP_SYNC_INFO_LEN, T0 + 4, sync_begin);
	r[6] = rec_make(CDP_REC_WRITE, CDP_REC_F_RESYNC, 1, 512, sizeof(pay_w6), T0 + 5, pay_w6);
	r[7] = rec_make(CDP_REC_ZERO, CDP_REC_F_RESYNC, 0, 1u << 20, 4096, T0 + 5, NULL);
	r[8] = rec_make(CDP_REC_SYNC_END, 0, 0, 0, CDP_SYNC_INFO_LEN, T0 + 6, sync_end);
	r[9] = rec_make(CDP_REC_WRITE, 0, 0, 0, sizeof(pay_w9), T0 + 7, pay_w9);
	for (int i = 0; i < NSTD; i++)
		r[i].seq = SEQ0 + (uint64_t)i;
}

static void add_all(struct cdp_seg_enc *enc, struct cdp_record *r, int n)
{
	struct cdp_err err = CDP_ERR_INIT;

	for (int i = 0; i < n; i++) {
		int rc = cdp_seg_enc_add(enc, &r[i], CDP_SEG_ENC_COMPUTE_CRC, &err);

		if (rc)
			fail_msg("add record %d: %s", i, err.msg);
	}
}

/* Seals the standard segment (plan PLAN, first seq SEQ0, chained from zeros) into @out. */
static void build_std(struct cdp_buf *out, uint8_t comp, int level, uint8_t digest[CDP_DIGEST_LEN])
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, SEQ0, cdp_digest_zero);
	struct cdp_seg_seal_opts o = { .compression = comp, .level = level };
	struct cdp_record r[NSTD];
	struct cdp_err err = CDP_ERR_INIT;

	std_records(r);
	add_all(enc, r, NSTD);
	if (cdp_seg_enc_seal(enc, &o, out, digest, &err))
		fail_msg("seal: %s", err.msg);
	cdp_seg_enc_free(enc);
}

static struct cdp_seg_expect std_expect(void)
{
	struct cdp_seg_expect ex = {
		.prev_digest = cdp_digest_zero, .check_first_seq = true, .first_seq = SEQ0,
		.check_plan = true, .plan_id = PLAN, .min_time = INT64_MIN,
		.volume_sizes = vol_sizes, .nvolumes = 2,
	};

	return ex;
}

static void assert_records_equal(const struct cdp_record *a, const struct cdp_record *b, int n)
{
	for (int i = 0; i < n; i++) {
		uint32_t plen = cdp_record_payload_len(&a[i]);

		assert_int_equal(a[i].seq, b[i].seq);
		assert_int_equal(a[i].volume, b[i].volume);
		assert_int_equal(a[i].kind, b[i].kind);
		assert_int_equal(a[i].flags, b[i].flags);
		assert_int_equal(a[i].offset, b[i].offset);
		assert_int_equal(a[i].length, b[i].length);
		assert_int_equal(a[i].time_ns, b[i].time_ns);
		assert_int_equal(cdp_record_payload_len(&b[i]), plen);
		assert_int_equal(b[i].crc32c, plen ? cdp_crc32c(0, a[i].payload, plen) : 0);
		if (plen)
			assert_memory_equal(a[i].payload, b[i].payload, plen);
		else
			assert_null(b[i].payload);
	}
}

/* Recomputes the header CRC after raw header edits. */
static void fix_hdr_crc(uint8_t *seg)
{
	cdp_put_le32(seg + H_HDR_CRC, cdp_crc32c(0, seg, H_HDR_CRC));
}

/*
 * After edits to the body of a segment stored raw: recomputes the body CRC,
 * the chain digest (from zeros) and the header CRC.
 */
static void reseal(uint8_t *seg)
{
	uint32_t body_len = cdp_get_le32(seg + H_BODY_LEN);
	const uint8_t *body = seg + CDP_SEG_HDR_LEN;

	assert_int_equal(seg[H_COMPRESSION], CDP_COMP_NONE);
	cdp_put_le32(seg + H_BODY_CRC, cdp_crc32c(0, body, body_len));
	assert_int_equal(cdp_chain_digest(cdp_digest_zero, body, body_len, seg + H_DIGEST, NULL),
			 0);
	fix_hdr_crc(seg);
}

/* Record @i of a segment stored raw (walks the intact headers before it). */
static uint8_t *rec_at(uint8_t *seg, int i)
{
	uint8_t *p = seg + CDP_SEG_HDR_LEN;

	while (i-- > 0) {
		struct cdp_record r = { .kind = cdp_get_le16(p + R_KIND),
					.length = cdp_get_le32(p + R_LENGTH) };

		p += cdp_seg_record_size(cdp_record_payload_len(&r));
	}
	return p;
}

/* Recomputes the payload CRC of the record at @p (after a payload edit). */
static void fix_rec_crc(uint8_t *p)
{
	struct cdp_record r = { .kind = cdp_get_le16(p + R_KIND),
				.length = cdp_get_le32(p + R_LENGTH) };
	uint32_t plen = cdp_record_payload_len(&r);

	cdp_put_le32(p + R_CRC, plen ? cdp_crc32c(0, p + CDP_REC_HDR_LEN, plen) : 0);
}

/* Reads a header at the documented offsets, checking nothing (the test's own reader). */
static void read_header(const uint8_t *p, struct cdp_seg_header *h)
{
	memset(h, 0, sizeof(*h));
	h->version = cdp_get_le16(p + H_VERSION);
	h->flags = cdp_get_le32(p + H_FLAGS);
	h->compression = p[H_COMPRESSION];
	h->level = (int8_t)p[H_LEVEL];
	h->cipher = p[H_CIPHER];
	h->plan_id = cdp_get_le64(p + H_PLAN);
	h->epoch = cdp_get_le64(p + H_EPOCH);
	h->first_seq = cdp_get_le64(p + H_FIRST_SEQ);
	h->last_seq = cdp_get_le64(p + H_LAST_SEQ);
	h->t_first = (int64_t)cdp_get_le64(p + H_T_FIRST);
	h->t_last = (int64_t)cdp_get_le64(p + H_T_LAST);
	h->raw_len = cdp_get_le32(p + H_RAW_LEN);
	h->body_len = cdp_get_le32(p + H_BODY_LEN);
	h->body_crc32c = cdp_get_le32(p + H_BODY_CRC);
	h->nrecords = cdp_get_le32(p + H_NRECORDS);
	h->key_id = cdp_get_le32(p + H_KEY_ID);
	memcpy(h->nonce, p + H_NONCE, sizeof(h->nonce));
	memcpy(h->tag, p + H_TAG, sizeof(h->tag));
	memcpy(h->digest, p + H_DIGEST, CDP_DIGEST_LEN);
}

/* Lets the test edit the header of @seg, then writes it back with a valid header CRC. */
#define EDIT_HEADER(seg, h, stmt)                                                       \
	do {                                                                            \
		struct cdp_seg_header h;                                                \
		read_header((seg)->data, &h);                                           \
		stmt;                                                                   \
		cdp_seg_write_header(&h, (seg)->data);                                  \
	} while (0)

/* Edits record @i of the standard segment (stored raw) and reseals it. */
#define EDIT_RECORD(b, i, p, stmt)                                                     \
	do {                                                                           \
		uint8_t *p = rec_at((b)->data, (i));                                   \
		stmt;                                                                  \
		reseal((b)->data);                                                     \
	} while (0)

static int decode(const struct cdp_buf *b, const struct cdp_seg_expect *ex, struct cdp_err *err)
{
	struct cdp_segment *seg = (struct cdp_segment *)1;
	int rc = cdp_seg_decode(b->data, b->len, ex, &seg, err);

	if (rc < 0)
		assert_null(seg);
	cdp_segment_free(seg);
	return rc;
}

/* Decodes @b with the standard expectations and asserts -EBADMSG naming @needle. */
#define assert_decode_fails(b, needle)                                                  \
	do {                                                                            \
		struct cdp_seg_expect ex_ = std_expect();                               \
		struct cdp_err err_ = CDP_ERR_INIT;                                     \
		assert_err(&err_, decode((b), &ex_, &err_), -EBADMSG, (needle));        \
	} while (0)

/* Decodes @b without expectations and asserts -EBADMSG naming @needle. */
#define assert_err_decode_plain(b, needle)                                              \
	do {                                                                            \
		struct cdp_err err_ = CDP_ERR_INIT;                                     \
		assert_err(&err_, decode((b), NULL, &err_), -EBADMSG, (needle));        \
	} while (0)

static unsigned one_kind(struct cdp_buf *b, int i, uint8_t comp);

/* ---- CRC32C and SHA-256 --------------------------------------------------- */

static void test_crc32c_rfc3720_vectors(void **state)
{
	uint8_t b[32];

	memset(b, 0, sizeof(b));
	assert_int_equal(cdp_crc32c(0, b, 32), 0x8A9136AA);
	memset(b, 0xff, sizeof(b));
	assert_int_equal(cdp_crc32c(0, b, 32), 0x62A8AB43);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	assert_int_equal(cdp_crc32c(0, b, 32), 0x46DD794E);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)(31 - i);
	assert_int_equal(cdp_crc32c(0, b, 32), 0x113FDB5C);
	assert_int_equal(cdp_crc32c(0, "123456789", 9), 0xE3069283);
	assert_int_equal(cdp_crc32c(0, NULL, 0), 0);
	assert_int_equal(cdp_crc32c(0x12345678, b, 0), 0x12345678);
}

static void test_crc32c_chains(void **state)
{
	uint8_t buf[3000];

	fill_random(buf, sizeof(buf));
	for (int round = 0; round < 200; round++) {
		size_t len = rnd() % sizeof(buf), cut = len ? rnd() % (len + 1) : 0;
		uint32_t whole = cdp_crc32c(0, buf, len);

		assert_int_equal(cdp_crc32c(cdp_crc32c(0, buf, cut), buf + cut, len - cut), whole);
	}
}

static void test_chain_digest_known_value(void **state)
{
	/* (head -c 32 /dev/zero; printf abc) | sha256sum */
	static const uint8_t want[CDP_DIGEST_LEN] = {
		0x36, 0x5a, 0xa7, 0xd8, 0xf7, 0xf9, 0x40, 0x2c, 0x4b, 0x94, 0x34, 0x50,
		0x2b, 0x4c, 0xc8, 0x9d, 0xdb, 0x09, 0xfe, 0x50, 0xd7, 0xcd, 0x95, 0xb4,
		0x93, 0xb8, 0x34, 0xc6, 0x2d, 0x5a, 0x53, 0x70,
	};
	uint8_t d[CDP_DIGEST_LEN];

	assert_int_equal(cdp_chain_digest(cdp_digest_zero, "abc", 3, d, NULL), 0);
	assert_memory_equal(d, want, CDP_DIGEST_LEN);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_roundtrip_every_kind(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_record r[NSTD];
	struct cdp_seg_expect ex = std_expect();
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t digest[CDP_DIGEST_LEN], want[CDP_DIGEST_LEN];
	size_t raw_len = 0;

	build_std(&b, CDP_COMP_NONE, 0, digest);
	std_records(r);
	for (int i = 0; i < NSTD; i++)
		raw_len += cdp_seg_record_size(cdp_record_payload_len(&r[i]));
	assert_int_equal(b.len, CDP_SEG_HDR_LEN + raw_len);
	if (cdp_seg_decode(b.data, b.len, &ex, &seg, &err))
		fail_msg("decode: %s", err.msg);
	assert_int_equal(seg->h.version, CDP_SEG_VERSION);
	assert_int_equal(seg->h.plan_id, PLAN);
	assert_int_equal(seg->h.epoch, EPOCH);
	assert_int_equal(seg->h.first_seq, SEQ0);
	assert_int_equal(seg->h.last_seq, SEQ0 + NSTD - 1);
	assert_int_equal(seg->h.nrecords, NSTD);
	assert_int_equal(seg->h.t_first, T0);
	assert_int_equal(seg->h.t_last, T0 + 7);
	assert_int_equal(seg->h.raw_len, raw_len);
	assert_int_equal(seg->h.body_len, raw_len);
	assert_int_equal(seg->h.compression, CDP_COMP_NONE);
	assert_int_equal(seg->h.level, 0);
	assert_int_equal(seg->h.cipher, CDP_CIPHER_NONE);
	/* Summary flags: it holds a bookmark and a closed sync span. */
	assert_int_equal(seg->h.flags, CDP_SEG_F_MARK | CDP_SEG_F_SYNC);
	assert_memory_equal(seg->h.digest, digest, CDP_DIGEST_LEN);
	assert_int_equal(cdp_chain_digest(cdp_digest_zero, seg->raw, raw_len, want, NULL), 0);
	assert_memory_equal(digest, want, CDP_DIGEST_LEN);
	assert_records_equal(r, seg->recs, NSTD);
	cdp_segment_free(seg);

	/* With no expectations at all, too. */
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.nrecords, NSTD);
	cdp_segment_free(seg);
	cdp_buf_release(&b);
}

static void roundtrip_zstd(int level, int want_level)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_record r[NSTD];
	struct cdp_seg_expect ex = std_expect();
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	build_std(&b, CDP_COMP_ZSTD, level, NULL);
	std_records(r);
	if (cdp_seg_decode(b.data, b.len, &ex, &seg, &err))
		fail_msg("decode level %d: %s", level, err.msg);
	assert_int_equal(seg->h.compression, CDP_COMP_ZSTD);
	assert_int_equal(seg->h.level, want_level);
	assert_true(seg->h.body_len < seg->h.raw_len);
	assert_int_equal(b.len, CDP_SEG_HDR_LEN + seg->h.body_len);
	assert_records_equal(r, seg->recs, NSTD);
	cdp_segment_free(seg);
	cdp_buf_release(&b);
}

static void test_roundtrip_zstd_levels(void **state)
{
	roundtrip_zstd(-5, -5);
	roundtrip_zstd(1, 1);
	roundtrip_zstd(3, 3);
	roundtrip_zstd(0, ZSTD_defaultCLevel());	/* 0 = zstd's default, recorded as such */
}

/* The fastest level barely compresses (zeros still do): recorded clamped to the int8 field. */
static void test_roundtrip_zstd_min_level(void **state)
{
	static uint8_t zeros[512 << 10];
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_seg_seal_opts o = { .compression = CDP_COMP_ZSTD, .level = ZSTD_minCLevel() };
	struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 0, sizeof(zeros), 5, zeros);
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	r.seq = 1;
	assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, NULL, &err), 0);
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.compression, CDP_COMP_ZSTD);
	assert_int_equal(seg->h.level, INT8_MIN);
	assert_memory_equal(seg->recs[0].payload, zeros, sizeof(zeros));
	cdp_segment_free(seg);
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

static void test_incompressible_body_is_stored_raw(void **state)
{
	static uint8_t pay[64 << 10];
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_seg_seal_opts o = { .compression = CDP_COMP_ZSTD, .level = 1 };
	struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 0, sizeof(pay), 5, pay);
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	fill_random(pay, sizeof(pay));
	r.seq = 1;
	assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, NULL, &err), 0);
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.compression, CDP_COMP_NONE);
	assert_int_equal(seg->h.level, 0);
	assert_int_equal(seg->h.body_len, seg->h.raw_len);
	assert_int_equal(seg->h.raw_len, cdp_seg_record_size(sizeof(pay)));
	assert_memory_equal(seg->recs[0].payload, pay, sizeof(pay));
	assert_false(seg->raw_borrowed);
	assert_ptr_not_equal(seg->raw, b.data + CDP_SEG_HDR_LEN);
	cdp_segment_free(seg);

	/* borrow_raw: the same checks, the body used in place. */
	{
		struct cdp_seg_expect ex = { .min_time = INT64_MIN, .borrow_raw = true };

		assert_int_equal(cdp_seg_decode(b.data, b.len, &ex, &seg, &err), 0);
		assert_true(seg->raw_borrowed);
		assert_ptr_equal(seg->raw, b.data + CDP_SEG_HDR_LEN);
		assert_memory_equal(seg->recs[0].payload, pay, sizeof(pay));
		cdp_segment_free(seg);
		/* and a bad record CRC is still found in the borrowed body */
		b.data[CDP_SEG_HDR_LEN + CDP_REC_HDR_LEN + 10] ^= 1;
		{
			struct cdp_seg_header h;

			assert_int_equal(cdp_seg_parse_header(b.data, b.len, &h, &err), 0);
			h.body_crc32c = cdp_crc32c(0, b.data + CDP_SEG_HDR_LEN, h.body_len);
			cdp_seg_write_header(&h, b.data);
		}
		assert_int_equal(cdp_seg_decode(b.data, b.len, &ex, &seg, &err), -EBADMSG);
		assert_null(seg);
	}
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

/*
 * With a spare buffer, a segment stored raw leaves in the records' own
 * buffer (no copy) and the spare becomes the encoder's: the bytes are the
 * same as a copying seal's, and the chain goes on across the exchange.
 */
static void test_seal_into_spare_is_the_same_segment(void **state)
{
	static uint8_t pay[256 << 10];
	struct cdp_seg_enc *a = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_seg_enc *b = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_seg_seal_opts o = { .compression = CDP_COMP_ZSTD, .level = 1 };
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t prev[CDP_DIGEST_LEN];
	uint64_t seq = 1;

	(void)state;
	memcpy(prev, cdp_digest_zero, CDP_DIGEST_LEN);
	for (int s = 0; s < 3; s++) {
		struct cdp_buf copied = CDP_BUF_INIT, spare = CDP_BUF_INIT;
		struct cdp_seg_expect ex = { .prev_digest = prev, .check_first_seq = true,
					     .first_seq = seq, .min_time = T0 };
		struct cdp_segment *seg;
		uint8_t *given;

		for (int i = 0; i < 4; i++, seq++) {
			struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, (uint64_t)i << 18,
						       sizeof(pay), T0 + (int64_t)seq, pay);

			fill_random(pay, sizeof(pay));	/* zstd gains nothing: stored raw */
			r.seq = seq;
			assert_int_equal(cdp_seg_enc_add(a, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
			assert_int_equal(cdp_seg_enc_add(b, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
		}
		assert_int_equal(cdp_seg_enc_seal(a, &o, &copied, NULL, &err), 0);
		cdp_buf_reserve_exact(&spare, CDP_SEG_ENC_SPARE);
		given = spare.data;
		assert_int_equal(cdp_seg_enc_seal(b, &o, &spare, NULL, &err), 0);
		/* Exchanged, not copied: the spare went to the encoder. */
		if (spare.data == given)
			fail_msg("segment %d: copied into the spare, not exchanged", s);
		assert_true(spare.cap >= CDP_SEG_ENC_SPARE);
		assert_int_equal(spare.len, copied.len);
		assert_memory_equal(spare.data, copied.data, copied.len);
		assert_int_equal(cdp_seg_enc_raw_len(b), 0);
		if (cdp_seg_decode(spare.data, spare.len, &ex, &seg, &err))
			fail_msg("decode segment %d: %s", s, err.msg);
		assert_int_equal(seg->h.compression, CDP_COMP_NONE);
		assert_memory_equal(seg->recs[3].payload, pay, sizeof(pay));
		memcpy(prev, seg->h.digest, CDP_DIGEST_LEN);
		cdp_segment_free(seg);
		cdp_buf_release(&copied);
		cdp_buf_release(&spare);
	}
	/* A spare that is too small, or a non-empty @out, is copied into. */
	{
		struct cdp_buf small = CDP_BUF_INIT;
		struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 0, sizeof(pay), T0 + 100, pay);
		uint8_t *given;

		r.seq = seq;
		assert_int_equal(cdp_seg_enc_add(b, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
		cdp_buf_reserve_exact(&small, CDP_SEG_ENC_SPARE - 1);
		given = small.data;
		assert_int_equal(cdp_seg_enc_seal(b, &o, &small, NULL, &err), 0);
		assert_ptr_equal(small.data, given);
		assert_int_equal(small.len, CDP_SEG_HDR_LEN + cdp_seg_record_size(sizeof(pay)));
		cdp_buf_release(&small);
	}
	cdp_seg_enc_free(a);
	cdp_seg_enc_free(b);
}

static void test_heartbeat_round_trip(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 50, cdp_digest_zero);
	struct cdp_seg_seal_opts o = { .compression = CDP_COMP_ZSTD, .level = 1,
				       .t_first = T0, .t_last = T0 + 1000 };
	struct cdp_seg_expect ex = { .prev_digest = cdp_digest_zero, .check_first_seq = true,
				     .first_seq = 50, .min_time = INT64_MIN };
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t d[CDP_DIGEST_LEN], want[CDP_DIGEST_LEN];

	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, d, &err), 0);
	assert_int_equal(b.len, CDP_SEG_HDR_LEN);
	if (cdp_seg_decode(b.data, b.len, &ex, &seg, &err))
		fail_msg("decode: %s", err.msg);
	assert_int_equal(seg->h.nrecords, 0);
	assert_int_equal(seg->h.raw_len, 0);
	assert_int_equal(seg->h.body_len, 0);
	assert_int_equal(seg->h.first_seq, 50);
	assert_int_equal(seg->h.last_seq, 49);
	assert_int_equal(seg->h.compression, CDP_COMP_NONE);
	assert_true(seg->h.flags & CDP_SEG_F_POINT_END);	/* the encoder sets it */
	assert_int_equal(seg->h.t_first, T0);
	assert_int_equal(seg->h.t_last, T0 + 1000);
	assert_int_equal(cdp_chain_digest(cdp_digest_zero, "", 0, want, NULL), 0);
	assert_memory_equal(seg->h.digest, want, CDP_DIGEST_LEN);
	assert_memory_equal(d, want, CDP_DIGEST_LEN);
	cdp_segment_free(seg);
	assert_int_equal(cdp_seg_enc_next_seq(enc), 50);	/* a heartbeat uses no seq */
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

static void test_chain_over_several_seals(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t prev[CDP_DIGEST_LEN], d[CDP_DIGEST_LEN];
	struct cdp_buf segs[5] = { CDP_BUF_INIT, CDP_BUF_INIT, CDP_BUF_INIT, CDP_BUF_INIT,
				   CDP_BUF_INIT };
	static const int nrec[5] = { 3, 0, 1, 7, 2 };	/* one heartbeat in the middle */
	static uint8_t pay[1024];
	uint64_t seq = 1;
	int64_t t = T0;
	int rc;

	fill_text(pay, sizeof(pay), 9);
	for (int s = 0; s < 5; s++) {
		struct cdp_seg_seal_opts o = { .compression = s % 2 ? CDP_COMP_NONE : CDP_COMP_ZSTD,
					       .level = 1, .flags = CDP_SEG_F_POINT_END,
					       .t_first = t, .t_last = t };

		for (int i = 0; i < nrec[s]; i++) {
			struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 512u * (unsigned)i,
						       sizeof(pay), ++t, pay);

			r.seq = seq++;
			assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err),
					 0);
		}
		if (nrec[s])
			o.t_last = 0;
		assert_int_equal(cdp_seg_enc_nrecords(enc), nrec[s]);
		assert_int_equal(cdp_seg_enc_seal(enc, &o, &segs[s], d, &err), 0);
		assert_int_equal(cdp_seg_enc_nrecords(enc), 0);
		assert_int_equal(cdp_seg_enc_raw_len(enc), 0);
		assert_int_equal(cdp_seg_enc_next_seq(enc), seq);
	}
	memcpy(prev, cdp_digest_zero, CDP_DIGEST_LEN);
	seq = 1;
	for (int s = 0; s < 5; s++) {
		struct cdp_seg_expect ex = { .prev_digest = prev, .check_first_seq = true,
					     .first_seq = seq, .min_time = T0 };
		struct cdp_segment *seg;

		if (cdp_seg_decode(segs[s].data, segs[s].len, &ex, &seg, &err))
			fail_msg("decode segment %d: %s", s, err.msg);
		assert_int_equal(seg->h.first_seq, seq);
		assert_int_equal(seg->h.last_seq, seq + (uint64_t)nrec[s] - 1);
		assert_int_equal(seg->h.nrecords, nrec[s]);
		memcpy(prev, seg->h.digest, CDP_DIGEST_LEN);
		seq += (uint64_t)nrec[s];
		cdp_segment_free(seg);
		/* Out of order, the chain (or the seq) breaks. */
		if (s > 0) {
			rc = cdp_seg_decode(segs[s - 1].data, segs[s - 1].len, &ex, &seg, &err);
			assert_err(&err, rc, -EBADMSG, "segment: ");
		}
	}
	for (int s = 0; s < 5; s++)
		cdp_buf_release(&segs[s]);
	assert_memory_equal(prev, d, CDP_DIGEST_LEN);	/* digest_out of the last seal */
	cdp_seg_enc_free(enc);
}

static void test_t_last_override(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_record r = rec_make(CDP_REC_FLUSH, 0, 0, 0, 0, T0, NULL);
	struct cdp_seg_seal_opts o = { .t_last = T0 + 500, .flags = CDP_SEG_F_POINT_END };
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	r.seq = 1;
	assert_int_equal(cdp_seg_enc_add(enc, &r, 0, &err), 0);
	o.t_last = T0 - 1;
	assert_err(&err, cdp_seg_enc_seal(enc, &o, &b, NULL, &err), -EINVAL, "t_last");
	assert_int_equal(b.len, 0);
	o.t_last = T0 + 500;
	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, NULL, &err), 0);
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.t_first, T0);
	assert_int_equal(seg->h.t_last, T0 + 500);
	assert_int_equal(seg->h.flags, CDP_SEG_F_POINT_END);
	cdp_segment_free(seg);
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

static void test_seal_appends_to_out(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	cdp_buf_append(&b, "prefix", 6);
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	assert_memory_equal(b.data, "prefix", 6);
	assert_int_equal(cdp_seg_decode(b.data + 6, b.len - 6, NULL, &seg, &err), 0);
	cdp_segment_free(seg);
	cdp_buf_release(&b);
}

static void test_encoder_fills_to_the_limit(void **state)
{
	static uint8_t big[CDP_REC_MAX_WRITE];
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_seg_seal_opts o = { .compression = CDP_COMP_ZSTD, .level = -5 };
	struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 0, CDP_REC_MAX_WRITE, T0, big);
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seq = 1;

	fill_text(big, sizeof(big), 4);
	/* An empty encoder takes the largest write. */
	r.seq = seq++;
	assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
	/* Then only what fits: a 512-byte write does not, a mark does. */
	r = rec_make(CDP_REC_WRITE, 0, 0, 0, 512, T0, big);
	r.seq = seq;
	assert_err(&err, cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), -E2BIG,
		   "do not fit");
	assert_int_equal(cdp_seg_enc_nrecords(enc), 1);
	r = rec_make(CDP_REC_MARK, 0, 0, 0, CDP_MARK_NAME_MAX, T0, big);
	r.seq = seq++;
	assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, NULL, &err), 0);
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.nrecords, 2);
	assert_memory_equal(seg->recs[0].payload, big, CDP_REC_MAX_WRITE);
	cdp_segment_free(seg);

	/* Exactly CDP_SEG_MAX_RAW: 63 writes of 64 KiB and one of 62976 bytes. */
	for (int i = 0; i < 64; i++) {
		r = rec_make(CDP_REC_WRITE, 0, 0, 0, i < 63 ? 65536 : 62976, T0, big);
		r.seq = seq++;
		assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), 0);
	}
	assert_int_equal(cdp_seg_enc_raw_len(enc), CDP_SEG_MAX_RAW);
	r = rec_make(CDP_REC_FLUSH, 0, 0, 0, 0, T0, NULL);
	r.seq = seq;
	assert_err(&err, cdp_seg_enc_add(enc, &r, 0, &err), -E2BIG, "do not fit");
	b.len = 0;
	assert_int_equal(cdp_seg_enc_seal(enc, &o, &b, NULL, &err), 0);
	assert_int_equal(cdp_seg_decode(b.data, b.len, NULL, &seg, &err), 0);
	assert_int_equal(seg->h.raw_len, CDP_SEG_MAX_RAW);
	assert_int_equal(seg->h.nrecords, 64);
	cdp_segment_free(seg);

	/* A write larger than any segment is invalid, not "seal first". */
	r = rec_make(CDP_REC_WRITE, 0, 0, 0, CDP_REC_MAX_WRITE + CDP_SECTOR, T0, big);
	r.seq = seq;
	assert_err(&err, cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err), -EINVAL,
		   "write length");
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

static void test_streaming_api_matches_decode(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_header h;
	struct cdp_record r[NSTD], got[NSTD];
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t *raw, d[CDP_DIGEST_LEN];
	size_t pos = 0;
	int n = 0, rc;

	build_std(&b, CDP_COMP_ZSTD, 3, NULL);
	std_records(r);
	assert_int_equal(cdp_seg_parse_header(b.data, b.len, &h, &err), 0);
	assert_int_equal(cdp_seg_check_body(&h, b.data + CDP_SEG_HDR_LEN, &err), 0);
	raw = cdp_xmalloc(h.raw_len);
	assert_int_equal(cdp_seg_decompress(&h, b.data + CDP_SEG_HDR_LEN, raw, &err), 0);
	while ((rc = cdp_seg_next_record(raw, h.raw_len, &pos, &got[n], &err)) == 1)
		n++;
	assert_int_equal(rc, 0);
	assert_int_equal(n, NSTD);
	assert_int_equal(pos, h.raw_len);
	assert_records_equal(r, got, NSTD);
	assert_int_equal(cdp_chain_digest(cdp_digest_zero, raw, h.raw_len, d, &err), 0);
	assert_memory_equal(d, h.digest, CDP_DIGEST_LEN);
	free(raw);
	cdp_buf_release(&b);
}

struct decoder_arg {
	const struct cdp_buf *segs;	/* [0] zstd, [1] corrupt zstd */
	int ok, rejected;
};

static void *decode_many(void *p)
{
	struct decoder_arg *a = p;

	for (int i = 0; i < 40; i++) {
		const struct cdp_buf *b = &a->segs[i % 2];
		struct cdp_seg_expect ex = std_expect();
		struct cdp_segment *seg;
		struct cdp_err err = CDP_ERR_INIT;

		if (cdp_seg_decode(b->data, b->len, &ex, &seg, &err) == 0) {
			a->ok += seg->h.nrecords == NSTD &&
				 memcmp(seg->recs[0].payload, pay_w0, sizeof(pay_w0)) == 0;
			cdp_segment_free(seg);
		} else {
			a->rejected += err.code == -EBADMSG;
		}
	}
	return NULL;
}

/* Decoders run on many threads at once (each has its own zstd context). */
static void test_decode_from_many_threads(void **state)
{
	struct cdp_buf segs[2] = { CDP_BUF_INIT, CDP_BUF_INIT };
	struct decoder_arg a[4];
	pthread_t t[4];
	uint32_t n;

	build_std(&segs[0], CDP_COMP_ZSTD, 1, NULL);
	build_std(&segs[1], CDP_COMP_ZSTD, 1, NULL);
	/* A frame that fails mid-decompression, to leave a context in an error state. */
	n = cdp_get_le32(segs[1].data + H_BODY_LEN);
	for (uint32_t i = 12; i < n; i += 7)
		segs[1].data[CDP_SEG_HDR_LEN + i] ^= 0x5a;
	EDIT_HEADER(&segs[1], h, h.body_crc32c = cdp_crc32c(0, segs[1].data + CDP_SEG_HDR_LEN, n));
	for (int i = 0; i < 4; i++)
		a[i] = (struct decoder_arg){ segs, 0, 0 };
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, decode_many, &a[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(a[i].ok, 20);
		assert_int_equal(a[i].rejected, 20);
	}
	cdp_buf_release(&segs[0]);
	cdp_buf_release(&segs[1]);
}

/* The byte layout is the documented one (docs/format.md). */
static void test_layout_matches_format_doc(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	uint8_t d[CDP_DIGEST_LEN], *p;

	build_std(&b, CDP_COMP_NONE, 0, d);
	p = b.data;
	assert_int_equal(cdp_get_le32(p + H_MAGIC), CDP_SEG_MAGIC);
	assert_memory_equal(p, "CDPS", 4);
	assert_int_equal(cdp_get_le16(p + H_VERSION), 1);
	assert_int_equal(cdp_get_le16(p + H_HDR_LEN), CDP_SEG_HDR_LEN);
	assert_int_equal(cdp_get_le32(p + H_FLAGS), CDP_SEG_F_MARK | CDP_SEG_F_SYNC);
	assert_int_equal(CDP_SEG_F_POINT_END | CDP_SEG_F_SYNC_ACTIVE | CDP_SEG_F_MARK |
			 CDP_SEG_F_SYNC, 0xf);
	assert_int_equal(p[H_COMPRESSION], 0);
	assert_int_equal(p[H_LEVEL], 0);
	assert_int_equal(p[H_CIPHER], 0);
	assert_int_equal(cdp_get_le64(p + H_PLAN), PLAN);
	assert_int_equal(cdp_get_le64(p + H_EPOCH), EPOCH);
	assert_int_equal(cdp_get_le64(p + H_FIRST_SEQ), SEQ0);
	assert_int_equal(cdp_get_le64(p + H_LAST_SEQ), SEQ0 + NSTD - 1);
	assert_int_equal(cdp_get_le64(p + H_T_FIRST), T0);
	assert_int_equal(cdp_get_le64(p + H_T_LAST), T0 + 7);
	assert_int_equal(cdp_get_le32(p + H_RAW_LEN), b.len - CDP_SEG_HDR_LEN);
	assert_int_equal(cdp_get_le32(p + H_BODY_LEN), b.len - CDP_SEG_HDR_LEN);
	assert_int_equal(cdp_get_le32(p + H_BODY_CRC),
			 cdp_crc32c(0, p + CDP_SEG_HDR_LEN, b.len - CDP_SEG_HDR_LEN));
	assert_int_equal(cdp_get_le32(p + H_NRECORDS), NSTD);
	assert_memory_equal(p + H_DIGEST, d, CDP_DIGEST_LEN);
	for (int i = H_KEY_ID; i < H_DIGEST; i++)
		assert_int_equal(p[i], 0);
	for (int i = H_RESERVED1; i < H_HDR_CRC; i++)
		assert_int_equal(p[i], 0);
	assert_int_equal(cdp_get_le32(p + H_HDR_CRC), cdp_crc32c(0, p, H_HDR_CRC));
	/* The first record: WRITE vol 0 offset 4096 length 8192. */
	p = rec_at(b.data, 0);
	assert_int_equal(cdp_get_le64(p + R_SEQ), SEQ0);
	assert_int_equal(cdp_get_le32(p + R_VOLUME), 0);
	assert_int_equal(cdp_get_le16(p + R_KIND), CDP_REC_WRITE);
	assert_int_equal(cdp_get_le16(p + R_FLAGS), 0);
	assert_int_equal(cdp_get_le64(p + R_OFFSET), 4096);
	assert_int_equal(cdp_get_le32(p + R_LENGTH), 8192);
	assert_int_equal(cdp_get_le32(p + R_CRC), cdp_crc32c(0, pay_w0, sizeof(pay_w0)));
	assert_int_equal(cdp_get_le64(p + R_TIME), T0);
	assert_memory_equal(p + CDP_REC_HDR_LEN, pay_w0, sizeof(pay_w0));
	/* The second: ZERO on volume 1, no payload, right behind. */
	p += CDP_REC_HDR_LEN + sizeof(pay_w0);
	assert_int_equal(cdp_get_le64(p + R_SEQ), SEQ0 + 1);
	assert_int_equal(cdp_get_le32(p + R_VOLUME), 1);
	assert_int_equal(cdp_get_le16(p + R_KIND), CDP_REC_ZERO);
	assert_int_equal(cdp_get_le32(p + R_CRC), 0);
	/* RESYNC is bit 0 of the flags. */
	assert_int_equal(cdp_get_le16(rec_at(b.data, 6) + R_FLAGS), 1);
	cdp_buf_release(&b);
}

static void test_sync_info_codec(void **state)
{
	struct cdp_sync_info si = { .sync_id = 0x0102030405060708ull,
				    .kind = CDP_SYNC_INCREMENTAL };
	struct cdp_sync_info got;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t b[CDP_SYNC_INFO_LEN];

	cdp_sync_info_encode(&si, b);
	assert_int_equal(b[0], 0x08);
	assert_int_equal(cdp_get_le32(b + 8), CDP_SYNC_INCREMENTAL);
	assert_int_equal(cdp_sync_info_decode(b, sizeof(b), &got, &err), 0);
	assert_int_equal(got.sync_id, si.sync_id);
	assert_int_equal(got.kind, si.kind);
	assert_err(&err, cdp_sync_info_decode(b, 11, &got, &err), -EBADMSG, "length 11");
	cdp_put_le32(b + 8, 3);
	assert_err(&err, cdp_sync_info_decode(b, sizeof(b), &got, &err), -EBADMSG, "kind 3");
}

static void test_kind_names(void **state)
{
	assert_string_equal(cdp_rec_kind_name(CDP_REC_WRITE), "write");
	assert_string_equal(cdp_rec_kind_name(CDP_REC_SYNC_END), "sync-end");
	assert_string_equal(cdp_rec_kind_name(0), "unknown");
	assert_string_equal(cdp_rec_kind_name(99), "unknown");
}

/* ---- encoder misuse: -EINVAL naming the field ------------------------------ */

static void enc_rejects(struct cdp_record r, unsigned opts, const char *needle)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 10, NULL);
	struct cdp_record first = rec_make(CDP_REC_FLUSH, 0, 0, 0, 0, T0, NULL);
	struct cdp_err err = CDP_ERR_INIT;

	first.seq = 10;
	assert_int_equal(cdp_seg_enc_add(enc, &first, 0, &err), 0);
	assert_err(&err, cdp_seg_enc_add(enc, &r, opts, &err), -EINVAL, needle);
	assert_int_equal(cdp_seg_enc_nrecords(enc), 1);	/* nothing was added */
	assert_int_equal(cdp_seg_enc_raw_len(enc), CDP_REC_HDR_LEN);
	cdp_seg_enc_free(enc);
}

static struct cdp_record ok_write(void)
{
	struct cdp_record r = rec_make(CDP_REC_WRITE, 0, 0, 512, sizeof(pay_w6), T0 + 1, pay_w6);

	r.seq = 11;
	return r;
}

static void test_enc_rejects_wrong_seq(void **state)
{
	struct cdp_record r = ok_write();

	r.seq = 12;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "record seq 12: expected 11");
}

static void test_enc_rejects_time_going_back(void **state)
{
	struct cdp_record r = ok_write();

	r.time_ns = T0 - 1;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "before the previous record");
}

static void test_enc_rejects_bad_kind_and_flags(void **state)
{
	struct cdp_record r = ok_write();

	r.kind = 8;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "kind 8 unknown");
	r = ok_write();
	r.flags = 0x8000;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "unknown bits 0x8000");
	r = rec_make(CDP_REC_TRIM, CDP_REC_F_RESYNC, 0, 0, 512, T0, NULL);
	r.seq = 11;
	enc_rejects(r, 0, "flag resync on a trim record");
	r = ok_write();
	enc_rejects(r, 0x80, "options 0x80");
}

static void test_enc_rejects_bad_lengths(void **state)
{
	struct cdp_record r = ok_write();

	r.length = 100;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "not multiples of 512");
	r = ok_write();
	r.offset = 100;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "offset 100");
	r = rec_make(CDP_REC_ZERO, 0, 0, 0, 0, T0, NULL);
	r.seq = 11;
	enc_rejects(r, 0, "length 0");
	r = rec_make(CDP_REC_FLUSH, 0, 1, 0, 0, T0, NULL);
	r.seq = 11;
	enc_rejects(r, 0, "flush volume 1");
	r = rec_make(CDP_REC_MARK, 0, 0, 0, 0, T0, mark_name);
	r.seq = 11;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "mark name length 0");
	r.length = CDP_MARK_NAME_MAX + 1;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "mark name length 129");
	r = rec_make(CDP_REC_SYNC_BEGIN, 0, 0, 0, 8, T0, sync_begin);
	r.seq = 11;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "payload length 8");
	r = ok_write();
	r.payload = NULL;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "without a payload");
}

static void test_enc_rejects_bad_sync_payload(void **state)
{
	uint8_t p[CDP_SYNC_INFO_LEN];
	struct cdp_sync_info si = { .sync_id = 1, .kind = 9 };
	struct cdp_record r = rec_make(CDP_REC_SYNC_END, 0, 0, 0, CDP_SYNC_INFO_LEN, T0, p);

	cdp_sync_info_encode(&si, p);
	r.seq = 11;
	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC, "record seq 11: sync info: kind 9");
}

static void test_enc_rejects_wrong_crc(void **state)
{
	struct cdp_record r = ok_write();

	r.crc32c = cdp_crc32c(0, pay_w6, sizeof(pay_w6)) ^ 1;
	enc_rejects(r, 0, "crc32c");
	r = rec_make(CDP_REC_ZERO, 0, 0, 0, 512, T0, NULL);
	r.seq = 11;
	r.crc32c = 5;
	enc_rejects(r, 0, "without payload, expected 0");
}

static void test_enc_accepts_given_crc(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 11, NULL);
	struct cdp_record r = ok_write();
	struct cdp_err err = CDP_ERR_INIT;

	r.crc32c = cdp_crc32c(0, pay_w6, sizeof(pay_w6));
	assert_int_equal(cdp_seg_enc_add(enc, &r, 0, &err), 0);
	assert_int_equal(cdp_seg_enc_next_seq(enc), 12);
	cdp_seg_enc_free(enc);
}

/*
 * CDP_SEG_ENC_CRC_TRUSTED: the caller's crc32c goes in as given (not computed
 * again); a wrong one is then the decoder's to find. Not with COMPUTE_CRC.
 */
static void test_enc_trusted_crc(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 11, NULL);
	struct cdp_record r = ok_write();
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_segment *seg;
	struct cdp_err err = CDP_ERR_INIT;

	enc_rejects(r, CDP_SEG_ENC_COMPUTE_CRC | CDP_SEG_ENC_CRC_TRUSTED, "options 0x3");
	r.crc32c = cdp_crc32c(0, pay_w6, sizeof(pay_w6)) ^ 1;
	assert_int_equal(cdp_seg_enc_add(enc, &r, CDP_SEG_ENC_CRC_TRUSTED, &err), 0);
	assert_int_equal(cdp_seg_enc_seal(enc, NULL, &b, NULL, &err), 0);
	assert_err(&err, cdp_seg_decode(b.data, b.len, NULL, &seg, &err), -EBADMSG, "crc32c");
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

static void test_seal_rejects_bad_options(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_seg_seal_opts o = { .flags = 0x10 };

	assert_err(&err, cdp_seg_enc_seal(enc, &o, &b, NULL, &err), -EINVAL, "flags 0x00000010");
	o = (struct cdp_seg_seal_opts){ .compression = 5 };
	assert_err(&err, cdp_seg_enc_seal(enc, &o, &b, NULL, &err), -EINVAL, "compression 5");
	o = (struct cdp_seg_seal_opts){ .compression = CDP_COMP_ZSTD, .level = 99 };
	assert_err(&err, cdp_seg_enc_seal(enc, &o, &b, NULL, &err), -EINVAL, "zstd level 99");
	o = (struct cdp_seg_seal_opts){ .t_first = 10, .t_last = 5 };
	assert_err(&err, cdp_seg_enc_seal(enc, &o, &b, NULL, &err), -EINVAL, "t_last 5");
	assert_int_equal(b.len, 0);
	/* NULL options: a heartbeat stored raw. */
	assert_int_equal(cdp_seg_enc_seal(enc, NULL, &b, NULL, &err), 0);
	assert_int_equal(b.len, CDP_SEG_HDR_LEN);
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

/* ---- malformed segment headers -------------------------------------------- */

static void test_decode_accepts_the_fixture(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_seg_header h1, h2;
	struct cdp_buf orig = CDP_BUF_INIT;

	/*
	 * The malformed tests below edit this segment; resealed and rewritten
	 * unedited, it is byte for byte the same and decodes.
	 */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	cdp_buf_append(&orig, b.data, b.len);
	EDIT_HEADER(&b, h, (void)0);
	EDIT_RECORD(&b, 0, p, (void)p);
	assert_int_equal(b.len, orig.len);
	assert_memory_equal(b.data, orig.data, b.len);
	assert_int_equal(decode(&b, &ex, &err), 0);
	assert_int_equal(cdp_seg_parse_header(b.data, b.len, &h1, &err), 0);
	read_header(b.data, &h2);
	assert_memory_equal(&h1, &h2, sizeof(h1));
	cdp_buf_release(&orig);
	cdp_buf_release(&b);
}

static void test_decode_rejects_truncated_header(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	b.len = CDP_SEG_HDR_LEN - 1;
	assert_decode_fails(&b, "segment header: truncated, 159 bytes, expected 160");
	b.len = 0;
	assert_decode_fails(&b, "truncated");
	cdp_buf_release(&b);
}

static void test_decode_rejects_truncated_body(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	b.len--;
	assert_decode_fails(&b, "truncated body");
	b.len = CDP_SEG_HDR_LEN;
	assert_decode_fails(&b, "truncated body");
	cdp_buf_release(&b);
}

static void test_decode_rejects_trailing_bytes(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	cdp_buf_append(&b, "x", 1);
	assert_decode_fails(&b, "1 trailing bytes");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_magic(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	b.data[H_MAGIC] = 'X';
	fix_hdr_crc(b.data);
	assert_decode_fails(&b, "magic 0x53504458");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_version(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.version = 9);
	assert_decode_fails(&b, "segment header: version 9, expected 1");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_header_len(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	cdp_put_le16(b.data + H_HDR_LEN, 192);
	fix_hdr_crc(b.data);
	assert_decode_fails(&b, "header_len 192, expected 160");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_header_crc(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	b.data[H_PLAN] ^= 1;	/* a flipped bit, CRC left alone */
	assert_decode_fails(&b, "header crc32c");
	b.data[H_PLAN] ^= 1;
	b.data[H_HDR_CRC] ^= 0x80;	/* or a flipped bit in the CRC itself */
	assert_decode_fails(&b, "header crc32c");
	cdp_buf_release(&b);
}

static void test_decode_rejects_unknown_flag(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.flags |= 0x100);
	assert_decode_fails(&b, "has unknown bits 0x00000100");
	cdp_buf_release(&b);
}

static void test_decode_rejects_unknown_compression(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.compression = 7);
	assert_decode_fails(&b, "compression 7 unknown");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_level(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.level = 3);
	assert_decode_fails(&b, "level 3 with compression none");
	cdp_buf_release(&b);
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	EDIT_HEADER(&b, h, h.level = 0);
	assert_decode_fails(&b, "zstd level 0");
	EDIT_HEADER(&b, h, h.level = 23);
	assert_decode_fails(&b, "zstd level 23");
	cdp_buf_release(&b);
}

static void test_decode_rejects_aes_cipher(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, (h.cipher = CDP_CIPHER_AES256GCM, h.key_id = 1, h.nonce[0] = 1));
	assert_decode_fails(&b, "segment header: cipher 1 (aes-256-gcm) not supported yet");
	cdp_buf_release(&b);
}

static void test_decode_rejects_unknown_cipher(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.cipher = 9);
	assert_decode_fails(&b, "cipher 9 unknown");
	cdp_buf_release(&b);
}

static void test_decode_rejects_cipher_fields_without_cipher(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.key_id = 4);
	assert_decode_fails(&b, "key_id/nonce/tag not zero");
	EDIT_HEADER(&b, h, (h.key_id = 0, h.tag[15] = 1));
	assert_decode_fails(&b, "key_id/nonce/tag not zero");
	cdp_buf_release(&b);
}

static void test_decode_rejects_nonzero_reserved(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	b.data[H_RESERVED0] = 1;
	fix_hdr_crc(b.data);
	assert_decode_fails(&b, "reserved bytes not zero");
	b.data[H_RESERVED0] = 0;
	b.data[H_HDR_CRC - 1] = 0x40;	/* the last reserved byte */
	fix_hdr_crc(b.data);
	assert_decode_fails(&b, "reserved bytes not zero");
	b.data[H_HDR_CRC - 1] = 0;
	fix_hdr_crc(b.data);
	assert_int_equal(decode(&b, NULL, NULL), 0);
	cdp_buf_release(&b);
}

static void test_decode_rejects_raw_len_too_big(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	EDIT_HEADER(&b, h, h.raw_len = CDP_SEG_MAX_RAW + 1);
	assert_decode_fails(&b, "raw_len 4194305 > 4194304");
	cdp_buf_release(&b);
}

static void test_decode_rejects_body_len_mismatch(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	/* Stored raw, the body must be raw_len bytes. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.body_len -= 512);
	assert_decode_fails(&b, "body_len");
	cdp_buf_release(&b);
	/* Compressed, it must be smaller than raw_len. */
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	EDIT_HEADER(&b, h, h.raw_len = h.body_len);
	assert_decode_fails(&b, "body_len");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_body_crc(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	b.data[b.len - 1] ^= 0x01;
	assert_decode_fails(&b, "segment: body crc32c");
	cdp_buf_release(&b);
}

/*
 * body_checked skips only the body CRC (the caller just computed it on the
 * same bytes): a wrong stored body CRC then passes, but a flipped body byte
 * is still found by the record CRCs and the chain digest.
 */
static void test_decode_body_checked_skips_only_the_body_crc(void **state)
{
	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf b = CDP_BUF_INIT;

	ex.body_checked = true;
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.body_crc32c ^= 1);
	assert_decode_fails(&b, "segment: body crc32c");
	assert_int_equal(decode(&b, &ex, &err), 0);
	EDIT_HEADER(&b, h, h.body_crc32c ^= 1);
	b.data[b.len - 1] ^= 0x01;
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "payload crc32c");
	fix_rec_crc(rec_at(b.data, NSTD - 1));
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "chain digest mismatch");
	cdp_buf_release(&b);
}

/* Replaces the body of zstd segment @b by @body (header fields follow), keeping CRCs valid. */
static void replace_zstd_body(struct cdp_buf *b, const void *body, size_t n, uint32_t raw_len)
{
	b->len = CDP_SEG_HDR_LEN;
	cdp_buf_append(b, body, n);
	EDIT_HEADER(b, h, (h.body_len = (uint32_t)n, h.raw_len = raw_len,
			   h.body_crc32c = cdp_crc32c(0, body, n)));
}

static void test_decode_rejects_zstd_garbage(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	uint8_t junk[300];

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	fill_random(junk, sizeof(junk));
	/* Not a frame at all: the header is fine, the body CRC matches, zstd refuses. */
	replace_zstd_body(&b, junk, sizeof(junk), cdp_get_le32(b.data + H_RAW_LEN));
	assert_decode_fails(&b, "segment: zstd");
	cdp_buf_release(&b);
}

static void test_decode_rejects_corrupt_zstd_frame(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	uint8_t *body;
	uint32_t n;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	/* A valid frame header, corrupted blocks behind it (the body CRC made to match). */
	n = cdp_get_le32(b.data + H_BODY_LEN);
	body = b.data + CDP_SEG_HDR_LEN;
	for (uint32_t i = 12; i < n; i += 7)
		body[i] ^= 0x5a;
	EDIT_HEADER(&b, h, h.body_crc32c = cdp_crc32c(0, body, n));
	assert_decode_fails(&b, "segment: zstd");
	cdp_buf_release(&b);
}

static void test_decode_rejects_content_size_mismatch(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	/* The frame says how big it is; the header claims 512 bytes more. */
	EDIT_HEADER(&b, h, (h.raw_len += 512));
	assert_decode_fails(&b, "zstd frame content size");
	cdp_buf_release(&b);
}

static void test_decode_rejects_decompressed_size_mismatch(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT, raw = CDP_BUF_INIT;
	ZSTD_CCtx *c = ZSTD_createCCtx();
	uint8_t z[32768];
	size_t n;
	uint32_t raw_len;

	build_std(&raw, CDP_COMP_NONE, 0, NULL);
	raw_len = (uint32_t)(raw.len - CDP_SEG_HDR_LEN);
	/* A frame without a content size, so only decompression can tell. */
	ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
	n = ZSTD_compress2(c, z, sizeof(z), raw.data + CDP_SEG_HDR_LEN, raw_len);
	assert_false(ZSTD_isError(n));
	assert_true(ZSTD_getFrameContentSize(z, n) == ZSTD_CONTENTSIZE_UNKNOWN);
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	replace_zstd_body(&b, z, n, raw_len + 512);	/* decompresses to fewer bytes */
	assert_decode_fails(&b, "decompressed to");
	replace_zstd_body(&b, z, n, raw_len - 512);	/* or to more than raw_len */
	assert_decode_fails(&b, "segment: zstd body");
	replace_zstd_body(&b, z, n, raw_len);		/* exactly right: fine */
	assert_int_equal(decode(&b, NULL, NULL), 0);
	ZSTD_freeCCtx(c);
	cdp_buf_release(&raw);
	cdp_buf_release(&b);
}

static void test_decode_rejects_two_zstd_frames(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT, two = CDP_BUF_INIT;
	uint32_t n;

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	n = cdp_get_le32(b.data + H_BODY_LEN);
	cdp_buf_append(&two, b.data + CDP_SEG_HDR_LEN, n);
	cdp_buf_append(&two, b.data + CDP_SEG_HDR_LEN, n);
	replace_zstd_body(&b, two.data, two.len, cdp_get_le32(b.data + H_RAW_LEN));
	assert_decode_fails(&b, "zstd frame of");
	cdp_buf_release(&two);
	cdp_buf_release(&b);
}

static void test_decode_rejects_last_seq_mismatch(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.last_seq += 1);
	assert_decode_fails(&b, "last_seq 110, expected 109");
	cdp_buf_release(&b);
}

static void test_decode_rejects_nrecords_too_many(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, (h.nrecords += 1, h.last_seq += 1));
	assert_decode_fails(&b, "nrecords 11, found 10 records");
	cdp_buf_release(&b);
}

static void test_decode_rejects_nrecords_too_few(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, (h.nrecords -= 1, h.last_seq -= 1));
	assert_decode_fails(&b, "after nrecords 9 records");
	cdp_buf_release(&b);
}

static void test_decode_rejects_nrecords_beyond_raw_len(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, (h.nrecords = 1000000, h.last_seq = h.first_seq + 999999));
	assert_decode_fails(&b, "nrecords 1000000 need 40000000 bytes");
	cdp_buf_release(&b);
}

static void test_decode_rejects_seq_overflow(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, (h.first_seq = UINT64_MAX - 2, h.last_seq = 6));
	assert_decode_fails(&b, "overflows");
	cdp_buf_release(&b);
}

static void test_decode_rejects_wrong_summary_flags(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	/* The standard segment holds a MARK and a closed sync span. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.flags &= ~CDP_SEG_F_MARK);
	assert_decode_fails(&b, "flags: MARK clear");
	EDIT_HEADER(&b, h, h.flags = CDP_SEG_F_MARK);
	assert_decode_fails(&b, "flags: SYNC clear");
	EDIT_HEADER(&b, h, h.flags = CDP_SEG_F_MARK | CDP_SEG_F_SYNC | CDP_SEG_F_SYNC_ACTIVE);
	assert_decode_fails(&b, "flags: SYNC_ACTIVE set after a sync-end record");
	cdp_buf_release(&b);
	/* A lone FLUSH: no MARK, no SYNC; SYNC_ACTIVE may be either (carried over). */
	one_kind(&b, 3, CDP_COMP_NONE);
	EDIT_HEADER(&b, h, h.flags = CDP_SEG_F_MARK);
	assert_err_decode_plain(&b, "flags: MARK set");
	EDIT_HEADER(&b, h, h.flags = CDP_SEG_F_SYNC_ACTIVE);
	assert_int_equal(decode(&b, NULL, NULL), 0);
	cdp_buf_release(&b);
}

static void test_decode_rejects_t_first_after_t_last(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.t_first = h.t_last + 1);
	assert_decode_fails(&b, "t_first");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_heartbeat(void **state)
{
	struct cdp_seg_enc *enc = cdp_seg_enc_new(PLAN, EPOCH, 5, NULL);
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;

	assert_int_equal(cdp_seg_enc_seal(enc, NULL, &b, NULL, &err), 0);
	EDIT_HEADER(&b, h, h.flags = 0);
	assert_err(&err, decode(&b, NULL, &err), -EBADMSG, "heartbeat (nrecords 0) without flag");
	EDIT_HEADER(&b, h, (h.flags = CDP_SEG_F_POINT_END, h.last_seq = 5));
	assert_err(&err, decode(&b, NULL, &err), -EBADMSG, "last_seq 5, expected 4");
	cdp_buf_append(&b, "abcd", 4);
	EDIT_HEADER(&b, h, (h.last_seq = 4, h.raw_len = h.body_len = 4,
			    h.body_crc32c = cdp_crc32c(0, "abcd", 4)));
	assert_err(&err, decode(&b, NULL, &err), -EBADMSG, "heartbeat (nrecords 0) with raw_len 4");
	cdp_seg_enc_free(enc);
	cdp_buf_release(&b);
}

/* ---- caller expectations --------------------------------------------------- */

static void test_decode_rejects_wrong_plan(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	ex.plan_id = 8;
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "plan 7, expected 8");
	cdp_buf_release(&b);
}

static void test_decode_rejects_wrong_first_seq(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	ex.first_seq = 99;
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "first_seq 100, expected 99");
	cdp_buf_release(&b);
}

static void test_decode_rejects_time_before_min_time(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	ex.min_time = T0 + 1;
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "before min_time");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_chain_digest(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_expect ex = std_expect();
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t other[CDP_DIGEST_LEN] = { 1 };

	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	ex.prev_digest = other;	/* chained from something else */
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "chain digest mismatch at seq 100");
	ex.prev_digest = cdp_digest_zero;
	EDIT_HEADER(&b, h, h.digest[31] ^= 1);	/* or the digest itself is wrong */
	assert_err(&err, decode(&b, &ex, &err), -EBADMSG, "chain digest mismatch at seq 100");
	ex.prev_digest = NULL;	/* not checked without a previous digest */
	assert_int_equal(decode(&b, &ex, &err), 0);
	cdp_buf_release(&b);
}

/* ---- malformed records ------------------------------------------------------ */

static void test_decode_rejects_unknown_record_kind(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 1, p, cdp_put_le16(p + R_KIND, 9));
	assert_decode_fails(&b, "record seq 101: kind 9 unknown");
	cdp_buf_release(&b);
}

static void test_decode_rejects_unknown_record_flag(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 0, p, cdp_put_le16(p + R_FLAGS, 0x0002));
	assert_decode_fails(&b, "record seq 100: flags 0x0002 has unknown bits");
	cdp_buf_release(&b);
}

static void test_decode_rejects_resync_on_wrong_kind(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 2, p, cdp_put_le16(p + R_FLAGS, CDP_REC_F_RESYNC));	/* a TRIM */
	assert_decode_fails(&b, "record seq 102: flag resync on a trim record");
	cdp_buf_release(&b);
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 4, p, cdp_put_le16(p + R_FLAGS, CDP_REC_F_RESYNC));	/* a MARK */
	assert_decode_fails(&b, "flag resync on a mark record");
	cdp_buf_release(&b);
}

static void test_decode_rejects_unaligned_length(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 1, p, cdp_put_le32(p + R_LENGTH, 1000));	/* a ZERO */
	assert_decode_fails(&b, "record seq 101: zero offset 0 length 1000 not multiples of 512");
	cdp_buf_release(&b);
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 2, p, cdp_put_le64(p + R_OFFSET, 513));	/* a TRIM */
	assert_decode_fails(&b, "trim offset 513");
	cdp_buf_release(&b);
}

static void test_decode_rejects_zero_length(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 2, p, cdp_put_le32(p + R_LENGTH, 0));
	assert_decode_fails(&b, "record seq 102: trim length 0");
	cdp_buf_release(&b);
}

static void test_decode_rejects_oversized_write(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 9, p, cdp_put_le32(p + R_LENGTH, CDP_SEG_MAX_RAW));
	assert_decode_fails(&b, "record seq 109: write length 4194304 > 4193792");
	cdp_buf_release(&b);
}

static void test_decode_rejects_payload_past_body_end(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 9, p, cdp_put_le32(p + R_LENGTH, 8192));	/* the last WRITE */
	assert_decode_fails(&b, "record seq 109: write payload 8192 bytes past the body end");
	cdp_buf_release(&b);
}

static void test_decode_rejects_truncated_record_header(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;
	uint8_t extra[CDP_REC_HDR_LEN - 1] = { 0 };

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	cdp_buf_append(&b, extra, sizeof(extra));
	EDIT_HEADER(&b, h, (h.raw_len += sizeof(extra), h.body_len += sizeof(extra)));
	reseal(b.data);
	assert_decode_fails(&b, "truncated header, 39 bytes left, expected 40");
	cdp_buf_release(&b);
}

static void test_decode_rejects_record_past_volume_end(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	/* The ZERO on volume 1 (64 KiB): offset 63 KiB + 1 KiB fits, 63.5 KiB does not. */
	EDIT_RECORD(&b, 1, p, cdp_put_le64(p + R_OFFSET, 63u << 10));
	{
		struct cdp_seg_expect ex = std_expect();

		assert_int_equal(decode(&b, &ex, NULL), 0);
	}
	EDIT_RECORD(&b, 1, p, cdp_put_le64(p + R_OFFSET, (63u << 10) + 512));
	assert_decode_fails(&b, "record seq 101: volume 1 offset 65024 length 1024 past volume "
			   "end 65536");
	/* Near 2^64: offset + length must not wrap around into range. */
	EDIT_RECORD(&b, 1, p, cdp_put_le64(p + R_OFFSET, UINT64_MAX - 511));
	assert_decode_fails(&b, "past volume end");
	/* Without volume sizes the decoder cannot tell. */
	assert_int_equal(decode(&b, NULL, NULL), 0);
	cdp_buf_release(&b);
}

static void test_decode_rejects_unknown_volume(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 0, p, cdp_put_le32(p + R_VOLUME, 5));
	assert_decode_fails(&b, "record seq 100: volume 5 unknown, plan has 2 volumes");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_payload_crc(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	/* A payload byte flipped: the body CRC is fixed up, the record's is not. */
	EDIT_RECORD(&b, 0, p, p[CDP_REC_HDR_LEN + 100] ^= 0x10);
	assert_decode_fails(&b, "record seq 100: payload crc32c");
	cdp_buf_release(&b);
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 3, p, cdp_put_le32(p + R_CRC, 1));	/* a FLUSH has no payload */
	assert_decode_fails(&b, "record seq 103: crc32c 0x00000001 on a flush record without "
			   "payload");
	cdp_buf_release(&b);
}

static void test_decode_rejects_seq_gap(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 3, p, cdp_put_le64(p + R_SEQ, 104));
	assert_decode_fails(&b, "record seq 104: expected 103");
	cdp_buf_release(&b);
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 0, p, cdp_put_le64(p + R_SEQ, 99));
	assert_decode_fails(&b, "record seq 99: expected 100");
	cdp_buf_release(&b);
}

static void test_decode_rejects_time_going_backwards(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 5, p, cdp_put_le64(p + R_TIME, (uint64_t)(T0 + 2)));	/* after T0+3 */
	assert_decode_fails(&b, "record seq 105: time 1700000000000000002 before the previous");
	cdp_buf_release(&b);
}

static void test_decode_rejects_time_outside_segment(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	/* A record after t_last. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.t_last = T0 + 6);
	assert_decode_fails(&b, "record seq 109: time 1700000000000000007 after t_last");
	cdp_buf_release(&b);
	/* The first record is not at t_first (before or after it). */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.t_first = T0 - 1);
	assert_decode_fails(&b, "record seq 100: time 1700000000000000000, expected t_first");
	EDIT_HEADER(&b, h, h.t_first = T0 + 1);
	assert_decode_fails(&b, "expected t_first");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_flush_fields(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 3, p, cdp_put_le64(p + R_OFFSET, 512));
	assert_decode_fails(&b, "record seq 103: flush volume 0 offset 512 length 0, "
			   "expected 0 0 0");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_mark_payload(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	/* Length 0: a mark must have a name. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	{
		uint8_t *p = rec_at(b.data, 4);
		uint32_t old = cdp_get_le32(p + R_LENGTH);

		/* Drop the name bytes from the body, then say length 0. */
		memmove(p + CDP_REC_HDR_LEN, p + CDP_REC_HDR_LEN + old,
			(size_t)(b.data + b.len - (p + CDP_REC_HDR_LEN + old)));
		b.len -= old;
		cdp_put_le32(p + R_LENGTH, 0);
		cdp_put_le32(p + R_CRC, 0);
		EDIT_HEADER(&b, h, (h.raw_len -= old, h.body_len -= old));
		reseal(b.data);
	}
	assert_decode_fails(&b, "record seq 104: mark name length 0, expected 1..128");
	cdp_buf_release(&b);
	/* An offset on a mark. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 4, p, cdp_put_le64(p + R_OFFSET, 4096));
	assert_decode_fails(&b, "record seq 104: mark offset 4096, expected 0");
	cdp_buf_release(&b);
}

static void test_decode_rejects_bad_sync_payload(void **state)
{
	struct cdp_buf b = CDP_BUF_INIT;

	/* An unknown sync kind inside a payload whose CRC is right. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 5, p, (cdp_put_le32(p + CDP_REC_HDR_LEN + 8, 7), fix_rec_crc(p)));
	assert_decode_fails(&b, "record seq 105: sync info: kind 7 unknown");
	cdp_buf_release(&b);
	/* A sync payload of the wrong length. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 8, p, cdp_put_le32(p + R_LENGTH, 8));
	assert_decode_fails(&b, "record seq 108: sync-end payload length 8, expected 12");
	cdp_buf_release(&b);
}

/* ---- the seed corpus of tests/fuzz/fuzz_segment ---------------------------- */

static int write_file(const char *dir, const char *name, const struct cdp_buf *b)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f)) {
		fprintf(stderr, "cannot write %s\n", path);
		return 1;
	}
	return 0;
}

/* A segment of standard record @i alone; returns its kind. */
static unsigned one_kind(struct cdp_buf *b, int i, uint8_t comp)
{
	struct cdp_record r[NSTD];
	struct cdp_seg_enc *enc;
	struct cdp_seg_seal_opts o = { .compression = comp, .level = 1 };
	struct cdp_err err = CDP_ERR_INIT;

	std_records(r);
	enc = cdp_seg_enc_new(PLAN, EPOCH, r[i].seq, NULL);
	add_all(enc, &r[i], 1);
	if (cdp_seg_enc_seal(enc, &o, b, NULL, &err))
		fail_msg("seal: %s", err.msg);
	cdp_seg_enc_free(enc);
	return r[i].kind;
}

static int write_corpus(const char *dir)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct cdp_seg_enc *enc;
	struct cdp_err err = CDP_ERR_INIT;
	char name[64];
	int bad = 0;

	for (int i = 0; i < NSTD; i++) {
		unsigned kind = one_kind(&b, i, i == 0 || i == 9 ? CDP_COMP_ZSTD : CDP_COMP_NONE);

		snprintf(name, sizeof(name), "kind-%d-%s", i, cdp_rec_kind_name(kind));
		bad |= write_file(dir, name, &b);
		b.len = 0;
	}
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	bad |= write_file(dir, "std-none", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	bad |= write_file(dir, "std-zstd1", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_ZSTD, -5, NULL);
	bad |= write_file(dir, "std-zstd-5", &b);
	b.len = 0;
	enc = cdp_seg_enc_new(PLAN, EPOCH, 1, NULL);
	{
		struct cdp_seg_seal_opts o = { .t_first = T0, .t_last = T0 + 5 };

		if (cdp_seg_enc_seal(enc, &o, &b, NULL, &err))
			fail_msg("seal: %s", err.msg);
	}
	cdp_seg_enc_free(enc);
	bad |= write_file(dir, "heartbeat", &b);
	b.len = 0;
	/* A few malformed ones, so the fuzzer starts next to the checks. */
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 3, p, cdp_put_le64(p + R_SEQ, 104));
	bad |= write_file(dir, "bad-seq-gap", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_RECORD(&b, 0, p, p[CDP_REC_HDR_LEN] ^= 1);
	bad |= write_file(dir, "bad-payload-crc", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	b.data[b.len - 3] ^= 0x20;
	bad |= write_file(dir, "bad-body-crc", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_ZSTD, 1, NULL);
	EDIT_HEADER(&b, h, h.raw_len += 512);
	bad |= write_file(dir, "bad-content-size", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	EDIT_HEADER(&b, h, h.version = 2);
	bad |= write_file(dir, "bad-version", &b);
	b.len = 0;
	build_std(&b, CDP_COMP_NONE, 0, NULL);
	b.len = 100;
	bad |= write_file(dir, "bad-truncated", &b);
	cdp_buf_release(&b);
	return bad;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_rfc3720_vectors),
		cmocka_unit_test(test_crc32c_chains),
		cmocka_unit_test(test_chain_digest_known_value),
		cmocka_unit_test(test_roundtrip_every_kind),
		cmocka_unit_test(test_roundtrip_zstd_levels),
		cmocka_unit_test(test_roundtrip_zstd_min_level),
		cmocka_unit_test(test_incompressible_body_is_stored_raw),
		cmocka_unit_test(test_heartbeat_round_trip),
		cmocka_unit_test(test_chain_over_several_seals),
		cmocka_unit_test(test_t_last_override),
		cmocka_unit_test(test_seal_appends_to_out),
		cmocka_unit_test(test_encoder_fills_to_the_limit),
		cmocka_unit_test(test_streaming_api_matches_decode),
		cmocka_unit_test(test_decode_from_many_threads),
		cmocka_unit_test(test_layout_matches_format_doc),
		cmocka_unit_test(test_sync_info_codec),
		cmocka_unit_test(test_kind_names),
		cmocka_unit_test(test_enc_rejects_wrong_seq),
		cmocka_unit_test(test_enc_rejects_time_going_back),
		cmocka_unit_test(test_enc_rejects_bad_kind_and_flags),
		cmocka_unit_test(test_enc_rejects_bad_lengths),
		cmocka_unit_test(test_enc_rejects_bad_sync_payload),
		cmocka_unit_test(test_enc_rejects_wrong_crc),
		cmocka_unit_test(test_enc_accepts_given_crc),
		cmocka_unit_test(test_enc_trusted_crc),
		cmocka_unit_test(test_seal_rejects_bad_options),
		cmocka_unit_test(test_seal_into_spare_is_the_same_segment),
		cmocka_unit_test(test_decode_accepts_the_fixture),
		cmocka_unit_test(test_decode_rejects_truncated_header),
		cmocka_unit_test(test_decode_rejects_truncated_body),
		cmocka_unit_test(test_decode_rejects_trailing_bytes),
		cmocka_unit_test(test_decode_rejects_bad_magic),
		cmocka_unit_test(test_decode_rejects_bad_version),
		cmocka_unit_test(test_decode_rejects_bad_header_len),
		cmocka_unit_test(test_decode_rejects_bad_header_crc),
		cmocka_unit_test(test_decode_rejects_unknown_flag),
		cmocka_unit_test(test_decode_rejects_unknown_compression),
		cmocka_unit_test(test_decode_rejects_bad_level),
		cmocka_unit_test(test_decode_rejects_aes_cipher),
		cmocka_unit_test(test_decode_rejects_unknown_cipher),
		cmocka_unit_test(test_decode_rejects_cipher_fields_without_cipher),
		cmocka_unit_test(test_decode_rejects_nonzero_reserved),
		cmocka_unit_test(test_decode_rejects_raw_len_too_big),
		cmocka_unit_test(test_decode_rejects_body_len_mismatch),
		cmocka_unit_test(test_decode_rejects_bad_body_crc),
		cmocka_unit_test(test_decode_body_checked_skips_only_the_body_crc),
		cmocka_unit_test(test_decode_rejects_zstd_garbage),
		cmocka_unit_test(test_decode_rejects_corrupt_zstd_frame),
		cmocka_unit_test(test_decode_rejects_content_size_mismatch),
		cmocka_unit_test(test_decode_rejects_decompressed_size_mismatch),
		cmocka_unit_test(test_decode_rejects_two_zstd_frames),
		cmocka_unit_test(test_decode_rejects_last_seq_mismatch),
		cmocka_unit_test(test_decode_rejects_nrecords_too_many),
		cmocka_unit_test(test_decode_rejects_nrecords_too_few),
		cmocka_unit_test(test_decode_rejects_nrecords_beyond_raw_len),
		cmocka_unit_test(test_decode_rejects_seq_overflow),
		cmocka_unit_test(test_decode_rejects_wrong_summary_flags),
		cmocka_unit_test(test_decode_rejects_t_first_after_t_last),
		cmocka_unit_test(test_decode_rejects_bad_heartbeat),
		cmocka_unit_test(test_decode_rejects_wrong_plan),
		cmocka_unit_test(test_decode_rejects_wrong_first_seq),
		cmocka_unit_test(test_decode_rejects_time_before_min_time),
		cmocka_unit_test(test_decode_rejects_bad_chain_digest),
		cmocka_unit_test(test_decode_rejects_unknown_record_kind),
		cmocka_unit_test(test_decode_rejects_unknown_record_flag),
		cmocka_unit_test(test_decode_rejects_resync_on_wrong_kind),
		cmocka_unit_test(test_decode_rejects_unaligned_length),
		cmocka_unit_test(test_decode_rejects_zero_length),
		cmocka_unit_test(test_decode_rejects_oversized_write),
		cmocka_unit_test(test_decode_rejects_payload_past_body_end),
		cmocka_unit_test(test_decode_rejects_truncated_record_header),
		cmocka_unit_test(test_decode_rejects_record_past_volume_end),
		cmocka_unit_test(test_decode_rejects_unknown_volume),
		cmocka_unit_test(test_decode_rejects_bad_payload_crc),
		cmocka_unit_test(test_decode_rejects_seq_gap),
		cmocka_unit_test(test_decode_rejects_time_going_backwards),
		cmocka_unit_test(test_decode_rejects_time_outside_segment),
		cmocka_unit_test(test_decode_rejects_bad_flush_fields),
		cmocka_unit_test(test_decode_rejects_bad_mark_payload),
		cmocka_unit_test(test_decode_rejects_bad_sync_payload),
	};

	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		return write_corpus(argv[2]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
