/*
 * capture/nbd - see nbd.h. The NBD server: fixed-newstyle handshake, simple
 * replies, many requests in flight per connection.
 *
 * Threads and ownership:
 *  - "nbd/accept" polls the listening socket and a wake pipe. It starts one
 *    connection per client (at most max_connections live ones) and joins the
 *    connections that have ended: each one moves itself from s->live to
 *    s->finished (under s->mu, closing its socket there) and writes the pipe.
 *  - A connection's reader ("nbd/rN") owns the socket's receive side and the
 *    connection itself. It runs the handshake (every read and write bounded
 *    by the handshake deadline through poll), then reads requests, checks
 *    them (cdp_nbd_check_request), reads WRITE payloads into the request's
 *    own buffer and submits to the export. At the end it waits until nothing
 *    is in flight, closes the reply queue, joins the writer and finishes.
 *  - The writer ("nbd/wN") sends replies in transmission. Export done()
 *    callbacks (any thread) and the reader push finished requests on the
 *    queue "done>nbd/wN"; the writer sends each reply (with the data of a
 *    READ), frees the request and gives its slot back. The queue holds
 *    max_inflight items, as many as can be in flight, so a push never waits.
 *    A done() whose reply has no data sends it itself when that costs no
 *    wait (reply_now: send side free, the socket takes the 16 bytes at
 *    once); an export thread never blocks on a slow client.
 *  - A lone request (no other request on the connection still waiting for
 *    its reply: a client at queue depth 1) is submitted with
 *    CDP_IO_F_INLINE and answered by the reader itself when the export
 *    completes it inside submit(): no thread hand-off at all. r->inline_state settles the race with a done() from
 *    another thread (the export may still queue it): whoever comes second
 *    of "submit returned" and "done" owns the reply. Sends from the reader
 *    and the writer are serialised by c->send_mu. "Lone" counts requests
 *    whose reply has not started (c->unreplied), not slots: a thread that
 *    has sent a reply frees the slot just after, and a client at queue
 *    depth 1 may already have sent its next request by then.
 *  - Flow control: c->inflight (guarded by c->mu) counts requests between
 *    the reader taking them and the writer freeing them. The reader reads no
 *    new header while it is max_inflight: memory per connection is bounded
 *    by max_inflight * max_block.
 *  - TRIM and WRITE_ZEROES longer than max_block go to the export as pieces,
 *    one at a time: the writer submits the next piece when one completes
 *    (done() may run inside submit(), which only pushes on the queue).
 *  - A client that vanishes: the first failed send marks the connection
 *    dead (replies are dropped from then on) and shuts the socket down so
 *    the reader stops; requests in flight still complete into the export.
 *  - Stop: the acceptor is woken and joined; every live socket is shut down
 *    for reading (readers see EOF, in-flight requests complete, replies go
 *    out); after handshake_timeout_ns whatever is left is shut down both ways
 *    (a client that does not read its replies cannot hold the stop up).
 */
#include "capture/nbd.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/queue.h"
#include "common/util.h"

/* ---- protocol values (doc/proto.md, "Values") ---------------------------- */

#define NBD_MAGIC UINT64_C(0x4e42444d41474943)		/* "NBDMAGIC" */
#define NBD_IHAVEOPT UINT64_C(0x49484156454f5054)	/* "IHAVEOPT" */
#define NBD_REP_MAGIC UINT64_C(0x0003e889045565a9)
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u

#define NBD_FLAG_FIXED_NEWSTYLE 0x1u	/* handshake flags */
#define NBD_FLAG_NO_ZEROES 0x2u
#define NBD_FLAG_C_FIXED_NEWSTYLE 0x1u	/* client flags */
#define NBD_FLAG_C_NO_ZEROES 0x2u

#define NBD_FLAG_HAS_FLAGS (1u << 0)	/* transmission flags */
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)

#define NBD_OPT_EXPORT_NAME 1u
#define NBD_OPT_ABORT 2u
#define NBD_OPT_LIST 3u
#define NBD_OPT_STARTTLS 5u
#define NBD_OPT_INFO 6u
#define NBD_OPT_GO 7u

#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR_UNSUP (0x80000000u | 1u)
#define NBD_REP_ERR_POLICY (0x80000000u | 2u)
#define NBD_REP_ERR_INVALID (0x80000000u | 3u)
#define NBD_REP_ERR_UNKNOWN (0x80000000u | 6u)

#define NBD_INFO_EXPORT 0u
#define NBD_INFO_NAME 1u
#define NBD_INFO_BLOCK_SIZE 3u

#define NBD_CMD_READ 0u
#define NBD_CMD_WRITE 1u
#define NBD_CMD_DISC 2u
#define NBD_CMD_FLUSH 3u
#define NBD_CMD_TRIM 4u
#define NBD_CMD_WRITE_ZEROES 6u

#define NBD_CMD_FLAG_FUA 0x1u
#define NBD_CMD_FLAG_NO_HOLE 0x2u

#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

/* ---- our limits ----------------------------------------------------------- */

#define OPT_DATA_MAX (64u << 10)	/* a longer option drops the connection */
#define OPT_COUNT_MAX 1024u		/* options per handshake */
#define NAME_MAX_LEN 4096u		/* the spec's limit on strings */
#define INFLIGHT_MAX 4096u
#define SKIP_CHUNK (64u << 10)
#define DEF_CONNECTIONS 16u
#define DEF_INFLIGHT 64u
#define DEF_HANDSHAKE_NS (10 * CDP_NS_PER_SEC)

/* ---- big-endian wire helpers ---------------------------------------------- */

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	put_be16(p, (uint16_t)(v >> 16));
	put_be16(p + 2, (uint16_t)v);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
	return ((uint32_t)get_be16(p) << 16) | get_be16(p + 2);
}

static uint64_t get_be64(const uint8_t *p)
{
	return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

/* ---- the request parser and checks ---------------------------------------- */

int cdp_nbd_parse_request(const uint8_t p[CDP_NBD_REQ_LEN], struct cdp_nbd_request *r)
{
	if (get_be32(p) != CDP_NBD_REQUEST_MAGIC)
		return -EPROTO;
	r->flags = get_be16(p + 4);
	r->type = get_be16(p + 6);
	r->handle = get_be64(p + 8);
	r->offset = get_be64(p + 16);
	r->length = get_be32(p + 24);
	return 0;
}

static bool export_fua(const struct cdp_export *e)
{
	return e->can_fua && !e->read_only;
}

static uint16_t transmission_flags(const struct cdp_export *e)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS;

	if (e->read_only)
		f |= NBD_FLAG_READ_ONLY;
	if (e->can_flush)
		f |= NBD_FLAG_SEND_FLUSH;
	if (!e->read_only) {
		if (e->can_fua)
			f |= NBD_FLAG_SEND_FUA;
		if (e->can_trim)
			f |= NBD_FLAG_SEND_TRIM;
		if (e->can_zero)
			f |= NBD_FLAG_SEND_WRITE_ZEROES;
	}
	return f;
}

