/*
 * Unit tests of capture/nbd and capture/export_file.
 *
 * The parser and cdp_nbd_check_request(): every field, every error (bad
 * magic, unknown command, past the end, over max_block, read-only, misaligned,
 * zero length, offset + length wrapping, bad flags) and the payload to skip.
 *
 * The server over real unix sockets (and TCP loopback once), driven by a
 * small raw-socket client written here from the spec, not from nbd.c: the
 * handshake (NBD_OPT_LIST, NBD_OPT_INFO, NBD_OPT_GO, NBD_OPT_EXPORT_NAME with
 * and without zeroes, NBD_OPT_ABORT, unknown options, STARTTLS, malformed
 * options, bad client flags, the handshake timeout), many requests in flight
 * with replies matched by handle and sent out of order, the in-flight bound,
 * errors that keep the connection usable and those that drop it, FUA and
 * NO_HOLE reaching the export, long TRIM/WRITE_ZEROES split into max_block
 * pieces, DISC waiting for what is in flight, a client that vanishes with
 * requests in flight (a second client is served meanwhile), stop with idle,
 * half-handshaken and non-reading clients, max_connections, start errors.
 * Most of it runs on a test export that can hold requests and complete them
 * later, in any order, from the test thread; the file export gets its own
 * test through the server.
 *
 * Nothing sleeps: a test waiting for the server polls the test export's
 * counters with a deadline, and every client socket has a 30 s receive
 * timeout so a lost reply fails the test instead of hanging it. Labelled
 * "threaded" (tools/test --tsan runs it).
 */
#include "tests/unit/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "capture/export.h"
#include "capture/nbd.h"
#include "common/log.h"
#include "common/util.h"

#define SEC INT64_C(1000000000)
#define MSEC INT64_C(1000000)
#define DEADLINE (30 * SEC)

/* Protocol values, from doc/proto.md. */
#define NBDMAGIC "NBDMAGIC"
#define IHAVEOPT "IHAVEOPT"
#define REP_MAGIC UINT64_C(0x0003e889045565a9)
#define REPLY_MAGIC 0x67446698u
#define REQ_MAGIC 0x25609513u

#define OPT_EXPORT_NAME 1
#define OPT_ABORT 2
#define OPT_LIST 3
#define OPT_STARTTLS 5
#define OPT_INFO 6
#define OPT_GO 7
#define OPT_STRUCTURED_REPLY 8

#define REP_ACK 1u
#define REP_SERVER 2u
#define REP_INFO 3u
#define REP_ERR_UNSUP 0x80000001u
#define REP_ERR_POLICY 0x80000002u
#define REP_ERR_INVALID 0x80000003u
#define REP_ERR_UNKNOWN 0x80000006u

#define INFO_EXPORT 0
#define INFO_NAME 1
#define INFO_BLOCK_SIZE 3

#define F_HAS_FLAGS 0x1u
#define F_READ_ONLY 0x2u
#define F_SEND_FLUSH 0x4u
#define F_SEND_FUA 0x8u
#define F_SEND_TRIM 0x20u
#define F_SEND_WRITE_ZEROES 0x40u
#define F_CAN_MULTI_CONN 0x100u

#define CMD_READ 0
#define CMD_WRITE 1
#define CMD_DISC 2
#define CMD_FLUSH 3
#define CMD_TRIM 4
#define CMD_CACHE 5
#define CMD_WRITE_ZEROES 6
#define CMD_BLOCK_STATUS 7

#define CMDF_FUA 0x1
#define CMDF_NO_HOLE 0x2
#define CMDF_DF 0x4

#define E_PERM 1
#define E_IO 5
#define E_INVAL 22
#define E_NOSPC 28
#define E_OVERFLOW 75

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void be32(uint8_t *p, uint32_t v)
{
	be16(p, (uint16_t)(v >> 16));
	be16(p + 2, (uint16_t)v);
}

static void be64(uint8_t *p, uint64_t v)
{
	be32(p, (uint32_t)(v >> 32));
	be32(p + 4, (uint32_t)v);
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)rd16(p) << 16 | rd16(p + 2);
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) << 32 | rd32(p + 4);
}

static void pattern(uint8_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((seed * 131 + i * 7 + (i >> 9)) ^ (seed >> 3));
}

/* ---- the test export: memory, optionally holding requests --------------- */

#define TX_MEM (4u << 20)
#define TX_HELD_MAX 512
#define TX_LOG 4096

struct tx_log {
	enum cdp_io_kind kind;
	uint32_t flags;		/* without CDP_IO_F_INLINE: */
	uint64_t offset;
	uint32_t length;
	bool inl;		/* submitted with CDP_IO_F_INLINE */
};

struct tx {
	struct cdp_export e;
	uint8_t *mem;
	pthread_mutex_t mu;
	bool hold;			/* guarded by mu */
	struct cdp_io_req *held[TX_HELD_MAX];	/* guarded by mu */
	unsigned nheld;			/* guarded by mu */
	unsigned inflight, max_inflight;	/* guarded by mu */
	unsigned submitted, completed;	/* guarded by mu */
	int fail_rc;			/* done() with it (for fail_offset, or all) */
	uint64_t fail_offset;		/* UINT64_MAX: every request */
	int refuse_rc;			/* submit() returns it */
	struct tx_log log[TX_LOG];	/* guarded by mu */
	unsigned nlog;			/* guarded by mu */
};

static void tx_exec(struct tx *t, struct cdp_io_req *r)
{
	int rc = 0;

	pthread_mutex_lock(&t->mu);
	if (t->fail_rc && (t->fail_offset == UINT64_MAX || t->fail_offset == r->offset))
		rc = t->fail_rc;
	else if (r->kind == CDP_IO_READ)
		memcpy(r->data, t->mem + r->offset, r->length);
	else if (r->kind == CDP_IO_WRITE)
		memcpy(t->mem + r->offset, r->data, r->length);
	else if (r->kind == CDP_IO_ZERO || r->kind == CDP_IO_TRIM)
		memset(t->mem + r->offset, 0, r->length);
	t->inflight--;
	t->completed++;
	pthread_mutex_unlock(&t->mu);
	r->done(r, rc);
}

/* Checks on server threads, where cmocka's asserts cannot be used. */
#define TX_CHECK(cond)                                                                  \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "test export: %s: check failed: %s\n", __func__, #cond); \
			abort();                                                        \
		}                                                                       \
	} while (0)

static int tx_submit(struct cdp_export *e, struct cdp_io_req *r)
{
	struct tx *t = (struct tx *)e;
	bool hold;
	int rc;

	if (r->kind != CDP_IO_FLUSH) {
		TX_CHECK(r->length > 0 && r->length <= e->max_block);
		TX_CHECK(r->offset + r->length <= e->size);
		TX_CHECK(r->offset % e->min_block == 0 && r->length % e->min_block == 0);
		TX_CHECK(r->data || (r->kind != CDP_IO_READ && r->kind != CDP_IO_WRITE));
	}
	pthread_mutex_lock(&t->mu);
	rc = t->refuse_rc;
	if (rc) {
		pthread_mutex_unlock(&t->mu);
		return rc;
	}
	t->submitted++;
	t->inflight++;
	if (t->inflight > t->max_inflight)
		t->max_inflight = t->inflight;
	if (t->nlog < TX_LOG)
		t->log[t->nlog++] = (struct tx_log){ r->kind, r->flags & ~CDP_IO_F_INLINE,
						     r->offset, r->length,
						     (r->flags & CDP_IO_F_INLINE) != 0 };
	hold = t->hold;
	if (hold) {
		TX_CHECK(t->nheld < TX_HELD_MAX);
		t->held[t->nheld++] = r;
	}
	pthread_mutex_unlock(&t->mu);
	if (!hold)
		tx_exec(t, r);	/* done() inside submit(): allowed */
	return 0;
}

static void tx_init(struct tx *t, const char *name)
{
	memset(t, 0, sizeof(*t));
	t->mem = cdp_xcalloc(1, TX_MEM);
	pthread_mutex_init(&t->mu, NULL);
	t->e.name = name;
	t->e.size = TX_MEM;
	t->e.min_block = 512;
	t->e.pref_block = 4096;
	t->e.max_block = 256u << 10;
	t->e.can_trim = t->e.can_zero = t->e.can_flush = t->e.can_fua = true;
	t->e.submit = tx_submit;
	t->fail_offset = UINT64_MAX;
}

