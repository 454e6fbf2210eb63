/*
 * proto/rpc - moving messages over gRPC (C core), server and client side.
 *
 * The only module in cdp that includes grpc/grpc.h: everything here speaks
 * bytes (a packed protobuf-c message) and status codes (enum cdp_rpc_code, the
 * gRPC wire codes), so callers never see a gRPC type. The module knows no
 * business rule: it moves messages, enforces sizes, deadlines and TLS, and maps
 * our -errno codes to gRPC statuses and back.
 *
 * Owns: the gRPC server, its completion queue and its "cq" thread; every
 * server-side call (struct cdp_rpc_call) and its send queue; client channels
 * and client calls with their own completion queues.
 *
 * SERVER. cdp_rpc_server_new() binds the listen addresses; methods are added by
 * their full name ("/cdp.v1.Control/ListPlans") with a kind and callbacks;
 * cdp_rpc_server_start() starts the "cq" thread, which runs the state machine of
 * every call and invokes every callback. Callbacks must not block (no I/O, no
 * waiting on another thread, no lock held long): hand the work to a worker
 * through a queue and answer later, from any thread.
 *
 *   UNARY:            on_request(call, request) -> cdp_rpc_call_reply() or
 *                     cdp_rpc_call_finish(), now or later, from any thread.
 *   SERVER_STREAMING: on_request(call, request) -> cdp_rpc_call_send() * N,
 *                     then cdp_rpc_call_finish().
 *   BIDI_STREAMING:   on_open(call) (may finish at once to reject), then
 *                     on_message(call, msg) for each message received, in
 *                     order, one at a time; on_half_close(call) when no more
 *                     messages will come: the client closed its sending side
 *                     (or the call is ending: gRPC reports a cancelled call's
 *                     receive the same way, and on_done follows with
 *                     @cancelled); the handler sends and finishes whenever it
 *                     likes.
 *   Every kind:       on_done(call, code, cancelled) exactly once per call
 *                     that on_request/on_open saw, last, after the status
 *                     went out or the call died (client cancel or
 *                     disconnect, deadline, server stop). After on_done returns
 *                     the glue drops its reference; a handler that keeps the
 *                     pointer for later must hold a reference of its own.
 *
 * Invariants: at most one send and one receive are in flight per call (gRPC's
 * rule); messages go out in the order cdp_rpc_call_send() queued them, and the
 * status goes out after all of them; a receive is started only while the call
 * is not paused; no callback runs for a call after its on_done.
 *
 * Lifetime of a call: reference counted. The glue holds one reference from
 * acceptance until on_done has returned, plus one per batch in flight. Callers
 * that use a call outside its callbacks take one with cdp_rpc_call_ref() (in a
 * callback, before handing the pointer on) and drop it with
 * cdp_rpc_call_unref() from any thread; the last unref frees it. Every
 * reference must be dropped before cdp_rpc_server_stop() can finish.
 *
 * CLIENT. Blocking calls on a channel (struct cdp_rpc_channel, any number of
 * threads at once). A client stream (struct cdp_rpc_stream) has its own
 * completion queue (pluck type) with one tag per direction, so one thread may
 * send while another receives. A wait that times out leaves its operation in
 * flight: the next call of the same direction picks it up, so no message is
 * lost or sent twice.
 *
 * Threads: server callbacks run on "cq". cdp_rpc_call_*() are safe from any
 * thread on a call the caller holds (a callback's argument, or a reference).
 * A client stream: one sending thread (send, close_send), one receiving thread
 * (recv), status from one thread at a time, cancel from any thread, free when
 * no other thread uses it.
 *
 * Time: every wait has a timeout in nanoseconds (>= 0; 0 polls once).
 * CDP_RPC_NO_DEADLINE as a call's timeout gives it no deadline (a stream that
 * lives as long as the connection); as a wait's timeout it waits as long as it
 * takes, for a thread whose shutdown is cdp_rpc_stream_cancel(). Waits use
 * the real monotonic clock.
 *
 * Errors: -errno returns, and struct cdp_err messages that name the address or
 * the method and the gRPC status ("/cdp.v1.Control/GetPlan on unix:/run/x:
 * NOT_FOUND: plan db01 not found").
 */
#ifndef CDP_PROTO_RPC_H
#define CDP_PROTO_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/err.h"

