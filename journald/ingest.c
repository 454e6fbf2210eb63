/*
 * journald/ingest - Capture.Stream: the agent's segments in, acks out.
 *
 * The cq thread only puts each message onto the stream's ingest queue (gRPC's
 * slices are flattened once, into a buffer that travels with the segment to
 * the journal: proto/wire finds the segment bytes inside it, the decoder
 * checks them in place, and the journal copies them once, into its O_DIRECT
 * staging area). Streams are spread over ingest_threads workers; one stream
 * always goes to the same worker, so its segments stay in order. When a
 * stream has ingest_queue messages waiting, its reads pause until the worker
 * catches up: gRPC flow control then holds the agent back.
 *
 * A worker validates everything before the journal sees it: the hello (plan,
 * identity, epoch, volumes), then each segment fully decoded (header, CRCs,
 * every record against the plan's volume sizes) — so bad input is refused
 * with a status naming the field and never reaches the store. The journal
 * checks what depends on its state (gap, replay, epoch, full) in its group
 * commit; the ack goes out from the journal's commit thread only once the
 * segment is durable. Any refusal ends the stream with a status; the daemon
 * and the journal are unharmed.
 *
 * A stream holds references: one from on_open until on_done, one per queued
 * message and one per append in flight; the last one frees it.
 */
#include "journald/journald.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "proto/wire.h"
#include "storage/segment.h"

struct jd_stream {
	struct jd *d;
	struct cdp_rpc_call *call;	/* referenced until the stream is freed */
	pthread_mutex_t mu;
	unsigned refs;			/* guarded by mu */
	unsigned queued;		/* guarded by mu: messages waiting for the worker */
	unsigned inflight;		/* guarded by mu: appends not yet done */
	pthread_cond_t idle;		/* inflight went to 0 */
	bool paused, done, failed, half_closed, finished;	/* guarded by mu */
	unsigned worker;
	/* worker thread only, after the hello */
	bool hello;
	uint64_t plan_id;
	uint64_t epoch;
	uint32_t nvol;
	uint64_t vol_size[CDP_JOURNAL_MAX_VOLUMES];
	char plan_name[CDP_JOURNAL_NAME_MAX + 1];
	struct cdp_ratelimit skew_rl;
	int64_t skew_best;		/* max of sent - received over this window */
	unsigned skew_n;		/* segments in the window */
};

struct jd_item {
	struct jd_stream *s;
	uint8_t *msg;
	size_t len;
	bool half_close;
};

struct jd_append {
	struct cdp_journal_append a;
	struct jd_stream *s;
	Cdp__V1__CaptureUp *up;	/* the message's other fields */
	uint8_t *msg;		/* the message as received: holds the segment bytes */
};

static unsigned next_worker;	/* cq thread only */

#define SKEW_WINDOW 16	/* segments: an agent behind is judged by the least delayed */

static void stream_ref(struct jd_stream *s)
{
	pthread_mutex_lock(&s->mu);
	s->refs++;
	pthread_mutex_unlock(&s->mu);
}

static void stream_unref(struct jd_stream *s)
{
	bool last;

	pthread_mutex_lock(&s->mu);
	last = --s->refs == 0;
	pthread_mutex_unlock(&s->mu);
	if (!last)
		return;
	cdp_rpc_call_unref(s->call);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->idle);
	free(s);
}

/* Ends the stream with a status once (any thread). */
static void stream_fail(struct jd_stream *s, const struct cdp_err *err)
{
	bool first;

	pthread_mutex_lock(&s->mu);
	first = !s->failed && !s->finished;
	s->failed = true;
	pthread_mutex_unlock(&s->mu);
	if (first) {
		cdp_log_warn("ingest: %s: %s", cdp_rpc_call_peer(s->call), err->msg);
		cdp_rpc_call_finish_err(s->call, err);
	}
}

