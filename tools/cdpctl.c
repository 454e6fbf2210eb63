/*
 * cdpctl - the operator's command-line tool; talks to cdp-journald's Control API.
 *
 *	cdpctl [--server ADDR] [--tls-ca F --tls-cert F --tls-key F] [--json] COMMAND
 *
 *	plan create FILE | plan apply FILE | plan list | plan show NAME
 *	plan delete NAME | plan pause NAME | plan resume NAME
 *	status [PLAN] [--watch INTERVAL]
 *	points PLAN [--from TIME] [--to TIME]
 *	mark PLAN NAME
 *	restore PLAN --at POINT -o DIR
 *	verify PLAN
 *
 * Exit codes: 0 ok, 1 the operation failed (one line on stderr), 2 usage.
 * status --watch reports every INTERVAL over one connection (a sample costs
 * one call, not a process start and a handshake) until SIGINT, SIGTERM or
 * its reader closes stdout; with --json, one line (an array) per report. A
 * failed call is reported on stderr and the next interval tries again.
 * The server defaults to $CDP_SERVER, else unix:cdp-state/journald.sock.
 *
 * A plan file is INI, one plan per file (docs/operations.md):
 *
 *	[plan]
 *	name = db01
 *	kind = protection            ; or migration (window = 15d)
 *	agent = agent-db01
 *	standbys = standby-db01      ; comma-separated
 *	volumes = data:512MiB, log:128MiB
 *	retention = 24h
 *	journal_max_bytes = 10GiB    ; 0 = no cap
 *	point_interval = 1s
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cdp/v1/control.pb-c.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/util.h"
#include "proto/rpc.h"

#define TIMEOUT (30 * CDP_NS_PER_SEC)
#define RESTORE_TIMEOUT (24 * 3600 * CDP_NS_PER_SEC)
#define WATCH_MIN (10 * CDP_NS_PER_MS)	/* status --watch: the shortest interval */

struct ctl {
	struct cdp_rpc_channel *ch;
	bool json;
};

/* ---- plan files ------------------------------------------------------------ */

struct plan_file {
	char *name, *kind, *agent, *standbys, *volumes, *service_ip, *hooks;
	int64_t retention, point_interval, window, standby_max_lag;
	uint64_t journal_max_bytes, bandwidth;
};

static const struct cdp_conf_option plan_options[] = {
	{ "plan", "name", CDP_CONF_STRING_AT(struct plan_file, name), .help = "Plan name." },
	{ "plan", "kind", CDP_CONF_STRING_AT(struct plan_file, kind), .def = "protection",
	  .help = "protection or migration." },
	{ "plan", "agent", CDP_CONF_STRING_AT(struct plan_file, agent),
	  .help = "The agent's identity (its certificate's common name)." },
	{ "plan", "standbys", CDP_CONF_STRING_AT(struct plan_file, standbys),
	  .help = "Standby identities, comma-separated." },
	{ "plan", "volumes", CDP_CONF_STRING_AT(struct plan_file, volumes),
	  .help = "NAME:SIZE, comma-separated, in order." },
	{ "plan", "service_ip", CDP_CONF_STRING_AT(struct plan_file, service_ip),
	  .help = "The address that moves at switchover." },
	{ "plan", "hooks", CDP_CONF_STRING_AT(struct plan_file, hooks),
	  .help = "Names of hooks (the scripts live in the edge daemons' configs)." },
	{ "plan", "retention", CDP_CONF_DURATION_AT(struct plan_file, retention), .def = "24h",
	  .help = "How far back recovery points go." },
	{ "plan", "point_interval", CDP_CONF_DURATION_AT(struct plan_file, point_interval),
	  .def = "1s", .min = 100 * CDP_NS_PER_MS, .max = 60 * CDP_NS_PER_SEC,
	  .help = "Time between recovery points." },
	{ "plan", "window", CDP_CONF_DURATION_AT(struct plan_file, window), .def = "0",
	  .help = "Migration plans: time allowed after the full sync (0 = 15 days)." },
	{ "plan", "standby_max_lag", CDP_CONF_DURATION_AT(struct plan_file, standby_max_lag),
	  .def = "15min", .help = "How far a standby may fall behind while pinning history." },
	{ "plan", "journal_max_bytes", CDP_CONF_SIZE_AT(struct plan_file, journal_max_bytes),
	  .def = "0", .help = "Cap on the plan's journal (0 = none)." },
	{ "plan", "bandwidth", CDP_CONF_RATE_AT(struct plan_file, bandwidth), .def = "300Mbit",
	  .flags = CDP_CONF_F_ZERO_OFF, .help = "Network cap of the agent (0 = unlimited)." },
};

