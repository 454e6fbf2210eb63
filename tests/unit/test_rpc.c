/*
 * Unit tests of proto/rpc against real gRPC over real sockets: a server on a
 * unix socket in a scratch directory and on 127.0.0.1 (port 0), and clients in
 * the same process. Unary, server-streaming and bidi calls; errors and their
 * status codes; large messages and the size limit; receive backpressure;
 * client cancel, deadlines, server stop with open calls; mutual TLS with
 * certificates made by tools/mkcerts. Labelled "threaded" (tools/test --tsan).
 *
 * Nothing sleeps to wait: waits are condition variables with deadlines (or
 * the RPC timeouts themselves, which are upper bounds).
 *
 *   test_rpc            the tests (cmocka)
 *   test_rpc --bench [MiB]   throughput of 1 MiB messages, both directions,
 *                            over unix, TCP and mTLS TCP (not run by ctest)
 */
#include "tests/unit/testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <spawn.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cdp/v1/capture.pb-c.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "proto/rpc.h"

#ifndef CDP_SRC_DIR
#error "CDP_SRC_DIR must name the source tree (for tools/mkcerts)"
#endif

#define SEC INT64_C(1000000000)
#define MSEC INT64_C(1000000)
/* Upper bounds for something to happen; never slept. */
#define WAIT_DEADLINE (30 * SEC)
#define CALL_TIMEOUT (30 * SEC)
#define MIB (1u << 20)

#define M_UNARY "/cdp.test.Echo/Unary"
#define M_WHO "/cdp.test.Echo/Who"
#define M_COUNT "/cdp.test.Echo/Count"
#define M_BIDI "/cdp.test.Echo/Bidi"
#define M_SINK "/cdp.test.Echo/Sink"
#define M_PROTO "/cdp.v1.Capture/Hello"

/*
 * TSan builds: gRPC and the libraries under it (abseil, upb, OpenSSL,
 * libstdc++) are not instrumented, so TSan cannot see their synchronisation
 * and reports their memcpy/malloc/free as races; their frames carry no frame
 * pointers, so the reports do not even name gRPC and a suppressions file
 * cannot match them. This flag makes TSan ignore interceptor calls made from
 * uninstrumented code: our own code stays fully checked. Scoped to this
 * binary; TSAN_OPTIONS from the environment still applies on top.
 */
#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#ifdef TEST_TSAN
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "ignore_noninstrumented_modules=1";
}
#endif

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static struct timespec abs_deadline(int64_t ns)
{
	int64_t t = mono_ns() + ns;

	return (struct timespec){ .tv_sec = t / SEC, .tv_nsec = t % SEC };
}

/* ------------------------------------------------------------------------ */
/* Server side: what the handlers saw                                       */

struct srv_state {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* guarded by mu */
	int requests;		/* on_request calls */
	int opened;		/* on_open calls */
	int half_closed;
	int done;
	int done_cancelled;
	enum cdp_rpc_code last_code;
	uint64_t sink_msgs;
	uint64_t sink_bytes;
	uint64_t sink_sum;	/* of every byte received */
	const uint8_t *sink_last;	/* the buffer of the last message */
	unsigned sink_reused;	/* messages that came in the previous one's buffer */
	bool pause_on_open;
	struct cdp_rpc_call *held;	/* a call the test holds a reference to */
	struct cdp_rpc_server *srv;	/* set before the server starts */
	int send_rc;		/* what the "big" reply got */
	pthread_t workers[8];
	int n_workers;
};

static void st_init(struct srv_state *st)
{
	pthread_condattr_t a;

	memset(st, 0, sizeof(*st));
	pthread_mutex_init(&st->mu, NULL);
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&st->cv, &a);
	pthread_condattr_destroy(&a);
}

static void st_release(struct srv_state *st)
{
	for (int i = 0; i < st->n_workers; i++)
		pthread_join(st->workers[i], NULL);
	pthread_mutex_destroy(&st->mu);
	pthread_cond_destroy(&st->cv);
}

