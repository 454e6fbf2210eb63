/*
 * proto/rpc - the gRPC C core glue (API and rules in rpc.h).
 *
 * Design. The server has one completion queue of type NEXT and one thread,
 * "cq", that takes every event from it and runs the call state machines. Each
 * added method keeps exactly one pending grpc_server_request_registered_call
 * (re-armed when a call is accepted), and one generic grpc_server_request_call
 * catches methods nobody added (answered UNIMPLEMENTED), so no call waits
 * forever for a handler.
 *
 * A server call has three batch slots, each a tag in the call: t_close
 * (RECV_CLOSE_ON_SERVER, started at acceptance, completes when the call is
 * over), t_recv (one RECV_MESSAGE at a time) and t_send (one send batch at a
 * time: initial metadata with the first, then a message, with the status
 * appended to the batch carrying the last queued message, or alone). Sends and
 * finishes come from any thread: they append to the call's queue under its
 * mutex and, when no send batch is in flight, claim the slot (send_busy) and
 * start the batch themselves after unlocking (gRPC allows batches from any
 * thread); the cq thread starts the next one when a send completes. The
 * receive slot works the same way (recv_busy), so pause/resume from any thread
 * never puts two receives in flight. on_done runs on the cq thread once t_close
 * has completed and no receive is outstanding, so it is the last callback.
 *
 * Client calls use a completion queue of type PLUCK per call, with distinct
 * tags for send, receive and status: gRPC allows several threads to pluck
 * different tags from one queue, which is what lets one thread send while
 * another receives. A wait that times out leaves the operation (and its tag)
 * pending; the next wait on that slot plucks it.
 *
 * Invariants (server call): send_busy <=> a batch on t_send is in flight;
 * recv_busy <=> a batch on t_recv is in flight or the cq thread is dispatching
 * on_open/on_message; refs = 1 (until on_done returned) + batches in flight +
 * references held by callers; done => closed && !recv_busy.
 *
 * Threads: see rpc.h. Every field of a call that two threads touch is guarded
 * by call->mu, including ones gRPC hands over through its own (uninstrumented)
 * synchronisation, so the sanitizers see every hand-off. No lock is held while
 * calling a handler or waiting for gRPC.
 */
#include "proto/rpc.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "common/log.h"
#include "common/util.h"

/* Our enum is the wire code: keep it in step with gRPC's. */
_Static_assert(CDP_RPC_OK == (int)GRPC_STATUS_OK, "status");
_Static_assert(CDP_RPC_CANCELLED == (int)GRPC_STATUS_CANCELLED, "status");
_Static_assert(CDP_RPC_INVALID_ARGUMENT == (int)GRPC_STATUS_INVALID_ARGUMENT, "status");
_Static_assert(CDP_RPC_DEADLINE_EXCEEDED == (int)GRPC_STATUS_DEADLINE_EXCEEDED, "status");
_Static_assert(CDP_RPC_NOT_FOUND == (int)GRPC_STATUS_NOT_FOUND, "status");
_Static_assert(CDP_RPC_RESOURCE_EXHAUSTED == (int)GRPC_STATUS_RESOURCE_EXHAUSTED, "status");
_Static_assert(CDP_RPC_FAILED_PRECONDITION == (int)GRPC_STATUS_FAILED_PRECONDITION, "status");
_Static_assert(CDP_RPC_OUT_OF_RANGE == (int)GRPC_STATUS_OUT_OF_RANGE, "status");
_Static_assert(CDP_RPC_UNIMPLEMENTED == (int)GRPC_STATUS_UNIMPLEMENTED, "status");
_Static_assert(CDP_RPC_UNAVAILABLE == (int)GRPC_STATUS_UNAVAILABLE, "status");
_Static_assert(CDP_RPC_UNAUTHENTICATED == (int)GRPC_STATUS_UNAUTHENTICATED, "status");

#define PEM_MAX (1u << 20)	/* a CA bundle, certificate or key file */
#define PEER_MAX 128
#define IDENTITY_MAX 128

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */

enum cdp_rpc_code cdp_rpc_code_from_errno(int neg_errno)
{
	switch (neg_errno) {
	case 0:
		return CDP_RPC_OK;
	case -EINVAL:
	case -EBADMSG:
		return CDP_RPC_INVALID_ARGUMENT;
	case -ENOENT:
		return CDP_RPC_NOT_FOUND;
	case -EEXIST:
		return CDP_RPC_ALREADY_EXISTS;
	case -EPERM:
	case -EACCES:
		return CDP_RPC_PERMISSION_DENIED;
	case -ESTALE:
		return CDP_RPC_FAILED_PRECONDITION;
	case -EPROTO:
		return CDP_RPC_OUT_OF_RANGE;
	case -ENOSPC:
	case -ENOMEM:
	case -EMSGSIZE:
		return CDP_RPC_RESOURCE_EXHAUSTED;
	case -ETIMEDOUT:
		return CDP_RPC_DEADLINE_EXCEEDED;
	case -ECANCELED:
		return CDP_RPC_CANCELLED;
	case -ENOSYS:
	case -EOPNOTSUPP:
		return CDP_RPC_UNIMPLEMENTED;
	case -ECONNABORTED:
		return CDP_RPC_ABORTED;
	case -EAGAIN:
	case -EBUSY:
	case -ENOTCONN:
	case -ECONNREFUSED:
	case -ECONNRESET:
	case -EPIPE:
	case -ESHUTDOWN:
		return CDP_RPC_UNAVAILABLE;
	default:
		return CDP_RPC_INTERNAL;
	}
}

int cdp_rpc_errno_from_code(enum cdp_rpc_code code)
{
	switch (code) {
	case CDP_RPC_OK:
		return 0;
	case CDP_RPC_CANCELLED:
		return -ECANCELED;
	case CDP_RPC_INVALID_ARGUMENT:
		return -EINVAL;
	case CDP_RPC_DEADLINE_EXCEEDED:
		return -ETIMEDOUT;
	case CDP_RPC_NOT_FOUND:
		return -ENOENT;
	case CDP_RPC_ALREADY_EXISTS:
		return -EEXIST;
	case CDP_RPC_PERMISSION_DENIED:
	case CDP_RPC_UNAUTHENTICATED:
		return -EACCES;
	case CDP_RPC_RESOURCE_EXHAUSTED:
		return -ENOSPC;
	case CDP_RPC_FAILED_PRECONDITION:
		return -ESTALE;
	case CDP_RPC_ABORTED:
		return -ECONNABORTED;
	case CDP_RPC_OUT_OF_RANGE:
		return -EPROTO;
	case CDP_RPC_UNIMPLEMENTED:
		return -ENOSYS;
	case CDP_RPC_UNAVAILABLE:
		return -ENOTCONN;
	case CDP_RPC_DATA_LOSS:
		return -EBADMSG;
	case CDP_RPC_UNKNOWN:
	case CDP_RPC_INTERNAL:
	default:
		return -EIO;
	}
}

const char *cdp_rpc_code_name(int code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};

	if (code >= 0 && (size_t)code < CDP_ARRAY_SIZE(names))
		return names[code];
	return "UNKNOWN_CODE";
}

/* ------------------------------------------------------------------------ */
/* Library init, logging, time, files                                       */

/*
 * gRPC's own error lines (a failed TLS handshake, a refused connection) become
 * rate-limited warnings: a misconfigured or hostile peer that retries in a
 * loop must not flood the log.
 */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cdp_ratelimit log_rl = { .interval_ns = 10 * INT64_C(1000000000), .burst = 10 };

static int64_t mono_ns(void);

static void grpc_log_to_cdp(gpr_log_func_args *a)
{
	const char *file = a->file ? strrchr(a->file, '/') : NULL;
	unsigned suppressed = 0;
	int64_t now;
	bool ok;

	file = file ? file + 1 : (a->file ? a->file : "?");
	if (a->severity != GPR_LOG_SEVERITY_ERROR) {
		cdp_log_debug("rpc", "grpc: %s:%d: %s", file, a->line, a->message);
		return;
	}
	now = mono_ns();
	pthread_mutex_lock(&log_mu);
	if (log_rl.window_start && now - log_rl.window_start >= log_rl.interval_ns)
		suppressed = log_rl.suppressed;
	ok = cdp_ratelimit_ok(&log_rl, now);
	pthread_mutex_unlock(&log_mu);
	if (suppressed)
		cdp_log_warn("grpc: %u similar lines suppressed", suppressed);
	if (ok)
		cdp_log_warn("grpc: %s:%d: %s", file, a->line, a->message);
}

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_setup(void)
{
	gpr_set_log_function(grpc_log_to_cdp);
	gpr_set_log_verbosity(cdp_log_debug_enabled("rpc") ? GPR_LOG_SEVERITY_DEBUG :
							       GPR_LOG_SEVERITY_ERROR);
}

void cdp_rpc_init(void)
{
	pthread_once(&log_once, log_setup);
	grpc_init();
}

void cdp_rpc_shutdown(void)
{
	grpc_shutdown();
}

/* A deadline @ns from now on the monotonic clock; CDP_RPC_NO_DEADLINE: infinite. */
static gpr_timespec deadline_in(int64_t ns)
{
	assert(ns >= 0);
	if (ns == CDP_RPC_NO_DEADLINE)
		return gpr_inf_future(GPR_CLOCK_MONOTONIC);
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(ns, GPR_TIMESPAN));
}

static gpr_timespec deadline_plus(gpr_timespec d, int64_t ns)
{
	return gpr_time_add(d, gpr_time_from_nanos(ns, GPR_TIMESPAN));
}

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* An absolute CLOCK_MONOTONIC timespec @ns from now (for pthread_cond_timedwait). */
static struct timespec abs_in(int64_t ns)
{
	struct timespec ts;
	int64_t now = mono_ns(), until;

	if (__builtin_add_overflow(now, ns, &until) || until > INT64_MAX / 2)
		until = INT64_MAX / 2;
	ts.tv_sec = until / 1000000000;
	ts.tv_nsec = until % 1000000000;
	return ts;
}

static void cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