int cdp_nbd_check_request(const struct cdp_nbd_request *r, const struct cdp_export *e,
			  uint32_t *skip_payload)
{
	uint16_t flags_ok = NBD_CMD_FLAG_FUA;
	bool writes = true;

	*skip_payload = 0;
	switch (r->type) {
	case NBD_CMD_DISC:
		return 0;
	case NBD_CMD_WRITE:
		/* The payload follows whatever we answer: read it or drop. */
		if (r->length > e->max_block && r->length > CDP_NBD_SKIP_MAX)
			return -EPROTO;
		*skip_payload = r->length;
		break;
	case NBD_CMD_READ:
	case NBD_CMD_FLUSH:
		writes = false;
		break;
	case NBD_CMD_TRIM:
		break;
	case NBD_CMD_WRITE_ZEROES:
		flags_ok |= NBD_CMD_FLAG_NO_HOLE;
		break;
	default:
		return NBD_EINVAL;
	}
	if (writes && e->read_only)
		return NBD_EPERM;
	if (r->flags & ~flags_ok)
		return NBD_EINVAL;
	if ((r->flags & NBD_CMD_FLAG_FUA) && !export_fua(e))
		return NBD_EINVAL;
	if ((r->type == NBD_CMD_TRIM && !e->can_trim) ||
	    (r->type == NBD_CMD_WRITE_ZEROES && !e->can_zero) ||
	    (r->type == NBD_CMD_FLUSH && !e->can_flush))
		return NBD_EINVAL;
	if (r->type == NBD_CMD_FLUSH)
		return r->offset || r->length ? NBD_EINVAL : 0;
	if (r->length == 0)
		return NBD_EINVAL;
	if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->length > e->max_block)
		return NBD_EOVERFLOW;
	if (r->offset > e->size || r->length > e->size - r->offset)
		return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC
										   : NBD_EINVAL;
	if (r->offset % e->min_block || r->length % e->min_block)
		return NBD_EINVAL;
	return 0;
}

static uint32_t nbd_errno(int rc)
{
	switch (-rc) {
	case 0:
		return 0;
	case EPERM:
	case EACCES:
	case EROFS:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
	case ECANCELED:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

static const char *cmd_name(uint16_t type)
{
	static const char *const names[] = { "READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE",
					     "WRITE_ZEROES", "BLOCK_STATUS" };

	return type < CDP_ARRAY_SIZE(names) ? names[type] : "unknown";
}

/* ---- the server and its connections --------------------------------------- */

struct nbd_conn;

struct cdp_nbd_server {
	struct cdp_export *const *exports;	/* borrowed */
	size_t nexports;
	unsigned max_connections;
	unsigned max_inflight;
	int64_t handshake_ns;
	int thread_nice;	/* 0: inherited */
	int64_t thread_slice_ns;	/* 0: the kernel's */
	char listen[256];
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];	/* "" for TCP */
	int lfd;
	int port;
	int wake[2];		/* the acceptor's pipe: stop and finished connections */
	pthread_t acceptor;
	bool acceptor_started;

	pthread_mutex_t mu;
	pthread_cond_t cond;	/* CLOCK_MONOTONIC; a connection finished */
	bool stopping;		/* guarded by mu */
	struct nbd_conn *live;	/* guarded by mu */
	struct nbd_conn *finished;	/* guarded by mu; to be joined */
	unsigned nlive;		/* guarded by mu */
	unsigned next_id;	/* guarded by mu */
	struct cdp_ratelimit rl;	/* guarded by mu */
};

struct nbd_conn {
	struct cdp_nbd_server *s;
	struct nbd_conn *next;	/* s->live or s->finished; guarded by s->mu */
	int fd;			/* closed under s->mu by conn_finish() */
	unsigned id;
	char peer[80];
	pthread_t reader;
	bool threaded;		/* false: run by cdp_nbd_serve_fd() */
	int64_t started_ns;

	/* Reader only, until the writer starts; then read-only. */
	struct cdp_export *e;
	bool no_zeroes;
	uint32_t piece_max;	/* the split length of TRIM/WRITE_ZEROES */
	uint64_t requests;	/* reader only */
	int result;		/* reader only */
	char why[160];		/* reader only */

	pthread_t writer;
	struct cdp_queue *replies;	/* "done>nbd/wN" */
	pthread_mutex_t send_mu;	/* the socket's send side */
	uint64_t errors;	/* guarded by send_mu */

	pthread_mutex_t mu;
	pthread_cond_t cond;	/* inflight went down */
	unsigned inflight;	/* guarded by mu */
	atomic_uint unreplied;	/* requests read whose reply has not started */
	atomic_bool dead;	/* a send failed: replies are dropped */
};

enum {
	INLINE_NO,		/* an ordinary request: done() queues it for the writer */
	INLINE_SUBMITTING,	/* inside an inline submit(): done() leaves it there */
	INLINE_DONE,		/* done() came during the inline submit(): the reader answers */
};

struct nbd_req {
	struct cdp_io_req io;	/* first: done() gets &io */
	struct nbd_conn *c;
	uint64_t handle;
	uint64_t end;		/* TRIM/WRITE_ZEROES: end of the whole range */
	uint16_t type;
	uint32_t error;		/* the NBD error to reply with, once final */
	int rc;			/* from the export */
	_Atomic int inline_state;	/* INLINE_*: who answers an inline submit */
	bool replied;		/* counted out of c->unreplied */
	uint8_t data[];		/* READ and WRITE payload */
};

static int64_t now_ns(void)
{
	return cdp_clock_mono_ns(cdp_clock_real());
}

/* Logs @msg as a warning unless the server's rate limit holds it back. */
static void warn_limited(struct cdp_nbd_server *s, const char *msg)
{
	unsigned suppressed;
	bool ok;

	pthread_mutex_lock(&s->mu);
	suppressed = s->rl.suppressed;
	ok = cdp_ratelimit_ok(&s->rl, now_ns());
	if (!ok || s->rl.printed != 1)
		suppressed = 0;	/* counted on: reported when a new window opens */
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return;
	if (suppressed)
		cdp_log_warn("nbd: %s (and %u more warnings suppressed)", msg, suppressed);
	else
		cdp_log_warn("nbd: %s", msg);
}

static void conn_warn(struct nbd_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* A rate-limited warning about a client's input, shared by the whole server. */
static void conn_warn(struct nbd_conn *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n;

	n = snprintf(msg, sizeof(msg), "conn %u (%s): ", c->id, c->peer);
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	warn_limited(c->s, msg);
}

/* Waits until @fd is ready for @events or @deadline (monotonic ns) passes. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int64_t left = deadline - now_ns();
		int rc;

		if (left <= 0)
			return -ETIMEDOUT;
		rc = poll(&p, 1, (int)CDP_MIN(left / CDP_NS_PER_MS + 1, INT64_C(60000)));
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
}

/*
 * Reads exactly @len bytes; @deadline < 0 waits for as long as it takes.
 * Returns 0, -ENODATA on EOF before the first byte, -EPROTO on EOF inside,
 * -ETIMEDOUT, or -errno.
 */
static int conn_recv(struct nbd_conn *c, void *buf, size_t len, int64_t deadline)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n;

		if (deadline >= 0) {
			int rc = wait_fd(c->fd, POLLIN, deadline);

			if (rc < 0)
				return rc;
		}
		n = recv(c->fd, p + got, len - got, deadline >= 0 ? MSG_DONTWAIT : 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (n == 0)
			return got ? -EPROTO : -ENODATA;
		got += (size_t)n;
	}
	return 0;
}

/* Sends every byte of @iov (modified); @deadline as conn_recv(). 0 or -errno. */
static int conn_sendv(struct nbd_conn *c, struct iovec *iov, int n, int64_t deadline)
{
	while (n > 0) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t sent;

		if (deadline >= 0) {
			int rc = wait_fd(c->fd, POLLOUT, deadline);

			if (rc < 0)
				return rc;
		}
		sent = sendmsg(c->fd, &m, MSG_NOSIGNAL | (deadline >= 0 ? MSG_DONTWAIT : 0));
		if (sent < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		while (n > 0 && (size_t)sent >= iov->iov_len) {
			sent -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + sent;
			iov->iov_len -= (size_t)sent;
		}
	}
	return 0;
}

/* ---- handshake ------------------------------------------------------------- */

static struct cdp_export *find_export(struct cdp_nbd_server *s, const uint8_t *name, size_t len)
{
	if (len == 0)
		return s->exports[0];
	for (size_t i = 0; i < s->nexports; i++) {
		const char *n = s->exports[i]->name ? s->exports[i]->name : "";

		if (strlen(n) == len && memcmp(n, name, len) == 0)
			return s->exports[i];
	}
	return NULL;
}

/* Sends one option reply: header plus @len bytes of @data. */
static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
		     size_t len, int64_t deadline)
{
	uint8_t h[20];
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };

	put_be64(h, NBD_REP_MAGIC);
	put_be32(h + 8, opt);
	put_be32(h + 12, type);
	put_be32(h + 16, (uint32_t)len);
	return conn_sendv(c, iov, len ? 2 : 1, deadline);
}

