/*
 * journald/control - the Control service (cdpctl and any gRPC client).
 *
 * Requests are queued by the cq thread and served one at a time by the "ctl"
 * thread (plan changes never race each other); a restore streams from a
 * thread of its own ("restore"), waiting for the client to take what was
 * sent before it reads more (memory stays bounded). With TLS, only the admin
 * certificate may call Control.
 */
#include "journald/journald.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"

enum ctl_op {
	OP_CREATE, OP_APPLY, OP_LIST, OP_GET, OP_DELETE, OP_PAUSE, OP_RESUME, OP_STATUS,
	OP_POINTS, OP_MARK, OP_RESTORE, OP_VERIFY,
};

static const struct {
	const char *name;
	enum cdp_rpc_kind kind;
} ops[] = {
	[OP_CREATE] = { "/cdp.v1.Control/CreatePlan", CDP_RPC_UNARY },
	[OP_APPLY] = { "/cdp.v1.Control/ApplyPlan", CDP_RPC_UNARY },
	[OP_LIST] = { "/cdp.v1.Control/ListPlans", CDP_RPC_UNARY },
	[OP_GET] = { "/cdp.v1.Control/GetPlan", CDP_RPC_UNARY },
	[OP_DELETE] = { "/cdp.v1.Control/DeletePlan", CDP_RPC_UNARY },
	[OP_PAUSE] = { "/cdp.v1.Control/PausePlan", CDP_RPC_UNARY },
	[OP_RESUME] = { "/cdp.v1.Control/ResumePlan", CDP_RPC_UNARY },
	[OP_STATUS] = { "/cdp.v1.Control/Status", CDP_RPC_UNARY },
	[OP_POINTS] = { "/cdp.v1.Control/ListPoints", CDP_RPC_UNARY },
	[OP_MARK] = { "/cdp.v1.Control/Mark", CDP_RPC_UNARY },
	[OP_RESTORE] = { "/cdp.v1.Control/Restore", CDP_RPC_SERVER_STREAMING },
	[OP_VERIFY] = { "/cdp.v1.Control/Verify", CDP_RPC_UNARY },
};

struct ctl_req {
	struct jd *d;
	struct cdp_rpc_call *call;	/* referenced */
	enum ctl_op op;
	uint8_t *msg;
	size_t len;
};

struct method_arg {
	struct jd *d;
	enum ctl_op op;
};

static struct method_arg margs[CDP_ARRAY_SIZE(ops)];

static void reply(struct cdp_rpc_call *call, const ProtobufCMessage *m)
{
	size_t len;
	void *buf = jd_pack(m, &len);

	cdp_rpc_call_reply(call, buf, len);
	free(buf);
}

static void reply_empty(struct cdp_rpc_call *call)
{
	Cdp__V1__Empty e = CDP__V1__EMPTY__INIT;

	reply(call, &e.base);
}

static int plan_id_of(struct jd *d, const char *name, struct cdp_err *err)
{
	struct jd_plan *jp;
	int64_t id;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_find_locked(d, name ? name : "");
	id = jp ? (int64_t)jp->id : 0;
	pthread_mutex_unlock(&d->mu);
	if (!id)
		return cdp_err_set(err, -ENOENT, "plan '%s' not found", name ? name : "");
	return (int)id;
}

static void fill_status(struct jd *d, struct jd_plan *jp, Cdp__V1__PlanStatus *st,
			struct cdp_journal_stats *js)
{
	cdp__v1__plan_status__init(st);
	st->plan = jp->pb;
	st->agent_connected = jp->agent != NULL;
	st->durable_seq = js->durable_seq;
	st->horizon_seq = js->horizon_seq;
	st->newest_point_ns = js->newest_point_ns;
	st->oldest_point_ns = js->oldest_point_ns;
	st->journal_bytes = js->bytes;
	st->pinned_by = js->pinned_by;
	st->damaged_from = js->damaged_from;
	st->lag_ns = js->newest_point_ns ? cdp_clock_wall_ns(d->clock) - js->newest_point_ns : 0;
	if (jp->pb->paused)
		st->state = "paused";
	else if (js->damaged_from)
		st->state = "damaged: resync pending";
	else if (!js->synced)
		st->state = js->sync_active ? "full sync" : "waiting for full sync";
	else if (js->sync_active)
		st->state = "resyncing";
	else
		st->state = "protecting";
	st->capture_mode = js->sync_active ? "sync" : "continuous";
}

