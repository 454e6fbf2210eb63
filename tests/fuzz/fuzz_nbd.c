/*
 * tests/fuzz/fuzz_nbd - libFuzzer target for the NBD server's input.
 *
 * 1. Every 28-byte window of the input (up to 64) goes through
 *    cdp_nbd_parse_request() and cdp_nbd_check_request() against three
 *    exports (read-write, read-only, no trim/zero/flush/fua), checking
 *    properties: -EPROTO only for bad magic or an unskippable WRITE; an error
 *    is one of the NBD errors; a WRITE's payload is always skipped whole; an
 *    accepted READ/WRITE/TRIM/WRITE_ZEROES lies inside the export, is aligned
 *    and nonzero, and a READ/WRITE fits max_block.
 * 2. The whole input is a client's byte stream into a real connection
 *    (cdp_nbd_serve_fd() over a socketpair, with its reader and writer
 *    threads) on a 1 MiB in-memory export. The first byte picks a prefix so
 *    mutations reach the transmission phase: 0 none (the raw handshake), 1 a
 *    canned NBD_OPT_GO, 2 a canned NBD_OPT_EXPORT_NAME; bit 2 makes the export
 *    read-only. The memory export completes inside submit(), refuses requests
 *    in its last 4 KiB at once (-EIO) and fails those in the 4 KiB before with
 *    -ENOSPC, so every path of the writer runs. The server must end (EOF ends
 *    the stream) and its output must start with NBDMAGIC.
 *
 * Seeds: tests/fuzz/corpus/fuzz_nbd (each request type, bad magic,
 * truncated, handshake options).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "capture/nbd.h"
#include "common/log.h"
#include "common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                            \
	do {                                                                        \
		if (!(cond)) {                                                      \
			fprintf(stderr, "fuzz_nbd: check failed: %s: ", #cond);     \
			fprintf(stderr, __VA_ARGS__);                               \
			fputc('\n', stderr);                                        \
			abort();                                                    \
		}                                                                   \
	} while (0)

#define MEM_SIZE (1u << 20)

struct mem_export {
	struct cdp_export e;
	uint8_t *mem;
};

static int mem_submit(struct cdp_export *e, struct cdp_io_req *r)
{
	struct mem_export *m = (struct mem_export *)e;
	int rc = 0;

	if (r->kind != CDP_IO_FLUSH &&
	    (r->length == 0 || r->offset > e->size || r->length > e->size - r->offset))
		return -EINVAL;
	if (r->kind != CDP_IO_FLUSH && r->offset >= e->size - 4096)
		return -EIO;
	if (r->kind != CDP_IO_FLUSH && r->offset >= e->size - 8192)
		rc = -ENOSPC;
	else if (r->kind == CDP_IO_READ)
		memcpy(r->data, m->mem + r->offset, r->length);
	else if (r->kind == CDP_IO_WRITE)
		memcpy(m->mem + r->offset, r->data, r->length);
	else if (r->kind == CDP_IO_ZERO || r->kind == CDP_IO_TRIM)
		memset(m->mem + r->offset, 0, r->length);
	r->done(r, rc);
	return 0;
}

static void check_parse(const uint8_t *p, const struct cdp_export *e)
{
	struct cdp_nbd_request r;
	uint32_t skip = 0xdeadbeef;
	int rc;

	if (cdp_nbd_parse_request(p, &r) < 0) {
		CHECK(p[0] != 0x25 || p[1] != 0x60 || p[2] != 0x95 || p[3] != 0x13,
		      "good magic refused");
		return;
	}
	rc = cdp_nbd_check_request(&r, e, &skip);
	if (rc == -EPROTO) {
		CHECK(r.type == 1 && r.length > e->max_block && r.length > CDP_NBD_SKIP_MAX,
		      "type %u length %u", r.type, r.length);
		return;
	}
	CHECK(rc == 0 || rc == 1 || rc == 22 || rc == 28 || rc == 75, "rc %d", rc);
	CHECK(skip == (r.type == 1 ? r.length : 0), "skip %u for type %u length %u", skip, r.type,
	      r.length);
	if (rc || r.type == 2 || r.type == 3)
		return;
	CHECK(r.type == 0 || r.type == 1 || r.type == 4 || r.type == 6, "type %u accepted", r.type);
	CHECK(r.length && r.offset <= e->size && r.length <= e->size - r.offset,
	      "range %llu+%u accepted", (unsigned long long)r.offset, r.length);
	CHECK(r.offset % e->min_block == 0 && r.length % e->min_block == 0, "misaligned accepted");
	CHECK(r.type > 1 || r.length <= e->max_block, "length %u > max_block", r.length);
	CHECK(!e->read_only || r.type == 0, "write on a read-only export");
}

struct serve_arg {
	struct cdp_nbd_opts o;
	int fd;
};

static void *serve_main(void *p)
{
	struct serve_arg *a = p;
	struct cdp_err err = CDP_ERR_INIT;

	cdp_nbd_serve_fd(&a->o, a->fd, &err);
	return NULL;
}

/* The canned handshakes: client flags (FIXED_NEWSTYLE|NO_ZEROES) and one option. */
static const uint8_t pre_go[] = {
	0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 8,
	0, 0, 0, 0, 0, 1, 0, 3,
};
static const uint8_t pre_name[] = {
	0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 1, 0, 0, 0, 0,
};

