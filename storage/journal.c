/*
 * storage/journal - open, recovery, plans, cursors and the group commit.
 *
 * Design. Segment bytes go to extent files, the index to RocksDB (the
 * BlueStore pattern: RocksDB with synced 1 MiB values writes every byte
 * twice). One commit thread takes everything queued - many segments, many
 * plans - and makes it durable in one step:
 *
 *   1. check each segment against its plan's state (a copy, so a failed step
 *      leaves no trace): epoch, seq continuity, duplicates, time, cap;
 *   2. per plan, lay the accepted segments back to back in an aligned buffer
 *      padded to 4 KiB, at the current extent file's next free 4 KiB block
 *      (rolling to a fresh file when it is full or its time slice is over);
 *   3. write all buffers (io_uring, O_DIRECT), then fdatasync every touched
 *      file;
 *   4. one synced WriteBatch: index entries, points, extent-file records,
 *      plan state and sync checkpoints;
 *   5. publish the new state and call every done().
 *
 * A failed write or fdatasync fails the whole step (-EIO or -ENOSPC), seals
 * the files it touched and is never retried on the same file (fsyncgate):
 * the writer resends. Files are never appended to after a reopen, so a block
 * holding acknowledged bytes is never written again, and bytes past the
 * last indexed segment of a file are garbage nobody points to.
 *
 * Extent files are made ready ahead of need by a "prep" thread that writes
 * them once (an overwrite + fdatasync here runs ~40% faster than writing
 * into a fallocated or growing file, see docs/performance.md), and files
 * freed by folding are recycled into the same spare pool.
 */
#include "storage/journal_int.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"

#define DEF_EXTENT_MAX (256ull << 20)
#define DEF_SLICE_NS (60 * CDP_NS_PER_SEC)
#define DEF_SPARES 2
#define DEF_GROUP_MAX (64ull << 20)
#define DEF_QUEUE_MAX 1024
#define DEF_SUBMIT_TIMEOUT (10 * CDP_NS_PER_SEC)
#define DEF_VERIFY_INTERVAL (200 * CDP_NS_PER_MS)
#define PREP_PAUSE (50 * CDP_NS_PER_MS)	/* a spare's writing waits this long for a busy ingest */
#define DEF_FOLD_BATCH (256ull << 20)
#define DEF_RETENTION (24 * 3600 * CDP_NS_PER_SEC)
#define JOURNAL_MIN_FREE (24u << 20)
#define PLAN_REC_LEN (8 + 64 + 8 + 4 + CDP_JOURNAL_MAX_VOLUMES * (8 + 64) + 8 + 8)

/* ---- keys and values ----------------------------------------------------- */

void jput_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

uint64_t jget_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

void jseg_key(uint8_t k[JSEG_KEY_LEN], uint64_t plan, uint64_t first_seq, int64_t t_last)
{
	jput_be64(k, plan);
	jput_be64(k + 8, first_seq);
	jput_be64(k + 16, jtime_key(t_last));
}

void jseg_encode(const struct jseg *s, uint8_t v[JSEG_VAL_LEN])
{
	memset(v, 0, JSEG_VAL_LEN);
	cdp_put_le64(v, s->fileno);
	cdp_put_le64(v + 8, s->offset);
	cdp_put_le32(v + 16, s->len);
	cdp_put_le32(v + 20, s->flags);
	cdp_put_le64(v + 24, s->last_seq);
	cdp_put_le64(v + 32, (uint64_t)s->t_first);
	cdp_put_le32(v + 40, s->raw_len);
	cdp_put_le32(v + 44, s->nrecords);
	memcpy(v + 48, s->digest, CDP_DIGEST_LEN);
	cdp_put_le64(v + 80, (uint64_t)s->recv_time);
}

int jseg_decode(const uint8_t *k, size_t klen, const uint8_t *v, size_t vlen, struct jseg *s,
		struct cdp_err *err)
{
	if (klen != JSEG_KEY_LEN || vlen != JSEG_VAL_LEN)
		return cdp_err_set(err, -EBADMSG, "segment index entry: key %zu/value %zu bytes, "
				   "expected %d/%d", klen, vlen, JSEG_KEY_LEN, JSEG_VAL_LEN);
	s->plan_id = jget_be64(k);
	s->first_seq = jget_be64(k + 8);
	s->t_last = jtime_unkey(jget_be64(k + 16));
	s->fileno = cdp_get_le64(v);
	s->offset = cdp_get_le64(v + 8);
	s->len = cdp_get_le32(v + 16);
	s->flags = cdp_get_le32(v + 20);
	s->last_seq = cdp_get_le64(v + 24);
	s->t_first = (int64_t)cdp_get_le64(v + 32);
	s->raw_len = cdp_get_le32(v + 40);
	s->nrecords = cdp_get_le32(v + 44);
	memcpy(s->digest, v + 48, CDP_DIGEST_LEN);
	s->recv_time = (int64_t)cdp_get_le64(v + 80);
	return 0;
}

void jpoint_key(uint8_t k[JPOINT_KEY_LEN], uint64_t plan, int64_t time, uint64_t seq)
{
	jput_be64(k, plan);
	jput_be64(k + 8, jtime_key(time));
	jput_be64(k + 16, seq);
}

static size_t jpoint_encode(const struct cdp_journal_point *p, uint8_t *v)
{
	size_t n = strnlen(p->name, CDP_MARK_NAME_MAX);

	cdp_put_le32(v, p->flags);
	cdp_put_le16(v + 4, (uint16_t)n);
	memcpy(v + 6, p->name, n);
	return 6 + n;
}

int jpoint_decode(const uint8_t *k, size_t klen, const uint8_t *v, size_t vlen,
		  struct cdp_journal_point *p)
{
	uint16_t n;

	if (klen != JPOINT_KEY_LEN || vlen < 6)
		return -EBADMSG;
	n = cdp_get_le16(v + 4);
	if (n > CDP_MARK_NAME_MAX || vlen != 6u + n)
		return -EBADMSG;
	p->time_ns = jtime_unkey(jget_be64(k + 8));
	p->seq = jget_be64(k + 16);
	p->flags = cdp_get_le32(v);
	memcpy(p->name, v + 6, n);
	p->name[n] = '\0';
	return 0;
}

void jmeta_key(uint8_t *k, size_t *klen, char tag, uint64_t plan, const void *extra,
	       size_t extra_len)
{
	k[0] = (uint8_t)tag;
	jput_be64(k + 1, plan);
	if (extra_len)
		memcpy(k + 9, extra, extra_len);
	*klen = 9 + extra_len;
}

void jstate_encode(const struct jstate *st, uint8_t v[JSTATE_VAL_LEN])
{
	memset(v, 0, JSTATE_VAL_LEN);
	cdp_put_le64(v, st->next_seq);
	memcpy(v + 8, st->digest, CDP_DIGEST_LEN);
	cdp_put_le64(v + 40, (uint64_t)st->last_t);
	cdp_put_le64(v + 48, (uint64_t)st->last_point_t);
	v[56] = st->synced;
	v[57] = st->sync_active;
	v[58] = st->has_ckpt;
	cdp_put_le64(v + 64, st->open_sync_begin);
	cdp_put_le64(v + 72, st->damaged_from);
	cdp_put_le64(v + 80, st->damage_seen_at);
	cdp_put_le64(v + 88, st->ckpt.sync_id);
	cdp_put_le32(v + 96, st->ckpt.kind);
	cdp_put_le32(v + 100, st->ckpt.volume);
	cdp_put_le64(v + 104, st->ckpt.offset);
}

static int jstate_decode(const uint8_t *v, size_t len, struct jstate *st)
{
	if (len != JSTATE_VAL_LEN)
		return -EBADMSG;
	st->next_seq = cdp_get_le64(v);
	memcpy(st->digest, v + 8, CDP_DIGEST_LEN);
	st->last_t = (int64_t)cdp_get_le64(v + 40);
	st->last_point_t = (int64_t)cdp_get_le64(v + 48);
	st->synced = v[56];
	st->sync_active = v[57];
	st->has_ckpt = v[58];
	st->open_sync_begin = cdp_get_le64(v + 64);
	st->damaged_from = cdp_get_le64(v + 72);
	st->damage_seen_at = cdp_get_le64(v + 80);
	st->ckpt.sync_id = cdp_get_le64(v + 88);
	st->ckpt.kind = cdp_get_le32(v + 96);
	st->ckpt.volume = cdp_get_le32(v + 100);
	st->ckpt.offset = cdp_get_le64(v + 104);
	return 0;
}

static void plan_encode(const struct cdp_journal_plan *p, const void *blob, size_t blob_len,
			struct cdp_buf *out)
{
	uint8_t *v = cdp_buf_append_zero(out, PLAN_REC_LEN);
	size_t o = 0;

	cdp_put_le64(v + o, p->plan_id), o += 8;
	memcpy(v + o, p->name, strnlen(p->name, 63)), o += 64;
	cdp_put_le64(v + o, p->epoch), o += 8;
	cdp_put_le32(v + o, p->nvolumes), o += 4;
	for (unsigned i = 0; i < CDP_JOURNAL_MAX_VOLUMES; i++) {
		cdp_put_le64(v + o, p->volume_size[i]), o += 8;
		memcpy(v + o, p->volume_name[i], strnlen(p->volume_name[i], 63)), o += 64;
	}
	cdp_put_le64(v + o, (uint64_t)p->retention_ns), o += 8;
	cdp_put_le64(v + o, p->journal_max_bytes);
	if (blob_len)
		cdp_buf_append(out, blob, blob_len);
}

static int plan_decode(const uint8_t *v, size_t len, struct cdp_journal_plan *p,
		       struct cdp_buf *blob)
{
	size_t o = 0;

	if (len < PLAN_REC_LEN)
		return -EBADMSG;
	memset(p, 0, sizeof(*p));
	p->plan_id = cdp_get_le64(v + o), o += 8;
	memcpy(p->name, v + o, 63), o += 64;
	p->epoch = cdp_get_le64(v + o), o += 8;
	p->nvolumes = cdp_get_le32(v + o), o += 4;
	if (p->nvolumes > CDP_JOURNAL_MAX_VOLUMES)
		return -EBADMSG;
	for (unsigned i = 0; i < CDP_JOURNAL_MAX_VOLUMES; i++) {
		p->volume_size[i] = cdp_get_le64(v + o), o += 8;
		memcpy(p->volume_name[i], v + o, 63), o += 64;
	}
	p->retention_ns = (int64_t)cdp_get_le64(v + o), o += 8;
	p->journal_max_bytes = cdp_get_le64(v + o), o += 8;
	if (blob) {
		cdp_buf_reset(blob);
		cdp_buf_append(blob, v + o, len - o);
	}
	return 0;
}

void jhorizon_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan, uint64_t seq,
		  const uint8_t digest[CDP_DIGEST_LEN], uint64_t first, int64_t t,
		  uint64_t fold_target)
{
	uint8_t k[16], v[64];
	size_t klen = 0;

	jmeta_key(k, &klen, 'H', plan, NULL, 0);
	cdp_put_le64(v, seq);
	memcpy(v + 8, digest, CDP_DIGEST_LEN);
	cdp_put_le64(v + 40, (uint64_t)t);
	cdp_put_le64(v + 48, fold_target);
	cdp_put_le64(v + 56, first);
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v, sizeof(v));
}

void jfile_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan,
	       const struct jfile *f)
{
	uint8_t k[24], v[40], fk[8];
	size_t klen = 0;

	jput_be64(fk, f->fileno);
	jmeta_key(k, &klen, 'F', plan, fk, 8);
	cdp_put_le64(v, f->size);
	cdp_put_le64(v + 8, f->used);
	cdp_put_le64(v + 16, f->first_seq);
	cdp_put_le64(v + 24, f->last_seq);
	cdp_put_le64(v + 32, f->prepared);
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v, sizeof(v));
}

void jverified_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan,
		   uint64_t last_first, int64_t last_t, uint64_t next_seq,
		   const uint8_t digest[CDP_DIGEST_LEN])
{
	uint8_t k[16], v[56];
	size_t klen = 0;

	jmeta_key(k, &klen, 'V', plan, NULL, 0);
	cdp_put_le64(v, next_seq);
	memcpy(v + 8, digest, CDP_DIGEST_LEN);
	cdp_put_le64(v + 40, last_first);
	cdp_put_le64(v + 48, (uint64_t)last_t);
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v, sizeof(v));
}