/* Reads PEM file @path (what: "CA", "certificate", "key") into a new string. */
static char *read_pem(const char *path, const char *what, struct cdp_err *err)
{
	FILE *f = fopen(path, "re");
	struct stat st;
	char *s = NULL;
	size_t n;

	if (!f) {
		cdp_err_sys(err, -errno, "TLS %s file %s", what, path);
		return NULL;
	}
	if (fstat(fileno(f), &st) < 0) {
		cdp_err_sys(err, -errno, "TLS %s file %s", what, path);
		goto out;
	}
	if (st.st_size <= 0 || (uint64_t)st.st_size > PEM_MAX) {
		cdp_err_set(err, -EINVAL, "TLS %s file %s: size %lld, expected 1..%u bytes", what,
			    path, (long long)st.st_size, PEM_MAX);
		goto out;
	}
	s = cdp_xmalloc((size_t)st.st_size + 1);
	n = fread(s, 1, (size_t)st.st_size, f);
	s[n] = '\0';
	if (n != (size_t)st.st_size || !strstr(s, "-----BEGIN ")) {
		cdp_err_set(err, -EINVAL, "TLS %s file %s: not PEM (read %zu of %lld bytes)", what,
			    path, n, (long long)st.st_size);
		free(s);
		s = NULL;
	}
out:
	fclose(f);
	return s;
}

/* ------------------------------------------------------------------------ */
/* Channel arguments and byte buffers                                       */

#define MAX_ARGS 16

struct args {
	grpc_arg a[MAX_ARGS];
	size_t n;
};

static void arg_int(struct args *a, const char *key, int v)
{
	assert(a->n < MAX_ARGS);
	a->a[a->n].type = GRPC_ARG_INTEGER;
	a->a[a->n].key = (char *)key;
	a->a[a->n].value.integer = v;
	a->n++;
}

static void arg_str(struct args *a, const char *key, const char *v)
{
	assert(a->n < MAX_ARGS);
	a->a[a->n].type = GRPC_ARG_STRING;
	a->a[a->n].key = (char *)key;
	a->a[a->n].value.string = (char *)v;
	a->n++;
}

/* What both sides set: message limits and keepalive. */
static void args_common(struct args *a, size_t max_message)
{
	arg_int(a, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (int)max_message);
	arg_int(a, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, (int)max_message);
	arg_int(a, GRPC_ARG_KEEPALIVE_TIME_MS, CDP_RPC_KEEPALIVE_MS);
	arg_int(a, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, CDP_RPC_KEEPALIVE_TIMEOUT_MS);
	/* Keep pinging a stream that carries no data for a while. */
	arg_int(a, GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

static int check_max_message(size_t *max, struct cdp_err *err)
{
	if (*max == 0)
		*max = CDP_RPC_DEFAULT_MAX_MESSAGE;
	if (*max > CDP_RPC_MAX_MESSAGE_LIMIT)
		return cdp_err_set(err, -EINVAL, "max message %zu bytes > limit %u", *max,
				   CDP_RPC_MAX_MESSAGE_LIMIT);
	return 0;
}

static grpc_byte_buffer *bb_from_slice(grpc_slice s)
{
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

	grpc_slice_unref(s);
	return bb;
}

static grpc_byte_buffer *bb_copy(const void *p, size_t len)
{
	grpc_slice s = grpc_slice_malloc(len);

	if (len)
		memcpy(GRPC_SLICE_START_PTR(s), p, len);
	return bb_from_slice(s);
}

static grpc_byte_buffer *bb_take(void *p, size_t len)
{
	if (!len) {
		free(p);
		return bb_copy(NULL, 0);
	}
	return bb_from_slice(grpc_slice_new(p, len, free));
}

/* ---- buffers handed to on_message_take ---------------------------------- */

/*
 * Each buffer starts with its capacity; the caller sees the bytes after it.
 * Large ones are sized in whole MiB and kept in a small pool when released:
 * on this kind of machine first-touching fresh pages costs more than the
 * copy itself (docs/performance.md), and a stream of 4 MiB segments would
 * otherwise fault in every buffer anew.
 */
#define MSG_HDR 16		/* keeps the bytes 16-byte aligned */
#define MSG_POOL_MIN (1u << 20)
#define MSG_POOL_SLOTS 64

static struct {
	pthread_mutex_t mu;
	uint8_t *slot[MSG_POOL_SLOTS];	/* headers of idle buffers */
	size_t n;
	size_t idle_bytes;
} msg_pool = { .mu = PTHREAD_MUTEX_INITIALIZER };

static size_t msg_cap(const uint8_t *hdr)
{
	size_t cap;

	memcpy(&cap, hdr, sizeof(cap));
	return cap;
}

static uint8_t *msg_alloc(size_t len)
{
	size_t cap = len ? len : 1;
	uint8_t *hdr = NULL;

	if (len >= MSG_POOL_MIN) {
		cap = (len + MSG_POOL_MIN - 1) & ~(size_t)(MSG_POOL_MIN - 1);
		pthread_mutex_lock(&msg_pool.mu);
		for (size_t i = 0; i < msg_pool.n; i++) {
			size_t c = msg_cap(msg_pool.slot[i]);

			if (c >= len) {
				hdr = msg_pool.slot[i];
				msg_pool.slot[i] = msg_pool.slot[--msg_pool.n];
				msg_pool.idle_bytes -= c;
				break;
			}
		}
		pthread_mutex_unlock(&msg_pool.mu);
		if (hdr)
			return hdr + MSG_HDR;
	}
	hdr = cdp_xmalloc(MSG_HDR + cap);
	memcpy(hdr, &cap, sizeof(cap));
	return hdr + MSG_HDR;
}

void cdp_rpc_msg_free(uint8_t *msg)
{
	uint8_t *hdr;
	size_t cap;

	if (!msg)
		return;
	hdr = msg - MSG_HDR;
	cap = msg_cap(hdr);
	if (cap >= MSG_POOL_MIN) {
		pthread_mutex_lock(&msg_pool.mu);
		if (msg_pool.n < MSG_POOL_SLOTS && msg_pool.idle_bytes + cap <= CDP_RPC_MSG_POOL_MAX) {
			msg_pool.slot[msg_pool.n++] = hdr;
			msg_pool.idle_bytes += cap;
			hdr = NULL;
		}
		pthread_mutex_unlock(&msg_pool.mu);
	}
	free(hdr);
}

/* Faults in [p, p + len): one madvise() when the kernel has it (5.14+), else a write per page. */
static void prefault(uint8_t *p, size_t len)
{
	long page = sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);

#ifdef MADV_POPULATE_WRITE
	if (a < (uintptr_t)p + len &&
	    !madvise((void *)a, ((uintptr_t)p + len - a) & ~((uintptr_t)page - 1),
		     MADV_POPULATE_WRITE))
		return;
#endif
	for (size_t i = 0; i < len; i += (size_t)page)
		((volatile uint8_t *)p)[i] = 0;
}

size_t cdp_rpc_msg_pool_prefill(size_t len, size_t bytes)
{
	size_t cap = (CDP_MAX(len, MSG_POOL_MIN) + MSG_POOL_MIN - 1) & ~(size_t)(MSG_POOL_MIN - 1);
	size_t added = 0;

	bytes = CDP_MIN(bytes, (size_t)CDP_RPC_MSG_POOL_MAX);
	for (;;) {
		uint8_t *hdr;
		bool full;

		pthread_mutex_lock(&msg_pool.mu);
		full = msg_pool.n == MSG_POOL_SLOTS || msg_pool.idle_bytes + cap > bytes;
		pthread_mutex_unlock(&msg_pool.mu);
		if (full)
			break;
		hdr = cdp_xmalloc(MSG_HDR + cap);
		memcpy(hdr, &cap, sizeof(cap));
		prefault(hdr, MSG_HDR + cap);
		cdp_rpc_msg_free(hdr + MSG_HDR);
		added += cap;
	}
	return added;
}

/* Frees the idle pool at exit, so leak checkers see only real leaks. */
__attribute__((destructor)) static void msg_pool_drain(void)
{
	pthread_mutex_lock(&msg_pool.mu);
	while (msg_pool.n)
		free(msg_pool.slot[--msg_pool.n]);
	msg_pool.idle_bytes = 0;
	pthread_mutex_unlock(&msg_pool.mu);
}

/* A received message as one run of bytes: borrowed from a single slice, or copied. */
struct flat {
	const uint8_t *p;
	size_t len;
	uint8_t *owned;
};

static int bb_flatten(grpc_byte_buffer *bb, struct flat *f)
{
	grpc_byte_buffer_reader r;
	grpc_slice s;
	size_t off = 0;

	memset(f, 0, sizeof(*f));
	if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
	    bb->data.raw.slice_buffer.count == 1) {
		/* Point into the buffer's own slice: a small slice keeps its
		 * bytes inline, so a copy of the struct would not do. */
		grpc_slice *one = &bb->data.raw.slice_buffer.slices[0];

		f->p = GRPC_SLICE_START_PTR(*one);
		f->len = GRPC_SLICE_LENGTH(*one);
		return 0;
	}
	if (!grpc_byte_buffer_reader_init(&r, bb))
		return -EBADMSG;
	f->len = grpc_byte_buffer_length(bb);
	f->owned = cdp_xmalloc(f->len ? f->len : 1);
	while (grpc_byte_buffer_reader_next(&r, &s)) {
		size_t n = GRPC_SLICE_LENGTH(s);

		if (n > f->len - off) {
			grpc_slice_unref(s);
			grpc_byte_buffer_reader_destroy(&r);
			free(f->owned);
			f->owned = NULL;
			return -EBADMSG;
		}
		memcpy(f->owned + off, GRPC_SLICE_START_PTR(s), n);
		off += n;
		grpc_slice_unref(s);
	}
	grpc_byte_buffer_reader_destroy(&r);
	f->len = off;
	f->p = f->owned;
	return 0;
}