/* Waits (condition variable, deadline) until @expr holds under st->mu. */
#define WAIT_FOR(st, expr)                                                              \
	do {                                                                            \
		struct timespec until_ = abs_deadline(WAIT_DEADLINE);                  \
		pthread_mutex_lock(&(st)->mu);                                          \
		while (!(expr)) {                                                       \
			if (pthread_cond_timedwait(&(st)->cv, &(st)->mu, &until_) ==   \
				    ETIMEDOUT &&                                        \
			    !(expr)) {                                                  \
				pthread_mutex_unlock(&(st)->mu);                        \
				fail_msg("timed out waiting for %s", #expr);            \
			}                                                               \
		}                                                                       \
		pthread_mutex_unlock(&(st)->mu);                                        \
	} while (0)

static int st_get(struct srv_state *st, const int *field)
{
	int v;

	pthread_mutex_lock(&st->mu);
	v = *field;
	pthread_mutex_unlock(&st->mu);
	return v;
}

/*
 * A copy of the counters taken under the lock, to assert on: a failed assert
 * must not leave st->mu held (teardown takes it).
 */
static struct srv_state st_snap(struct srv_state *st)
{
	struct srv_state copy;

	pthread_mutex_lock(&st->mu);
	memcpy(&copy, st, sizeof(copy));
	pthread_mutex_unlock(&st->mu);
	return copy;
}

static void on_done(struct cdp_rpc_call *call, enum cdp_rpc_code code, bool cancelled, void *arg)
{
	struct srv_state *st = arg;

	pthread_mutex_lock(&st->mu);
	st->done++;
	if (cancelled)
		st->done_cancelled++;
	st->last_code = code;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* Unary: echo, or an error on request ("fail:", "errno:", "slow", "big"). */
static void unary_request(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	struct srv_state *st = arg;
	char text[64] = "";

	pthread_mutex_lock(&st->mu);
	st->requests++;
	pthread_mutex_unlock(&st->mu);
	memcpy(text, msg, CDP_MIN(len, sizeof(text) - 1));
	if (strncmp(text, "fail:", 5) == 0) {
		char m[100];

		snprintf(m, sizeof(m), "no such thing: %s", text + 5);
		assert_int_equal(cdp_rpc_call_finish(call, CDP_RPC_NOT_FOUND, m), 0);
		assert_int_equal(cdp_rpc_call_finish(call, CDP_RPC_OK, NULL), -EALREADY);
	} else if (strcmp(text, "errno:") == 0) {
		struct cdp_err err = CDP_ERR_INIT;

		cdp_err_set(&err, -ESTALE, "epoch 3 < 4");
		assert_int_equal(cdp_rpc_call_finish_err(call, &err), 0);
	} else if (strcmp(text, "slow") == 0) {
		/* No answer: the client's deadline ends the call. */
	} else if (strcmp(text, "big") == 0) {
		size_t n = CDP_RPC_DEFAULT_MAX_MESSAGE + 1;
		uint8_t *p = cdp_xcalloc(1, n);
		int rc = cdp_rpc_call_reply(call, p, n);

		free(p);
		pthread_mutex_lock(&st->mu);
		st->send_rc = rc;
		pthread_mutex_unlock(&st->mu);
		cdp_rpc_call_finish(call, CDP_RPC_RESOURCE_EXHAUSTED, "reply too large");
	} else {
		assert_int_equal(cdp_rpc_call_reply(call, msg, len), 0);
		assert_int_equal(cdp_rpc_call_send(call, "x", 1), -EALREADY);
	}
	pthread_cond_broadcast(&st->cv);
}

/* Unary: replies "IDENTITY AUTHENTICATED PEER". */
static void who_request(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	struct srv_state *st = arg;
	char id[128], out[512];
	int n = cdp_rpc_call_peer_identity(call, id, sizeof(id));

	pthread_mutex_lock(&st->mu);
	st->requests++;
	pthread_mutex_unlock(&st->mu);
	assert_int_equal(n >= 0, cdp_rpc_call_authenticated(call));
	assert_string_equal(cdp_rpc_call_method(call), M_WHO);
	/* A handler cannot stop the server it runs in: that would wait for itself. */
	assert_int_equal(cdp_rpc_server_stop(st->srv), -EDEADLK);
	snprintf(out, sizeof(out), "%s %d %s", n >= 0 ? id : "-", cdp_rpc_call_authenticated(call),
		 cdp_rpc_call_peer(call));
	cdp_rpc_call_reply(call, out, strlen(out));
}

/* Server streaming: "N SIZE" -> N messages of SIZE bytes from a worker thread. */
struct count_job {
	struct cdp_rpc_call *call;
	unsigned n;
	size_t size;
};

static void *count_worker(void *arg)
{
	struct count_job *job = arg;
	uint8_t *msg = cdp_xmalloc(job->size < 8 ? 8 : job->size);

	for (unsigned i = 0; i < job->n; i++) {
		memset(msg, (int)(i & 0xff), job->size);
		if (job->size >= 4)
			cdp_put_le32(msg, i);
		/* Backpressure: at most 4 MiB queued. */
		if (cdp_rpc_call_wait_send_below(job->call, 4 * MIB, CALL_TIMEOUT) < 0)
			break;
		if (cdp_rpc_call_send(job->call, msg, job->size) < 0)
			break;
	}
	cdp_rpc_call_finish(job->call, CDP_RPC_OK, NULL);
	cdp_rpc_call_unref(job->call);
	free(msg);
	free(job);
	return NULL;
}

static void count_request(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	struct srv_state *st = arg;
	struct count_job *job = cdp_xcalloc(1, sizeof(*job));
	char text[64] = "";

	memcpy(text, msg, CDP_MIN(len, sizeof(text) - 1));
	assert_int_equal(sscanf(text, "%u %zu", &job->n, &job->size), 2);
	/* The worker uses the call outside this callback: it holds a reference. */
	cdp_rpc_call_ref(call);
	job->call = call;
	pthread_mutex_lock(&st->mu);
	st->requests++;
	assert_true(st->n_workers < (int)CDP_ARRAY_SIZE(st->workers));
	assert_int_equal(cdp_thread_start(&st->workers[st->n_workers++], "worker", count_worker,
					  job), 0);
	pthread_mutex_unlock(&st->mu);
}

/* Bidi echo: every message back; OK on half-close. */
static void bidi_open(struct cdp_rpc_call *call, void *arg)
{
	struct srv_state *st = arg;

	pthread_mutex_lock(&st->mu);
	st->opened++;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

static void bidi_message(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	int rc = cdp_rpc_call_send(call, msg, len);
	size_t bytes, msgs;

	/* The call may end (client gone, stop) while we echo. */
	assert_true(rc == 0 || rc == -ECANCELED);
	/* Sends complete on this (cq) thread, so ours is still counted. */
	cdp_rpc_call_send_queued(call, &bytes, &msgs);
	if (rc == 0)
		assert_true(msgs >= 1 && bytes >= len);
	assert_int_equal(cdp_rpc_call_wait_send_below(call, 0, 0), -EDEADLK);
}

static void bidi_half_close(struct cdp_rpc_call *call, void *arg)
{
	struct srv_state *st = arg;

	pthread_mutex_lock(&st->mu);
	st->half_closed++;
	pthread_mutex_unlock(&st->mu);
	cdp_rpc_call_finish(call, CDP_RPC_OK, NULL);
}

/* Sink: counts what arrives; may pause on open and hand the call to the test. */
static void sink_open(struct cdp_rpc_call *call, void *arg)
{
	struct srv_state *st = arg;

	pthread_mutex_lock(&st->mu);
	st->opened++;
	if (st->pause_on_open) {
		cdp_rpc_call_pause_recv(call);
		assert_null(st->held);
		cdp_rpc_call_ref(call);
		st->held = call;
	}
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* on_message_take: the bytes are the handler's own (it writes and frees them). */
static void sink_message(struct cdp_rpc_call *call, uint8_t *msg, size_t len, void *arg)
{
	struct srv_state *st = arg;
	uint64_t sum = 0;

	for (size_t i = 0; i < len; i++) {
		sum += msg[i];
		msg[i] = 0;
	}
	cdp_rpc_msg_free(msg);
	pthread_mutex_lock(&st->mu);
	st->sink_reused += msg == st->sink_last;
	st->sink_last = msg;
	st->sink_msgs++;
	st->sink_bytes += len;
	st->sink_sum += sum;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* protobuf-c over the glue: a CaptureUp hello in, a CaptureDown welcome out. */
static void proto_request(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg)
{
	Cdp__V1__CaptureUp *up = cdp__v1__capture_up__unpack(NULL, len, msg);
	Cdp__V1__CaptureDown down = CDP__V1__CAPTURE_DOWN__INIT;
	Cdp__V1__CaptureWelcome w = CDP__V1__CAPTURE_WELCOME__INIT;
	uint8_t *out;
	size_t n;

	if (!up || up->msg_case != CDP__V1__CAPTURE_UP__MSG_HELLO) {
		cdp_rpc_call_finish(call, cdp_rpc_code_from_errno(-EBADMSG), "expected a hello");
		goto out;
	}
	w.plan_id = 42;
	w.epoch = up->hello->epoch;
	w.durable_seq = up->hello->acked_seq + 1;
	down.msg_case = CDP__V1__CAPTURE_DOWN__MSG_WELCOME;
	down.welcome = &w;
	n = cdp__v1__capture_down__get_packed_size(&down);
	out = cdp_xmalloc(n ? n : 1);
	cdp__v1__capture_down__pack(&down, out);
	/* Unary as send + finish, with the packed buffer handed over. */
	assert_int_equal(cdp_rpc_call_send_take(call, out, n), 0);
	assert_int_equal(cdp_rpc_call_finish(call, CDP_RPC_OK, NULL), 0);
out:
	cdp__v1__capture_up__free_unpacked(up, NULL);
}

/* ------------------------------------------------------------------------ */
/* Environment: a server on unix + TCP and a channel to each                */

struct env {
	char dir[256];
	char sock_addr[320];
	char tcp_target[64];
	char unix_target[320];
	char certs[300];
	struct srv_state st;
	struct cdp_rpc_server *srv;
	struct cdp_rpc_channel *uch;	/* to the unix socket */
	struct cdp_rpc_channel *tch;	/* to 127.0.0.1:port */
	bool tls;
};

static struct cdp_rpc_channel *channel(const char *target, size_t max, const char *certs,
				       const char *client)
{
	char ca[400], cert[400], key[400];
	struct cdp_rpc_channel_opts o = { .target = target, .max_message = max };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_channel *ch;

	if (certs) {
		snprintf(ca, sizeof(ca), "%s/ca.crt", certs);
		o.tls_ca = ca;
		if (client) {
			snprintf(cert, sizeof(cert), "%s/%s.crt", certs, client);
			snprintf(key, sizeof(key), "%s/%s.key", certs, client);
			o.tls_cert = cert;
			o.tls_key = key;
		}
	}
	ch = cdp_rpc_channel_new(&o, &err);
	if (!ch)
		fail_msg("channel: %s", err.msg);
	return ch;
}

static void add_methods(struct env *e)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_handlers unary = { .on_request = unary_request, .on_done = on_done };
	struct cdp_rpc_handlers who = { .on_request = who_request, .on_done = on_done };
	struct cdp_rpc_handlers count = { .on_request = count_request, .on_done = on_done };
	struct cdp_rpc_handlers bidi = { .on_open = bidi_open, .on_message = bidi_message,
					 .on_half_close = bidi_half_close, .on_done = on_done };
	struct cdp_rpc_handlers sink = { .on_open = sink_open, .on_message_take = sink_message,
					 .on_half_close = bidi_half_close, .on_done = on_done };
	struct cdp_rpc_handlers proto = { .on_request = proto_request, .on_done = on_done };

	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_UNARY, CDP_RPC_UNARY, &unary, &e->st,
						   &err), 0);
	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_WHO, CDP_RPC_UNARY, &who, &e->st,
						   &err), 0);
	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_COUNT, CDP_RPC_SERVER_STREAMING,
						   &count, &e->st, &err), 0);
	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_BIDI, CDP_RPC_BIDI_STREAMING, &bidi,
						   &e->st, &err), 0);
	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_SINK, CDP_RPC_BIDI_STREAMING, &sink,
						   &e->st, &err), 0);
	assert_int_equal(cdp_rpc_server_add_method(e->srv, M_PROTO, CDP_RPC_UNARY, &proto, &e->st,
						   &err), 0);
	/* Misuse is refused with a message. */
	assert_err(&err, cdp_rpc_server_add_method(e->srv, M_UNARY, CDP_RPC_UNARY, &unary, NULL,
						   &err), -EEXIST, M_UNARY);
	assert_err(&err, cdp_rpc_server_add_method(e->srv, "NoSlash", CDP_RPC_UNARY, &unary, NULL,
						   &err), -EINVAL, "NoSlash");
	assert_err(&err, cdp_rpc_server_add_method(e->srv, "/a.B/C", CDP_RPC_BIDI_STREAMING,
						   &unary, NULL, &err), -EINVAL, "on_message");
	{
		struct cdp_rpc_handlers both = sink;

		both.on_message = bidi_message;
		assert_err(&err, cdp_rpc_server_add_method(e->srv, "/a.B/D",
							   CDP_RPC_BIDI_STREAMING, &both, NULL,
							   &err), -EINVAL, "exactly one");
	}
}