static int opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *msg,
		     int64_t deadline)
{
	return opt_reply(c, opt, type, msg, strlen(msg), deadline);
}

static int opt_list(struct nbd_conn *c, uint32_t len, int64_t deadline)
{
	uint8_t buf[4 + NAME_MAX_LEN];
	int rc;

	if (len)
		return opt_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data",
				 deadline);
	for (size_t i = 0; i < c->s->nexports; i++) {
		const char *n = c->s->exports[i]->name ? c->s->exports[i]->name : "";
		size_t nl = CDP_MIN(strlen(n), (size_t)NAME_MAX_LEN);

		put_be32(buf, (uint32_t)nl);
		memcpy(buf + 4, n, nl);
		rc = opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + nl, deadline);
		if (rc)
			return rc;
	}
	return opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0, deadline);
}

/* NBD_OPT_INFO and NBD_OPT_GO. Returns 1 when GO succeeded (transmission). */
static int opt_info_go(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len,
		       int64_t deadline)
{
	uint8_t info[2 + 12];
	struct cdp_export *e;
	bool want_name = false;
	uint32_t namelen;
	uint16_t nreq;
	int rc;

	if (len < 6)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "option data shorter than 6 bytes",
				 deadline);
	namelen = get_be32(d);
	if (namelen > len - 6)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "name length past the option data",
				 deadline);
	nreq = get_be16(d + 4 + namelen);
	if ((uint64_t)4 + namelen + 2 + 2 * (uint64_t)nreq != len)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "information request count does not match the option length",
				 deadline);
	for (uint16_t i = 0; i < nreq; i++)
		if (get_be16(d + 6 + namelen + 2 * i) == NBD_INFO_NAME)
			want_name = true;
	e = find_export(c->s, d + 4, namelen);
	if (!e)
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export", deadline);

	put_be16(info, NBD_INFO_EXPORT);
	put_be64(info + 2, e->size);
	put_be16(info + 10, transmission_flags(e));
	rc = opt_reply(c, opt, NBD_REP_INFO, info, 12, deadline);
	if (rc)
		return rc;
	put_be16(info, NBD_INFO_BLOCK_SIZE);
	put_be32(info + 2, e->min_block);
	put_be32(info + 6, e->pref_block);
	put_be32(info + 10, e->max_block);
	rc = opt_reply(c, opt, NBD_REP_INFO, info, 14, deadline);
	if (rc)
		return rc;
	if (want_name) {
		const char *n = e->name ? e->name : "";
		size_t nl = CDP_MIN(strlen(n), (size_t)NAME_MAX_LEN);
		uint8_t buf[2 + NAME_MAX_LEN];

		put_be16(buf, NBD_INFO_NAME);
		memcpy(buf + 2, n, nl);
		rc = opt_reply(c, opt, NBD_REP_INFO, buf, 2 + nl, deadline);
		if (rc)
			return rc;
	}
	rc = opt_reply(c, opt, NBD_REP_ACK, NULL, 0, deadline);
	if (rc)
		return rc;
	if (opt == NBD_OPT_GO) {
		c->e = e;
		return 1;
	}
	return 0;
}

/* NBD_OPT_EXPORT_NAME: no way to say no but to hang up. 1: transmission. */
static int opt_export_name(struct nbd_conn *c, const uint8_t *d, uint32_t len, int64_t deadline)
{
	uint8_t buf[10 + 124] = { 0 };
	struct iovec iov = { buf, sizeof(buf) };
	struct cdp_export *e = find_export(c->s, d, len);
	int rc;

	if (!e) {
		snprintf(c->why, sizeof(c->why), "NBD_OPT_EXPORT_NAME of an unknown export");
		return -ENOENT;
	}
	put_be64(buf, e->size);
	put_be16(buf + 8, transmission_flags(e));
	if (c->no_zeroes)
		iov.iov_len = 10;
	rc = conn_sendv(c, &iov, 1, deadline);
	if (rc)
		return rc;
	c->e = e;
	return 1;
}

/*
 * The handshake. Returns 1 when transmission starts (c->e chosen), 0 after
 * NBD_OPT_ABORT or a close between options, or -errno (c->why says why).
 */