static void do_status(struct jd *d, struct cdp_rpc_call *call, const Cdp__V1__PlanRef *ref)
{
	Cdp__V1__StatusReply r = CDP__V1__STATUS_REPLY__INIT;
	struct cdp_err err = CDP_ERR_INIT;
	Cdp__V1__PlanStatus *sts, **stp;
	struct cdp_journal_stats *js;
	Cdp__V1__Plan **keep;
	size_t n = 0, cap;

	pthread_mutex_lock(&d->mu);
	cap = d->nplans;
	sts = cdp_xcalloc(cap ? cap : 1, sizeof(*sts));
	stp = cdp_xcalloc(cap ? cap : 1, sizeof(*stp));
	js = cdp_xcalloc(cap ? cap : 1, sizeof(*js));
	keep = cdp_xcalloc(cap ? cap : 1, sizeof(*keep));
	for (size_t i = 0; i < d->nplans; i++) {
		struct jd_plan *jp = d->plans[i];

		if (ref->name && ref->name[0] && strcmp(ref->name, jp->pb->name))
			continue;
		keep[n] = jd_plan_copy(jp->pb);
		sts[n].plan = keep[n];
		sts[n].agent_connected = jp->agent != NULL;
		sts[n].plan->plan_id = jp->id;
		n++;
	}
	pthread_mutex_unlock(&d->mu);
	if (ref->name && ref->name[0] && !n) {
		cdp_err_set(&err, -ENOENT, "plan '%s' not found", ref->name);
		cdp_rpc_call_finish_err(call, &err);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct jd_plan tmp = { .id = keep[i]->plan_id, .pb = keep[i] };
		bool conn = sts[i].agent_connected;

		cdp_journal_stats(d->j, keep[i]->plan_id, &js[i], NULL);
		fill_status(d, &tmp, &sts[i], &js[i]);
		sts[i].agent_connected = conn;
		stp[i] = &sts[i];
	}
	r.n_plans = n;
	r.plans = stp;
	reply(call, &r.base);
out:
	for (size_t i = 0; i < n; i++)
		cdp__v1__plan__free_unpacked(keep[i], NULL);
	free(keep);
	free(sts);
	free(stp);
	free(js);
}

struct points_acc {
	Cdp__V1__Point *pts;
	size_t n, cap;
	char **names;
};

static int points_cb(void *arg, const struct cdp_journal_point *p)
{
	struct points_acc *a = arg;

	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->pts = cdp_xrealloc(a->pts, a->cap * sizeof(*a->pts));
		a->names = cdp_xrealloc(a->names, a->cap * sizeof(*a->names));
	}
	cdp__v1__point__init(&a->pts[a->n]);
	a->pts[a->n].time_ns = p->time_ns;
	a->pts[a->n].seq = p->seq;
	a->pts[a->n].consistent = (p->flags & CDP_POINT_F_CONSISTENT) != 0;
	a->names[a->n] = cdp_xstrdup(p->name);
	a->pts[a->n].name = a->names[a->n];
	a->n++;
	return a->n >= 1000000;	/* a bound on one reply */
}

static void do_points(struct jd *d, struct cdp_rpc_call *call, const Cdp__V1__PointsRequest *q)
{
	Cdp__V1__PointsReply r = CDP__V1__POINTS_REPLY__INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct points_acc a = { 0 };
	Cdp__V1__Point **pp;
	int id = plan_id_of(d, q->plan, &err);

	if (id < 0) {
		cdp_rpc_call_finish_err(call, &err);
		return;
	}
	if (cdp_journal_points(d->j, (uint64_t)id, q->from_ns ? q->from_ns : INT64_MIN,
			       q->to_ns ? q->to_ns : INT64_MAX, points_cb, &a, &err)) {
		cdp_rpc_call_finish_err(call, &err);
		return;
	}
	pp = cdp_xcalloc(a.n ? a.n : 1, sizeof(*pp));
	for (size_t i = 0; i < a.n; i++)
		pp[i] = &a.pts[i];
	r.n_points = a.n;
	r.points = pp;
	reply(call, &r.base);
	for (size_t i = 0; i < a.n; i++)
		free(a.names[i]);
	free(a.names);
	free(a.pts);
	free(pp);
}