/* The agent said it is done: finish OK once every append is acked. */
static void maybe_finish(struct jd_stream *s)
{
	bool fin;

	pthread_mutex_lock(&s->mu);
	fin = s->half_closed && !s->inflight && !s->failed && !s->finished && !s->queued;
	if (fin)
		s->finished = true;
	pthread_mutex_unlock(&s->mu);
	if (fin)
		cdp_rpc_call_finish(s->call, CDP_RPC_OK, NULL);
}

static int send_down(struct jd_stream *s, const Cdp__V1__CaptureDown *m)
{
	size_t len;
	void *buf = jd_pack(&m->base, &len);

	return cdp_rpc_call_send_take(s->call, buf, len);
}

static int send_resync(struct jd_stream *s, const struct cdp_journal_range *r, size_t n,
		       const char *reason);

/* ---- rpc callbacks (cq thread) -------------------------------------------- */

static void on_open(struct cdp_rpc_call *call, void *arg)
{
	struct jd *d = arg;
	struct jd_stream *s = cdp_xcalloc(1, sizeof(*s));

	s->d = d;
	s->call = call;
	cdp_rpc_call_ref(call);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->idle, NULL);
	s->refs = 1;
	s->worker = next_worker++ % (unsigned)d->cfg.ingest_threads;
	s->skew_rl.interval_ns = 60 * CDP_NS_PER_SEC;
	s->skew_rl.burst = 1;
	cdp_rpc_call_set_user(call, s);
}

static void enqueue(struct jd_stream *s, struct jd_item *it)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	pthread_mutex_lock(&s->mu);
	s->refs++;
	s->queued++;
	if (!s->paused && s->queued >= (unsigned)__atomic_load_n(&s->d->cfg.ingest_queue,
								  __ATOMIC_RELAXED)) {
		s->paused = true;
		cdp_rpc_call_pause_recv(s->call);
	}
	pthread_mutex_unlock(&s->mu);
	rc = cdp_queue_push(s->d->ingq[s->worker], it, 0);
	if (rc) {
		cdp_err_set(&err, -ENOSPC, "ingest queue full");
		stream_fail(s, &err);
		pthread_mutex_lock(&s->mu);
		s->queued--;
		pthread_mutex_unlock(&s->mu);
		cdp_rpc_msg_free(it->msg);
		free(it);
		stream_unref(s);
	}
}

/* Takes @msg: it travels to the journal and is freed when the append is done. */
static void on_message(struct cdp_rpc_call *call, uint8_t *msg, size_t len, void *arg)
{
	struct jd_stream *s = cdp_rpc_call_user(call);
	struct jd_item *it = cdp_xcalloc(1, sizeof(*it));

	it->s = s;
	it->msg = msg;
	it->len = len;
	enqueue(s, it);
}

static void on_half_close(struct cdp_rpc_call *call, void *arg)
{
	struct jd_stream *s = cdp_rpc_call_user(call);
	struct jd_item *it = cdp_xcalloc(1, sizeof(*it));

	it->s = s;
	it->half_close = true;
	enqueue(s, it);
}

/* @s is no longer its plan's agent stream (if it still was). */
static void forget_agent(struct jd *d, struct jd_stream *s)
{
	pthread_mutex_lock(&d->mu);
	for (size_t i = 0; i < d->nplans; i++)
		if (d->plans[i]->agent == s)
			d->plans[i]->agent = NULL;
	pthread_mutex_unlock(&d->mu);
}

/*
 * The call ended. A stream with appends still in the journal's pipeline
 * stays its plan's agent until they are done (append_done forgets it then):
 * the next hello must find it and wait for them (handle_hello) before it
 * reads the journal's head, or an append of this stream stored after the
 * welcome would break the chain.
 */
static void on_done(struct cdp_rpc_call *call, enum cdp_rpc_code code, bool cancelled, void *arg)
{
	struct jd_stream *s = cdp_rpc_call_user(call);
	struct jd *d = arg;
	bool busy;

	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->done = true;
	busy = s->inflight > 0;
	pthread_mutex_unlock(&s->mu);
	if (!busy)
		forget_agent(d, s);
	stream_unref(s);
}