static void tx_release_all(struct tx *t)
{
	free(t->mem);
	pthread_mutex_destroy(&t->mu);
}

/* The knobs, set under the lock: server threads read them (no happens-before through sockets). */
static void tx_fail(struct tx *t, int fail_rc, uint64_t fail_offset, int refuse_rc)
{
	pthread_mutex_lock(&t->mu);
	t->fail_rc = fail_rc;
	t->fail_offset = fail_offset;
	t->refuse_rc = refuse_rc;
	pthread_mutex_unlock(&t->mu);
}

#define TX_LOCKED(t, ...)                           \
	do {                                        \
		pthread_mutex_lock(&(t)->mu);       \
		__VA_ARGS__;                        \
		pthread_mutex_unlock(&(t)->mu);     \
	} while (0)

static void tx_set_hold(struct tx *t, bool hold)
{
	pthread_mutex_lock(&t->mu);
	t->hold = hold;
	pthread_mutex_unlock(&t->mu);
}

static unsigned tx_held(struct tx *t)
{
	unsigned n;

	pthread_mutex_lock(&t->mu);
	n = t->nheld;
	pthread_mutex_unlock(&t->mu);
	return n;
}

static unsigned tx_inflight(struct tx *t)
{
	unsigned n;

	pthread_mutex_lock(&t->mu);
	n = t->inflight;
	pthread_mutex_unlock(&t->mu);
	return n;
}

/* Polls until @t holds exactly @n requests, or fails. */
static void tx_wait_held(struct tx *t, unsigned n)
{
	int64_t until = mono_ns() + DEADLINE;

	while (tx_held(t) != n) {
		if (mono_ns() > until)
			fail_msg("the export holds %u requests, want %u", tx_held(t), n);
		sched_yield();
	}
}

/* Completes held requests: @idx (into the held list) first, or all in reverse order. */
static void tx_complete(struct tx *t, bool reverse, unsigned max)
{
	struct cdp_io_req *list[TX_HELD_MAX];
	unsigned n, take;

	pthread_mutex_lock(&t->mu);
	n = t->nheld;
	take = CDP_MIN(n, max);
	/* The oldest @take leave the held list. */
	memcpy(list, t->held, take * sizeof(list[0]));
	memmove(t->held, t->held + take, (n - take) * sizeof(list[0]));
	t->nheld = n - take;
	pthread_mutex_unlock(&t->mu);
	for (unsigned i = 0; i < take; i++)
		tx_exec(t, list[reverse ? take - 1 - i : i]);
}

/* ---- the raw client ------------------------------------------------------- */

