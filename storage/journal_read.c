/*
 * storage/journal_read - points, pins, iterators, restore and seeding.
 *
 * Readers never take a lock across I/O. What keeps their bytes in place is a
 * pin: a registered seq the horizon may not pass. Registering takes fold_mu,
 * so a pin never lands in the middle of a fold step. An iterator pins at the
 * last segment it returned (folding below it is fine; it reads segments,
 * not the base image). A restore or a seeding reader pins at the horizon it
 * starts from, because it reads the base image: no fold runs while it does.
 *
 * Restore = base image + every record in (horizon, seq], in order. Each
 * segment is read, its CRCs checked, decompressed, checked against the chain
 * (from the horizon digest) and its records applied to the sink one at a
 * time: memory stays at one segment.
 */
#include "storage/journal_int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

/* ---- pins ---------------------------------------------------------------- */

int jpin_add(struct cdp_journal *j, struct jplan *p, struct jpin *pin, uint64_t seq,
	     const char *what)
{
	pthread_mutex_lock(&j->fold_mu);
	pthread_mutex_lock(&j->mu);
	pin->seq = seq;
	pin->what = what;
	pin->next = p->pins;
	p->pins = pin;
	pthread_mutex_unlock(&j->mu);
	pthread_mutex_unlock(&j->fold_mu);
	return 0;
}

void jpin_remove(struct cdp_journal *j, struct jplan *p, struct jpin *pin)
{
	pthread_mutex_lock(&j->mu);
	for (struct jpin **pp = &p->pins; *pp; pp = &(*pp)->next) {
		if (*pp == pin) {
			*pp = pin->next;
			break;
		}
	}
	pthread_mutex_unlock(&j->mu);
}

/* The verifier and scrub only read for a moment: they never make a journal full. */
static bool pin_is_check(const struct jpin *pin)
{
	return !strcmp(pin->what, "verifier") || !strcmp(pin->what, "scrub");
}

static uint64_t pins_limit_locked(struct jplan *p, bool skip_checks, char *why, size_t why_size)
{
	uint64_t limit = UINT64_MAX;

	for (struct jpin *pin = p->pins; pin; pin = pin->next) {
		if (skip_checks && pin_is_check(pin))
			continue;
		if (pin->seq < limit) {
			limit = pin->seq;
			if (why)
				snprintf(why, why_size, "pinned by an open %s at seq %" PRIu64,
					 pin->what, pin->seq);
		}
	}
	return limit;
}

uint64_t jpin_limit_locked(struct cdp_journal *j, struct jplan *p, char *why, size_t why_size)
{
	return pins_limit_locked(p, false, why, why_size);
}

static uint64_t limit_of(struct cdp_journal *j, struct jplan *p, bool skip_checks, char *why,
			 size_t why_size);

uint64_t jpin_limit(struct cdp_journal *j, struct jplan *p, char *why, size_t why_size)
{
	return limit_of(j, p, false, why, why_size);
}

uint64_t jpin_limit_holding(struct cdp_journal *j, struct jplan *p, char *why, size_t why_size)
{
	return limit_of(j, p, true, why, why_size);
}

static uint64_t limit_of(struct cdp_journal *j, struct jplan *p, bool skip_checks, char *why,
			 size_t why_size)
{
	rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
	uint8_t s[16], e[16];
	size_t sl;
	rocksdb_iterator_t *it;
	uint64_t limit = UINT64_MAX, plan = p->conf.plan_id;
	int64_t now = cdp_clock_wall_ns(j->clock);

	if (why && why_size)
		why[0] = '\0';
	jmeta_key(s, &sl, 'C', plan, NULL, 0);
	jmeta_key(e, &sl, 'C', plan + 1, NULL, 0);
	rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)e, sl);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_meta);
	for (rocksdb_iter_seek(it, (char *)s, sl); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
		size_t kl, vl;
		const char *k = rocksdb_iter_key(it, &kl), *v = rocksdb_iter_value(it, &vl);
		uint64_t seq;

		if (kl <= 9 || !jcursor_pins((const uint8_t *)v, vl, now))
			continue;
		seq = cdp_get_le64((const uint8_t *)v);
		if (seq < limit) {
			limit = seq;
			if (why)
				snprintf(why, why_size, "pinned by cursor %.*s at seq %" PRIu64,
					 (int)(kl - 9), k + 9, seq);
		}
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	pthread_mutex_lock(&j->mu);
	{
		char pwhy[CDP_ERR_MSG_MAX];
		uint64_t pl = pins_limit_locked(p, skip_checks, pwhy, sizeof(pwhy));

		if (pl < limit) {
			limit = pl;
			if (why)
				snprintf(why, why_size, "%s", pwhy);
		}
	}
	pthread_mutex_unlock(&j->mu);
	return limit;
}

