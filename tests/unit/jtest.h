/*
 * tests/unit/jtest - a test writer for the journal tests: builds a plan's
 * segments with the real encoder, exactly as an agent would, and keeps a model
 * of each volume (plain memory) so a restore can be compared byte for byte
 * with an image computed independently of the journal.
 *
 * Volumes are small (JT_VOL bytes each). Every WRITE is filled with a
 * pattern derived from (seq, offset) so any misplaced or torn sector shows.
 */
#ifndef CDP_TESTS_JTEST_H
#define CDP_TESTS_JTEST_H

#include "tests/unit/testutil.h"

#include <sys/stat.h>

#include "common/buf.h"
#include "common/util.h"
#include "storage/journal.h"
#include "storage/segment.h"

#define JT_VOL (1u << 20)
#define JT_NVOL 2

struct jt_writer {
	struct cdp_seg_enc *enc;
	uint64_t plan;
	uint64_t epoch;
	int64_t t;			/* stamp of the next record */
	uint64_t next_seq;
	uint8_t *model[JT_NVOL];	/* volumes as the records so far make them */
	struct cdp_buf seg;		/* the last sealed segment */
	int comp_level;			/* zstd level, or 0 for none */
	uint64_t salt;			/* varies jt_gen()'s choices */
};

static inline void jt_fill(uint8_t *p, size_t len, uint64_t seq, uint64_t off)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = (seq * 0x9E3779B97F4A7C15ull) ^ ((off + i) * 0xC2B2AE3D27D4EB4Full);

		memcpy(p + i, &v, CDP_MIN((size_t)8, len - i));
	}
}

static inline void jt_init(struct jt_writer *w, uint64_t plan, uint64_t epoch)
{
	memset(w, 0, sizeof(*w));
	w->plan = plan;
	w->epoch = epoch;
	w->t = 1700000000 * CDP_NS_PER_SEC;
	w->next_seq = 1;
	w->comp_level = 1;
	w->enc = cdp_seg_enc_new(plan, epoch, 1, cdp_digest_zero);
	for (int v = 0; v < JT_NVOL; v++)
		w->model[v] = cdp_xcalloc(1, JT_VOL);
}

static inline void jt_release(struct jt_writer *w)
{
	cdp_seg_enc_free(w->enc);
	for (int v = 0; v < JT_NVOL; v++)
		free(w->model[v]);
	cdp_buf_release(&w->seg);
}

static inline void jt_plan(struct cdp_journal_plan *p, uint64_t id, const char *name)
{
	memset(p, 0, sizeof(*p));
	p->plan_id = id;
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->nvolumes = JT_NVOL;
	for (int v = 0; v < JT_NVOL; v++) {
		p->volume_size[v] = JT_VOL;
		snprintf(p->volume_name[v], sizeof(p->volume_name[v]), "vol%d", v);
	}
}

static inline void jt_add(struct jt_writer *w, uint16_t kind, uint16_t flags, uint32_t vol,
			  uint64_t off, uint32_t len, const void *payload)
{
	struct cdp_record r = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t *data = NULL;
	int rc;

	r.seq = w->next_seq;
	r.volume = vol;
	r.kind = kind;
	r.flags = flags;
	r.offset = off;
	r.length = len;
	r.time_ns = w->t;
	if (kind == CDP_REC_WRITE) {
		data = cdp_xmalloc(len);
		jt_fill(data, len, r.seq, off);
		r.payload = data;
		memcpy(w->model[vol] + off, data, len);
	} else if (kind == CDP_REC_ZERO || kind == CDP_REC_TRIM) {
		memset(w->model[vol] + off, 0, len);
	} else {
		r.payload = payload;
	}
	rc = cdp_seg_enc_add(w->enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err);
	if (rc)
		fail_msg("jt_add: %s", err.msg);
	free(data);
	w->next_seq++;
	w->t += 1000;
}

static inline void jt_write(struct jt_writer *w, uint32_t vol, uint64_t off, uint32_t len)
{
	jt_add(w, CDP_REC_WRITE, 0, vol, off, len, NULL);
}

static inline void jt_sync(struct jt_writer *w, uint16_t kind, uint64_t id, uint32_t sync_kind)
{
	struct cdp_sync_info si = { id, sync_kind };
	uint8_t p[CDP_SYNC_INFO_LEN];

	cdp_sync_info_encode(&si, p);
	jt_add(w, kind, 0, 0, 0, CDP_SYNC_INFO_LEN, p);
}

static inline void jt_mark(struct jt_writer *w, const char *name)
{
	jt_add(w, CDP_REC_MARK, 0, 0, 0, (uint32_t)strlen(name), name);
}

/* Seals what was added into w->seg; a point when @point. Returns the seg's last seq. */
static inline uint64_t jt_seal(struct jt_writer *w, bool point)
{
	struct cdp_seg_seal_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	o.flags = point ? CDP_SEG_F_POINT_END : 0;
	o.compression = w->comp_level ? CDP_COMP_ZSTD : CDP_COMP_NONE;
	o.level = w->comp_level;
	o.t_first = w->t;
	o.t_last = w->t;
	w->t += 1000;
	cdp_buf_reset(&w->seg);
	rc = cdp_seg_enc_seal(w->enc, &o, &w->seg, NULL, &err);
	if (rc)
		fail_msg("jt_seal: %s", err.msg);
	return w->next_seq - 1;
}

