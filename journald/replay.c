/*
 * journald/replay - Standby.Stream: the journal pushed to a standby.
 *
 * The standby dials and says what it has applied and flushed (hello). A
 * thread per stream ("replay") then sends what it lacks, in seq order:
 *
 *  - when its position is at or below the journal's horizon (or it has
 *    nothing yet and history was folded), it is seeded: SeedBegin, the base
 *    image as of the horizon as SeedBlock data and zero ranges, SeedEnd,
 *    with the horizon pinned while that runs; then segments from there;
 *  - otherwise segments from its applied seq + 1, as stored, with at most
 *    `window` segments sent and not yet acknowledged;
 *  - when caught up, it looks for new segments every REPLAY_POLL.
 *
 * Acks (applied and flushed seqs) move the standby's cursor in the journal,
 * "standby:<id>", which pins history while the standby is no more than the
 * plan's standby_max_lag behind (a lag-bounded cursor: the journal itself
 * stops honouring it once it is older than that, whether or not the standby
 * is still connected, see persist_cursor()); then the journal can fold, and
 * the standby will be seeded again when it returns.
 * After a disconnect or a journal server restart the standby resumes from
 * the position its hello names; nothing is sent twice on purpose, and a
 * segment sent twice is applied idempotently by the standby.
 */
#include "journald/journald.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cdp/v1/standby.pb-c.h"
#include "common/log.h"
#include "common/util.h"

#define REPLAY_POLL (50 * CDP_NS_PER_MS)	/* looking for new segments when caught up */
#define REPLAY_WINDOW_MAX 256
#define REPLAY_SEND_TIMEOUT (30 * CDP_NS_PER_SEC)
#define SEED_CHUNK (1u << 20)

struct rstream {
	struct jd *d;
	struct cdp_rpc_call *call;	/* referenced */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned refs;			/* guarded by mu */
	bool done, started;		/* guarded by mu */
	uint64_t acked;			/* guarded by mu: the standby's applied seq */
	bool have_ack;			/* guarded by mu */
	uint64_t sent;			/* guarded by mu: last seq sent */
	unsigned inflight;		/* guarded by mu: segments sent, not acked */
	struct {
		uint64_t seq;
		int64_t t;
	} fifo[REPLAY_WINDOW_MAX];	/* guarded by mu: what is in flight, oldest first */
	unsigned head;			/* guarded by mu */
	int64_t acked_t;		/* guarded by mu: time of the acked seq's segment */
	uint64_t persisted;		/* replay thread: cursor as last written */
	int64_t persisted_at;		/* replay thread: wall time of that write */
	/* set by the hello (cq thread, before the replay thread starts) */
	uint64_t plan_id;
	char plan_name[CDP_JOURNAL_NAME_MAX + 1];
	char standby_id[130];
	char cursor[CDP_JOURNAL_CURSOR_MAX + 1];
	uint64_t from;			/* applied seq in the hello */
	unsigned window;
	int64_t max_lag;
	pthread_t thread;
};

static void rs_unref(struct rstream *s)
{
	bool last;

	pthread_mutex_lock(&s->mu);
	last = --s->refs == 0;
	pthread_mutex_unlock(&s->mu);
	if (!last)
		return;
	cdp_rpc_call_unref(s->call);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	free(s);
}

static bool rs_done(struct rstream *s)
{
	bool done;

	pthread_mutex_lock(&s->mu);
	done = s->done;
	pthread_mutex_unlock(&s->mu);
	return done;
}

/* Sends one message, waiting while too much is queued to the standby. */
static int rs_send(struct rstream *s, const Cdp__V1__StandbyDown *m, struct cdp_err *err)
{
	size_t len;
	void *buf;
	int rc = cdp_rpc_call_wait_send_below(s->call, 8u << 20, REPLAY_SEND_TIMEOUT);

	if (rc)
		return cdp_err_set(err, rc, "standby %s: not reading", s->standby_id);
	buf = jd_pack(&m->base, &len);
	rc = cdp_rpc_call_send_take(s->call, buf, len);
	if (rc)
		return cdp_err_set(err, rc, "standby %s: stream closed", s->standby_id);
	return 0;
}