static int handshake(struct nbd_conn *c)
{
	int64_t deadline = now_ns() + c->s->handshake_ns;
	uint8_t hello[18], h[16];
	uint8_t *data = NULL;
	uint32_t cflags;
	int rc;

	put_be64(hello, NBD_MAGIC);
	put_be64(hello + 8, NBD_IHAVEOPT);
	put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	struct iovec iov = { hello, sizeof(hello) };
	rc = conn_sendv(c, &iov, 1, deadline);
	if (rc)
		goto io_fail;
	rc = conn_recv(c, h, 4, deadline);
	if (rc)
		goto io_fail;
	cflags = get_be32(h);
	if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		snprintf(c->why, sizeof(c->why), "unknown client flags 0x%08" PRIx32, cflags);
		return -EPROTO;
	}
	c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

	data = cdp_xmalloc(OPT_DATA_MAX);
	for (unsigned n = 0;; n++) {
		uint32_t opt, len;

		rc = conn_recv(c, h, sizeof(h), deadline);
		if (rc == -ENODATA) {
			snprintf(c->why, sizeof(c->why), "client closed during the handshake");
			rc = 0;
			goto out;
		}
		if (rc)
			goto io_fail;
		if (get_be64(h) != NBD_IHAVEOPT) {
			snprintf(c->why, sizeof(c->why),
				 "option magic 0x%016" PRIx64 ", expected IHAVEOPT", get_be64(h));
			rc = -EPROTO;
			goto out;
		}
		opt = get_be32(h + 8);
		len = get_be32(h + 12);
		if (len > OPT_DATA_MAX) {
			snprintf(c->why, sizeof(c->why), "option %" PRIu32 " with %" PRIu32
				 " bytes of data > %u", opt, len, OPT_DATA_MAX);
			rc = -EPROTO;
			goto out;
		}
		if (n >= OPT_COUNT_MAX) {
			snprintf(c->why, sizeof(c->why), "more than %u options", OPT_COUNT_MAX);
			rc = -EPROTO;
			goto out;
		}
		rc = conn_recv(c, data, len, deadline);
		if (rc)
			goto io_fail;
		switch (opt) {
		case NBD_OPT_EXPORT_NAME:
			rc = opt_export_name(c, data, len, deadline);
			break;
		case NBD_OPT_ABORT:
			/* The client may already be gone: a failed ack is fine. */
			opt_reply(c, opt, NBD_REP_ACK, NULL, 0, deadline);
			snprintf(c->why, sizeof(c->why), "NBD_OPT_ABORT");
			rc = 0;
			goto out;
		case NBD_OPT_LIST:
			rc = opt_list(c, len, deadline);
			break;
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			rc = opt_info_go(c, opt, data, len, deadline);
			break;
		case NBD_OPT_STARTTLS:
			rc = opt_error(c, opt, NBD_REP_ERR_POLICY, "TLS is not offered", deadline);
			break;
		default:
			rc = opt_error(c, opt, NBD_REP_ERR_UNSUP, "option not supported", deadline);
			break;
		}
		if (rc == 1)
			goto out;
		if (rc == -ENOENT)
			goto out;
		if (rc)
			goto io_fail;
	}
io_fail:
	if (rc == -ETIMEDOUT)
		snprintf(c->why, sizeof(c->why), "handshake not done within %" PRId64 " ms",
			 c->s->handshake_ns / CDP_NS_PER_MS);
	else if (rc == -ENODATA || rc == -EPROTO)
		snprintf(c->why, sizeof(c->why), "client closed inside a handshake message");
	else
		snprintf(c->why, sizeof(c->why), "handshake: %s", strerror(-rc));
	if (rc == -ENODATA)
		rc = -EPROTO;
out:
	free(data);
	return rc;
}

/* ---- transmission ----------------------------------------------------------- */

/* @r's reply starts now (or never will): it no longer keeps others from being lone. */
static void req_replied(struct nbd_conn *c, struct nbd_req *r)
{
	if (!r->replied) {
		r->replied = true;
		atomic_fetch_sub(&c->unreplied, 1);
	}
}

static void inflight_put(struct nbd_conn *c)
{
	pthread_mutex_lock(&c->mu);
	assert(c->inflight > 0);
	c->inflight--;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
}

/* Waits for a free slot and takes it; false when the connection is dead. */
static bool inflight_get(struct nbd_conn *c)
{
	bool ok;

	pthread_mutex_lock(&c->mu);
	while (c->inflight >= c->s->max_inflight && !atomic_load(&c->dead))
		pthread_cond_wait(&c->cond, &c->mu);
	ok = !atomic_load(&c->dead);
	if (ok)
		c->inflight++;
	pthread_mutex_unlock(&c->mu);
	return ok;
}

static void inflight_drain(struct nbd_conn *c)
{
	pthread_mutex_lock(&c->mu);
	while (c->inflight)
		pthread_cond_wait(&c->cond, &c->mu);
	pthread_mutex_unlock(&c->mu);
}

/* Queues @r for the writer. The queue has room for every slot: no wait. */
static void req_finish(struct nbd_req *r)
{
	int rc = cdp_queue_push(r->c->replies, r, 0);

	assert(rc == 0);
	(void)rc;
}

static void send_failed(struct nbd_conn *c, int rc);

/* A simple reply's 16 bytes for @r. */
static void reply_header(uint8_t h[16], const struct nbd_req *r)
{
	put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(h + 4, r->error);
	put_be64(h + 8, r->handle);
}
static void req_end(struct nbd_conn *c, struct nbd_req *r);

/* Whether @r is a TRIM/WRITE_ZEROES with pieces still to submit (see req_next_piece). */
static bool more_pieces(struct nbd_conn *c, const struct nbd_req *r)
{
	return !r->rc && !r->error && r->io.offset + r->io.length < r->end &&
	       !atomic_load(&c->dead);
}

/*
 * Answers @r from the thread that completed it when that costs no wait: a
 * reply without data (WRITE, FLUSH, TRIM, ZERO, errors), the send side free
 * and the socket taking the 16 bytes at once. Saves the hand-off to the
 * writer for requests that ran on the export's threads (several in flight).
 * False: the writer answers it.
 */
static bool reply_now(struct nbd_conn *c, struct nbd_req *r)
{
	uint8_t h[16];
	ssize_t n;
	int rc = 0;

	if ((r->type == NBD_CMD_READ && !r->rc && !r->error) || more_pieces(c, r))
		return false;
	if (pthread_mutex_trylock(&c->send_mu))
		return false;
	if (!r->error && r->rc < 0)
		r->error = nbd_errno(r->rc);
	reply_header(h, r);
	req_replied(c, r);
	n = atomic_load(&c->dead) ? (ssize_t)sizeof(h) :
	    send(c->fd, h, sizeof(h), MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		r->replied = false;	/* not started after all: the writer sends it */
		atomic_fetch_add(&c->unreplied, 1);
		pthread_mutex_unlock(&c->send_mu);
		return false;
	}
	if (n < 0) {
		rc = -errno;
	} else if ((size_t)n < sizeof(h)) {	/* the rest of 16 bytes: rare, short */
		struct iovec iov = { h + n, sizeof(h) - (size_t)n };

		rc = conn_sendv(c, &iov, 1, -1);
	}
	if (r->error)
		c->errors++;
	pthread_mutex_unlock(&c->send_mu);
	if (rc)
		send_failed(c, rc);
	req_end(c, r);
	return true;
}