/* ---- reading one stored segment ------------------------------------------ */

int jseg_read(struct cdp_journal *j, const struct jseg *s, struct cdp_buf *buf,
	      struct cdp_seg_header *h, struct cdp_err *err)
{
	char path[4096];
	long n;
	int fd, rc;

	jpath_extent(j, path, sizeof(path), s->plan_id, s->fileno);
	fd = j->io->open(j->io->ctx, path, O_RDONLY, 0);
	if (fd < 0)
		return cdp_err_sys(err, fd, "plan %" PRIu64 " seq %" PRIu64 ": open %s",
				   s->plan_id, s->first_seq, path);
	cdp_buf_reset(buf);
	cdp_buf_reserve(buf, s->len);
	n = j->io->pread(j->io->ctx, fd, buf->data, s->len, s->offset);
	j->io->close(j->io->ctx, fd);
	if (n < 0)
		return cdp_err_sys(err, (int)n, "plan %" PRIu64 " seq %" PRIu64 ": read %s",
				   s->plan_id, s->first_seq, path);
	if ((size_t)n != s->len)
		return cdp_err_set(err, -EBADMSG, "plan %" PRIu64 " seq %" PRIu64 ": %s holds %ld "
				   "of its %u bytes at offset %" PRIu64, s->plan_id, s->first_seq,
				   path, n, s->len, s->offset);
	buf->len = s->len;
	rc = cdp_seg_parse_header(buf->data, buf->len, h, err);
	if (!rc)
		rc = cdp_seg_check_body(h, buf->data + CDP_SEG_HDR_LEN, err);
	if (!rc && (h->first_seq != s->first_seq || h->last_seq != s->last_seq ||
		    h->t_last != s->t_last || memcmp(h->digest, s->digest, CDP_DIGEST_LEN)))
		rc = cdp_err_set(err, -EBADMSG, "stored header does not match its index entry");
	if (rc)
		return cdp_err_prefix(err, "plan %" PRIu64 " seq %" PRIu64 " (file %" PRIu64
				      " offset %" PRIu64 ")", s->plan_id, s->first_seq, s->fileno,
				      s->offset);
	return 0;
}

/* ---- points -------------------------------------------------------------- */

int cdp_journal_points(struct cdp_journal *j, uint64_t plan_id, int64_t from, int64_t to,
		       int (*fn)(void *arg, const struct cdp_journal_point *p), void *arg,
		       struct cdp_err *err)
{
	rocksdb_readoptions_t *ro;
	rocksdb_iterator_t *it;
	uint8_t start[JPOINT_KEY_LEN], end[8];
	struct jplan *p = jplan_get(j, plan_id, err);

	if (!p)
		return -ENOENT;
	ro = rocksdb_readoptions_create();
	jpoint_key(start, plan_id, from, 0);
	jput_be64(end, plan_id + 1);
	rocksdb_readoptions_set_iterate_upper_bound(ro, (char *)end, 8);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_point);
	for (rocksdb_iter_seek(it, (char *)start, sizeof(start)); rocksdb_iter_valid(it);
	     rocksdb_iter_next(it)) {
		size_t kl, vl;
		const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
		const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
		struct cdp_journal_point pt;

		if (jpoint_decode(k, kl, v, vl, &pt))
			continue;
		if (pt.time_ns > to || fn(arg, &pt))
			break;
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	jplan_put(j, p);
	return 0;
}