/* One bounded wait on the stream's condition (mu held): acks, the end, or REPLAY_POLL. */
static void nap_locked(struct rstream *s)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += REPLAY_POLL;
	if (ts.tv_nsec >= CDP_NS_PER_SEC) {
		ts.tv_sec++;
		ts.tv_nsec -= CDP_NS_PER_SEC;
	}
	pthread_cond_timedwait(&s->cond, &s->mu, &ts);
}

/* Waits until a new segment may be sent; false when the stream ended. */
static bool wait_window(struct rstream *s)
{
	pthread_mutex_lock(&s->mu);
	while (!s->done && s->inflight >= s->window)
		nap_locked(s);
	pthread_mutex_unlock(&s->mu);
	return !rs_done(s);
}

/* Caught up: waits a little before looking for new segments. */
static void idle(struct rstream *s)
{
	pthread_mutex_lock(&s->mu);
	if (!s->done)
		nap_locked(s);
	pthread_mutex_unlock(&s->mu);
}

static int seed(struct rstream *s, uint64_t *next, struct cdp_err *err)
{
	struct jd *d = s->d;
	Cdp__V1__StandbyDown m = CDP__V1__STANDBY_DOWN__INIT;
	Cdp__V1__SeedBegin sb = CDP__V1__SEED_BEGIN__INIT;
	Cdp__V1__SeedEnd se = CDP__V1__SEED_END__INIT;
	struct cdp_buf data = CDP_BUF_INIT;
	uint8_t digest[CDP_DIGEST_LEN];
	struct cdp_journal_seed *sd;
	uint64_t horizon, off, len;
	uint32_t vol;
	bool zero;
	int rc;

	sd = cdp_journal_seed_new(d->j, s->plan_id, &horizon, digest, err);
	if (!sd)
		return err->code ? err->code : -EIO;
	sb.horizon_seq = horizon;
	sb.horizon_digest.data = digest;
	sb.horizon_digest.len = CDP_DIGEST_LEN;
	m.msg_case = CDP__V1__STANDBY_DOWN__MSG_SEED_BEGIN;
	m.seed_begin = &sb;
	rc = rs_send(s, &m, err);
	while (!rc && (rc = cdp_journal_seed_next(sd, &vol, &off, &len, &zero, &data, err)) == 1) {
		rc = 0;
		for (uint64_t o = 0; o < len && !rc; o += zero ? len : SEED_CHUNK) {
			Cdp__V1__SeedBlock b = CDP__V1__SEED_BLOCK__INIT;

			b.volume = vol;
			b.offset = off + o;
			b.zero = zero;
			b.length = zero ? len : CDP_MIN((uint64_t)SEED_CHUNK, len - o);
			if (!zero) {
				b.data.data = data.data + o;
				b.data.len = (size_t)b.length;
			}
			m.msg_case = CDP__V1__STANDBY_DOWN__MSG_SEED_BLOCK;
			m.seed_block = &b;
			rc = rs_send(s, &m, err);
		}
		if (rs_done(s))
			rc = -ECANCELED;
	}
	if (!rc) {
		se.horizon_seq = horizon;
		m.msg_case = CDP__V1__STANDBY_DOWN__MSG_SEED_END;
		m.seed_end = &se;
		rc = rs_send(s, &m, err);
	}
	cdp_journal_seed_free(sd);
	cdp_buf_release(&data);
	*next = horizon + 1;
	if (!rc)
		cdp_log_info("replay: plan %s: standby %s seeded as of seq %" PRIu64, s->plan_name,
			     s->standby_id, horizon);
	return rc;
}

/*
 * Moves the standby's cursor to its acked seq (replay thread: a synced write).
 * The cursor pins history while the standby lags by no more than max_lag: the
 * journal measures that from the acked segment's time, or, for a standby that
 * has everything (@caught_up and nothing in flight), from now; so a connected
 * standby of an idle plan is refreshed every max_lag / 4 and keeps its pin,
 * and one that went away loses it max_lag after it was last current.
 */