static void req_done(struct cdp_io_req *io, int rc)
{
	struct nbd_req *r = (struct nbd_req *)io;
	int expect = INLINE_SUBMITTING;

	r->rc = rc;
	if (atomic_compare_exchange_strong(&r->inline_state, &expect, INLINE_DONE))
		return;		/* the reader, still in submit(), answers it */
	if (!reply_now(r->c, r))
		req_finish(r);
}

/* Submits @r's current piece; on refusal it is finished with the error. */
static void req_submit(struct nbd_conn *c, struct nbd_req *r)
{
	int rc = c->e->submit(c->e, &r->io);

	if (rc < 0) {
		r->rc = rc;
		req_finish(r);
	}
	/* rc == 0: @r belongs to the export until done(); not touched here. */
}

/* Sets @r up for the next piece of a split TRIM/WRITE_ZEROES; false at the end. */
static bool req_next_piece(struct nbd_conn *c, struct nbd_req *r)
{
	uint64_t off = r->io.offset + r->io.length;

	if (r->rc || r->error || off >= r->end || atomic_load(&c->dead))
		return false;
	r->io.offset = off;
	r->io.length = (uint32_t)CDP_MIN((uint64_t)c->piece_max, r->end - off);
	memset(r->io.priv, 0, sizeof(r->io.priv));
	return true;
}

static void send_reply(struct nbd_conn *c, struct nbd_req *r)
{
	uint8_t h[16];
	struct iovec iov[2] = { { h, sizeof(h) }, { r->data, r->io.length } };
	int n = 1, rc;

	reply_header(h, r);
	if (r->type == NBD_CMD_READ && !r->error)
		n = 2;
	pthread_mutex_lock(&c->send_mu);
	if (r->error)
		c->errors++;
	req_replied(c, r);
	rc = atomic_load(&c->dead) ? 0 : conn_sendv(c, iov, n, -1);
	pthread_mutex_unlock(&c->send_mu);
	if (rc)
		send_failed(c, rc);
}

/* The client is gone: drop every reply from now on, stop the reader. */
static void send_failed(struct nbd_conn *c, int rc)
{
	atomic_store(&c->dead, true);
	shutdown(c->fd, SHUT_RDWR);
	pthread_mutex_lock(&c->mu);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	cdp_log_debug("nbd", "nbd: conn %u: reply send failed: %s", c->id, strerror(-rc));
}

/* @r is answered (or its reply dropped): free it and its slot. */
static void req_end(struct nbd_conn *c, struct nbd_req *r)
{
	req_replied(c, r);
	free(r);
	inflight_put(c);
}

/* @r's current piece is done: submit the next one, or answer and free it. */
static void req_advance(struct nbd_conn *c, struct nbd_req *r)
{
	if (req_next_piece(c, r)) {
		req_submit(c, r);
		return;
	}
	if (!r->error && r->rc < 0)
		r->error = nbd_errno(r->rc);
	if (r->error)
		cdp_log_debug("nbd", "nbd: conn %u: %s offset %" PRIu64 " length %" PRIu32
			      ": error %" PRIu32, c->id, cmd_name(r->type), r->io.offset,
			      r->io.length, r->error);
	send_reply(c, r);
	req_end(c, r);
}

static void *writer_main(void *arg)
{
	struct nbd_conn *c = arg;
	void *p;

	if (c->s->thread_slice_ns)	/* a new thread starts with the kernel's slice */
		cdp_thread_set_slice(c->s->thread_slice_ns);

	while (cdp_queue_pop(c->replies, &p, CDP_QUEUE_UNTIL_CLOSED) == 0)
		req_advance(c, p);
	return NULL;
}

/*
 * Submits the reader's request @r; when it is the only one in flight, with
 * CDP_IO_F_INLINE, and answers it here if the export completed it in submit().
 */
static void req_submit_first(struct nbd_conn *c, struct nbd_req *r)
{
	int expect = INLINE_SUBMITTING;
	bool lone;
	int rc;

	lone = atomic_load(&c->unreplied) == 1;	/* @r itself */
	if (!lone) {
		req_submit(c, r);
		return;
	}
	r->io.flags |= CDP_IO_F_INLINE;
	atomic_store(&r->inline_state, INLINE_SUBMITTING);
	rc = c->e->submit(c->e, &r->io);
	if (rc < 0) {
		r->rc = rc;
		atomic_store(&r->inline_state, INLINE_DONE);
	} else if (atomic_compare_exchange_strong(&r->inline_state, &expect, INLINE_NO)) {
		return;		/* done() comes later, from another thread: the writer answers */
	}
	/* Completed in submit(): later pieces of a split TRIM/ZERO go the usual way. */
	r->io.flags &= ~CDP_IO_F_INLINE;
	atomic_store(&r->inline_state, INLINE_NO);
	req_advance(c, r);
}

/* Reads and throws away @len bytes of a refused WRITE's payload. */
static int skip_payload(struct nbd_conn *c, uint32_t len)
{
	uint8_t *buf;
	int rc = 0;

	if (!len)
		return 0;
	buf = cdp_xmalloc(CDP_MIN(len, SKIP_CHUNK));
	while (len && !rc) {
		uint32_t n = CDP_MIN(len, SKIP_CHUNK);

		rc = conn_recv(c, buf, n, -1);
		len -= n;
	}
	free(buf);
	return rc;
}

static struct nbd_req *req_new(struct nbd_conn *c, const struct cdp_nbd_request *q,
			       size_t datalen)
{
	struct nbd_req *r = cdp_xmalloc(sizeof(*r) + datalen);

	memset(r, 0, sizeof(*r));
	r->c = c;
	r->handle = q->handle;
	r->type = q->type;
	r->io.offset = q->offset;
	r->io.length = q->length;
	r->io.done = req_done;
	r->io.user = c;
	atomic_fetch_add(&c->unreplied, 1);
	return r;
}

static void set_why(struct nbd_conn *c, int rc, const char *what)
{
	if (rc == -ENODATA)
		snprintf(c->why, sizeof(c->why), "%s", what);
	else if (rc == -EPROTO)
		snprintf(c->why, sizeof(c->why), "client closed inside a request");
	else
		snprintf(c->why, sizeof(c->why), "receive: %s", strerror(-rc));
}

/*
 * A WRITE's payload could not be read (@rc from conn_recv): @r and its slot
 * go, and the connection ends (EOF inside a request is -EPROTO). Returns
 * the error for serve_requests() to return.
 */