static void send_all(int fd, const void *p, size_t len)
{
	const uint8_t *b = p;

	while (len) {
		ssize_t n = send(fd, b, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fail_msg("client send: %s", strerror(errno));
		b += n;
		len -= (size_t)n;
	}
}

/* Reads exactly @len bytes: 0, or -1 on EOF/reset (the server closed). */
static int recv_all(int fd, void *p, size_t len)
{
	uint8_t *b = p;

	while (len) {
		ssize_t n = recv(fd, b, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			fail_msg("client: no answer from the server within 30 s");
		if (n < 0 && errno == ECONNRESET)
			return -1;
		if (n < 0)
			fail_msg("client recv: %s", strerror(errno));
		if (n == 0)
			return -1;
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

static void recv_ok(int fd, void *p, size_t len)
{
	if (recv_all(fd, p, len))
		fail_msg("the server closed the connection");
}

/* Asserts that the server closes the connection (EOF) with nothing else sent. */
static void expect_closed(int fd)
{
	uint8_t b;

	assert_int_equal(recv_all(fd, &b, 1), -1);
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = DEADLINE / SEC };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int connect_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fail_msg("connect %s: %s", path, strerror(errno));
	set_timeouts(fd);
	return fd;
}

/* Reads the server's greeting and sends the client flags. */
static void cl_hello(int fd, uint32_t cflags)
{
	uint8_t b[18], f[4];

	recv_ok(fd, b, sizeof(b));
	assert_memory_equal(b, NBDMAGIC, 8);
	assert_memory_equal(b + 8, IHAVEOPT, 8);
	assert_int_equal(rd16(b + 16), 3);	/* FIXED_NEWSTYLE | NO_ZEROES */
	be32(f, cflags);
	send_all(fd, f, 4);
}

static void cl_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[16];

	memcpy(h, IHAVEOPT, 8);
	be32(h + 8, opt);
	be32(h + 12, len);
	send_all(fd, h, sizeof(h));
	if (len)
		send_all(fd, data, len);
}

/* Reads one option reply; its data (at most @cap bytes) into @buf. Returns the type. */
static uint32_t cl_opt_reply(int fd, uint32_t opt, uint8_t *buf, size_t cap, uint32_t *len)
{
	uint8_t h[20];
	uint32_t n;

	recv_ok(fd, h, sizeof(h));
	assert_true(rd64(h) == REP_MAGIC);
	assert_int_equal(rd32(h + 8), opt);
	n = rd32(h + 16);
	assert_true(n <= cap);
	recv_ok(fd, buf, n);
	if (len)
		*len = n;
	return rd32(h + 12);
}

struct go_info {
	uint64_t size;
	uint16_t flags;
	uint32_t min, pref, max;
	char name[64];
	bool got_export, got_block, got_name;
};

/* Sends NBD_OPT_INFO/GO for @name with @nreq info requests; returns the final reply type. */
static uint32_t cl_info(int fd, uint32_t opt, const char *name, const uint16_t *req, uint16_t nreq,
			struct go_info *gi)
{
	uint8_t d[256], r[256];
	size_t nl = strlen(name);
	uint32_t type, len;

	memset(gi, 0, sizeof(*gi));
	be32(d, (uint32_t)nl);
	memcpy(d + 4, name, nl);
	be16(d + 4 + nl, nreq);
	for (uint16_t i = 0; i < nreq; i++)
		be16(d + 6 + nl + 2 * i, req[i]);
	cl_opt(fd, opt, d, (uint32_t)(6 + nl + 2 * nreq));
	while ((type = cl_opt_reply(fd, opt, r, sizeof(r), &len)) == REP_INFO) {
		assert_true(len >= 2);
		switch (rd16(r)) {
		case INFO_EXPORT:
			assert_int_equal(len, 12);
			gi->size = rd64(r + 2);
			gi->flags = rd16(r + 10);
			gi->got_export = true;
			break;
		case INFO_BLOCK_SIZE:
			assert_int_equal(len, 14);
			gi->min = rd32(r + 2);
			gi->pref = rd32(r + 6);
			gi->max = rd32(r + 10);
			gi->got_block = true;
			break;
		case INFO_NAME:
			snprintf(gi->name, sizeof(gi->name), "%.*s", (int)(len - 2), (char *)r + 2);
			gi->got_name = true;
			break;
		}
	}
	return type;
}

/* Connects and enters transmission with NBD_OPT_GO on @name. */
static int cl_open(const char *path, const char *name, struct go_info *gi)
{
	static const uint16_t req[] = { INFO_BLOCK_SIZE };
	struct go_info tmp;
	int fd = connect_unix(path);

	cl_hello(fd, 3);
	assert_int_equal(cl_info(fd, OPT_GO, name, req, 1, gi ? gi : &tmp), REP_ACK);
	return fd;
}

static void cl_req(int fd, uint16_t type, uint16_t flags, uint64_t handle, uint64_t off,
		   uint32_t len, const void *payload)
{
	uint8_t h[28];

	be32(h, REQ_MAGIC);
	be16(h + 4, flags);
	be16(h + 6, type);
	be64(h + 8, handle);
	be64(h + 16, off);
	be32(h + 24, len);
	send_all(fd, h, sizeof(h));
	if (payload && len)
		send_all(fd, payload, len);
}

/* Reads one simple reply header; returns the error, the handle in *@handle. */
static uint32_t cl_reply(int fd, uint64_t *handle)
{
	uint8_t h[16];

	recv_ok(fd, h, sizeof(h));
	assert_int_equal(rd32(h), REPLY_MAGIC);
	*handle = rd64(h + 8);
	return rd32(h + 4);
}

/* One request, one reply (with @len bytes of data for a successful READ). */
static uint32_t cl_do(int fd, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
		      void *buf)
{
	static uint64_t next = 1000;
	uint64_t handle = next++, got;
	uint32_t err;

	cl_req(fd, type, flags, handle, off, len, type == CMD_WRITE ? buf : NULL);
	err = cl_reply(fd, &got);
	assert_true(got == handle);
	if (type == CMD_READ && err == 0)
		recv_ok(fd, buf, len);
	return err;
}

static void cl_disc(int fd)
{
	cl_req(fd, CMD_DISC, 0, 0, 0, 0, NULL);
	expect_closed(fd);
	close(fd);
}

/* ---- fixture --------------------------------------------------------------- */

struct fx {
	char dir[PATH_MAX];
	char sock[PATH_MAX];
	char listen[PATH_MAX + 8];
	struct tx tx, tx2;
	struct cdp_export *list[2];
	struct cdp_nbd_opts o;
	struct cdp_nbd_server *s;
};

static int fx_setup(void **state)
{
	struct fx *fx = cdp_xcalloc(1, sizeof(*fx));

	if (!cdp_test_mkdtemp(fx->dir, sizeof(fx->dir)))
		return -1;
	snprintf(fx->sock, sizeof(fx->sock), "%s/nbd.sock", fx->dir);
	snprintf(fx->listen, sizeof(fx->listen), "unix:%s", fx->sock);
	tx_init(&fx->tx, "vol0");
	tx_init(&fx->tx2, "second");
	fx->tx2.e.size = 1u << 20;
	fx->list[0] = &fx->tx.e;
	fx->list[1] = &fx->tx2.e;
	fx->o.listen = fx->listen;
	fx->o.exports = fx->list;
	fx->o.nexports = 2;
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;

	cdp_nbd_server_stop(fx->s);
	tx_release_all(&fx->tx);
	tx_release_all(&fx->tx2);
	cdp_test_rmrf(fx->dir);
	free(fx);
	return 0;
}

static void fx_start(struct fx *fx)
{
	struct cdp_err err = CDP_ERR_INIT;

	if (cdp_nbd_server_start(&fx->o, &fx->s, &err))
		fail_msg("start: %s", err.msg);
}

/* ---- the parser and the checks ------------------------------------------- */

static void mkreq(uint8_t *h, uint32_t magic, uint16_t flags, uint16_t type, uint64_t handle,
		  uint64_t off, uint32_t len)
{
	be32(h, magic);
	be16(h + 4, flags);
	be16(h + 6, type);
	be64(h + 8, handle);
	be64(h + 16, off);
	be32(h + 24, len);
}

static void test_parse_request_fields_and_bad_magic(void **state)
{
	struct cdp_nbd_request r;
	uint8_t h[28];

	mkreq(h, REQ_MAGIC, 0x0102, 0x0304, UINT64_C(0x1122334455667788),
	      UINT64_C(0x99aabbccddeeff00), 0xdeadbeef);
	assert_int_equal(cdp_nbd_parse_request(h, &r), 0);
	assert_int_equal(r.flags, 0x0102);
	assert_int_equal(r.type, 0x0304);
	assert_true(r.handle == UINT64_C(0x1122334455667788));
	assert_true(r.offset == UINT64_C(0x99aabbccddeeff00));
	assert_int_equal(r.length, 0xdeadbeef);

	mkreq(h, 0x25609514, 0, 0, 1, 0, 512);	/* the reserved log magic */
	assert_int_equal(cdp_nbd_parse_request(h, &r), -EPROTO);
	mkreq(h, 0x12560953, 0, 0, 1, 0, 512);	/* the historic one */
	assert_int_equal(cdp_nbd_parse_request(h, &r), -EPROTO);
	memset(h, 0, sizeof(h));
	assert_int_equal(cdp_nbd_parse_request(h, &r), -EPROTO);
}

struct check_case {
	const char *what;
	uint16_t type, flags;
	uint64_t off;
	uint32_t len;
	int want;
	uint32_t skip;
};

static void run_cases(const struct cdp_export *e, const struct check_case *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct cdp_nbd_request r = { .flags = c[i].flags, .type = c[i].type, .handle = i,
					     .offset = c[i].off, .length = c[i].len };
		uint32_t skip = 12345;
		int rc = cdp_nbd_check_request(&r, e, &skip);

		if (rc != c[i].want || skip != c[i].skip)
			fail_msg("%s: got %d skip %u, want %d skip %u", c[i].what, rc, skip,
				 c[i].want, c[i].skip);
	}
}

static void test_check_request_every_error(void **state)
{
	const uint64_t size = 1u << 20;
	const uint32_t max = 64u << 10;
	struct cdp_export e = { .name = "x", .size = size, .min_block = 512, .pref_block = 4096,
				.max_block = max, .can_trim = true, .can_zero = true,
				.can_flush = true, .can_fua = true };
	const struct check_case cases[] = {
		{ "read", CMD_READ, 0, 0, 4096, 0, 0 },
		{ "read the last block", CMD_READ, 0, size - 512, 512, 0, 0 },
		{ "write", CMD_WRITE, 0, 512, 1024, 0, 1024 },
		{ "write with FUA", CMD_WRITE, CMDF_FUA, 0, 512, 0, 512 },
		{ "read with FUA (clients do)", CMD_READ, CMDF_FUA, 0, 512, 0, 0 },
		{ "flush", CMD_FLUSH, 0, 0, 0, 0, 0 },
		{ "trim", CMD_TRIM, 0, 4096, 4096, 0, 0 },
		{ "trim over max_block: split", CMD_TRIM, 0, 0, (uint32_t)size, 0, 0 },
		{ "zero NO_HOLE FUA", CMD_WRITE_ZEROES, CMDF_NO_HOLE | CMDF_FUA, 0, 512, 0, 0 },
		{ "disc", CMD_DISC, 0, 0, 0, 0, 0 },
		{ "unknown command 9", 9, 0, 0, 512, E_INVAL, 0 },
		{ "unknown command 0xffff", 0xffff, 0, 0, 512, E_INVAL, 0 },
		{ "cache (not offered)", CMD_CACHE, 0, 0, 512, E_INVAL, 0 },
		{ "block status (not offered)", CMD_BLOCK_STATUS, 0, 0, 512, E_INVAL, 0 },
		{ "write past the end", CMD_WRITE, 0, size, 512, E_NOSPC, 512 },
		{ "write across the end", CMD_WRITE, 0, size - 512, 1024, E_NOSPC, 1024 },
		{ "zero past the end", CMD_WRITE_ZEROES, 0, size, 512, E_NOSPC, 0 },
		{ "read past the end", CMD_READ, 0, size, 512, E_INVAL, 0 },
		{ "trim past the end", CMD_TRIM, 0, size - 512, 1024, E_INVAL, 0 },
		{ "read over max_block", CMD_READ, 0, 0, max + 512, E_OVERFLOW, 0 },
		{ "write over max_block", CMD_WRITE, 0, 0, max + 512, E_OVERFLOW, max + 512 },
		{ "write of 32 MiB", CMD_WRITE, 0, 0, CDP_NBD_SKIP_MAX, E_OVERFLOW,
		  CDP_NBD_SKIP_MAX },
		{ "write too long to skip", CMD_WRITE, 0, 0, CDP_NBD_SKIP_MAX + 1, -EPROTO, 0 },
		{ "write of 4 GiB - 1", CMD_WRITE, 0, 0, UINT32_MAX, -EPROTO, 0 },
		{ "misaligned read offset", CMD_READ, 0, 100, 512, E_INVAL, 0 },
		{ "misaligned write length", CMD_WRITE, 0, 0, 700, E_INVAL, 700 },
		{ "misaligned trim", CMD_TRIM, 0, 256, 512, E_INVAL, 0 },
		{ "misaligned zero", CMD_WRITE_ZEROES, 0, 0, 100, E_INVAL, 0 },
		{ "zero-length read", CMD_READ, 0, 0, 0, E_INVAL, 0 },
		{ "zero-length write", CMD_WRITE, 0, 0, 0, E_INVAL, 0 },
		{ "zero-length trim", CMD_TRIM, 0, 0, 0, E_INVAL, 0 },
		{ "zero-length zero", CMD_WRITE_ZEROES, 0, 0, 0, E_INVAL, 0 },
		{ "read offset+length wraps", CMD_READ, 0, UINT64_MAX - 511, 1024, E_INVAL, 0 },
		{ "write offset+length wraps", CMD_WRITE, 0, UINT64_MAX - 511, 1024, E_NOSPC,
		  1024 },
		{ "zero offset+length wraps", CMD_WRITE_ZEROES, 0, UINT64_MAX - 511, 1024,
		  E_NOSPC, 0 },
		{ "NO_HOLE on a write", CMD_WRITE, CMDF_NO_HOLE, 0, 512, E_INVAL, 512 },
		{ "DF (no structured replies)", CMD_READ, CMDF_DF, 0, 512, E_INVAL, 0 },
		{ "unknown flag bit", CMD_READ, 0x80, 0, 512, E_INVAL, 0 },
		{ "flush with an offset", CMD_FLUSH, 0, 512, 0, E_INVAL, 0 },
		{ "flush with a length", CMD_FLUSH, 0, 0, 512, E_INVAL, 0 },
	};
	struct cdp_export ro = e, bare = e;
	const struct check_case ro_cases[] = {
		{ "read-only read", CMD_READ, 0, 0, 512, 0, 0 },
		{ "read-only flush", CMD_FLUSH, 0, 0, 0, 0, 0 },
		{ "read-only write", CMD_WRITE, 0, 0, 512, E_PERM, 512 },
		{ "read-only write past the end", CMD_WRITE, 0, size, 512, E_PERM, 512 },
		{ "read-only trim", CMD_TRIM, 0, 0, 512, E_PERM, 0 },
		{ "read-only zero", CMD_WRITE_ZEROES, 0, 0, 512, E_PERM, 0 },
		{ "read-only FUA (not offered)", CMD_READ, CMDF_FUA, 0, 512, E_INVAL, 0 },
	};
	const struct check_case bare_cases[] = {
		{ "trim not offered", CMD_TRIM, 0, 0, 512, E_INVAL, 0 },
		{ "zero not offered", CMD_WRITE_ZEROES, 0, 0, 512, E_INVAL, 0 },
		{ "flush not offered", CMD_FLUSH, 0, 0, 0, E_INVAL, 0 },
		{ "FUA not offered", CMD_WRITE, CMDF_FUA, 0, 512, E_INVAL, 512 },
		{ "plain write", CMD_WRITE, 0, 0, 512, 0, 512 },
	};

	run_cases(&e, cases, CDP_ARRAY_SIZE(cases));
	ro.read_only = true;
	run_cases(&ro, ro_cases, CDP_ARRAY_SIZE(ro_cases));
	bare.can_trim = bare.can_zero = bare.can_flush = bare.can_fua = false;
	run_cases(&bare, bare_cases, CDP_ARRAY_SIZE(bare_cases));
}

/* ---- handshake -------------------------------------------------------------- */

static void test_handshake_options(void **state)
{
	struct fx *fx = *state;
	static const uint16_t all[] = { INFO_BLOCK_SIZE, INFO_NAME, 77 };
	struct go_info gi;
	uint8_t r[4096], d[64];
	uint32_t len;
	int fd;

	fx->tx2.e.read_only = true;
	fx->tx2.e.max_block = 128u << 10;
	fx_start(fx);
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);

	/* NBD_OPT_LIST: one NBD_REP_SERVER per export, then the ack. */
	cl_opt(fd, OPT_LIST, NULL, 0);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_SERVER);
	assert_int_equal(rd32(r), 4);
	assert_memory_equal(r + 4, "vol0", 4);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_SERVER);
	assert_int_equal(rd32(r), 6);
	assert_memory_equal(r + 4, "second", 6);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_ACK);
	cl_opt(fd, OPT_LIST, "x", 1);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_ERR_INVALID);

	/* NBD_OPT_INFO on the read-only one: its size, flags, limits and name. */
	assert_int_equal(cl_info(fd, OPT_INFO, "second", all, 3, &gi), REP_ACK);
	assert_true(gi.got_export && gi.got_block && gi.got_name);
	assert_int_equal(gi.size, 1u << 20);
	assert_int_equal(gi.flags, F_HAS_FLAGS | F_READ_ONLY | F_SEND_FLUSH);
	assert_int_equal(gi.min, 512);
	assert_int_equal(gi.pref, 4096);
	assert_int_equal(gi.max, 128u << 10);
	assert_string_equal(gi.name, "second");

	/* Unknown, refused and malformed options get errors; the session goes on. */
	cl_opt(fd, 42, "abc", 3);
	assert_int_equal(cl_opt_reply(fd, 42, r, sizeof(r), &len), REP_ERR_UNSUP);
	cl_opt(fd, OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(cl_opt_reply(fd, OPT_STRUCTURED_REPLY, r, sizeof(r), &len), REP_ERR_UNSUP);
	cl_opt(fd, OPT_STARTTLS, NULL, 0);
	assert_int_equal(cl_opt_reply(fd, OPT_STARTTLS, r, sizeof(r), &len), REP_ERR_POLICY);
	assert_int_equal(cl_info(fd, OPT_INFO, "nope", NULL, 0, &gi), REP_ERR_UNKNOWN);
	assert_false(gi.got_export);
	be32(d, 100);	/* a name longer than the option */
	be16(d + 4, 0);
	cl_opt(fd, OPT_INFO, d, 6);
	assert_int_equal(cl_opt_reply(fd, OPT_INFO, r, sizeof(r), &len), REP_ERR_INVALID);
	cl_opt(fd, OPT_GO, d, 3);	/* shorter than the fixed part */
	assert_int_equal(cl_opt_reply(fd, OPT_GO, r, sizeof(r), &len), REP_ERR_INVALID);
	be32(d, 0);
	be16(d + 4, 2);	/* two info requests announced, one sent */
	be16(d + 6, INFO_NAME);
	cl_opt(fd, OPT_GO, d, 8);
	assert_int_equal(cl_opt_reply(fd, OPT_GO, r, sizeof(r), &len), REP_ERR_INVALID);

	/* NBD_OPT_GO on the default export (""): the write features, no MULTI_CONN. */
	assert_int_equal(cl_info(fd, OPT_GO, "", all, 1, &gi), REP_ACK);
	assert_int_equal(gi.size, TX_MEM);
	assert_int_equal(gi.flags, F_HAS_FLAGS | F_SEND_FLUSH | F_SEND_FUA | F_SEND_TRIM |
					   F_SEND_WRITE_ZEROES);
	assert_false(gi.flags & F_CAN_MULTI_CONN);
	assert_int_equal(gi.max, 256u << 10);
	TX_LOCKED(&fx->tx, pattern(fx->tx.mem, 4096, 9));
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, 4096, r), 0);
	TX_LOCKED(&fx->tx, assert_memory_equal(r, fx->tx.mem, 4096));
	cl_disc(fd);
}

