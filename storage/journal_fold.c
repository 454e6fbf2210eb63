/*
 * storage/journal_fold - the horizon: folding history into the base images,
 * retention, the byte cap, and statistics.
 *
 * A fold to target T (a segment boundary) runs in steps of at most
 * fold_batch_bytes of segments, each under fold_mu (readers wait to pin):
 *
 *   1. persist "fold in progress to T" in the horizon record (synced);
 *   2. apply the records in (horizon, step end] to the base images, in order,
 *      verifying CRCs and the chain; overwrites of the same block land in the
 *      page cache and reach the disk once (the coalescing is the kernel's);
 *   3. fdatasync every base image;
 *   4. one synced WriteBatch: the new horizon (seq, digest, key), the index
 *      entries and points below it deleted, extent records of freed files;
 *   5. extent files wholly below the horizon are recycled or deleted.
 *
 * A crash before 4 leaves the base images ahead of the committed horizon;
 * open() sees the recorded target and folds again from the committed
 * horizon: applying the same records in the same order again gives the same
 * image, so folding is idempotent.
 *
 * The target: the newest segment older than now - retention, or, when the
 * plan holds more than journal_max_bytes, enough of the oldest segments to
 * get back under 3/4 of the cap; never past a pinning cursor or an open
 * reader (jpin_limit()).
 */
#include "storage/journal_int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"

/* The sink that writes into the base images, through the journal's I/O. */
struct base_sink {
	struct cdp_journal *j;
	int fd[CDP_JOURNAL_MAX_VOLUMES];
};

static int bs_write(void *arg, uint32_t v, uint64_t off, const void *buf, size_t len,
		    struct cdp_err *err)
{
	struct base_sink *b = arg;
	int rc = cdp_io_pwrite(b->j->io, b->fd[v], buf, len, off);

	if (rc)
		return cdp_err_sys(err, rc, "base image %u: write at %" PRIu64, v, off);
	return 0;
}

static int bs_zero(void *arg, uint32_t v, uint64_t off, uint64_t len, struct cdp_err *err)
{
	struct base_sink *b = arg;
	int rc = b->j->io->fallocate(b->j->io->ctx, b->fd[v],
				     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);

	if (rc)
		return cdp_err_sys(err, rc, "base image %u: punch at %" PRIu64, v, off);
	return 0;
}

static int bs_begin(void *arg, uint32_t v, const char *name, uint64_t size, struct cdp_err *err)
{
	return 0;
}

static int bs_end(void *arg, uint32_t v, struct cdp_err *err)
{
	return 0;
}

static const struct cdp_journal_sink base_sink_ops = { bs_begin, bs_write, bs_zero, bs_end };

struct target_scan {
	uint64_t horizon;
	uint64_t limit;		/* fold no segment that ends above */
	int64_t cutoff_t;	/* fold segments with t_last <= cutoff (INT64_MIN: none) */
	uint64_t cut_bytes;	/* and at least this many bytes (cap) */
	uint64_t max_bytes;	/* per step */
	uint64_t bytes;
	uint64_t target;	/* last_seq of the last segment chosen */
};

static int target_cb(void *arg, const struct jseg *s)
{
	struct target_scan *t = arg;
	uint64_t end = s->nrecords ? s->last_seq : s->first_seq - 1;

	if (s->first_seq <= t->horizon)
		return 0;
	if (end > t->limit)
		return 1;
	if (s->t_last > t->cutoff_t && t->bytes >= t->cut_bytes)
		return 1;
	if (t->max_bytes && t->bytes + s->len > t->max_bytes && t->target > t->horizon)
		return 1;
	/* A heartbeat is folded with the segment before it: it moves no seq. */
	if (s->nrecords)
		t->target = s->last_seq;
	t->bytes += s->len;
	return 0;
}

/* One fold step towards @final (mu not held; fold_mu held). */
static int fold_step(struct cdp_journal *j, struct jplan *p, uint64_t final, bool *done,
		     struct cdp_err *err)
{
	struct base_sink bs = { .j = j };
	struct target_scan ts = { 0 };
	struct jreplay_end end;
	rocksdb_writebatch_t *wb;
	uint8_t hdigest[CDP_DIGEST_LEN];
	uint64_t horizon, plan = p->conf.plan_id;
	char path[4096];
	int rc = 0;

	pthread_mutex_lock(&j->mu);
	horizon = p->horizon_seq;
	memcpy(hdigest, p->horizon_digest, CDP_DIGEST_LEN);
	pthread_mutex_unlock(&j->mu);
	*done = true;
	if (final <= horizon)
		return 0;

	ts.horizon = horizon;
	ts.limit = final;
	ts.cutoff_t = INT64_MAX;
	ts.max_bytes = j->opts.fold_batch_bytes;
	ts.target = horizon;
	rc = jseg_scan(j, plan, horizon + 1, target_cb, &ts, err);
	if (rc < 0)
		return rc;
	if (ts.target <= horizon)
		return 0;
	*done = ts.target >= final;