int cdp_journal_point_find(struct cdp_journal *j, uint64_t plan_id, int64_t at,
			   bool consistent_only, struct cdp_journal_point *out,
			   struct cdp_err *err)
{
	rocksdb_readoptions_t *ro;
	rocksdb_iterator_t *it;
	uint8_t key[JPOINT_KEY_LEN], lower[8];
	struct jplan *p = jplan_get(j, plan_id, err);
	int rc = -ENOENT;

	if (!p)
		return -ENOENT;
	ro = rocksdb_readoptions_create();
	jput_be64(lower, plan_id);
	rocksdb_readoptions_set_iterate_lower_bound(ro, (char *)lower, 8);
	jpoint_key(key, plan_id, at, UINT64_MAX);
	it = rocksdb_create_iterator_cf(j->db, ro, j->cf_point);
	for (rocksdb_iter_seek_for_prev(it, (char *)key, sizeof(key)); rocksdb_iter_valid(it);
	     rocksdb_iter_prev(it)) {
		size_t kl, vl;
		const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
		const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
		struct cdp_journal_point pt;

		if (jpoint_decode(k, kl, v, vl, &pt))
			continue;
		if (consistent_only && !(pt.flags & CDP_POINT_F_CONSISTENT))
			continue;
		*out = pt;
		rc = 0;
		break;
	}
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	jplan_put(j, p);
	if (rc)
		cdp_err_set(err, -ENOENT, "plan %" PRIu64 ": no %spoint at or before %" PRId64,
			    plan_id, consistent_only ? "consistent " : "", at);
	return rc;
}

struct point_match {
	uint64_t seq;
	const char *name;
	struct cdp_journal_point *out;
	bool found;
};

static int point_match_cb(void *arg, const struct cdp_journal_point *pt)
{
	struct point_match *m = arg;

	if (m->name) {
		if ((pt->flags & CDP_POINT_F_BOOKMARK) && !strcmp(pt->name, m->name)) {
			*m->out = *pt;	/* the newest bookmark of that name wins */
			m->found = true;
		}
		return 0;
	}
	if (pt->seq == m->seq) {
		/* Prefer the interval point over a bookmark at the same seq. */
		if (!m->found || !(pt->flags & CDP_POINT_F_BOOKMARK))
			*m->out = *pt;
		m->found = true;
		return 0;
	}
	return pt->seq > m->seq;
}

int cdp_journal_point_by_seq(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			     struct cdp_journal_point *p, struct cdp_err *err)
{
	struct point_match m = { seq, NULL, p, false };
	struct jseg s;
	int64_t from = INT64_MIN;
	int rc;

	/* Start at the segment that holds seq: points are in time and seq order. */
	if (jseg_find(j, plan_id, seq, &s, NULL) == 0 && s.first_seq <= seq)
		from = s.t_first;
	rc = cdp_journal_points(j, plan_id, from, INT64_MAX, point_match_cb, &m, err);
	if (rc)
		return rc;
	if (!m.found)
		return cdp_err_set(err, -ENOENT, "plan %" PRIu64 ": no point at seq %" PRIu64,
				   plan_id, seq);
	return 0;
}

int cdp_journal_point_by_name(struct cdp_journal *j, uint64_t plan_id, const char *name,
			      struct cdp_journal_point *p, struct cdp_err *err)
{
	struct point_match m = { 0, name, p, false };
	int rc = cdp_journal_points(j, plan_id, INT64_MIN, INT64_MAX, point_match_cb, &m, err);

	if (rc)
		return rc;
	if (!m.found)
		return cdp_err_set(err, -ENOENT, "plan %" PRIu64 ": no bookmark '%s'", plan_id,
				   name);
	return 0;
}

/* ---- iterators ----------------------------------------------------------- */

