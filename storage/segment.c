/*
 * storage/segment - encodes and decodes records and segments (see segment.h
 * for the API and docs/format.md for the byte layout, which the offsets
 * below implement).
 *
 * DESIGN
 * - Every field is written and read with the explicit little-endian helpers;
 *   no struct is ever copied to or from the wire.
 * - The encoder copies each record into its raw body buffer as it is added
 *   (one memcpy, plus the payload CRC when asked). Sealing hashes the raw
 *   body once (SHA-256, chained), compresses it once, straight into the
 *   caller's output buffer after reserving ZSTD_compressBound() (so zstd
 *   never goes through its internal staging buffer), and takes the body
 *   CRC32C over what is sent. Incompressible bodies are then copied in raw.
 * - The decoder checks the cheap things first (header CRC, lengths, body
 *   CRC) and allocates only after every size from outside has been checked
 *   against CDP_SEG_MAX_RAW.
 * - zstd decompression contexts are per thread (a pthread key frees them at
 *   thread exit), since the decoder runs on many threads at once; the
 *   window is capped so a hostile frame cannot make the decoder allocate
 *   more than a segment needs. The SHA-256 implementation is fetched from
 *   OpenSSL once.
 * - CRC32C is ISA-L's crc32_iscsi(), which neither pre- nor post-inverts:
 *   the standard CRC32C of a buffer is ~crc32_iscsi(buf, len, ~0), and
 *   continuing from a finished CRC c is ~crc32_iscsi(buf, len, ~c).
 */
#include "storage/segment.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <isa-l/crc.h>
#include <openssl/evp.h>
#include <zstd.h>

#include "common/util.h"

/* Segment header offsets (docs/format.md). */
enum {
	H_MAGIC = 0,		/* u32 */
	H_VERSION = 4,		/* u16 */
	H_HDR_LEN = 6,		/* u16 */
	H_FLAGS = 8,		/* u32 */
	H_COMPRESSION = 12,	/* u8 */
	H_LEVEL = 13,		/* i8 */
	H_CIPHER = 14,		/* u8 */
	H_RESERVED0 = 15,	/* u8, zero */
	H_PLAN = 16,		/* u64 */
	H_EPOCH = 24,		/* u64 */
	H_FIRST_SEQ = 32,	/* u64 */
	H_LAST_SEQ = 40,	/* u64 */
	H_T_FIRST = 48,		/* i64 */
	H_T_LAST = 56,		/* i64 */
	H_RAW_LEN = 64,		/* u32 */
	H_BODY_LEN = 68,	/* u32 */
	H_BODY_CRC = 72,	/* u32 */
	H_NRECORDS = 76,	/* u32 */
	H_KEY_ID = 80,		/* u32 */
	H_NONCE = 84,		/* 12 bytes */
	H_TAG = 96,		/* 16 bytes */
	H_DIGEST = 112,		/* 32 bytes */
	H_RESERVED1 = 144,	/* 12 bytes, zero */
	H_HDR_CRC = 156,	/* u32: CRC32C of bytes [0, 156) */
};
#define H_RESERVED1_LEN (H_HDR_CRC - H_RESERVED1)

_Static_assert(H_HDR_CRC + 4 == CDP_SEG_HDR_LEN, "segment header layout");
_Static_assert(H_DIGEST + CDP_DIGEST_LEN == H_RESERVED1, "segment header layout");

/* Record header offsets. */
enum {
	R_SEQ = 0,		/* u64 */
	R_VOLUME = 8,		/* u32 */
	R_KIND = 12,		/* u16 */
	R_FLAGS = 14,		/* u16 */
	R_OFFSET = 16,		/* u64 */
	R_LENGTH = 24,		/* u32 */
	R_CRC = 28,		/* u32 */
	R_TIME = 32,		/* i64 */
};

_Static_assert(R_TIME + 8 == CDP_REC_HDR_LEN, "record header layout");
_Static_assert(CDP_REC_MAX_WRITE + CDP_REC_HDR_LEN <= CDP_SEG_MAX_RAW, "largest write fits");

/* A hostile frame may ask for a huge window; a segment never needs more than this. */
#define DCTX_WINDOW_LOG_MAX 23
_Static_assert((1u << DCTX_WINDOW_LOG_MAX) >= CDP_SEG_MAX_RAW, "window covers a segment");

const uint8_t cdp_digest_zero[CDP_DIGEST_LEN];

/* ---- CRC32C, SHA-256, zstd contexts -------------------------------------- */

uint32_t cdp_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	unsigned int c = ~crc;

	while (len > 0) {
		/* crc32_iscsi() takes an int length. */
		size_t n = len > (size_t)INT_MAX ? (size_t)1 << 30 : len;

		c = crc32_iscsi((unsigned char *)p, (int)n, c);
		p += n;
		len -= n;
	}
	return ~c;
}

static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha_fetched;
static const EVP_MD *sha_md;

static void sha_init_once(void)
{
	/* An explicit fetch, once, saves a provider lookup on every digest. */
	sha_fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
	sha_md = sha_fetched ? sha_fetched : EVP_sha256();
}

static const EVP_MD *sha256(void)
{
	pthread_once(&sha_once, sha_init_once);
	return sha_md;
}

int cdp_chain_digest(const uint8_t prev[CDP_DIGEST_LEN], const void *raw, size_t raw_len,
		     uint8_t out[CDP_DIGEST_LEN], struct cdp_err *err)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int n = 0;
	int ok;

	if (!ctx)
		return cdp_err_set(err, -EIO, "sha-256: cannot allocate a digest context");
	ok = EVP_DigestInit_ex(ctx, sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(ctx, prev, CDP_DIGEST_LEN) == 1 &&
	     (raw_len == 0 || EVP_DigestUpdate(ctx, raw, raw_len) == 1) &&
	     EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == CDP_DIGEST_LEN;
	EVP_MD_CTX_free(ctx);
	if (!ok)
		return cdp_err_set(err, -EIO, "sha-256: openssl digest failed");
	return 0;
}

static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static pthread_key_t dctx_key;

static void dctx_free(void *p)
{
	ZSTD_freeDCtx(p);
}

static void dctx_init_once(void)
{
	if (pthread_key_create(&dctx_key, dctx_free))
		abort();
}

/* The calling thread's decompression context (created on first use, freed at thread exit). */
static ZSTD_DCtx *thread_dctx(void)
{
	ZSTD_DCtx *d;

	pthread_once(&dctx_once, dctx_init_once);
	d = pthread_getspecific(dctx_key);
	if (d)
		return d;
	d = ZSTD_createDCtx();
	if (!d)
		return NULL;
	if (ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, DCTX_WINDOW_LOG_MAX)) ||
	    pthread_setspecific(dctx_key, d)) {
		ZSTD_freeDCtx(d);
		return NULL;
	}
	return d;
}