/* NBD_OPT_ABORT is acknowledged, then the server hangs up (client without NO_ZEROES). */
static void test_handshake_abort(void **state)
{
	struct fx *fx = *state;
	uint8_t r[256];
	uint32_t len;
	int fd;

	fx_start(fx);
	fd = connect_unix(fx->sock);
	cl_hello(fd, 1);
	cl_opt(fd, OPT_LIST, NULL, 0);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_SERVER);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_SERVER);
	assert_int_equal(cl_opt_reply(fd, OPT_LIST, r, sizeof(r), &len), REP_ACK);
	cl_opt(fd, OPT_ABORT, NULL, 0);
	assert_int_equal(cl_opt_reply(fd, OPT_ABORT, r, sizeof(r), &len), REP_ACK);
	expect_closed(fd);
	close(fd);
}

static void test_handshake_export_name_and_zeroes(void **state)
{
	struct fx *fx = *state;
	uint8_t b[134], z[124] = { 0 }, buf[512];
	int fd;

	fx_start(fx);
	/* Without NO_ZEROES: size, flags and 124 zero bytes. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 1);
	cl_opt(fd, OPT_EXPORT_NAME, "second", 6);
	recv_ok(fd, b, 134);
	assert_int_equal(rd64(b), 1u << 20);
	assert_true(rd16(b + 8) & F_HAS_FLAGS);
	assert_memory_equal(b + 10, z, 124);
	TX_LOCKED(&fx->tx2, pattern(fx->tx2.mem, 512, 3));
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, 512, buf), 0);
	TX_LOCKED(&fx->tx2, assert_memory_equal(buf, fx->tx2.mem, 512));
	cl_disc(fd);

	/* With NO_ZEROES: 10 bytes, then the first reply follows at once. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);
	cl_opt(fd, OPT_EXPORT_NAME, NULL, 0);
	recv_ok(fd, b, 10);
	assert_int_equal(rd64(b), TX_MEM);
	assert_int_equal(cl_do(fd, CMD_FLUSH, 0, 0, 0, NULL), 0);
	cl_disc(fd);

	/* An unknown name: nothing to answer but a hang-up. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);
	cl_opt(fd, OPT_EXPORT_NAME, "nope", 4);
	expect_closed(fd);
	close(fd);
}

static void test_handshake_bad_input_drops(void **state)
{
	struct fx *fx = *state;
	uint8_t h[16], b[18];
	int fd;

	fx_start(fx);
	/* Unknown client flags. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 0x80000003);
	expect_closed(fd);
	close(fd);
	/* An option without IHAVEOPT. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);
	memset(h, 'x', sizeof(h));
	send_all(fd, h, sizeof(h));
	expect_closed(fd);
	close(fd);
	/* An option announcing 1 GiB of data. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);
	memcpy(h, IHAVEOPT, 8);
	be32(h + 8, 42);
	be32(h + 12, 1u << 30);
	send_all(fd, h, sizeof(h));
	expect_closed(fd);
	close(fd);
	/* A client that closes in the middle of the client flags. */
	fd = connect_unix(fx->sock);
	recv_ok(fd, b, sizeof(b));
	send_all(fd, "\0\0", 2);
	close(fd);
	/* The server still serves. */
	fd = cl_open(fx->sock, "", NULL);
	cl_disc(fd);
}