/* The message in a pooled buffer (for on_message_take), copied once from its slices. */
static uint8_t *bb_to_msg(grpc_byte_buffer *bb, size_t *len)
{
	grpc_byte_buffer_reader r;
	grpc_slice sl;
	size_t off = 0, total = grpc_byte_buffer_length(bb);
	uint8_t *msg;

	if (!grpc_byte_buffer_reader_init(&r, bb))
		return NULL;
	msg = msg_alloc(total);
	while (grpc_byte_buffer_reader_next(&r, &sl)) {
		size_t n = GRPC_SLICE_LENGTH(sl);

		if (n > total - off) {	/* decompressed past the announced length */
			grpc_slice_unref(sl);
			grpc_byte_buffer_reader_destroy(&r);
			cdp_rpc_msg_free(msg);
			return NULL;
		}
		memcpy(msg + off, GRPC_SLICE_START_PTR(sl), n);
		off += n;
		grpc_slice_unref(sl);
	}
	grpc_byte_buffer_reader_destroy(&r);
	*len = off;
	return msg;
}

static int bb_to_buf(grpc_byte_buffer *bb, struct cdp_buf *out)
{
	struct flat f;
	int rc = bb_flatten(bb, &f);

	cdp_buf_reset(out);
	if (rc < 0)
		return rc;
	cdp_buf_append(out, f.p, f.len);
	free(f.owned);
	return 0;
}

/* A NUL-terminated copy of a gRPC slice, truncated to @size. */
static void slice_to(grpc_slice s, char *buf, size_t size)
{
	size_t n = CDP_MIN(GRPC_SLICE_LENGTH(s), size - 1);

	memcpy(buf, GRPC_SLICE_START_PTR(s), n);
	buf[n] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Server                                                                   */

enum tag_kind { TAG_NEW, TAG_RECV, TAG_SEND, TAG_CLOSE, TAG_SHUTDOWN };

struct tag {
	enum tag_kind kind;
	struct cdp_rpc_call *call;
};

/* The generic catch-all "method" (unregistered names) has kind GENERIC. */
#define KIND_GENERIC ((enum cdp_rpc_kind)100)

struct method {
	struct method *next;
	struct cdp_rpc_server *srv;
	char *name;
	enum cdp_rpc_kind kind;
	struct cdp_rpc_handlers h;
	void *arg;
	void *reg;		/* grpc_server_register_method() handle */
};

struct sendmsg {
	struct sendmsg *next;
	grpc_byte_buffer *bb;
	size_t len;
};

struct cdp_rpc_call {
	struct cdp_rpc_server *srv;
	struct method *m;
	grpc_call *gc;
	struct tag t_new, t_recv, t_send, t_close;
	atomic_int refs;
	_Atomic(void *) user;
	bool accepted;		/* counted in srv->live_calls */

	/* Filled by gRPC at acceptance, then read-only (cq thread sets them
	 * before any other thread can see the call). */
	gpr_timespec deadline;
	grpc_metadata_array req_md;
	grpc_byte_buffer *payload;
	grpc_call_details details;	/* generic calls only */
	char *method_name;		/* generic calls: the requested name */
	char peer[PEER_MAX];
	char identity[IDENTITY_MAX];
	bool authenticated;
	bool silent;		/* no callbacks: unimplemented, or accepted while stopping */

	/* cq thread only (gRPC writes them, the cq thread reads them) */
	grpc_byte_buffer *recv_bb;
	int close_cancelled;

	pthread_mutex_t mu;
	pthread_cond_t cond;	/* send queue shrank, or the call ended */
	/* guarded by mu */
	struct sendmsg *sq_head, **sq_tail;
	size_t sq_bytes;	/* queued + in flight */
	size_t sq_msgs;
	grpc_byte_buffer *inflight_bb;
	size_t inflight_len;
	bool send_busy;
	bool send_failed;
	bool md_sent;
	bool finish_req;
	bool status_sent;
	enum cdp_rpc_code finish_code;
	char *finish_msg;
	bool paused;
	bool recv_busy;
	bool half_closed;
	bool closed;
	bool done;
};

struct cdp_rpc_server {
	grpc_server *gs;
	grpc_completion_queue *cq;
	size_t max_message;
	size_t n_listen;
	char **listen;
	int *ports;
	bool tls;
	struct method *methods;
	struct method generic;
	struct tag t_shutdown;
	atomic_size_t live_calls;
	pthread_t thread;

	pthread_mutex_t mu;
	pthread_cond_t cond;	/* drained changed */
	/* guarded by mu */
	bool started;
	bool has_thread;	/* the cq thread runs (else stop() drains inline) */
	bool stopping;
	bool drained;		/* the cq reached GRPC_QUEUE_SHUTDOWN */
	bool joined;
	bool shut_down;		/* stop() has completed */
	pthread_t cq_tid;
	bool cq_tid_set;
};

static void call_free(struct cdp_rpc_call *c)
{
	grpc_call *gc = c->gc;
	struct sendmsg *sm;

	while ((sm = c->sq_head)) {
		c->sq_head = sm->next;
		grpc_byte_buffer_destroy(sm->bb);
		free(sm);
	}
	if (c->inflight_bb)
		grpc_byte_buffer_destroy(c->inflight_bb);
	if (c->payload)
		grpc_byte_buffer_destroy(c->payload);
	if (c->recv_bb)
		grpc_byte_buffer_destroy(c->recv_bb);
	grpc_metadata_array_destroy(&c->req_md);
	if (c->m->kind == KIND_GENERIC)
		grpc_call_details_destroy(&c->details);
	free(c->method_name);
	free(c->finish_msg);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cond);
	if (c->accepted)
		atomic_fetch_sub(&c->srv->live_calls, 1);
	free(c);
	/* Last: with the last call gone the server's shutdown can complete, and
	 * the server be freed, so nothing here may touch it afterwards. */
	if (gc)
		grpc_call_unref(gc);
}

void cdp_rpc_call_ref(struct cdp_rpc_call *c)
{
	int old = atomic_fetch_add(&c->refs, 1);

	assert(old > 0);
	(void)old;
}

void cdp_rpc_call_unref(struct cdp_rpc_call *c)
{
	int old = atomic_fetch_sub(&c->refs, 1);

	assert(old > 0);
	if (old == 1)
		call_free(c);
}

static bool on_cq_thread(struct cdp_rpc_server *srv)
{
	bool r;

	pthread_mutex_lock(&srv->mu);
	r = srv->cq_tid_set && pthread_equal(srv->cq_tid, pthread_self());
	pthread_mutex_unlock(&srv->mu);
	return r;
}

/* ---- sending ---- */

struct send_batch {
	grpc_op ops[3];
	size_t n;
	grpc_slice details;
	bool has_details;
};

/*
 * Under c->mu: claims the send slot for the next batch, if one is due. The
 * caller starts it with start_send() after unlocking.
 */
static bool claim_send_locked(struct cdp_rpc_call *c, struct send_batch *b)
{
	struct sendmsg *sm = c->sq_head;
	grpc_op *op;

	if (c->send_busy || c->closed || c->send_failed || c->status_sent)
		return false;
	if (!sm && !c->finish_req)
		return false;
	memset(b, 0, sizeof(*b));
	if (!c->md_sent) {
		op = &b->ops[b->n++];
		op->op = GRPC_OP_SEND_INITIAL_METADATA;
		c->md_sent = true;
	}
	if (sm) {
		c->sq_head = sm->next;
		if (!c->sq_head)
			c->sq_tail = &c->sq_head;
		c->inflight_bb = sm->bb;
		c->inflight_len = sm->len;
		op = &b->ops[b->n++];
		op->op = GRPC_OP_SEND_MESSAGE;
		op->data.send_message.send_message = sm->bb;
		free(sm);
	}
	if (c->finish_req && !c->sq_head) {
		op = &b->ops[b->n++];
		op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
		op->data.send_status_from_server.status = (grpc_status_code)c->finish_code;
		if (c->finish_msg && *c->finish_msg) {
			b->details = grpc_slice_from_copied_string(c->finish_msg);
			b->has_details = true;
			op->data.send_status_from_server.status_details = &b->details;
		}
		c->status_sent = true;
	}
	c->send_busy = true;
	cdp_rpc_call_ref(c);	/* the batch's */
	return true;
}

static void start_send(struct cdp_rpc_call *c, struct send_batch *b)
{
	grpc_call_error e = grpc_call_start_batch(c->gc, b->ops, b->n, &c->t_send, NULL);

	if (b->has_details)
		grpc_slice_unref(b->details);
	if (e == GRPC_CALL_OK)
		return;
	/* Our bug, or a call gRPC already considers over: end it. */
	cdp_log_err("rpc %s: start send batch: %s", c->m->name, grpc_call_error_to_string(e));
	pthread_mutex_lock(&c->mu);
	c->send_busy = false;
	c->send_failed = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	grpc_call_cancel(c->gc, NULL);
	cdp_rpc_call_unref(c);
}

static int send_bb(struct cdp_rpc_call *c, grpc_byte_buffer *bb, size_t len, bool finish)
{
	struct sendmsg *sm = cdp_xmalloc(sizeof(*sm));
	struct send_batch b;
	bool go = false;
	int rc = 0;

	sm->next = NULL;
	sm->bb = bb;
	sm->len = len;
	pthread_mutex_lock(&c->mu);
	if (c->closed || c->send_failed) {
		rc = -ECANCELED;
	} else if (c->finish_req) {
		rc = -EALREADY;
	} else {
		*c->sq_tail = sm;
		c->sq_tail = &sm->next;
		c->sq_bytes += len;
		c->sq_msgs++;
		if (finish) {
			c->finish_req = true;
			c->finish_code = CDP_RPC_OK;
		}
		go = claim_send_locked(c, &b);
	}
	pthread_mutex_unlock(&c->mu);
	if (rc < 0) {
		grpc_byte_buffer_destroy(bb);
		free(sm);
		return rc;
	}
	if (go)
		start_send(c, &b);
	return 0;
}

int cdp_rpc_call_send(struct cdp_rpc_call *c, const void *msg, size_t len)
{
	if (len > c->srv->max_message)
		return -EMSGSIZE;
	return send_bb(c, bb_copy(msg, len), len, false);
}

int cdp_rpc_call_send_take(struct cdp_rpc_call *c, void *msg, size_t len)
{
	if (len > c->srv->max_message) {
		free(msg);
		return -EMSGSIZE;
	}
	return send_bb(c, bb_take(msg, len), len, false);
}