/* ---- names and small codecs ---------------------------------------------- */

const char *cdp_rec_kind_name(unsigned kind)
{
	static const char *const names[] = {
		[CDP_REC_WRITE] = "write",
		[CDP_REC_ZERO] = "zero",
		[CDP_REC_TRIM] = "trim",
		[CDP_REC_FLUSH] = "flush",
		[CDP_REC_MARK] = "mark",
		[CDP_REC_SYNC_BEGIN] = "sync-begin",
		[CDP_REC_SYNC_END] = "sync-end",
	};

	if (kind < CDP_ARRAY_SIZE(names) && names[kind])
		return names[kind];
	return "unknown";
}

static const char *cipher_name(unsigned cipher)
{
	switch (cipher) {
	case CDP_CIPHER_NONE:
		return "none";
	case CDP_CIPHER_AES256GCM:
		return "aes-256-gcm";
	default:
		return "unknown";
	}
}

uint32_t cdp_record_payload_len(const struct cdp_record *r)
{
	switch (r->kind) {
	case CDP_REC_WRITE:
	case CDP_REC_MARK:
	case CDP_REC_SYNC_BEGIN:
	case CDP_REC_SYNC_END:
		return r->length;
	default:
		return 0;
	}
}

size_t cdp_seg_record_size(uint32_t payload_len)
{
	return CDP_REC_HDR_LEN + (size_t)payload_len;
}

void cdp_sync_info_encode(const struct cdp_sync_info *si, uint8_t out[CDP_SYNC_INFO_LEN])
{
	cdp_put_le64(out, si->sync_id);
	cdp_put_le32(out + 8, si->kind);
}

int cdp_sync_info_decode(const uint8_t *p, size_t len, struct cdp_sync_info *si,
			 struct cdp_err *err)
{
	uint32_t kind;

	if (len != CDP_SYNC_INFO_LEN)
		return cdp_err_set(err, -EBADMSG, "sync info: length %zu, expected %d", len,
				   CDP_SYNC_INFO_LEN);
	kind = cdp_get_le32(p + 8);
	if (kind != CDP_SYNC_FULL && kind != CDP_SYNC_INCREMENTAL)
		return cdp_err_set(err, -EBADMSG, "sync info: kind %" PRIu32
				   " unknown, expected %d (full) or %d (incremental)", kind,
				   CDP_SYNC_FULL, CDP_SYNC_INCREMENTAL);
	si->sync_id = cdp_get_le64(p);
	si->kind = kind;
	return 0;
}

/* ---- record rules, shared by the encoder (-EINVAL) and decoder (-EBADMSG) --- */

/* Checks everything about @r but its payload bytes; @code is the error to return. */
static int check_record_fields(const struct cdp_record *r, int code, struct cdp_err *err)
{
	const char *kn = cdp_rec_kind_name(r->kind);

	if (r->kind < CDP_REC_WRITE || r->kind > CDP_REC_KIND_MAX)
		return cdp_err_set(err, code,
				   "record seq %" PRIu64 ": kind %u unknown, expected 1..%d",
				   r->seq, r->kind, CDP_REC_KIND_MAX);
	if (r->flags & ~CDP_REC_F_ALL)
		return cdp_err_set(err, code,
				   "record seq %" PRIu64 ": flags 0x%04x has unknown bits 0x%04x",
				   r->seq, r->flags, r->flags & ~CDP_REC_F_ALL);
	if ((r->flags & CDP_REC_F_RESYNC) && r->kind != CDP_REC_WRITE && r->kind != CDP_REC_ZERO)
		return cdp_err_set(err, code, "record seq %" PRIu64
				   ": flag resync on a %s record, allowed only on write and zero",
				   r->seq, kn);
	switch (r->kind) {
	case CDP_REC_WRITE:
	case CDP_REC_ZERO:
	case CDP_REC_TRIM:
		if (r->length == 0)
			return cdp_err_set(err, code,
					   "record seq %" PRIu64 ": %s length 0, expected > 0",
					   r->seq, kn);
		if (r->length % CDP_SECTOR || r->offset % CDP_SECTOR)
			return cdp_err_set(err, code, "record seq %" PRIu64 ": %s offset %" PRIu64
					   " length %" PRIu32 " not multiples of %u", r->seq, kn,
					   r->offset, r->length, CDP_SECTOR);
		if (r->kind == CDP_REC_WRITE && r->length > CDP_REC_MAX_WRITE)
			return cdp_err_set(err, code,
					   "record seq %" PRIu64 ": write length %" PRIu32
					   " > %u (the largest a segment holds)", r->seq, r->length,
					   CDP_REC_MAX_WRITE);
		break;
	case CDP_REC_FLUSH:
		if (r->volume || r->offset || r->length)
			return cdp_err_set(err, code,
					   "record seq %" PRIu64 ": flush volume %" PRIu32
					   " offset %" PRIu64 " length %" PRIu32 ", expected 0 0 0",
					   r->seq, r->volume, r->offset, r->length);
		break;
	case CDP_REC_MARK:
		if (r->length < 1 || r->length > CDP_MARK_NAME_MAX)
			return cdp_err_set(err, code,
					   "record seq %" PRIu64 ": mark name length %" PRIu32
					   ", expected 1..%d", r->seq, r->length,
					   CDP_MARK_NAME_MAX);
		break;
	default:	/* SYNC_BEGIN, SYNC_END */
		if (r->length != CDP_SYNC_INFO_LEN)
			return cdp_err_set(err, code,
					   "record seq %" PRIu64 ": %s payload length %" PRIu32
					   ", expected %d", r->seq, kn, r->length,
					   CDP_SYNC_INFO_LEN);
		break;
	}
	if (r->kind >= CDP_REC_MARK && r->offset)
		return cdp_err_set(err, code,
				   "record seq %" PRIu64 ": %s offset %" PRIu64 ", expected 0",
				   r->seq, kn, r->offset);
	if (!cdp_record_payload_len(r) && r->crc32c)
		return cdp_err_set(err, code,
				   "record seq %" PRIu64 ": crc32c 0x%08" PRIx32
				   " on a %s record without payload, expected 0", r->seq, r->crc32c,
				   kn);
	return 0;
}