static struct env *env_new(bool tls)
{
	struct env *e = cdp_xcalloc(1, sizeof(*e));
	struct cdp_err err = CDP_ERR_INIT;
	char ca[400], cert[400], key[400], cmd[1024];
	const char *listen[2];
	struct cdp_rpc_server_opts o = { .listen = listen, .n_listen = 2 };

	st_init(&e->st);
	assert_non_null(cdp_test_mkdtemp(e->dir, sizeof(e->dir)));
	snprintf(e->sock_addr, sizeof(e->sock_addr), "unix:%s/rpc.sock", e->dir);
	listen[0] = e->sock_addr;
	listen[1] = "127.0.0.1:0";
	if (tls) {
		e->tls = true;
		snprintf(e->certs, sizeof(e->certs), "%s/certs", e->dir);
		snprintf(cmd, sizeof(cmd), "'%s/tools/mkcerts' '%s' >/dev/null", CDP_SRC_DIR,
			 e->certs);
		assert_int_equal(system(cmd), 0);
		snprintf(ca, sizeof(ca), "%s/ca.crt", e->certs);
		snprintf(cert, sizeof(cert), "%s/server.crt", e->certs);
		snprintf(key, sizeof(key), "%s/server.key", e->certs);
		o.tls_ca = ca;
		o.tls_cert = cert;
		o.tls_key = key;
	}
	e->srv = cdp_rpc_server_new(&o, &err);
	if (!e->srv)
		fail_msg("server: %s", err.msg);
	assert_int_equal(cdp_rpc_server_port(e->srv, 0), 0);
	assert_true(cdp_rpc_server_port(e->srv, 1) > 0);
	snprintf(e->tcp_target, sizeof(e->tcp_target), "127.0.0.1:%d",
		 cdp_rpc_server_port(e->srv, 1));
	snprintf(e->unix_target, sizeof(e->unix_target), "%s", e->sock_addr);
	e->st.srv = e->srv;
	add_methods(e);
	assert_int_equal(cdp_rpc_server_start(e->srv, &err), 0);
	assert_err(&err, cdp_rpc_server_start(e->srv, &err), -EINVAL, "already started");
	if (!tls) {
		e->uch = channel(e->unix_target, 0, NULL, NULL);
		e->tch = channel(e->tcp_target, 0, NULL, NULL);
	}
	return e;
}

static void env_free(struct env *e)
{
	cdp_rpc_channel_free(e->uch);
	cdp_rpc_channel_free(e->tch);
	pthread_mutex_lock(&e->st.mu);
	if (e->st.held) {
		cdp_rpc_call_unref(e->st.held);
		e->st.held = NULL;
	}
	pthread_mutex_unlock(&e->st.mu);
	assert_int_equal(cdp_rpc_server_stop(e->srv), 0);
	assert_int_equal(cdp_rpc_server_open_calls(e->srv), 0);
	cdp_rpc_server_free(e->srv);
	st_release(&e->st);
	cdp_test_rmrf(e->dir);
	free(e);
}

static int env_setup(void **state)
{
	*state = env_new(false);
	return 0;
}

static int env_teardown(void **state)
{
	env_free(*state);
	return 0;
}