int cdp_rpc_call_reply(struct cdp_rpc_call *c, const void *msg, size_t len)
{
	if (len > c->srv->max_message)
		return -EMSGSIZE;
	return send_bb(c, bb_copy(msg, len), len, true);
}

int cdp_rpc_call_finish(struct cdp_rpc_call *c, enum cdp_rpc_code code, const char *msg)
{
	struct send_batch b;
	bool go = false;
	int rc = 0;

	pthread_mutex_lock(&c->mu);
	if (c->closed || c->send_failed) {
		rc = -ECANCELED;
	} else if (c->finish_req) {
		rc = -EALREADY;
	} else {
		c->finish_req = true;
		c->finish_code = code;
		c->finish_msg = msg && *msg ? cdp_xstrdup(msg) : NULL;
		go = claim_send_locked(c, &b);
	}
	pthread_mutex_unlock(&c->mu);
	if (go)
		start_send(c, &b);
	return rc;
}

int cdp_rpc_call_finish_err(struct cdp_rpc_call *c, const struct cdp_err *err)
{
	return cdp_rpc_call_finish(c, cdp_rpc_code_from_errno(err->code), err->msg);
}

void cdp_rpc_call_send_queued(struct cdp_rpc_call *c, size_t *bytes, size_t *msgs)
{
	pthread_mutex_lock(&c->mu);
	if (bytes)
		*bytes = c->sq_bytes;
	if (msgs)
		*msgs = c->sq_msgs;
	pthread_mutex_unlock(&c->mu);
}

int cdp_rpc_call_wait_send_below(struct cdp_rpc_call *c, size_t max_bytes, int64_t timeout_ns)
{
	struct timespec until;
	int rc = 0;

	assert(timeout_ns >= 0);
	if (on_cq_thread(c->srv))
		return -EDEADLK;
	until = abs_in(timeout_ns);
	pthread_mutex_lock(&c->mu);
	for (;;) {
		if (c->closed || c->send_failed) {
			rc = -ECANCELED;
			break;
		}
		if (c->sq_bytes <= max_bytes)
			break;
		if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT) {
			rc = c->sq_bytes <= max_bytes ? 0 : -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* cq thread: a send batch completed. */
static void send_done(struct cdp_rpc_call *c, bool ok)
{
	grpc_byte_buffer *bb;
	struct send_batch b;
	bool go;

	pthread_mutex_lock(&c->mu);
	bb = c->inflight_bb;
	c->inflight_bb = NULL;
	if (bb) {
		c->sq_bytes -= c->inflight_len;
		c->sq_msgs--;
	}
	c->send_busy = false;
	if (!ok)
		c->send_failed = true;	/* the call is dying; t_close will tell */
	go = claim_send_locked(c, &b);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	if (bb)
		grpc_byte_buffer_destroy(bb);
	if (go)
		start_send(c, &b);
	cdp_rpc_call_unref(c);
}

/* ---- receiving ---- */

static bool can_recv_locked(struct cdp_rpc_call *c)
{
	return c->m->kind == CDP_RPC_BIDI_STREAMING && !c->silent && !c->paused && !c->closed &&
	       !c->half_closed && !c->finish_req && !c->send_failed;
}

/* Starts a receive; the caller set recv_busy and took the batch's reference. */
static void start_recv(struct cdp_rpc_call *c)
{
	grpc_op op;
	grpc_call_error e;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &c->recv_bb;
	e = grpc_call_start_batch(c->gc, &op, 1, &c->t_recv, NULL);
	if (e == GRPC_CALL_OK)
		return;
	cdp_log_err("rpc %s: start receive batch: %s", c->m->name, grpc_call_error_to_string(e));
	pthread_mutex_lock(&c->mu);
	c->recv_busy = false;
	pthread_mutex_unlock(&c->mu);
	grpc_call_cancel(c->gc, NULL);
	cdp_rpc_call_unref(c);
}

void cdp_rpc_call_pause_recv(struct cdp_rpc_call *c)
{
	pthread_mutex_lock(&c->mu);
	c->paused = true;
	pthread_mutex_unlock(&c->mu);
}

void cdp_rpc_call_resume_recv(struct cdp_rpc_call *c)
{
	bool go = false;

	pthread_mutex_lock(&c->mu);
	c->paused = false;
	if (!c->recv_busy && can_recv_locked(c)) {
		c->recv_busy = true;
		cdp_rpc_call_ref(c);
		go = true;
	}
	pthread_mutex_unlock(&c->mu);
	if (go)
		start_recv(c);
}

static void maybe_done(struct cdp_rpc_call *c);

/*
 * cq thread, after dispatching on_open/on_message (recv_busy held): starts the
 * next receive if due, else releases the slot.
 */
static void recv_next(struct cdp_rpc_call *c)
{
	bool go;

	pthread_mutex_lock(&c->mu);
	go = can_recv_locked(c);
	if (go)
		cdp_rpc_call_ref(c);
	else
		c->recv_busy = false;
	pthread_mutex_unlock(&c->mu);
	if (go)
		start_recv(c);
	else
		maybe_done(c);
}

/* cq thread: a receive completed. */
static void recv_done(struct cdp_rpc_call *c, bool ok)
{
	grpc_byte_buffer *bb = c->recv_bb;
	struct method *m = c->m;
	struct flat f;

	c->recv_bb = NULL;
	if (!ok || !bb) {
		if (bb)
			grpc_byte_buffer_destroy(bb);
		pthread_mutex_lock(&c->mu);
		c->recv_busy = false;
		if (ok)
			c->half_closed = true;
		pthread_mutex_unlock(&c->mu);
		if (ok && m->h.on_half_close)
			m->h.on_half_close(c, m->arg);
		maybe_done(c);
		cdp_rpc_call_unref(c);
		return;
	}
	if (!m->h.on_message_take && bb_flatten(bb, &f) < 0) {
		grpc_byte_buffer_destroy(bb);
		cdp_rpc_call_finish(c, CDP_RPC_INTERNAL, "unreadable message buffer");
	} else if (m->h.on_message_take) {
		size_t len;
		uint8_t *own = bb_to_msg(bb, &len);

		grpc_byte_buffer_destroy(bb);
		if (own)
			m->h.on_message_take(c, own, len, m->arg);
		else
			cdp_rpc_call_finish(c, CDP_RPC_INTERNAL, "unreadable message buffer");
	} else {
		m->h.on_message(c, f.p, f.len, m->arg);
		free(f.owned);
		grpc_byte_buffer_destroy(bb);
	}
	recv_next(c);
	cdp_rpc_call_unref(c);
}

/* ---- the end of a call ---- */

/* cq thread: delivers on_done once the call is over and nothing is receiving. */
static void maybe_done(struct cdp_rpc_call *c)
{
	enum cdp_rpc_code code;
	bool cancelled;

	pthread_mutex_lock(&c->mu);
	if (!c->closed || c->recv_busy || c->done) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	c->done = true;
	cancelled = c->close_cancelled || !c->status_sent;
	code = cancelled ? CDP_RPC_CANCELLED : c->finish_code;
	pthread_mutex_unlock(&c->mu);
	if (!c->silent && c->m->h.on_done)
		c->m->h.on_done(c, code, cancelled, c->m->arg);
	cdp_rpc_call_unref(c);	/* the glue's own reference */
}

/* cq thread: RECV_CLOSE_ON_SERVER completed: the call is over. */
static void close_done(struct cdp_rpc_call *c)
{
	struct sendmsg *list, *sm;

	pthread_mutex_lock(&c->mu);
	c->closed = true;
	list = c->sq_head;
	for (sm = list; sm; sm = sm->next) {
		c->sq_bytes -= sm->len;
		c->sq_msgs--;
	}
	c->sq_head = NULL;
	c->sq_tail = &c->sq_head;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	while ((sm = list)) {
		list = sm->next;
		grpc_byte_buffer_destroy(sm->bb);
		free(sm);
	}
	maybe_done(c);
	cdp_rpc_call_unref(c);
}

/* ---- accepting ---- */

static struct cdp_rpc_call *call_alloc(struct method *m)
{
	struct cdp_rpc_call *c = cdp_xcalloc(1, sizeof(*c));

	c->srv = m->srv;
	c->m = m;
	c->t_new = (struct tag){ TAG_NEW, c };
	c->t_recv = (struct tag){ TAG_RECV, c };
	c->t_send = (struct tag){ TAG_SEND, c };
	c->t_close = (struct tag){ TAG_CLOSE, c };
	atomic_init(&c->refs, 1);
	atomic_init(&c->user, NULL);
	grpc_metadata_array_init(&c->req_md);
	if (m->kind == KIND_GENERIC)
		grpc_call_details_init(&c->details);
	pthread_mutex_init(&c->mu, NULL);
	cond_init_mono(&c->cond);
	c->sq_tail = &c->sq_head;
	return c;
}

/* Arms the one pending request of @m. cq thread, or start() before it runs. */
static void request_call(struct method *m)
{
	struct cdp_rpc_server *srv = m->srv;
	struct cdp_rpc_call *c = call_alloc(m);
	grpc_call_error e;

	if (m->kind == KIND_GENERIC)
		e = grpc_server_request_call(srv->gs, &c->gc, &c->details, &c->req_md, srv->cq,
					     srv->cq, &c->t_new);
	else
		e = grpc_server_request_registered_call(
			srv->gs, m->reg, &c->gc, &c->deadline, &c->req_md,
			m->kind == CDP_RPC_BIDI_STREAMING ? NULL : &c->payload, srv->cq, srv->cq,
			&c->t_new);
	if (e != GRPC_CALL_OK) {
		cdp_log_err("rpc %s: request call: %s (the method stops accepting calls)",
			    m->name, grpc_call_error_to_string(e));
		cdp_rpc_call_unref(c);
	}
}

static void fill_peer(struct cdp_rpc_call *c)
{
	char *peer = grpc_call_get_peer(c->gc);
	grpc_auth_context *ctx;

	snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "");
	gpr_free(peer);
	if (!c->srv->tls)
		return;
	ctx = grpc_call_auth_context(c->gc);
	if (!ctx)
		return;
	if (grpc_auth_context_peer_is_authenticated(ctx)) {
		grpc_auth_property_iterator it =
			grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_CN_PROPERTY_NAME);
		const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);

		if (p && p->value) {
			size_t n = CDP_MIN(p->value_length, sizeof(c->identity) - 1);

			memcpy(c->identity, p->value, n);
			c->identity[n] = '\0';
			c->authenticated = true;
		}
	}
	grpc_auth_context_release(ctx);
}