struct cdp_journal_iter {
	struct cdp_journal *j;
	struct jplan *p;
	struct jpin pin;
	uint64_t from_seq;
	bool started;
	uint64_t last_first;	/* key of the last segment returned */
	int64_t last_t;
};

struct next_arg {
	struct cdp_journal_iter *it;
	struct jseg *out;
};

static int next_cb(void *arg, const struct jseg *s)
{
	struct next_arg *n = arg;
	struct cdp_journal_iter *it = n->it;

	if (!it->started) {
		if (s->first_seq < it->from_seq && s->last_seq < it->from_seq)
			return 0;
	} else if (s->first_seq < it->last_first ||
		   (s->first_seq == it->last_first && s->t_last <= it->last_t)) {
		return 0;
	}
	*n->out = *s;
	return 1;
}

struct cdp_journal_iter *cdp_journal_iter_new(struct cdp_journal *j, uint64_t plan_id,
					      uint64_t from_seq, struct cdp_err *err)
{
	struct cdp_journal_iter *it;
	struct jplan *p = jplan_get(j, plan_id, err);
	uint64_t horizon;

	if (!p)
		return NULL;
	it = cdp_xcalloc(1, sizeof(*it));
	it->j = j;
	it->p = p;
	it->from_seq = from_seq ? from_seq : 1;
	jpin_add(j, p, &it->pin, it->from_seq - 1, "iterator");
	pthread_mutex_lock(&j->mu);
	horizon = p->horizon_seq;
	pthread_mutex_unlock(&j->mu);
	if (it->from_seq <= horizon) {
		cdp_err_set(err, -ERANGE, "plan %s: seq %" PRIu64 " is folded into the base image "
			    "(horizon %" PRIu64 "): seed first", p->conf.name, it->from_seq,
			    horizon);
		cdp_journal_iter_free(it);
		return NULL;
	}
	return it;
}

int cdp_journal_iter_next(struct cdp_journal_iter *it, struct cdp_buf *seg,
			  struct cdp_seg_header *h, struct cdp_err *err)
{
	struct jseg s;
	struct next_arg n = { it, &s };
	uint64_t from = it->started ? it->last_first : it->from_seq;
	int rc;

	/* A segment holding from_seq starts at most a segment's worth of records back. */
	if (!it->started)
		from = from > CDP_SEG_MAX_RAW / CDP_REC_HDR_LEN ?
			       from - CDP_SEG_MAX_RAW / CDP_REC_HDR_LEN : 0;
	rc = jseg_scan(it->j, it->p->conf.plan_id, from, next_cb, &n, err);
	if (rc <= 0)
		return rc;
	rc = jseg_read(it->j, &s, seg, h, err);
	if (rc)
		return rc;
	it->started = true;
	it->last_first = s.first_seq;
	it->last_t = s.t_last;
	pthread_mutex_lock(&it->j->mu);
	if (s.nrecords)
		it->pin.seq = s.last_seq;
	pthread_mutex_unlock(&it->j->mu);
	return 1;
}

void cdp_journal_iter_free(struct cdp_journal_iter *it)
{
	if (!it)
		return;
	jpin_remove(it->j, it->p, &it->pin);
	jplan_put(it->j, it->p);
	free(it);
}

/* ---- applying records ---------------------------------------------------- */

int japply_segment(const struct japply *a, const struct cdp_segment *seg, struct cdp_err *err)
{
	for (uint32_t i = 0; i < seg->h.nrecords; i++) {
		const struct cdp_record *r = &seg->recs[i];
		int rc = 0;

		if (r->seq > a->upto)
			break;
		if (r->kind == CDP_REC_WRITE)
			rc = a->sink->write(a->arg, r->volume, r->offset, r->payload, r->length, err);
		else if (r->kind == CDP_REC_ZERO || r->kind == CDP_REC_TRIM)
			rc = a->sink->zero(a->arg, r->volume, r->offset, r->length, err);
		if (rc)
			return cdp_err_prefix(err, "seq %" PRIu64, r->seq);
	}
	return 0;
}

/* ---- base images --------------------------------------------------------- */