/* A unary call that must succeed; returns the reply as a string in @out. */
static void unary_ok(struct cdp_rpc_channel *ch, const char *method, const char *req, char *out,
		     size_t size)
{
	struct cdp_buf reply = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	int rc = cdp_rpc_unary(ch, method, req, strlen(req), CALL_TIMEOUT, &reply, &code, &err);

	if (rc != 0)
		fail_msg("%s: %d %s", method, rc, err.msg);
	assert_int_equal(code, CDP_RPC_OK);
	snprintf(out, size, "%.*s", (int)reply.len, reply.data ? (char *)reply.data : "");
	cdp_buf_release(&reply);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */

static void test_status_mapping_round_trips(void **state)
{
	static const int errnos[] = { -EINVAL, -ENOENT, -EEXIST, -EACCES, -ESTALE, -EPROTO,
				      -ENOSPC, -ETIMEDOUT, -ECANCELED, -ENOSYS, -ECONNABORTED,
				      -ENOTCONN, -EIO };

	assert_int_equal(cdp_rpc_code_from_errno(0), CDP_RPC_OK);
	assert_int_equal(cdp_rpc_errno_from_code(CDP_RPC_OK), 0);
	for (size_t i = 0; i < CDP_ARRAY_SIZE(errnos); i++)
		assert_int_equal(cdp_rpc_errno_from_code(cdp_rpc_code_from_errno(errnos[i])),
				 errnos[i]);
	assert_int_equal(cdp_rpc_code_from_errno(-EBADMSG), CDP_RPC_INVALID_ARGUMENT);
	assert_int_equal(cdp_rpc_code_from_errno(-EPERM), CDP_RPC_PERMISSION_DENIED);
	assert_int_equal(cdp_rpc_code_from_errno(-EPROTO), CDP_RPC_OUT_OF_RANGE);
	assert_int_equal(cdp_rpc_code_from_errno(-ESTALE), CDP_RPC_FAILED_PRECONDITION);
	assert_int_equal(cdp_rpc_code_from_errno(-EMSGSIZE), CDP_RPC_RESOURCE_EXHAUSTED);
	assert_int_equal(cdp_rpc_code_from_errno(-ECONNRESET), CDP_RPC_UNAVAILABLE);
	assert_int_equal(cdp_rpc_code_from_errno(-EXDEV), CDP_RPC_INTERNAL);
	assert_int_equal(cdp_rpc_errno_from_code(CDP_RPC_DATA_LOSS), -EBADMSG);
	assert_int_equal(cdp_rpc_errno_from_code(CDP_RPC_UNAUTHENTICATED), -EACCES);
	assert_int_equal(cdp_rpc_errno_from_code(CDP_RPC_UNKNOWN), -EIO);
	assert_string_equal(cdp_rpc_code_name(CDP_RPC_NOT_FOUND), "NOT_FOUND");
	assert_string_equal(cdp_rpc_code_name(CDP_RPC_UNAUTHENTICATED), "UNAUTHENTICATED");
	assert_string_equal(cdp_rpc_code_name(99), "UNKNOWN_CODE");
}

static void test_unary_echo_over_unix_and_tcp(void **state)
{
	struct env *e = *state;
	struct cdp_rpc_channel *chs[2] = { e->uch, e->tch };
	char out[256];

	for (int i = 0; i < 2; i++) {
		unary_ok(chs[i], M_UNARY, "hello", out, sizeof(out));
		assert_string_equal(out, "hello");
		unary_ok(chs[i], M_UNARY, "", out, sizeof(out));	/* empty message */
		assert_string_equal(out, "");
		unary_ok(chs[i], M_WHO, "", out, sizeof(out));
		/* Plaintext: no identity; the peer is the TCP or unix address. */
		assert_true(strncmp(out, "- 0 ", 4) == 0);
		assert_non_null(strstr(out, i ? "ipv4:127.0.0.1:" : "unix:"));
	}
	WAIT_FOR(&e->st, e->st.done == 6);
	assert_int_equal(st_get(&e->st, &e->st.done_cancelled), 0);
}

static void test_unary_error_status_and_message_propagate(void **state)
{
	struct env *e = *state;
	struct cdp_buf reply = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	int rc;

	rc = cdp_rpc_unary(e->tch, M_UNARY, "fail:plan db01", 14, CALL_TIMEOUT, &reply, &code,
			   &err);
	assert_err(&err, rc, -ENOENT, "NOT_FOUND: no such thing: plan db01");
	assert_int_equal(code, CDP_RPC_NOT_FOUND);
	assert_non_null(strstr(err.msg, M_UNARY));
	assert_non_null(strstr(err.msg, e->tcp_target));

	rc = cdp_rpc_unary(e->uch, M_UNARY, "errno:", 6, CALL_TIMEOUT, &reply, &code, &err);
	assert_err(&err, rc, -ESTALE, "FAILED_PRECONDITION: epoch 3 < 4");

	/* A method nobody added: UNIMPLEMENTED, naming it, and no handler runs. */
	rc = cdp_rpc_unary(e->uch, "/cdp.test.Echo/Nope", "x", 1, CALL_TIMEOUT, &reply, &code,
			   &err);
	assert_err(&err, rc, -ENOSYS, "/cdp.test.Echo/Nope not implemented");
	assert_int_equal(code, CDP_RPC_UNIMPLEMENTED);
	WAIT_FOR(&e->st, e->st.done == 2);
	cdp_buf_release(&reply);
}

static void test_server_streaming_sends_n_then_ok(void **state)
{
	struct env *e = *state;
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	unsigned n = (unsigned)cdp_test_rounds(3000, 1000, 20000), got = 0;
	char req[64];
	struct cdp_rpc_stream *s;
	int rc;

	snprintf(req, sizeof(req), "%u 1000", n);
	s = cdp_rpc_stream_open_request(e->tch, M_COUNT, req, strlen(req), CALL_TIMEOUT, &err);
	assert_non_null(s);
	while ((rc = cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err)) == 1) {
		assert_int_equal(msg.len, 1000);
		assert_int_equal(cdp_get_le32(msg.data), got);
		assert_int_equal(msg.data[999], got & 0xff);
		got++;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(got, n);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	assert_int_equal(code, CDP_RPC_OK);
	/* After the end, recv keeps saying so. */
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, 0, &err), 0);
	/* No sends on a server-streaming call: its sending side is closed. */
	assert_err(&err, cdp_rpc_stream_send(s, "x", 1, SEC, &err), -EINVAL, "after close_send");
	cdp_rpc_stream_free(s);
	WAIT_FOR(&e->st, e->st.done == 1);
	assert_int_equal(st_get(&e->st, &e->st.done_cancelled), 0);
	cdp_buf_release(&msg);
}

/* Bidi: one thread sends, another receives, on the same stream. */
struct sender {
	struct cdp_rpc_stream *s;
	unsigned n;
	int rc;
	struct cdp_err err;
};

static size_t bidi_len(unsigned i)
{
	return 8 + (i * 7919u) % 4096;
}

static void *sender_main(void *arg)
{
	struct sender *sd = arg;
	uint8_t *buf = cdp_xmalloc(8 + 4096);

	for (unsigned i = 0; i < sd->n; i++) {
		size_t len = bidi_len(i);

		memset(buf, (int)(i * 31), len);
		cdp_put_le32(buf, i);
		cdp_put_le32(buf + 4, (uint32_t)len);
		sd->rc = cdp_rpc_stream_send(sd->s, buf, len, CALL_TIMEOUT, &sd->err);
		if (sd->rc < 0)
			break;
	}
	if (sd->rc == 0)
		sd->rc = cdp_rpc_stream_close_send(sd->s, CALL_TIMEOUT, &sd->err);
	free(buf);
	return NULL;
}

static void bidi_echo_many(struct env *e, struct cdp_rpc_channel *ch, unsigned n)
{
	struct sender sd = { .n = n, .err = CDP_ERR_INIT };
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	unsigned got = 0;
	pthread_t t;
	int rc;

	sd.s = cdp_rpc_stream_open(ch, M_BIDI, CDP_RPC_NO_DEADLINE, &err);
	assert_non_null(sd.s);
	assert_int_equal(cdp_thread_start(&t, "sender", sender_main, &sd), 0);
	while ((rc = cdp_rpc_stream_recv(sd.s, &msg, CALL_TIMEOUT, &err)) == 1) {
		size_t len = bidi_len(got);

		assert_int_equal(msg.len, len);
		assert_int_equal(cdp_get_le32(msg.data), got);
		assert_int_equal(cdp_get_le32(msg.data + 4), len);
		assert_int_equal(msg.data[len - 1], (uint8_t)(got * 31));
		got++;
	}
	pthread_join(t, NULL);
	if (sd.rc)
		fail_msg("sender: %s", sd.err.msg);
	assert_int_equal(rc, 0);
	assert_int_equal(got, n);
	assert_int_equal(cdp_rpc_stream_status(sd.s, CALL_TIMEOUT, &code, &err), 0);
	cdp_rpc_stream_free(sd.s);
	cdp_buf_release(&msg);
}

static void test_bidi_echo_send_and_recv_on_two_threads(void **state)
{
	struct env *e = *state;
	unsigned n = (unsigned)cdp_test_rounds(20000, 3000, 200000);

	bidi_echo_many(e, e->uch, n);
	bidi_echo_many(e, e->tch, n / 4);
	WAIT_FOR(&e->st, e->st.done == 2);
	assert_int_equal(st_get(&e->st, &e->st.half_closed), 2);
	assert_int_equal(st_get(&e->st, &e->st.done_cancelled), 0);
}

