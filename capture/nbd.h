/*
 * capture/nbd - the NBD front end: a server for the fixed-newstyle protocol
 * (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md) over
 * unix sockets and TCP, serving cdp_export volumes (capture/export.h).
 *
 * Handshake: NBD_OPT_GO and NBD_OPT_INFO (with NBD_INFO_EXPORT,
 * NBD_INFO_BLOCK_SIZE from the export's limits), NBD_OPT_EXPORT_NAME,
 * NBD_OPT_LIST, NBD_OPT_ABORT; NBD_OPT_STARTTLS gets NBD_REP_ERR_POLICY and
 * anything else NBD_REP_ERR_UNSUP.
 * Transmission: READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES (FUA, NO_HOLE),
 * DISC, many requests in flight per connection (simple replies; replies may
 * go out of order). TRIM and WRITE_ZEROES longer than max_block are split
 * into max_block pieces, one at a time, and get one reply. A malformed,
 * out-of-range or oversized request gets the proper NBD error (EINVAL;
 * ENOSPC for a write or zeroing past the end, EINVAL for a read or trim
 * there, as the spec says; EOVERFLOW for a read or write over max_block;
 * EPERM for a write on a read-only export) or, when the stream can no longer
 * be parsed (bad magic, a payload too large to skip), a clean disconnect;
 * never a crash or a hang, and other connections keep being served.
 *
 * Threads: one accept thread per server and, per connection, one reader
 * (parses requests, submits them) and one writer (sends replies in completion
 * order). The handshake is bounded by handshake_timeout_ns; an idle client
 * in transmission may stay as long as it likes, until the server stops.
 */
#ifndef CDP_CAPTURE_NBD_H
#define CDP_CAPTURE_NBD_H

#include <stddef.h>
#include <stdint.h>

#include "capture/export.h"
#include "common/err.h"

struct cdp_nbd_server;

struct cdp_nbd_opts {
	/* "unix:/path" or "HOST:PORT" (port 0 picks one: cdp_nbd_server_port()). */
	const char *listen;
	struct cdp_export *const *exports;	/* borrowed; the first is the default ("") */
	size_t nexports;
	unsigned max_connections;	/* 0: 16 */
	unsigned max_inflight;		/* per connection; 0: 64 */
	int64_t handshake_timeout_ns;	/* 0: 10 s */
	int thread_nice;		/* each connection's threads' nice value (-20..19); 0: inherited */
	int64_t thread_slice_ns;	/* and their scheduling slice (cdp_thread_set_slice); 0: the kernel's */
};

int cdp_nbd_server_start(const struct cdp_nbd_opts *o, struct cdp_nbd_server **out,
			 struct cdp_err *err);
int cdp_nbd_server_port(const struct cdp_nbd_server *s);	/* TCP only */
/*
 * Stops accepting, disconnects every client after its in-flight requests
 * completed (their replies are sent when the socket allows; a client that
 * does not read them is cut off after handshake_timeout_ns), and frees.
 * @s may be NULL.
 */
void cdp_nbd_server_stop(struct cdp_nbd_server *s);

/*
 * Serves one connected client on @fd (takes it: closed before returning) in
 * the calling thread, with @o's exports and limits (@o->listen is ignored):
 * the handshake, then transmission until the client leaves. For tests and the
 * fuzzer, over one end of a socketpair. Returns 0 after NBD_OPT_ABORT,
 * NBD_CMD_DISC or a close between messages; -EPROTO, -ETIMEDOUT, -EINVAL
 * (bad @o) or another -errno otherwise, with @err saying why.
 */
int cdp_nbd_serve_fd(const struct cdp_nbd_opts *o, int fd, struct cdp_err *err);

/* ---- the request parser, separate so it can be fuzzed ------------------- */

#define CDP_NBD_REQUEST_MAGIC 0x25609513u
#define CDP_NBD_REQ_LEN 28
/*
 * A refused NBD_CMD_WRITE's payload is read and discarded (the connection
 * stays usable) when it is at most max(max_block, this): the spec's 32 MiB,
 * which a client may send without being taken for a denial of service. A
 * longer one drops the connection (-EPROTO from cdp_nbd_check_request()).
 */
#define CDP_NBD_SKIP_MAX (32u << 20)

struct cdp_nbd_request {
	uint16_t flags;		/* NBD_CMD_FLAG_* */
	uint16_t type;		/* NBD_CMD_* */
	uint64_t handle;
	uint64_t offset;
	uint32_t length;
};

/*
 * Parses the 28-byte request header at @p. Returns 0, or -EPROTO (bad magic:
 * the connection must be dropped).
 */
int cdp_nbd_parse_request(const uint8_t p[CDP_NBD_REQ_LEN], struct cdp_nbd_request *r);

/*
 * Checks a parsed request against an export: returns 0 or the NBD errno to
 * reply with (positive: NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM,
 * NBD_ENOTSUP), and sets *@skip_payload to the bytes of payload that follow
 * on the wire and must be read (and discarded on error) to stay in sync;
 * -EPROTO when the payload cannot be skipped safely (the connection drops).
 */
int cdp_nbd_check_request(const struct cdp_nbd_request *r, const struct cdp_export *e,
			  uint32_t *skip_payload);

#endif