/* ---- the worker ---------------------------------------------------------- */

static void fill_volumes(Cdp__V1__Volume ***out, size_t *n, const Cdp__V1__Plan *pb)
{
	*n = pb->n_volumes;
	*out = pb->volumes;	/* borrowed for packing only */
}

/*
 * Ends @old (referenced by the caller; the reference is dropped), its plan's
 * agent stream until a newer one said hello; with @wait, returns only once
 * the journal has completed every append @old started (none starts after
 * stream_fail(): handle_segment checks under old->mu).
 */
static void replaced(struct jd_stream *old, const char *plan, bool wait)
{
	struct cdp_err err = CDP_ERR_INIT;

	cdp_err_set(&err, -ECANCELED, "plan %s: replaced by a newer agent stream", plan);
	stream_fail(old, &err);
	if (wait) {
		pthread_mutex_lock(&old->mu);
		while (old->inflight)	/* the journal completes every append it took */
			pthread_cond_wait(&old->idle, &old->mu);
		pthread_mutex_unlock(&old->mu);
	}
	stream_unref(old);
}

static void handle_hello(struct jd_stream *s, const Cdp__V1__CaptureHello *h)
{
	struct jd *d = s->d;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_resume r;
	Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
	Cdp__V1__CaptureWelcome w = CDP__V1__CAPTURE_WELCOME__INIT;
	Cdp__V1__SyncCheckpoint ck = CDP__V1__SYNC_CHECKPOINT__INIT;
	struct jd_stream *old = NULL;
	struct jd_plan *jp;
	Cdp__V1__Plan *pb = NULL;
	char ident[160] = "";
	int rc = 0;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_find_locked(d, h->plan);
	if (jp)
		pb = jd_plan_copy(jp->pb);
	pthread_mutex_unlock(&d->mu);
	if (!pb) {
		cdp_err_set(&err, -ENOENT, "hello: plan '%s' not found", h->plan);
		goto fail;
	}
	if (d->tls) {
		cdp_rpc_call_peer_identity(s->call, ident, sizeof(ident));
		if (strcmp(ident, pb->agent_id)) {
			cdp_err_set(&err, -EPERM, "hello: certificate '%s' is not plan %s's agent "
				    "(%s)", ident, pb->name, pb->agent_id);
			goto fail;
		}
	}
	if (strcmp(h->agent_id, pb->agent_id)) {
		cdp_err_set(&err, -EPERM, "hello: agent_id '%s' is not plan %s's agent (%s)",
			    h->agent_id, pb->name, pb->agent_id);
		goto fail;
	}
	if (pb->paused) {
		cdp_err_set(&err, -ESTALE, "hello: plan %s is paused", pb->name);
		goto fail;
	}
	/* Epoch 0: an agent without state (first start) takes the plan's epoch. */
	if (h->epoch && h->epoch != pb->epoch) {
		cdp_err_set(&err, -ESTALE, "hello: %s epoch %" PRIu64 ", plan %s is at epoch %"
			    PRIu64, h->epoch < pb->epoch ? "stale" : "unknown", h->epoch, pb->name,
			    pb->epoch);
		goto fail;
	}
	if (h->n_volumes != pb->n_volumes) {
		cdp_err_set(&err, -EINVAL, "hello: volumes: %zu, plan %s has %zu", h->n_volumes,
			    pb->name, pb->n_volumes);
		goto fail;
	}
	for (size_t i = 0; i < h->n_volumes; i++) {
		const Cdp__V1__Volume *v = h->volumes[i];

		if (strcmp(v->name, pb->volumes[i]->name) || v->size != pb->volumes[i]->size) {
			cdp_err_set(&err, -EINVAL, "hello: volume %zu: %s of %" PRIu64 " bytes, plan "
				    "%s has %s of %" PRIu64, i, v->name, v->size, pb->name,
				    pb->volumes[i]->name, pb->volumes[i]->size);
			goto fail;
		}
		s->vol_size[i] = v->size;
	}
	/*
	 * One agent stream per plan. Fence the one this replaces before the
	 * journal's head is read for the welcome: no append from it starts
	 * after this (handle_segment checks `failed` under its mutex), and the
	 * ones already in the journal's pipeline are done. A stream whose call
	 * already ended stays registered while it has appends in flight
	 * (on_done), so it is found here too. Else a heartbeat or
	 * segment of the old stream, stored after the welcome was computed,
	 * would sit between the head this agent is told and its next segment,
	 * and break the chain (the verifier found exactly that after a link
	 * cut).
	 */
	pthread_mutex_lock(&d->mu);
	jp = jd_plan_by_id_locked(d, pb->plan_id);
	old = jp ? jp->agent : NULL;
	if (old)
		stream_ref(old);
	pthread_mutex_unlock(&d->mu);
	if (old) {
		replaced(old, pb->name, true);
		old = NULL;
	}
	rc = cdp_journal_resume_info(d->j, pb->plan_id, &r, &err);
	if (rc)
		goto fail;
	s->nvol = (uint32_t)h->n_volumes;
	s->plan_id = pb->plan_id;
	s->epoch = pb->epoch;
	snprintf(s->plan_name, sizeof(s->plan_name), "%s", pb->name);
	s->hello = true;

	w.plan_id = pb->plan_id;
	w.epoch = r.epoch;
	w.durable_seq = r.durable_seq;
	w.digest.data = r.digest;
	w.digest.len = CDP_DIGEST_LEN;
	w.last_time_ns = r.last_time_ns;
	w.last_point_ns = r.last_point_ns;
	w.has_checkpoint = r.has_ckpt;
	if (r.has_ckpt) {
		ck.sync_id = r.ckpt.sync_id;
		ck.kind = r.ckpt.kind;
		ck.volume = r.ckpt.volume;
		ck.offset = r.ckpt.offset;
		w.checkpoint = &ck;
	}
	fill_volumes(&w.volumes, &w.n_volumes, pb);
	down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_WELCOME;
	down.welcome = &w;
	send_down(s, &down);

	/* One agent stream per plan: a reconnecting agent replaces a stale one. */
	pthread_mutex_lock(&d->mu);
	jp = jd_plan_by_id_locked(d, s->plan_id);
	if (jp) {
		old = jp->agent;
		jp->agent = s;
		if (jp->nresync) {
			/* Damage found while no agent was connected: resync it now. */
			send_resync(s, jp->resync, jp->nresync, "bad segment found while away");
			free(jp->resync);
			jp->resync = NULL;
			jp->nresync = 0;
		}
		if (old)
			stream_ref(old);
	}
	pthread_mutex_unlock(&d->mu);
	if (old)
		replaced(old, pb->name, false);
	cdp_log_info("ingest: plan %s: agent %s connected from %s, resuming after seq %" PRIu64,
		     pb->name, h->agent_id, cdp_rpc_call_peer(s->call), r.durable_seq);
	cdp__v1__plan__free_unpacked(pb, NULL);
	return;
fail:
	if (pb)
		cdp__v1__plan__free_unpacked(pb, NULL);
	stream_fail(s, &err);
}