/* Appends w->seg and asserts success. */
static inline void jt_append_ok(struct cdp_journal *j, struct jt_writer *w)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc = cdp_journal_append_wait(j, w->plan, w->seg.data, w->seg.len, NULL, NULL, &err);

	if (rc)
		fail_msg("append: %s (%d)", err.msg, rc);
}

/* Opens a journal in @dir with test-sized extents and no background threads. */
static inline struct cdp_journal *jt_open(const char *dir, struct cdp_journal_opts *o)
{
	struct cdp_journal_opts def = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal *j;

	if (!o) {
		o = &def;
		def.extent_max_bytes = 1u << 20;
		def.no_verifier = true;
	}
	j = cdp_journal_open(dir, o, &err);
	if (!j)
		fail_msg("open: %s", err.msg);
	return j;
}

/* Restores @seq into @dir and compares each volume with @model. */
static inline void jt_check_restore(struct cdp_journal *j, uint64_t plan, uint64_t seq,
				    const char *dir, uint8_t *const model[JT_NVOL])
{
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t *got = cdp_xmalloc(JT_VOL);
	int rc = cdp_journal_restore_to_dir(j, plan, seq, false, dir, &err);

	if (rc)
		fail_msg("restore seq %llu: %s", (unsigned long long)seq, err.msg);
	for (int v = 0; v < JT_NVOL; v++) {
		char path[4200];
		FILE *f;

		snprintf(path, sizeof(path), "%s/vol%d.img", dir, v);
		f = fopen(path, "rb");
		assert_non_null(f);
		assert_int_equal(fread(got, 1, JT_VOL, f), JT_VOL);
		fclose(f);
		for (size_t i = 0; i < JT_VOL; i += CDP_SECTOR)
			if (memcmp(got + i, model[v] + i, CDP_SECTOR))
				fail_msg("restore seq %llu: volume %d differs at sector %zu",
					 (unsigned long long)seq, v, i / CDP_SECTOR);
	}
	free(got);
}

#endif

/*
 * Adds segment number @i's records, deterministic in @i: segment 1 is a full
 * sync of both volumes; then 1-4 records each (writes of 512 B..16 KiB at
 * 512-byte offsets, overlapping at random, zeroes and trims). With @resync,
 * every 9th segment opens an incremental resync span (RESYNC records) that
 * closes two segments later: the points of segments i % 9 == 0 and 1 are
 * inconsistent.
 */
static inline void jt_gen(struct jt_writer *w, uint64_t i, bool resync)
{
	uint64_t x = (i + w->salt * 0x100000001ull) * 0x9E3779B97F4A7C15ull + 0x1234567;
	unsigned n;

#define JT_NEXT() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
	if (i == 1) {
		jt_sync(w, CDP_REC_SYNC_BEGIN, 1, CDP_SYNC_FULL);
		for (uint32_t v = 0; v < JT_NVOL; v++)
			jt_add(w, CDP_REC_ZERO, CDP_REC_F_RESYNC, v, 0, JT_VOL, NULL);
		jt_sync(w, CDP_REC_SYNC_END, 1, CDP_SYNC_FULL);
		return;
	}
	if (resync && i % 9 == 0)
		jt_sync(w, CDP_REC_SYNC_BEGIN, i, CDP_SYNC_INCREMENTAL);
	n = 1 + (unsigned)(JT_NEXT() % 4);
	for (unsigned k = 0; k < n; k++) {
		unsigned kind = (unsigned)(JT_NEXT() % 8);
		uint32_t vol = (uint32_t)(JT_NEXT() % JT_NVOL);
		uint32_t len = CDP_SECTOR * (uint32_t)(1 + JT_NEXT() % 32);
		uint64_t off = CDP_SECTOR * (JT_NEXT() % ((JT_VOL - len) / CDP_SECTOR));
		uint16_t flags = resync && (i % 9 == 0 || i % 9 == 1) ? CDP_REC_F_RESYNC : 0;

		if (kind < 6)
			jt_add(w, CDP_REC_WRITE, flags, vol, off, len, NULL);
		else if (kind == 6)
			jt_add(w, CDP_REC_ZERO, flags, vol, off, len, NULL);
		else
			jt_add(w, CDP_REC_TRIM, 0, vol, off, len, NULL);
	}
	if (resync && i % 9 == 2)
		jt_sync(w, CDP_REC_SYNC_END, i - 2, CDP_SYNC_INCREMENTAL);
#undef JT_NEXT
}

/* True when segment @i's point is consistent under jt_gen(resync). */
static inline bool jt_gen_consistent(uint64_t i, bool resync)
{
	return !(resync && (i % 9 == 0 || i % 9 == 1));
}

/* Compares the base images of plan 7 in @dir with @model. */
static inline void jt_check_base(const char *dir, uint64_t plan, uint8_t *const model[JT_NVOL])
{
	uint8_t *got = cdp_xmalloc(JT_VOL);

	for (int v = 0; v < JT_NVOL; v++) {
		char path[4200];
		FILE *f;

		snprintf(path, sizeof(path), "%s/base/%016llx/%d.img", dir,
			 (unsigned long long)plan, v);
		f = fopen(path, "rb");
		assert_non_null(f);
		assert_int_equal(fread(got, 1, JT_VOL, f), JT_VOL);
		fclose(f);
		for (size_t i = 0; i < JT_VOL; i += CDP_SECTOR)
			if (memcmp(got + i, model[v] + i, CDP_SECTOR))
				fail_msg("base image %d differs at sector %zu", v, i / CDP_SECTOR);
	}
	free(got);
}
