/*
 * journald/plans - the plan table: cdp.v1.Plan messages kept in memory and
 * persisted as the journal store's plan blob (the store keeps what it needs
 * itself: volumes, retention, byte cap, epoch).
 *
 * Only the "ctl" thread changes plans, so changes never race each other;
 * readers (ingest, status) take jd->mu to look a plan up.
 */
#include "journald/journald.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define DEF_POINT_INTERVAL (1 * CDP_NS_PER_SEC)
#define DEF_WINDOW (15 * 24 * 3600 * CDP_NS_PER_SEC)
#define DEF_RETENTION (24 * 3600 * CDP_NS_PER_SEC)
#define DEF_STANDBY_MAX_LAG (15 * 60 * CDP_NS_PER_SEC)

void *jd_pack(const ProtobufCMessage *m, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	void *buf = cdp_xmalloc(n ? n : 1);

	*len = protobuf_c_message_pack(m, buf);
	return buf;
}

Cdp__V1__Plan *jd_plan_copy(const Cdp__V1__Plan *pb)
{
	size_t len;
	void *buf = jd_pack(&pb->base, &len);
	Cdp__V1__Plan *c = cdp__v1__plan__unpack(NULL, len, buf);

	free(buf);
	if (!c)
		abort();	/* we packed it ourselves: only out of memory gets here */
	return c;
}

static bool good_name(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;

	if (!n || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '-' || s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '.'))
			return false;
	return true;
}

int jd_plan_check(const Cdp__V1__Plan *pb, struct cdp_err *err)
{
	if (!good_name(pb->name, CDP_JOURNAL_NAME_MAX))
		return cdp_err_set(err, -EINVAL, "plan name: '%s' must be 1..%d of [A-Za-z0-9._-]",
				   pb->name ? pb->name : "", CDP_JOURNAL_NAME_MAX);
	if (pb->kind[0] && strcmp(pb->kind, "migration") && strcmp(pb->kind, "protection"))
		return cdp_err_set(err, -EINVAL, "plan %s: kind: '%s', expected migration or "
				   "protection", pb->name, pb->kind);
	if (!pb->n_volumes || pb->n_volumes > CDP_JOURNAL_MAX_VOLUMES)
		return cdp_err_set(err, -EINVAL, "plan %s: volumes: %zu, expected 1..%d", pb->name,
				   pb->n_volumes, CDP_JOURNAL_MAX_VOLUMES);
	for (size_t i = 0; i < pb->n_volumes; i++) {
		const Cdp__V1__Volume *v = pb->volumes[i];

		if (!good_name(v->name, CDP_JOURNAL_NAME_MAX))
			return cdp_err_set(err, -EINVAL, "plan %s: volume %zu: name '%s' must be "
					   "1..%d of [A-Za-z0-9._-]", pb->name, i, v->name,
					   CDP_JOURNAL_NAME_MAX);
		if (!v->size || v->size % CDP_SECTOR)
			return cdp_err_set(err, -EINVAL, "plan %s: volume %s: size %" PRIu64
					   " is not a positive multiple of 512", pb->name, v->name,
					   v->size);
		for (size_t k = 0; k < i; k++)
			if (!strcmp(pb->volumes[k]->name, v->name))
				return cdp_err_set(err, -EINVAL, "plan %s: volume %s: named twice",
						   pb->name, v->name);
	}
	if (!good_name(pb->agent_id, 128))
		return cdp_err_set(err, -EINVAL, "plan %s: agent_id: '%s' must be 1..128 of "
				   "[A-Za-z0-9._-]", pb->name, pb->agent_id);
	for (size_t i = 0; i < pb->n_standby_ids; i++)
		if (!good_name(pb->standby_ids[i], 128))
			return cdp_err_set(err, -EINVAL, "plan %s: standby_ids[%zu]: '%s' must be "
					   "1..128 of [A-Za-z0-9._-]", pb->name, i,
					   pb->standby_ids[i]);
	if (pb->retention_ns < 0 || pb->window_ns < 0 || pb->standby_max_lag_ns < 0)
		return cdp_err_set(err, -EINVAL, "plan %s: retention, window and standby_max_lag "
				   "must not be negative", pb->name);
	if (pb->point_interval_ns && (pb->point_interval_ns < 100 * CDP_NS_PER_MS ||
				      pb->point_interval_ns > 60 * CDP_NS_PER_SEC))
		return cdp_err_set(err, -EINVAL, "plan %s: point_interval: %" PRId64 " ms, expected "
				   "100 ms..60 s", pb->name, pb->point_interval_ns / CDP_NS_PER_MS);
	return 0;
}