/*
 * One append of @s less in the journal's pipeline: wakes a hello waiting
 * for it to have none (replaced()), and an ended stream with none left is
 * no longer its plan's agent (on_done).
 */
static void append_finished(struct jd_stream *s)
{
	bool ended;

	pthread_mutex_lock(&s->mu);
	if (--s->inflight == 0)
		pthread_cond_broadcast(&s->idle);
	ended = !s->inflight && s->done;
	pthread_mutex_unlock(&s->mu);
	if (ended)
		forget_agent(s->d, s);
}

static void append_done(struct cdp_journal_append *a)
{
	struct jd_append *ja = (struct jd_append *)a;
	struct jd_stream *s = ja->s;

	if (a->rc) {
		if (a->rc == -ENOSPC && strstr(a->err.msg, "journal full")) {
			Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
			Cdp__V1__Notice n = CDP__V1__NOTICE__INIT;

			n.kind = CDP__V1__NOTICE__KIND__KIND_JOURNAL_FULL;
			n.text = a->err.msg;
			down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_NOTICE;
			down.notice = &n;
			send_down(s, &down);
		}
		stream_fail(s, &a->err);
	} else {
		Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
		Cdp__V1__Ack ack = CDP__V1__ACK__INIT;

		ack.durable_seq = a->h.nrecords ? a->h.last_seq : a->h.first_seq - 1;
		ack.digest.data = a->h.digest;
		ack.digest.len = CDP_DIGEST_LEN;
		down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_ACK;
		down.ack = &ack;
		send_down(s, &down);
	}
	append_finished(s);
	maybe_finish(s);
	cdp__v1__capture_up__free_unpacked(ja->up, NULL);
	cdp_rpc_msg_free(ja->msg);
	free(ja);
	stream_unref(s);
}