/*
 * Resolves AT (RFC 3339, @unix_seconds, seq:N or a bookmark name) to the seq
 * of a consistent point; names the nearest consistent ones when it is not.
 */
static int resolve_point(struct jd *d, uint64_t plan, const char *at, uint64_t *seq,
			 struct cdp_err *err)
{
	struct cdp_journal_point p, q;
	int64_t t = 0;
	int rc;

	if (!at || !*at)
		return cdp_err_set(err, -EINVAL, "at: empty (RFC 3339, @unix_seconds, seq:N or a "
				   "bookmark name)");
	if (!strncmp(at, "seq:", 4)) {
		char *end;
		unsigned long long v = strtoull(at + 4, &end, 10);

		if (end == at + 4 || *end)
			return cdp_err_set(err, -EINVAL, "at: '%s' is not seq:N", at);
		rc = cdp_journal_point_by_seq(d->j, plan, v, &p, err);
		if (rc)
			return rc;
	} else if (at[0] == '@' || (at[0] >= '0' && at[0] <= '9' && strchr(at, 'T'))) {
		if (at[0] == '@') {
			char *end;
			double v = strtod(at + 1, &end);

			if (end == at + 1 || *end)
				return cdp_err_set(err, -EINVAL, "at: '%s' is not @unix_seconds", at);
			t = (int64_t)(v * 1e9);
		} else {
			struct tm tm = { 0 };
			const char *rest = strptime(at, "%Y-%m-%dT%H:%M:%S", &tm);
			double frac = 0;

			if (!rest)
				return cdp_err_set(err, -EINVAL, "at: '%s' is not RFC 3339 time", at);
			if (*rest == '.') {
				char *end;

				frac = strtod(rest, &end);
				rest = end;
			}
			if (strcmp(rest, "Z") && strcmp(rest, "+00:00"))
				return cdp_err_set(err, -EINVAL, "at: '%s': give the time in UTC (Z)",
						   at);
			t = (int64_t)timegm(&tm) * CDP_NS_PER_SEC + (int64_t)(frac * 1e9);
		}
		rc = cdp_journal_point_find(d->j, plan, t, true, &p, err);
		if (rc)
			return rc;
	} else {
		rc = cdp_journal_point_by_name(d->j, plan, at, &p, err);
		if (rc)
			return rc;
	}
	if (!(p.flags & CDP_POINT_F_CONSISTENT)) {
		char before[64] = "none", after[64] = "none";

		if (!cdp_journal_point_find(d->j, plan, p.time_ns, true, &q, NULL))
			snprintf(before, sizeof(before), "seq:%" PRIu64, q.seq);
		{
			struct cdp_journal_point n = { 0 };
			struct points_acc a = { 0 };

			cdp_journal_points(d->j, plan, p.time_ns, INT64_MAX, points_cb, &a, NULL);
			for (size_t i = 0; i < a.n; i++) {
				if (a.pts[i].consistent && a.pts[i].seq > p.seq) {
					n.seq = a.pts[i].seq;
					snprintf(after, sizeof(after), "seq:%" PRIu64, n.seq);
					break;
				}
			}
			for (size_t i = 0; i < a.n; i++)
				free(a.names[i]);
			free(a.names);
			free(a.pts);
		}
		return cdp_err_set(err, -ESTALE, "point seq:%" PRIu64 " is inconsistent (inside a "
				   "sync); nearest consistent: before %s, after %s", p.seq, before,
				   after);
	}
	*seq = p.seq;
	return 0;
}

/* ---- restore: a sink that streams RestoreChunk messages ----------------- */

struct restore_ctx {
	struct jd *d;
	struct cdp_rpc_call *call;
	uint64_t seq;
	uint64_t plan;
	char *at;
	char names[CDP_JOURNAL_MAX_VOLUMES][CDP_JOURNAL_NAME_MAX + 1];
	uint64_t sizes[CDP_JOURNAL_MAX_VOLUMES];
	bool first;
};