/* Message size limit in both directions when the options say 0. */
#define CDP_RPC_DEFAULT_MAX_MESSAGE (16u << 20)
/* Largest limit accepted (gRPC takes an int). */
#define CDP_RPC_MAX_MESSAGE_LIMIT (1u << 30)
/* A call or wait timeout meaning "none" (see Time above). */
#define CDP_RPC_NO_DEADLINE INT64_MAX
/*
 * Fixed timing of the glue (nanoseconds unless named _MS):
 *  - CDP_RPC_STOP_TIMEOUT_NS: cdp_rpc_server_stop() waits this long for open
 *    calls to end and the cq thread to exit;
 *  - CDP_RPC_GRACE_NS: how long a client waits past a call's own deadline, or
 *    after cancelling, for gRPC to report the end (it always does; this bound
 *    turns a gRPC bug into an error instead of a hang);
 *  - keepalive: both sides ping an idle connection every
 *    CDP_RPC_KEEPALIVE_MS and drop it after CDP_RPC_KEEPALIVE_TIMEOUT_MS
 *    without an answer, so a dead peer ends its streams (UNAVAILABLE);
 *  - CDP_RPC_RECONNECT_MAX_MS: a client channel retries a lost connection
 *    after at most this long.
 */
#define CDP_RPC_STOP_TIMEOUT_NS (10 * INT64_C(1000000000))
#define CDP_RPC_GRACE_NS (5 * INT64_C(1000000000))
#define CDP_RPC_KEEPALIVE_MS 20000
#define CDP_RPC_KEEPALIVE_TIMEOUT_MS 10000
#define CDP_RPC_RECONNECT_MAX_MS 5000

/*
 * HTTP/2 flow-control window of each stream a server receives on, bytes: a
 * fixed window (gRPC's BDP probing off). With probing, gRPC grew the window
 * until a client's whole backlog sat in the server's memory as freshly
 * allocated read buffers; a fixed window bounds what a stream holds there
 * (docs/performance.md, "Ingest over gRPC"). 8 MiB still covers 1 GB/s at
 * 8 ms round trip.
 */
#define CDP_RPC_STREAM_WINDOW (8u << 20)

/* gRPC status codes (the numbers on the wire), so callers need no gRPC header. */
enum cdp_rpc_code {
	CDP_RPC_OK = 0,
	CDP_RPC_CANCELLED = 1,
	CDP_RPC_UNKNOWN = 2,
	CDP_RPC_INVALID_ARGUMENT = 3,
	CDP_RPC_DEADLINE_EXCEEDED = 4,
	CDP_RPC_NOT_FOUND = 5,
	CDP_RPC_ALREADY_EXISTS = 6,
	CDP_RPC_PERMISSION_DENIED = 7,
	CDP_RPC_RESOURCE_EXHAUSTED = 8,
	CDP_RPC_FAILED_PRECONDITION = 9,
	CDP_RPC_ABORTED = 10,
	CDP_RPC_OUT_OF_RANGE = 11,
	CDP_RPC_UNIMPLEMENTED = 12,
	CDP_RPC_INTERNAL = 13,
	CDP_RPC_UNAVAILABLE = 14,
	CDP_RPC_DATA_LOSS = 15,
	CDP_RPC_UNAUTHENTICATED = 16,
};

/*
 * Our -errno codes to gRPC statuses (0 -> OK):
 *   -EINVAL, -EBADMSG       INVALID_ARGUMENT (bad bytes from a client are the
 *                           client's fault; a server that finds its own data
 *                           damaged finishes with CDP_RPC_DATA_LOSS itself)
 *   -ENOENT                 NOT_FOUND
 *   -EEXIST                 ALREADY_EXISTS
 *   -EPERM, -EACCES         PERMISSION_DENIED
 *   -ESTALE                 FAILED_PRECONDITION (stale epoch or state)
 *   -EPROTO                 OUT_OF_RANGE (a sequence gap: the peer must resume
 *                           from the position the server names; kept apart
 *                           from -ESTALE so the mapping round-trips)
 *   -ENOSPC, -ENOMEM, -EMSGSIZE   RESOURCE_EXHAUSTED
 *   -ETIMEDOUT              DEADLINE_EXCEEDED
 *   -ECANCELED              CANCELLED
 *   -ENOSYS, -EOPNOTSUPP    UNIMPLEMENTED
 *   -ECONNABORTED           ABORTED
 *   -EAGAIN, -EBUSY, -ENOTCONN, -ECONNREFUSED, -ECONNRESET, -EPIPE,
 *   -ESHUTDOWN              UNAVAILABLE (transient: retry)
 *   -EIO and anything else  INTERNAL
 */