/*
 * @data/@len: Segment.data, inside it->msg or *@upp. Takes *@upp and it->msg
 * when the segment is submitted: the journal reads the bytes where they are.
 */
static void handle_segment(struct jd_stream *s, struct jd_item *it, Cdp__V1__CaptureUp **upp,
			   const uint8_t *data, size_t len)
{
	const Cdp__V1__Segment *sg = (*upp)->segment;
	struct jd *d = s->d;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_seg_expect ex = { 0 };
	struct cdp_segment *seg = NULL;
	struct jd_append *ja;
	int64_t now, skew, max_skew;
	int rc;

	if (!s->hello) {
		cdp_err_set(&err, -ESTALE, "segment before hello");
		stream_fail(s, &err);
		return;
	}
	if (len > d->cfg.max_segment) {
		cdp_err_set(&err, -ENOSPC, "segment: %zu bytes > max_segment %" PRIu64,
			    len, d->cfg.max_segment);
		stream_fail(s, &err);
		return;
	}
	ex.check_plan = true;
	ex.plan_id = s->plan_id;
	ex.min_time = INT64_MIN;
	ex.volume_sizes = s->vol_size;
	ex.nvolumes = s->nvol;
	ex.borrow_raw = true;	/* checked in place, freed below */
	rc = cdp_seg_decode(data, len, &ex, &seg, &err);
	if (rc) {
		cdp_err_prefix(&err, "plan %s", s->plan_name);
		stream_fail(s, &err);
		return;
	}
	/*
	 * Skew: the agent's clock when it sent this (sent_ns), against ours on
	 * receipt. Not the segment's own times: a segment resent from the cache
	 * after a link cut is old, not skewed. sent - received is the clock
	 * offset minus the transit time, so an agent ahead by more than
	 * max_clock_skew is certain at once; one behind only when even the
	 * least delayed of SKEW_WINDOW segments says so (a stalled link
	 * delivers late, it does not make a clock wrong). Without a send time
	 * only an agent ahead is certain.
	 */
	now = cdp_clock_wall_ns(d->clock);
	max_skew = __atomic_load_n(&d->cfg.max_clock_skew, __ATOMIC_RELAXED);
	skew = 0;
	if (sg->sent_ns) {
		int64_t off = sg->sent_ns - now;

		s->skew_best = s->skew_n++ ? CDP_MAX(s->skew_best, off) : off;
		if (off > max_skew) {
			skew = off;
		} else if (s->skew_n >= SKEW_WINDOW) {
			skew = s->skew_best;
			s->skew_n = 0;
		}
	} else if (seg->h.t_last > now) {
		skew = seg->h.t_last - now;
	}
	if ((skew > max_skew || -skew > max_skew) &&
	    cdp_ratelimit_ok(&s->skew_rl, cdp_clock_mono_ns(d->clock))) {
		Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
		Cdp__V1__Notice n = CDP__V1__NOTICE__INIT;
		char text[160];

		snprintf(text, sizeof(text), "plan %s: agent clock %+" PRId64 " ms from the journal "
			 "server's (max_clock_skew %" PRId64 " ms)", s->plan_name,
			 skew / CDP_NS_PER_MS, max_skew / CDP_NS_PER_MS);
		cdp_log_warn("ingest: %s", text);
		n.kind = CDP__V1__NOTICE__KIND__KIND_CLOCK_SKEW;
		n.text = text;
		down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_NOTICE;
		down.notice = &n;
		send_down(s, &down);
	}
	cdp_segment_free(seg);

	/* A stream replaced by a newer one (handle_hello), or whose call
	 * ended, starts no append. */
	pthread_mutex_lock(&s->mu);
	if (s->failed || s->done) {
		pthread_mutex_unlock(&s->mu);
		return;
	}
	s->refs++;
	s->inflight++;
	pthread_mutex_unlock(&s->mu);
	ja = cdp_xcalloc(1, sizeof(*ja));
	ja->s = s;
	ja->up = *upp;		/* no copy: the journal reads the received bytes */
	*upp = NULL;
	ja->msg = it->msg;
	it->msg = NULL;
	ja->a.plan_id = s->plan_id;
	ja->a.seg = data;
	ja->a.len = len;
	ja->a.recv_time_ns = now;
	if (sg->has_checkpoint && sg->checkpoint) {
		ja->a.has_ckpt = true;
		ja->a.ckpt.sync_id = sg->checkpoint->sync_id;
		ja->a.ckpt.kind = sg->checkpoint->kind;
		ja->a.ckpt.volume = sg->checkpoint->volume;
		ja->a.ckpt.offset = sg->checkpoint->offset;
	}
	ja->a.done = append_done;
	rc = cdp_journal_submit(d->j, &ja->a);
	if (rc) {
		struct cdp_err e2 = ja->a.err;

		append_finished(s);
		cdp__v1__capture_up__free_unpacked(ja->up, NULL);
		cdp_rpc_msg_free(ja->msg);
		free(ja);
		stream_fail(s, &e2);
		stream_unref(s);
	}
}