/* Checks the payload bytes of a SYNC_* record (the CRC is checked by the caller). */
static int check_record_payload(const struct cdp_record *r, int code, struct cdp_err *err)
{
	struct cdp_sync_info si;
	int rc;

	if (r->kind != CDP_REC_SYNC_BEGIN && r->kind != CDP_REC_SYNC_END)
		return 0;
	rc = cdp_sync_info_decode(r->payload, r->length, &si, err);
	if (rc < 0) {
		if (err)
			err->code = code;
		cdp_err_prefix(err, "record seq %" PRIu64, r->seq);
		return code;
	}
	return 0;
}

static void put_record_header(uint8_t *p, const struct cdp_record *r)
{
	cdp_put_le64(p + R_SEQ, r->seq);
	cdp_put_le32(p + R_VOLUME, r->volume);
	cdp_put_le16(p + R_KIND, r->kind);
	cdp_put_le16(p + R_FLAGS, r->flags);
	cdp_put_le64(p + R_OFFSET, r->offset);
	cdp_put_le32(p + R_LENGTH, r->length);
	cdp_put_le32(p + R_CRC, r->crc32c);
	cdp_put_le64(p + R_TIME, (uint64_t)r->time_ns);
}

static void get_record_header(const uint8_t *p, struct cdp_record *r)
{
	r->seq = cdp_get_le64(p + R_SEQ);
	r->volume = cdp_get_le32(p + R_VOLUME);
	r->kind = cdp_get_le16(p + R_KIND);
	r->flags = cdp_get_le16(p + R_FLAGS);
	r->offset = cdp_get_le64(p + R_OFFSET);
	r->length = cdp_get_le32(p + R_LENGTH);
	r->crc32c = cdp_get_le32(p + R_CRC);
	r->time_ns = (int64_t)cdp_get_le64(p + R_TIME);
	r->payload = NULL;
}

/* ---- encoder ------------------------------------------------------------- */

struct cdp_seg_enc {
	uint64_t plan_id;
	uint64_t epoch;
	uint64_t first_seq;		/* of the segment being built */
	uint8_t prev[CDP_DIGEST_LEN];	/* digest it chains from */
	struct cdp_buf raw;		/* ENC_HEAD bytes of room, then records back to back */
	uint32_t nrecords;
	int64_t t_first;		/* first record's time */
	int64_t t_prev;			/* last record's time */
	ZSTD_CCtx *cctx;		/* reused across seals */
	EVP_MD_CTX *sha;		/* reused across seals */
	bool sync_active;		/* a SYNC_BEGIN without its SYNC_END so far */
	bool has_mark, has_sync;	/* in the segment being built */
};

/*
 * The raw buffer starts with room for a header: a segment stored raw is
 * handed over whole (cdp_seg_enc_seal) instead of copied.
 */
#define ENC_HEAD CDP_SEG_HDR_LEN
#define ENC_CAP CDP_SEG_ENC_SPARE

_Static_assert(CDP_SEG_ENC_SPARE >= CDP_SEG_HDR_LEN + ZSTD_COMPRESSBOUND(CDP_SEG_MAX_RAW),
	       "a spare output buffer holds any sealed segment");

/* Empties the records; the buffer is either none yet or at least ENC_CAP. */
static void enc_empty(struct cdp_seg_enc *enc)
{
	enc->raw.len = enc->raw.cap ? ENC_HEAD : 0;
}

struct cdp_seg_enc *cdp_seg_enc_new(uint64_t plan_id, uint64_t epoch, uint64_t first_seq,
				    const uint8_t prev_digest[CDP_DIGEST_LEN])
{
	struct cdp_seg_enc *enc = cdp_xcalloc(1, sizeof(*enc));

	enc->plan_id = plan_id;
	enc->epoch = epoch;
	enc->first_seq = first_seq;
	memcpy(enc->prev, prev_digest ? prev_digest : cdp_digest_zero, CDP_DIGEST_LEN);
	enc->cctx = ZSTD_createCCtx();
	enc->sha = EVP_MD_CTX_new();
	if (!enc->cctx || !enc->sha)
		abort();	/* only out of memory gets here */
	return enc;
}

void cdp_seg_enc_set_sync_active(struct cdp_seg_enc *enc, bool active)
{
	enc->sync_active = active;
}

bool cdp_seg_enc_sync_active(const struct cdp_seg_enc *enc)
{
	return enc->sync_active;
}

void cdp_seg_enc_restart(struct cdp_seg_enc *enc, uint64_t first_seq, bool sync_active,
			 int64_t t_min)
{
	enc->first_seq = first_seq;
	enc->nrecords = 0;
	enc->has_mark = enc->has_sync = false;
	enc->sync_active = sync_active;
	enc->t_prev = t_min;
	enc_empty(enc);
}

void cdp_seg_enc_set_prev(struct cdp_seg_enc *enc, const uint8_t prev[CDP_DIGEST_LEN])
{
	memcpy(enc->prev, prev, CDP_DIGEST_LEN);
}

void cdp_seg_enc_free(struct cdp_seg_enc *enc)
{
	if (!enc)
		return;
	ZSTD_freeCCtx(enc->cctx);
	EVP_MD_CTX_free(enc->sha);
	cdp_buf_release(&enc->raw);
	free(enc);
}

size_t cdp_seg_enc_raw_len(const struct cdp_seg_enc *enc)
{
	return enc->raw.len ? enc->raw.len - ENC_HEAD : 0;
}

/* The records added so far. */
static const uint8_t *enc_raw(const struct cdp_seg_enc *enc)
{
	return enc->raw.data + ENC_HEAD;
}

uint32_t cdp_seg_enc_nrecords(const struct cdp_seg_enc *enc)
{
	return enc->nrecords;
}

uint64_t cdp_seg_enc_next_seq(const struct cdp_seg_enc *enc)
{
	return enc->first_seq + enc->nrecords;
}

int cdp_seg_enc_add(struct cdp_seg_enc *enc, const struct cdp_record *rec, unsigned opts,
		    struct cdp_err *err)
{
	uint64_t want = cdp_seg_enc_next_seq(enc);
	struct cdp_record r = *rec;
	uint32_t plen;
	uint8_t *p;
	int rc;