static void persist_cursor(struct rstream *s, bool caught_up)
{
	int64_t now = cdp_clock_wall_ns(s->d->clock), t;
	uint64_t acked;

	pthread_mutex_lock(&s->mu);
	acked = s->acked;
	t = s->acked_t;
	caught_up = caught_up && !s->inflight;
	pthread_mutex_unlock(&s->mu);
	if (acked == s->persisted && !(caught_up && now - s->persisted_at >= s->max_lag / 4))
		return;
	if (caught_up || !t)
		t = now;
	if (cdp_journal_cursor_set_lag(s->d->j, s->plan_id, s->cursor, acked, t, s->max_lag,
				       NULL) == 0) {
		s->persisted = acked;
		s->persisted_at = now;
	}
}

static void *replay_main(void *p)
{
	struct rstream *s = p;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf seg = CDP_BUF_INIT;
	struct cdp_journal_iter *it = NULL;
	struct cdp_seg_header h;
	uint64_t next = s->from + 1;
	int rc = 0;

	while (!rs_done(s) && !rc) {
		if (!it) {
			it = cdp_journal_iter_new(s->d->j, s->plan_id, next, &err);
			if (!it && err.code == -ERANGE) {
				cdp_err_clear(&err);
				rc = seed(s, &next, &err);
				continue;
			}
			if (!it) {
				rc = err.code ? err.code : -EIO;
				break;
			}
		}
		persist_cursor(s, false);
		if (!wait_window(s))
			break;
		rc = cdp_journal_iter_next(it, &seg, &h, &err);
		if (rc == 0) {
			persist_cursor(s, true);
			idle(s);	/* caught up: look again soon */
			continue;
		}
		if (rc < 0)
			break;
		rc = 0;
		/* In flight before it is sent: an ack may come back at once. */
		pthread_mutex_lock(&s->mu);
		s->sent = h.nrecords ? h.last_seq : h.first_seq - 1;
		s->fifo[(s->head + s->inflight) % REPLAY_WINDOW_MAX].seq = s->sent;
		s->fifo[(s->head + s->inflight) % REPLAY_WINDOW_MAX].t = h.t_last;
		s->inflight++;
		pthread_mutex_unlock(&s->mu);
		{
			Cdp__V1__StandbyDown m = CDP__V1__STANDBY_DOWN__INIT;
			Cdp__V1__Segment sg = CDP__V1__SEGMENT__INIT;

			sg.data.data = seg.data;
			sg.data.len = seg.len;
			m.msg_case = CDP__V1__STANDBY_DOWN__MSG_SEGMENT;
			m.segment = &sg;
			rc = rs_send(s, &m, &err);
		}
	}
	persist_cursor(s, false);
	cdp_journal_iter_free(it);
	cdp_buf_release(&seg);
	if (rc && !rs_done(s)) {
		cdp_log_warn("replay: plan %s: standby %s: %s", s->plan_name, s->standby_id,
			     err.msg);
		cdp_rpc_call_finish_err(s->call, &err);
	}
	rs_unref(s);
	return NULL;
}

/* ---- rpc callbacks (cq thread) -------------------------------------------- */

static void on_open(struct cdp_rpc_call *call, void *arg)
{
	struct rstream *s = cdp_xcalloc(1, sizeof(*s));
	pthread_condattr_t ca;

	s->d = arg;
	s->call = call;
	cdp_rpc_call_ref(call);
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	s->refs = 1;
	cdp_rpc_call_set_user(call, s);
}