struct base_reader {
	int fd;
	uint64_t size;
	uint64_t off;
};

/* Next piece of a base image: 1 with data (in @data) or a zero range; 0 at end. */
static int base_next(struct cdp_journal *j, struct base_reader *b, uint64_t *off,
		     uint64_t *len, bool *zero, struct cdp_buf *data, struct cdp_err *err)
{
	const uint64_t chunk = 4u << 20;
	off_t d, hole;
	long n;

	if (b->off >= b->size)
		return 0;
	d = lseek(b->fd, (off_t)b->off, SEEK_DATA);
	if (d < 0 || (uint64_t)d >= b->size) {
		*off = b->off;
		*len = b->size - b->off;
		*zero = true;
		b->off = b->size;
		return 1;
	}
	if ((uint64_t)d > b->off) {
		*off = b->off;
		*len = (uint64_t)d - b->off;
		*zero = true;
		b->off = (uint64_t)d;
		return 1;
	}
	hole = lseek(b->fd, (off_t)b->off, SEEK_HOLE);
	if (hole < 0 || (uint64_t)hole > b->size)
		hole = (off_t)b->size;
	*off = b->off;
	*len = CDP_MIN((uint64_t)hole - b->off, chunk);
	*zero = false;
	cdp_buf_reset(data);
	cdp_buf_reserve(data, *len);
	n = j->io->pread(j->io->ctx, b->fd, data->data, *len, *off);
	if (n < 0)
		return cdp_err_sys(err, (int)n, "read base image at %" PRIu64, *off);
	if ((uint64_t)n != *len)
		return cdp_err_set(err, -EIO, "base image: short read at %" PRIu64, *off);
	data->len = *len;
	b->off += *len;
	return 1;
}

static int base_open(struct cdp_journal *j, struct jplan *p, uint32_t v, struct base_reader *b,
		     struct cdp_err *err)
{
	char path[4096];

	jpath_base(j, path, sizeof(path), p->conf.plan_id, v);
	b->fd = j->io->open(j->io->ctx, path, O_RDONLY, 0);
	if (b->fd < 0)
		return cdp_err_sys(err, b->fd, "open base image %s", path);
	b->size = p->conf.volume_size[v];
	b->off = 0;
	return 0;
}

/* ---- restore ------------------------------------------------------------- */

struct replay_arg {
	struct cdp_journal *j;
	struct japply apply;
	uint64_t horizon;
	uint8_t digest[CDP_DIGEST_LEN];
	uint64_t next_seq;
	struct cdp_buf buf;
	struct cdp_err *err;
	int rc;
	bool reached;
	uint64_t last_first;
	int64_t last_t;
	uint64_t bytes, segments;
};

static int replay_cb(void *arg, const struct jseg *s)
{
	struct replay_arg *r = arg;
	struct cdp_seg_expect ex = { 0 };
	struct cdp_seg_header h;
	struct cdp_segment *seg;
	int rc;

	if (s->first_seq <= r->horizon)
		return 0;	/* at or below the horizon: already in the base */
	if (s->first_seq > r->apply.upto) {
		r->reached = true;
		return 1;
	}
	rc = jseg_read(r->j, s, &r->buf, &h, r->err);
	if (rc)
		goto fail;
	ex.prev_digest = r->digest;
	ex.check_first_seq = true;
	ex.first_seq = r->next_seq;
	ex.check_plan = false;
	ex.min_time = INT64_MIN;
	ex.volume_sizes = r->apply.sizes;
	ex.nvolumes = r->apply.nvolumes;
	ex.body_checked = true;	/* by jseg_read(), on r->buf */
	rc = cdp_seg_decode(r->buf.data, r->buf.len, &ex, &seg, r->err);
	if (rc) {
		cdp_err_prefix(r->err, "plan %" PRIu64 " seq %" PRIu64, s->plan_id, s->first_seq);
		goto fail;
	}
	rc = japply_segment(&r->apply, seg, r->err);
	memcpy(r->digest, seg->h.digest, CDP_DIGEST_LEN);
	r->last_first = s->first_seq;
	r->last_t = s->t_last;
	r->bytes += s->len;
	r->segments++;
	if (seg->h.nrecords)
		r->next_seq = seg->h.last_seq + 1;
	cdp_segment_free(seg);
	if (rc)
		goto fail;
	if (s->last_seq >= r->apply.upto && s->nrecords) {
		r->reached = true;
		return 1;
	}
	return 0;
fail:
	r->rc = rc;
	return rc;
}