static const struct cdp_conf_table plan_table = CDP_CONF_TABLE("cdpctl plan", plan_options,
								 struct plan_file);

/* The line of @key in @path, for messages about values checked after parsing. */
static int key_line(const char *path, const char *key)
{
	char line[1024];
	int n = 0;
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f)) {
		const char *p = line;

		n++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (!strncmp(p, key, strlen(key)) && strchr(" \t=", p[strlen(key)])) {
			fclose(f);
			return n;
		}
	}
	if (f)
		fclose(f);
	return 0;
}

static char **split_list(const char *s, size_t *n)
{
	char *copy = cdp_xstrdup(s ? s : ""), *save = NULL;
	char **v = NULL;

	*n = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ' || *t == '\t')
			t++;
		for (char *e = t + strlen(t); e > t && (e[-1] == ' ' || e[-1] == '\t');)
			*--e = '\0';
		if (!*t)
			continue;
		v = cdp_xrealloc(v, (*n + 1) * sizeof(*v));
		v[(*n)++] = cdp_xstrdup(t);
	}
	free(copy);
	return v;
}

static int load_plan(const char *path, Cdp__V1__Plan *pb, struct cdp_err *err)
{
	struct plan_file pf = { 0 };
	char **vols;
	size_t nvols;
	int rc;

	cdp_conf_defaults(&plan_table, &pf);
	rc = cdp_conf_load(&plan_table, &pf, path, NULL, CDP_CONF_REQUIRED, err);
	if (rc)
		return rc;
	if (!pf.name[0]) {
		rc = cdp_err_set(err, -EINVAL, "%s: plan.name: missing", path);
		goto out;
	}
	if (!pf.agent[0]) {
		rc = cdp_err_set(err, -EINVAL, "%s: plan.agent: missing", path);
		goto out;
	}
	pb->name = cdp_xstrdup(pf.name);
	pb->kind = cdp_xstrdup(pf.kind);
	pb->agent_id = cdp_xstrdup(pf.agent);
	pb->service_ip = cdp_xstrdup(pf.service_ip);
	pb->retention_ns = pf.retention;
	pb->point_interval_ns = pf.point_interval;
	pb->window_ns = pf.window;
	pb->standby_max_lag_ns = pf.standby_max_lag;
	pb->journal_max_bytes = pf.journal_max_bytes;
	pb->net_bits_per_sec = pf.bandwidth;
	pb->standby_ids = split_list(pf.standbys, &pb->n_standby_ids);
	pb->hooks = split_list(pf.hooks, &pb->n_hooks);
	vols = split_list(pf.volumes, &nvols);
	if (!nvols) {
		rc = cdp_err_set(err, -EINVAL, "%s: plan.volumes: missing (NAME:SIZE,...)", path);
		goto out;
	}
	pb->volumes = cdp_xcalloc(nvols, sizeof(*pb->volumes));
	for (size_t i = 0; i < nvols; i++) {
		Cdp__V1__Volume *v = cdp_xcalloc(1, sizeof(*v));
		char *colon = strchr(vols[i], ':');
		struct cdp_err e2 = CDP_ERR_INIT;

		cdp__v1__volume__init(v);
		pb->volumes[pb->n_volumes++] = v;
		if (!colon || colon == vols[i]) {
			rc = cdp_err_set(err, -EINVAL, "%s:%d: plan.volumes: '%s' is not NAME:SIZE",
					 path, key_line(path, "volumes"), vols[i]);
			break;
		}
		*colon = '\0';
		v->name = cdp_xstrdup(vols[i]);
		v->id = (uint32_t)i;
		if (cdp_conf_parse_size(colon + 1, &v->size, &e2)) {
			rc = cdp_err_set(err, -EINVAL, "%s:%d: plan.volumes: %s: %s", path,
					 key_line(path, "volumes"), vols[i], e2.msg);
			break;
		}
	}
	for (size_t i = 0; i < nvols; i++)
		free(vols[i]);
	free(vols);
out:
	cdp_conf_release(&plan_table, &pf);
	return rc;
}