	if (opts & ~(CDP_SEG_ENC_COMPUTE_CRC | CDP_SEG_ENC_CRC_TRUSTED) ||
	    (opts & CDP_SEG_ENC_COMPUTE_CRC && opts & CDP_SEG_ENC_CRC_TRUSTED))
		return cdp_err_set(err, -EINVAL, "segment encoder: options 0x%x invalid", opts);
	if (r.seq != want)
		return cdp_err_set(err, -EINVAL, "record seq %" PRIu64 ": expected %" PRIu64,
				   r.seq, want);
	if (enc->nrecords && want == 0)
		return cdp_err_set(err, -EINVAL, "record seq %" PRIu64 ": seq space exhausted",
				   r.seq);
	if (enc->nrecords && r.time_ns < enc->t_prev)
		return cdp_err_set(err, -EINVAL, "record seq %" PRIu64 ": time %" PRId64
				   " before the previous record's %" PRId64, r.seq, r.time_ns,
				   enc->t_prev);
	if (opts & CDP_SEG_ENC_COMPUTE_CRC)
		r.crc32c = 0;	/* checked below, once computed */
	rc = check_record_fields(&r, -EINVAL, err);
	if (rc < 0)
		return rc;
	plen = cdp_record_payload_len(&r);
	if (plen && !r.payload)
		return cdp_err_set(err, -EINVAL, "record seq %" PRIu64 ": %s of %" PRIu32
				   " bytes without a payload pointer", r.seq,
				   cdp_rec_kind_name(r.kind), plen);
	rc = check_record_payload(&r, -EINVAL, err);
	if (rc < 0)
		return rc;
	if (cdp_seg_enc_raw_len(enc) + cdp_seg_record_size(plen) > CDP_SEG_MAX_RAW)
		return cdp_err_set(err, -E2BIG, "record seq %" PRIu64 ": %zu bytes do not fit, "
				   "segment holds %zu of %u", r.seq, cdp_seg_record_size(plen),
				   cdp_seg_enc_raw_len(enc), CDP_SEG_MAX_RAW);

	if (plen && !(opts & CDP_SEG_ENC_CRC_TRUSTED)) {
		uint32_t crc = cdp_crc32c(0, r.payload, plen);

		if (opts & CDP_SEG_ENC_COMPUTE_CRC)
			r.crc32c = crc;
		else if (crc != r.crc32c)
			return cdp_err_set(err, -EINVAL,
					   "record seq %" PRIu64 ": crc32c 0x%08" PRIx32
					   ", payload has 0x%08" PRIx32, r.seq, r.crc32c, crc);
	}
	if (!enc->raw.cap) {
		/* One allocation, reused (or exchanged by a seal). */
		cdp_buf_reserve_exact(&enc->raw, ENC_CAP);
		enc_empty(enc);
	}
	p = enc->raw.data + enc->raw.len;
	put_record_header(p, &r);
	if (plen)
		memcpy(p + CDP_REC_HDR_LEN, r.payload, plen);
	enc->raw.len += cdp_seg_record_size(plen);
	if (r.kind == CDP_REC_MARK)
		enc->has_mark = true;
	if (r.kind == CDP_REC_SYNC_BEGIN || r.kind == CDP_REC_SYNC_END) {
		enc->has_sync = true;
		enc->sync_active = r.kind == CDP_REC_SYNC_BEGIN;
	}
	if (!enc->nrecords)
		enc->t_first = r.time_ns;
	enc->t_prev = r.time_ns;
	enc->nrecords++;
	return 0;
}

static int encoder_digest(struct cdp_seg_enc *enc, uint8_t out[CDP_DIGEST_LEN],
			  struct cdp_err *err)
{
	unsigned int n = 0;

	if (EVP_DigestInit_ex(enc->sha, sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(enc->sha, enc->prev, CDP_DIGEST_LEN) != 1 ||
	    (cdp_seg_enc_raw_len(enc) &&
	     EVP_DigestUpdate(enc->sha, enc_raw(enc), cdp_seg_enc_raw_len(enc)) != 1) ||
	    EVP_DigestFinal_ex(enc->sha, out, &n) != 1 || n != CDP_DIGEST_LEN)
		return cdp_err_set(err, -EIO, "sha-256: openssl digest failed");
	return 0;
}

/* Compresses the raw body into @dst (@cap >= ZSTD_compressBound); returns its size or -EIO. */
static long compress_body(struct cdp_seg_enc *enc, int level, uint8_t *dst, size_t cap,
			  struct cdp_err *err)
{
	size_t n;

	ZSTD_CCtx_reset(enc->cctx, ZSTD_reset_session_and_parameters);
	n = ZSTD_CCtx_setParameter(enc->cctx, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(n))
		n = ZSTD_CCtx_setParameter(enc->cctx, ZSTD_c_contentSizeFlag, 1);
	if (!ZSTD_isError(n))
		n = ZSTD_compress2(enc->cctx, dst, cap, enc_raw(enc), cdp_seg_enc_raw_len(enc));
	if (ZSTD_isError(n))
		return cdp_err_set(err, -EIO, "zstd level %d: %s", level, ZSTD_getErrorName(n));
	return (long)n;
}

size_t cdp_seg_seal_room(size_t raw_len)
{
	return CDP_SEG_HDR_LEN + ZSTD_compressBound(raw_len);
}

int cdp_seg_enc_seal(struct cdp_seg_enc *enc, const struct cdp_seg_seal_opts *opts,
		     struct cdp_buf *out, uint8_t digest_out[CDP_DIGEST_LEN], struct cdp_err *err)
{
	static const struct cdp_seg_seal_opts none = { 0 };
	struct cdp_seg_header h = { 0 };
	size_t base = out->len, raw_len = cdp_seg_enc_raw_len(enc);
	uint8_t *body;
	int level = 0, rc;
	bool swap;

	if (!opts)
		opts = &none;
	if (opts->flags & ~CDP_SEG_F_ALL)
		return cdp_err_set(err, -EINVAL,
				   "seal: flags 0x%08" PRIx32 " has unknown bits 0x%08" PRIx32,
				   opts->flags, opts->flags & ~CDP_SEG_F_ALL);
	if (opts->compression == CDP_COMP_ZSTD) {
		level = opts->level ? opts->level : ZSTD_defaultCLevel();
		if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
			return cdp_err_set(err, -EINVAL, "seal: zstd level %d, expected %d..%d",
					   opts->level, ZSTD_minCLevel(), ZSTD_maxCLevel());
	} else if (opts->compression != CDP_COMP_NONE) {
		return cdp_err_set(err, -EINVAL, "seal: compression %u unknown, expected %d (none) "
				   "or %d (zstd)", opts->compression, CDP_COMP_NONE, CDP_COMP_ZSTD);
	}