static void handle_item(struct jd_item *it)
{
	struct jd_stream *s = it->s;
	struct cdp_err err = CDP_ERR_INIT;
	Cdp__V1__CaptureUp *up;
	const uint8_t *data;
	size_t data_len;
	bool skip, resume = false;

	pthread_mutex_lock(&s->mu);
	skip = s->failed || s->done;
	pthread_mutex_unlock(&s->mu);
	if (it->half_close) {
		pthread_mutex_lock(&s->mu);
		s->half_closed = true;
		pthread_mutex_unlock(&s->mu);
	} else if (!skip) {
		if (cdp_capture_up_unpack(it->msg, it->len, &up, &data, &data_len) < 0) {
			cdp_err_set(&err, -EINVAL, "CaptureUp: %zu bytes are not a valid message",
				    it->len);
			stream_fail(s, &err);
		} else if (up->msg_case == CDP__V1__CAPTURE_UP__MSG_HELLO) {
			if (s->hello) {
				cdp_err_set(&err, -EINVAL, "hello: sent twice");
				stream_fail(s, &err);
			} else {
				handle_hello(s, up->hello);
			}
		} else if (up->msg_case == CDP__V1__CAPTURE_UP__MSG_SEGMENT && up->segment) {
			handle_segment(s, it, &up, data, data_len);
		} else {
			cdp_err_set(&err, -EINVAL, "CaptureUp: empty message (no hello, no segment)");
			stream_fail(s, &err);
		}
		if (up)
			cdp__v1__capture_up__free_unpacked(up, NULL);
	}
	pthread_mutex_lock(&s->mu);
	s->queued--;
	if (s->paused &&
	    s->queued < (unsigned)__atomic_load_n(&s->d->cfg.ingest_queue, __ATOMIC_RELAXED) / 2) {
		s->paused = false;
		resume = true;
	}
	pthread_mutex_unlock(&s->mu);
	if (resume)
		cdp_rpc_call_resume_recv(s->call);
	maybe_finish(s);
	cdp_rpc_msg_free(it->msg);
	free(it);
	stream_unref(s);
}

