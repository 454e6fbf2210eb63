/*
 * capture/export - what a capture front end (the NBD server now, ublk or the
 * kernel nbd client later) sees of a protected volume: its size and block
 * limits, and one asynchronous submit call. The splitter implements it for
 * protected volumes (range lock, activity log, source I/O, records); a
 * front end never knows more than this, so a new front end never touches the
 * splitter.
 *
 * Contract for implementations:
 *  - submit() never blocks on I/O (unless CDP_IO_F_INLINE, below); it may
 *    block briefly on a lock. It returns
 *    0 when the request was taken (done() will be called exactly once, from
 *    any thread, possibly before submit() returns), or -errno when it was
 *    refused at once (done() is then NOT called).
 *  - A request's data buffer is the front end's until done() is called.
 *  - Requests are checked by the front end against size and limits before
 *    submit(); implementations check again and refuse with -EINVAL.
 *  - FLUSH covers every write whose done() was called before the FLUSH was
 *    submitted. FUA makes that one write durable before its done().
 *  - CDP_IO_F_INLINE: the caller has nothing else to do until this request
 *    completes (a client with one request in flight), so submit() may do the
 *    I/O on the calling thread and call done() before it returns. Without it
 *    submit() never waits for I/O. It is a hint: an implementation may
 *    ignore it, and done() may still come from another thread.
 */
#ifndef CDP_CAPTURE_EXPORT_H
#define CDP_CAPTURE_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cdp_io_kind {
	CDP_IO_READ,
	CDP_IO_WRITE,
	CDP_IO_FLUSH,
	CDP_IO_TRIM,		/* may discard: reads after it return zeros or old data */
	CDP_IO_ZERO,		/* reads after it return zeros */
};

#define CDP_IO_F_FUA 0x1u	/* WRITE, TRIM, ZERO: durable before done() */
#define CDP_IO_F_NO_HOLE 0x2u	/* ZERO: do not punch a hole (NBD_CMD_FLAG_NO_HOLE) */
#define CDP_IO_F_INLINE 0x4u	/* submit() may run the I/O on the caller's thread */

struct cdp_io_req {
	enum cdp_io_kind kind;
	uint32_t flags;		/* CDP_IO_F_* */
	uint64_t offset;	/* bytes */
	uint32_t length;	/* bytes; 0 for FLUSH */
	void *data;		/* READ: filled; WRITE: the payload; else NULL */
	/* rc: 0, or -errno (-EIO: the source failed; -ENOSPC; -EINVAL: bad range) */
	void (*done)(struct cdp_io_req *req, int rc);
	void *user;		/* the front end's */
	uintptr_t priv[8];	/* the implementation's, untouched by front ends */
};

struct cdp_export {
	const char *name;	/* export name the front end announces */
	uint64_t size;		/* bytes, a multiple of min_block */
	uint32_t min_block;	/* 512: smallest aligned I/O accepted */
	uint32_t pref_block;	/* 4096 */
	uint32_t max_block;	/* largest single request (fits a segment) */
	bool read_only;
	bool can_trim, can_zero, can_flush, can_fua;
	int (*submit)(struct cdp_export *e, struct cdp_io_req *req);
	void *ctx;		/* the implementation's */
};

/*
 * A plain export over a file or block device, without capture: pread/pwrite
 * on a small thread pool, fdatasync for FLUSH and FUA, fallocate for TRIM and
 * ZERO. For front-end tests and as the "no capture" reference in benchmarks.
 */
struct cdp_err;
struct cdp_export *cdp_export_file_open(const char *name, const char *path, unsigned threads,
					struct cdp_err *err);
void cdp_export_file_close(struct cdp_export *e);

#endif