	h.version = CDP_SEG_VERSION;
	/* The summary flags come from the records, never from the caller. */
	h.flags = opts->flags & CDP_SEG_F_POINT_END;
	if (enc->sync_active)
		h.flags |= CDP_SEG_F_SYNC_ACTIVE;
	if (enc->has_mark)
		h.flags |= CDP_SEG_F_MARK;
	if (enc->has_sync)
		h.flags |= CDP_SEG_F_SYNC;
	h.plan_id = enc->plan_id;
	h.epoch = enc->epoch;
	h.first_seq = enc->first_seq;
	h.last_seq = enc->first_seq + enc->nrecords - 1;	/* first_seq - 1 for a heartbeat */
	h.nrecords = enc->nrecords;
	h.raw_len = (uint32_t)raw_len;
	h.cipher = CDP_CIPHER_NONE;
	if (enc->nrecords) {
		h.t_first = enc->t_first;
		h.t_last = opts->t_last ? opts->t_last : enc->t_prev;
		if (h.t_last < enc->t_prev)
			return cdp_err_set(err, -EINVAL, "seal: t_last %" PRId64
					   " before the last record's time %" PRId64, h.t_last,
					   enc->t_prev);
	} else {
		h.flags |= CDP_SEG_F_POINT_END;
		h.t_first = opts->t_first;
		h.t_last = opts->t_last;
		if (h.t_last < h.t_first)
			return cdp_err_set(err, -EINVAL, "seal: heartbeat t_last %" PRId64
					   " before t_first %" PRId64, h.t_last, h.t_first);
	}

	/* Room for the header and the worst case of zstd; compress in place. */
	cdp_buf_reserve(out, cdp_seg_seal_room(raw_len));
	body = out->data + base + CDP_SEG_HDR_LEN;
	h.body_len = h.raw_len;
	if (level && raw_len) {
		long n = compress_body(enc, level, body, out->cap - base - CDP_SEG_HDR_LEN, err);

		if (n < 0)
			return (int)n;
		if ((size_t)n < raw_len) {
			h.compression = CDP_COMP_ZSTD;
			h.level = (int8_t)CDP_MAX(level, INT8_MIN);
			h.body_len = (uint32_t)n;
		}
	}
	swap = h.compression == CDP_COMP_NONE && raw_len && !base && out->cap >= ENC_CAP;
	if (swap)
		body = enc->raw.data + ENC_HEAD;
	else if (h.compression == CDP_COMP_NONE && raw_len)
		memcpy(body, enc_raw(enc), raw_len);
	h.body_crc32c = cdp_crc32c(0, body, h.body_len);
	rc = encoder_digest(enc, h.digest, err);
	if (rc < 0)
		return rc;
	if (swap) {
		/* Stored raw: the records' buffer becomes the segment, @out's the next records'. */
		struct cdp_buf t = *out;

		*out = enc->raw;
		enc->raw = t;
	}
	cdp_seg_write_header(&h, out->data + base);
	out->len = base + CDP_SEG_HDR_LEN + h.body_len;