static int payload_lost(struct nbd_conn *c, struct nbd_req *r, int rc)
{
	req_end(c, r);
	rc = rc == -ENODATA ? -EPROTO : rc;
	set_why(c, rc, "");
	return rc;
}

/* Reads, checks and submits requests until the client leaves. 0 or -errno. */
static int serve_requests(struct nbd_conn *c)
{
	struct cdp_export *e = c->e;
	uint8_t h[CDP_NBD_REQ_LEN];

	for (;;) {
		struct cdp_nbd_request q;
		struct nbd_req *r;
		uint32_t skip;
		bool data;
		int rc;

		if (!inflight_get(c)) {
			snprintf(c->why, sizeof(c->why), "replies could not be sent");
			return -EPIPE;
		}
		rc = conn_recv(c, h, sizeof(h), -1);
		if (rc) {
			inflight_put(c);
			set_why(c, rc, "client closed without NBD_CMD_DISC");
			return rc == -ENODATA ? 0 : rc;
		}
		if (cdp_nbd_parse_request(h, &q) < 0) {
			inflight_put(c);
			snprintf(c->why, sizeof(c->why),
				 "request magic 0x%08" PRIx32 ", expected 0x%08x", get_be32(h),
				 CDP_NBD_REQUEST_MAGIC);
			conn_warn(c, "%s: dropping the connection", c->why);
			return -EPROTO;
		}
		if (q.type == NBD_CMD_DISC) {
			inflight_put(c);
			snprintf(c->why, sizeof(c->why), "NBD_CMD_DISC");
			return 0;
		}
		c->requests++;
		rc = cdp_nbd_check_request(&q, e, &skip);
		if (rc < 0) {
			inflight_put(c);
			snprintf(c->why, sizeof(c->why), "WRITE of %" PRIu32 " bytes > %" PRIu32
				 " and too long to skip", q.length,
				 CDP_MAX(e->max_block, CDP_NBD_SKIP_MAX));
			conn_warn(c, "%s: dropping the connection", c->why);
			return -EPROTO;
		}
		if (rc > 0) {
			conn_warn(c, "refused %s (type %u) flags 0x%x offset %" PRIu64
				  " length %" PRIu32 " (export size %" PRIu64 "): NBD error %d",
				  cmd_name(q.type), q.type, q.flags, q.offset, q.length, e->size,
				  rc);
			r = req_new(c, &q, 0);
			r->error = (uint32_t)rc;
			rc = skip_payload(c, skip);
			if (rc)
				return payload_lost(c, r, rc);
			req_finish(r);
			continue;
		}
		data = q.type == NBD_CMD_READ || q.type == NBD_CMD_WRITE;
		r = req_new(c, &q, data ? q.length : 0);
		switch (q.type) {
		case NBD_CMD_READ:
			r->io.kind = CDP_IO_READ;
			r->io.data = r->data;
			break;
		case NBD_CMD_WRITE:
			r->io.kind = CDP_IO_WRITE;
			r->io.data = r->data;
			rc = conn_recv(c, r->data, q.length, -1);
			if (rc)
				return payload_lost(c, r, rc);
			break;
		case NBD_CMD_FLUSH:
			r->io.kind = CDP_IO_FLUSH;
			break;
		case NBD_CMD_TRIM:
		case NBD_CMD_WRITE_ZEROES:
			r->io.kind = q.type == NBD_CMD_TRIM ? CDP_IO_TRIM : CDP_IO_ZERO;
			r->end = q.offset + q.length;
			r->io.length = CDP_MIN(q.length, c->piece_max);
			if (q.flags & NBD_CMD_FLAG_NO_HOLE)
				r->io.flags |= CDP_IO_F_NO_HOLE;
			break;
		}
		if (q.flags & NBD_CMD_FLAG_FUA && q.type != NBD_CMD_READ && q.type != NBD_CMD_FLUSH)
			r->io.flags |= CDP_IO_F_FUA;
		req_submit_first(c, r);
	}
}

/* Runs one connection: handshake, transmission, drain. Sets c->result. */
static void conn_run(struct nbd_conn *c)
{
	struct cdp_export *e;
	char name[16];
	int rc;

	c->started_ns = now_ns();
	rc = handshake(c);
	if (rc <= 0) {
		c->result = rc;
		if (rc < 0)
			conn_warn(c, "closed in the handshake: %s", c->why);
		else
			cdp_log_debug("nbd", "nbd: conn %u (%s) closed in the handshake: %s", c->id,
				      c->peer, c->why);
		return;
	}
	e = c->e;
	c->piece_max = CDP_ALIGN_DOWN(e->max_block, e->min_block);
	cdp_log_info("nbd: conn %u (%s): export '%s', %" PRIu64 " bytes%s", c->id, c->peer,
		     e->name ? e->name : "", e->size, e->read_only ? ", read-only" : "");
	snprintf(name, sizeof(name), "done>nbd/w%u", c->id);
	c->replies = cdp_queue_new(name, c->s->max_inflight);
	snprintf(name, sizeof(name), "nbd/w%u", c->id);
	rc = cdp_thread_start(&c->writer, name, writer_main, c);
	if (rc) {
		snprintf(c->why, sizeof(c->why), "cannot start the writer thread: %s",
			 strerror(-rc));
	} else {
		rc = serve_requests(c);
		/* Everything in flight completes (and is answered if the socket allows). */
		inflight_drain(c);
		cdp_queue_close(c->replies);
		pthread_join(c->writer, NULL);
	}
	cdp_queue_free(c->replies);
	c->replies = NULL;
	c->result = rc;
	cdp_log_info("nbd: conn %u (%s) closed: %s; %" PRIu64 " requests, %" PRIu64
		     " errors, %.1f s", c->id, c->peer, c->why, c->requests, c->errors,
		     (double)(now_ns() - c->started_ns) / 1e9);
}

static struct nbd_conn *conn_new(struct cdp_nbd_server *s, int fd, unsigned id)
{
	struct nbd_conn *c = cdp_xcalloc(1, sizeof(*c));

	c->s = s;
	c->fd = fd;
	c->id = id;
	snprintf(c->peer, sizeof(c->peer), "?");
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->send_mu, NULL);
	pthread_cond_init(&c->cond, NULL);
	atomic_init(&c->dead, false);
	return c;
}

static void conn_free(struct nbd_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	pthread_mutex_destroy(&c->mu);
	pthread_mutex_destroy(&c->send_mu);
	pthread_cond_destroy(&c->cond);
	free(c);
}

static void wake_acceptor(struct cdp_nbd_server *s)
{
	char b = 1;

	if (write(s->wake[1], &b, 1) < 0) {
		/* Full pipe: the acceptor has a wake-up pending anyway. */
	}
}