struct worker_arg {
	struct jd *d;
	unsigned n;
};

static void *ingest_main(void *p)
{
	struct worker_arg *wa = p;
	struct cdp_queue *q = wa->d->ingq[wa->n];

	for (;;) {
		void *it;
		int rc = cdp_queue_pop(q, &it, CDP_QUEUE_UNTIL_CLOSED);

		if (rc == -ECANCELED)
			break;
		if (rc == 0)
			handle_item(it);
	}
	free(wa);
	return NULL;
}

/* ---- commands to agents --------------------------------------------------- */

#define PENDING_RESYNC_MAX 4096	/* ranges kept for an absent agent, then whole volumes */

/* Sends a Resync of @n ranges on @s. */
static int send_resync(struct jd_stream *s, const struct cdp_journal_range *r, size_t n,
		       const char *reason)
{
	Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
	Cdp__V1__Command cmd = CDP__V1__COMMAND__INIT;
	Cdp__V1__Resync rs = CDP__V1__RESYNC__INIT;
	Cdp__V1__Range *ranges = cdp_xcalloc(n ? n : 1, sizeof(*ranges));
	Cdp__V1__Range **rp = cdp_xcalloc(n ? n : 1, sizeof(*rp));
	int rc;

	for (size_t i = 0; i < n; i++) {
		cdp__v1__range__init(&ranges[i]);
		ranges[i].volume = r[i].volume;
		ranges[i].offset = r[i].offset;
		ranges[i].length = r[i].length;
		rp[i] = &ranges[i];
	}
	rs.n_ranges = n;
	rs.ranges = rp;
	rs.reason = (char *)reason;
	cmd.cmd_case = CDP__V1__COMMAND__CMD_RESYNC;
	cmd.resync = &rs;
	down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_COMMAND;
	down.command = &cmd;
	rc = send_down(s, &down);
	free(ranges);
	free(rp);
	return rc;
}

/* Keeps @n ranges for the plan's next agent stream (mu held). */
static void keep_resync_locked(struct jd_plan *jp, const struct cdp_journal_range *r, size_t n)
{
	if (jp->nresync + n > PENDING_RESYNC_MAX) {
		/* Too many to list: the whole of every volume instead. */
		free(jp->resync);
		jp->nresync = jp->pb->n_volumes;
		jp->resync = cdp_xcalloc(jp->nresync, sizeof(*jp->resync));
		for (size_t i = 0; i < jp->nresync; i++)
			jp->resync[i] = (struct cdp_journal_range){ (uint32_t)i, 0,
								    jp->pb->volumes[i]->size };
		return;
	}
	jp->resync = cdp_xrealloc(jp->resync, (jp->nresync + n) * sizeof(*jp->resync));
	memcpy(jp->resync + jp->nresync, r, n * sizeof(*r));
	jp->nresync += n;
}

int jd_agent_command(struct jd *d, uint64_t plan_id, const Cdp__V1__Command *cmd,
		     struct cdp_err *err)
{
	Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
	struct jd_stream *s = NULL;
	struct jd_plan *jp;
	int rc;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_by_id_locked(d, plan_id);
	if (jp && jp->agent) {
		s = jp->agent;
		stream_ref(s);
	}
	pthread_mutex_unlock(&d->mu);
	if (!s)
		return cdp_err_set(err, -ENOTCONN, "plan %" PRIu64 ": its agent is not connected",
				   plan_id);
	down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_COMMAND;
	down.command = (Cdp__V1__Command *)cmd;
	rc = send_down(s, &down);
	stream_unref(s);
	if (rc)
		return cdp_err_set(err, rc, "plan %" PRIu64 ": agent stream is closing", plan_id);
	return 0;
}