#define RESTORE_WINDOW (32u << 20)	/* bytes queued to the client at most */
#define RESTORE_SEND_TIMEOUT (60 * CDP_NS_PER_SEC)

static int rs_send(struct restore_ctx *r, Cdp__V1__RestoreChunk *c, struct cdp_err *err)
{
	size_t len;
	void *buf;
	int rc;

	rc = cdp_rpc_call_wait_send_below(r->call, RESTORE_WINDOW, RESTORE_SEND_TIMEOUT);
	if (rc)
		return cdp_err_set(err, rc, "restore: client not reading (%s)", strerror(-rc));
	if (r->first) {
		c->seq = r->seq;
		r->first = false;
	}
	buf = jd_pack(&c->base, &len);
	rc = cdp_rpc_call_send_take(r->call, buf, len);
	if (rc)
		return cdp_err_set(err, rc, "restore: client gone");
	return 0;
}

static int rs_begin(void *arg, uint32_t v, const char *name, uint64_t size, struct cdp_err *err)
{
	struct restore_ctx *r = arg;

	snprintf(r->names[v], sizeof(r->names[v]), "%s", name);
	r->sizes[v] = size;
	return 0;
}

static int rs_write(void *arg, uint32_t v, uint64_t off, const void *buf, size_t len,
		    struct cdp_err *err)
{
	struct restore_ctx *r = arg;
	const size_t chunk = 1u << 20;

	for (size_t o = 0; o < len; o += chunk) {
		Cdp__V1__RestoreChunk c = CDP__V1__RESTORE_CHUNK__INIT;
		int rc;

		c.volume = v;
		c.volume_name = r->names[v];
		c.volume_size = r->sizes[v];
		c.offset = off + o;
		c.data.data = (uint8_t *)buf + o;
		c.data.len = CDP_MIN(chunk, len - o);
		rc = rs_send(r, &c, err);
		if (rc)
			return rc;
	}
	return 0;
}

static int rs_zero(void *arg, uint32_t v, uint64_t off, uint64_t len, struct cdp_err *err)
{
	struct restore_ctx *r = arg;
	Cdp__V1__RestoreChunk c = CDP__V1__RESTORE_CHUNK__INIT;

	c.volume = v;
	c.volume_name = r->names[v];
	c.volume_size = r->sizes[v];
	c.offset = off;
	c.zero_length = len;
	return rs_send(r, &c, err);
}

static int rs_end(void *arg, uint32_t v, struct cdp_err *err)
{
	/* An empty chunk per volume so that even an all-zero volume is announced. */
	return rs_zero(arg, v, 0, 0, err);
}

static void *restore_main(void *p)
{
	static const struct cdp_journal_sink sink = { rs_begin, rs_write, rs_zero, rs_end };
	struct restore_ctx *r = p;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	rc = resolve_point(r->d, r->plan, r->at, &r->seq, &err);
	if (!rc)
		rc = cdp_journal_restore(r->d->j, r->plan, r->seq, false, &sink, r, &err);
	if (rc)
		cdp_rpc_call_finish_err(r->call, &err);
	else
		cdp_rpc_call_finish(r->call, CDP_RPC_OK, NULL);
	cdp_rpc_call_unref(r->call);
	free(r->at);
	free(r);
	return NULL;
}

static void do_restore(struct jd *d, struct cdp_rpc_call *call, const Cdp__V1__RestoreRequest *q)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct restore_ctx *r;
	pthread_t t;
	int id = plan_id_of(d, q->plan, &err);
	int rc;

	if (id < 0) {
		cdp_rpc_call_finish_err(call, &err);
		return;
	}
	r = cdp_xcalloc(1, sizeof(*r));
	r->d = d;
	r->call = call;
	r->plan = (uint64_t)id;
	r->at = cdp_xstrdup(q->at ? q->at : "");
	r->first = true;
	cdp_rpc_call_ref(call);
	rc = cdp_thread_start(&t, "restore", restore_main, r);
	if (rc) {
		cdp_err_sys(&err, rc, "start restore thread");
		cdp_rpc_call_finish_err(call, &err);
		cdp_rpc_call_unref(call);
		free(r->at);
		free(r);
		return;
	}
	pthread_detach(t);
}