	/* Continue the chain. */
	if (digest_out)
		memcpy(digest_out, h.digest, CDP_DIGEST_LEN);
	memcpy(enc->prev, h.digest, CDP_DIGEST_LEN);
	enc->first_seq += enc->nrecords;
	enc->nrecords = 0;
	enc->has_mark = enc->has_sync = false;
	enc_empty(enc);
	return 0;
}

/* ---- header -------------------------------------------------------------- */

void cdp_seg_write_header(const struct cdp_seg_header *h, uint8_t out[CDP_SEG_HDR_LEN])
{
	memset(out, 0, CDP_SEG_HDR_LEN);
	cdp_put_le32(out + H_MAGIC, CDP_SEG_MAGIC);
	cdp_put_le16(out + H_VERSION, h->version);
	cdp_put_le16(out + H_HDR_LEN, CDP_SEG_HDR_LEN);
	cdp_put_le32(out + H_FLAGS, h->flags);
	out[H_COMPRESSION] = h->compression;
	out[H_LEVEL] = (uint8_t)h->level;
	out[H_CIPHER] = h->cipher;
	cdp_put_le64(out + H_PLAN, h->plan_id);
	cdp_put_le64(out + H_EPOCH, h->epoch);
	cdp_put_le64(out + H_FIRST_SEQ, h->first_seq);
	cdp_put_le64(out + H_LAST_SEQ, h->last_seq);
	cdp_put_le64(out + H_T_FIRST, (uint64_t)h->t_first);
	cdp_put_le64(out + H_T_LAST, (uint64_t)h->t_last);
	cdp_put_le32(out + H_RAW_LEN, h->raw_len);
	cdp_put_le32(out + H_BODY_LEN, h->body_len);
	cdp_put_le32(out + H_BODY_CRC, h->body_crc32c);
	cdp_put_le32(out + H_NRECORDS, h->nrecords);
	cdp_put_le32(out + H_KEY_ID, h->key_id);
	memcpy(out + H_NONCE, h->nonce, sizeof(h->nonce));
	memcpy(out + H_TAG, h->tag, sizeof(h->tag));
	memcpy(out + H_DIGEST, h->digest, CDP_DIGEST_LEN);
	cdp_put_le32(out + H_HDR_CRC, cdp_crc32c(0, out, H_HDR_CRC));
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static int check_header(const uint8_t *buf, const struct cdp_seg_header *h, struct cdp_err *err)
{
	uint16_t hdr_len = cdp_get_le16(buf + H_HDR_LEN);
	uint64_t end;

	if (h->version != CDP_SEG_VERSION)
		return cdp_err_set(err, -EBADMSG, "segment header: version %u, expected %d",
				   h->version, CDP_SEG_VERSION);
	if (hdr_len != CDP_SEG_HDR_LEN)
		return cdp_err_set(err, -EBADMSG, "segment header: header_len %u, expected %d",
				   hdr_len, CDP_SEG_HDR_LEN);
	if (buf[H_RESERVED0] || !all_zero(buf + H_RESERVED1, H_RESERVED1_LEN))
		return cdp_err_set(err, -EBADMSG, "segment header: reserved bytes not zero");
	if (h->flags & ~CDP_SEG_F_ALL)
		return cdp_err_set(err, -EBADMSG, "segment header: flags 0x%08" PRIx32
				   " has unknown bits 0x%08" PRIx32, h->flags,
				   h->flags & ~CDP_SEG_F_ALL);
	if (h->cipher == CDP_CIPHER_AES256GCM)
		return cdp_err_set(err, -EBADMSG,
				   "segment header: cipher %u (%s) not supported yet", h->cipher,
				   cipher_name(h->cipher));
	if (h->cipher != CDP_CIPHER_NONE)
		return cdp_err_set(err, -EBADMSG, "segment header: cipher %u unknown, expected %d "
				   "(none)", h->cipher, CDP_CIPHER_NONE);
	if (h->key_id || !all_zero(h->nonce, sizeof(h->nonce)) ||
	    !all_zero(h->tag, sizeof(h->tag)))
		return cdp_err_set(err, -EBADMSG, "segment header: key_id/nonce/tag not zero with "
				   "cipher none");
	if (h->raw_len > CDP_SEG_MAX_RAW)
		return cdp_err_set(err, -EBADMSG, "segment header: raw_len %" PRIu32 " > %u",
				   h->raw_len, CDP_SEG_MAX_RAW);
	switch (h->compression) {
	case CDP_COMP_NONE:
		if (h->level)
			return cdp_err_set(err, -EBADMSG,
					   "segment header: level %d with compression "
					   "none, expected 0", h->level);
		if (h->body_len != h->raw_len)
			return cdp_err_set(err, -EBADMSG, "segment header: body_len %" PRIu32
					   " with compression none, expected raw_len %" PRIu32,
					   h->body_len, h->raw_len);
		break;
	case CDP_COMP_ZSTD:
		if (h->level == 0 || h->level > ZSTD_maxCLevel())
			return cdp_err_set(err, -EBADMSG, "segment header: zstd level %d, expected "
					   "-128..-1 or 1..%d", h->level, ZSTD_maxCLevel());
		/* The encoder stores a body raw unless zstd made it smaller. */
		if (h->body_len == 0 || h->body_len >= h->raw_len)
			return cdp_err_set(err, -EBADMSG, "segment header: body_len %" PRIu32
					   " with compression zstd, expected 1..%" PRIu32
					   " (below raw_len)", h->body_len,
					   h->raw_len ? h->raw_len - 1 : 0);
		break;
	default:
		return cdp_err_set(err, -EBADMSG, "segment header: compression %u unknown, "
				   "expected %d (none) or %d (zstd)", h->compression,
				   CDP_COMP_NONE, CDP_COMP_ZSTD);
	}
	if (h->t_first > h->t_last)
		return cdp_err_set(err, -EBADMSG, "segment header: t_first %" PRId64
				   " > t_last %" PRId64, h->t_first, h->t_last);
	if (h->nrecords == 0) {
		if (h->raw_len)
			return cdp_err_set(err, -EBADMSG, "segment header: heartbeat (nrecords 0) "
					   "with raw_len %" PRIu32 ", expected 0", h->raw_len);
		if (!(h->flags & CDP_SEG_F_POINT_END))
			return cdp_err_set(err, -EBADMSG, "segment header: heartbeat (nrecords 0) "
					   "without flag point_end");
	} else if ((uint64_t)h->nrecords * CDP_REC_HDR_LEN > h->raw_len) {
		return cdp_err_set(err, -EBADMSG, "segment header: nrecords %" PRIu32
				   " need %" PRIu64 " bytes, raw_len %" PRIu32, h->nrecords,
				   (uint64_t)h->nrecords * CDP_REC_HDR_LEN, h->raw_len);
	}
	/* last_seq = first_seq + nrecords - 1, and no seq past UINT64_MAX. */
	if (h->nrecords && __builtin_add_overflow(h->first_seq, h->nrecords - 1, &end))
		return cdp_err_set(err, -EBADMSG, "segment header: first_seq %" PRIu64
				   " + nrecords %" PRIu32 " overflows", h->first_seq, h->nrecords);
	end = h->first_seq + h->nrecords - 1;	/* wraps to first_seq - 1 for a heartbeat */
	if (h->last_seq != end)
		return cdp_err_set(err, -EBADMSG, "segment header: last_seq %" PRIu64
				   ", expected %" PRIu64 " (first_seq %" PRIu64 " + nrecords %"
				   PRIu32 " - 1)", h->last_seq, end, h->first_seq, h->nrecords);
	return 0;
}

int cdp_seg_parse_header(const uint8_t *buf, size_t len, struct cdp_seg_header *h,
			 struct cdp_err *err)
{
	uint32_t magic, crc, want;
	size_t total;
	int rc;

	if (len < CDP_SEG_HDR_LEN)
		return cdp_err_set(err, -EBADMSG,
				   "segment header: truncated, %zu bytes, expected %d", len,
				   CDP_SEG_HDR_LEN);
	magic = cdp_get_le32(buf + H_MAGIC);
	if (magic != CDP_SEG_MAGIC)
		return cdp_err_set(err, -EBADMSG, "segment header: magic 0x%08" PRIx32
				   ", expected 0x%08x", magic, CDP_SEG_MAGIC);
	crc = cdp_crc32c(0, buf, H_HDR_CRC);
	want = cdp_get_le32(buf + H_HDR_CRC);
	if (crc != want)
		return cdp_err_set(err, -EBADMSG, "segment header: header crc32c 0x%08" PRIx32
				   ", expected 0x%08" PRIx32, crc, want);

	memset(h, 0, sizeof(*h));
	h->version = cdp_get_le16(buf + H_VERSION);
	h->flags = cdp_get_le32(buf + H_FLAGS);
	h->compression = buf[H_COMPRESSION];
	h->level = (int8_t)buf[H_LEVEL];
	h->cipher = buf[H_CIPHER];
	h->plan_id = cdp_get_le64(buf + H_PLAN);
	h->epoch = cdp_get_le64(buf + H_EPOCH);
	h->first_seq = cdp_get_le64(buf + H_FIRST_SEQ);
	h->last_seq = cdp_get_le64(buf + H_LAST_SEQ);
	h->t_first = (int64_t)cdp_get_le64(buf + H_T_FIRST);
	h->t_last = (int64_t)cdp_get_le64(buf + H_T_LAST);
	h->raw_len = cdp_get_le32(buf + H_RAW_LEN);
	h->body_len = cdp_get_le32(buf + H_BODY_LEN);
	h->body_crc32c = cdp_get_le32(buf + H_BODY_CRC);
	h->nrecords = cdp_get_le32(buf + H_NRECORDS);
	h->key_id = cdp_get_le32(buf + H_KEY_ID);
	memcpy(h->nonce, buf + H_NONCE, sizeof(h->nonce));
	memcpy(h->tag, buf + H_TAG, sizeof(h->tag));
	memcpy(h->digest, buf + H_DIGEST, CDP_DIGEST_LEN);

	rc = check_header(buf, h, err);
	if (rc < 0)
		return rc;
	total = CDP_SEG_HDR_LEN + (size_t)h->body_len;
	if (len < total)
		return cdp_err_set(err, -EBADMSG,
				   "segment: truncated body, %zu bytes, expected %zu "
				   "(header %d + body_len %" PRIu32 ")", len, total,
				   CDP_SEG_HDR_LEN, h->body_len);
	if (len > total)
		return cdp_err_set(err, -EBADMSG, "segment: %zu trailing bytes after header %d + "
				   "body_len %" PRIu32, len - total, CDP_SEG_HDR_LEN, h->body_len);
	return 0;
}

int cdp_seg_check_body(const struct cdp_seg_header *h, const uint8_t *body,
		       struct cdp_err *err)
{
	uint32_t crc = cdp_crc32c(0, body, h->body_len);

	if (crc != h->body_crc32c)
		return cdp_err_set(err, -EBADMSG, "segment: body crc32c 0x%08" PRIx32
				   " expected 0x%08" PRIx32, crc, h->body_crc32c);
	return 0;
}

/* ---- body ---------------------------------------------------------------- */

int cdp_seg_decompress(const struct cdp_seg_header *h, const uint8_t *body, uint8_t *raw,
		       struct cdp_err *err)
{
	unsigned long long content;
	ZSTD_DCtx *d;
	size_t n;

	if (h->raw_len > CDP_SEG_MAX_RAW)
		return cdp_err_set(err, -EBADMSG, "segment header: raw_len %" PRIu32 " > %u",
				   h->raw_len, CDP_SEG_MAX_RAW);
	if (h->compression == CDP_COMP_NONE) {
		if (h->body_len != h->raw_len)
			return cdp_err_set(err, -EBADMSG, "segment header: body_len %" PRIu32
					   " with compression none, expected raw_len %" PRIu32,
					   h->body_len, h->raw_len);
		if (h->raw_len)
			memcpy(raw, body, h->raw_len);
		return 0;
	}
	if (h->compression != CDP_COMP_ZSTD)
		return cdp_err_set(err, -EBADMSG, "segment header: compression %u unknown",
				   h->compression);

	/* Exactly one frame, covering the whole body, of the announced size. */
	n = ZSTD_findFrameCompressedSize(body, h->body_len);
	if (ZSTD_isError(n))
		return cdp_err_set(err, -EBADMSG, "segment: zstd body: %s", ZSTD_getErrorName(n));
	if (n != h->body_len)
		return cdp_err_set(err, -EBADMSG, "segment: zstd frame of %zu bytes, body_len %"
				   PRIu32, n, h->body_len);
	content = ZSTD_getFrameContentSize(body, h->body_len);
	if (content == ZSTD_CONTENTSIZE_ERROR)
		return cdp_err_set(err, -EBADMSG, "segment: zstd body: bad frame header");
	if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != h->raw_len)
		return cdp_err_set(err, -EBADMSG, "segment: zstd frame content size %llu, expected "
				   "raw_len %" PRIu32, content, h->raw_len);
	d = thread_dctx();
	if (!d)
		return cdp_err_set(err, -EIO, "zstd: cannot create a decompression context");
	n = ZSTD_decompressDCtx(d, raw, h->raw_len, body, h->body_len);
	if (ZSTD_isError(n)) {
		/* Leave no half-state behind for the next segment on this thread. */
		ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
		return cdp_err_set(err, -EBADMSG, "segment: zstd body: %s (raw_len %" PRIu32 ")",
				   ZSTD_getErrorName(n), h->raw_len);
	}
	if (n != h->raw_len)
		return cdp_err_set(err, -EBADMSG, "segment: zstd body decompressed to %zu bytes, "
				   "expected raw_len %" PRIu32, n, h->raw_len);
	return 0;
}

int cdp_seg_next_record(const uint8_t *raw, size_t raw_len, size_t *pos,
			struct cdp_record *rec, struct cdp_err *err)
{
	size_t left;
	uint32_t plen, crc;
	int rc;