/* ---- rocksdb helpers ----------------------------------------------------- */

static int db_error(char *dberr, struct cdp_err *err, const char *what)
{
	int code = strstr(dberr, "No space left") ? -ENOSPC : -EIO;

	cdp_err_set(err, code, "index %s: %s", what, dberr);
	free(dberr);
	return code;
}

int jdb_write(struct cdp_journal *j, rocksdb_writebatch_t *wb, struct cdp_err *err)
{
	char *dberr = NULL;

	if (cdp_fault_point("journal.index_write"))
		return cdp_err_set(err, -EIO, "index write: fault injected");
	rocksdb_write(j->db, j->wsync, wb, &dberr);
	if (dberr)
		return db_error(dberr, err, "write");
	return 0;
}

int jdb_get(struct cdp_journal *j, rocksdb_column_family_handle_t *cf, const uint8_t *k,
	    size_t klen, struct cdp_buf *out, bool *found, struct cdp_err *err)
{
	char *dberr = NULL, *v;
	size_t vlen = 0;

	v = rocksdb_get_cf(j->db, j->ropts, cf, (const char *)k, klen, &vlen, &dberr);
	if (dberr)
		return db_error(dberr, err, "read");
	*found = v != NULL;
	cdp_buf_reset(out);
	if (v) {
		cdp_buf_append(out, v, vlen);
		rocksdb_free(v);
	}
	return 0;
}

int jseg_scan(struct cdp_journal *j, uint64_t plan, uint64_t from,
	      int (*fn)(void *arg, const struct jseg *s), void *arg, struct cdp_err *err)
{
	rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
	uint8_t start[JSEG_KEY_LEN], end[8];
	rocksdb_iterator_t *it;
	int rc = 0;

	jseg_key(start, plan, from, INT64_MIN);
	jput_be64(end, plan + 1);
	rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)end, 8);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_seg);
	for (rocksdb_iter_seek(it, (char *)start, sizeof(start)); rocksdb_iter_valid(it);
	     rocksdb_iter_next(it)) {
		size_t klen, vlen;
		const char *k = rocksdb_iter_key(it, &klen), *v = rocksdb_iter_value(it, &vlen);
		struct jseg s;

		rc = jseg_decode((const uint8_t *)k, klen, (const uint8_t *)v, vlen, &s, err);
		if (rc)
			break;
		rc = fn(arg, &s);
		if (rc)
			break;
	}
	if (!rc) {
		char *dberr = NULL;

		rocksdb_iter_get_error(it, &dberr);
		if (dberr)
			rc = db_error(dberr, err, "scan");
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	return rc;
}

struct find_arg {
	uint64_t seq;
	struct jseg *out;
};

static int find_cb(void *arg, const struct jseg *s)
{
	struct find_arg *f = arg;

	/* The first segment that ends at or after seq; heartbeats end before. */
	if (s->last_seq >= f->seq || s->first_seq > f->seq) {
		*f->out = *s;
		return 1;
	}
	return 0;
}

int jseg_find(struct cdp_journal *j, uint64_t plan, uint64_t seq, struct jseg *s,
	      struct cdp_err *err)
{
	struct find_arg f = { seq, s };
	uint64_t from = seq;
	int rc;

	/* The segment holding seq starts at most 4 MiB / 40 bytes of records back. */
	from = seq > CDP_SEG_MAX_RAW / CDP_REC_HDR_LEN ? seq - CDP_SEG_MAX_RAW / CDP_REC_HDR_LEN
						       : 0;
	rc = jseg_scan(j, plan, from, find_cb, &f, err);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return cdp_err_set(err, -ENOENT, "plan %" PRIu64 ": no segment holds seq %" PRIu64,
				   plan, seq);
	return 0;
}

/* ---- paths and plans ----------------------------------------------------- */

void jpath_plan_dir(struct cdp_journal *j, char *buf, size_t size, const char *kind,
		    uint64_t plan)
{
	snprintf(buf, size, "%s/%s/%016" PRIx64, j->dir, kind, plan);
}

void jpath_extent(struct cdp_journal *j, char *buf, size_t size, uint64_t plan, uint64_t fileno)
{
	snprintf(buf, size, "%s/extents/%016" PRIx64 "/%016" PRIx64 ".ext", j->dir, plan, fileno);
}

void jpath_base(struct cdp_journal *j, char *buf, size_t size, uint64_t plan, uint32_t volume)
{
	snprintf(buf, size, "%s/base/%016" PRIx64 "/%u.img", j->dir, plan, volume);
}

static void spare_path(struct cdp_journal *j, char *buf, size_t size, uint64_t n)
{
	snprintf(buf, size, "%s/extents/spare/%016" PRIx64 ".ext", j->dir, n);
}

struct jplan *jplan_find_locked(struct cdp_journal *j, uint64_t plan_id)
{
	for (size_t i = 0; i < j->nplans; i++)
		if (j->plans[i]->conf.plan_id == plan_id && !j->plans[i]->deleted)
			return j->plans[i];
	return NULL;
}

struct jplan *jplan_get(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err)
{
	struct jplan *p;

	pthread_mutex_lock(&j->mu);
	p = jplan_find_locked(j, plan_id);
	if (p)
		p->refs++;
	pthread_mutex_unlock(&j->mu);
	if (!p)
		cdp_err_set(err, -ENOENT, "unknown plan %" PRIu64, plan_id);
	return p;
}

static void jplan_free(struct jplan *p)
{
	while (p->files) {
		struct jfile *f = p->files;

		p->files = f->next;
		if (f->fd >= 0)
			close(f->fd);
		free(f);
	}
	free(p);
}

void jplan_put(struct cdp_journal *j, struct jplan *p)
{
	pthread_mutex_lock(&j->mu);
	p->refs--;
	pthread_mutex_unlock(&j->mu);
}

void jevent(struct cdp_journal *j, const struct cdp_journal_event *ev)
{
	if (ev->kind == CDP_JOURNAL_EV_CORRUPT)
		cdp_log_err("journal: plan %" PRIu64 ": %s", ev->plan_id, ev->msg);
	else
		cdp_log_warn("journal: %s", ev->msg);
	if (j->opts.on_event)
		j->opts.on_event(j->opts.event_arg, ev);
}

static int mkdir_p(const char *path)
{
	char tmp[4096];

	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0750) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0750) && errno != EEXIST)
		return -errno;
	return 0;
}

static int check_plan_conf(const struct cdp_journal_plan *p, struct cdp_err *err)
{
	if (!p->plan_id)
		return cdp_err_set(err, -EINVAL, "plan_id: must be > 0");
	if (!p->name[0] || strnlen(p->name, sizeof(p->name)) > CDP_JOURNAL_NAME_MAX)
		return cdp_err_set(err, -EINVAL, "plan %" PRIu64 ": name: empty or too long",
				   p->plan_id);
	if (!p->nvolumes || p->nvolumes > CDP_JOURNAL_MAX_VOLUMES)
		return cdp_err_set(err, -EINVAL, "plan %s: volumes: %u, expected 1..%d", p->name,
				   p->nvolumes, CDP_JOURNAL_MAX_VOLUMES);
	for (uint32_t i = 0; i < p->nvolumes; i++) {
		if (!p->volume_size[i] || p->volume_size[i] % CDP_SECTOR)
			return cdp_err_set(err, -EINVAL, "plan %s: volume %u: size %" PRIu64
					   " is not a positive multiple of %u", p->name, i,
					   p->volume_size[i], CDP_SECTOR);
		if (!p->volume_name[i][0] || strchr(p->volume_name[i], '/'))
			return cdp_err_set(err, -EINVAL, "plan %s: volume %u: name '%s' is empty "
					   "or has a '/'", p->name, i, p->volume_name[i]);
	}
	if (p->retention_ns < 0)
		return cdp_err_set(err, -EINVAL, "plan %s: retention: negative", p->name);
	return 0;
}

static int fsync_parent(struct cdp_journal *j, const char *path)
{
	char dir[4096];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	return j->io->fsync_dir(j->io->ctx, dir);
}

/* Creates the base images (sparse, volume-sized) of a new plan. */
static int create_base_images(struct cdp_journal *j, const struct cdp_journal_plan *p,
			      struct cdp_err *err)
{
	char path[4096];
	int rc;

	jpath_plan_dir(j, path, sizeof(path), "base", p->plan_id);
	rc = mkdir_p(path);
	if (rc)
		return cdp_err_sys(err, rc, "mkdir %s", path);
	jpath_plan_dir(j, path, sizeof(path), "extents", p->plan_id);
	rc = mkdir_p(path);
	if (rc)
		return cdp_err_sys(err, rc, "mkdir %s", path);
	for (uint32_t v = 0; v < p->nvolumes; v++) {
		int fd;

		jpath_base(j, path, sizeof(path), p->plan_id, v);
		fd = j->io->open(j->io->ctx, path, O_RDWR | O_CREAT | O_TRUNC, 0640);
		if (fd < 0)
			return cdp_err_sys(err, fd, "create %s", path);
		rc = j->io->ftruncate(j->io->ctx, fd, p->volume_size[v]);
		if (!rc)
			rc = cdp_io_fdatasync(j->io, fd);
		j->io->close(j->io->ctx, fd);
		if (rc)
			return cdp_err_sys(err, rc, "size %s", path);
	}
	rc = fsync_parent(j, path);
	if (!rc) {
		jpath_plan_dir(j, path, sizeof(path), "extents", p->plan_id);
		rc = fsync_parent(j, path);
	}
	if (rc)
		return cdp_err_sys(err, rc, "fsync directory of %s", path);
	return 0;
}

int cdp_journal_plan_create(struct cdp_journal *j, const struct cdp_journal_plan *conf,
			    const void *blob, size_t blob_len, struct cdp_err *err)
{
	struct cdp_buf v = CDP_BUF_INIT;
	rocksdb_writebatch_t *wb;
	struct jplan *p;
	uint8_t k[16], sv[JSTATE_VAL_LEN];
	size_t klen = 0;
	int rc;

	rc = check_plan_conf(conf, err);
	if (rc)
		return rc;
	pthread_mutex_lock(&j->mu);
	p = jplan_find_locked(j, conf->plan_id);
	pthread_mutex_unlock(&j->mu);
	if (p)
		return cdp_err_set(err, -EEXIST, "plan %" PRIu64 " (%s) already exists",
				   conf->plan_id, p->conf.name);
	rc = create_base_images(j, conf, err);
	if (rc)
		return rc;

	p = cdp_xcalloc(1, sizeof(*p));
	p->conf = *conf;
	if (!p->conf.retention_ns)
		p->conf.retention_ns = DEF_RETENTION;
	p->st.next_seq = 1;
	p->ast = p->st;
	p->next_fileno = 1;
	plan_encode(&p->conf, blob, blob_len, &v);
	wb = rocksdb_writebatch_create();
	jmeta_key(k, &klen, 'P', conf->plan_id, NULL, 0);
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v.data, v.len);
	jstate_encode(&p->st, sv);
	jmeta_key(k, &klen, 'S', conf->plan_id, NULL, 0);
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)sv, sizeof(sv));
	jhorizon_put(j, wb, conf->plan_id, 0, cdp_digest_zero, 0, INT64_MIN, 0);
	jverified_put(j, wb, conf->plan_id, 0, INT64_MIN, 1, cdp_digest_zero);
	rc = jdb_write(j, wb, err);
	rocksdb_writebatch_destroy(wb);
	cdp_buf_release(&v);
	if (rc) {
		free(p);
		return cdp_err_prefix(err, "create plan %s", conf->name);
	}
	pthread_mutex_lock(&j->mu);
	j->plans = cdp_xrealloc(j->plans, (j->nplans + 1) * sizeof(*j->plans));
	j->plans[j->nplans++] = p;
	pthread_mutex_unlock(&j->mu);
	return 0;
}