/* ---- output -------------------------------------------------------------- */

static const char *fmt_time(int64_t ns, char *buf, size_t n)
{
	return ns ? cdp_time_format(ns, buf, (unsigned)n) : "-";
}

static json_t *plan_json(const Cdp__V1__Plan *p)
{
	json_t *o = json_object(), *vols = json_array(), *sb = json_array();

	for (size_t i = 0; i < p->n_volumes; i++)
		json_array_append_new(vols, json_pack("{s:s,s:I}", "name", p->volumes[i]->name,
						      "size", (json_int_t)p->volumes[i]->size));
	for (size_t i = 0; i < p->n_standby_ids; i++)
		json_array_append_new(sb, json_string(p->standby_ids[i]));
	json_object_set_new(o, "name", json_string(p->name));
	json_object_set_new(o, "plan_id", json_integer((json_int_t)p->plan_id));
	json_object_set_new(o, "kind", json_string(p->kind));
	json_object_set_new(o, "agent", json_string(p->agent_id));
	json_object_set_new(o, "standbys", sb);
	json_object_set_new(o, "volumes", vols);
	json_object_set_new(o, "retention_s", json_integer(p->retention_ns / CDP_NS_PER_SEC));
	json_object_set_new(o, "point_interval_ms",
			    json_integer(p->point_interval_ns / CDP_NS_PER_MS));
	json_object_set_new(o, "journal_max_bytes", json_integer((json_int_t)p->journal_max_bytes));
	json_object_set_new(o, "epoch", json_integer((json_int_t)p->epoch));
	json_object_set_new(o, "paused", json_boolean(p->paused));
	return o;
}

static void print_json(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);

	printf("%s\n", s);
	free(s);
	json_decref(o);
}

static void print_plan(const struct ctl *c, const Cdp__V1__Plan *p)
{
	char b[32];

	if (c->json) {
		print_json(plan_json(p));
		return;
	}
	printf("plan %s (id %" PRIu64 ", %s%s)\n", p->name, p->plan_id, p->kind,
	       p->paused ? ", paused" : "");
	printf("  agent %s; epoch %" PRIu64 "; points every %s; retention %s\n", p->agent_id,
	       p->epoch, cdp_format_duration(p->point_interval_ns, b, sizeof(b)),
	       cdp_format_duration(p->retention_ns, b + 16, sizeof(b) - 16));
	for (size_t i = 0; i < p->n_volumes; i++) {
		char sz[32];

		printf("  volume %s: %s\n", p->volumes[i]->name,
		       cdp_format_bytes(p->volumes[i]->size, sz, sizeof(sz)));
	}
}

/* ---- commands ------------------------------------------------------------ */

static int call(struct ctl *c, const char *method, const ProtobufCMessage *req,
		struct cdp_buf *reply, struct cdp_err *err)
{
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *buf = cdp_xmalloc(len ? len : 1);
	int rc;

	protobuf_c_message_pack(req, buf);
	rc = cdp_rpc_unary(c->ch, method, buf, len, TIMEOUT, reply, NULL, err);
	free(buf);
	return rc;
}