/* cq thread: a call arrived for @c->m (or the request failed: shutdown). */
static void call_new(struct cdp_rpc_call *c, bool ok)
{
	struct cdp_rpc_server *srv = c->srv;
	struct method *m = c->m;
	grpc_call_error e;
	bool stopping;
	grpc_op op;
	struct flat f;

	pthread_mutex_lock(&srv->mu);
	stopping = srv->stopping;
	pthread_mutex_unlock(&srv->mu);
	if (!ok) {
		/* The server is shutting down; the request died with it. */
		cdp_rpc_call_unref(c);
		return;
	}
	if (!stopping)
		request_call(m);

	c->accepted = true;
	atomic_fetch_add(&srv->live_calls, 1);
	if (m->kind == KIND_GENERIC) {
		char *name = grpc_slice_to_c_string(c->details.method);

		c->method_name = cdp_xstrdup(name);	/* call_free() uses free() */
		gpr_free(name);
	}
	fill_peer(c);

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &c->close_cancelled;
	cdp_rpc_call_ref(c);
	e = grpc_call_start_batch(c->gc, &op, 1, &c->t_close, NULL);
	if (e != GRPC_CALL_OK) {
		/* Cannot happen with a fresh call; without t_close it could never end. */
		cdp_log_err("rpc %s: start close batch: %s", m->name,
			    grpc_call_error_to_string(e));
		grpc_call_cancel(c->gc, NULL);
		cdp_rpc_call_unref(c);
		cdp_rpc_call_unref(c);
		return;
	}

	if (stopping) {
		c->silent = true;
		grpc_call_cancel_with_status(c->gc, GRPC_STATUS_UNAVAILABLE, "server stopping",
					     NULL);
		return;
	}
	if (m->kind == KIND_GENERIC) {
		char msg[300];

		c->silent = true;
		snprintf(msg, sizeof(msg), "method %s not implemented", c->method_name);
		cdp_rpc_call_finish(c, CDP_RPC_UNIMPLEMENTED, msg);
		return;
	}
	if (m->kind == CDP_RPC_BIDI_STREAMING) {
		pthread_mutex_lock(&c->mu);
		c->recv_busy = true;	/* held across on_open, like on_message */
		pthread_mutex_unlock(&c->mu);
		if (m->h.on_open)
			m->h.on_open(c, m->arg);
		recv_next(c);
		return;
	}
	/* Unary and server streaming: the request came with the call. Without
	 * one the handler never hears of the call (no on_done either). */
	if (!c->payload) {
		c->silent = true;
		cdp_rpc_call_finish(c, CDP_RPC_INVALID_ARGUMENT, "no request message");
		return;
	}
	if (bb_flatten(c->payload, &f) < 0) {
		c->silent = true;
		cdp_rpc_call_finish(c, CDP_RPC_INTERNAL, "unreadable request buffer");
		return;
	}
	m->h.on_request(c, f.p, f.len, m->arg);
	free(f.owned);
	grpc_byte_buffer_destroy(c->payload);
	c->payload = NULL;
}

/* ---- the cq thread ---- */

static void *cq_main(void *arg)
{
	struct cdp_rpc_server *srv = arg;

	pthread_mutex_lock(&srv->mu);
	srv->cq_tid = pthread_self();
	srv->cq_tid_set = true;
	pthread_mutex_unlock(&srv->mu);
	for (;;) {
		/* Ends when stop() shuts the queue down (after the server's shutdown). */
		gpr_timespec forever = gpr_inf_future(GPR_CLOCK_MONOTONIC);
		grpc_event ev = grpc_completion_queue_next(srv->cq, forever, NULL);
		struct tag *t;

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		t = ev.tag;
		switch (t->kind) {
		case TAG_NEW:
			call_new(t->call, ev.success);
			break;
		case TAG_RECV:
			recv_done(t->call, ev.success);
			break;
		case TAG_SEND:
			send_done(t->call, ev.success);
			break;
		case TAG_CLOSE:
			close_done(t->call);
			break;
		case TAG_SHUTDOWN:
			/* Every call is gone: nothing more can be posted. */
			grpc_completion_queue_shutdown(srv->cq);
			break;
		}
	}
	pthread_mutex_lock(&srv->mu);
	srv->drained = true;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->mu);
	return NULL;
}

/* ---- lifecycle ---- */

/*
 * No cq thread (the server never started, or its thread failed to start):
 * after the shutdown was requested, drains the queue in the calling thread.
 */
static int drain_inline(struct cdp_rpc_server *srv)
{
	gpr_timespec until = deadline_in(CDP_RPC_STOP_TIMEOUT_NS);
	grpc_event ev;

	for (;;) {
		ev = grpc_completion_queue_next(srv->cq, until, NULL);
		if (ev.type == GRPC_QUEUE_TIMEOUT)
			return -ETIMEDOUT;
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return 0;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		if (ev.tag == &srv->t_shutdown)
			grpc_completion_queue_shutdown(srv->cq);
		else if (((struct tag *)ev.tag)->kind == TAG_NEW)	/* a request failed */
			cdp_rpc_call_unref(((struct tag *)ev.tag)->call);
	}
}

static void server_destroy(struct cdp_rpc_server *srv)
{
	struct method *m;

	grpc_server_destroy(srv->gs);
	grpc_completion_queue_destroy(srv->cq);
	while ((m = srv->methods)) {
		srv->methods = m->next;
		free(m->name);
		free(m);
	}
	for (size_t i = 0; i < srv->n_listen; i++)
		free(srv->listen[i]);
	free(srv->listen);
	free(srv->ports);
	pthread_mutex_destroy(&srv->mu);
	pthread_cond_destroy(&srv->cond);
	free(srv);
	grpc_shutdown();
}

static grpc_server_credentials *server_creds(const struct cdp_rpc_server_opts *o,
					     struct cdp_err *err)
{
	char *ca = NULL, *cert = NULL, *key = NULL;
	grpc_server_credentials *creds = NULL;
	grpc_ssl_pem_key_cert_pair pair;

	if (!(ca = read_pem(o->tls_ca, "CA", err)) ||
	    !(cert = read_pem(o->tls_cert, "certificate", err)) ||
	    !(key = read_pem(o->tls_key, "key", err)))
		goto out;
	pair.private_key = key;
	pair.cert_chain = cert;
	creds = grpc_ssl_server_credentials_create_ex(
		ca, &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
	if (!creds)
		cdp_err_set(err, -EINVAL, "TLS server credentials from %s, %s, %s: rejected",
			    o->tls_ca, o->tls_cert, o->tls_key);
out:
	free(ca);
	free(cert);
	free(key);
	return creds;
}

struct cdp_rpc_server *cdp_rpc_server_new(const struct cdp_rpc_server_opts *o,
					  struct cdp_err *err)
{
	struct cdp_rpc_server *srv;
	grpc_server_credentials *creds = NULL;
	size_t max = o->max_message;
	int ntls = !!o->tls_ca + !!o->tls_cert + !!o->tls_key;
	grpc_channel_args cargs;
	struct args a = { .n = 0 };

	if (!o->n_listen || !o->listen) {
		cdp_err_set(err, -EINVAL, "server: no listen address");
		return NULL;
	}
	if (ntls != 0 && ntls != 3) {
		cdp_err_set(err, -EINVAL,
			    "server TLS needs a CA, a certificate and a key (%d of 3 given)", ntls);
		return NULL;
	}
	if (check_max_message(&max, err) < 0)
		return NULL;
	for (size_t i = 0; i < o->n_listen; i++) {
		if (!o->listen[i] || !*o->listen[i]) {
			cdp_err_set(err, -EINVAL, "server: listen address %zu is empty", i);
			return NULL;
		}
	}
	cdp_rpc_init();
	if (ntls == 3 && !(creds = server_creds(o, err))) {
		grpc_shutdown();
		return NULL;
	}

	srv = cdp_xcalloc(1, sizeof(*srv));
	srv->max_message = max;
	srv->tls = ntls == 3;
	srv->t_shutdown = (struct tag){ TAG_SHUTDOWN, NULL };
	atomic_init(&srv->live_calls, 0);
	pthread_mutex_init(&srv->mu, NULL);
	cond_init_mono(&srv->cond);
	srv->generic = (struct method){ .srv = srv, .name = "(unimplemented)",
					.kind = KIND_GENERIC };

	args_common(&a, max);
	/* A port another process (or server) holds is an error, not shared. */
	arg_int(&a, GRPC_ARG_ALLOW_REUSEPORT, 0);
	/* Accept our clients' keepalive pings (they ping every KEEPALIVE_MS). */
	arg_int(&a, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
		CDP_RPC_KEEPALIVE_MS / 2);
	/* A fixed receive window per stream (see CDP_RPC_STREAM_WINDOW). */
	arg_int(&a, GRPC_ARG_HTTP2_BDP_PROBE, 0);
	arg_int(&a, GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, (int)CDP_RPC_STREAM_WINDOW);
	cargs.num_args = a.n;
	cargs.args = a.a;
	srv->gs = grpc_server_create(&cargs, NULL);
	srv->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(srv->gs, srv->cq, NULL);