static void *conn_thread(void *arg)
{
	struct nbd_conn *c = arg;
	struct cdp_nbd_server *s = c->s;
	int rc;

	/* The application waits for this thread and its writer (which inherits it). */
	if (s->thread_nice && (rc = cdp_thread_set_nice(s->thread_nice))) {
		char msg[96];

		snprintf(msg, sizeof(msg), "connection threads stay at their nice value: "
			 "setpriority %d: %s", s->thread_nice, strerror(-rc));
		warn_limited(s, msg);
	}
	if (s->thread_slice_ns && (rc = cdp_thread_set_slice(s->thread_slice_ns)))
		cdp_log_debug("nbd", "nbd: conn %u: sched_setattr: %s", c->id, strerror(-rc));
	conn_run(c);
	pthread_mutex_lock(&s->mu);
	for (struct nbd_conn **pp = &s->live; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	close(c->fd);
	c->fd = -1;
	c->next = s->finished;
	s->finished = c;
	s->nlive--;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->mu);
	wake_acceptor(s);
	return NULL;
}

/* Joins and frees the connections that have ended. */
static void reap(struct cdp_nbd_server *s)
{
	struct nbd_conn *list;

	pthread_mutex_lock(&s->mu);
	list = s->finished;
	s->finished = NULL;
	pthread_mutex_unlock(&s->mu);
	while (list) {
		struct nbd_conn *c = list;

		list = c->next;
		pthread_join(c->reader, NULL);
		conn_free(c);
	}
}

static void peer_name(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, size, "unix");
	}
}

static void accept_one(struct cdp_nbd_server *s)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct nbd_conn *c;
	char name[16];
	int fd, one = 1, rc;
	unsigned id;

	fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
			return;
		cdp_log_warn("nbd: accept on %s: %s", s->listen, strerror(errno));
		/* Out of descriptors: wait a little for connections to end. */
		struct pollfd p = { .fd = s->wake[0], .events = POLLIN };

		poll(&p, 1, 100);
		return;
	}
	pthread_mutex_lock(&s->mu);
	if (s->nlive >= s->max_connections) {
		pthread_mutex_unlock(&s->mu);
		close(fd);
		warn_limited(s, "refused a connection: max_connections reached");
		return;
	}
	id = ++s->next_id;
	pthread_mutex_unlock(&s->mu);

	if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = conn_new(s, fd, id);
	c->threaded = true;
	peer_name(&ss, c->peer, sizeof(c->peer));
	snprintf(name, sizeof(name), "nbd/r%u", id);
	pthread_mutex_lock(&s->mu);
	c->next = s->live;
	s->live = c;
	s->nlive++;
	rc = cdp_thread_start(&c->reader, name, conn_thread, c);
	if (rc) {
		s->live = c->next;
		s->nlive--;
		pthread_mutex_unlock(&s->mu);
		cdp_log_warn("nbd: cannot start a connection thread: %s", strerror(-rc));
		conn_free(c);
		return;
	}
	pthread_mutex_unlock(&s->mu);
}

static void *acceptor_main(void *arg)
{
	struct cdp_nbd_server *s = arg;

	for (;;) {
		struct pollfd p[2] = { { .fd = s->lfd, .events = POLLIN },
				       { .fd = s->wake[0], .events = POLLIN } };
		bool stopping;

		reap(s);
		if (poll(p, 2, -1) < 0 && errno != EINTR) {
			cdp_log_err("nbd: poll on %s: %s", s->listen, strerror(errno));
			break;
		}
		if (p[1].revents) {
			char buf[64];

			while (read(s->wake[0], buf, sizeof(buf)) > 0)
				;
		}
		pthread_mutex_lock(&s->mu);
		stopping = s->stopping;
		pthread_mutex_unlock(&s->mu);
		if (stopping)
			break;
		if (p[0].revents)
			accept_one(s);
	}
	return NULL;
}

/* ---- start and stop ---------------------------------------------------------- */

static bool pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

static int check_export(const struct cdp_export *e, size_t i, struct cdp_err *err)
{
	const char *n = e && e->name ? e->name : "";

	if (!e || !e->submit)
		return cdp_err_set(err, -EINVAL, "export %zu: no submit function", i);
	if (strlen(n) > NAME_MAX_LEN)
		return cdp_err_set(err, -EINVAL, "export %zu: name of %zu bytes > %u", i, strlen(n),
				   NAME_MAX_LEN);
	if (!pow2(e->min_block) || e->min_block > 65536)
		return cdp_err_set(err, -EINVAL, "export '%s': min_block %" PRIu32
				   " is not a power of two in 1..65536", n, e->min_block);
	if (!pow2(e->pref_block) || e->pref_block < e->min_block)
		return cdp_err_set(err, -EINVAL, "export '%s': pref_block %" PRIu32
				   " is not a power of two >= min_block %" PRIu32, n, e->pref_block,
				   e->min_block);
	if (e->max_block < e->pref_block)
		return cdp_err_set(err, -EINVAL, "export '%s': max_block %" PRIu32
				   " < pref_block %" PRIu32, n, e->max_block, e->pref_block);
	if (e->size % e->min_block)
		return cdp_err_set(err, -EINVAL, "export '%s': size %" PRIu64
				   " is not a multiple of min_block %" PRIu32, n, e->size,
				   e->min_block);
	return 0;
}

static struct cdp_nbd_server *server_new(const struct cdp_nbd_opts *o, struct cdp_err *err)
{
	struct cdp_nbd_server *s;
	pthread_condattr_t ca;

	if (!o->exports || o->nexports == 0) {
		cdp_err_set(err, -EINVAL, "exports: none given");
		return NULL;
	}
	for (size_t i = 0; i < o->nexports; i++)
		if (check_export(o->exports[i], i, err))
			return NULL;
	if (o->max_inflight > INFLIGHT_MAX) {
		cdp_err_set(err, -EINVAL, "max_inflight %u > %u", o->max_inflight, INFLIGHT_MAX);
		return NULL;
	}
	if (o->handshake_timeout_ns < 0) {
		cdp_err_set(err, -EINVAL, "handshake_timeout_ns %" PRId64 " < 0",
			    o->handshake_timeout_ns);
		return NULL;
	}
	if (o->thread_nice < -20 || o->thread_nice > 19) {
		cdp_err_set(err, -EINVAL, "thread_nice %d not in -20..19", o->thread_nice);
		return NULL;
	}
	if (o->thread_slice_ns < 0) {
		cdp_err_set(err, -EINVAL, "thread_slice_ns %" PRId64 " < 0", o->thread_slice_ns);
		return NULL;
	}
	s = cdp_xcalloc(1, sizeof(*s));
	s->exports = o->exports;
	s->nexports = o->nexports;
	s->max_connections = o->max_connections ? o->max_connections : DEF_CONNECTIONS;
	s->max_inflight = o->max_inflight ? o->max_inflight : DEF_INFLIGHT;
	s->handshake_ns = o->handshake_timeout_ns ? o->handshake_timeout_ns : DEF_HANDSHAKE_NS;
	s->thread_nice = o->thread_nice;
	s->thread_slice_ns = o->thread_slice_ns;
	snprintf(s->listen, sizeof(s->listen), "%s", o->listen ? o->listen : "");
	s->lfd = -1;
	s->wake[0] = s->wake[1] = -1;
	s->rl.interval_ns = 10 * CDP_NS_PER_SEC;
	s->rl.burst = 10;
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	return s;
}