int jreplay_range(struct cdp_journal *j, struct jplan *p, uint64_t horizon,
		  const uint8_t horizon_digest[CDP_DIGEST_LEN], uint64_t upto,
		  const struct cdp_journal_sink *sink, void *arg, struct jreplay_end *end,
		  struct cdp_err *err)
{
	struct replay_arg r = { 0 };
	int rc;

	r.j = j;
	r.apply.sink = sink;
	r.apply.arg = arg;
	r.apply.upto = upto;
	r.apply.sizes = p->conf.volume_size;
	r.apply.nvolumes = p->conf.nvolumes;
	r.horizon = horizon;
	memcpy(r.digest, horizon_digest, CDP_DIGEST_LEN);
	r.next_seq = horizon + 1;
	r.err = err;
	rc = jseg_scan(j, p->conf.plan_id, horizon + 1, replay_cb, &r, err);
	cdp_buf_release(&r.buf);
	if (r.rc)
		return r.rc;
	if (rc < 0)
		return rc;
	if (upto > horizon && r.next_seq <= upto)
		return cdp_err_set(err, -EBADMSG, "plan %s: segments end at seq %" PRIu64
				   ", expected seq %" PRIu64 " to be stored", p->conf.name,
				   r.next_seq - 1, upto);
	if (end) {
		memcpy(end->digest, r.digest, CDP_DIGEST_LEN);
		end->last_first = r.last_first;
		end->last_t = r.last_t;
		end->bytes = r.bytes;
		end->segments = r.segments;
	}
	return 0;
}

/* Copies base images to the sink and applies (horizon, upto]. */
static int jbuild_image(struct cdp_journal *j, struct jplan *p, uint64_t horizon,
		 const uint8_t horizon_digest[CDP_DIGEST_LEN], uint64_t upto,
		 const struct cdp_journal_sink *sink, void *arg, struct cdp_err *err)
{
	struct cdp_buf data = CDP_BUF_INIT;
	int rc = 0;

	/* Aligned, so a sink may write base chunks with O_DIRECT. */
	data.cap = 4u << 20;
	data.data = cdp_xaligned_alloc(CDP_IO_ALIGN, data.cap);

	for (uint32_t v = 0; v < p->conf.nvolumes && !rc; v++) {
		struct base_reader b;
		uint64_t off, len;
		bool zero;

		rc = sink->begin(arg, v, p->conf.volume_name[v], p->conf.volume_size[v], err);
		if (rc)
			break;
		rc = base_open(j, p, v, &b, err);
		if (rc)
			break;
		while ((rc = base_next(j, &b, &off, &len, &zero, &data, err)) == 1) {
			rc = zero ? sink->zero(arg, v, off, len, err)
				  : sink->write(arg, v, off, data.data, (size_t)len, err);
			if (rc)
				break;
		}
		j->io->close(j->io->ctx, b.fd);
	}
	cdp_buf_release(&data);
	if (!rc)
		rc = jreplay_range(j, p, horizon, horizon_digest, upto, sink, arg, NULL, err);
	for (uint32_t v = 0; v < p->conf.nvolumes && !rc; v++)
		rc = sink->end(arg, v, err);
	return rc;
}

int cdp_journal_restore(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			bool allow_inconsistent, const struct cdp_journal_sink *sink, void *arg,
			struct cdp_err *err)
{
	uint8_t hdigest[CDP_DIGEST_LEN];
	struct cdp_journal_point pt;
	struct jpin pin;
	struct jplan *p;
	uint64_t horizon, durable;
	int rc;