enum cdp_rpc_code cdp_rpc_code_from_errno(int neg_errno);

/*
 * gRPC statuses back to -errno (OK -> 0): the inverse of the table above where
 * it is one-to-one (INVALID_ARGUMENT -> -EINVAL, PERMISSION_DENIED -> -EACCES,
 * RESOURCE_EXHAUSTED -> -ENOSPC, UNAVAILABLE -> -ENOTCONN), plus
 * UNAUTHENTICATED -> -EACCES, DATA_LOSS -> -EBADMSG, UNKNOWN and INTERNAL -> -EIO.
 */
int cdp_rpc_errno_from_code(enum cdp_rpc_code code);

/* "NOT_FOUND", ...; "CODE_<n>" style text for numbers outside the enum (static). */
const char *cdp_rpc_code_name(int code);

/*
 * Takes a reference on the gRPC library (grpc_init). Servers and channels take
 * their own, so calling this is optional; a program may hold one for its whole
 * life so that gRPC is not torn down and set up again between uses. Also routes
 * gRPC's own log lines to common/log ("grpc: ..."; errors only, unless the
 * "rpc" debug module is on). Thread-safe.
 */
void cdp_rpc_init(void);
/* Drops a reference taken by cdp_rpc_init(). */
void cdp_rpc_shutdown(void);

/* ------------------------------------------------------------------------ */
/* Server                                                                    */

struct cdp_rpc_server;
struct cdp_rpc_call;

enum cdp_rpc_kind {
	CDP_RPC_UNARY,
	CDP_RPC_SERVER_STREAMING,
	CDP_RPC_BIDI_STREAMING,
};

/*
 * Callbacks of one method; all run on the cq thread, must not block, and get
 * the method's @arg. Message bytes are borrowed for the callback's duration.
 * Which ones a kind uses (NULL = not interested, except where required):
 *   UNARY, SERVER_STREAMING: on_request (required), on_done.
 *   BIDI_STREAMING: on_message or on_message_take (one required), on_open,
 *   on_half_close, on_done.
 * on_message_take is on_message for handlers that keep the bytes: @msg is a
 * copy the handler owns and releases with cdp_rpc_msg_free(), from any
 * thread; gRPC's slices are copied once, straight into it, so a large message
 * costs one copy, not two. Large buffers are recycled (see
 * cdp_rpc_msg_free()), so their pages stay mapped from one message to the
 * next instead of being faulted in again for every message.
 * @code in on_done: the status the server sent, or CDP_RPC_CANCELLED when the
 * call ended without one (then @cancelled is true: client cancel, disconnect,
 * deadline, or server stop).
 */
struct cdp_rpc_handlers {
	void (*on_request)(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg);
	void (*on_open)(struct cdp_rpc_call *call, void *arg);
	void (*on_message)(struct cdp_rpc_call *call, const uint8_t *msg, size_t len, void *arg);
	void (*on_message_take)(struct cdp_rpc_call *call, uint8_t *msg, size_t len, void *arg);
	void (*on_half_close)(struct cdp_rpc_call *call, void *arg);
	void (*on_done)(struct cdp_rpc_call *call, enum cdp_rpc_code code, bool cancelled,
			void *arg);
};

/*
 * Releases a message given to on_message_take. Buffers of 1 MiB and more go
 * back to a process-wide pool (at most CDP_RPC_MSG_POOL_MAX bytes kept idle)
 * that the next large messages reuse; others are freed. NULL is ignored.
 */
#define CDP_RPC_MSG_POOL_MAX (64u << 20)
void cdp_rpc_msg_free(uint8_t *msg);

/*
 * Puts buffers for messages of up to @len bytes (at least 1 MiB) into that
 * pool, with their pages already faulted in, until it holds @bytes idle (at
 * most CDP_RPC_MSG_POOL_MAX). A server that will take a stream of large
 * messages calls it once at start, so its first messages do not pay for
 * fresh pages (docs/performance.md). Returns the bytes added.
 */
size_t cdp_rpc_msg_pool_prefill(size_t len, size_t bytes);