static void server_free(struct cdp_nbd_server *s)
{
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->wake[0] >= 0)
		close(s->wake[0]);
	if (s->wake[1] >= 0)
		close(s->wake[1]);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cond);
	free(s);
}

static int listen_unix(struct cdp_nbd_server *s, const char *path, struct cdp_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (!*path || strlen(path) >= sizeof(sa.sun_path))
		return cdp_err_set(err, -EINVAL, "listen: unix path of %zu bytes, expected 1..%zu",
				   strlen(path), sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cdp_err_sys(err, -errno, "listen: socket");
	/* A socket file left by a dead server is replaced; a live one is not. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(fd);
			return cdp_err_set(err, -EADDRINUSE,
					   "listen: %s: a server is listening there", path);
		}
		unlink(path);
		close(fd);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return cdp_err_sys(err, -errno, "listen: socket");
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int rc = -errno;

		close(fd);
		return cdp_err_sys(err, rc, "listen: bind %s", path);
	}
	snprintf(s->unix_path, sizeof(s->unix_path), "%s", path);
	s->lfd = fd;
	return 0;
}

static int listen_tcp(struct cdp_nbd_server *s, const char *spec, struct cdp_err *err)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	char host[256];
	const char *colon = strrchr(spec, ':');
	const char *port;
	size_t hl;
	int rc, last = -EADDRNOTAVAIL;

	if (!colon || !colon[1])
		return cdp_err_set(err, -EINVAL, "listen '%s': expected unix:/path or HOST:PORT",
				   spec);
	port = colon + 1;
	hl = (size_t)(colon - spec);
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return cdp_err_set(err, -EINVAL, "listen: host of %zu bytes > %zu", hl,
				   sizeof(host) - 1);
	memcpy(host, spec, hl);
	host[hl] = 0;
	rc = getaddrinfo(hl ? host : NULL, port, &hints, &res);
	if (rc)
		return cdp_err_set(err, -EINVAL, "listen '%s': %s", s->listen, gai_strerror(rc));
	for (ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		int one = 1;

		if (fd < 0) {
			last = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			s->lfd = fd;
			break;
		}
		last = -errno;
		close(fd);
	}
	freeaddrinfo(res);
	if (s->lfd < 0)
		return cdp_err_sys(err, last, "listen: bind %s", s->listen);
	return 0;
}

int cdp_nbd_server_start(const struct cdp_nbd_opts *o, struct cdp_nbd_server **out,
			 struct cdp_err *err)
{
	struct cdp_nbd_server *s;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int rc;

	*out = NULL;
	if (!o->listen || !*o->listen)
		return cdp_err_set(err, -EINVAL, "listen: empty, expected unix:/path or HOST:PORT");
	s = server_new(o, err);
	if (!s)
		return err ? err->code : -EINVAL;
	if (strncmp(o->listen, "unix:", 5) == 0)
		rc = listen_unix(s, o->listen + 5, err);
	else
		rc = listen_tcp(s, o->listen, err);
	if (rc)
		goto fail;
	if (listen(s->lfd, 64) < 0) {
		rc = cdp_err_sys(err, -errno, "listen %s", s->listen);
		goto fail;
	}
	fcntl(s->lfd, F_SETFL, fcntl(s->lfd, F_GETFL) | O_NONBLOCK);
	if (getsockname(s->lfd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		rc = cdp_err_sys(err, -errno, "pipe");
		goto fail;
	}
	rc = cdp_thread_start(&s->acceptor, "nbd/accept", acceptor_main, s);
	if (rc) {
		cdp_err_sys(err, rc, "cannot start the accept thread");
		goto fail;
	}
	s->acceptor_started = true;
	cdp_log_info("nbd: listening on %s (%zu export%s, default '%s')", s->listen, s->nexports,
		     s->nexports == 1 ? "" : "s", s->exports[0]->name ? s->exports[0]->name : "");
	*out = s;
	return 0;
fail:
	if (s->unix_path[0])
		unlink(s->unix_path);
	server_free(s);
	return rc;
}

int cdp_nbd_server_port(const struct cdp_nbd_server *s)
{
	return s->port;
}

void cdp_nbd_server_stop(struct cdp_nbd_server *s)
{
	int64_t deadline;

	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->stopping = true;
	pthread_mutex_unlock(&s->mu);
	wake_acceptor(s);
	if (s->acceptor_started)
		pthread_join(s->acceptor, NULL);
	close(s->lfd);
	s->lfd = -1;
	if (s->unix_path[0])
		unlink(s->unix_path);

	/* Readers see EOF; what is in flight completes and is answered. */
	pthread_mutex_lock(&s->mu);
	for (struct nbd_conn *c = s->live; c; c = c->next)
		shutdown(c->fd, SHUT_RD);
	deadline = now_ns() + s->handshake_ns;
	while (s->nlive) {
		struct timespec ts = { .tv_sec = deadline / CDP_NS_PER_SEC,
				       .tv_nsec = deadline % CDP_NS_PER_SEC };

		if (now_ns() >= deadline)
			break;
		pthread_cond_timedwait(&s->cond, &s->mu, &ts);
	}
	/* Clients that do not read their replies: hang up on them. */
	for (struct nbd_conn *c = s->live; c; c = c->next)
		shutdown(c->fd, SHUT_RDWR);
	while (s->nlive)
		pthread_cond_wait(&s->cond, &s->mu);
	pthread_mutex_unlock(&s->mu);
	reap(s);
	cdp_log_info("nbd: stopped listening on %s", s->listen);
	server_free(s);
}

int cdp_nbd_serve_fd(const struct cdp_nbd_opts *o, int fd, struct cdp_err *err)
{
	struct cdp_nbd_server *s = server_new(o, err);
	struct nbd_conn *c;
	int rc;

	if (!s) {
		close(fd);
		return err ? err->code : -EINVAL;
	}
	snprintf(s->listen, sizeof(s->listen), "fd");
	/* The reader and writer block in recv/send outside the handshake. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	c = conn_new(s, fd, 1);
	snprintf(c->peer, sizeof(c->peer), "fd %d", fd);
	conn_run(c);
	rc = c->result;
	if (rc < 0)
		cdp_err_set(err, rc, "%s", c->why);
	conn_free(c);
	server_free(s);
	return rc;
}