static int plan_rewrite(struct cdp_journal *j, const struct cdp_journal_plan *conf,
			const void *blob, size_t blob_len, bool keep_blob, struct cdp_err *err)
{
	struct cdp_buf v = CDP_BUF_INIT, old = CDP_BUF_INIT;
	struct cdp_journal_plan cur;
	uint8_t k[16];
	size_t klen = 0;
	bool found;
	int rc;

	jmeta_key(k, &klen, 'P', conf->plan_id, NULL, 0);
	if (keep_blob) {
		rc = jdb_get(j, j->cf_meta, k, klen, &old, &found, err);
		if (!rc && (!found || plan_decode(old.data, old.len, &cur, &old)))
			rc = cdp_err_set(err, -EIO, "plan %" PRIu64 ": record unreadable",
					 conf->plan_id);
		if (rc)
			goto out;
		blob = old.data;
		blob_len = old.len;
	}
	plan_encode(conf, blob, blob_len, &v);
	{
		rocksdb_writebatch_t *wb = rocksdb_writebatch_create();

		rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v.data, v.len);
		rc = jdb_write(j, wb, err);
		rocksdb_writebatch_destroy(wb);
	}
out:
	cdp_buf_release(&v);
	cdp_buf_release(&old);
	return rc;
}

int cdp_journal_plan_update(struct cdp_journal *j, const struct cdp_journal_plan *conf,
			    const void *blob, size_t blob_len, struct cdp_err *err)
{
	struct cdp_journal_plan next;
	struct jplan *p = jplan_get(j, conf->plan_id, err);
	int rc;

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	next = p->conf;
	pthread_mutex_unlock(&j->mu);
	memcpy(next.name, conf->name, sizeof(next.name));
	next.retention_ns = conf->retention_ns ? conf->retention_ns : DEF_RETENTION;
	next.journal_max_bytes = conf->journal_max_bytes;
	rc = check_plan_conf(&next, err);
	if (!rc)
		rc = plan_rewrite(j, &next, blob, blob_len, false, err);
	if (!rc) {
		pthread_mutex_lock(&j->mu);
		p->conf = next;
		pthread_mutex_unlock(&j->mu);
	}
	jplan_put(j, p);
	return rc;
}

int cdp_journal_plan_set_epoch(struct cdp_journal *j, uint64_t plan_id, uint64_t epoch,
			       struct cdp_err *err)
{
	struct cdp_journal_plan next;
	struct jplan *p = jplan_get(j, plan_id, err);
	int rc = 0;

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	next = p->conf;
	pthread_mutex_unlock(&j->mu);
	if (epoch < next.epoch) {
		rc = cdp_err_set(err, -EINVAL, "plan %s: epoch %" PRIu64 " < current %" PRIu64,
				 next.name, epoch, next.epoch);
	} else if (epoch > next.epoch) {
		next.epoch = epoch;
		rc = plan_rewrite(j, &next, NULL, 0, true, err);
		if (!rc) {
			pthread_mutex_lock(&j->mu);
			p->conf.epoch = epoch;
			pthread_mutex_unlock(&j->mu);
		}
	}
	jplan_put(j, p);
	return rc;
}

int cdp_journal_plan_get(struct cdp_journal *j, uint64_t plan_id, struct cdp_journal_plan *out,
			 struct cdp_buf *blob, struct cdp_err *err)
{
	struct cdp_buf v = CDP_BUF_INIT;
	struct jplan *p = jplan_get(j, plan_id, err);
	uint8_t k[16];
	size_t klen = 0;
	bool found;
	int rc = 0;

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	*out = p->conf;
	pthread_mutex_unlock(&j->mu);
	if (blob) {
		jmeta_key(k, &klen, 'P', plan_id, NULL, 0);
		rc = jdb_get(j, j->cf_meta, k, klen, &v, &found, err);
		if (!rc) {
			struct cdp_journal_plan tmp;

			if (!found || plan_decode(v.data, v.len, &tmp, blob))
				rc = cdp_err_set(err, -EIO, "plan %" PRIu64 ": record unreadable",
						 plan_id);
		}
	}
	cdp_buf_release(&v);
	jplan_put(j, p);
	return rc;
}

int cdp_journal_plan_list(struct cdp_journal *j, uint64_t *ids, size_t max, struct cdp_err *err)
{
	int n = 0;

	pthread_mutex_lock(&j->mu);
	for (size_t i = 0; i < j->nplans; i++) {
		if (j->plans[i]->deleted)
			continue;
		if ((size_t)n < max)
			ids[n] = j->plans[i]->conf.plan_id;
		n++;
	}
	pthread_mutex_unlock(&j->mu);
	return n;
}

static void delete_range_cf(rocksdb_writebatch_t *wb, rocksdb_column_family_handle_t *cf,
			    const uint8_t *start, size_t slen, const uint8_t *end, size_t elen)
{
	rocksdb_writebatch_delete_range_cf(wb, cf, (const char *)start, slen, (const char *)end,
					   elen);
}

static void rm_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char sub[4096];

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		unlink(sub);
	}
	closedir(d);
	rmdir(path);
}

int cdp_journal_plan_delete(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err)
{
	uint8_t s[16], e[16];
	char path[4096];
	rocksdb_writebatch_t *wb;
	struct jplan *p;
	int rc;

	pthread_mutex_lock(&j->mu);
	p = jplan_find_locked(j, plan_id);
	if (p && (p->refs || p->pins)) {
		pthread_mutex_unlock(&j->mu);
		return cdp_err_set(err, -EBUSY, "plan %s: in use by a reader", p->conf.name);
	}
	if (p)
		p->deleted = true;	/* the commit thread refuses its segments from now on */
	pthread_mutex_unlock(&j->mu);
	if (!p)
		return cdp_err_set(err, -ENOENT, "unknown plan %" PRIu64, plan_id);

	/*
	 * Let the group commits that may hold its segments finish: one being
	 * prepared (commit_mu), then the pipeline (the index thread idle). Steps
	 * prepared after that refuse the plan (deleted is set).
	 */
	pthread_mutex_lock(&j->commit_mu);
	pthread_mutex_unlock(&j->commit_mu);
	pthread_mutex_lock(&j->smu);
	while (j->pending)
		pthread_cond_wait(&j->scond, &j->smu);	/* the index thread always drains */
	pthread_mutex_unlock(&j->smu);
	pthread_mutex_lock(&j->fold_mu);
	pthread_mutex_lock(&j->commit_mu);
	wb = rocksdb_writebatch_create();
	jput_be64(s, plan_id);
	jput_be64(e, plan_id + 1);
	delete_range_cf(wb, j->cf_seg, s, 8, e, 8);
	delete_range_cf(wb, j->cf_point, s, 8, e, 8);
	for (const char *t = "PSHFCV"; *t; t++) {
		uint8_t ks[16], ke[16];
		size_t kl;

		jmeta_key(ks, &kl, *t, plan_id, NULL, 0);
		jmeta_key(ke, &kl, *t, plan_id + 1, NULL, 0);
		delete_range_cf(wb, j->cf_meta, ks, kl, ke, kl);
	}
	rc = jdb_write(j, wb, err);
	rocksdb_writebatch_destroy(wb);
	pthread_mutex_unlock(&j->commit_mu);
	pthread_mutex_unlock(&j->fold_mu);
	if (rc)
		return cdp_err_prefix(err, "delete plan %" PRIu64, plan_id);
	jpath_plan_dir(j, path, sizeof(path), "extents", plan_id);
	rm_tree(path);
	jpath_plan_dir(j, path, sizeof(path), "base", plan_id);
	rm_tree(path);
	return 0;
}

/* ---- extent files -------------------------------------------------------- */

/*
 * True when @need more bytes fit while JOURNAL_MIN_FREE stays free: the
 * journal never fills its disk to the last block, so the index can always
 * write its log and the store always opens again.
 */
static bool space_ok(struct cdp_journal *j, uint64_t need, uint64_t *avail)
{
	struct statvfs vfs;

	if (statvfs(j->dir, &vfs))
		return true;	/* cannot tell: let the write say */
	*avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	return *avail >= need + JOURNAL_MIN_FREE;
}

static bool bg_sleep(struct cdp_journal *j, int64_t ns);

/*
 * Writes a spare extent file once, so later writes into it are overwrites;
 * pauses while ingest is busy (@m: the caller's meter). -ECANCELED when the
 * journal closes meanwhile.
 */
static int prepare_spare(struct cdp_journal *j, uint64_t n, struct jbusy *m, struct cdp_err *err)
{
	const size_t chunk = 4u << 20;
	char tmp[4096], path[4096];
	uint8_t *zero;
	int fd, rc = 0;

	spare_path(j, path, sizeof(path), n);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = j->io->open(j->io->ctx, tmp, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0640);
	if (fd < 0)
		return cdp_err_sys(err, fd, "create %s", tmp);
	zero = cdp_xaligned_alloc(CDP_IO_ALIGN, chunk);
	memset(zero, 0, chunk);
	for (uint64_t off = 0; off < j->opts.extent_max_bytes && !rc; off += chunk) {
		size_t n_ = (size_t)CDP_MIN((uint64_t)chunk, j->opts.extent_max_bytes - off);

		while (!rc && jbusy_check(j, m))
			if (!bg_sleep(j, PREP_PAUSE))
				rc = -ECANCELED;
		if (!rc)
			rc = cdp_io_pwrite(j->io, fd, zero, n_, off);
	}
	free(zero);
	if (!rc)
		rc = cdp_io_fdatasync(j->io, fd);
	j->io->close(j->io->ctx, fd);
	if (!rc)
		rc = j->io->rename(j->io->ctx, tmp, path);
	if (!rc)
		rc = fsync_parent(j, path);
	if (rc) {
		j->io->unlink(j->io->ctx, tmp);
		return cdp_err_sys(err, rc, "prepare %s", path);
	}
	return 0;
}