static int check_hello(struct rstream *s, const Cdp__V1__StandbyHello *h, struct cdp_err *err)
{
	struct jd *d = s->d;
	struct jd_plan *jp;
	bool allowed = false;
	int rc = 0;

	pthread_mutex_lock(&d->mu);
	jp = jd_plan_find_locked(d, h->plan);
	if (!jp) {
		rc = cdp_err_set(err, -ENOENT, "standby hello: plan '%s' not found", h->plan);
		goto out;
	}
	for (size_t i = 0; i < jp->pb->n_standby_ids; i++)
		allowed |= !strcmp(jp->pb->standby_ids[i], h->standby_id);
	if (!allowed) {
		rc = cdp_err_set(err, -EPERM, "standby hello: '%s' is not a standby of plan %s",
				 h->standby_id, jp->pb->name);
		goto out;
	}
	if (d->tls) {
		char ident[160] = "";

		cdp_rpc_call_peer_identity(s->call, ident, sizeof(ident));
		if (strcmp(ident, h->standby_id)) {
			rc = cdp_err_set(err, -EPERM, "standby hello: certificate '%s' is not '%s'",
					 ident, h->standby_id);
			goto out;
		}
	}
	if (h->epoch != jp->pb->epoch) {
		rc = cdp_err_set(err, -ESTALE, "standby hello: epoch %" PRIu64 ", plan %s is at "
				 "epoch %" PRIu64, h->epoch, jp->pb->name, jp->pb->epoch);
		goto out;
	}
	s->plan_id = jp->id;
	snprintf(s->plan_name, sizeof(s->plan_name), "%s", jp->pb->name);
	snprintf(s->standby_id, sizeof(s->standby_id), "%s", h->standby_id);
	snprintf(s->cursor, sizeof(s->cursor), "standby:%.54s", h->standby_id);
	s->from = h->applied_seq;
	s->window = h->window ? CDP_MIN(h->window, REPLAY_WINDOW_MAX) : 16;
	s->max_lag = jp->pb->standby_max_lag_ns;
out:
	pthread_mutex_unlock(&d->mu);
	return rc;
}

static void on_message(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	struct rstream *s = cdp_rpc_call_user(call);
	struct cdp_err err = CDP_ERR_INIT;
	Cdp__V1__StandbyUp *up = cdp__v1__standby_up__unpack(NULL, len, msg);
	bool started;

	pthread_mutex_lock(&s->mu);
	started = s->started;
	pthread_mutex_unlock(&s->mu);
	if (!up) {
		cdp_err_set(&err, -EINVAL, "StandbyUp: %zu bytes are not a valid message", len);
	} else if (up->msg_case == CDP__V1__STANDBY_UP__MSG_HELLO && !started) {
		if (!check_hello(s, up->hello, &err)) {
			pthread_mutex_lock(&s->mu);
			s->started = true;
			s->refs++;
			s->acked = s->from;
			pthread_mutex_unlock(&s->mu);
			if (cdp_thread_start(&s->thread, "replay", replay_main, s)) {
				cdp_err_set(&err, -EAGAIN, "cannot start a replay thread");
				rs_unref(s);
			} else {
				pthread_detach(s->thread);
				cdp_log_info("replay: plan %s: standby %s from seq %" PRIu64,
					     s->plan_name, s->standby_id, s->from);
			}
		}
	} else if (up->msg_case == CDP__V1__STANDBY_UP__MSG_ACK && started) {
		/* Only bookkeeping here; the replay thread writes the cursor. */
		uint64_t seq = up->ack->applied_seq;

		pthread_mutex_lock(&s->mu);
		if (seq > s->sent || seq < s->acked) {
			pthread_mutex_unlock(&s->mu);
			cdp_err_set(&err, -EPROTO, "standby ack: seq %" PRIu64 " outside [%" PRIu64
				    ", %" PRIu64 "]", seq, s->acked, s->sent);
		} else {
			s->acked = seq;
			while (s->inflight && s->fifo[s->head].seq <= seq) {
				s->acked_t = s->fifo[s->head].t;
				s->head = (s->head + 1) % REPLAY_WINDOW_MAX;
				s->inflight--;
			}
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->mu);
		}
	} else {
		cdp_err_set(&err, -EINVAL, "StandbyUp: %s", started ? "second hello" :
			    "ack before hello");
	}
	if (up)
		cdp__v1__standby_up__free_unpacked(up, NULL);
	if (err.code) {
		cdp_log_warn("replay: %s: %s", cdp_rpc_call_peer(call), err.msg);
		cdp_rpc_call_finish_err(call, &err);
	}
}

static void on_done(struct cdp_rpc_call *call, enum cdp_rpc_code code, bool cancelled, void *arg)
{
	struct rstream *s = cdp_rpc_call_user(call);

	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->done = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
	rs_unref(s);
}

int jd_replay_start(struct jd *d, struct cdp_err *err)
{
	static const struct cdp_rpc_handlers h = {
		.on_open = on_open,
		.on_message = on_message,
		.on_done = on_done,
	};

	return cdp_rpc_server_add_method(d->srv, "/cdp.v1.Standby/Stream", CDP_RPC_BIDI_STREAMING,
					 &h, d, err);
}