static void do_plan_reply(struct cdp_rpc_call *call, int rc, Cdp__V1__Plan *pb,
			  const struct cdp_err *err)
{
	if (rc) {
		cdp_rpc_call_finish_err(call, err);
		return;
	}
	reply(call, &pb->base);
	cdp__v1__plan__free_unpacked(pb, NULL);
}

static void serve(struct ctl_req *q)
{
	struct jd *d = q->d;
	struct cdp_err err = CDP_ERR_INIT;
	ProtobufCMessage *m = NULL;
	const ProtobufCMessageDescriptor *desc;
	Cdp__V1__Plan *out = NULL;
	int rc;

	switch (q->op) {
	case OP_CREATE:
	case OP_APPLY: desc = &cdp__v1__plan__descriptor; break;
	case OP_LIST: desc = &cdp__v1__empty__descriptor; break;
	case OP_POINTS: desc = &cdp__v1__points_request__descriptor; break;
	case OP_MARK: desc = &cdp__v1__mark_request__descriptor; break;
	case OP_RESTORE: desc = &cdp__v1__restore_request__descriptor; break;
	default: desc = &cdp__v1__plan_ref__descriptor; break;
	}
	m = protobuf_c_message_unpack(desc, NULL, q->len, q->msg);
	if (!m) {
		cdp_err_set(&err, -EINVAL, "%s: request of %zu bytes is not a valid %s",
			    ops[q->op].name, q->len, desc->name);
		cdp_rpc_call_finish_err(q->call, &err);
		return;
	}
	switch (q->op) {
	case OP_CREATE:
	case OP_APPLY:
		rc = jd_plan_put(d, (Cdp__V1__Plan *)m, q->op == OP_CREATE, &out, &err);
		do_plan_reply(q->call, rc, out, &err);
		break;
	case OP_LIST: {
		Cdp__V1__PlanList l = CDP__V1__PLAN_LIST__INIT;
		Cdp__V1__Plan **v;
		size_t n;

		pthread_mutex_lock(&d->mu);
		n = d->nplans;
		v = cdp_xcalloc(n ? n : 1, sizeof(*v));
		for (size_t i = 0; i < n; i++)
			v[i] = jd_plan_copy(d->plans[i]->pb);
		pthread_mutex_unlock(&d->mu);
		l.n_plans = n;
		l.plans = v;
		reply(q->call, &l.base);
		for (size_t i = 0; i < n; i++)
			cdp__v1__plan__free_unpacked(v[i], NULL);
		free(v);
		break;
	}
	case OP_GET: {
		const Cdp__V1__PlanRef *ref = (Cdp__V1__PlanRef *)m;
		struct jd_plan *jp;

		pthread_mutex_lock(&d->mu);
		jp = jd_plan_find_locked(d, ref->name);
		out = jp ? jd_plan_copy(jp->pb) : NULL;
		pthread_mutex_unlock(&d->mu);
		rc = out ? 0 : cdp_err_set(&err, -ENOENT, "plan '%s' not found", ref->name);
		do_plan_reply(q->call, rc, out, &err);
		break;
	}
	case OP_DELETE:
		rc = jd_plan_delete(d, ((Cdp__V1__PlanRef *)m)->name, &err);
		if (rc)
			cdp_rpc_call_finish_err(q->call, &err);
		else
			reply_empty(q->call);
		break;
	case OP_PAUSE:
	case OP_RESUME:
		rc = jd_plan_set_paused(d, ((Cdp__V1__PlanRef *)m)->name, q->op == OP_PAUSE, &out,
					&err);
		do_plan_reply(q->call, rc, out, &err);
		break;
	case OP_STATUS:
		do_status(d, q->call, (Cdp__V1__PlanRef *)m);
		break;
	case OP_POINTS:
		do_points(d, q->call, (Cdp__V1__PointsRequest *)m);
		break;
	case OP_MARK: {
		const Cdp__V1__MarkRequest *mr = (Cdp__V1__MarkRequest *)m;
		Cdp__V1__Command cmd = CDP__V1__COMMAND__INIT;
		Cdp__V1__Bookmark bm = CDP__V1__BOOKMARK__INIT;
		size_t n = mr->name ? strlen(mr->name) : 0;
		int id = plan_id_of(d, mr->plan, &err);

		if (id >= 0 && (!n || n > CDP_MARK_NAME_MAX))
			id = cdp_err_set(&err, -EINVAL, "mark: name: 1..%d bytes", CDP_MARK_NAME_MAX);
		if (id >= 0) {
			bm.name = mr->name;
			cmd.cmd_case = CDP__V1__COMMAND__CMD_BOOKMARK;
			cmd.bookmark = &bm;
			id = jd_agent_command(d, (uint64_t)id, &cmd, &err);
		}
		if (id < 0)
			cdp_rpc_call_finish_err(q->call, &err);
		else
			reply_empty(q->call);
		break;
	}
	case OP_RESTORE:
		do_restore(d, q->call, (Cdp__V1__RestoreRequest *)m);
		break;
	case OP_VERIFY: {
		Cdp__V1__VerifyReply vr = CDP__V1__VERIFY_REPLY__INIT;
		uint64_t bad = 0;
		int id = plan_id_of(d, ((Cdp__V1__PlanRef *)m)->name, &err);

		if (id < 0) {
			cdp_rpc_call_finish_err(q->call, &err);
			break;
		}
		rc = cdp_journal_scrub(d->j, (uint64_t)id, &bad, &err);
		vr.ok = rc == 0;
		vr.bad_seq = bad;
		vr.message = rc ? err.msg : (char *)"every stored segment verified";
		if (rc && rc != -EBADMSG)
			cdp_rpc_call_finish_err(q->call, &err);
		else
			reply(q->call, &vr.base);
		break;
	}
	}
	protobuf_c_message_free_unpacked(m, NULL);
}