/* Takes a spare file for @p as @fileno; false when none is ready. */
static bool take_spare(struct cdp_journal *j, uint64_t plan, uint64_t fileno)
{
	char dir[4096], path[4096], to[4096];
	struct dirent *e;
	bool taken = false;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/extents/spare", j->dir);
	d = opendir(dir);
	if (!d)
		return false;
	while (!taken && (e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (n < 5 || strcmp(e->d_name + n - 4, ".ext"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		jpath_extent(j, to, sizeof(to), plan, fileno);
		if (j->io->rename(j->io->ctx, path, to) == 0)
			taken = true;
	}
	closedir(d);
	if (taken) {
		pthread_mutex_lock(&j->mu);
		if (j->nspares)
			j->nspares--;
		pthread_cond_signal(&j->spare_cond);
		pthread_mutex_unlock(&j->mu);
	}
	return taken;
}

/* Opens a new current extent file for @p (commit thread). */
static int roll_file(struct cdp_journal *j, struct jplan *p, struct jfile **out,
		     struct cdp_err *err)
{
	char path[4096];
	struct jfile *f, **tail;
	uint64_t fileno;
	int fd, rc;
	bool spare;

	pthread_mutex_lock(&j->mu);
	fileno = p->next_fileno++;
	pthread_mutex_unlock(&j->mu);
	spare = take_spare(j, p->conf.plan_id, fileno);
	jpath_extent(j, path, sizeof(path), p->conf.plan_id, fileno);
	fd = j->io->open(j->io->ctx, path, O_RDWR | O_CREAT | O_DIRECT, 0640);
	if (fd < 0)
		return cdp_err_sys(err, fd, "open %s", path);
	rc = fsync_parent(j, path);
	if (!rc && spare) {
		char sdir[4096];

		snprintf(sdir, sizeof(sdir), "%s/extents/spare", j->dir);
		rc = j->io->fsync_dir(j->io->ctx, sdir);
	}
	if (rc) {
		j->io->close(j->io->ctx, fd);
		return cdp_err_sys(err, rc, "fsync directory of %s", path);
	}
	f = cdp_xcalloc(1, sizeof(*f));
	f->fileno = fileno;
	f->fd = fd;
	f->size = j->opts.extent_max_bytes;
	f->prepared = spare;
	f->opened_mono = cdp_clock_mono_ns(j->clock);
	pthread_mutex_lock(&j->mu);
	for (tail = &p->files; *tail; tail = &(*tail)->next)
		;
	*tail = f;
	pthread_mutex_unlock(&j->mu);
	*out = f;
	return 0;
}

static struct jfile *current_file(struct jplan *p)
{
	struct jfile *f = p->files;

	while (f && f->next)
		f = f->next;
	return f && !f->sealed ? f : NULL;
}

static void seal_file(struct cdp_journal *j, struct jfile *f);

/* Unlinks a sealed file that holds no indexed segment and forgets it. */
static void drop_file(struct cdp_journal *j, struct jplan *p, struct jfile *f)
{
	char path[4096];

	pthread_mutex_lock(&j->mu);
	for (struct jfile **pp = &p->files; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	pthread_mutex_unlock(&j->mu);
	jpath_extent(j, path, sizeof(path), p->conf.plan_id, f->fileno);
	j->io->unlink(j->io->ctx, path);
	free(f);
}

static void seal_file(struct cdp_journal *j, struct jfile *f)
{
	pthread_mutex_lock(&j->mu);
	f->sealed = true;
	pthread_mutex_unlock(&j->mu);
	if (f->fd >= 0) {
		j->io->close(j->io->ctx, f->fd);
		f->fd = -1;
	}
}

void jfiles_release_below(struct cdp_journal *j, struct jplan *p, uint64_t seq)
{
	struct jfile **pp, *f, *gone = NULL;

	pthread_mutex_lock(&j->mu);
	for (pp = &p->files; (f = *pp);) {
		/* An empty or the current file stays; so does one with later segments. */
		if (f->sealed && f->first_seq && f->last_seq <= seq) {
			*pp = f->next;
			f->next = gone;
			gone = f;
		} else {
			pp = &f->next;
		}
	}
	pthread_mutex_unlock(&j->mu);
	while (gone) {
		char path[4096], to[4096];
		bool keep;

		f = gone;
		gone = f->next;
		jpath_extent(j, path, sizeof(path), p->conf.plan_id, f->fileno);
		pthread_mutex_lock(&j->mu);
		keep = j->nspares < j->opts.spare_extents && f->size == j->opts.extent_max_bytes;
		if (keep)
			spare_path(j, to, sizeof(to), j->next_spare++);
		pthread_mutex_unlock(&j->mu);
		/* A fully written file is recycled: writes into it are overwrites. */
		if (keep && (f->prepared || f->used >= f->size) &&
		    j->io->rename(j->io->ctx, path, to) == 0) {
			pthread_mutex_lock(&j->mu);
			j->nspares++;
			pthread_mutex_unlock(&j->mu);
		} else {
			j->io->unlink(j->io->ctx, path);
		}
		fsync_parent(j, path);
		free(f);
	}
}

/* ---- submit and the group commit ----------------------------------------- */

static void append_fail(struct cdp_journal_append *a, int code)
{
	a->rc = code;
	if (a->err.code != code)
		a->err.code = code;
}

/* Decodes MARK and SYNC details of a segment that has them (rare). */
static int read_details(struct cdp_journal_append *a, struct cdp_err *err)
{
	struct jappend_info *info;
	struct cdp_segment *seg;
	int rc;

	rc = cdp_seg_decode(a->seg, a->len, NULL, &seg, err);
	if (rc)
		return rc;
	info = cdp_xcalloc(1, sizeof(*info));
	for (uint32_t i = 0; i < seg->h.nrecords; i++) {
		const struct cdp_record *r = &seg->recs[i];
		struct cdp_sync_info si;

		if (r->kind == CDP_REC_MARK && info->nmarks < CDP_ARRAY_SIZE(info->marks)) {
			info->marks[info->nmarks].seq = r->seq;
			info->marks[info->nmarks].time = r->time_ns;
			memcpy(info->marks[info->nmarks].name, r->payload, r->length);
			info->marks[info->nmarks].name[r->length] = '\0';
			info->nmarks++;
		} else if (r->kind == CDP_REC_SYNC_BEGIN) {
			info->sync_begin_seq = r->seq;
		} else if (r->kind == CDP_REC_SYNC_END &&
			   !cdp_sync_info_decode(r->payload, r->length, &si, NULL)) {
			info->sync_end_kind = si.kind;
			info->sync_end_seq = r->seq;
		}
	}
	cdp_segment_free(seg);
	a->priv = info;
	return 0;
}

/* Appends @a to the commit queue and wakes the commit thread (qmu held). */
static void enqueue_locked(struct cdp_journal *j, struct cdp_journal_append *a)
{
	if (j->qtail)
		j->qtail->next = a;
	else
		j->qhead = a;
	j->qtail = a;
	j->qlen++;
	pthread_cond_signal(&j->qcond);
}

int cdp_journal_submit(struct cdp_journal *j, struct cdp_journal_append *a)
{
	struct timespec ts;
	int64_t deadline;
	int rc;

	cdp_err_clear(&a->err);
	a->rc = 0;
	a->duplicate = false;
	a->next = NULL;
	a->priv = NULL;
	a->op = JOP_APPEND;
	rc = cdp_seg_parse_header(a->seg, a->len, &a->h, &a->err);
	if (!rc)
		rc = cdp_seg_check_body(&a->h, a->seg + CDP_SEG_HDR_LEN, &a->err);
	if (!rc && (a->h.flags & (CDP_SEG_F_MARK | CDP_SEG_F_SYNC)))
		rc = read_details(a, &a->err);
	if (rc)
		return cdp_err_prefix(&a->err, "plan %" PRIu64, a->plan_id);
	if (!a->recv_time_ns)
		a->recv_time_ns = cdp_clock_wall_ns(j->clock);

	deadline = cdp_clock_mono_ns(cdp_clock_real()) + j->opts.submit_timeout_ns;
	pthread_mutex_lock(&j->qmu);
	while (!j->closing && j->qlen >= j->opts.queue_max) {
		int64_t now = cdp_clock_mono_ns(cdp_clock_real());

		if (now >= deadline)
			break;
		ts.tv_sec = deadline / CDP_NS_PER_SEC;
		ts.tv_nsec = deadline % CDP_NS_PER_SEC;
		pthread_cond_timedwait(&j->qroom, &j->qmu, &ts);
	}
	if (j->closing) {
		rc = cdp_err_set(&a->err, -ECANCELED, "journal closing");
	} else if (j->qlen >= j->opts.queue_max) {
		rc = cdp_err_set(&a->err, -ETIMEDOUT, "journal queue full (%u) for %" PRId64 " ms",
				 j->qlen, j->opts.submit_timeout_ns / CDP_NS_PER_MS);
	} else {
		enqueue_locked(j, a);
	}
	pthread_mutex_unlock(&j->qmu);
	if (rc) {
		free(a->priv);
		a->priv = NULL;
	}
	return rc;
}

int jqueue_damage(struct cdp_journal *j, uint64_t plan, uint64_t first_seq)
{
	struct cdp_journal_append *a = cdp_xcalloc(1, sizeof(*a));

	a->op = JOP_DAMAGE;
	a->plan_id = plan;
	a->damage_seq = first_seq;
	pthread_mutex_lock(&j->qmu);
	if (j->closing) {
		pthread_mutex_unlock(&j->qmu);
		free(a);
		return -ECANCELED;
	}
	enqueue_locked(j, a);
	pthread_mutex_unlock(&j->qmu);
	return 0;
}

struct wait_ctx {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool done;
};

static void wait_done(struct cdp_journal_append *a)
{
	struct wait_ctx *w = a->arg;

	pthread_mutex_lock(&w->mu);
	w->done = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

int cdp_journal_append_wait(struct cdp_journal *j, uint64_t plan_id, const uint8_t *seg,
			    size_t len, const struct cdp_journal_sync_ckpt *ckpt,
			    bool *duplicate, struct cdp_err *err)
{
	struct wait_ctx w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false };
	struct cdp_journal_append a = { 0 };
	int rc;

	a.plan_id = plan_id;
	a.seg = seg;
	a.len = len;
	if (ckpt) {
		a.has_ckpt = true;
		a.ckpt = *ckpt;
	}
	a.done = wait_done;
	a.arg = &w;
	rc = cdp_journal_submit(j, &a);
	if (rc) {
		if (err)
			*err = a.err;
		return rc;
	}
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.mu);	/* done() always comes */
	pthread_mutex_unlock(&w.mu);
	if (duplicate)
		*duplicate = a.duplicate;
	if (err)
		*err = a.err;
	return a.rc;
}

/* One plan's share of a group commit. */
struct step_plan {
	struct jplan *p;
	struct jstate st;		/* state after the accepted segments */
	uint64_t bytes;
	uint64_t nsegs;
	size_t len;			/* bytes of its accepted segments, back to back */
	uint8_t *region;		/* where they are laid out in the staging area */
	uint64_t buf_off;		/* file offset of region */
	struct jfile *file;
	struct jfile fnew;		/* the file record after the step */
	bool touched;
};

struct step {
	struct step_plan *plans;
	size_t nplans;
	rocksdb_writebatch_t *wb;
};

static struct step_plan *step_plan(struct cdp_journal *j, struct step *s, struct jplan *p)
{
	for (size_t i = 0; i < s->nplans; i++)
		if (s->plans[i].p == p)
			return &s->plans[i];
	s->plans = cdp_xrealloc(s->plans, (s->nplans + 1) * sizeof(*s->plans));
	memset(&s->plans[s->nplans], 0, sizeof(s->plans[0]));
	s->plans[s->nplans].p = p;
	pthread_mutex_lock(&j->mu);
	s->plans[s->nplans].st = p->ast;	/* one step ahead of the published st */
	pthread_mutex_unlock(&j->mu);
	return &s->plans[s->nplans++];
}

struct foldable_arg {
	uint64_t horizon, limit, bytes;
};

static int foldable_cb(void *arg, const struct jseg *s)
{
	struct foldable_arg *f = arg;

	if (s->first_seq <= f->horizon)
		return 0;
	if ((s->nrecords ? s->last_seq : s->first_seq - 1) > f->limit)
		return 1;
	f->bytes += s->len;
	return 0;
}

/*
 * Bytes a fold could free once momentary checks let go, pins permitting;
 * fills @why with the pin. The verifier's own pin does not count: it is
 * released within a pass, and the fold then catches up.
 */
static uint64_t foldable_bytes(struct cdp_journal *j, struct jplan *p, uint64_t horizon,
			       char *why, size_t size)
{
	struct foldable_arg f = { horizon, jpin_limit_holding(j, p, why, size), 0 };

	if (f.limit <= horizon)
		return 0;
	if (jseg_scan(j, p->conf.plan_id, horizon + 1, foldable_cb, &f, NULL) < 0)
		return 0;
	return f.bytes;
}

/* Is an identical segment already stored? 1 yes, 0 no such key, <0 different or error. */
static int check_duplicate(struct cdp_journal *j, struct cdp_journal_append *a,
			   struct step *s, struct step_plan *sp)
{
	uint8_t k[JSEG_KEY_LEN];
	struct cdp_buf v = CDP_BUF_INIT;
	struct jseg old;
	bool found;
	int rc;

	jseg_key(k, a->plan_id, a->h.first_seq, a->h.t_last);
	rc = jdb_get(j, j->cf_seg, k, sizeof(k), &v, &found, &a->err);
	if (rc)
		goto out;
	if (!found) {
		rc = 0;
		goto out;
	}
	rc = jseg_decode(k, sizeof(k), v.data, v.len, &old, &a->err);
	if (rc)
		goto out;
	if (old.last_seq == a->h.last_seq && !memcmp(old.digest, a->h.digest, CDP_DIGEST_LEN))
		rc = 1;
	else
		rc = cdp_err_set(&a->err, -EEXIST, "plan %s: seq %" PRIu64 " already stored with "
				 "a different digest", sp->p->conf.name, a->h.first_seq);
out:
	cdp_buf_release(&v);
	return rc;
}

static void add_point(struct cdp_journal *j, struct step *s, uint64_t plan,
		      const struct cdp_journal_point *pt)
{
	uint8_t k[JPOINT_KEY_LEN], v[6 + CDP_MARK_NAME_MAX];
	size_t vlen = jpoint_encode(pt, v);

	jpoint_key(k, plan, pt->time_ns, pt->seq);
	rocksdb_writebatch_put_cf(s->wb, j->cf_point, (char *)k, sizeof(k), (char *)v, vlen);
}

static bool state_consistent(const struct jstate *st)
{
	return st->synced && !st->sync_active && !st->damaged_from;
}

/* Checks @a against its plan and lays it out; sets a->rc on refusal. */
static void step_accept(struct cdp_journal *j, struct step *s, struct cdp_journal_append *a)
{
	const struct cdp_seg_header *h = &a->h;
	const struct jappend_info *info = a->priv;
	struct step_plan *sp;
	struct jplan *p;
	struct jstate *st;
	uint64_t epoch, horizon, cap, bytes;
	bool deleted;
	int rc;

	pthread_mutex_lock(&j->mu);
	p = jplan_find_locked(j, a->plan_id);
	if (p) {
		epoch = p->conf.epoch;
		horizon = p->horizon_seq;
		cap = p->conf.journal_max_bytes;
		bytes = p->bytes;
		deleted = p->deleted;
	}
	pthread_mutex_unlock(&j->mu);
	if (!p || deleted) {
		cdp_err_set(&a->err, -ENOENT, "unknown plan %" PRIu64, a->plan_id);
		append_fail(a, -ENOENT);
		return;
	}
	if (h->epoch != epoch) {
		cdp_err_set(&a->err, -ESTALE, "plan %s: %s epoch %" PRIu64 ", plan is at epoch %"
			    PRIu64, p->conf.name, h->epoch < epoch ? "stale" : "unknown", h->epoch,
			    epoch);
		append_fail(a, -ESTALE);
		return;
	}
	sp = step_plan(j, s, p);
	st = &sp->st;
	/* Resent segments: acknowledged again when identical. */
	if (h->first_seq < st->next_seq || (h->first_seq == st->next_seq &&
					    h->last_seq < h->first_seq && h->t_last <= st->last_t)) {
		if (h->first_seq <= horizon && h->last_seq <= horizon && h->nrecords) {
			cdp_err_set(&a->err, -EEXIST, "plan %s: seq %" PRIu64 " is at or below the "
				    "horizon %" PRIu64 " and can no longer be compared",
				    p->conf.name, h->first_seq, horizon);
			append_fail(a, -EEXIST);
			return;
		}
		rc = check_duplicate(j, a, s, sp);
		if (rc == 1) {
			a->duplicate = true;
			return;
		}
		if (rc == 0 && h->first_seq == st->next_seq) {
			/* A heartbeat that is no resend: its time is what is wrong. */
			cdp_err_set(&a->err, -EPROTO, "plan %s: heartbeat at seq %" PRIu64
				    ": time %" PRId64 " goes backwards (last segment ended at %"
				    PRId64 ")", p->conf.name, h->first_seq, h->t_last, st->last_t);
			append_fail(a, -EPROTO);
			return;
		}
		if (rc == 0)
			rc = cdp_err_set(&a->err, -EEXIST, "plan %s: seqs %" PRIu64 "..%" PRIu64
					 " overlap stored segments with other boundaries",
					 p->conf.name, h->first_seq, h->last_seq);
		append_fail(a, rc);
		return;
	}
	if (h->first_seq > st->next_seq) {
		cdp_err_set(&a->err, -EPROTO, "plan %s: gap: expected seq %" PRIu64 ", got %" PRIu64,
			    p->conf.name, st->next_seq, h->first_seq);
		append_fail(a, -EPROTO);
		return;
	}
	if (h->t_first < st->last_t || ((h->flags & CDP_SEG_F_POINT_END) &&
					h->t_last <= st->last_point_t)) {
		cdp_err_set(&a->err, -EPROTO, "plan %s: seq %" PRIu64 ": time %" PRId64
			    " goes backwards (last segment ended at %" PRId64 ", last point %"
			    PRId64 ")", p->conf.name, h->first_seq, h->t_first, st->last_t,
			    st->last_point_t);
		append_fail(a, -EPROTO);
		return;
	}
	if (cap && bytes + sp->bytes + a->len > cap) {
		char why[CDP_ERR_MSG_MAX] = "";
		uint64_t freeable = foldable_bytes(j, p, horizon, why, sizeof(why));

		/* Only a pin makes the journal full; otherwise folding makes room. */
		if (why[0] && bytes + sp->bytes + a->len - CDP_MIN(freeable, bytes) > cap) {
			cdp_err_set(&a->err, -ENOSPC, "journal full for plan %s: %s", p->conf.name,
				    why);
			append_fail(a, -ENOSPC);
			return;
		}
		/* Folding can make room: accept, the retention thread folds early. */
		pthread_mutex_lock(&j->bgmu);
		pthread_cond_broadcast(&j->bgcond);
		pthread_mutex_unlock(&j->bgmu);
	}

	/* Accepted: its place in the plan's run; copied once, at write time. */
	a->ent_off = sp->len;
	sp->len += a->len;
	if (h->nrecords)
		st->next_seq = h->last_seq + 1;
	memcpy(st->digest, h->digest, CDP_DIGEST_LEN);
	st->last_t = h->t_last;
	sp->bytes += a->len;
	sp->nsegs++;
	if (a->has_ckpt) {
		st->has_ckpt = true;
		st->ckpt = a->ckpt;
	}
	if (info) {
		if (info->sync_begin_seq)
			st->open_sync_begin = info->sync_begin_seq;
		if (info->sync_end_kind) {
			if (info->sync_end_kind == CDP_SYNC_FULL)
				st->synced = true;
			/* A resync begun after the damage was seen repairs it. */
			if (st->damaged_from && st->open_sync_begin >= st->damage_seen_at)
				st->damaged_from = st->damage_seen_at = 0;
			st->open_sync_begin = 0;
		}
		for (unsigned i = 0; i < info->nmarks; i++) {
			struct cdp_journal_point pt = { 0 };

			pt.time_ns = info->marks[i].time;
			pt.seq = info->marks[i].seq;
			pt.flags = CDP_POINT_F_BOOKMARK;
			/* A bookmark inside a sync span is not offered as consistent. */
			if (st->synced && !st->damaged_from && !st->open_sync_begin)
				pt.flags |= CDP_POINT_F_CONSISTENT;
			snprintf(pt.name, sizeof(pt.name), "%s", info->marks[i].name);
			add_point(j, s, p->conf.plan_id, &pt);
		}
	}
	st->sync_active = (h->flags & CDP_SEG_F_SYNC_ACTIVE) != 0;
	if (h->flags & CDP_SEG_F_POINT_END) {
		struct cdp_journal_point pt = { 0 };

		pt.time_ns = h->t_last;
		pt.seq = h->last_seq;
		pt.flags = state_consistent(st) ? CDP_POINT_F_CONSISTENT : 0;
		add_point(j, s, p->conf.plan_id, &pt);
		st->last_point_t = h->t_last;
	}
	a->accepted = true;
}

/* Marks every point from @seq on inconsistent (verifier found a bad segment). */
static int step_damage(struct cdp_journal *j, struct step *s, struct cdp_journal_append *a)
{
	struct jplan *p;
	struct step_plan *sp;
	rocksdb_readoptions_t *ro;
	rocksdb_iterator_t *it;
	uint8_t start[8], end[8];

	pthread_mutex_lock(&j->mu);
	p = jplan_find_locked(j, a->plan_id);
	pthread_mutex_unlock(&j->mu);
	if (!p)
		return 0;
	sp = step_plan(j, s, p);
	if (!sp->st.damaged_from || a->damage_seq < sp->st.damaged_from) {
		sp->st.damaged_from = a->damage_seq;
		sp->st.damage_seen_at = sp->st.next_seq;
	}
	sp->touched = true;
	ro = rocksdb_readoptions_create();
	jput_be64(start, a->plan_id);
	jput_be64(end, a->plan_id + 1);
	rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)end, 8);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_point);
	for (rocksdb_iter_seek(it, (char *)start, 8); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
		size_t klen, vlen;
		const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &klen);
		const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vlen);
		struct cdp_journal_point pt;

		if (jpoint_decode(k, klen, v, vlen, &pt) || pt.seq < a->damage_seq ||
		    !(pt.flags & CDP_POINT_F_CONSISTENT))
			continue;
		pt.flags &= ~CDP_POINT_F_CONSISTENT;
		add_point(j, s, a->plan_id, &pt);
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	return 0;
}