	/* 1. Record the intent, so a crash mid-step is finished at open. */
	wb = rocksdb_writebatch_create();
	pthread_mutex_lock(&j->mu);
	jhorizon_put(j, wb, plan, horizon, hdigest, p->horizon_first, p->horizon_t, final);
	pthread_mutex_unlock(&j->mu);
	rc = jdb_write(j, wb, err);
	rocksdb_writebatch_destroy(wb);
	if (rc)
		return rc;

	/* 2-3. Apply and sync. */
	for (uint32_t v = 0; v < CDP_JOURNAL_MAX_VOLUMES; v++)
		bs.fd[v] = -1;
	for (uint32_t v = 0; v < p->conf.nvolumes && !rc; v++) {
		jpath_base(j, path, sizeof(path), plan, v);
		bs.fd[v] = j->io->open(j->io->ctx, path, O_RDWR, 0);
		if (bs.fd[v] < 0)
			rc = cdp_err_sys(err, bs.fd[v], "open %s", path);
	}
	if (!rc)
		rc = jreplay_range(j, p, horizon, hdigest, ts.target, &base_sink_ops, &bs, &end,
				   err);
	if (!rc && cdp_fault_point("journal.fold_sync"))
		rc = cdp_err_set(err, -EIO, "base image fdatasync: fault injected");
	for (uint32_t v = 0; v < p->conf.nvolumes && !rc; v++) {
		rc = cdp_io_fdatasync(j->io, bs.fd[v]);
		if (rc)
			cdp_err_sys(err, rc, "fdatasync base image %u", v);
	}
	for (uint32_t v = 0; v < p->conf.nvolumes; v++)
		if (bs.fd[v] >= 0)
			j->io->close(j->io->ctx, bs.fd[v]);
	if (rc)
		return cdp_err_prefix(err, "fold plan %s to seq %" PRIu64, p->conf.name, ts.target);

	/* 4. Commit the new horizon; drop what is below it. */
	{
		uint8_t s[JSEG_KEY_LEN], e[JSEG_KEY_LEN], ps[JPOINT_KEY_LEN], pe[JPOINT_KEY_LEN];
		struct jfile *f;

		wb = rocksdb_writebatch_create();
		jhorizon_put(j, wb, plan, ts.target, end.digest, end.last_first, end.last_t,
			     *done ? 0 : final);
		jseg_key(s, plan, 0, INT64_MIN);
		jseg_key(e, plan, end.last_first, end.last_t);
		rocksdb_writebatch_delete_range_cf(wb, j->cf_seg, (char *)s, sizeof(s), (char *)e,
						   sizeof(e));
		rocksdb_writebatch_delete_cf(wb, j->cf_seg, (char *)e, sizeof(e));
		/* Points older than the horizon go; the horizon point itself stays. */
		jpoint_key(ps, plan, INT64_MIN, 0);
		jpoint_key(pe, plan, end.last_t, ts.target);
		rocksdb_writebatch_delete_range_cf(wb, j->cf_point, (char *)ps, sizeof(ps),
						   (char *)pe, sizeof(pe));
		pthread_mutex_lock(&j->mu);
		for (f = p->files; f; f = f->next) {
			if (f->sealed && f->first_seq && f->last_seq <= ts.target) {
				uint8_t k[24], fk[8];
				size_t kl;

				jput_be64(fk, f->fileno);
				jmeta_key(k, &kl, 'F', plan, fk, 8);
				rocksdb_writebatch_delete_cf(wb, j->cf_meta, (char *)k, kl);
			}
		}
		/* The fold checked the chain: the verifier need not look below. */
		if (p->verified_next <= ts.target)
			jverified_put(j, wb, plan, end.last_first, end.last_t, ts.target + 1,
				      end.digest);
		pthread_mutex_unlock(&j->mu);
		rc = jdb_write(j, wb, err);
		rocksdb_writebatch_destroy(wb);
		if (rc)
			return rc;
	}
	pthread_mutex_lock(&j->mu);
	p->horizon_seq = ts.target;
	memcpy(p->horizon_digest, end.digest, CDP_DIGEST_LEN);
	p->horizon_first = end.last_first;
	p->horizon_t = end.last_t;
	p->bytes = p->bytes > end.bytes ? p->bytes - end.bytes : 0;
	p->nsegments = p->nsegments > end.segments ? p->nsegments - end.segments : 0;
	if (p->verified_next <= ts.target) {
		p->verified_next = ts.target + 1;
		p->verified_first = end.last_first;
		p->verified_t = end.last_t;
		memcpy(p->verified_digest, end.digest, CDP_DIGEST_LEN);
	}
	pthread_mutex_unlock(&j->mu);

	/* 5. Files wholly below the horizon. */
	jfiles_release_below(j, p, ts.target);
	return 0;
}