static void fill_defaults(Cdp__V1__Plan *pb)
{
	if (!pb->kind[0]) {
		/* An absent string is protobuf-c's static empty string: never free it. */
		if (pb->kind != protobuf_c_empty_string)
			free(pb->kind);
		pb->kind = cdp_xstrdup("protection");
	}
	if (!pb->point_interval_ns)
		pb->point_interval_ns = DEF_POINT_INTERVAL;
	if (!pb->retention_ns)
		pb->retention_ns = DEF_RETENTION;
	if (!strcmp(pb->kind, "migration") && !pb->window_ns)
		pb->window_ns = DEF_WINDOW;
	if (!pb->standby_max_lag_ns)
		pb->standby_max_lag_ns = DEF_STANDBY_MAX_LAG;
}

static void to_store(const Cdp__V1__Plan *pb, struct cdp_journal_plan *p)
{
	memset(p, 0, sizeof(*p));
	p->plan_id = pb->plan_id;
	snprintf(p->name, sizeof(p->name), "%s", pb->name);
	p->epoch = pb->epoch;
	p->nvolumes = (uint32_t)pb->n_volumes;
	for (size_t i = 0; i < pb->n_volumes; i++) {
		p->volume_size[i] = pb->volumes[i]->size;
		snprintf(p->volume_name[i], sizeof(p->volume_name[i]), "%s", pb->volumes[i]->name);
	}
	p->retention_ns = pb->retention_ns;
	p->journal_max_bytes = pb->journal_max_bytes;
}

struct jd_plan *jd_plan_find_locked(struct jd *d, const char *name)
{
	for (size_t i = 0; i < d->nplans; i++)
		if (!strcmp(d->plans[i]->pb->name, name))
			return d->plans[i];
	return NULL;
}

struct jd_plan *jd_plan_by_id_locked(struct jd *d, uint64_t id)
{
	for (size_t i = 0; i < d->nplans; i++)
		if (d->plans[i]->id == id)
			return d->plans[i];
	return NULL;
}

int jd_plans_load(struct jd *d, struct cdp_err *err)
{
	uint64_t ids[256];
	int n = cdp_journal_plan_list(d->j, ids, CDP_ARRAY_SIZE(ids), err);

	for (int i = 0; i < n && i < (int)CDP_ARRAY_SIZE(ids); i++) {
		struct cdp_buf blob = CDP_BUF_INIT;
		struct cdp_journal_plan p;
		Cdp__V1__Plan *pb;
		struct jd_plan *jp;
		int rc = cdp_journal_plan_get(d->j, ids[i], &p, &blob, err);

		if (rc) {
			cdp_buf_release(&blob);
			return rc;
		}
		pb = cdp__v1__plan__unpack(NULL, blob.len, blob.data);
		cdp_buf_release(&blob);
		if (!pb)
			return cdp_err_set(err, -EIO, "plan %" PRIu64 ": stored settings unreadable",
					   ids[i]);
		pb->epoch = p.epoch;	/* the store is the authority on the epoch */
		jp = cdp_xcalloc(1, sizeof(*jp));
		jp->id = ids[i];
		jp->pb = pb;
		d->plans = cdp_xrealloc(d->plans, (d->nplans + 1) * sizeof(*d->plans));
		d->plans[d->nplans++] = jp;
	}
	return 0;
}

void jd_plans_free(struct jd *d)
{
	for (size_t i = 0; i < d->nplans; i++) {
		cdp__v1__plan__free_unpacked(d->plans[i]->pb, NULL);
		free(d->plans[i]->resync);
		free(d->plans[i]);
	}
	free(d->plans);
	d->plans = NULL;
	d->nplans = 0;
}

static bool same_volumes(const Cdp__V1__Plan *a, const Cdp__V1__Plan *b)
{
	if (a->n_volumes != b->n_volumes)
		return false;
	for (size_t i = 0; i < a->n_volumes; i++)
		if (a->volumes[i]->size != b->volumes[i]->size ||
		    strcmp(a->volumes[i]->name, b->volumes[i]->name))
			return false;
	return true;
}

int jd_plan_put(struct jd *d, const Cdp__V1__Plan *req, bool create, Cdp__V1__Plan **out,
		struct cdp_err *err)
{
	struct cdp_journal_plan sp;
	struct jd_plan *old;
	Cdp__V1__Plan *pb;
	uint64_t id = 0;
	void *blob;
	size_t blen;
	int rc;