static void *ctl_main(void *p)
{
	struct jd *d = p;

	for (;;) {
		void *it;
		struct ctl_req *q;
		int rc = cdp_queue_pop(d->ctlq, &it, CDP_QUEUE_UNTIL_CLOSED);

		if (rc == -ECANCELED)
			break;
		if (rc)
			continue;
		q = it;
		serve(q);
		cdp_rpc_call_unref(q->call);
		free(q->msg);
		free(q);
	}
	return NULL;
}

static void on_request(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	struct method_arg *ma = arg;
	struct jd *d = ma->d;
	struct cdp_err err = CDP_ERR_INIT;
	struct ctl_req *q;

	if (d->tls) {
		char ident[160] = "";

		cdp_rpc_call_peer_identity(call, ident, sizeof(ident));
		if (strcmp(ident, d->cfg.admin_id)) {
			cdp_err_set(&err, -EPERM, "control: certificate '%s' is not the admin (%s)",
				    ident, d->cfg.admin_id);
			cdp_rpc_call_finish_err(call, &err);
			return;
		}
	}
	q = cdp_xcalloc(1, sizeof(*q));
	q->d = d;
	q->call = call;
	q->op = ma->op;
	q->msg = cdp_xmalloc(len ? len : 1);
	memcpy(q->msg, msg, len);
	q->len = len;
	cdp_rpc_call_ref(call);
	if (cdp_queue_push(d->ctlq, q, 0)) {
		cdp_err_set(&err, -ENOSPC, "control: too many requests waiting");
		cdp_rpc_call_finish_err(call, &err);
		cdp_rpc_call_unref(call);
		free(q->msg);
		free(q);
	}
}

int jd_control_start(struct jd *d, struct cdp_err *err)
{
	static const struct cdp_rpc_handlers h = { .on_request = on_request };
	int rc;

	d->ctlq = cdp_queue_new("cq>ctl", 1024);
	for (size_t i = 0; i < CDP_ARRAY_SIZE(ops); i++) {
		margs[i].d = d;
		margs[i].op = (enum ctl_op)i;
		rc = cdp_rpc_server_add_method(d->srv, ops[i].name, ops[i].kind, &h, &margs[i], err);
		if (rc)
			return rc;
	}
	rc = cdp_thread_start(&d->ctl_thread, "ctl", ctl_main, d);
	if (rc)
		return cdp_err_sys(err, rc, "start ctl thread");
	return 0;
}

void jd_control_stop(struct jd *d)
{
	if (!d->ctlq)
		return;
	cdp_queue_close(d->ctlq);
	pthread_join(d->ctl_thread, NULL);
	cdp_queue_free(d->ctlq);
	d->ctlq = NULL;
}