static void test_handshake_timeout(void **state)
{
	struct fx *fx = *state;
	uint8_t b[18];
	int64_t t0;
	int fd;

	fx->o.handshake_timeout_ns = 200 * MSEC;
	fx_start(fx);
	t0 = mono_ns();
	fd = connect_unix(fx->sock);
	recv_ok(fd, b, sizeof(b));
	/* Silence: the server hangs up after 200 ms (upper bound: the 30 s receive timeout). */
	expect_closed(fd);
	assert_true(mono_ns() - t0 >= 150 * MSEC);
	close(fd);
	/* Halfway through an option's data, too. */
	fd = connect_unix(fx->sock);
	cl_hello(fd, 3);
	memcpy(b, IHAVEOPT, 8);
	send_all(fd, b, 8);
	expect_closed(fd);
	close(fd);
}

/* ---- transmission ----------------------------------------------------------- */

#define NREQ 16

static void test_many_in_flight_out_of_order(void **state)
{
	struct fx *fx = *state;
	static uint8_t out[NREQ][8192], in[8192];
	bool seen[NREQ] = { false };
	uint64_t handle;
	int fd;

	fx->o.max_inflight = NREQ;
	fx_start(fx);
	fd = cl_open(fx->sock, "vol0", NULL);

	/* Writes, all held, completed in reverse: replies come back in reverse. */
	tx_set_hold(&fx->tx, true);
	for (unsigned i = 0; i < NREQ; i++) {
		pattern(out[i], sizeof(out[i]), i + 1);
		cl_req(fd, CMD_WRITE, 0, UINT64_C(0xabc0000000) + i, (uint64_t)i * 8192, 8192,
		       out[i]);
	}
	tx_wait_held(&fx->tx, NREQ);
	tx_complete(&fx->tx, true, NREQ);
	for (unsigned i = 0; i < NREQ; i++) {
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle == UINT64_C(0xabc0000000) + (NREQ - 1 - i));
	}
	for (unsigned i = 0; i < NREQ; i++)
		TX_LOCKED(&fx->tx,
			  assert_memory_equal(fx->tx.mem + (uint64_t)i * 8192, out[i], 8192));

	/* Reads in a shuffled order: each reply carries its own request's data. */
	for (unsigned i = 0; i < NREQ; i++) {
		unsigned k = (i * 7) % NREQ;

		cl_req(fd, CMD_READ, 0, 500 + k, (uint64_t)k * 8192, 8192, NULL);
	}
	tx_wait_held(&fx->tx, NREQ);
	for (unsigned round = 0; round < 4; round++)
		tx_complete(&fx->tx, round % 2 == 0, 4);
	for (unsigned i = 0; i < NREQ; i++) {
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle >= 500 && handle < 500 + NREQ);
		assert_false(seen[handle - 500]);
		seen[handle - 500] = true;
		recv_ok(fd, in, sizeof(in));
		assert_memory_equal(in, out[handle - 500], sizeof(in));
	}
	tx_set_hold(&fx->tx, false);
	cl_disc(fd);
}

static void test_inflight_bound(void **state)
{
	struct fx *fx = *state;
	uint8_t buf[4096];
	uint64_t handle;
	int fd;

	fx->o.max_inflight = 4;
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	tx_set_hold(&fx->tx, true);
	for (unsigned i = 0; i < 10; i++)
		cl_req(fd, CMD_READ, 0, i, 0, 4096, NULL);
	/* Four reach the export; the reader waits for a slot before the fifth. */
	tx_wait_held(&fx->tx, 4);
	for (unsigned done = 0; done < 10; done++) {
		tx_wait_held(&fx->tx, CDP_MIN(4u, 10 - done));
		tx_complete(&fx->tx, false, 1);
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle == done);
		recv_ok(fd, buf, sizeof(buf));
	}
	TX_LOCKED(&fx->tx, assert_int_equal(fx->tx.max_inflight, 4));
	tx_set_hold(&fx->tx, false);
	cl_disc(fd);
}

static void test_errors_keep_the_connection(void **state)
{
	struct fx *fx = *state;
	static uint8_t big[300u << 10], buf[4096];
	uint64_t handle;
	int fd, fd2;

	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	/* Refused by the checks: the right error, the right handle, nothing submitted. */
	assert_int_equal(cl_do(fd, 9, 0, 0, 512, NULL), E_INVAL);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, TX_MEM, 512, buf), E_NOSPC);
	assert_int_equal(cl_do(fd, CMD_READ, 0, TX_MEM - 512, 1024, buf), E_INVAL);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 100, 512, buf), E_INVAL);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, 0, buf), E_INVAL);
	/* An oversized write's payload is read and dropped: the stream stays in sync. */
	pattern(big, sizeof(big), 5);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, sizeof(big), big), E_OVERFLOW);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, sizeof(big), NULL), E_OVERFLOW);
	TX_LOCKED(&fx->tx, assert_int_equal(fx->tx.submitted, 0));
	/* Failed by the export, at once or later: errno mapped to NBD errors. */
	tx_fail(&fx->tx, 0, UINT64_MAX, -ENOSPC);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, 512, buf), E_NOSPC);
	tx_fail(&fx->tx, 0, UINT64_MAX, -EROFS);
	assert_int_equal(cl_do(fd, CMD_TRIM, 0, 0, 512, NULL), E_PERM);
	tx_fail(&fx->tx, 0, UINT64_MAX, -ENOTSUP);
	assert_int_equal(cl_do(fd, CMD_FLUSH, 0, 0, 0, NULL), 95);
	tx_fail(&fx->tx, -EIO, UINT64_MAX, 0);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, 4096, buf), E_IO);
	tx_fail(&fx->tx, -EOVERFLOW, UINT64_MAX, 0);
	assert_int_equal(cl_do(fd, CMD_WRITE, CMDF_FUA, 0, 4096, buf), E_OVERFLOW);
	tx_fail(&fx->tx, -ESTALE, UINT64_MAX, 0);	/* anything unexpected: EIO */
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, 0, 0, 4096, NULL), E_IO);
	tx_fail(&fx->tx, 0, UINT64_MAX, 0);
	pattern(buf, sizeof(buf), 77);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 8192, sizeof(buf), buf), 0);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(cl_do(fd, CMD_READ, 0, 8192, sizeof(buf), buf), 0);
	TX_LOCKED(&fx->tx, assert_memory_equal(buf, fx->tx.mem + 8192, sizeof(buf)));

	/* A bad magic drops this connection only. */
	fd2 = cl_open(fx->sock, "", NULL);
	send_all(fd, "\x25\x60\x95\x14 garbage garbage garbage", 28);
	expect_closed(fd);
	close(fd);
	assert_int_equal(cl_do(fd2, CMD_READ, 0, 0, sizeof(buf), buf), 0);
	/* A write too long to skip drops it too. */
	cl_req(fd2, CMD_WRITE, 0, 1, 0, CDP_NBD_SKIP_MAX + 512, NULL);
	expect_closed(fd2);
	close(fd2);
	/* So does a client that closes inside a payload. */
	fd = cl_open(fx->sock, "", NULL);
	cl_req(fd, CMD_WRITE, 0, 2, 0, 4096, NULL);
	send_all(fd, buf, 1000);
	close(fd);
	fd = cl_open(fx->sock, "", NULL);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, sizeof(buf), buf), 0);
	(void)handle;
	cl_disc(fd);
}