static void test_large_messages_and_the_limit(void **state)
{
	struct env *e = *state;
	size_t big = 8 * MIB, over = CDP_RPC_DEFAULT_MAX_MESSAGE + 1;
	uint8_t *p = cdp_xmalloc(over);
	struct cdp_buf reply = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_channel *wide;
	struct cdp_rpc_stream *s;
	enum cdp_rpc_code code;
	int rc;

	for (size_t i = 0; i < over; i++)
		p[i] = (uint8_t)(i * 2654435761u >> 24);
	/* 8 MiB unary echo over TCP, and over a bidi stream on unix. */
	rc = cdp_rpc_unary(e->tch, M_UNARY, p, big, CALL_TIMEOUT, &reply, &code, &err);
	if (rc)
		fail_msg("%s", err.msg);
	assert_int_equal(reply.len, big);
	assert_memory_equal(reply.data, p, big);
	s = cdp_rpc_stream_open(e->uch, M_BIDI, CALL_TIMEOUT, &err);
	assert_non_null(s);
	assert_int_equal(cdp_rpc_stream_send(s, p, big, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &reply, CALL_TIMEOUT, &err), 1);
	assert_int_equal(reply.len, big);
	assert_memory_equal(reply.data, p, big);
	assert_int_equal(cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &reply, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	cdp_rpc_stream_free(s);

	/* Over the limit: the client refuses to send it... */
	rc = cdp_rpc_unary(e->tch, M_UNARY, p, over, CALL_TIMEOUT, &reply, &code, &err);
	assert_err(&err, rc, -EMSGSIZE, "> max");
	assert_int_equal(code, CDP_RPC_RESOURCE_EXHAUSTED);
	/* ...and a client with a larger limit is refused by the server. */
	wide = channel(e->tcp_target, 64 * MIB, NULL, NULL);
	rc = cdp_rpc_unary(wide, M_UNARY, p, over, CALL_TIMEOUT, &reply, &code, &err);
	assert_int_equal(code, CDP_RPC_RESOURCE_EXHAUSTED);
	assert_err(&err, rc, -ENOSPC, "RESOURCE_EXHAUSTED");
	s = cdp_rpc_stream_open(wide, M_BIDI, CALL_TIMEOUT, &err);
	assert_int_equal(cdp_rpc_stream_send(s, p, over, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &reply, CALL_TIMEOUT, &err), 0);
	rc = cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err);
	assert_int_equal(code, CDP_RPC_RESOURCE_EXHAUSTED);
	assert_int_equal(rc, -ENOSPC);
	cdp_rpc_stream_free(s);
	cdp_rpc_channel_free(wide);
	/* The server's own replies obey the limit too. */
	rc = cdp_rpc_unary(e->tch, M_UNARY, "big", 3, CALL_TIMEOUT, &reply, &code, &err);
	assert_err(&err, rc, -ENOSPC, "reply too large");
	assert_int_equal(st_get(&e->st, &e->st.send_rc), -EMSGSIZE);
	free(p);
	cdp_buf_release(&reply);
}

static atomic_uint parts_released;

static void parts_release(void *ctx)
{
	atomic_fetch_add(&parts_released, (unsigned)(uintptr_t)ctx);
}

/*
 * send_parts: head copied, body sent in place and released exactly once; on
 * the server, each large message comes in the pooled buffer of the one before.
 */