	rc = jd_plan_check(req, err);
	if (rc)
		return rc;
	pb = jd_plan_copy(req);
	fill_defaults(pb);
	pthread_mutex_lock(&d->mu);
	old = jd_plan_find_locked(d, pb->name);
	if (old) {
		id = old->id;
		pb->epoch = old->pb->epoch;
		pb->paused = old->pb->paused;
	} else {
		for (size_t i = 0; i < d->nplans; i++)
			id = CDP_MAX(id, d->plans[i]->id);
		id++;
	}
	if (old && !same_volumes(old->pb, pb)) {
		pthread_mutex_unlock(&d->mu);
		cdp__v1__plan__free_unpacked(pb, NULL);
		return cdp_err_set(err, -EINVAL, "plan %s: volumes: a plan's volumes cannot change "
				   "(delete the plan and create it again)", req->name);
	}
	pthread_mutex_unlock(&d->mu);
	if (old && create) {
		cdp__v1__plan__free_unpacked(pb, NULL);
		return cdp_err_set(err, -EEXIST, "plan %s already exists", req->name);
	}
	pb->plan_id = id;
	for (size_t i = 0; i < pb->n_volumes; i++)
		pb->volumes[i]->id = (uint32_t)i;
	to_store(pb, &sp);
	blob = jd_pack(&pb->base, &blen);
	rc = old ? cdp_journal_plan_update(d->j, &sp, blob, blen, err)
		 : cdp_journal_plan_create(d->j, &sp, blob, blen, err);
	free(blob);
	if (rc) {
		cdp__v1__plan__free_unpacked(pb, NULL);
		return rc;
	}
	pthread_mutex_lock(&d->mu);
	if (old) {
		cdp__v1__plan__free_unpacked(old->pb, NULL);
		old->pb = pb;
	} else {
		struct jd_plan *jp = cdp_xcalloc(1, sizeof(*jp));

		jp->id = id;
		jp->pb = pb;
		d->plans = cdp_xrealloc(d->plans, (d->nplans + 1) * sizeof(*d->plans));
		d->plans[d->nplans++] = jp;
	}
	if (out)
		*out = jd_plan_copy(pb);
	pthread_mutex_unlock(&d->mu);
	return 0;
}

int jd_plan_delete(struct jd *d, const char *name, struct cdp_err *err)
{
	struct jd_plan *jp;
	uint64_t id;
	int rc;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_find_locked(d, name);
	if (jp && jp->agent) {
		pthread_mutex_unlock(&d->mu);
		return cdp_err_set(err, -EBUSY, "plan %s: its agent is connected", name);
	}
	id = jp ? jp->id : 0;
	pthread_mutex_unlock(&d->mu);
	if (!jp)
		return cdp_err_set(err, -ENOENT, "plan %s not found", name);
	rc = cdp_journal_plan_delete(d->j, id, err);
	if (rc)
		return rc;
	pthread_mutex_lock(&d->mu);
	for (size_t i = 0; i < d->nplans; i++) {
		if (d->plans[i]->id == id) {
			cdp__v1__plan__free_unpacked(d->plans[i]->pb, NULL);
			free(d->plans[i]->resync);
			free(d->plans[i]);
			d->plans[i] = d->plans[--d->nplans];
			break;
		}
	}
	pthread_mutex_unlock(&d->mu);
	return 0;
}

int jd_plan_set_paused(struct jd *d, const char *name, bool paused, Cdp__V1__Plan **out,
		       struct cdp_err *err)
{
	Cdp__V1__Plan *pb;
	struct jd_plan *jp;
	int rc;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_find_locked(d, name);
	pb = jp ? jd_plan_copy(jp->pb) : NULL;
	pthread_mutex_unlock(&d->mu);
	if (!pb)
		return cdp_err_set(err, -ENOENT, "plan %s not found", name);
	pb->paused = paused;
	{
		struct cdp_journal_plan sp;
		size_t blen;
		void *blob = jd_pack(&pb->base, &blen);

		to_store(pb, &sp);
		rc = cdp_journal_plan_update(d->j, &sp, blob, blen, err);
		free(blob);
	}
	if (!rc) {
		pthread_mutex_lock(&d->mu);
		jp = jd_plan_find_locked(d, name);
		if (jp) {
			cdp__v1__plan__free_unpacked(jp->pb, NULL);
			jp->pb = pb;
			pb = NULL;
			if (out)
				*out = jd_plan_copy(jp->pb);
		}
		pthread_mutex_unlock(&d->mu);
	}
	if (pb)
		cdp__v1__plan__free_unpacked(pb, NULL);
	return rc;
}