static void test_flags_reach_the_export(void **state)
{
	struct fx *fx = *state;
	uint8_t buf[4096] = { 0 };
	struct tx_log *l = fx->tx.log;
	int fd;

	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	assert_int_equal(cl_do(fd, CMD_WRITE, CMDF_FUA, 4096, 4096, buf), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 4096, 4096, buf), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, CMDF_NO_HOLE | CMDF_FUA, 0, 4096, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, 0, 0, 4096, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_TRIM, CMDF_FUA, 0, 4096, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_FLUSH, 0, 0, 0, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_READ, CMDF_FUA, 0, 512, buf), 0);
	cl_disc(fd);
	pthread_mutex_lock(&fx->tx.mu);	/* held to the end: the server has no thread left */
	assert_int_equal(fx->tx.nlog, 7);
	assert_int_equal(l[0].kind, CDP_IO_WRITE);
	assert_int_equal(l[0].flags, CDP_IO_F_FUA);
	assert_int_equal(l[0].offset, 4096);
	assert_int_equal(l[1].flags, 0);
	assert_int_equal(l[2].kind, CDP_IO_ZERO);
	assert_int_equal(l[2].flags, CDP_IO_F_FUA | CDP_IO_F_NO_HOLE);
	assert_int_equal(l[3].kind, CDP_IO_ZERO);
	assert_int_equal(l[3].flags, 0);
	assert_int_equal(l[4].kind, CDP_IO_TRIM);
	assert_int_equal(l[4].flags, CDP_IO_F_FUA);
	assert_int_equal(l[5].kind, CDP_IO_FLUSH);
	assert_int_equal(l[5].length, 0);
	assert_int_equal(l[6].kind, CDP_IO_READ);
	assert_int_equal(l[6].flags, 0);
	pthread_mutex_unlock(&fx->tx.mu);
}

/*
 * A lone request goes to the export with CDP_IO_F_INLINE and is answered by
 * the reader when done() comes inside submit(); one that the export
 * completes later (from another thread) is answered by the writer; a request
 * arriving while another is in flight is not inline.
 */
static void test_lone_request_runs_inline(void **state)
{
	struct fx *fx = *state;
	struct tx *t = &fx->tx;
	uint8_t buf[4096];
	uint64_t handle;
	int fd;

	memset(buf, 0x5a, sizeof(buf));
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, 4096, buf), 0);
	TX_LOCKED(t, assert_int_equal(t->nlog, 1); assert_true(t->log[0].inl); t->nlog = 0);
	/* Held: the inline submit returns without done(). */
	tx_set_hold(t, true);
	cl_req(fd, CMD_WRITE, 0, 1, 4096, 4096, buf);
	tx_wait_held(t, 1);
	cl_req(fd, CMD_READ, 0, 2, 0, 4096, NULL);
	tx_wait_held(t, 2);
	TX_LOCKED(t, assert_int_equal(t->nlog, 2); assert_true(t->log[0].inl);
		  assert_false(t->log[1].inl); t->nlog = 0);
	tx_set_hold(t, false);
	tx_complete(t, true, 2);	/* from this thread, the read first */
	for (unsigned i = 0, seen = 0; i < 2; i++) {	/* in either order */
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle == 1 || handle == 2);
		assert_false(seen & (1u << handle));
		seen |= 1u << handle;
		if (handle == 2) {
			recv_ok(fd, buf, sizeof(buf));
			assert_int_equal(buf[0], 0x5a);
		}
	}
	/* Alone again: inline again, and refused inline submits are answered too. */
	assert_int_equal(cl_do(fd, CMD_FLUSH, 0, 0, 0, NULL), 0);
	TX_LOCKED(t, t->refuse_rc = -EIO);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, 4096, buf), E_IO);
	TX_LOCKED(t, t->refuse_rc = 0; assert_int_equal(t->nlog, 1); assert_true(t->log[0].inl));
	cl_disc(fd);
	close(fd);
}

/*
 * thread_nice sets each connection's reader, and its writer inherits it;
 * the server's caller keeps its own. Out of -20..19 it is refused.
 */
static void test_connection_threads_nice(void **state)
{
	struct fx *fx = *state;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t buf[4096] = { 0 };
	int fd, rc, ours = getpriority(PRIO_PROCESS, 0), want = ours < 16 ? ours + 3 : 19;

	fx->o.thread_nice = 20;
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "thread_nice 20");
	fx->o.thread_nice = want;	/* above ours: permitted without privileges */
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, 4096, buf), 0);	/* transmission */
	assert_int_equal(cdp_test_thread_nice_is("nbd/r", want), want);
	assert_int_equal(cdp_test_thread_nice_is("nbd/w", want), want);
	assert_int_equal(cdp_test_thread_nice_is("nbd/accept", ours), ours);
	assert_int_equal(getpriority(PRIO_PROCESS, 0), ours);
	cl_disc(fd);
	close(fd);
}

/*
 * Write replies sent by the completing thread and a READ reply sent by the
 * writer share the socket: while the writer is (or may be) stuck sending a
 * large READ to a client that does not read yet, the write replies wait
 * their turn or go to the writer; none is torn, lost or sent twice.
 */
static void test_replies_from_completions_and_writer_interleave(void **state)
{
	struct fx *fx = *state;
	struct tx *t = &fx->tx;
	const uint32_t big = 256u << 10;
	static uint8_t data[256u << 10], w[4096];
	bool seen[9] = { false };
	uint64_t handle;
	int fd, sz = 4096;

	for (size_t i = 0; i < sizeof(data); i++)
		t->mem[i] = (uint8_t)(i * 7 + 3);
	memset(w, 0x77, sizeof(w));
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	tx_set_hold(t, true);
	cl_req(fd, CMD_READ, 0, 0, 0, big, NULL);
	tx_wait_held(t, 1);
	for (unsigned i = 1; i < 9; i++)
		cl_req(fd, CMD_WRITE, 0, i, (uint64_t)big + i * 4096, 4096, w);
	tx_wait_held(t, 9);
	tx_set_hold(t, false);
	tx_complete(t, false, 1);	/* the READ: the writer sends 256 KiB */
	tx_complete(t, false, 8);	/* the writes, from this thread */
	for (unsigned i = 0; i < 9; i++) {
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle < 9);
		assert_false(seen[handle]);
		seen[handle] = true;
		if (handle == 0) {
			recv_ok(fd, data, big);
			TX_LOCKED(t, assert_memory_equal(data, t->mem, big));
		}
	}
	cl_disc(fd);
}