static int cmd_plan_put(struct ctl *c, const char *file, bool create, struct cdp_err *err)
{
	Cdp__V1__Plan pb = CDP__V1__PLAN__INIT, *out;
	struct cdp_buf reply = CDP_BUF_INIT;
	int rc = load_plan(file, &pb, err);

	if (!rc)
		rc = call(c, create ? "/cdp.v1.Control/CreatePlan" : "/cdp.v1.Control/ApplyPlan",
			  &pb.base, &reply, err);
	if (!rc) {
		out = cdp__v1__plan__unpack(NULL, reply.len, reply.data);
		if (!out)
			rc = cdp_err_set(err, -EBADMSG, "reply is not a Plan");
		else {
			print_plan(c, out);
			cdp__v1__plan__free_unpacked(out, NULL);
		}
	}
	/* The request was built by load_plan() with our allocations. */
	free(pb.name);
	free(pb.kind);
	free(pb.agent_id);
	free(pb.service_ip);
	for (size_t i = 0; i < pb.n_standby_ids; i++)
		free(pb.standby_ids[i]);
	free(pb.standby_ids);
	for (size_t i = 0; i < pb.n_hooks; i++)
		free(pb.hooks[i]);
	free(pb.hooks);
	for (size_t i = 0; i < pb.n_volumes; i++) {
		free(pb.volumes[i]->name);
		free(pb.volumes[i]);
	}
	free(pb.volumes);
	cdp_buf_release(&reply);
	return rc;
}

static int cmd_plan_ref(struct ctl *c, const char *method, const char *name, bool want_plan,
			struct cdp_err *err)
{
	Cdp__V1__PlanRef ref = CDP__V1__PLAN_REF__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	int rc;

	ref.name = (char *)name;
	rc = call(c, method, &ref.base, &reply, err);
	if (!rc && want_plan) {
		Cdp__V1__Plan *p = cdp__v1__plan__unpack(NULL, reply.len, reply.data);

		if (!p) {
			rc = cdp_err_set(err, -EBADMSG, "reply is not a Plan");
		} else {
			print_plan(c, p);
			cdp__v1__plan__free_unpacked(p, NULL);
		}
	} else if (!rc) {
		if (c->json)
			print_json(json_pack("{s:b}", "ok", 1));
		else
			printf("ok\n");
	}
	cdp_buf_release(&reply);
	return rc;
}

static int cmd_plan_list(struct ctl *c, struct cdp_err *err)
{
	Cdp__V1__Empty e = CDP__V1__EMPTY__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	Cdp__V1__PlanList *l;
	int rc = call(c, "/cdp.v1.Control/ListPlans", &e.base, &reply, err);

	if (rc)
		goto out;
	l = cdp__v1__plan_list__unpack(NULL, reply.len, reply.data);
	if (!l) {
		rc = cdp_err_set(err, -EBADMSG, "reply is not a PlanList");
		goto out;
	}
	if (c->json) {
		json_t *a = json_array();

		for (size_t i = 0; i < l->n_plans; i++)
			json_array_append_new(a, plan_json(l->plans[i]));
		print_json(a);
	} else {
		printf("%-20s %-11s %-16s %7s %s\n", "PLAN", "KIND", "AGENT", "VOLUMES", "STATE");
		for (size_t i = 0; i < l->n_plans; i++)
			printf("%-20s %-11s %-16s %7zu %s\n", l->plans[i]->name, l->plans[i]->kind,
			       l->plans[i]->agent_id, l->plans[i]->n_volumes,
			       l->plans[i]->paused ? "paused" : "active");
	}
	cdp__v1__plan_list__free_unpacked(l, NULL);
out:
	cdp_buf_release(&reply);
	return rc;
}