struct cdp_rpc_server_opts {
	/* Addresses to listen on (borrowed): "unix:/path" or "HOST:PORT"; port 0
	 * picks a free port (see cdp_rpc_server_port()). At least one. A TCP
	 * port in use is an error (no SO_REUSEPORT sharing); an existing unix
	 * socket file is replaced (gRPC unlinks it: keep one daemon per path
	 * with a pid-file lock) and removed again at stop. */
	const char *const *listen;
	size_t n_listen;
	/* Largest message received or sent, bytes; 0: CDP_RPC_DEFAULT_MAX_MESSAGE. */
	size_t max_message;
	/* Mutual TLS: PEM file paths, all three or none (plaintext). Clients must
	 * present a certificate signed by @tls_ca; the server presents
	 * @tls_cert. */
	const char *tls_ca;
	const char *tls_cert;
	const char *tls_key;
};

/*
 * Returns a new server bound to every address of @o (not yet serving), or NULL
 * with @err naming the address or file that failed. Free with
 * cdp_rpc_server_free().
 */
struct cdp_rpc_server *cdp_rpc_server_new(const struct cdp_rpc_server_opts *o,
					  struct cdp_err *err);

/* The TCP port that listen address @i is bound to (useful with port 0); 0 for unix:. */
int cdp_rpc_server_port(const struct cdp_rpc_server *srv, size_t i);

/*
 * Adds method @name (full: "/package.Service/Method"; copied) of @kind with
 * callbacks @h (copied) and @arg (borrowed; must outlive the server's stop).
 * Before cdp_rpc_server_start() only. Calls to methods nobody added are
 * answered UNIMPLEMENTED. Returns 0, or -EINVAL (bad name or handlers, or
 * already started) / -EEXIST.
 */
int cdp_rpc_server_add_method(struct cdp_rpc_server *srv, const char *name,
			      enum cdp_rpc_kind kind, const struct cdp_rpc_handlers *h, void *arg,
			      struct cdp_err *err);

/* Starts serving: starts the "cq" thread. Returns 0 or -errno. Once only. */
int cdp_rpc_server_start(struct cdp_rpc_server *srv, struct cdp_err *err);

/*
 * Stops the server: stops accepting, cancels every open call (their clients
 * see CANCELLED or UNAVAILABLE, each call's on_done runs with @cancelled),
 * waits for every call to be freed and for the cq thread to drain and exit.
 * Callable from any thread but the cq thread (-EDEADLK) — a signal-handling
 * thread included — and more than once. Returns 0, or -ETIMEDOUT after
 * CDP_RPC_STOP_TIMEOUT_NS when some call is still referenced (a caller bug:
 * a reference not dropped on on_done); then the server cannot be freed.
 */
int cdp_rpc_server_stop(struct cdp_rpc_server *srv);

/*
 * Stops @srv if needed, then frees it (NULL: nothing). No other thread may be
 * in cdp_rpc_server_stop() then. If the stop timed out, logs it and leaks the
 * server rather than free memory gRPC still uses.
 */
void cdp_rpc_server_free(struct cdp_rpc_server *srv);

/* Calls accepted and not yet freed (for tests and metrics). */
size_t cdp_rpc_server_open_calls(const struct cdp_rpc_server *srv);

/* ------------------------------------------------------------------------ */
/* Server-side calls: every function is thread-safe on a call the caller holds. */

/* Takes a reference on @call (for use outside its callbacks). */
void cdp_rpc_call_ref(struct cdp_rpc_call *call);
/* Drops a reference; the last one frees the call. Any thread. */
void cdp_rpc_call_unref(struct cdp_rpc_call *call);

/*
 * Queues one message (@len bytes, copied) to send. Returns 0; -EMSGSIZE when
 * @len is over the server's max_message; -EALREADY once finish was called;
 * -ECANCELED once the call has ended (client gone, deadline, stop).
 * Never blocks: apply backpressure with cdp_rpc_call_send_queued() or
 * cdp_rpc_call_wait_send_below().
 */
int cdp_rpc_call_send(struct cdp_rpc_call *call, const void *msg, size_t len);

/* As cdp_rpc_call_send(), but takes @msg (malloc'ed), even on failure: no copy. */
int cdp_rpc_call_send_take(struct cdp_rpc_call *call, void *msg, size_t len);