void jd_on_journal_event(void *arg, const struct cdp_journal_event *ev)
{
	struct jd *d = arg;
	struct cdp_journal_range *ranges = NULL;
	struct cdp_journal_plan p;
	struct jd_stream *s = NULL;
	struct jd_plan *jp;
	size_t n;

	if (!d || ev->kind != CDP_JOURNAL_EV_CORRUPT)
		return;
	/* Resync what the bad segment touched; all of every volume if unknown. */
	if (ev->ranges_known) {
		n = ev->nranges;
		ranges = cdp_xcalloc(n ? n : 1, sizeof(*ranges));
		memcpy(ranges, ev->ranges, n * sizeof(*ranges));
	} else {
		if (cdp_journal_plan_get(d->j, ev->plan_id, &p, NULL, NULL))
			return;
		n = p.nvolumes;
		ranges = cdp_xcalloc(n ? n : 1, sizeof(*ranges));
		for (size_t i = 0; i < n; i++)
			ranges[i] = (struct cdp_journal_range){ (uint32_t)i, 0, p.volume_size[i] };
	}
	pthread_mutex_lock(&d->mu);
	jp = jd_plan_by_id_locked(d, ev->plan_id);
	if (jp && jp->agent) {
		s = jp->agent;
		stream_ref(s);
	} else if (jp) {
		keep_resync_locked(jp, ranges, n);
		cdp_log_warn("journal: plan %s: resync of a bad segment kept for its agent's "
			     "next connection", jp->pb->name);
	}
	pthread_mutex_unlock(&d->mu);
	if (s) {
		if (send_resync(s, ranges, n, ev->msg)) {
			pthread_mutex_lock(&d->mu);
			jp = jd_plan_by_id_locked(d, ev->plan_id);
			if (jp)
				keep_resync_locked(jp, ranges, n);
			pthread_mutex_unlock(&d->mu);
		}
		stream_unref(s);
	}
	free(ranges);
}

/* ---- start and stop ------------------------------------------------------ */

int jd_ingest_start(struct jd *d, struct cdp_err *err)
{
	static const struct cdp_rpc_handlers h = {
		.on_open = on_open,
		.on_message_take = on_message,
		.on_half_close = on_half_close,
		.on_done = on_done,
	};
	int rc;

	d->ingq = cdp_xcalloc((size_t)d->cfg.ingest_threads, sizeof(*d->ingq));
	d->ing_threads = cdp_xcalloc((size_t)d->cfg.ingest_threads, sizeof(*d->ing_threads));
	for (int64_t i = 0; i < d->cfg.ingest_threads; i++) {
		struct worker_arg *wa = cdp_xcalloc(1, sizeof(*wa));
		char name[16];

		d->ingq[i] = cdp_queue_new("cq>ingest", 65536);
		wa->d = d;
		wa->n = (unsigned)i;
		snprintf(name, sizeof(name), "ingest/%d", (int)i);
		rc = cdp_thread_start(&d->ing_threads[i], name, ingest_main, wa);
		if (rc)
			return cdp_err_sys(err, rc, "start %s", name);
	}
	return cdp_rpc_server_add_method(d->srv, "/cdp.v1.Capture/Stream", CDP_RPC_BIDI_STREAMING,
					 &h, d, err);
}

void jd_ingest_stop(struct jd *d)
{
	if (!d->ingq)
		return;
	for (int64_t i = 0; i < d->cfg.ingest_threads; i++)
		cdp_queue_close(d->ingq[i]);
	for (int64_t i = 0; i < d->cfg.ingest_threads; i++) {
		pthread_join(d->ing_threads[i], NULL);
		cdp_queue_free(d->ingq[i]);
	}
	free(d->ingq);
	free(d->ing_threads);
	d->ingq = NULL;
}