static void test_long_trim_and_zero_are_split(void **state)
{
	struct fx *fx = *state;
	const uint32_t max = 64u << 10, len = (1u << 20) + 4096;
	struct tx *t = &fx->tx;
	uint8_t buf[4096];
	uint64_t handle;
	int fd;

	t->e.max_block = max;
	memset(t->mem, 0xee, TX_MEM);
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, CMDF_FUA, 8192, len, NULL), 0);
	/* Pieces of max_block, in order, covering the range exactly, each with FUA. */
	pthread_mutex_lock(&t->mu);
	assert_int_equal(t->nlog, len / max + 1);
	for (unsigned i = 0; i < t->nlog; i++) {
		assert_int_equal(t->log[i].kind, CDP_IO_ZERO);
		assert_int_equal(t->log[i].flags, CDP_IO_F_FUA);
		assert_int_equal(t->log[i].offset, 8192 + (uint64_t)i * max);
		assert_int_equal(t->log[i].length, i + 1 < t->nlog ? max : 4096);
	}
	assert_int_equal(t->mem[8191], 0xee);
	for (uint32_t i = 0; i < len; i++)
		if (t->mem[8192 + i])
			fail_msg("byte %u not zeroed", 8192 + i);
	assert_int_equal(t->mem[8192 + len], 0xee);
	t->nlog = 0;
	pthread_mutex_unlock(&t->mu);

	/* A piece that fails fails the request, and no piece after it is sent. */
	tx_fail(t, -EIO, 3 * max, 0);
	assert_int_equal(cl_do(fd, CMD_TRIM, 0, 0, 8 * max, NULL), E_IO);
	TX_LOCKED(t, assert_int_equal(t->nlog, 4); t->nlog = 0);
	tx_fail(t, 0, UINT64_MAX, 0);

	/* Refused at once in the middle: the same. */
	tx_set_hold(t, true);
	cl_req(fd, CMD_TRIM, 0, 77, 0, 4 * max, NULL);
	tx_wait_held(t, 1);
	tx_fail(t, 0, UINT64_MAX, -ENOSPC);
	tx_complete(t, false, 1);
	assert_int_equal(cl_reply(fd, &handle), E_NOSPC);
	assert_true(handle == 77);
	tx_fail(t, 0, UINT64_MAX, 0);
	tx_set_hold(t, false);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, sizeof(buf), buf), 0);
	cl_disc(fd);
}

static void test_disc_waits_for_in_flight(void **state)
{
	struct fx *fx = *state;
	uint8_t buf[4096];
	bool seen[4] = { false };
	uint64_t handle;
	int fd;

	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	tx_set_hold(&fx->tx, true);
	for (unsigned i = 0; i < 4; i++)
		cl_req(fd, CMD_READ, 0, i, (uint64_t)i * 4096, 4096, NULL);
	cl_req(fd, CMD_DISC, 0, 99, 0, 0, NULL);
	tx_wait_held(&fx->tx, 4);
	tx_complete(&fx->tx, true, 4);
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(cl_reply(fd, &handle), 0);
		assert_true(handle < 4 && !seen[handle]);
		seen[handle] = true;
		recv_ok(fd, buf, sizeof(buf));
	}
	expect_closed(fd);
	close(fd);
	tx_set_hold(&fx->tx, false);
}

static void test_client_vanishes_with_requests_in_flight(void **state)
{
	struct fx *fx = *state;
	static uint8_t buf[65536];
	int64_t until;
	int fd, fd2;

	fx->o.max_connections = 4;	/* the last rounds' connections may still be ending */
	fx_start(fx);
	for (unsigned round = 0; round < 3; round++) {
		fd = cl_open(fx->sock, "", NULL);
		tx_set_hold(&fx->tx, true);
		for (unsigned i = 0; i < 8; i++)
			cl_req(fd, i % 2 ? CMD_WRITE : CMD_READ, 0, i, (uint64_t)i * 65536, 65536,
			       i % 2 ? buf : NULL);
		tx_wait_held(&fx->tx, 8);
		close(fd);	/* gone, with 8 requests in the export */
		tx_set_hold(&fx->tx, false);

		/* Meanwhile another client is served. */
		fd2 = cl_open(fx->sock, "", NULL);
		pattern(buf, sizeof(buf), round);
		assert_int_equal(cl_do(fd2, CMD_WRITE, 0, 1u << 20, sizeof(buf), buf), 0);
		assert_int_equal(cl_do(fd2, CMD_READ, 0, 1u << 20, sizeof(buf), buf), 0);

		/* The vanished client's requests complete; their replies go nowhere. */
		tx_complete(&fx->tx, round % 2, 8);
		assert_int_equal(tx_inflight(&fx->tx), 0);
		cl_disc(fd2);
	}
	/* Every slot is free again once the server has noticed (no connection leaked). */
	until = mono_ns() + DEADLINE;
	for (;;) {
		int c[4], n = 0;
		uint8_t b[18];

		while (n < 4) {
			c[n] = connect_unix(fx->sock);
			if (recv_all(c[n], b, sizeof(b)))
				break;
			n++;
		}
		for (int i = 0; i <= n && i < 4; i++)
			close(c[i]);
		if (n == 4)
			break;
		if (mono_ns() > until)
			fail_msg("only %d connection slots given back, want 4", n);
		sched_yield();
	}
}

static void test_max_connections(void **state)
{
	struct fx *fx = *state;
	uint8_t buf[512];
	int64_t until;
	int fd, fd2;

	fx->o.max_connections = 1;
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	fd2 = connect_unix(fx->sock);
	expect_closed(fd2);
	close(fd2);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, sizeof(buf), buf), 0);
	cl_disc(fd);
	/* The slot comes back once the first connection has ended. */
	until = mono_ns() + DEADLINE;
	for (;;) {
		uint8_t b[18];

		fd2 = connect_unix(fx->sock);
		if (recv_all(fd2, b, sizeof(b)) == 0)
			break;
		close(fd2);
		if (mono_ns() > until)
			fail_msg("no connection accepted after the first ended");
		sched_yield();
	}
	close(fd2);
}

static void *stop_main(void *s)
{
	cdp_nbd_server_stop(s);
	return NULL;
}

static void test_stop_with_clients_connected(void **state)
{
	struct fx *fx = *state;
	uint8_t b[18];
	uint64_t handle;
	int idle, half, busy;

	fx_start(fx);
	idle = cl_open(fx->sock, "", NULL);
	half = connect_unix(fx->sock);
	recv_ok(half, b, sizeof(b));
	busy = cl_open(fx->sock, "", NULL);
	tx_set_hold(&fx->tx, true);
	cl_req(busy, CMD_WRITE_ZEROES, 0, 5, 0, 4096, NULL);
	tx_wait_held(&fx->tx, 1);
	/* The held request completes from the test while stop waits for it. */
	{
		pthread_t t;
		struct cdp_nbd_server *s = fx->s;

		fx->s = NULL;
		assert_int_equal(pthread_create(&t, NULL, stop_main, s), 0);
		tx_complete(&fx->tx, false, 1);
		pthread_join(t, NULL);
	}
	assert_int_equal(cl_reply(busy, &handle), 0);
	assert_true(handle == 5);
	expect_closed(busy);
	expect_closed(idle);
	expect_closed(half);
	close(idle);
	close(half);
	close(busy);
	tx_set_hold(&fx->tx, false);
}

/* A client that never reads its replies cannot hold the stop up for long. */
static void test_stop_with_a_client_not_reading(void **state)
{
	struct fx *fx = *state;
	int fd, sz = 4096;
	int64_t t0;

	fx->o.handshake_timeout_ns = 300 * MSEC;
	fx->o.max_inflight = 32;
	fx_start(fx);
	fd = cl_open(fx->sock, "", NULL);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	/* Held, so that none is answered inline by the reader: their replies
	 * all go to the writer, which gets stuck in send. */
	tx_set_hold(&fx->tx, true);
	for (unsigned i = 0; i < 32; i++)
		cl_req(fd, CMD_READ, 0, i, 0, 256u << 10, NULL);
	tx_wait_held(&fx->tx, 32);
	tx_set_hold(&fx->tx, false);
	tx_complete(&fx->tx, false, 32);
	/* Wait until the export has seen them all (the writer is stuck in send). */
	t0 = mono_ns();
	for (;;) {
		pthread_mutex_lock(&fx->tx.mu);
		unsigned n = fx->tx.completed;
		pthread_mutex_unlock(&fx->tx.mu);

		if (n == 32)
			break;
		if (mono_ns() - t0 > DEADLINE)
			fail_msg("only %u reads reached the export", n);
		sched_yield();
	}
	t0 = mono_ns();
	cdp_nbd_server_stop(fx->s);
	fx->s = NULL;
	assert_true(mono_ns() - t0 < 20 * SEC);
	close(fd);
}

static void test_tcp_listen(void **state)
{
	struct fx *fx = *state;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint8_t buf[512];
	struct go_info gi;
	int fd;

	fx->o.listen = "127.0.0.1:0";
	fx_start(fx);
	assert_true(cdp_nbd_server_port(fx->s) > 0);
	sa.sin_port = htons((uint16_t)cdp_nbd_server_port(fx->s));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	set_timeouts(fd);
	cl_hello(fd, 3);
	assert_int_equal(cl_info(fd, OPT_GO, "second", NULL, 0, &gi), REP_ACK);
	assert_int_equal(gi.size, 1u << 20);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, sizeof(buf), buf), 0);
	cl_disc(fd);
}