static int cmd_status(struct ctl *c, const char *plan, struct cdp_err *err)
{
	Cdp__V1__PlanRef ref = CDP__V1__PLAN_REF__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	Cdp__V1__StatusReply *r;
	int rc;

	ref.name = (char *)(plan ? plan : "");
	rc = call(c, "/cdp.v1.Control/Status", &ref.base, &reply, err);
	if (rc)
		goto out;
	r = cdp__v1__status_reply__unpack(NULL, reply.len, reply.data);
	if (!r) {
		rc = cdp_err_set(err, -EBADMSG, "reply is not a StatusReply");
		goto out;
	}
	if (c->json) {
		json_t *a = json_array();

		for (size_t i = 0; i < r->n_plans; i++) {
			const Cdp__V1__PlanStatus *s = r->plans[i];

			json_array_append_new(a, json_pack(
				"{s:s,s:s,s:b,s:I,s:I,s:I,s:I,s:I,s:f,s:s}", "plan", s->plan->name,
				"state", s->state, "agent_connected", s->agent_connected,
				"durable_seq", (json_int_t)s->durable_seq, "horizon_seq",
				(json_int_t)s->horizon_seq, "newest_point_ns",
				(json_int_t)s->newest_point_ns, "oldest_point_ns",
				(json_int_t)s->oldest_point_ns, "journal_bytes",
				(json_int_t)s->journal_bytes, "lag_s",
				(double)s->lag_ns / 1e9, "pinned_by", s->pinned_by));
		}
		print_json(a);
	} else {
		printf("%-16s %-22s %-5s %10s %24s %8s %10s\n", "PLAN", "STATE", "AGENT", "SEQ",
		       "NEWEST POINT", "LAG", "JOURNAL");
		for (size_t i = 0; i < r->n_plans; i++) {
			const Cdp__V1__PlanStatus *s = r->plans[i];
			char t[40], lag[32], by[32];

			printf("%-16s %-22s %-5s %10" PRIu64 " %24s %8s %10s\n", s->plan->name,
			       s->state, s->agent_connected ? "yes" : "no", s->durable_seq,
			       fmt_time(s->newest_point_ns, t, sizeof(t)),
			       s->newest_point_ns ? cdp_format_duration(s->lag_ns, lag, sizeof(lag))
						  : "-",
			       cdp_format_bytes(s->journal_bytes, by, sizeof(by)));
			if (s->pinned_by[0])
				printf("  history %s\n", s->pinned_by);
		}
	}
	cdp__v1__status_reply__free_unpacked(r, NULL);
out:
	cdp_buf_release(&reply);
	return rc;
}

/*
 * status every @every ns on one channel, until SIGINT or SIGTERM (blocked by
 * main() before any thread started, taken here with sigtimedwait()) or a
 * closed stdout: 0.
 */
static int cmd_status_watch(struct ctl *c, const char *plan, int64_t every,
			    const sigset_t *stop)
{
	struct cdp_clock *clk = cdp_clock_real();
	int64_t next = cdp_clock_mono_ns(clk);

	signal(SIGPIPE, SIG_IGN);	/* a closed stdout shows as a failed fflush() */
	for (;;) {
		struct cdp_err err = CDP_ERR_INIT;
		int64_t left;

		if (cmd_status(c, plan, &err))
			fprintf(stderr, "cdpctl: %s\n", err.msg);
		else if (!c->json)
			putchar('\n');
		if (fflush(stdout) == EOF)
			return 0;
		/* One interval after this report's start; after a slow call, now. */
		next = CDP_MAX(next + every, cdp_clock_mono_ns(clk));
		while ((left = next - cdp_clock_mono_ns(clk)) > 0) {
			struct timespec ts = { left / CDP_NS_PER_SEC, left % CDP_NS_PER_SEC };

			if (sigtimedwait(stop, NULL, &ts) > 0)
				return 0;
		}
	}
}

static int parse_time(const char *s, int64_t *ns, struct cdp_err *err)
{
	struct tm tm = { 0 };
	const char *rest;

	if (s[0] == '@') {
		char *end;
		double v = strtod(s + 1, &end);

		if (end == s + 1 || *end)
			return cdp_err_set(err, -EINVAL, "time '%s': expected @unix_seconds", s);
		*ns = (int64_t)(v * 1e9);
		return 0;
	}
	rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!rest || (*rest && strcmp(rest, "Z")))
		return cdp_err_set(err, -EINVAL, "time '%s': expected RFC 3339 UTC "
				   "(2026-11-24T10:00:00Z) or @unix_seconds", s);
	*ns = (int64_t)timegm(&tm) * CDP_NS_PER_SEC;
	return 0;
}

static int cmd_points(struct ctl *c, const char *plan, const char *from, const char *to,
		      struct cdp_err *err)
{
	Cdp__V1__PointsRequest q = CDP__V1__POINTS_REQUEST__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	Cdp__V1__PointsReply *r;
	int rc = 0;