/* Makes the staging area hold at least @need bytes (commit thread). */
static void stage_reserve(struct cdp_journal *j, size_t need)
{
	if (need <= j->stage_cap)
		return;
	free(j->stage);
	j->stage_cap = CDP_ALIGN_UP(need, (size_t)CDP_IO_ALIGN);
	j->stage = cdp_xaligned_alloc(CDP_IO_ALIGN, j->stage_cap);
	/* Touch it once: faulting fresh pages in costs more than the copy here. */
	memset(j->stage, 0, j->stage_cap);
}

/*
 * Lays every touched plan's segments out in the staging area (one copy each,
 * runs padded to 4 KiB), writes them all and syncs every file; fills offsets.
 */
static int step_write(struct cdp_journal *j, struct step *s, struct cdp_journal_append *head,
		      struct cdp_err *err)
{
	struct cdp_io_write *w = cdp_xcalloc(s->nplans ? s->nplans : 1, sizeof(*w));
	int *fds = cdp_xcalloc(s->nplans ? s->nplans : 1, sizeof(int));
	size_t total = 0, off = 0;
	uint64_t grow = 0, avail = 0;
	unsigned nw = 0;
	int rc = 0;

	for (size_t i = 0; i < s->nplans; i++)
		total += CDP_ALIGN_UP(s->plans[i].len, (size_t)CDP_IO_ALIGN);
	stage_reserve(j, total);
	for (size_t i = 0; i < s->nplans; i++) {
		struct step_plan *sp = &s->plans[i];
		size_t padded = CDP_ALIGN_UP(sp->len, (size_t)CDP_IO_ALIGN);

		if (!sp->len)
			continue;
		sp->region = j->stage + off;
		off += padded;
		memset(sp->region + sp->len, 0, padded - sp->len);
	}
	for (struct cdp_journal_append *a = head; a; a = a->next) {
		if (a->op != JOP_APPEND || !a->accepted)
			continue;
		for (size_t i = 0; i < s->nplans; i++)
			if (s->plans[i].p->conf.plan_id == a->plan_id)
				memcpy(s->plans[i].region + a->ent_off, a->seg, a->len);
	}
	for (size_t i = 0; i < s->nplans && !rc; i++) {
		struct step_plan *sp = &s->plans[i];
		struct jfile *f;
		size_t padded;
		int64_t now;

		if (!sp->len)
			continue;
		padded = CDP_ALIGN_UP(sp->len, (size_t)CDP_IO_ALIGN);
		pthread_mutex_lock(&j->mu);
		f = current_file(sp->p);
		pthread_mutex_unlock(&j->mu);
		now = cdp_clock_mono_ns(j->clock);
		if (f && (f->used + padded > f->size ||
			  now - f->opened_mono >= j->opts.extent_slice_ns)) {
			/* The file is full (or its time slice over): seal it for good. */
			seal_file(j, f);
			f = NULL;
		}
		if (!f) {
			rc = roll_file(j, sp->p, &f, err);
			if (rc)
				break;
			if (padded > f->size) {
				pthread_mutex_lock(&j->mu);
				f->size = padded;	/* a group larger than a slice gets its own */
				pthread_mutex_unlock(&j->mu);
			}
		}
		/* A prepared file is overwritten in place; any other one grows. */
		if (!f->prepared || f->used + padded > f->size)
			grow += padded;
		sp->file = f;
		sp->buf_off = f->used;
		w[nw].fd = f->fd;
		w[nw].buf = sp->region;
		w[nw].len = padded;
		w[nw].off = f->used;
		fds[nw] = f->fd;
		nw++;
		sp->fnew = *f;
		sp->fnew.used = f->used + padded;
		sp->touched = true;
	}
	if (!rc && grow && !space_ok(j, grow, &avail))
		rc = cdp_err_set(err, -ENOSPC, "disk full: %" PRIu64 " MiB free, the journal keeps "
				 "%u MiB for its index", avail >> 20, JOURNAL_MIN_FREE >> 20);
	if (!rc && nw) {
		if (cdp_fault_point("journal.extent_write"))
			rc = -EIO;
		else
			rc = j->io->pwritev_batch(j->io->ctx, w, nw);
		if (rc)
			cdp_err_sys(err, rc, "extent write (%u file%s, first plan %s file %" PRIu64 ")",
				    nw, nw > 1 ? "s" : "", s->plans[0].p->conf.name,
				    s->plans[0].file ? s->plans[0].file->fileno : 0);
	}
	if (!rc && nw) {
		if (cdp_fault_point("journal.extent_sync"))
			rc = -EIO;
		else
			rc = j->io->fdatasync_batch(j->io->ctx, fds, nw);
		if (rc)
			cdp_err_sys(err, rc, "extent fdatasync (%u file%s, first plan %s)", nw,
				    nw > 1 ? "s" : "", s->plans[0].p->conf.name);
	}
	if (rc) {
		/* fsyncgate: never write to or trust these files again. */
		for (size_t i = 0; i < s->nplans; i++)
			if (s->plans[i].file)
				seal_file(j, s->plans[i].file);
		/* A file that never held an acknowledged byte goes at once. */
		for (size_t i = 0; i < s->nplans; i++)
			if (s->plans[i].file && !s->plans[i].file->first_seq)
				drop_file(j, s->plans[i].p, s->plans[i].file);
	}
	free(w);
	free(fds);
	return rc;
}