	srv->n_listen = o->n_listen;
	srv->listen = cdp_xcalloc(o->n_listen, sizeof(*srv->listen));
	srv->ports = cdp_xcalloc(o->n_listen, sizeof(*srv->ports));
	for (size_t i = 0; i < o->n_listen; i++) {
		grpc_server_credentials *c = creds ? creds :
						     grpc_insecure_server_credentials_create();
		const char *addr = o->listen[i];
		int port;

		srv->listen[i] = cdp_xstrdup(addr);
		port = grpc_server_add_http2_port(srv->gs, addr, c);
		if (!creds)
			grpc_server_credentials_release(c);
		if (port <= 0) {
			cdp_err_set(err, -EADDRNOTAVAIL,
				    "listen on %s failed (address in use or invalid, or unusable "
				    "TLS files; gRPC's reason is logged above)", addr);
			goto fail;
		}
		srv->ports[i] = strncmp(addr, "unix:", 5) == 0 ? 0 : port;
	}
	if (creds)
		grpc_server_credentials_release(creds);
	return srv;
fail:
	if (creds)
		grpc_server_credentials_release(creds);
	grpc_server_shutdown_and_notify(srv->gs, srv->cq, &srv->t_shutdown);
	if (drain_inline(srv) < 0) {
		cdp_log_err("rpc: server teardown after a failed listen timed out; leaking it");
		return NULL;
	}
	server_destroy(srv);
	return NULL;
}

int cdp_rpc_server_port(const struct cdp_rpc_server *srv, size_t i)
{
	return i < srv->n_listen ? srv->ports[i] : 0;
}

size_t cdp_rpc_server_open_calls(const struct cdp_rpc_server *srv)
{
	return atomic_load(&((struct cdp_rpc_server *)srv)->live_calls);
}

int cdp_rpc_server_add_method(struct cdp_rpc_server *srv, const char *name,
			      enum cdp_rpc_kind kind, const struct cdp_rpc_handlers *h, void *arg,
			      struct cdp_err *err)
{
	struct method *m;
	bool started;

	pthread_mutex_lock(&srv->mu);
	started = srv->started || srv->stopping;
	pthread_mutex_unlock(&srv->mu);
	if (started)
		return cdp_err_set(err, -EINVAL, "method %s: server already started", name);
	if (!name || name[0] != '/' || !strchr(name + 1, '/'))
		return cdp_err_set(err, -EINVAL, "method '%s': expected /package.Service/Method",
				   name ? name : "");
	switch (kind) {
	case CDP_RPC_UNARY:
	case CDP_RPC_SERVER_STREAMING:
		if (!h->on_request)
			return cdp_err_set(err, -EINVAL, "method %s: on_request is required", name);
		break;
	case CDP_RPC_BIDI_STREAMING:
		if (!h->on_message == !h->on_message_take)
			return cdp_err_set(err, -EINVAL,
					   "method %s: exactly one of on_message, on_message_take",
					   name);
		break;
	default:
		return cdp_err_set(err, -EINVAL, "method %s: unknown kind %d", name, (int)kind);
	}
	for (m = srv->methods; m; m = m->next)
		if (strcmp(m->name, name) == 0)
			return cdp_err_set(err, -EEXIST, "method %s added twice", name);

	m = cdp_xcalloc(1, sizeof(*m));
	m->srv = srv;
	m->name = cdp_xstrdup(name);
	m->kind = kind;
	m->h = *h;
	m->arg = arg;
	m->reg = grpc_server_register_method(srv->gs, name, NULL,
					     kind == CDP_RPC_BIDI_STREAMING ?
						     GRPC_SRM_PAYLOAD_NONE :
						     GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
					     0);
	if (!m->reg) {
		free(m->name);
		free(m);
		return cdp_err_set(err, -EINVAL, "method %s: gRPC refused to register it", name);
	}
	m->next = srv->methods;
	srv->methods = m;
	return 0;
}

int cdp_rpc_server_start(struct cdp_rpc_server *srv, struct cdp_err *err)
{
	struct method *m;
	int rc;

	pthread_mutex_lock(&srv->mu);
	if (srv->started || srv->stopping) {
		pthread_mutex_unlock(&srv->mu);
		return cdp_err_set(err, -EINVAL, "server on %s: already started", srv->listen[0]);
	}
	srv->started = true;
	pthread_mutex_unlock(&srv->mu);

	grpc_server_start(srv->gs);
	for (m = srv->methods; m; m = m->next)
		request_call(m);
	request_call(&srv->generic);
	pthread_mutex_lock(&srv->mu);
	srv->has_thread = true;
	pthread_mutex_unlock(&srv->mu);
	rc = cdp_thread_start(&srv->thread, "cq", cq_main, srv);
	if (rc < 0) {
		/* Without the thread nobody drains the queue: stop() does it inline. */
		pthread_mutex_lock(&srv->mu);
		srv->has_thread = false;
		pthread_mutex_unlock(&srv->mu);
		return cdp_err_sys(err, rc, "server on %s: start the cq thread", srv->listen[0]);
	}
	return 0;
}

int cdp_rpc_server_stop(struct cdp_rpc_server *srv)
{
	struct timespec until = abs_in(CDP_RPC_STOP_TIMEOUT_NS);
	bool first, has_thread, join = false;
	int rc = 0;

	if (on_cq_thread(srv))
		return -EDEADLK;
	pthread_mutex_lock(&srv->mu);
	if (srv->shut_down) {
		pthread_mutex_unlock(&srv->mu);
		return 0;
	}
	first = !srv->stopping;
	srv->stopping = true;
	has_thread = srv->has_thread;
	pthread_mutex_unlock(&srv->mu);

	if (first) {
		/* Stop accepting (pending requests fail), then cancel every call:
		 * each one's t_close completes, on_done runs, the glue lets go. */
		grpc_server_shutdown_and_notify(srv->gs, srv->cq, &srv->t_shutdown);
		grpc_server_cancel_all_calls(srv->gs);
		if (!has_thread) {
			rc = drain_inline(srv);
			pthread_mutex_lock(&srv->mu);
			srv->drained = rc == 0;
			pthread_cond_broadcast(&srv->cond);
			pthread_mutex_unlock(&srv->mu);
		}
	}
	/* The cq thread shuts the queue down once the server's shutdown is
	 * notified (every call freed), drains it and exits. */
	pthread_mutex_lock(&srv->mu);
	while (!srv->drained && rc == 0)
		if (pthread_cond_timedwait(&srv->cond, &srv->mu, &until) == ETIMEDOUT &&
		    !srv->drained)
			rc = -ETIMEDOUT;
	if (srv->drained && has_thread && !srv->joined) {
		srv->joined = true;
		join = true;
	}
	pthread_mutex_unlock(&srv->mu);
	if (rc < 0) {
		cdp_log_err("rpc: server on %s: stop: %zu calls still open after %" PRId64
			    " ms (a reference not dropped?)",
			    srv->listen[0], cdp_rpc_server_open_calls(srv),
			    CDP_RPC_STOP_TIMEOUT_NS / 1000000);
		return rc;
	}
	if (join)
		pthread_join(srv->thread, NULL);
	pthread_mutex_lock(&srv->mu);
	srv->shut_down = true;
	pthread_mutex_unlock(&srv->mu);
	return 0;
}

void cdp_rpc_server_free(struct cdp_rpc_server *srv)
{
	int rc;

	if (!srv)
		return;
	rc = cdp_rpc_server_stop(srv);
	if (rc < 0) {
		cdp_log_err("rpc: server on %s: not freed (stop: %s)", srv->listen[0],
			    strerror(-rc));
		return;
	}
	server_destroy(srv);
}

/* ---- call accessors ---- */

void cdp_rpc_call_set_user(struct cdp_rpc_call *c, void *user)
{
	atomic_store(&c->user, user);
}

void *cdp_rpc_call_user(const struct cdp_rpc_call *c)
{
	return atomic_load(&((struct cdp_rpc_call *)c)->user);
}

const char *cdp_rpc_call_method(const struct cdp_rpc_call *c)
{
	return c->method_name ? c->method_name : c->m->name;
}

const char *cdp_rpc_call_peer(const struct cdp_rpc_call *c)
{
	return c->peer;
}

bool cdp_rpc_call_authenticated(const struct cdp_rpc_call *c)
{
	return c->authenticated;
}

int cdp_rpc_call_peer_identity(const struct cdp_rpc_call *c, char *buf, size_t size)
{
	if (size)
		snprintf(buf, size, "%s", c->authenticated ? c->identity : "");
	return c->authenticated ? (int)strlen(c->identity) : -ENOENT;
}

/* ------------------------------------------------------------------------ */
/* Client                                                                   */

struct cdp_rpc_channel {
	grpc_channel *ch;
	char *target;
	size_t max_message;
};

struct cdp_rpc_channel *cdp_rpc_channel_new(const struct cdp_rpc_channel_opts *o,
					    struct cdp_err *err)
{
	grpc_channel_credentials *creds;
	struct cdp_rpc_channel *ch;
	char *ca = NULL, *cert = NULL, *key = NULL;
	size_t max = o->max_message;
	const char *name = o->tls_server_name;
	grpc_ssl_pem_key_cert_pair pair;
	grpc_channel_args cargs;
	struct args a = { .n = 0 };

	if (!o->target || !*o->target) {
		cdp_err_set(err, -EINVAL, "channel: no target");
		return NULL;
	}
	if (check_max_message(&max, err) < 0) {
		cdp_err_prefix(err, "channel to %s", o->target);
		return NULL;
	}
	if ((o->tls_cert || o->tls_key) && !(o->tls_cert && o->tls_key && o->tls_ca)) {
		cdp_err_set(err, -EINVAL,
			    "channel to %s: a client certificate needs its key and the CA",
			    o->target);
		return NULL;
	}
	if (o->tls_ca) {
		if (!(ca = read_pem(o->tls_ca, "CA", err)) ||
		    (o->tls_cert && !(cert = read_pem(o->tls_cert, "certificate", err))) ||
		    (o->tls_key && !(key = read_pem(o->tls_key, "key", err)))) {
			free(ca);
			free(cert);
			cdp_err_prefix(err, "channel to %s", o->target);
			return NULL;
		}
	}
	cdp_rpc_init();
	if (ca) {
		pair.private_key = key;
		pair.cert_chain = cert;
		creds = grpc_ssl_credentials_create_ex(ca, cert ? &pair : NULL, NULL, NULL);
		free(ca);
		free(cert);
		free(key);
		if (!creds) {
			grpc_shutdown();
			cdp_err_set(err, -EINVAL, "channel to %s: TLS credentials rejected",
				    o->target);
			return NULL;
		}
		if (!name && strncmp(o->target, "unix:", 5) == 0)
			name = "localhost";
	} else {
		creds = grpc_insecure_credentials_create();
		name = NULL;
	}