	q.plan = (char *)plan;
	if (from)
		rc = parse_time(from, &q.from_ns, err);
	if (!rc && to)
		rc = parse_time(to, &q.to_ns, err);
	if (rc)
		return rc;
	rc = call(c, "/cdp.v1.Control/ListPoints", &q.base, &reply, err);
	if (rc)
		goto out;
	r = cdp__v1__points_reply__unpack(NULL, reply.len, reply.data);
	if (!r) {
		rc = cdp_err_set(err, -EBADMSG, "reply is not a PointsReply");
		goto out;
	}
	if (c->json) {
		json_t *a = json_array();

		for (size_t i = 0; i < r->n_points; i++)
			json_array_append_new(a, json_pack("{s:I,s:I,s:b,s:s}", "time_ns",
							   (json_int_t)r->points[i]->time_ns, "seq",
							   (json_int_t)r->points[i]->seq,
							   "consistent", r->points[i]->consistent,
							   "name", r->points[i]->name));
		print_json(a);
	} else {
		printf("%-26s %12s %-12s %s\n", "TIME", "SEQ", "CONSISTENT", "BOOKMARK");
		for (size_t i = 0; i < r->n_points; i++) {
			char t[40];

			printf("%-26s %12" PRIu64 " %-12s %s\n",
			       cdp_time_format(r->points[i]->time_ns, t, sizeof(t)),
			       r->points[i]->seq, r->points[i]->consistent ? "yes" : "no",
			       r->points[i]->name);
		}
	}
	cdp__v1__points_reply__free_unpacked(r, NULL);
out:
	cdp_buf_release(&reply);
	return rc;
}

static int cmd_mark(struct ctl *c, const char *plan, const char *name, struct cdp_err *err)
{
	Cdp__V1__MarkRequest q = CDP__V1__MARK_REQUEST__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	int rc;

	q.plan = (char *)plan;
	q.name = (char *)name;
	rc = call(c, "/cdp.v1.Control/Mark", &q.base, &reply, err);
	if (!rc)
		printf(c->json ? "{\"ok\":true}\n" : "bookmark '%s' sent to plan %s's agent\n", name,
		       plan);
	cdp_buf_release(&reply);
	return rc;
}

static int cmd_restore(struct ctl *c, const char *plan, const char *at, const char *dir,
		       struct cdp_err *err)
{
	Cdp__V1__RestoreRequest q = CDP__V1__RESTORE_REQUEST__INIT;
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_rpc_stream *s;
	int fds[32], rc;
	uint64_t seq = 0, bytes = 0;
	size_t len;
	uint8_t *req;