static void step_free(struct step *s)
{
	free(s->plans);
	if (s->wb)
		rocksdb_writebatch_destroy(s->wb);
}

/*
 * The group commit runs as a two-stage pipeline, so the disk never waits for
 * the index: "io/commit" checks a group, writes and syncs its extent runs and
 * builds its WriteBatch; "io/index" makes that batch durable, publishes the
 * new state and acknowledges - while "io/commit" already writes the next
 * group. The commit thread works on each plan's accept state (ast), which
 * runs one step ahead of the published state (st). If an index write fails,
 * every step accepted on top of it fails too (generation check), and the
 * commit thread rebuilds its accept state from the published one once the
 * index thread is idle.
 */
struct pstep {
	struct step s;
	struct cdp_journal_append *head;
	struct cdp_err err;
	int rc;
	uint64_t gen;
	uint64_t nsegs, nbytes;
};

/* Index thread: make a prepared step durable, publish it, acknowledge. */
static void index_step(struct cdp_journal *j, struct pstep *ps)
{
	struct cdp_journal_append *a, *next;
	struct step *s = &ps->s;
	int rc = ps->rc;

	pthread_mutex_lock(&j->commit_mu);	/* plan deletion waits for us */
	if (!rc && ps->gen != __atomic_load_n(&j->gen, __ATOMIC_ACQUIRE))
		rc = cdp_err_set(&ps->err, -EIO, "an earlier group commit failed; resend");
	if (!rc) {
		rc = jdb_write(j, s->wb, &ps->err);
		if (rc) {
			/* Steps built on this one are void; the commit thread rebuilds. */
			__atomic_add_fetch(&j->gen, 1, __ATOMIC_ACQ_REL);
		}
	}
	if (!rc) {
		pthread_mutex_lock(&j->mu);
		for (size_t i = 0; i < s->nplans; i++) {
			struct step_plan *sp = &s->plans[i];

			if (!sp->touched)
				continue;
			sp->p->st = sp->st;
			sp->p->bytes += sp->bytes;
			sp->p->nsegments += sp->nsegs;
		}
		j->steps++;
		j->step_segments += ps->nsegs;
		j->step_bytes += ps->nbytes;
		pthread_mutex_unlock(&j->mu);
	} else if (ps->nsegs || !ps->rc) {
		struct cdp_journal_event ev = { 0 };

		ev.kind = CDP_JOURNAL_EV_IO_ERROR;
		ev.plan_id = s->nplans ? s->plans[0].p->conf.plan_id : 0;
		snprintf(ev.msg, sizeof(ev.msg), "group commit failed, nothing of it stored: %s",
			 ps->err.msg);
		jevent(j, &ev);
	}
	pthread_mutex_unlock(&j->commit_mu);

	for (a = ps->head; a; a = next) {
		next = a->next;
		free(a->priv);
		a->priv = NULL;
		if (a->op == JOP_DAMAGE) {
			free(a);
			continue;
		}
		if (rc && a->accepted) {
			a->rc = rc;
			a->err = ps->err;
		}
		if (a->rc && !a->err.code)
			a->err.code = a->rc;
		a->done(a);
	}
	step_free(s);
	free(ps);
}

/* Commit thread: check, lay out, write and sync one group; build its batch. */
static struct pstep *prepare_step(struct cdp_journal *j, struct cdp_journal_append *head)
{
	struct pstep *ps = cdp_xcalloc(1, sizeof(*ps));
	struct step *s = &ps->s;
	struct cdp_journal_append *a;

	ps->head = head;
	ps->gen = __atomic_load_n(&j->gen, __ATOMIC_ACQUIRE);
	s->wb = rocksdb_writebatch_create();
	pthread_mutex_lock(&j->commit_mu);
	/* In the pipeline until the index thread is done with it (plan deletion waits). */
	pthread_mutex_lock(&j->smu);
	j->pending++;
	pthread_mutex_unlock(&j->smu);
	for (a = head; a; a = a->next) {
		if (a->op == JOP_DAMAGE)
			step_damage(j, s, a);
		else
			step_accept(j, s, a);
	}
	ps->rc = step_write(j, s, head, &ps->err);
	if (ps->rc) {
		pthread_mutex_unlock(&j->commit_mu);
		return ps;
	}
	/* Index entries now that the files and offsets are known. */
	for (a = head; a; a = a->next) {
		struct step_plan *sp = NULL;
		struct jseg ent = { 0 };
		uint8_t k[JSEG_KEY_LEN], v[JSEG_VAL_LEN];

		if (a->op != JOP_APPEND || !a->accepted)
			continue;
		for (size_t i = 0; i < s->nplans; i++)
			if (s->plans[i].p->conf.plan_id == a->plan_id)
				sp = &s->plans[i];
		ent.first_seq = a->h.first_seq;
		ent.last_seq = a->h.last_seq;
		ent.t_first = a->h.t_first;
		ent.t_last = a->h.t_last;
		ent.fileno = sp->file->fileno;
		ent.offset = sp->buf_off + a->ent_off;
		ent.len = (uint32_t)a->len;
		ent.flags = a->h.flags;
		ent.raw_len = a->h.raw_len;
		ent.nrecords = a->h.nrecords;
		memcpy(ent.digest, a->h.digest, CDP_DIGEST_LEN);
		ent.recv_time = a->recv_time_ns;
		jseg_key(k, a->plan_id, a->h.first_seq, a->h.t_last);
		jseg_encode(&ent, v);
		rocksdb_writebatch_put_cf(s->wb, j->cf_seg, (char *)k, sizeof(k), (char *)v,
					  sizeof(v));
		if (!sp->fnew.first_seq)
			sp->fnew.first_seq = a->h.first_seq;
		/*
		 * A heartbeat at seq N is folded (and its bytes released) only
		 * once the horizon reaches N, with the segment after it.
		 */
		sp->fnew.last_seq = CDP_MAX(sp->fnew.last_seq,
					    a->h.first_seq + CDP_MAX(a->h.nrecords, 1u) - 1);
		ps->nsegs++;
		ps->nbytes += a->len;
	}
	pthread_mutex_lock(&j->mu);
	for (size_t i = 0; i < s->nplans; i++) {
		struct step_plan *sp = &s->plans[i];
		uint8_t k[16], v[JSTATE_VAL_LEN];
		size_t klen;

		if (!sp->touched)
			continue;
		if (sp->file) {
			jfile_put(j, s->wb, sp->p->conf.plan_id, &sp->fnew);
			/* The next group goes after these blocks, indexed or not. */
			sp->file->used = sp->fnew.used;
			sp->file->first_seq = sp->fnew.first_seq;
			sp->file->last_seq = sp->fnew.last_seq;
		}
		jstate_encode(&sp->st, v);
		jmeta_key(k, &klen, 'S', sp->p->conf.plan_id, NULL, 0);
		rocksdb_writebatch_put_cf(s->wb, j->cf_meta, (char *)k, klen, (char *)v, sizeof(v));
		sp->p->ast = sp->st;
	}
	pthread_mutex_unlock(&j->mu);
	pthread_mutex_unlock(&j->commit_mu);
	return ps;
}

/* Hands @ps to the index thread (waits while it still holds the previous one). */
static void handoff(struct cdp_journal *j, struct pstep *ps)
{
	pthread_mutex_lock(&j->smu);
	while (j->ready)
		pthread_cond_wait(&j->scond, &j->smu);	/* the index thread always takes it */
	j->ready = ps;
	pthread_cond_broadcast(&j->scond);
	pthread_mutex_unlock(&j->smu);
}

/* After a failed index write: wait until the index thread is idle, then rebuild. */
static void rebuild_if_failed(struct cdp_journal *j, uint64_t *seen_gen)
{
	uint64_t gen = __atomic_load_n(&j->gen, __ATOMIC_ACQUIRE);

	if (gen == *seen_gen)
		return;
	pthread_mutex_lock(&j->smu);
	while (j->ready || j->indexing)
		pthread_cond_wait(&j->scond, &j->smu);
	pthread_mutex_unlock(&j->smu);
	pthread_mutex_lock(&j->mu);
	for (size_t i = 0; i < j->nplans; i++) {
		struct jplan *p = j->plans[i];
		struct jfile *f = current_file(p);

		p->ast = p->st;
		if (f)
			f->sealed = true;	/* unindexed blocks: start a new file */
	}
	pthread_mutex_unlock(&j->mu);
	*seen_gen = gen;
}

static void *index_main(void *arg)
{
	struct cdp_journal *j = arg;

	for (;;) {
		struct pstep *ps;

		pthread_mutex_lock(&j->smu);
		while (!j->ready && !j->index_stop)
			pthread_cond_wait(&j->scond, &j->smu);	/* stop signals */
		ps = j->ready;
		j->ready = NULL;
		j->indexing = ps != NULL;
		pthread_cond_broadcast(&j->scond);
		pthread_mutex_unlock(&j->smu);
		if (!ps)
			break;
		index_step(j, ps);
		pthread_mutex_lock(&j->smu);
		j->indexing = false;
		j->pending--;
		pthread_cond_broadcast(&j->scond);
		pthread_mutex_unlock(&j->smu);
	}
	return NULL;
}

static void *commit_main(void *arg)
{
	struct cdp_journal *j = arg;
	uint64_t seen_gen = __atomic_load_n(&j->gen, __ATOMIC_ACQUIRE);

	for (;;) {
		struct cdp_journal_append *head, *tail, *rest;
		uint64_t bytes = 0;
		unsigned n = 0;

		pthread_mutex_lock(&j->qmu);
		while (!j->qhead && !j->closing)
			pthread_cond_wait(&j->qcond, &j->qmu);	/* closing signals */
		if (!j->qhead && j->closing) {
			pthread_mutex_unlock(&j->qmu);
			break;
		}
		/* Take up to group_max_bytes (at least one item). */
		head = tail = j->qhead;
		bytes = head->len;
		n = 1;
		while (tail->next && bytes + tail->next->len <= j->opts.group_max_bytes) {
			tail = tail->next;
			bytes += tail->len;
			n++;
		}
		rest = tail->next;
		tail->next = NULL;
		j->qhead = rest;
		if (!rest)
			j->qtail = NULL;
		j->qlen -= n;
		pthread_cond_broadcast(&j->qroom);
		pthread_mutex_unlock(&j->qmu);
		rebuild_if_failed(j, &seen_gen);
		handoff(j, prepare_step(j, head));
	}
	/* Let the index thread finish what it holds, then stop it. */
	pthread_mutex_lock(&j->smu);
	j->index_stop = true;
	pthread_cond_broadcast(&j->scond);
	pthread_mutex_unlock(&j->smu);
	return NULL;
}

/* ---- resume, cursors ----------------------------------------------------- */

int cdp_journal_resume_info(struct cdp_journal *j, uint64_t plan_id,
			    struct cdp_journal_resume *r, struct cdp_err *err)
{
	struct jplan *p = jplan_get(j, plan_id, err);

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	memset(r, 0, sizeof(*r));
	r->epoch = p->conf.epoch;
	r->durable_seq = p->st.next_seq - 1;
	memcpy(r->digest, p->st.digest, CDP_DIGEST_LEN);
	r->last_time_ns = p->st.last_t;
	r->last_point_ns = p->st.last_point_t;
	r->horizon_seq = p->horizon_seq;
	r->has_ckpt = p->st.has_ckpt;
	r->ckpt = p->st.ckpt;
	pthread_mutex_unlock(&j->mu);
	jplan_put(j, p);
	return 0;
}

static int cursor_key(uint8_t *k, size_t *klen, uint64_t plan, const char *name,
		      struct cdp_err *err)
{
	size_t n = strlen(name);

	if (!n || n > CDP_JOURNAL_CURSOR_MAX)
		return cdp_err_set(err, -EINVAL, "cursor name '%s': 1..%d bytes", name,
				   CDP_JOURNAL_CURSOR_MAX);
	jmeta_key(k, klen, 'C', plan, name, n);
	return 0;
}