	args_common(&a, max);
	/* Each channel its own connection: no sharing between channels. */
	arg_int(&a, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
	/* Streams are never retried by gRPC (that would buffer every message). */
	arg_int(&a, GRPC_ARG_ENABLE_RETRIES, 0);
	arg_int(&a, GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, CDP_RPC_RECONNECT_MAX_MS);
	arg_int(&a, GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, CDP_MIN(1000, CDP_RPC_RECONNECT_MAX_MS));
	if (name)
		arg_str(&a, GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, name);
	cargs.num_args = a.n;
	cargs.args = a.a;

	ch = cdp_xcalloc(1, sizeof(*ch));
	ch->target = cdp_xstrdup(o->target);
	ch->max_message = max;
	ch->ch = grpc_channel_create(o->target, creds, &cargs);
	grpc_channel_credentials_release(creds);
	if (!ch->ch) {
		cdp_err_set(err, -EINVAL, "channel to %s: gRPC refused the target", o->target);
		free(ch->target);
		free(ch);
		grpc_shutdown();
		return NULL;
	}
	return ch;
}

void cdp_rpc_channel_free(struct cdp_rpc_channel *ch)
{
	if (!ch)
		return;
	grpc_channel_destroy(ch->ch);
	free(ch->target);
	free(ch);
	grpc_shutdown();
}

const char *cdp_rpc_channel_target(const struct cdp_rpc_channel *ch)
{
	return ch->target;
}

static grpc_call *create_call(struct cdp_rpc_channel *ch, grpc_completion_queue *cq,
			      const char *method, gpr_timespec deadline)
{
	grpc_slice m = grpc_slice_from_copied_string(method);
	grpc_call *call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m,
						   NULL, deadline, NULL);

	grpc_slice_unref(m);
	return call;
}

/*
 * Plucks @tag from @cq by @deadline. Returns 1 when it came, 0 on timeout.
 */
static int pluck(grpc_completion_queue *cq, void *tag, gpr_timespec deadline, bool *success)
{
	grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline, NULL);

	if (ev.type == GRPC_OP_COMPLETE) {
		*success = ev.success;
		return 1;
	}
	return 0;
}

/*
 * Plucks @tag, which must come: by @deadline, else cancels @call and waits
 * CDP_RPC_GRACE_NS more. Returns 0, or -ETIMEDOUT when gRPC never reported it
 * (then the call and queue cannot be freed safely).
 */
static int pluck_must(grpc_completion_queue *cq, grpc_call *call, void *tag,
		      gpr_timespec deadline, bool *success)
{
	if (pluck(cq, tag, deadline, success))
		return 0;
	grpc_call_cancel(call, NULL);
	if (pluck(cq, tag, deadline_in(CDP_RPC_GRACE_NS), success))
		return 0;
	return -ETIMEDOUT;
}

static void cq_destroy(grpc_completion_queue *cq)
{
	grpc_event ev;

	grpc_completion_queue_shutdown(cq);
	ev = grpc_completion_queue_pluck(cq, NULL, deadline_in(CDP_RPC_GRACE_NS), NULL);
	if (ev.type != GRPC_QUEUE_SHUTDOWN) {
		cdp_log_err("rpc: client completion queue did not drain; leaking it");
		return;
	}
	grpc_completion_queue_destroy(cq);
}

/* Sets @err from a final status and returns the matching -errno (0 for OK). */
static int status_err(const char *method, const char *target, grpc_status_code st,
		      grpc_slice details, struct cdp_err *err)
{
	char d[CDP_ERR_MSG_MAX];

	if (st == GRPC_STATUS_OK)
		return 0;
	slice_to(details, d, sizeof(d));
	return cdp_err_set(err, cdp_rpc_errno_from_code((enum cdp_rpc_code)st), "%s on %s: %s%s%s",
			   method, target, cdp_rpc_code_name(st), *d ? ": " : "", d);
}

int cdp_rpc_unary(struct cdp_rpc_channel *ch, const char *method, const void *req, size_t len,
		  int64_t timeout_ns, struct cdp_buf *reply, enum cdp_rpc_code *code,
		  struct cdp_err *err)
{
	gpr_timespec deadline = deadline_in(timeout_ns);
	grpc_completion_queue *cq;
	grpc_call *call;
	grpc_byte_buffer *sbb, *rbb = NULL;
	grpc_metadata_array md, trailing;
	grpc_status_code st = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_op ops[6];
	grpc_call_error e;
	bool ok = false;
	int tag = 0, rc;

	if (code)
		*code = CDP_RPC_UNKNOWN;
	if (reply)
		cdp_buf_reset(reply);
	if (len > ch->max_message) {
		if (code)
			*code = CDP_RPC_RESOURCE_EXHAUSTED;
		return cdp_err_set(err, -EMSGSIZE, "%s on %s: request of %zu bytes > max %zu",
				   method, ch->target, len, ch->max_message);
	}
	cq = grpc_completion_queue_create_for_pluck(NULL);
	call = create_call(ch, cq, method, deadline);
	sbb = bb_copy(req, len);
	grpc_metadata_array_init(&md);
	grpc_metadata_array_init(&trailing);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = sbb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &rbb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
	ops[5].data.recv_status_on_client.status = &st;
	ops[5].data.recv_status_on_client.status_details = &details;
	e = grpc_call_start_batch(call, ops, 6, &tag, NULL);
	if (e != GRPC_CALL_OK) {
		rc = cdp_err_set(err, -EIO, "%s on %s: start call: %s", method, ch->target,
				 grpc_call_error_to_string(e));
		grpc_call_unref(call);
		cq_destroy(cq);
		goto out;
	}
	if (timeout_ns != CDP_RPC_NO_DEADLINE)
		deadline = deadline_plus(deadline, CDP_RPC_GRACE_NS);
	rc = pluck_must(cq, call, &tag, deadline, &ok);
	if (rc < 0) {
		/* gRPC lost the batch: leak the call and queue rather than crash. */
		cdp_log_err("rpc: %s on %s: no completion after cancel; leaking the call",
			    method, ch->target);
		return cdp_err_set(err, -ETIMEDOUT, "%s on %s: no completion from gRPC", method,
				   ch->target);
	}
	if (code)
		*code = (enum cdp_rpc_code)st;
	rc = status_err(method, ch->target, st, details, err);
	if (rc == 0 && !rbb)
		rc = cdp_err_set(err, -EPROTO, "%s on %s: OK without a reply message", method,
				 ch->target);
	if (rc == 0 && reply && bb_to_buf(rbb, reply) < 0)
		rc = cdp_err_set(err, -EBADMSG, "%s on %s: unreadable reply", method, ch->target);
	grpc_call_unref(call);
	cq_destroy(cq);
out:
	grpc_byte_buffer_destroy(sbb);
	if (rbb)
		grpc_byte_buffer_destroy(rbb);
	grpc_metadata_array_destroy(&md);
	grpc_metadata_array_destroy(&trailing);
	grpc_slice_unref(details);
	return rc;
}

/* ---- streams ---- */

struct cdp_rpc_stream {
	struct cdp_rpc_channel *ch;
	grpc_call *call;
	grpc_completion_queue *cq;
	char *method;
	char tag_send, tag_recv, tag_status;	/* their addresses are the tags */
	atomic_bool ended;	/* cancelled, or a thread saw the end: sends fail fast */

	/* sending thread */
	grpc_byte_buffer *send_bb;	/* the message of the pending send, if any */
	bool send_pending;
	bool send_closed;
	bool send_dead;

	/* receiving thread */
	grpc_byte_buffer *recv_bb;
	bool recv_pending;
	bool recv_ended;

	/* status (one thread at a time); init_md arrives with it */
	grpc_metadata_array init_md;
	atomic_bool status_busy;
	bool status_done;
	grpc_status_code status;
	grpc_slice details;
	grpc_metadata_array trailing;
};

static struct cdp_rpc_stream *stream_start(struct cdp_rpc_channel *ch, const char *method,
					   const void *req, size_t len, bool server_streaming,
					   int64_t timeout_ns, struct cdp_err *err)
{
	struct cdp_rpc_stream *s;
	grpc_call_error e;
	grpc_op ops[3], sop[2];
	size_t n = 0;

	if (server_streaming && len > ch->max_message) {
		cdp_err_set(err, -EMSGSIZE, "%s on %s: request of %zu bytes > max %zu", method,
			    ch->target, len, ch->max_message);
		return NULL;
	}
	s = cdp_xcalloc(1, sizeof(*s));
	s->ch = ch;
	s->method = cdp_xstrdup(method);
	s->details = grpc_empty_slice();
	atomic_init(&s->status_busy, false);
	atomic_init(&s->ended, false);
	grpc_metadata_array_init(&s->init_md);
	grpc_metadata_array_init(&s->trailing);
	s->cq = grpc_completion_queue_create_for_pluck(NULL);
	s->call = create_call(ch, s->cq, method, deadline_in(timeout_ns));

	/*
	 * The status batch also receives the initial metadata: gRPC completes
	 * the status only after the initial metadata was taken, and a client
	 * may never call recv (a sink, or one that only waits for the end).
	 */
	memset(sop, 0, sizeof(sop));
	sop[0].op = GRPC_OP_RECV_INITIAL_METADATA;
	sop[0].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
	sop[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	sop[1].data.recv_status_on_client.trailing_metadata = &s->trailing;
	sop[1].data.recv_status_on_client.status = &s->status;
	sop[1].data.recv_status_on_client.status_details = &s->details;
	e = grpc_call_start_batch(s->call, sop, 2, &s->tag_status, NULL);
	if (e != GRPC_CALL_OK)
		goto fail;

	memset(ops, 0, sizeof(ops));
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (server_streaming) {
		s->send_bb = bb_copy(req, len);
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = s->send_bb;
		ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
		s->send_closed = true;
	}
	e = grpc_call_start_batch(s->call, ops, n, &s->tag_send, NULL);
	if (e != GRPC_CALL_OK) {
		/* The status batch is in flight: free() cancels and collects it. */
		s->send_closed = true;
		cdp_err_set(err, -EIO, "%s on %s: start call: %s", method, ch->target,
			    grpc_call_error_to_string(e));
		cdp_rpc_stream_free(s);
		return NULL;
	}
	s->send_pending = true;
	return s;
fail:
	cdp_err_set(err, -EIO, "%s on %s: start call: %s", method, ch->target,
		    grpc_call_error_to_string(e));
	grpc_call_unref(s->call);
	cq_destroy(s->cq);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trailing);
	free(s->method);
	free(s);
	return NULL;
}

