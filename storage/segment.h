/*
 * storage/segment - the byte format of records and segments, on the wire and
 * at rest (docs/format.md is the reference; this header is the API).
 *
 * Owns: the layout; never does I/O.
 *
 * A record is (seq, volume, kind, flags, offset, length, crc32c, time, payload).
 * A segment is consecutive records of one plan (<= CDP_SEG_MAX_RAW bytes of raw
 * body, never spanning a point boundary) behind a fixed header:
 *
 *	[header CDP_SEG_HDR_LEN bytes][body body_len bytes]
 *
 * The body is the raw body (the records back to back), compressed as the header
 * says. Integrity: every record carries the CRC32C of its payload; the header
 * carries the CRC32C of the body as sent (cheap, checked at every hop without
 * decompressing) and the chain digest SHA-256(previous digest || raw body),
 * checked wherever the body is decompressed. The header protects itself with
 * a CRC32C of its own bytes.
 *
 * A heartbeat is a segment with no records: first_seq = the next seq,
 * last_seq = first_seq - 1, raw_len = 0, flag POINT_END set (the encoder sets
 * it); its digest still chains (SHA-256(prev || "")).
 *
 * Invariants checked by the decoder (each failure is -EBADMSG, with a message
 * that names the field): magic, version, header length, header CRC, known
 * flags, compression and cipher (a non-"none" cipher is refused for now),
 * raw_len <= CDP_SEG_MAX_RAW, body_len consistent with the buffer and the
 * compression, body CRC, last_seq = first_seq + nrecords - 1, t_first <= t_last,
 * reserved bytes zero; and after decompression: the raw length, every record's
 * kind, flags, length, payload CRC, seqs contiguous from first_seq, times
 * non-decreasing within [t_first, t_last] (the first record's time is t_first),
 * offset + length within its volume when sizes are given, and the chain digest
 * against the previous one when given.
 *
 * Record rules (the encoder enforces them too, with -EINVAL): WRITE/ZERO/TRIM
 * have offset and length multiples of CDP_SECTOR, length > 0, and a WRITE's
 * length <= CDP_REC_MAX_WRITE; FLUSH has volume, offset, length and crc32c 0;
 * MARK and SYNC_* have offset 0 (their volume is carried, not interpreted);
 * records without payload have crc32c 0; RESYNC only on WRITE/ZERO.
 *
 * Threads: no shared state; an encoder belongs to one thread.
 */
#ifndef CDP_STORAGE_SEGMENT_H
#define CDP_STORAGE_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"

#define CDP_SEG_MAGIC 0x53504443u	/* "CDPS" little-endian */
#define CDP_SEG_VERSION 1
#define CDP_SEG_HDR_LEN 160
#define CDP_SEG_MAX_RAW (4u << 20)	/* raw body limit: 4 MiB */
#define CDP_REC_HDR_LEN 40
#define CDP_DIGEST_LEN 32
#define CDP_SECTOR 512u		/* record offsets and lengths of data kinds are multiples */
#define CDP_MARK_NAME_MAX 128	/* a bookmark name, bytes */
/* Largest WRITE length: a sector multiple whose record fits in an empty segment. */
#define CDP_REC_MAX_WRITE (CDP_SEG_MAX_RAW - CDP_SECTOR)

enum cdp_rec_kind {
	CDP_REC_WRITE = 1,	/* payload = the data; length = payload length */
	CDP_REC_ZERO = 2,	/* no payload; [offset, offset+length) reads as zeros */
	CDP_REC_TRIM = 3,	/* no payload; contents undefined after, restored as zeros */
	CDP_REC_FLUSH = 4,	/* barrier marker; volume, offset, length 0 */
	CDP_REC_MARK = 5,	/* bookmark; payload = its name (1..CDP_MARK_NAME_MAX bytes) */
	CDP_REC_SYNC_BEGIN = 6, /* payload = struct cdp_sync_info encoded (12 bytes) */
	CDP_REC_SYNC_END = 7,	/* payload = struct cdp_sync_info encoded (12 bytes) */
};
#define CDP_REC_KIND_MAX CDP_REC_SYNC_END

/* Record flags. */
#define CDP_REC_F_RESYNC 0x0001u	/* WRITE/ZERO sent by a sync */
#define CDP_REC_F_ALL CDP_REC_F_RESYNC