/* Cursor record: seq, pinning, and for lag-bounded pins the seq's time and the lag. */
#define CURSOR_V1_LEN 9
#define CURSOR_V2_LEN 25

bool jcursor_pins(const uint8_t *v, size_t len, int64_t now)
{
	int64_t t, lag;

	if ((len != CURSOR_V1_LEN && len != CURSOR_V2_LEN) || !v[8])
		return false;
	if (len == CURSOR_V1_LEN)
		return true;
	t = (int64_t)cdp_get_le64(v + 9);
	lag = (int64_t)cdp_get_le64(v + 17);
	return lag <= 0 || now - t <= lag;
}

static int cursor_put(struct cdp_journal *j, uint64_t plan_id, const char *name, uint64_t seq,
		      bool pinning, int64_t seq_time, int64_t max_lag, struct cdp_err *err)
{
	uint8_t k[9 + CDP_JOURNAL_CURSOR_MAX], v[CURSOR_V2_LEN];
	rocksdb_writebatch_t *wb;
	struct jplan *p;
	uint64_t durable;
	size_t klen = 0;
	int rc;

	rc = cursor_key(k, &klen, plan_id, name, err);
	if (rc)
		return rc;
	p = jplan_get(j, plan_id, err);
	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	durable = p->st.next_seq - 1;
	pthread_mutex_unlock(&j->mu);
	if (seq > durable) {
		jplan_put(j, p);
		return cdp_err_set(err, -EINVAL, "cursor %s: seq %" PRIu64 " > durable seq %"
				   PRIu64, name, seq, durable);
	}
	cdp_put_le64(v, seq);
	v[8] = pinning;
	cdp_put_le64(v + 9, (uint64_t)seq_time);
	cdp_put_le64(v + 17, (uint64_t)max_lag);
	wb = rocksdb_writebatch_create();
	rocksdb_writebatch_put_cf(wb, j->cf_meta, (char *)k, klen, (char *)v, sizeof(v));
	rc = jdb_write(j, wb, err);
	rocksdb_writebatch_destroy(wb);
	jplan_put(j, p);
	return rc;
}

int cdp_journal_cursor_set(struct cdp_journal *j, uint64_t plan_id, const char *name,
			   uint64_t seq, bool pinning, struct cdp_err *err)
{
	return cursor_put(j, plan_id, name, seq, pinning, 0, 0, err);
}

int cdp_journal_cursor_set_lag(struct cdp_journal *j, uint64_t plan_id, const char *name,
			       uint64_t seq, int64_t seq_time_ns, int64_t max_lag_ns,
			       struct cdp_err *err)
{
	if (max_lag_ns <= 0)
		return cdp_err_set(err, -EINVAL, "cursor %s: max_lag %" PRId64 " ns, expected > 0",
				   name, max_lag_ns);
	return cursor_put(j, plan_id, name, seq, true, seq_time_ns, max_lag_ns, err);
}

int cdp_journal_cursor_get(struct cdp_journal *j, uint64_t plan_id, const char *name,
			   uint64_t *seq, bool *pinning, struct cdp_err *err)
{
	uint8_t k[9 + CDP_JOURNAL_CURSOR_MAX];
	struct cdp_buf v = CDP_BUF_INIT;
	size_t klen = 0;
	bool found;
	int rc;

	rc = cursor_key(k, &klen, plan_id, name, err);
	if (rc)
		return rc;
	rc = jdb_get(j, j->cf_meta, k, klen, &v, &found, err);
	if (!rc && !found)
		rc = cdp_err_set(err, -ENOENT, "plan %" PRIu64 ": no cursor '%s'", plan_id, name);
	if (!rc && v.len != CURSOR_V1_LEN && v.len != CURSOR_V2_LEN)
		rc = cdp_err_set(err, -EIO, "cursor %s: record of %zu bytes", name, v.len);
	if (!rc) {
		*seq = cdp_get_le64(v.data);
		if (pinning)
			*pinning = jcursor_pins(v.data, v.len, cdp_clock_wall_ns(j->clock));
	}
	cdp_buf_release(&v);
	return rc;
}

int cdp_journal_cursor_delete(struct cdp_journal *j, uint64_t plan_id, const char *name,
			      struct cdp_err *err)
{
	uint8_t k[9 + CDP_JOURNAL_CURSOR_MAX];
	rocksdb_writebatch_t *wb;
	size_t klen = 0;
	int rc;

	rc = cursor_key(k, &klen, plan_id, name, err);
	if (rc)
		return rc;
	wb = rocksdb_writebatch_create();
	rocksdb_writebatch_delete_cf(wb, j->cf_meta, (char *)k, klen);
	rc = jdb_write(j, wb, err);
	rocksdb_writebatch_destroy(wb);
	return rc;
}

/* ---- open and close ------------------------------------------------------ */

static void opts_defaults(struct cdp_journal_opts *o)
{
	if (!o->clock)
		o->clock = cdp_clock_real();
	if (!o->extent_max_bytes)
		o->extent_max_bytes = DEF_EXTENT_MAX;
	o->extent_max_bytes = CDP_ALIGN_UP(o->extent_max_bytes, (uint64_t)CDP_IO_ALIGN);
	if (!o->extent_slice_ns)
		o->extent_slice_ns = DEF_SLICE_NS;
	if (!o->group_max_bytes)
		o->group_max_bytes = DEF_GROUP_MAX;
	if (!o->queue_max)
		o->queue_max = DEF_QUEUE_MAX;
	if (!o->submit_timeout_ns)
		o->submit_timeout_ns = DEF_SUBMIT_TIMEOUT;
	if (!o->verify_interval_ns)
		o->verify_interval_ns = DEF_VERIFY_INTERVAL;
	if (!o->fold_batch_bytes)
		o->fold_batch_bytes = DEF_FOLD_BATCH;
}

struct load_ctx {
	struct cdp_journal *j;
	struct jplan *p;
};

static int load_bytes_cb(void *arg, const struct jseg *s)
{
	struct jplan *p = arg;

	if (s->last_seq > p->horizon_seq || (!s->nrecords && s->first_seq > p->horizon_seq)) {
		p->bytes += s->len;
		p->nsegments++;
	}
	return 0;
}

/* Reads the plan's meta record @tag, which must be @want bytes long. */
static int get_meta(struct cdp_journal *j, struct jplan *p, char tag, size_t want,
		    const char *what, struct cdp_buf *b, struct cdp_err *err)
{
	uint8_t k[16];
	size_t klen;
	bool found;
	int rc;

	jmeta_key(k, &klen, tag, p->conf.plan_id, NULL, 0);
	rc = jdb_get(j, j->cf_meta, k, klen, b, &found, err);
	if (!rc && (!found || b->len != want))
		rc = cdp_err_set(err, -EIO, "plan %s: %s record unreadable (%zu bytes, expected "
				 "%zu)", p->conf.name, what, found ? b->len : 0, want);
	return rc;
}

static int load_plan(struct cdp_journal *j, const uint8_t *v, size_t vlen, struct cdp_err *err)
{
	struct cdp_buf b = CDP_BUF_INIT;
	struct jplan *p = cdp_xcalloc(1, sizeof(*p));
	int rc;

	if (plan_decode(v, vlen, &p->conf, NULL)) {
		free(p);
		return cdp_err_set(err, -EIO, "plan record of %zu bytes unreadable", vlen);
	}
	p->next_fileno = 1;
	rc = get_meta(j, p, 'S', JSTATE_VAL_LEN, "state", &b, err);
	if (!rc && jstate_decode(b.data, b.len, &p->st))
		rc = cdp_err_set(err, -EIO, "plan %s: state record unreadable", p->conf.name);
	p->ast = p->st;
	if (!rc)
		rc = get_meta(j, p, 'H', 64, "horizon", &b, err);
	if (rc)
		goto fail;
	p->horizon_seq = cdp_get_le64(b.data);
	memcpy(p->horizon_digest, b.data + 8, CDP_DIGEST_LEN);
	p->horizon_t = (int64_t)cdp_get_le64(b.data + 40);
	p->horizon_first = cdp_get_le64(b.data + 56);
	{
		uint64_t target = cdp_get_le64(b.data + 48);

		rc = get_meta(j, p, 'V', 56, "verified", &b, err);
		if (rc)
			goto fail;
		p->verified_next = cdp_get_le64(b.data);
		memcpy(p->verified_digest, b.data + 8, CDP_DIGEST_LEN);
		p->verified_first = cdp_get_le64(b.data + 40);
		p->verified_t = (int64_t)cdp_get_le64(b.data + 48);

		/* Extent files: all sealed after a restart (never appended to again). */
		{
			rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
			uint8_t s[16], e[16];
			size_t sl;
			rocksdb_iterator_t *it;
			struct jfile **tail = &p->files;

			jmeta_key(s, &sl, 'F', p->conf.plan_id, NULL, 0);
			jmeta_key(e, &sl, 'F', p->conf.plan_id + 1, NULL, 0);
			rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)e, sl);
			it = rocksdb_create_iterator_cf(j->db, ro, j->cf_meta);
			for (rocksdb_iter_seek(it, (char *)s, sl); rocksdb_iter_valid(it);
			     rocksdb_iter_next(it)) {
				size_t fkl, fvl;
				const uint8_t *fk = (const uint8_t *)rocksdb_iter_key(it, &fkl);
				const uint8_t *fv = (const uint8_t *)rocksdb_iter_value(it, &fvl);
				struct jfile *f;

				if (fkl != 17 || fvl != 40)
					continue;
				f = cdp_xcalloc(1, sizeof(*f));
				f->fileno = jget_be64(fk + 9);
				f->fd = -1;
				f->size = cdp_get_le64(fv);
				f->used = cdp_get_le64(fv + 8);
				f->first_seq = cdp_get_le64(fv + 16);
				f->last_seq = cdp_get_le64(fv + 24);
				f->prepared = cdp_get_le64(fv + 32) != 0;
				f->sealed = true;
				*tail = f;
				tail = &f->next;
				if (f->fileno >= p->next_fileno)
					p->next_fileno = f->fileno + 1;
			}
			rocksdb_iter_destroy(it);
			rocksdb_readoptions_destroy(ro);
		}
		rc = jseg_scan(j, p->conf.plan_id, 0, load_bytes_cb, p, err);
		if (rc)
			goto fail;
		pthread_mutex_lock(&j->mu);
		j->plans = cdp_xrealloc(j->plans, (j->nplans + 1) * sizeof(*j->plans));
		j->plans[j->nplans++] = p;
		pthread_mutex_unlock(&j->mu);
		if (target > p->horizon_seq) {
			rc = jfold_recover(j, p, target, err);
			if (rc) {
				cdp_buf_release(&b);
				return cdp_err_prefix(err, "plan %s: finishing interrupted fold",
						      p->conf.name);
			}
		}
	}
	cdp_buf_release(&b);
	return 0;
fail:
	cdp_buf_release(&b);
	free(p);
	return rc;
}

/* Removes extent files that no index record knows (created but never committed). */
static void remove_orphans(struct cdp_journal *j, struct jplan *p)
{
	char dir[4096];
	struct dirent *e;
	DIR *d;

	jpath_plan_dir(j, dir, sizeof(dir), "extents", p->conf.plan_id);
	d = opendir(dir);
	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[4096], *end;
		uint64_t fileno = strtoull(e->d_name, &end, 16);
		bool known = false;

		if (strcmp(end, ".ext"))
			continue;
		for (struct jfile *f = p->files; f; f = f->next)
			known |= f->fileno == fileno;
		if (known)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		j->io->unlink(j->io->ctx, path);
		if (fileno >= p->next_fileno)
			p->next_fileno = fileno + 1;
	}
	closedir(d);
}

static unsigned count_spares(struct cdp_journal *j)
{
	char dir[4096];
	struct dirent *e;
	unsigned n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/extents/spare", j->dir);
	d = opendir(dir);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char path[4096], *end;
		size_t len = strlen(e->d_name);
		uint64_t num = strtoull(e->d_name, &end, 16);

		if (len > 8 && !strcmp(e->d_name + len - 8, ".ext.tmp")) {
			snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
			unlink(path);	/* an interrupted preparation */
			continue;
		}
		if (strcmp(end, ".ext"))
			continue;
		n++;
		if (num >= j->next_spare)
			j->next_spare = num + 1;
	}
	closedir(d);
	return n;
}