	if (*pos >= raw_len) {
		if (*pos == raw_len)
			return 0;
		return cdp_err_set(err, -EINVAL, "record walk: position %zu past raw_len %zu",
				   *pos, raw_len);
	}
	left = raw_len - *pos;
	if (left < CDP_REC_HDR_LEN)
		return cdp_err_set(err, -EBADMSG, "record at byte %zu: truncated header, %zu bytes "
				   "left, expected %d", *pos, left, CDP_REC_HDR_LEN);
	get_record_header(raw + *pos, rec);
	rc = check_record_fields(rec, -EBADMSG, err);
	if (rc < 0)
		return rc;
	plen = cdp_record_payload_len(rec);
	if (plen > left - CDP_REC_HDR_LEN)
		return cdp_err_set(err, -EBADMSG, "record seq %" PRIu64 ": %s payload %" PRIu32
				   " bytes past the body end (%zu left)", rec->seq,
				   cdp_rec_kind_name(rec->kind), plen, left - CDP_REC_HDR_LEN);
	if (plen) {
		rec->payload = raw + *pos + CDP_REC_HDR_LEN;
		crc = cdp_crc32c(0, rec->payload, plen);
		if (crc != rec->crc32c)
			return cdp_err_set(err, -EBADMSG,
					   "record seq %" PRIu64 ": payload crc32c 0x%08" PRIx32
					   " expected 0x%08" PRIx32, rec->seq, crc, rec->crc32c);
		rc = check_record_payload(rec, -EBADMSG, err);
		if (rc < 0)
			return rc;
	}
	*pos += cdp_seg_record_size(plen);
	return 1;
}

/* The checks that need the whole segment: seqs, times, counts, volumes. */
static int check_records(const struct cdp_segment *seg, const struct cdp_seg_expect *ex,
			 struct cdp_err *err)
{
	const struct cdp_seg_header *h = &seg->h;
	size_t pos = 0;
	uint32_t i = 0;
	int64_t t_prev = h->t_first;
	int rc;