/*
 * Ends the call with status @code and @msg (copied; NULL or "" for none),
 * sent after every queued message. Returns 0; -EALREADY if finish was already
 * called; -ECANCELED if the call has ended.
 */
int cdp_rpc_call_finish(struct cdp_rpc_call *call, enum cdp_rpc_code code, const char *msg);

/* cdp_rpc_call_finish() with cdp_rpc_code_from_errno(err->code) and err->msg. */
int cdp_rpc_call_finish_err(struct cdp_rpc_call *call, const struct cdp_err *err);

/* Unary: sends @msg (copied) and finishes OK, in one batch. Returns as finish. */
int cdp_rpc_call_reply(struct cdp_rpc_call *call, const void *msg, size_t len);

/* Bytes and messages queued and not yet accepted by gRPC's flow control. */
void cdp_rpc_call_send_queued(struct cdp_rpc_call *call, size_t *bytes, size_t *msgs);

/*
 * Waits until at most @max_bytes are queued to send. Returns 0; -ETIMEDOUT;
 * -ECANCELED once the call has ended; -EDEADLK on the cq thread (sends
 * complete there, so it would wait for itself).
 */
int cdp_rpc_call_wait_send_below(struct cdp_rpc_call *call, size_t max_bytes,
				 int64_t timeout_ns);

/*
 * Receive backpressure (bidi): pause stops the glue from starting the next
 * receive (a receive already in flight still delivers its one message); resume
 * restarts it. gRPC's flow control then holds the client back. Any thread;
 * pausing from on_open or on_message takes effect before the next receive.
 */
void cdp_rpc_call_pause_recv(struct cdp_rpc_call *call);
void cdp_rpc_call_resume_recv(struct cdp_rpc_call *call);

/* A pointer for the handler's own state: set and read from any thread. */
void cdp_rpc_call_set_user(struct cdp_rpc_call *call, void *user);
void *cdp_rpc_call_user(const struct cdp_rpc_call *call);

/* The method's full name (valid while the call is held). */
const char *cdp_rpc_call_method(const struct cdp_rpc_call *call);

/* The peer's address ("ipv4:127.0.0.1:40312", "unix:"; valid while the call is held). */
const char *cdp_rpc_call_peer(const struct cdp_rpc_call *call);

/* True when the peer presented a client certificate our CA verified. */
bool cdp_rpc_call_authenticated(const struct cdp_rpc_call *call);

/*
 * Copies the peer's identity, the common name of its verified client
 * certificate ("agent-db01"), into @buf (NUL-terminated, truncated to @size).
 * Returns its length, or -ENOENT (and "") when the call is not authenticated.
 */
int cdp_rpc_call_peer_identity(const struct cdp_rpc_call *call, char *buf, size_t size);

/* ------------------------------------------------------------------------ */
/* Client                                                                    */

struct cdp_rpc_channel;
struct cdp_rpc_stream;

struct cdp_rpc_channel_opts {
	/* "unix:/path" or "HOST:PORT" (copied). */
	const char *target;
	/* Largest message sent or received, bytes; 0: CDP_RPC_DEFAULT_MAX_MESSAGE. */
	size_t max_message;
	/* TLS: PEM file paths. @tls_ca alone: server authentication only; with
	 * @tls_cert and @tls_key: mutual. All NULL: plaintext. */
	const char *tls_ca;
	const char *tls_cert;
	const char *tls_key;
	/* The name the server certificate must carry. NULL: the host of
	 * @target, or "localhost" for a unix: target. */
	const char *tls_server_name;
};

/*
 * Returns a new channel (it connects lazily, on the first call, and reconnects
 * by itself), or NULL with @err naming the target or file. Free with
 * cdp_rpc_channel_free() once no call or stream uses it. Thread-safe.
 */
struct cdp_rpc_channel *cdp_rpc_channel_new(const struct cdp_rpc_channel_opts *o,
					    struct cdp_err *err);
void cdp_rpc_channel_free(struct cdp_rpc_channel *ch);
const char *cdp_rpc_channel_target(const struct cdp_rpc_channel *ch);

/*
 * Unary call of @method with request @req/@len, deadline @timeout_ns from now.
 * On OK returns 0 with the reply in @reply (reset first; caller owns it).
 * Otherwise returns cdp_rpc_errno_from_code(status) (or -errno of a local
 * failure), sets *@code (may be NULL) to the status, and @err to
 * "METHOD on TARGET: CODE: details". Fails fast (UNAVAILABLE) when the server
 * cannot be reached.
 */