static bool bg_sleep(struct cdp_journal *j, int64_t ns)
{
	struct timespec ts;
	bool stop;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ns / CDP_NS_PER_SEC;
	ts.tv_nsec += ns % CDP_NS_PER_SEC;
	if (ts.tv_nsec >= CDP_NS_PER_SEC) {
		ts.tv_sec++;
		ts.tv_nsec -= CDP_NS_PER_SEC;
	}
	pthread_mutex_lock(&j->bgmu);
	if (!j->stopping)
		pthread_cond_timedwait(&j->bgcond, &j->bgmu, &ts);
	stop = j->stopping;
	pthread_mutex_unlock(&j->bgmu);
	return !stop;
}

bool jbg_sleep(struct cdp_journal *j, int64_t ns)
{
	return bg_sleep(j, ns);
}

bool jbusy_update(struct jbusy *m, uint64_t bytes, int64_t now)
{
	const double full = (double)CDP_JOURNAL_BUSY_RATE * CDP_JOURNAL_BUSY_WINDOW / CDP_NS_PER_SEC;
	double stored;

	if (!m->t) {
		*m = (struct jbusy){ .bytes = bytes, .t = now };
		return false;
	}
	stored = (double)(bytes - m->bytes);
	if (now - m->t >= CDP_JOURNAL_BUSY_WINDOW) {
		m->busy = stored * CDP_NS_PER_SEC >=
			  (double)CDP_JOURNAL_BUSY_RATE * (double)(now - m->t);
		m->bytes = bytes;
		m->t = now;
	} else if (stored >= full) {
		m->busy = true;
	}
	return m->busy;
}

bool jbusy_check(struct cdp_journal *j, struct jbusy *m)
{
	uint64_t bytes;

	cdp_journal_commit_stats(j, NULL, NULL, &bytes);
	return jbusy_update(m, bytes, cdp_clock_mono_ns(j->clock));
}

static void *prep_main(void *arg)
{
	struct cdp_journal *j = arg;
	struct jbusy m = { 0 };

	/*
	 * Spares are written when the disk has little else to do: while
	 * ingest is busy (a full sync) the journal's own writes and its
	 * clients' go first, and when the spares run out the extents grow as
	 * they are written (once, instead of zeros then data).
	 */
	cdp_thread_io_idle();
	jbusy_check(j, &m);
	for (;;) {
		struct cdp_err err = CDP_ERR_INIT;
		uint64_t n;
		bool need, busy = jbusy_check(j, &m);
		uint64_t avail = 0;

		pthread_mutex_lock(&j->mu);
		need = j->nspares < j->opts.spare_extents && !busy;
		n = j->next_spare++;
		pthread_mutex_unlock(&j->mu);
		if (need && !space_ok(j, j->opts.extent_max_bytes, &avail))
			need = false;	/* no room for a spare: writes grow files instead */
		if (need) {
			if (prepare_spare(j, n, &m, &err) == 0) {
				pthread_mutex_lock(&j->mu);
				j->nspares++;
				pthread_mutex_unlock(&j->mu);
				continue;
			}
			if (err.code != -ECANCELED)
				cdp_log_warn("journal: %s", err.msg);
		}
		if (!bg_sleep(j, need ? CDP_NS_PER_SEC : PREP_PAUSE))
			break;
	}
	return NULL;
}

static int open_db(struct cdp_journal *j, struct cdp_err *err)
{
	const char *names[] = { "default", "segments", "points", "meta" };
	const rocksdb_options_t *cfopts[4];
	rocksdb_column_family_handle_t *handles[4];
	char path[4096], *dberr = NULL;

	j->dbopts = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(j->dbopts, 1);
	rocksdb_options_set_create_missing_column_families(j->dbopts, 1);
	rocksdb_options_set_compression(j->dbopts, rocksdb_no_compression);
	rocksdb_options_set_max_background_jobs(j->dbopts, 2);
	rocksdb_options_set_keep_log_file_num(j->dbopts, 2);
	rocksdb_options_set_info_log_level(j->dbopts, 2);	/* warnings and up */
	/*
	 * The index is small: a small memtable keeps the WAL's preallocation
	 * (1.1 x the write buffer) small, and recycled WAL files make each
	 * synced batch an overwrite rather than an append.
	 */
	rocksdb_options_set_write_buffer_size(j->dbopts, 8u << 20);
	rocksdb_options_set_max_total_wal_size(j->dbopts, 64u << 20);
	rocksdb_options_set_recycle_log_file_num(j->dbopts, 4);
	for (int i = 0; i < 4; i++)
		cfopts[i] = j->dbopts;
	snprintf(path, sizeof(path), "%s/index", j->dir);
	j->db = rocksdb_open_column_families(j->dbopts, path, 4, names, cfopts, handles, &dberr);
	if (dberr) {
		int code = strstr(dberr, "No space left") ? -ENOSPC : -EIO;

		cdp_err_set(err, code, "open index %s: %s", path, dberr);
		free(dberr);
		return code;
	}
	j->cf_default = handles[0];
	j->cf_seg = handles[1];
	j->cf_point = handles[2];
	j->cf_meta = handles[3];
	j->wsync = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(j->wsync, 1);
	j->ropts = rocksdb_readoptions_create();
	return 0;
}

static int load_plans(struct cdp_journal *j, struct cdp_err *err)
{
	rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
	rocksdb_iterator_t *it;
	uint8_t s[1] = { 'P' }, e[1] = { 'P' + 1 };
	int rc = 0;

	rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)e, 1);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_meta);
	for (rocksdb_iter_seek(it, (char *)s, 1); rocksdb_iter_valid(it) && !rc;
	     rocksdb_iter_next(it)) {
		size_t vlen;
		const char *v = rocksdb_iter_value(it, &vlen);

		rc = load_plan(j, (const uint8_t *)v, vlen, err);
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	return rc;
}

struct cdp_journal *cdp_journal_open(const char *dir, const struct cdp_journal_opts *opts,
				     struct cdp_err *err)
{
	struct cdp_journal *j = cdp_xcalloc(1, sizeof(*j));
	pthread_condattr_t ca;
	char path[4096];
	int rc;

	if (opts)
		j->opts = *opts;
	opts_defaults(&j->opts);
	j->dir = cdp_xstrdup(dir);
	j->io = j->opts.io ? j->opts.io : cdp_io_real();
	j->clock = j->opts.clock;
	pthread_mutex_init(&j->mu, NULL);
	pthread_mutex_init(&j->qmu, NULL);
	pthread_mutex_init(&j->fold_mu, NULL);
	pthread_mutex_init(&j->commit_mu, NULL);
	pthread_mutex_init(&j->smu, NULL);
	pthread_mutex_init(&j->bgmu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->qcond, &ca);
	pthread_cond_init(&j->qroom, &ca);
	pthread_cond_init(&j->bgcond, &ca);
	pthread_cond_init(&j->spare_cond, &ca);
	pthread_cond_init(&j->scond, &ca);
	pthread_condattr_destroy(&ca);

	snprintf(path, sizeof(path), "%s/extents/spare", dir);
	rc = mkdir_p(path);
	if (!rc) {
		snprintf(path, sizeof(path), "%s/base", dir);
		rc = mkdir_p(path);
	}
	if (rc) {
		cdp_err_sys(err, rc, "mkdir %s", path);
		goto fail;
	}
	{
		/* RocksDB aborts (an assertion in its log writer) on a full disk. */
		struct statvfs vfs;

		if (statvfs(dir, &vfs) == 0 &&
		    (uint64_t)vfs.f_bavail * vfs.f_frsize < JOURNAL_MIN_FREE) {
			rc = cdp_err_set(err, -ENOSPC, "journal %s: %" PRIu64 " MiB free, at least %u "
					 "MiB needed to open it safely", dir,
					 (uint64_t)vfs.f_bavail * vfs.f_frsize >> 20,
					 JOURNAL_MIN_FREE >> 20);
			goto fail;
		}
	}
	rc = open_db(j, err);
	if (!rc)
		rc = load_plans(j, err);
	if (rc)
		goto fail;
	j->nspares = count_spares(j);
	for (size_t i = 0; i < j->nplans; i++)
		remove_orphans(j, j->plans[i]);
	/* Check what the verifier had not reached before the stop. */
	for (size_t i = 0; i < j->nplans; i++) {
		struct cdp_err verr = CDP_ERR_INIT;

		jverify_plan(j, j->plans[i], &verr);
	}

	/* The staging area of a full group, faulted in now rather than per step. */
	stage_reserve(j, j->opts.group_max_bytes + 64 * CDP_IO_ALIGN + (8u << 20));
	rc = cdp_thread_start(&j->commit_thread, "io/commit", commit_main, j);
	if (rc) {
		cdp_err_sys(err, rc, "start commit thread");
		goto fail;
	}
	j->have_commit = true;
	rc = cdp_thread_start(&j->index_thread, "io/index", index_main, j);
	if (rc) {
		cdp_err_sys(err, rc, "start index thread");
		goto fail;
	}
	j->have_index = true;
	if (!j->opts.no_verifier) {
		rc = cdp_thread_start(&j->verify_thread, "verify", jverify_main, j);
		j->have_verify = rc == 0;
	}
	if (j->opts.retain_interval_ns) {
		rc = cdp_thread_start(&j->retain_thread, "retain", jretain_main, j);
		j->have_retain = rc == 0;
	}
	if (j->opts.spare_extents) {
		rc = cdp_thread_start(&j->prep_thread, "prep", prep_main, j);
		j->have_prep = rc == 0;
	}
	return j;
fail:
	cdp_journal_close(j);
	return NULL;
}

void cdp_journal_close(struct cdp_journal *j)
{
	if (!j)
		return;
	pthread_mutex_lock(&j->qmu);
	j->closing = true;
	pthread_cond_broadcast(&j->qcond);
	pthread_cond_broadcast(&j->qroom);
	pthread_mutex_unlock(&j->qmu);
	pthread_mutex_lock(&j->bgmu);
	j->stopping = true;
	pthread_cond_broadcast(&j->bgcond);
	pthread_mutex_unlock(&j->bgmu);
	/* The commit thread drains what was queued before closing. */
	if (j->have_commit)
		pthread_join(j->commit_thread, NULL);
	if (j->have_index) {
		/* The commit thread asked it to stop after its last step. */
		pthread_join(j->index_thread, NULL);
	}
	if (j->have_verify)
		pthread_join(j->verify_thread, NULL);
	if (j->have_retain)
		pthread_join(j->retain_thread, NULL);
	if (j->have_prep)
		pthread_join(j->prep_thread, NULL);
	for (size_t i = 0; i < j->nplans; i++)
		jplan_free(j->plans[i]);
	free(j->plans);
	if (j->db) {
		rocksdb_column_family_handle_destroy(j->cf_default);
		rocksdb_column_family_handle_destroy(j->cf_seg);
		rocksdb_column_family_handle_destroy(j->cf_point);
		rocksdb_column_family_handle_destroy(j->cf_meta);
		rocksdb_close(j->db);
	}
	if (j->wsync)
		rocksdb_writeoptions_destroy(j->wsync);
	if (j->ropts)
		rocksdb_readoptions_destroy(j->ropts);
	if (j->dbopts)
		rocksdb_options_destroy(j->dbopts);
	pthread_mutex_destroy(&j->mu);
	pthread_mutex_destroy(&j->qmu);
	pthread_mutex_destroy(&j->fold_mu);
	pthread_mutex_destroy(&j->commit_mu);
	pthread_mutex_destroy(&j->smu);
	pthread_cond_destroy(&j->scond);
	pthread_mutex_destroy(&j->bgmu);
	pthread_cond_destroy(&j->qcond);
	pthread_cond_destroy(&j->qroom);
	pthread_cond_destroy(&j->bgcond);
	pthread_cond_destroy(&j->spare_cond);
	free(j->stage);
	free(j->dir);
	free(j);
}

/* ---- statistics ---------------------------------------------------------- */

void cdp_journal_commit_stats(struct cdp_journal *j, uint64_t *steps, uint64_t *segments,
			      uint64_t *bytes)
{
	pthread_mutex_lock(&j->mu);
	if (steps)
		*steps = j->steps;
	if (segments)
		*segments = j->step_segments;
	if (bytes)
		*bytes = j->step_bytes;
	pthread_mutex_unlock(&j->mu);
}