	p = jplan_get(j, plan_id, err);
	if (!p)
		return -ENOENT;
	if (!allow_inconsistent) {
		rc = cdp_journal_point_by_seq(j, plan_id, seq, &pt, err);
		if (rc == -ENOENT) {
			cdp_err_set(err, -EINVAL, "plan %s: seq %" PRIu64 " is not a recovery point",
				    p->conf.name, seq);
			rc = -EINVAL;
		} else if (!rc && !(pt.flags & CDP_POINT_F_CONSISTENT)) {
			rc = cdp_err_set(err, -EINVAL, "plan %s: point at seq %" PRIu64 " is "
					 "inconsistent (inside a sync or after damage)",
					 p->conf.name, seq);
		}
		if (rc) {
			jplan_put(j, p);
			return rc;
		}
	}
	pthread_mutex_lock(&j->mu);
	horizon = p->horizon_seq;
	pthread_mutex_unlock(&j->mu);
	jpin_add(j, p, &pin, horizon, "restore");
	pthread_mutex_lock(&j->mu);
	horizon = p->horizon_seq;	/* a fold may have ended before the pin */
	pin.seq = horizon;
	memcpy(hdigest, p->horizon_digest, CDP_DIGEST_LEN);
	durable = p->st.next_seq - 1;
	pthread_mutex_unlock(&j->mu);
	if (seq < horizon)
		rc = cdp_err_set(err, -ERANGE, "plan %s: seq %" PRIu64 " is older than the history "
				 "kept (horizon %" PRIu64 ")", p->conf.name, seq, horizon);
	else if (seq > durable)
		rc = cdp_err_set(err, -ENOENT, "plan %s: seq %" PRIu64 " is not stored yet "
				 "(durable %" PRIu64 ")", p->conf.name, seq, durable);
	else
		rc = jbuild_image(j, p, horizon, hdigest, seq, sink, arg, err);
	jpin_remove(j, p, &pin);
	jplan_put(j, p);
	return rc;
}

/*
 * The directory sink: DIR/<volume name>.img. Aligned chunks (the base image
 * copy) go out with O_DIRECT, as dd oflag=direct would: no page-cache copy;
 * the records after them through the page cache; one fdatasync at the end.
 */
struct dir_sink {
	const char *dir;
	int fd[CDP_JOURNAL_MAX_VOLUMES];
	int dfd[CDP_JOURNAL_MAX_VOLUMES];	/* O_DIRECT, or -1 where refused */
	uint64_t size[CDP_JOURNAL_MAX_VOLUMES];
	bool fresh[CDP_JOURNAL_MAX_VOLUMES];	/* nothing written yet: holes are zeros */
};

static int dir_begin(void *arg, uint32_t v, const char *name, uint64_t size,
		     struct cdp_err *err)
{
	struct dir_sink *d = arg;
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s.img", d->dir, name);
	d->fd[v] = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (d->fd[v] < 0)
		return cdp_err_sys(err, -errno, "create %s", path);
	if (ftruncate(d->fd[v], (off_t)size))
		return cdp_err_sys(err, -errno, "size %s", path);
	d->dfd[v] = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);	/* -1 on tmpfs: fine */
	d->size[v] = size;
	return 0;
}

static int dir_write(void *arg, uint32_t v, uint64_t off, const void *buf, size_t len,
		     struct cdp_err *err)
{
	struct dir_sink *d = arg;
	bool aligned = !((off | len | (uintptr_t)buf) % CDP_IO_ALIGN);
	int rc = cdp_pwrite_all(aligned && d->dfd[v] >= 0 ? d->dfd[v] : d->fd[v], buf, len, off);

	if (rc)
		return cdp_err_sys(err, rc, "write volume %u at %" PRIu64, v, off);
	return 0;
}