	for (;;) {
		struct cdp_record r;
		uint64_t want = h->first_seq + i;

		rc = cdp_seg_next_record(seg->raw, h->raw_len, &pos, &r, err);
		if (rc < 0)
			return rc;
		if (rc == 0)
			break;
		if (i == h->nrecords)
			return cdp_err_set(err, -EBADMSG,
					   "segment: record seq %" PRIu64 " after nrecords %" PRIu32
					   " records", r.seq, h->nrecords);
		if (r.seq != want)
			return cdp_err_set(err, -EBADMSG,
					   "record seq %" PRIu64 ": expected %" PRIu64, r.seq,
					   want);
		if (i == 0 && r.time_ns != h->t_first)
			return cdp_err_set(err, -EBADMSG,
					   "record seq %" PRIu64 ": time %" PRId64
					   ", expected t_first %" PRId64, r.seq, r.time_ns,
					   h->t_first);
		if (r.time_ns < t_prev)
			return cdp_err_set(err, -EBADMSG, "record seq %" PRIu64 ": time %" PRId64
					   " before the previous record's %" PRId64, r.seq,
					   r.time_ns, t_prev);
		if (r.time_ns > h->t_last)
			return cdp_err_set(err, -EBADMSG, "record seq %" PRIu64 ": time %" PRId64
					   " after t_last %" PRId64, r.seq, r.time_ns, h->t_last);
		if (ex && ex->volume_sizes && r.kind <= CDP_REC_TRIM) {
			uint64_t size;

			if (r.volume >= ex->nvolumes)
				return cdp_err_set(err, -EBADMSG, "record seq %" PRIu64 ": volume %"
						   PRIu32 " unknown, plan has %" PRIu32 " volumes",
						   r.seq, r.volume, ex->nvolumes);
			size = ex->volume_sizes[r.volume];
			if (r.length > size || r.offset > size - r.length)
				return cdp_err_set(err, -EBADMSG, "record seq %" PRIu64 ": volume %"
						   PRIu32 " offset %" PRIu64 " length %" PRIu32
						   " past volume end %" PRIu64, r.seq, r.volume,
						   r.offset, r.length, size);
		}
		t_prev = r.time_ns;
		seg->recs[i++] = r;
	}
	if (i != h->nrecords)
		return cdp_err_set(err, -EBADMSG, "segment: nrecords %" PRIu32 ", found %" PRIu32
				   " records", h->nrecords, i);
	return 0;
}

/* The header's summary flags must say what the records say. */
static int check_summary_flags(const struct cdp_segment *seg, struct cdp_err *err)
{
	bool mark = false, sync = false;
	int last_sync = 0;

	for (uint32_t i = 0; i < seg->h.nrecords; i++) {
		uint16_t k = seg->recs[i].kind;

		mark |= k == CDP_REC_MARK;
		if (k == CDP_REC_SYNC_BEGIN || k == CDP_REC_SYNC_END) {
			sync = true;
			last_sync = k;
		}
	}
	if (mark != !!(seg->h.flags & CDP_SEG_F_MARK))
		return cdp_err_set(err, -EBADMSG, "segment %" PRIu64 ": flags: MARK %s but the "
				   "records hold %s", seg->h.first_seq,
				   mark ? "clear" : "set", mark ? "a bookmark" : "none");
	if (sync != !!(seg->h.flags & CDP_SEG_F_SYNC))
		return cdp_err_set(err, -EBADMSG, "segment %" PRIu64 ": flags: SYNC %s but the "
				   "records hold %s", seg->h.first_seq,
				   sync ? "clear" : "set", sync ? "a sync record" : "none");
	if (last_sync && (last_sync == CDP_REC_SYNC_BEGIN) !=
				 !!(seg->h.flags & CDP_SEG_F_SYNC_ACTIVE))
		return cdp_err_set(err, -EBADMSG, "segment %" PRIu64 ": flags: SYNC_ACTIVE %s "
				   "after a %s record", seg->h.first_seq,
				   last_sync == CDP_REC_SYNC_BEGIN ? "clear" : "set",
				   cdp_rec_kind_name((unsigned)last_sync));
	return 0;
}

int cdp_seg_decode(const uint8_t *buf, size_t len, const struct cdp_seg_expect *expect,
		   struct cdp_segment **out, struct cdp_err *err)
{
	struct cdp_segment *seg;
	struct cdp_seg_header h;
	uint8_t digest[CDP_DIGEST_LEN];
	size_t recs_size;
	int rc;

	*out = NULL;
	rc = cdp_seg_parse_header(buf, len, &h, err);
	if (rc < 0)
		return rc;
	if (expect && expect->check_plan && h.plan_id != expect->plan_id)
		return cdp_err_set(err, -EBADMSG, "segment: plan %" PRIu64 ", expected %" PRIu64,
				   h.plan_id, expect->plan_id);
	if (expect && expect->check_first_seq && h.first_seq != expect->first_seq)
		return cdp_err_set(err, -EBADMSG, "segment: first_seq %" PRIu64 ", expected %"
				   PRIu64, h.first_seq, expect->first_seq);
	if (expect && h.t_first < expect->min_time)
		return cdp_err_set(err, -EBADMSG, "segment: t_first %" PRId64 " before min_time %"
				   PRId64, h.t_first, expect->min_time);
	rc = expect && expect->body_checked ? 0 : cdp_seg_check_body(&h, buf + CDP_SEG_HDR_LEN, err);
	if (rc < 0)
		return rc;

	/* Sizes were bounded by cdp_seg_parse_header(): raw_len <= CDP_SEG_MAX_RAW. */
	if (__builtin_mul_overflow((size_t)h.nrecords, sizeof(struct cdp_record), &recs_size))
		return cdp_err_set(err, -EBADMSG, "segment: nrecords %" PRIu32 " too large",
				   h.nrecords);
	seg = cdp_xcalloc(1, sizeof(*seg));
	seg->h = h;
	seg->recs = cdp_xmalloc(recs_size);
	if (expect && expect->borrow_raw && h.compression == CDP_COMP_NONE &&
	    h.body_len == h.raw_len && h.raw_len <= CDP_SEG_MAX_RAW) {
		seg->raw = (uint8_t *)(buf + CDP_SEG_HDR_LEN);	/* never written through */
		seg->raw_borrowed = true;
	} else {
		seg->raw = cdp_xmalloc(h.raw_len);
		rc = cdp_seg_decompress(&h, buf + CDP_SEG_HDR_LEN, seg->raw, err);
		if (rc < 0)
			goto fail;
	}
	rc = check_records(seg, expect, err);
	if (rc < 0)
		goto fail;
	rc = check_summary_flags(seg, err);
	if (rc < 0)
		goto fail;
	if (expect && expect->prev_digest) {
		rc = cdp_chain_digest(expect->prev_digest, seg->raw, h.raw_len, digest, err);
		if (rc < 0)
			goto fail;
		if (memcmp(digest, h.digest, CDP_DIGEST_LEN)) {
			rc = cdp_err_set(err, -EBADMSG, "segment: chain digest mismatch at seq %"
					 PRIu64 " (plan %" PRIu64 ")", h.first_seq, h.plan_id);
			goto fail;
		}
	}
	*out = seg;
	return 0;
fail:
	cdp_segment_free(seg);
	return rc;
}

void cdp_segment_free(struct cdp_segment *seg)
{
	if (!seg)
		return;
	if (!seg->raw_borrowed)
		free(seg->raw);
	free(seg->recs);
	free(seg);
}