/* Segment flags. */
#define CDP_SEG_F_POINT_END 0x00000001u	/* closes the point interval ending at t_last */
/*
 * Summary flags, so the journal can index points without decompressing:
 * SYNC_ACTIVE - a sync span is open after this segment's last record (its
 *               point is inconsistent); the encoder carries the state across
 *               seals and the decoder checks it against the segment's own
 *               SYNC_BEGIN/SYNC_END records when it has any;
 * MARK        - the segment holds a MARK record;
 * SYNC        - the segment holds a SYNC_BEGIN or SYNC_END record.
 */
#define CDP_SEG_F_SYNC_ACTIVE 0x00000002u
#define CDP_SEG_F_MARK 0x00000004u
#define CDP_SEG_F_SYNC 0x00000008u
#define CDP_SEG_F_ALL \
	(CDP_SEG_F_POINT_END | CDP_SEG_F_SYNC_ACTIVE | CDP_SEG_F_MARK | CDP_SEG_F_SYNC)

enum cdp_seg_compression {
	CDP_COMP_NONE = 0,
	CDP_COMP_ZSTD = 1,
};

enum cdp_seg_cipher {
	CDP_CIPHER_NONE = 0,
	CDP_CIPHER_AES256GCM = 1,	/* reserved: fields exist, refused for now */
};

enum cdp_sync_kind {
	CDP_SYNC_FULL = 1,
	CDP_SYNC_INCREMENTAL = 2,
};

/* Payload of SYNC_BEGIN / SYNC_END: id u64 LE, kind u32 LE. */
#define CDP_SYNC_INFO_LEN 12
struct cdp_sync_info {
	uint64_t sync_id;
	uint32_t kind;		/* enum cdp_sync_kind */
};

struct cdp_record {
	uint64_t seq;
	uint32_t volume;
	uint16_t kind;		/* enum cdp_rec_kind */
	uint16_t flags;		/* CDP_REC_F_* */
	uint64_t offset;	/* bytes; 0 for FLUSH/MARK/SYNC_* */
	uint32_t length;	/* bytes of range (WRITE/ZERO/TRIM) or of payload (MARK/SYNC_*) */
	uint32_t crc32c;	/* of the payload (0 bytes -> crc32c of nothing = 0) */
	int64_t time_ns;	/* agent stamp clock */
	const uint8_t *payload; /* borrowed; NULL when the kind has none */
};

/* Number of payload bytes the record carries (length for WRITE/MARK/SYNC_*, else 0). */
uint32_t cdp_record_payload_len(const struct cdp_record *r);

struct cdp_seg_header {
	uint16_t version;
	uint32_t flags;		/* CDP_SEG_F_* */
	uint8_t compression;	/* enum cdp_seg_compression */
	int8_t level;		/* zstd level used (negative = fast levels); 0 for none */
	uint8_t cipher;		/* enum cdp_seg_cipher */
	uint64_t plan_id;
	uint64_t epoch;
	uint64_t first_seq;
	uint64_t last_seq;	/* first_seq - 1 for a heartbeat */
	int64_t t_first;
	int64_t t_last;
	uint32_t raw_len;	/* raw body bytes */
	uint32_t body_len;	/* body bytes as sent */
	uint32_t body_crc32c;	/* of the body as sent */
	uint32_t nrecords;
	uint32_t key_id;	/* reserved for the cipher */
	uint8_t nonce[12];	/* reserved for the cipher */
	uint8_t tag[16];	/* reserved for the cipher */
	uint8_t digest[CDP_DIGEST_LEN]; /* SHA-256(prev digest || raw body) */
};

/* The chain digest before a plan's first segment: all zeros. */
extern const uint8_t cdp_digest_zero[CDP_DIGEST_LEN];

/* CRC32C (Castagnoli, RFC 3720) of @len bytes, continuing from @crc (0 to start). */
uint32_t cdp_crc32c(uint32_t crc, const void *buf, size_t len);

/* out = SHA-256(prev || raw[0..raw_len)). Returns 0 or -EIO when OpenSSL fails. */
int cdp_chain_digest(const uint8_t prev[CDP_DIGEST_LEN], const void *raw, size_t raw_len,
		     uint8_t out[CDP_DIGEST_LEN], struct cdp_err *err);