static int dir_zero(void *arg, uint32_t v, uint64_t off, uint64_t len, struct cdp_err *err)
{
	struct dir_sink *d = arg;

	if (fallocate(d->fd[v], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len)) {
		/* No hole punching here: write the zeros. */
		static const uint8_t zeros[65536];

		for (uint64_t o = 0; o < len;) {
			size_t n = (size_t)CDP_MIN(len - o, (uint64_t)sizeof(zeros));
			int rc = cdp_pwrite_all(d->fd[v], zeros, n, off + o);

			if (rc)
				return cdp_err_sys(err, rc, "zero volume %u at %" PRIu64, v, off + o);
			o += n;
		}
	}
	return 0;
}

static int dir_end(void *arg, uint32_t v, struct cdp_err *err)
{
	struct dir_sink *d = arg;
	int rc = fdatasync(d->fd[v]) ? -errno : 0;

	close(d->fd[v]);
	d->fd[v] = -1;
	if (d->dfd[v] >= 0)
		close(d->dfd[v]);
	d->dfd[v] = -1;
	if (rc)
		return cdp_err_sys(err, rc, "fdatasync volume %u", v);
	return 0;
}

int cdp_journal_restore_to_dir(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			       bool allow_inconsistent, const char *dir, struct cdp_err *err)
{
	static const struct cdp_journal_sink sink = { dir_begin, dir_write, dir_zero, dir_end };
	struct dir_sink d = { .dir = dir };
	int rc;

	for (int i = 0; i < CDP_JOURNAL_MAX_VOLUMES; i++)
		d.fd[i] = d.dfd[i] = -1;
	rc = cdp_journal_restore(j, plan_id, seq, allow_inconsistent, &sink, &d, err);
	for (int i = 0; i < CDP_JOURNAL_MAX_VOLUMES; i++) {
		if (d.fd[i] >= 0)
			close(d.fd[i]);
		if (d.dfd[i] >= 0)
			close(d.dfd[i]);
	}
	return rc;
}

/* ---- seeding ------------------------------------------------------------- */

struct cdp_journal_seed {
	struct cdp_journal *j;
	struct jplan *p;
	struct jpin pin;
	uint32_t volume;
	struct base_reader b;
	bool open;
};

struct cdp_journal_seed *cdp_journal_seed_new(struct cdp_journal *j, uint64_t plan_id,
					      uint64_t *horizon_seq,
					      uint8_t horizon_digest[CDP_DIGEST_LEN],
					      struct cdp_err *err)
{
	struct cdp_journal_seed *s;
	struct jplan *p = jplan_get(j, plan_id, err);

	if (!p)
		return NULL;
	s = cdp_xcalloc(1, sizeof(*s));
	s->j = j;
	s->p = p;
	s->b.fd = -1;
	jpin_add(j, p, &s->pin, 0, "seeding");
	pthread_mutex_lock(&j->mu);
	s->pin.seq = p->horizon_seq;
	*horizon_seq = p->horizon_seq;
	memcpy(horizon_digest, p->horizon_digest, CDP_DIGEST_LEN);
	pthread_mutex_unlock(&j->mu);
	return s;
}

int cdp_journal_seed_next(struct cdp_journal_seed *s, uint32_t *volume, uint64_t *off,
			  uint64_t *len, bool *zero, struct cdp_buf *data, struct cdp_err *err)
{
	for (;;) {
		int rc;

		if (s->volume >= s->p->conf.nvolumes)
			return 0;
		if (!s->open) {
			rc = base_open(s->j, s->p, s->volume, &s->b, err);
			if (rc)
				return rc;
			s->open = true;
		}
		rc = base_next(s->j, &s->b, off, len, zero, data, err);
		if (rc) {
			*volume = s->volume;
			return rc;
		}
		s->j->io->close(s->j->io->ctx, s->b.fd);
		s->b.fd = -1;
		s->open = false;
		s->volume++;
	}
}

void cdp_journal_seed_free(struct cdp_journal_seed *s)
{
	if (!s)
		return;
	if (s->open)
		s->j->io->close(s->j->io->ctx, s->b.fd);
	jpin_remove(s->j, s->p, &s->pin);
	jplan_put(s->j, s->p);
	free(s);
}