static void test_send_parts_borrows_the_body(void **state)
{
	struct env *e = *state;
	size_t len = 1536 * 1024;
	uint8_t *body = cdp_xmalloc(len);
	const uint8_t head[3] = { 1, 2, 3 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s;
	enum cdp_rpc_code code;
	uint64_t sum = 6 * 10, base_sum, base_bytes;
	unsigned n = 10;

	for (size_t i = 0; i < len; i++) {
		body[i] = (uint8_t)(i * 3 + 1);
		sum += (uint64_t)body[i] * n;
	}
	atomic_store(&parts_released, 0);
	base_sum = st_snap(&e->st).sink_sum;
	base_bytes = st_snap(&e->st).sink_bytes;
	s = cdp_rpc_stream_open(e->tch, M_SINK, CALL_TIMEOUT, &err);
	assert_non_null(s);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(cdp_rpc_stream_send_parts(s, head, sizeof(head), body, len,
							   parts_release, (void *)1,
							   CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	WAIT_FOR(&e->st, e->st.sink_bytes - base_bytes == n * (len + sizeof(head)));
	assert_int_equal(st_snap(&e->st).sink_sum - base_sum, sum);
	assert_true(st_snap(&e->st).sink_reused >= n - 1);
	/* Refused sends release too: the stream is closed for sending. */
	assert_int_equal(cdp_rpc_stream_send_parts(s, head, sizeof(head), body, len,
						   parts_release, (void *)100, CALL_TIMEOUT,
						   &err), -EINVAL);
	cdp_rpc_stream_free(s);
	/* gRPC drops its last reference from its own threads: poll with a deadline. */
	for (int64_t until = mono_ns() + WAIT_DEADLINE;
	     atomic_load(&parts_released) != n + 100 && mono_ns() < until;)
		sched_yield();
	assert_int_equal(atomic_load(&parts_released), n + 100);
	free(body);
}

/*
 * Prefill: whole buffers sized for @len, up to the bytes asked and never past
 * CDP_RPC_MSG_POOL_MAX idle; a second call finds the pool full. Messages of
 * that size then arrive intact in those buffers.
 */
static void test_msg_pool_prefill_bounds_and_serves(void **state)
{
	struct env *e = *state;
	size_t len = (3u << 20) + 5, cap = 4u << 20, added, more;
	uint8_t *body = cdp_xmalloc(len);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s;
	enum cdp_rpc_code code;
	uint64_t sum = 0, base_sum, base_bytes;
	unsigned n = 3;

	added = cdp_rpc_msg_pool_prefill(len, 12u << 20);
	assert_int_equal(added % cap, 0);
	assert_true(added <= 12u << 20);
	assert_int_equal(cdp_rpc_msg_pool_prefill(len, 12u << 20), 0);
	more = cdp_rpc_msg_pool_prefill(len, SIZE_MAX);
	assert_int_equal(more % cap, 0);
	assert_true(added + more <= CDP_RPC_MSG_POOL_MAX);
	assert_int_equal(cdp_rpc_msg_pool_prefill(len, SIZE_MAX), 0);

	for (size_t i = 0; i < len; i++) {
		body[i] = (uint8_t)(i * 5 + 3);
		sum += (uint64_t)body[i] * n;
	}
	base_sum = st_snap(&e->st).sink_sum;
	base_bytes = st_snap(&e->st).sink_bytes;
	s = cdp_rpc_stream_open(e->tch, M_SINK, CALL_TIMEOUT, &err);
	assert_non_null(s);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(cdp_rpc_stream_send(s, body, len, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	assert_int_equal(code, CDP_RPC_OK);
	WAIT_FOR(&e->st, e->st.sink_bytes - base_bytes == n * len);
	assert_int_equal(st_snap(&e->st).sink_sum - base_sum, sum);
	cdp_rpc_stream_free(s);
	free(body);
}

static void test_pause_recv_holds_the_client_back(void **state)
{
	struct env *e = *state;
	size_t len = 64 * 1024;
	uint8_t *p = cdp_xcalloc(1, len);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s;
	struct cdp_rpc_call *held;
	struct srv_state snap;
	enum cdp_rpc_code code;
	unsigned sent = 0, max = 4096;	/* 256 MiB: far past any window */
	uint64_t sum = 0;
	int rc = 0;

	for (size_t i = 0; i < len; i++) {
		p[i] = (uint8_t)(i * 7 + 1);
		sum += p[i];
	}

	pthread_mutex_lock(&e->st.mu);
	e->st.pause_on_open = true;
	pthread_mutex_unlock(&e->st.mu);
	s = cdp_rpc_stream_open(e->tch, M_SINK, CALL_TIMEOUT, &err);
	assert_non_null(s);
	WAIT_FOR(&e->st, e->st.held != NULL);
	/* Send until flow control stops us (the 300 ms wait is an upper bound). */
	while (sent < max) {
		rc = cdp_rpc_stream_send(s, p, len, 300 * MSEC, &err);
		if (rc == -ETIMEDOUT)
			break;
		assert_int_equal(rc, 0);
		sent++;
	}
	assert_int_equal(rc, -ETIMEDOUT);
	assert_true(sent < max);
	/* Paused: not one message reached the handler. */
	snap = st_snap(&e->st);
	assert_int_equal(snap.sink_msgs, 0);
	held = snap.held;
	print_message("pause: the client stalled after %u messages of 64 KiB\n", sent);

	/* Resume from this (non-cq) thread: everything sent arrives, and the
	 * client can send again. */
	cdp_rpc_call_resume_recv(held);
	WAIT_FOR(&e->st, e->st.sink_msgs == sent);
	assert_int_equal(cdp_rpc_stream_send(s, p, len, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	WAIT_FOR(&e->st, e->st.done == 1);
	pthread_mutex_lock(&e->st.mu);
	e->st.held = NULL;
	pthread_mutex_unlock(&e->st.mu);
	snap = st_snap(&e->st);
	assert_int_equal(snap.sink_msgs, sent + 1);
	assert_int_equal(snap.sink_bytes, (uint64_t)(sent + 1) * len);
	assert_int_equal(snap.sink_sum, (uint64_t)(sent + 1) * sum);	/* the bytes, intact */
	/* Ended: the call refuses sends, then our reference frees it. */
	assert_int_equal(cdp_rpc_call_send(held, "x", 1), -ECANCELED);
	assert_int_equal(cdp_rpc_call_wait_send_below(held, 0, SEC), -ECANCELED);
	cdp_rpc_call_unref(held);
	cdp_rpc_stream_free(s);
	free(p);
}

static void test_client_cancel_mid_stream_ends_server_call(void **state)
{
	struct env *e = *state;
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	struct cdp_rpc_stream *s;
	struct srv_state snap;

	s = cdp_rpc_stream_open(e->uch, M_BIDI, CDP_RPC_NO_DEADLINE, &err);
	assert_int_equal(cdp_rpc_stream_send(s, "one", 3, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 1);
	assert_int_equal(st_get(&e->st, &e->st.done), 0);
	cdp_rpc_stream_cancel(s);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), -ECANCELED);
	assert_int_equal(code, CDP_RPC_CANCELLED);
	assert_err(&err, cdp_rpc_stream_send(s, "two", 3, CALL_TIMEOUT, &err), -ECANCELED,
		   "call has ended");
	cdp_rpc_stream_free(s);
	WAIT_FOR(&e->st, e->st.done == 1);
	snap = st_snap(&e->st);
	assert_int_equal(snap.done_cancelled, 1);
	assert_int_equal(snap.last_code, CDP_RPC_CANCELLED);
	/* (on_half_close may have run: gRPC ends a cancelled call's receive
	 * the way it reports a half-close.) */

	/* Freeing a live stream cancels it too. */
	s = cdp_rpc_stream_open(e->tch, M_BIDI, CDP_RPC_NO_DEADLINE, &err);
	assert_int_equal(cdp_rpc_stream_send(s, "one", 3, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 1);
	cdp_rpc_stream_free(s);
	WAIT_FOR(&e->st, e->st.done == 2 && e->st.done_cancelled == 2);
	cdp_buf_release(&msg);
}

/*
 * test_rpc --die-mid-stream TARGET: the child of the test below. Opens a bidi
 * stream, sees one echo, then exits without closing anything, as a crashed
 * agent would.
 */
static int die_mid_stream(const char *target)
{
	struct cdp_rpc_channel_opts o = { .target = target };
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_channel *ch = cdp_rpc_channel_new(&o, &err);
	struct cdp_rpc_stream *s = ch ? cdp_rpc_stream_open(ch, M_BIDI, CALL_TIMEOUT, &err) : NULL;

	if (!s || cdp_rpc_stream_send(s, "bye", 3, CALL_TIMEOUT, &err) < 0 ||
	    cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err) != 1) {
		fprintf(stderr, "die-mid-stream: %s\n", err.msg);
		_exit(1);
	}
	_exit(0);
}

static void test_client_process_death_ends_server_call(void **state)
{
	struct env *e = *state;
	char *argv[] = { "test_rpc", "--die-mid-stream", e->tcp_target, NULL };
	extern char **environ;
	int status;
	pid_t pid;

	assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
	/* The child is bounded by its own call timeouts. */
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	WAIT_FOR(&e->st, e->st.done == 1);
	assert_int_equal(st_get(&e->st, &e->st.done_cancelled), 1);
	assert_int_equal(st_get(&e->st, &e->st.opened), 1);
}

static void test_deadlines_and_recv_timeouts(void **state)
{
	struct env *e = *state;
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	struct cdp_rpc_stream *s;
	int rc;

	/* The handler never answers: the deadline ends the call on both sides. */
	rc = cdp_rpc_unary(e->tch, M_UNARY, "slow", 4, 300 * MSEC, &msg, &code, &err);
	assert_err(&err, rc, -ETIMEDOUT, "DEADLINE_EXCEEDED");
	assert_int_equal(code, CDP_RPC_DEADLINE_EXCEEDED);
	WAIT_FOR(&e->st, e->st.done == 1);
	assert_int_equal(st_get(&e->st, &e->st.done_cancelled), 1);

	/* A recv that times out keeps its receive pending: nothing is lost. */
	s = cdp_rpc_stream_open(e->uch, M_BIDI, CALL_TIMEOUT, &err);
	assert_err(&err, cdp_rpc_stream_recv(s, &msg, 50 * MSEC, &err), -ETIMEDOUT,
		   "no message within 50 ms");
	assert_err(&err, cdp_rpc_stream_status(s, 0, &code, &err), -ETIMEDOUT, "no status");
	assert_int_equal(cdp_rpc_stream_send(s, "ping", 4, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 1);
	assert_int_equal(msg.len, 4);
	assert_memory_equal(msg.data, "ping", 4);
	assert_int_equal(cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 0);
	assert_int_equal(cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err), 0);
	cdp_rpc_stream_free(s);

	/* A stream's own deadline. */
	s = cdp_rpc_stream_open(e->uch, M_SINK, 200 * MSEC, &err);
	assert_int_equal(cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err), 0);
	rc = cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err);
	assert_err(&err, rc, -ETIMEDOUT, "DEADLINE_EXCEEDED");
	assert_non_null(strstr(err.msg, M_SINK));
	cdp_rpc_stream_free(s);
	WAIT_FOR(&e->st, e->st.done == 3);
	cdp_buf_release(&msg);
}

struct stopper {
	struct cdp_rpc_server *srv;
	int rc;
	int64_t ns;
};

static void *stopper_main(void *arg)
{
	struct stopper *sp = arg;
	int64_t t0 = mono_ns();

	sp->rc = cdp_rpc_server_stop(sp->srv);
	sp->ns = mono_ns() - t0;
	return NULL;
}

static void test_stop_with_open_streams(void **state)
{
	struct env *e = *state;
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s[4];
	struct stopper sp = { .srv = e->srv };
	struct srv_state snap;
	enum cdp_rpc_code code;
	pthread_t t;

	for (int i = 0; i < 4; i++) {
		s[i] = cdp_rpc_stream_open(i % 2 ? e->tch : e->uch, M_BIDI, CDP_RPC_NO_DEADLINE,
					   &err);
		assert_int_equal(cdp_rpc_stream_send(s[i], "hi", 2, CALL_TIMEOUT, &err), 0);
		assert_int_equal(cdp_rpc_stream_recv(s[i], &msg, CALL_TIMEOUT, &err), 1);
	}
	assert_int_equal(cdp_rpc_server_open_calls(e->srv), 4);
	/* Stop from another thread, as a signal-handling thread would. */
	assert_int_equal(cdp_thread_start(&t, "signals", stopper_main, &sp), 0);
	pthread_join(t, NULL);
	assert_int_equal(sp.rc, 0);
	assert_true(sp.ns < CDP_RPC_STOP_TIMEOUT_NS);
	print_message("stop with 4 open streams took %" PRId64 " ms\n", sp.ns / MSEC);
	assert_int_equal(cdp_rpc_server_open_calls(e->srv), 0);
	snap = st_snap(&e->st);
	assert_int_equal(snap.done, 4);
	assert_int_equal(snap.done_cancelled, 4);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(cdp_rpc_stream_recv(s[i], &msg, CALL_TIMEOUT, &err), 0);
		assert_int_not_equal(cdp_rpc_stream_status(s[i], CALL_TIMEOUT, &code, &err), 0);
		if (code != CDP_RPC_UNAVAILABLE && code != CDP_RPC_CANCELLED)
			fail_msg("stream %d: %s", i, err.msg);
		cdp_rpc_stream_free(s[i]);
	}
	/* Stopped: new calls fail fast, and stop again is harmless. */
	assert_int_equal(cdp_rpc_unary(e->uch, M_UNARY, "x", 1, CALL_TIMEOUT, &msg, &code, &err),
			 -ENOTCONN);
	assert_int_equal(code, CDP_RPC_UNAVAILABLE);
	assert_int_equal(cdp_rpc_server_stop(e->srv), 0);
	cdp_buf_release(&msg);
}

static void test_unreachable_server_fails_fast(void **state)
{
	struct env *e = *state;
	char target[400];
	struct cdp_rpc_channel *ch;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	int64_t t0 = mono_ns();
	int rc;

	snprintf(target, sizeof(target), "unix:%s/nobody.sock", e->dir);
	ch = channel(target, 0, NULL, NULL);
	rc = cdp_rpc_unary(ch, M_UNARY, "x", 1, CALL_TIMEOUT, NULL, &code, &err);
	assert_err(&err, rc, -ENOTCONN, "UNAVAILABLE");
	assert_non_null(strstr(err.msg, target));
	assert_true(mono_ns() - t0 < CALL_TIMEOUT / 2);
	cdp_rpc_channel_free(ch);
}

static void test_server_and_channel_errors_name_the_culprit(void **state)
{
	struct env *e = *state;
	struct cdp_err err = CDP_ERR_INIT;
	char taken[64], missing[400];
	const char *addrs[2] = { "127.0.0.1:0", taken };
	struct cdp_rpc_server_opts o = { .listen = addrs, .n_listen = 2 };
	struct cdp_rpc_channel_opts co = { .target = "127.0.0.1:1" };

	/* The port the environment's server holds. */
	snprintf(taken, sizeof(taken), "%s", e->tcp_target);
	assert_null(cdp_rpc_server_new(&o, &err));
	assert_int_equal(err.code, -EADDRNOTAVAIL);
	assert_non_null(strstr(err.msg, taken));

	snprintf(missing, sizeof(missing), "%s/none.crt", e->dir);
	o.n_listen = 1;
	o.tls_ca = missing;
	assert_null(cdp_rpc_server_new(&o, &err));
	assert_non_null(strstr(err.msg, "(1 of 3 given)"));
	o.tls_cert = missing;
	o.tls_key = missing;
	assert_null(cdp_rpc_server_new(&o, &err));
	assert_int_equal(err.code, -ENOENT);
	assert_non_null(strstr(err.msg, missing));

	co.tls_ca = missing;
	assert_null(cdp_rpc_channel_new(&co, &err));
	assert_int_equal(err.code, -ENOENT);
	assert_non_null(strstr(err.msg, missing));
	co.tls_ca = NULL;
	co.max_message = (size_t)CDP_RPC_MAX_MESSAGE_LIMIT + 1;
	assert_null(cdp_rpc_channel_new(&co, &err));
	assert_non_null(strstr(err.msg, "127.0.0.1:1"));

	/* A server that never started stops and frees cleanly. */
	o = (struct cdp_rpc_server_opts){ .listen = addrs, .n_listen = 1 };
	struct cdp_rpc_server *idle = cdp_rpc_server_new(&o, &err);

	assert_non_null(idle);
	cdp_rpc_server_free(idle);
}

static void test_protobuf_messages_through_the_glue(void **state)
{
	struct env *e = *state;
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__CaptureHello hello = CDP__V1__CAPTURE_HELLO__INIT;
	Cdp__V1__CaptureDown *down;
	struct cdp_buf reply = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t buf[256];
	size_t n;

	hello.plan = "db01";
	hello.epoch = 7;
	hello.agent_id = "agent-db01";
	hello.acked_seq = 1000;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_HELLO;
	up.hello = &hello;
	n = cdp__v1__capture_up__pack(&up, buf);
	assert_int_equal(cdp_rpc_unary(e->uch, M_PROTO, buf, n, CALL_TIMEOUT, &reply, NULL, &err),
			 0);
	down = cdp__v1__capture_down__unpack(NULL, reply.len, reply.data);
	assert_non_null(down);
	assert_int_equal(down->msg_case, CDP__V1__CAPTURE_DOWN__MSG_WELCOME);
	assert_int_equal(down->welcome->plan_id, 42);
	assert_int_equal(down->welcome->epoch, 7);
	assert_int_equal(down->welcome->durable_seq, 1001);
	cdp__v1__capture_down__free_unpacked(down, NULL);
	/* Garbage in: INVALID_ARGUMENT, from -EBADMSG. */
	assert_err(&err, cdp_rpc_unary(e->uch, M_PROTO, "\xff\xff\xff", 3, CALL_TIMEOUT, &reply,
				       NULL, &err),
		   -EINVAL, "INVALID_ARGUMENT: expected a hello");
	cdp_buf_release(&reply);
}

static int have_openssl(void)
{
	return system("command -v openssl >/dev/null 2>&1") == 0;
}

static void test_mtls_identity_and_refusals(void **state)
{
	struct cdp_rpc_channel *ch;
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code;
	struct env *e;
	char out[256];
	int rc;

	if (!have_openssl())
		skip();
	e = env_new(true);

	/* The agent over TCP (the certificate has IP:127.0.0.1). */
	ch = channel(e->tcp_target, 0, e->certs, "agent-db01");
	unary_ok(ch, M_WHO, "", out, sizeof(out));
	assert_true(strncmp(out, "agent-db01 1 ipv4:127.0.0.1:", 28) == 0);
	cdp_rpc_channel_free(ch);
	/* The standby over the unix socket (server name: localhost by default). */
	ch = channel(e->unix_target, 0, e->certs, "standby-db01");
	unary_ok(ch, M_WHO, "", out, sizeof(out));
	assert_true(strncmp(out, "standby-db01 1 ", 15) == 0);
	cdp_rpc_channel_free(ch);
	assert_int_equal(st_get(&e->st, &e->st.requests), 2);

	/* Refused before any handler runs: a certificate from another CA, no
	 * client certificate, and plaintext. */
	ch = channel(e->tcp_target, 0, e->certs, "rogue");
	rc = cdp_rpc_unary(ch, M_WHO, "", 0, CALL_TIMEOUT, NULL, &code, &err);
	assert_int_equal(code, CDP_RPC_UNAVAILABLE);
	assert_err(&err, rc, -ENOTCONN, e->tcp_target);
	cdp_rpc_channel_free(ch);
	ch = channel(e->unix_target, 0, e->certs, NULL);
	rc = cdp_rpc_unary(ch, M_WHO, "", 0, CALL_TIMEOUT, NULL, &code, &err);
	assert_int_equal(code, CDP_RPC_UNAVAILABLE);
	cdp_rpc_channel_free(ch);
	ch = channel(e->tcp_target, 0, NULL, NULL);
	rc = cdp_rpc_unary(ch, M_WHO, "", 0, CALL_TIMEOUT, NULL, &code, &err);
	assert_int_equal(code, CDP_RPC_UNAVAILABLE);
	cdp_rpc_channel_free(ch);
	/* A client that trusts only the rogue CA refuses our server. */
	{
		char ca[400], cert[400], key[400];
		struct cdp_rpc_channel_opts o = { .target = e->tcp_target, .tls_ca = ca,
						  .tls_cert = cert, .tls_key = key };

		snprintf(ca, sizeof(ca), "%s/rogue-ca.crt", e->certs);
		snprintf(cert, sizeof(cert), "%s/rogue.crt", e->certs);
		snprintf(key, sizeof(key), "%s/rogue.key", e->certs);
		ch = cdp_rpc_channel_new(&o, &err);
		assert_non_null(ch);
		rc = cdp_rpc_unary(ch, M_WHO, "", 0, CALL_TIMEOUT, NULL, &code, &err);
		assert_int_equal(code, CDP_RPC_UNAVAILABLE);
		cdp_rpc_channel_free(ch);
	}
	assert_int_equal(st_get(&e->st, &e->st.requests), 2);

	/* Streams work over mTLS too. */
	ch = channel(e->tcp_target, 0, e->certs, "agent-db01");
	bidi_echo_many(e, ch, 500);
	cdp_rpc_channel_free(ch);
	env_free(e);
}

/* ------------------------------------------------------------------------ */
/* Throughput (test_rpc --bench)                                            */

static double bench_upload(struct env *e, struct cdp_rpc_channel *ch, unsigned mib)
{
	uint8_t *p = cdp_xmalloc(MIB);
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s;
	enum cdp_rpc_code code;
	int64_t t0;
	uint64_t base;

	memset(p, 0x5a, MIB);
	pthread_mutex_lock(&e->st.mu);
	base = e->st.sink_bytes;
	pthread_mutex_unlock(&e->st.mu);
	t0 = mono_ns();
	s = cdp_rpc_stream_open(ch, M_SINK, CDP_RPC_NO_DEADLINE, &err);
	for (unsigned i = 0; i < mib; i++)
		if (cdp_rpc_stream_send(s, p, MIB, CALL_TIMEOUT, &err))
			fail_msg("%s", err.msg);
	cdp_rpc_stream_close_send(s, CALL_TIMEOUT, &err);
	if (cdp_rpc_stream_status(s, CALL_TIMEOUT, &code, &err))
		fail_msg("%s", err.msg);
	cdp_rpc_stream_free(s);
	assert_int_equal(st_snap(&e->st).sink_bytes - base, (uint64_t)mib * MIB);
	free(p);
	return (double)mib * MIB / ((double)(mono_ns() - t0) / 1e9) / 1e6;
}

static double bench_download(struct cdp_rpc_channel *ch, unsigned mib)
{
	struct cdp_buf msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_stream *s;
	char req[64];
	uint64_t got = 0;
	int64_t t0 = mono_ns();

	snprintf(req, sizeof(req), "%u %u", mib, MIB);
	s = cdp_rpc_stream_open_request(ch, M_COUNT, req, strlen(req), CDP_RPC_NO_DEADLINE, &err);
	while (cdp_rpc_stream_recv(s, &msg, CALL_TIMEOUT, &err) == 1)
		got += msg.len;
	if (cdp_rpc_stream_status(s, CALL_TIMEOUT, NULL, &err))
		fail_msg("%s", err.msg);
	assert_int_equal(got, (uint64_t)mib * MIB);
	cdp_rpc_stream_free(s);
	cdp_buf_release(&msg);
	return (double)got / ((double)(mono_ns() - t0) / 1e9) / 1e6;
}

static unsigned bench_mib = 2048;

static void bench(void **state)
{
	struct env *e = env_new(false);
	struct env *t = have_openssl() ? env_new(true) : NULL;
	struct cdp_rpc_channel *tls = t ? channel(t->tcp_target, 0, t->certs, "agent-db01") : NULL;

	/* Warm up the connections, then measure. */
	bench_upload(e, e->uch, 16);
	bench_upload(e, e->tch, 16);
	printf("bench: 1 MiB messages, %u MiB per run\n", bench_mib);
	printf("bench: upload   (client stream -> server) unix %7.0f MB/s\n",
	       bench_upload(e, e->uch, bench_mib));
	printf("bench: upload   (client stream -> server) tcp  %7.0f MB/s\n",
	       bench_upload(e, e->tch, bench_mib));
	printf("bench: download (server stream -> client) unix %7.0f MB/s\n",
	       bench_download(e->uch, bench_mib));
	printf("bench: download (server stream -> client) tcp  %7.0f MB/s\n",
	       bench_download(e->tch, bench_mib));
	if (tls) {
		bench_upload(t, tls, 16);
		printf("bench: upload   (client stream -> server) mTLS %7.0f MB/s\n",
		       bench_upload(t, tls, bench_mib));
		printf("bench: download (server stream -> client) mTLS %7.0f MB/s\n",
		       bench_download(tls, bench_mib));
		cdp_rpc_channel_free(tls);
		env_free(t);
	}
	env_free(e);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_mapping_round_trips),
		cmocka_unit_test_setup_teardown(test_unary_echo_over_unix_and_tcp, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_unary_error_status_and_message_propagate,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_server_streaming_sends_n_then_ok, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_bidi_echo_send_and_recv_on_two_threads,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_large_messages_and_the_limit, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_send_parts_borrows_the_body, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_msg_pool_prefill_bounds_and_serves, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_pause_recv_holds_the_client_back, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_client_cancel_mid_stream_ends_server_call,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_client_process_death_ends_server_call,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_deadlines_and_recv_timeouts, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_stop_with_open_streams, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_unreachable_server_fails_fast, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_server_and_channel_errors_name_the_culprit,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_protobuf_messages_through_the_glue, env_setup,
						env_teardown),
		cmocka_unit_test(test_mtls_identity_and_refusals),
	};
	const struct CMUnitTest bench_tests[] = { cmocka_unit_test(bench) };
	int rc;

	/* TOOLCHAIN.md: large messages stream far faster with these. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	cdp_log_init("test_rpc");
	/* CDP_TEST_FILTER=test_pause* runs the matching tests only. */
	if (getenv("CDP_TEST_FILTER"))
		cmocka_set_test_filter(getenv("CDP_TEST_FILTER"));
	/* One gRPC reference for the whole run: no setup/teardown per test. */
	cdp_rpc_init();
	if (argc > 2 && strcmp(argv[1], "--die-mid-stream") == 0)
		return die_mid_stream(argv[2]);
	if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
		if (argc > 2)
			bench_mib = (unsigned)strtoul(argv[2], NULL, 10);
		rc = cmocka_run_group_tests(bench_tests, NULL, NULL);
	} else {
		rc = cmocka_run_group_tests(tests, NULL, NULL);
	}
	cdp_rpc_shutdown();
	return rc;
}