static void test_start_errors(void **state)
{
	struct fx *fx = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_nbd_server *s2;
	int rc;

	fx->o.listen = "nocolon";
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "HOST:PORT");
	assert_null(fx->s);
	fx->o.listen = fx->listen;
	fx->tx.e.min_block = 3;
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "min_block 3");
	fx->tx.e.min_block = 512;
	fx->tx.e.size = 1000;
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "size 1000");
	fx->tx.e.size = TX_MEM;
	fx->tx.e.max_block = 1024;
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "max_block 1024");
	fx->tx.e.max_block = 256u << 10;
	fx->o.nexports = 0;
	rc = cdp_nbd_server_start(&fx->o, &fx->s, &err);
	assert_err(&err, rc, -EINVAL, "exports");
	fx->o.nexports = 2;
	/* A live server's socket is not taken over; a dead one's is. */
	fx_start(fx);
	rc = cdp_nbd_server_start(&fx->o, &s2, &err);
	assert_err(&err, rc, -EADDRINUSE, fx->sock);
	cdp_nbd_server_stop(fx->s);
	fx->s = NULL;
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx->sock);
		assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		close(fd);	/* a stale socket file */
	}
	fx_start(fx);
}

/* cdp_nbd_serve_fd() over a socketpair: the path the fuzzer takes. */
static void test_serve_fd(void **state)
{
	struct fx *fx = *state;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t b[18], r[64];
	uint32_t len;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	set_timeouts(sv[0]);
	/* The whole client stream first; the server sees EOF after it. */
	send_all(sv[0], "\0\0\0\3", 4);
	cl_opt(sv[0], OPT_ABORT, NULL, 0);
	shutdown(sv[0], SHUT_WR);
	assert_int_equal(cdp_nbd_serve_fd(&fx->o, sv[1], &err), 0);
	recv_ok(sv[0], b, sizeof(b));
	assert_int_equal(cl_opt_reply(sv[0], OPT_ABORT, r, sizeof(r), &len), REP_ACK);
	expect_closed(sv[0]);
	close(sv[0]);

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	send_all(sv[0], "\0\0\0\3garbage!garbage!", 20);
	shutdown(sv[0], SHUT_WR);
	assert_int_equal(cdp_nbd_serve_fd(&fx->o, sv[1], &err), -EPROTO);
	assert_non_null(strstr(err.msg, "IHAVEOPT"));
	close(sv[0]);
}

/* ---- the file export ----------------------------------------------------------- */

static void test_export_file_through_the_server(void **state)
{
	struct fx *fx = *state;
	struct cdp_err err = CDP_ERR_INIT;
	static uint8_t out[65536], in[65536];
	struct cdp_export *fe;
	struct cdp_io_req req = { 0 };
	struct go_info gi;
	char path[PATH_MAX + 16];
	struct stat st;
	int fd, f;

	snprintf(path, sizeof(path), "%s/disk.img", fx->dir);
	f = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(f >= 0);
	assert_int_equal(ftruncate(f, (8u << 20) + 100), 0);	/* not a multiple of 512 */
	close(f);
	fe = cdp_export_file_open("disk", path, 2, &err);
	if (!fe)
		fail_msg("open: %s", err.msg);
	assert_int_equal(fe->size, 8u << 20);
	assert_int_equal(fe->min_block, 512);
	assert_int_equal(fe->pref_block, 4096);
	assert_true(fe->max_block >= (1u << 20));
	/* The export checks again. */
	req.kind = CDP_IO_READ;
	req.offset = 100;
	req.length = 512;
	req.data = in;
	assert_int_equal(fe->submit(fe, &req), -EINVAL);
	req.offset = fe->size;
	assert_int_equal(fe->submit(fe, &req), -EINVAL);
	req.kind = 42;
	assert_int_equal(fe->submit(fe, &req), -EINVAL);

	fx->list[0] = fe;
	fx->o.nexports = 1;
	fx_start(fx);
	fd = cl_open(fx->sock, "disk", &gi);
	assert_int_equal(gi.size, 8u << 20);
	/* 512-aligned, not 4 KiB-aligned I/O, every command. */
	pattern(out, sizeof(out), 11);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 512 * 7, sizeof(out), out), 0);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 512 * 7, sizeof(in), in), 0);
	assert_memory_equal(in, out, sizeof(in));
	assert_int_equal(cl_do(fd, CMD_WRITE, CMDF_FUA, (8u << 20) - 512, 512, out), 0);
	assert_int_equal(cl_do(fd, CMD_FLUSH, 0, 0, 0, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, 0, 512 * 8, 4096, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, CMDF_NO_HOLE, 512 * 16, 1024, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 512 * 7, sizeof(in), in), 0);
	/* Sectors 8..15 (punched) and 16..17 (NO_HOLE) of the file: 1..10 of the buffer. */
	assert_memory_equal(in, out, 512);
	for (unsigned i = 512; i < 512 * 11; i++)
		assert_int_equal(in[i], 0);
	assert_memory_equal(in + 512 * 11, out + 512 * 11, sizeof(in) - 512 * 11);
	/* A long zeroing, split by the server, and a trim. */
	assert_int_equal(cl_do(fd, CMD_WRITE_ZEROES, CMDF_FUA, 0, 8u << 20, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_READ, 0, (8u << 20) - sizeof(in), sizeof(in), in), 0);
	for (unsigned i = 0; i < sizeof(in); i++)
		assert_int_equal(in[i], 0);
	assert_int_equal(cl_do(fd, CMD_TRIM, 0, 0, 1u << 20, NULL), 0);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, (8u << 20) - 512, 1024, out), E_NOSPC);
	cl_disc(fd);
	cdp_nbd_server_stop(fx->s);
	fx->s = NULL;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, (8u << 20) + 100);	/* KEEP_SIZE */

	/* Read-only: writes are refused by the server and by the export. */
	fe->read_only = true;
	fx_start(fx);
	fd = cl_open(fx->sock, "", &gi);
	assert_true(gi.flags & F_READ_ONLY);
	assert_int_equal(cl_do(fd, CMD_WRITE, 0, 0, 512, out), E_PERM);
	assert_int_equal(cl_do(fd, CMD_READ, 0, 0, 512, in), 0);
	cl_disc(fd);
	req.kind = CDP_IO_WRITE;
	req.offset = 0;
	assert_int_equal(fe->submit(fe, &req), -EPERM);
	cdp_nbd_server_stop(fx->s);
	fx->s = NULL;
	cdp_export_file_close(fe);

	/* Not a file or block device; a missing file. */
	assert_null(cdp_export_file_open("d", fx->dir, 0, &err));
	assert_int_equal(err.code, -EISDIR);
	assert_null(cdp_export_file_open("n", "/dev/null", 0, &err));
	assert_err(&err, -EINVAL, -EINVAL, "not a regular file or block device");
	assert_null(cdp_export_file_open("m", "/nonexistent/x", 0, &err));
	assert_int_equal(err.code, -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_request_fields_and_bad_magic),
		cmocka_unit_test(test_check_request_every_error),
#define FX(t) cmocka_unit_test_setup_teardown(t, fx_setup, fx_teardown)
		FX(test_handshake_options),
		FX(test_handshake_abort),
		FX(test_handshake_export_name_and_zeroes),
		FX(test_handshake_bad_input_drops),
		FX(test_handshake_timeout),
		FX(test_many_in_flight_out_of_order),
		FX(test_inflight_bound),
		FX(test_errors_keep_the_connection),
		FX(test_flags_reach_the_export),
		FX(test_connection_threads_nice),
		FX(test_lone_request_runs_inline),
		FX(test_replies_from_completions_and_writer_interleave),
		FX(test_long_trim_and_zero_are_split),
		FX(test_disc_waits_for_in_flight),
		FX(test_client_vanishes_with_requests_in_flight),
		FX(test_max_connections),
		FX(test_stop_with_clients_connected),
		FX(test_stop_with_a_client_not_reading),
		FX(test_tcp_listen),
		FX(test_start_errors),
		FX(test_serve_fd),
		FX(test_export_file_through_the_server),
	};

	cdp_log_init("test_nbd");
	if (!cdp_test_env_flag("CDP_TEST_VERBOSE"))
		cdp_log_set_level(CDP_LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