	for (int i = 0; i < 32; i++)
		fds[i] = -1;
	if (mkdir(dir, 0750) && errno != EEXIST)
		return cdp_err_sys(err, -errno, "mkdir %s", dir);
	q.plan = (char *)plan;
	q.at = (char *)at;
	len = protobuf_c_message_get_packed_size(&q.base);
	req = cdp_xmalloc(len ? len : 1);
	protobuf_c_message_pack(&q.base, req);
	s = cdp_rpc_stream_open_request(c->ch, "/cdp.v1.Control/Restore", req, len,
					RESTORE_TIMEOUT, err);
	free(req);
	if (!s)
		return -EIO;
	while ((rc = cdp_rpc_stream_recv(s, &msg, RESTORE_TIMEOUT, err)) == 1) {
		Cdp__V1__RestoreChunk *ch = cdp__v1__restore_chunk__unpack(NULL, msg.len, msg.data);
		char path[4096];

		rc = 0;
		if (!ch || ch->volume >= 32 || strchr(ch->volume_name, '/') ||
		    !ch->volume_name[0]) {
			rc = cdp_err_set(err, -EBADMSG, "restore: bad chunk from the server");
			if (ch)
				cdp__v1__restore_chunk__free_unpacked(ch, NULL);
			break;
		}
		if (ch->seq)
			seq = ch->seq;
		if (fds[ch->volume] < 0) {
			snprintf(path, sizeof(path), "%s/%s.img", dir, ch->volume_name);
			fds[ch->volume] = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
			if (fds[ch->volume] < 0 || ftruncate(fds[ch->volume], (off_t)ch->volume_size)) {
				rc = cdp_err_sys(err, -errno, "create %s", path);
				cdp__v1__restore_chunk__free_unpacked(ch, NULL);
				break;
			}
		}
		if (ch->data.len) {
			rc = cdp_pwrite_all(fds[ch->volume], ch->data.data, ch->data.len, ch->offset);
			bytes += ch->data.len;
		} else if (ch->zero_length) {
			rc = fallocate(fds[ch->volume], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       (off_t)ch->offset, (off_t)ch->zero_length) ? -errno : 0;
		}
		cdp__v1__restore_chunk__free_unpacked(ch, NULL);
		if (rc) {
			cdp_err_sys(err, rc, "write %s", dir);
			break;
		}
	}
	if (rc == 0)
		rc = cdp_rpc_stream_status(s, TIMEOUT, NULL, err);
	for (int i = 0; i < 32; i++) {
		if (fds[i] >= 0) {
			if (!rc && fdatasync(fds[i]))
				rc = cdp_err_sys(err, -errno, "fdatasync in %s", dir);
			close(fds[i]);
		}
	}
	cdp_rpc_stream_free(s);
	cdp_buf_release(&msg);
	if (!rc) {
		if (c->json)
			print_json(json_pack("{s:s,s:I,s:I}", "dir", dir, "seq", (json_int_t)seq,
					     "bytes", (json_int_t)bytes));
		else
			printf("restored plan %s at seq %" PRIu64 " into %s\n", plan, seq, dir);
	}
	return rc;
}