void cdp_sync_info_encode(const struct cdp_sync_info *si, uint8_t out[CDP_SYNC_INFO_LEN]);
int cdp_sync_info_decode(const uint8_t *p, size_t len, struct cdp_sync_info *si,
			 struct cdp_err *err);

/* ---- encoder --------------------------------------------------------- */

struct cdp_seg_enc;

/*
 * Returns a new encoder for plan @plan_id at @epoch whose first record gets
 * @first_seq and whose digest chains from @prev_digest (NULL = cdp_digest_zero).
 * Caller frees with cdp_seg_enc_free(). Out of memory aborts, like cdp_xmalloc().
 */
struct cdp_seg_enc *cdp_seg_enc_new(uint64_t plan_id, uint64_t epoch, uint64_t first_seq,
				    const uint8_t prev_digest[CDP_DIGEST_LEN]);
void cdp_seg_enc_free(struct cdp_seg_enc *enc);

/*
 * A restarted writer tells its new encoder whether a sync span was open
 * (SYNC_BEGIN sent, SYNC_END not yet). The encoder tracks it from then on.
 */
void cdp_seg_enc_set_sync_active(struct cdp_seg_enc *enc, bool active);

bool cdp_seg_enc_sync_active(const struct cdp_seg_enc *enc);

/*
 * For writers that seal on another thread (the agent: the application never
 * waits for the compressor): restart an encoder, keeping its buffers and
 * contexts, as an empty segment at @first_seq with the given sync state and
 * records no older than @t_min; and, on the sealing thread, set the digest
 * it chains from (the previous segment's) just before cdp_seg_enc_seal().
 */
void cdp_seg_enc_restart(struct cdp_seg_enc *enc, uint64_t first_seq, bool sync_active,
			 int64_t t_min);
void cdp_seg_enc_set_prev(struct cdp_seg_enc *enc, const uint8_t prev[CDP_DIGEST_LEN]);

/*
 * Appends @rec (copied, payload included). rec->seq must be the next seq,
 * time must not go backwards, kind/flags/length must be valid, and rec->crc32c
 * must match the payload (pass 0 and set CDP_SEG_ENC_COMPUTE_CRC to have it
 * computed). Returns 0, -E2BIG when the record would not fit in
 * CDP_SEG_MAX_RAW (seal first), or -EINVAL naming the field.
 */
#define CDP_SEG_ENC_COMPUTE_CRC 0x1u
/*
 * rec->crc32c was computed by the caller over these very payload bytes (the
 * agent does it before taking its sequencing lock): not computed again.
 */
#define CDP_SEG_ENC_CRC_TRUSTED 0x2u
int cdp_seg_enc_add(struct cdp_seg_enc *enc, const struct cdp_record *rec, unsigned opts,
		    struct cdp_err *err);

/* Raw bytes a record with @payload_len would add. */
size_t cdp_seg_record_size(uint32_t payload_len);
size_t cdp_seg_enc_raw_len(const struct cdp_seg_enc *enc);
uint32_t cdp_seg_enc_nrecords(const struct cdp_seg_enc *enc);
/* The seq the next record must carry. */
uint64_t cdp_seg_enc_next_seq(const struct cdp_seg_enc *enc);

struct cdp_seg_seal_opts {
	uint32_t flags;		/* CDP_SEG_F_* */
	uint8_t compression;	/* enum cdp_seg_compression */
	int level;		/* zstd level (ZSTD_minCLevel()..19); ignored for none */
	int64_t t_first;	/* heartbeat only: its time (records give it otherwise) */
	int64_t t_last;		/* >= last record time; 0 = last record's time (a heartbeat must set it) */
};
/*
 * Level notes: 0 means zstd's default (3) and is recorded as such; the header
 * keeps the level in an int8, so levels below -128 are recorded as -128 (the
 * level field is informational: decoding does not depend on it). @opts may be
 * NULL (no flags, compression none).
 */

/*
 * Seals the records added so far into one segment appended to @out
 * (header + body). If zstd does not make the body smaller it is stored raw
 * (compression none) and the header says so. On success the encoder is reset
 * to continue the chain: next first_seq = last_seq + 1, prev digest = this
 * segment's digest (also copied to @digest_out when not NULL).
 *
 * Without a copy: when @out is empty with at least CDP_SEG_ENC_SPARE bytes
 * of capacity and the body is stored raw, the encoder's records buffer
 * becomes @out (the segment is written around the records in place) and
 * @out's allocation becomes the encoder's buffer for the next records.
 */