int cdp_rpc_unary(struct cdp_rpc_channel *ch, const char *method, const void *req, size_t len,
		  int64_t timeout_ns, struct cdp_buf *reply, enum cdp_rpc_code *code,
		  struct cdp_err *err);

/*
 * Opens a bidi stream to @method; @timeout_ns is the whole call's deadline
 * (CDP_RPC_NO_DEADLINE for none). Returns a new stream (free with
 * cdp_rpc_stream_free()), or NULL with @err. Connection failures show up in
 * the first send/recv and in the status.
 */
struct cdp_rpc_stream *cdp_rpc_stream_open(struct cdp_rpc_channel *ch, const char *method,
					   int64_t timeout_ns, struct cdp_err *err);

/*
 * Opens a server-streaming call: sends the one request @req/@len and closes
 * the sending side; then cdp_rpc_stream_recv() until 0, then status.
 */
struct cdp_rpc_stream *cdp_rpc_stream_open_request(struct cdp_rpc_channel *ch,
						   const char *method, const void *req,
						   size_t len, int64_t timeout_ns,
						   struct cdp_err *err);

/*
 * Queues one message (copied) after waiting up to @timeout_ns for gRPC's flow
 * control to take the previous one: at most one message per stream is in
 * gRPC's hands, which is the backpressure. Returns 0 once queued (it goes out
 * unless the call dies; the next send or the status tells); -ETIMEDOUT when
 * the previous message is still waiting (a stalled or paused peer): this one
 * was NOT queued, send it again later; -ECANCELED when the call is over (see
 * status); -EINVAL after close_send; -EMSGSIZE over max_message. Sending
 * thread only.
 */
int cdp_rpc_stream_send(struct cdp_rpc_stream *s, const void *msg, size_t len,
			int64_t timeout_ns, struct cdp_err *err);

/*
 * cdp_rpc_stream_send() of one message made of @head (copied) then @body,
 * which is NOT copied: gRPC reads it in place until it calls @release(@ctx),
 * from any thread. @release is called exactly once, whatever this returns
 * (at once when the message was not queued), so a caller that keeps @body
 * takes a reference for the send. For large payloads: no copy in user space
 * between the caller's buffer and the socket.
 */
int cdp_rpc_stream_send_parts(struct cdp_rpc_stream *s, const void *head, size_t head_len,
			      const void *body, size_t body_len, void (*release)(void *ctx),
			      void *ctx, int64_t timeout_ns, struct cdp_err *err);

/*
 * Half-closes: tells the server no more messages come (after the previous
 * message, waited for as in send: -ETIMEDOUT means not closed yet, call
 * again). Sending thread only.
 */
int cdp_rpc_stream_close_send(struct cdp_rpc_stream *s, int64_t timeout_ns, struct cdp_err *err);

/*
 * Receives the next message into @msg (reset first). Returns 1 with a message;
 * 0 at the end of the stream (the server finished or the call died: then
 * cdp_rpc_stream_status()); -ETIMEDOUT when none came in @timeout_ns (the
 * receive stays pending; call again). Receiving thread only.
 */
int cdp_rpc_stream_recv(struct cdp_rpc_stream *s, struct cdp_buf *msg, int64_t timeout_ns,
			struct cdp_err *err);

/*
 * Waits up to @timeout_ns for the call's final status. Returns 0 for OK, or
 * cdp_rpc_errno_from_code() of it with @err "METHOD on TARGET: CODE: details";
 * -ETIMEDOUT if the call has not ended yet. *@code (may be NULL) gets the status.
 * The status arrives once the server has finished and every message was
 * received, or at once after cancel. One thread at a time.
 */
int cdp_rpc_stream_status(struct cdp_rpc_stream *s, int64_t timeout_ns, enum cdp_rpc_code *code,
			  struct cdp_err *err);

/* Cancels the call (the server sees it cancelled; waits return soon). Any thread. */
void cdp_rpc_stream_cancel(struct cdp_rpc_stream *s);

/*
 * Frees @s (NULL: nothing), cancelling the call first unless its status has
 * arrived. No other thread may be using @s.
 */
void cdp_rpc_stream_free(struct cdp_rpc_stream *s);

#endif