static void serve_stream(const uint8_t *data, size_t size)
{
	static uint8_t *mem;
	struct mem_export m = { 0 };
	struct cdp_export *list[1] = { &m.e };
	struct serve_arg a = { 0 };
	const uint8_t *pre = NULL;
	size_t npre = 0, sent = 0, got = 0;
	uint8_t head[8], sink[65536];
	bool shut = false;
	pthread_t t;
	int sv[2];

	if (!mem)
		mem = cdp_xcalloc(1, MEM_SIZE);
	m.mem = mem;
	m.e.name = "mem";
	m.e.size = MEM_SIZE;
	m.e.min_block = 512;
	m.e.pref_block = 4096;
	m.e.max_block = 32u << 10;
	m.e.can_trim = m.e.can_zero = m.e.can_flush = m.e.can_fua = true;
	m.e.read_only = size && (data[0] & 4);
	m.e.submit = mem_submit;
	if (size && (data[0] & 3) == 1) {
		pre = pre_go;
		npre = sizeof(pre_go);
	} else if (size && (data[0] & 3) == 2) {
		pre = pre_name;
		npre = sizeof(pre_name);
	}
	if (size) {
		data++;
		size--;
	}
	a.o.exports = list;
	a.o.nexports = 1;
	a.o.max_inflight = 4;
	a.o.handshake_timeout_ns = 5000000000;
	/* The server's end blocks; ours does not, so one thread both feeds and drains. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
	    fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0)
		abort();
	a.fd = sv[1];
	if (pthread_create(&t, NULL, serve_main, &a))
		abort();
	for (;;) {
		struct pollfd p = { .fd = sv[0], .events = POLLIN };
		ssize_t n;

		if (!shut)
			p.events |= POLLOUT;
		if (poll(&p, 1, 30000) <= 0)
			abort();	/* the server neither reads nor writes: a hang */
		if (!shut && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
			const uint8_t *src = sent < npre ? pre + sent : data + (sent - npre);
			size_t left = sent < npre ? npre - sent : size - (sent - npre);

			n = left ? send(sv[0], src, left, MSG_NOSIGNAL) : 0;
			if (n > 0)
				sent += (size_t)n;
			if (sent == npre + size || (n < 0 && errno != EAGAIN)) {
				shutdown(sv[0], SHUT_WR);
				shut = true;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(sv[0], sink, sizeof(sink), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break;
			if (n > 0) {
				if (got < sizeof(head))
					memcpy(head + got, sink,
					       CDP_MIN((size_t)n, sizeof(head) - got));
				got += (size_t)n;
			}
		}
	}
	pthread_join(t, NULL);
	close(sv[0]);
	CHECK(got >= 8 && memcmp(head, "NBDMAGIC", 8) == 0, "output of %zu bytes", got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool init;
	struct cdp_export rw = { .name = "", .size = 1u << 20, .min_block = 512,
				 .pref_block = 4096, .max_block = 64u << 10, .can_trim = true,
				 .can_zero = true, .can_flush = true, .can_fua = true };
	struct cdp_export ro = rw, bare = rw;

	if (!init) {
		cdp_log_init("fuzz_nbd");
		cdp_log_set_level(CDP_LOG_ERR);
		init = true;
	}
	ro.read_only = true;
	bare.can_trim = bare.can_zero = bare.can_flush = bare.can_fua = false;
	bare.min_block = 1;
	bare.size = UINT64_MAX;
	bare.max_block = UINT32_MAX;
	for (size_t off = 0, n = 0; off + CDP_NBD_REQ_LEN <= size && n < 64; off++, n++) {
		check_parse(data + off, &rw);
		check_parse(data + off, &ro);
		check_parse(data + off, &bare);
	}
	serve_stream(data, size);
	return 0;
}