#define CDP_SEG_ENC_SPARE (CDP_SEG_HDR_LEN + CDP_SEG_MAX_RAW + (CDP_SEG_MAX_RAW >> 8) + 4096)
int cdp_seg_enc_seal(struct cdp_seg_enc *enc, const struct cdp_seg_seal_opts *opts,
		     struct cdp_buf *out, uint8_t digest_out[CDP_DIGEST_LEN], struct cdp_err *err);
/*
 * Free room in @out with which cdp_seg_enc_seal() allocates nothing for
 * @raw_len bytes of records (the header and zstd's worst case): a caller
 * that must not take malloc's locks during the seal reserves it before.
 */
size_t cdp_seg_seal_room(size_t raw_len);

/* ---- decoder --------------------------------------------------------- */

/*
 * Parses and checks the header at @buf (header CRC, magic, version, lengths,
 * flags, compression, cipher, seq/time consistency), and that @len equals
 * CDP_SEG_HDR_LEN + body_len. Does not read the body.
 */
int cdp_seg_parse_header(const uint8_t *buf, size_t len, struct cdp_seg_header *h,
			 struct cdp_err *err);

/* Checks the body CRC of a segment whose header @h was parsed; @body has h->body_len bytes. */
int cdp_seg_check_body(const struct cdp_seg_header *h, const uint8_t *body,
		       struct cdp_err *err);

/*
 * Writes the header into @out (CDP_SEG_HDR_LEN bytes), computing its CRC.
 * Reserved bytes are written as zeros; no field is checked (tests use this to
 * build malformed headers that still carry a valid header CRC).
 */
void cdp_seg_write_header(const struct cdp_seg_header *h, uint8_t out[CDP_SEG_HDR_LEN]);

/* What the caller knows and wants checked; every field is optional. */
struct cdp_seg_expect {
	const uint8_t *prev_digest;	/* chain check when not NULL */
	bool check_first_seq;
	uint64_t first_seq;		/* when check_first_seq */
	bool check_plan;
	uint64_t plan_id;		/* when check_plan */
	int64_t min_time;		/* t_first must be >= (INT64_MIN to skip) */
	const uint64_t *volume_sizes;	/* bytes, indexed by volume id; NULL to skip */
	uint32_t nvolumes;
	/* A body stored uncompressed is used in place (no copy): the decoded
	 * segment then points into @buf and must not outlive it. */
	bool borrow_raw;
	/* The caller has just checked the body CRC of these very bytes
	 * (cdp_seg_check_body(), as jseg_read() does): not computed again. */
	bool body_checked;
};

/* A decoded segment: header, owned raw body, and its records (payloads point into raw). */
struct cdp_segment {
	struct cdp_seg_header h;
	uint8_t *raw;			/* h.raw_len bytes, owned unless raw_borrowed */
	struct cdp_record *recs;	/* h.nrecords entries, owned */
	bool raw_borrowed;		/* raw points into the decoded buffer */
};

/*
 * Decodes and fully verifies the segment in @buf[0..len) (header + body) and
 * returns it in *@out (caller frees with cdp_segment_free()). Borrows @buf.
 * @expect may be NULL.
 */
int cdp_seg_decode(const uint8_t *buf, size_t len, const struct cdp_seg_expect *expect,
		   struct cdp_segment **out, struct cdp_err *err);

/*
 * Decompresses the body of a parsed segment into @raw (which must hold
 * h->raw_len bytes) and checks the raw length; no record or digest checks.
 * For streaming readers that verify the digest themselves.
 */
int cdp_seg_decompress(const struct cdp_seg_header *h, const uint8_t *body, uint8_t *raw,
		       struct cdp_err *err);

/*
 * Walks the raw body: parses the record at raw[*pos] into @rec (payload
 * borrowed from @raw), checks kind, flags, length bounds and payload CRC,
 * and advances *pos. Returns 1 when a record was produced, 0 at the end.
 */
int cdp_seg_next_record(const uint8_t *raw, size_t raw_len, size_t *pos,
			struct cdp_record *rec, struct cdp_err *err);

void cdp_segment_free(struct cdp_segment *seg);

/* Human names for logs and errors. */
const char *cdp_rec_kind_name(unsigned kind);

#endif