static int fold_locked(struct cdp_journal *j, struct jplan *p, uint64_t target,
		       bool honour_pins, struct cdp_err *err)
{
	bool done = false;
	int rc = 0;

	while (!done && !rc) {
		uint64_t t = target;

		if (honour_pins) {
			uint64_t limit = jpin_limit(j, p, NULL, 0);

			t = CDP_MIN(t, limit);
		}
		rc = fold_step(j, p, t, &done, err);
	}
	return rc;
}

int jfold_recover(struct cdp_journal *j, struct jplan *p, uint64_t target, struct cdp_err *err)
{
	int rc;

	pthread_mutex_lock(&j->fold_mu);
	rc = fold_locked(j, p, target, false, err);
	pthread_mutex_unlock(&j->fold_mu);
	return rc;
}

int cdp_journal_fold_to(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			struct cdp_err *err)
{
	struct jplan *p = jplan_get(j, plan_id, err);
	uint64_t durable;
	int rc;

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	durable = p->st.next_seq - 1;
	/* A bad segment is never folded into the base: stop before it. */
	if (p->st.damaged_from)
		durable = CDP_MIN(durable, p->st.damaged_from - 1);
	pthread_mutex_unlock(&j->mu);
	pthread_mutex_lock(&j->fold_mu);
	rc = fold_locked(j, p, CDP_MIN(seq, durable), true, err);
	pthread_mutex_unlock(&j->fold_mu);
	jplan_put(j, p);
	return rc;
}

int cdp_journal_fold(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err)
{
	struct jplan *p = jplan_get(j, plan_id, err);
	struct target_scan ts = { 0 };
	uint64_t cap, bytes;
	int64_t cutoff;
	int rc;

	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&j->mu);
	cutoff = cdp_clock_wall_ns(j->clock) - p->conf.retention_ns;
	cap = p->conf.journal_max_bytes;
	bytes = p->bytes;
	ts.horizon = p->horizon_seq;
	ts.target = p->horizon_seq;
	pthread_mutex_unlock(&j->mu);
	ts.limit = UINT64_MAX;
	ts.cutoff_t = cutoff;
	if (cap && bytes > cap)
		ts.cut_bytes = bytes - cap / 4 * 3;	/* back under 3/4 of the cap */
	rc = jseg_scan(j, plan_id, ts.horizon + 1, target_cb, &ts, err);
	if (rc >= 0 && ts.target > ts.horizon)
		rc = cdp_journal_fold_to(j, plan_id, ts.target, err);
	jplan_put(j, p);
	return rc < 0 ? rc : 0;
}

void *jretain_main(void *arg)
{
	struct cdp_journal *j = arg;

	while (jbg_sleep(j, j->opts.retain_interval_ns)) {
		uint64_t ids[64];
		int n = cdp_journal_plan_list(j, ids, CDP_ARRAY_SIZE(ids), NULL);

		for (int i = 0; i < n && i < (int)CDP_ARRAY_SIZE(ids); i++) {
			struct cdp_err err = CDP_ERR_INIT;

			if (cdp_journal_fold(j, ids[i], &err) && err.code != -ENOENT)
				cdp_log_warn("journal: plan %" PRIu64 ": %s", ids[i], err.msg);
		}
	}
	return NULL;
}

/* ---- statistics ---------------------------------------------------------- */

static int oldest_cb(void *arg, const struct cdp_journal_point *pt)
{
	*(int64_t *)arg = pt->time_ns;
	return 1;
}

int cdp_journal_stats(struct cdp_journal *j, uint64_t plan_id, struct cdp_journal_stats *s,
		      struct cdp_err *err)
{
	struct jplan *p = jplan_get(j, plan_id, err);
	struct cdp_journal_point pt;
	uint64_t limit;

	if (!p)
		return -ENOENT;
	memset(s, 0, sizeof(*s));
	limit = jpin_limit(j, p, s->pinned_by, sizeof(s->pinned_by));
	if (limit == UINT64_MAX)
		s->pinned_by[0] = '\0';
	pthread_mutex_lock(&j->mu);
	s->durable_seq = p->st.next_seq - 1;
	s->horizon_seq = p->horizon_seq;
	s->verified_seq = p->verified_next - 1;
	s->bytes = p->bytes;
	s->segments = p->nsegments;
	for (struct jfile *f = p->files; f; f = f->next)
		s->extent_files++;
	s->synced = p->st.synced;
	s->sync_active = p->st.sync_active;
	s->damaged_from = p->st.damaged_from;
	pthread_mutex_unlock(&j->mu);
	cdp_journal_points(j, plan_id, INT64_MIN, INT64_MAX, oldest_cb, &s->oldest_point_ns, NULL);
	if (cdp_journal_point_find(j, plan_id, INT64_MAX, false, &pt, NULL) == 0)
		s->newest_point_ns = pt.time_ns;
	jplan_put(j, p);
	return 0;
}