struct cdp_rpc_stream *cdp_rpc_stream_open(struct cdp_rpc_channel *ch, const char *method,
					   int64_t timeout_ns, struct cdp_err *err)
{
	return stream_start(ch, method, NULL, 0, false, timeout_ns, err);
}

struct cdp_rpc_stream *cdp_rpc_stream_open_request(struct cdp_rpc_channel *ch,
						   const char *method, const void *req,
						   size_t len, int64_t timeout_ns,
						   struct cdp_err *err)
{
	return stream_start(ch, method, req, len, true, timeout_ns, err);
}

/* Sending thread: waits for the pending send batch. 0, -ETIMEDOUT or -ECANCELED. */
static int send_wait(struct cdp_rpc_stream *s, gpr_timespec deadline, struct cdp_err *err)
{
	bool ok;

	if (!s->send_pending)
		return s->send_dead ? -ECANCELED : 0;
	if (!pluck(s->cq, &s->tag_send, deadline, &ok))
		return cdp_err_set(err, -ETIMEDOUT,
				   "%s on %s: send: the previous message is still not accepted "
				   "by flow control", s->method, s->ch->target);
	s->send_pending = false;
	if (s->send_bb) {
		grpc_byte_buffer_destroy(s->send_bb);
		s->send_bb = NULL;
	}
	if (!ok)
		s->send_dead = true;
	return ok ? 0 : -ECANCELED;
}

static int send_dead_err(struct cdp_rpc_stream *s, struct cdp_err *err)
{
	return cdp_err_set(err, -ECANCELED, "%s on %s: send: the call has ended (see its status)",
			   s->method, s->ch->target);
}

/* A message of a copied head and a borrowed body; gRPC calls @release when done with it. */
struct parts {
	const void *head;
	size_t head_len;
	const void *body;
	size_t body_len;
	void (*release)(void *ctx);
	void *ctx;
};

static grpc_byte_buffer *bb_parts(const struct parts *m)
{
	grpc_slice sl[2];
	grpc_byte_buffer *bb;
	size_t n = 0;

	if (m->head_len) {
		sl[n] = grpc_slice_malloc(m->head_len);
		memcpy(GRPC_SLICE_START_PTR(sl[n]), m->head, m->head_len);
		n++;
	}
	if (m->body_len)
		sl[n++] = grpc_slice_new_with_user_data((void *)m->body, m->body_len, m->release,
							m->ctx);
	else if (m->release)
		m->release(m->ctx);
	if (!n)
		sl[n++] = grpc_empty_slice();
	bb = grpc_raw_byte_buffer_create(sl, n);
	for (size_t i = 0; i < n; i++)
		grpc_slice_unref(sl[i]);
	return bb;
}

static int stream_send(struct cdp_rpc_stream *s, const struct parts *m, int64_t timeout_ns,
		       struct cdp_err *err)
{
	size_t len = m->head_len + m->body_len;
	grpc_call_error e;
	grpc_op op;
	int rc;

	if (s->send_closed)
		rc = cdp_err_set(err, -EINVAL, "%s on %s: send after close_send", s->method,
				 s->ch->target);
	else if (len > s->ch->max_message)
		rc = cdp_err_set(err, -EMSGSIZE, "%s on %s: message of %zu bytes > max %zu",
				 s->method, s->ch->target, len, s->ch->max_message);
	else if (atomic_load(&s->ended))
		rc = send_dead_err(s, err);
	else {
		rc = send_wait(s, deadline_in(timeout_ns), err);
		if (rc == -ECANCELED || s->send_dead)
			rc = send_dead_err(s, err);
	}
	if (rc < 0) {
		if (m->release)
			m->release(m->ctx);
		return rc;
	}
	s->send_bb = bb_parts(m);
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_MESSAGE;
	op.data.send_message.send_message = s->send_bb;
	e = grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL);
	if (e != GRPC_CALL_OK) {
		grpc_byte_buffer_destroy(s->send_bb);
		s->send_bb = NULL;
		s->send_dead = true;
		return cdp_err_set(err, -EIO, "%s on %s: start send: %s", s->method,
				   s->ch->target, grpc_call_error_to_string(e));
	}
	s->send_pending = true;
	return 0;
}

int cdp_rpc_stream_send(struct cdp_rpc_stream *s, const void *msg, size_t len,
			int64_t timeout_ns, struct cdp_err *err)
{
	struct parts m = { .head = msg, .head_len = len };

	return stream_send(s, &m, timeout_ns, err);
}

int cdp_rpc_stream_send_parts(struct cdp_rpc_stream *s, const void *head, size_t head_len,
			      const void *body, size_t body_len, void (*release)(void *ctx),
			      void *ctx, int64_t timeout_ns, struct cdp_err *err)
{
	struct parts m = { head, head_len, body, body_len, release, ctx };

	return stream_send(s, &m, timeout_ns, err);
}

int cdp_rpc_stream_close_send(struct cdp_rpc_stream *s, int64_t timeout_ns, struct cdp_err *err)
{
	grpc_call_error e;
	grpc_op op;
	int rc;

	if (s->send_closed)
		return 0;
	rc = send_wait(s, deadline_in(timeout_ns), err);
	if (rc == -ECANCELED || s->send_dead)
		return send_dead_err(s, err);
	if (rc < 0)
		return rc;
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	e = grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL);
	if (e != GRPC_CALL_OK)
		return cdp_err_set(err, -EIO, "%s on %s: close send: %s", s->method,
				   s->ch->target, grpc_call_error_to_string(e));
	s->send_closed = true;
	s->send_pending = true;
	return 0;
}

int cdp_rpc_stream_recv(struct cdp_rpc_stream *s, struct cdp_buf *msg, int64_t timeout_ns,
			struct cdp_err *err)
{
	grpc_byte_buffer *bb;
	grpc_call_error e;
	grpc_op op;
	bool ok;

	if (s->recv_ended)
		return 0;
	if (!s->recv_pending) {
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_RECV_MESSAGE;
		op.data.recv_message.recv_message = &s->recv_bb;
		e = grpc_call_start_batch(s->call, &op, 1, &s->tag_recv, NULL);
		if (e != GRPC_CALL_OK)
			return cdp_err_set(err, -EIO, "%s on %s: start receive: %s", s->method,
					   s->ch->target, grpc_call_error_to_string(e));
		s->recv_pending = true;
	}
	if (!pluck(s->cq, &s->tag_recv, deadline_in(timeout_ns), &ok))
		return cdp_err_set(err, -ETIMEDOUT, "%s on %s: no message within %" PRId64 " ms",
				   s->method, s->ch->target, timeout_ns / 1000000);
	s->recv_pending = false;
	bb = s->recv_bb;
	s->recv_bb = NULL;
	if (!ok || !bb) {
		if (bb)
			grpc_byte_buffer_destroy(bb);
		s->recv_ended = true;
		atomic_store(&s->ended, true);
		return 0;
	}
	if (msg && bb_to_buf(bb, msg) < 0) {
		grpc_byte_buffer_destroy(bb);
		return cdp_err_set(err, -EBADMSG, "%s on %s: unreadable message", s->method,
				   s->ch->target);
	}
	grpc_byte_buffer_destroy(bb);
	return 1;
}

int cdp_rpc_stream_status(struct cdp_rpc_stream *s, int64_t timeout_ns, enum cdp_rpc_code *code,
			  struct cdp_err *err)
{
	bool ok, was_busy = atomic_exchange(&s->status_busy, true);

	assert(!was_busy);	/* one thread at a time */
	(void)was_busy;
	if (!s->status_done) {
		if (!pluck(s->cq, &s->tag_status, deadline_in(timeout_ns), &ok)) {
			atomic_store(&s->status_busy, false);
			if (code)
				*code = CDP_RPC_UNKNOWN;
			return cdp_err_set(err, -ETIMEDOUT, "%s on %s: no status within %" PRId64
					   " ms", s->method, s->ch->target, timeout_ns / 1000000);
		}
		s->status_done = true;
		atomic_store(&s->ended, true);
	}
	atomic_store(&s->status_busy, false);
	if (code)
		*code = (enum cdp_rpc_code)s->status;
	return status_err(s->method, s->ch->target, s->status, s->details, err);
}

void cdp_rpc_stream_cancel(struct cdp_rpc_stream *s)
{
	atomic_store(&s->ended, true);
	grpc_call_cancel(s->call, NULL);
}

void cdp_rpc_stream_free(struct cdp_rpc_stream *s)
{
	gpr_timespec grace;
	bool ok, lost = false;

	if (!s)
		return;
	if (!s->status_done)
		grpc_call_cancel(s->call, NULL);
	grace = deadline_in(CDP_RPC_GRACE_NS);
	if (s->send_pending && !pluck(s->cq, &s->tag_send, grace, &ok))
		lost = true;
	if (s->recv_pending && !pluck(s->cq, &s->tag_recv, grace, &ok))
		lost = true;
	if (!s->status_done && !pluck(s->cq, &s->tag_status, grace, &ok))
		lost = true;
	if (lost) {
		cdp_log_err("rpc: %s on %s: operations not completed %" PRId64
			    " ms after cancel; leaking the call",
			    s->method, s->ch->target, CDP_RPC_GRACE_NS / 1000000);
		return;
	}
	grpc_call_unref(s->call);
	cq_destroy(s->cq);
	if (s->send_bb)
		grpc_byte_buffer_destroy(s->send_bb);
	if (s->recv_bb)
		grpc_byte_buffer_destroy(s->recv_bb);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trailing);
	grpc_slice_unref(s->details);
	free(s->method);
	free(s);
}