static int cmd_verify(struct ctl *c, const char *plan, struct cdp_err *err)
{
	Cdp__V1__PlanRef ref = CDP__V1__PLAN_REF__INIT;
	struct cdp_buf reply = CDP_BUF_INIT;
	Cdp__V1__VerifyReply *r;
	int rc;

	ref.name = (char *)plan;
	rc = call(c, "/cdp.v1.Control/Verify", &ref.base, &reply, err);
	if (rc)
		goto out;
	r = cdp__v1__verify_reply__unpack(NULL, reply.len, reply.data);
	if (!r) {
		rc = cdp_err_set(err, -EBADMSG, "reply is not a VerifyReply");
		goto out;
	}
	if (c->json)
		print_json(json_pack("{s:b,s:I,s:s}", "ok", r->ok, "bad_seq",
				     (json_int_t)r->bad_seq, "message", r->message));
	else
		printf("%s\n", r->message);
	if (!r->ok)
		rc = cdp_err_set(err, -EBADMSG, "plan %s: %s", plan, r->message);
	cdp__v1__verify_reply__free_unpacked(r, NULL);
out:
	cdp_buf_release(&reply);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: cdpctl [--server ADDR] [--tls-ca F --tls-cert F --tls-key F] [--json] CMD\n"
		"  plan create FILE | plan apply FILE | plan list | plan show NAME\n"
		"  plan delete NAME | plan pause NAME | plan resume NAME\n"
		"  status [PLAN] [--watch INTERVAL]   (INTERVAL: a duration, e.g. 500ms)\n"
		"  points PLAN [--from TIME] [--to TIME]\n"
		"  mark PLAN NAME\n"
		"  restore PLAN --at POINT -o DIR   (POINT: RFC 3339, @unix_seconds, seq:N, bookmark)\n"
		"  verify PLAN\n");
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "server", required_argument, NULL, 's' },
		{ "tls-ca", required_argument, NULL, 'a' },
		{ "tls-cert", required_argument, NULL, 'c' },
		{ "tls-key", required_argument, NULL, 'k' },
		{ "json", no_argument, NULL, 'j' },
		{ "at", required_argument, NULL, 't' },
		{ "from", required_argument, NULL, 'f' },
		{ "to", required_argument, NULL, 'T' },
		{ "watch", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cdp_rpc_channel_opts co = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct ctl c = { 0 };
	const char *at = NULL, *out = NULL, *from = NULL, *to = NULL, *watch = NULL;
	int64_t every = 0;
	sigset_t stop;
	char **args;
	int nargs, ch, rc = -EINVAL;

	co.target = getenv("CDP_SERVER") ? getenv("CDP_SERVER") : "unix:cdp-state/journald.sock";
	/* GNU getopt permutes: options may come anywhere ("restore db01 --at X -o DIR"). */
	while ((ch = getopt_long(argc, argv, "o:", lopts, NULL)) != -1) {
		switch (ch) {
		case 's': co.target = optarg; break;
		case 'a': co.tls_ca = optarg; break;
		case 'c': co.tls_cert = optarg; break;
		case 'k': co.tls_key = optarg; break;
		case 'j': c.json = true; break;
		case 't': at = optarg; break;
		case 'o': out = optarg; break;
		case 'f': from = optarg; break;
		case 'T': to = optarg; break;
		case 'w': watch = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	args = argv + optind;
	nargs = argc - optind;
	if (nargs < 1) {
		usage(stderr);
		return 2;
	}
	if (watch && strcmp(args[0], "status")) {
		fprintf(stderr, "cdpctl: --watch: only with status\n");
		return 2;
	}
	if (watch && (cdp_conf_parse_duration(watch, &every, &err) || every < WATCH_MIN)) {
		fprintf(stderr, "cdpctl: --watch %s: %s\n", watch,
			err.msg[0] ? err.msg : "shorter than 10ms");
		return 2;
	}
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	if (watch)	/* before the channel's threads start: they inherit the mask */
		pthread_sigmask(SIG_BLOCK, &stop, NULL);
	c.ch = cdp_rpc_channel_new(&co, &err);
	if (!c.ch) {
		fprintf(stderr, "cdpctl: %s\n", err.msg);
		return 1;
	}
#define IS(s) (!strcmp(args[0], (s)))
#define SUB(s) (nargs >= 2 && !strcmp(args[1], (s)))
	if (IS("plan") && (SUB("create") || SUB("apply")) && nargs == 3)
		rc = cmd_plan_put(&c, args[2], SUB("create"), &err);
	else if (IS("plan") && SUB("list") && nargs == 2)
		rc = cmd_plan_list(&c, &err);
	else if (IS("plan") && SUB("show") && nargs == 3)
		rc = cmd_plan_ref(&c, "/cdp.v1.Control/GetPlan", args[2], true, &err);
	else if (IS("plan") && SUB("delete") && nargs == 3)
		rc = cmd_plan_ref(&c, "/cdp.v1.Control/DeletePlan", args[2], false, &err);
	else if (IS("plan") && SUB("pause") && nargs == 3)
		rc = cmd_plan_ref(&c, "/cdp.v1.Control/PausePlan", args[2], true, &err);
	else if (IS("plan") && SUB("resume") && nargs == 3)
		rc = cmd_plan_ref(&c, "/cdp.v1.Control/ResumePlan", args[2], true, &err);
	else if (IS("status") && nargs <= 2 && watch)
		rc = cmd_status_watch(&c, nargs == 2 ? args[1] : NULL, every, &stop);
	else if (IS("status") && nargs <= 2)
		rc = cmd_status(&c, nargs == 2 ? args[1] : NULL, &err);
	else if (IS("points") && nargs == 2)
		rc = cmd_points(&c, args[1], from, to, &err);
	else if (IS("mark") && nargs == 3)
		rc = cmd_mark(&c, args[1], args[2], &err);
	else if (IS("restore") && nargs == 2 && at && out)
		rc = cmd_restore(&c, args[1], at, out, &err);
	else if (IS("verify") && nargs == 2)
		rc = cmd_verify(&c, args[1], &err);
	else {
		usage(stderr);
		cdp_rpc_channel_free(c.ch);
		return 2;
	}
	cdp_rpc_channel_free(c.ch);
	if (rc) {
		fprintf(stderr, "cdpctl: %s\n", err.msg);
		return 1;
	}
	return 0;
}
