/*
 * storage/io - every file operation of the journal goes through here.
 *
 * Owns: the I/O seam. struct cdp_io is a table of operations with a context;
 * the journal never calls open/pwrite/fdatasync itself. Two implementations:
 *
 *  - cdp_io_real(): the kernel, with io_uring for the batched calls (many
 *    O_DIRECT writes in flight, then one fdatasync per touched file, also in
 *    flight together); plain syscalls for the rest. Only this module includes
 *    liburing.h.
 *  - cdp_io_shim_new(): a power-cut simulator for tests (SQLite's test6.c
 *    idea). It performs every operation on the real files but remembers, per
 *    file, the writes not yet covered by an fdatasync/fsync (with the bytes
 *    they replaced and the file size before). cdp_io_shim_power_cut() then
 *    drops, keeps or tears (sector by sector) each of those writes at random,
 *    restores sizes, and makes every later operation fail with -EIO, as a
 *    machine that lost power would. Metadata operations (create, rename,
 *    unlink, truncate) are taken as durable at once: the journal fsyncs the
 *    directory after each of them anyway.
 *
 * Conventions: 0 / -errno returns; pread returns bytes read. O_DIRECT callers
 * pass 4 KiB-aligned buffers, offsets and lengths. The batch calls either
 * complete every element or return the first error; a failed write or sync
 * is never retried here (fsyncgate: the caller retires the file).
 *
 * Threads: the real ops may be called from any thread; each thread that uses
 * the batched calls gets its own ring (created lazily, freed at thread exit).
 * The shim serialises everything with one mutex. A read queue
 * (cdp_io_rq) belongs to the one thread that uses it.
 */
#ifndef CDP_STORAGE_IO_H
#define CDP_STORAGE_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/err.h"

#define CDP_IO_ALIGN 4096u

struct cdp_io_write {
	int fd;
	const void *buf;	/* borrowed until the call returns */
	size_t len;
	uint64_t off;
};

struct cdp_io {
	void *ctx;
	/* open(2): returns fd or -errno. */
	int (*open)(void *ctx, const char *path, int flags, mode_t mode);
	int (*close)(void *ctx, int fd);
	/* Every write complete (short writes continued), or the first -errno. */
	/* (Elements are in flight together: overlapping ones land in any order.) */
	int (*pwritev_batch)(void *ctx, const struct cdp_io_write *w, unsigned n);
	/* fdatasync() of each fd (in flight together); the first -errno. */
	int (*fdatasync_batch)(void *ctx, const int *fds, unsigned n);
	/* fsync() of a directory (after create, rename, unlink). */
	int (*fsync_dir)(void *ctx, const char *dir);
	/* pread until @len or EOF: bytes read or -errno. */
	long (*pread)(void *ctx, int fd, void *buf, size_t len, uint64_t off);
	int (*ftruncate)(void *ctx, int fd, uint64_t len);
	/* fallocate(2) with @mode (0 or FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE). */
	int (*fallocate)(void *ctx, int fd, int mode, uint64_t off, uint64_t len);
	int (*unlink)(void *ctx, const char *path);
	int (*rename)(void *ctx, const char *from, const char *to);
};

/* The kernel (process-wide, immutable; never freed). */
const struct cdp_io *cdp_io_real(void);

/*
 * The kernel without io_uring: the batch calls are pwrite and fdatasync loops,
 * as cdp_io_real() falls back to when io_uring cannot be set up. Same rules as
 * cdp_io_real(); for tests and benchmarks.
 */
const struct cdp_io *cdp_io_plain(void);

/*
 * True when the calling thread's batch calls go through io_uring (setting its
 * ring up if needed), false when cdp_io_real() falls back to the loops.
 */
bool cdp_io_real_uses_uring(void);

/* Convenience wrappers. */
static inline int cdp_io_pwrite(const struct cdp_io *io, int fd, const void *buf, size_t len,
				uint64_t off)
{
	struct cdp_io_write w = { fd, buf, len, off };

	return io->pwritev_batch(io->ctx, &w, 1);
}

static inline int cdp_io_fdatasync(const struct cdp_io *io, int fd)
{
	return io->fdatasync_batch(io->ctx, &fd, 1);
}

/*
 * Opens @path read-write; when it does not exist, creates it first, whole or
 * not at all: @hdr (@hdr_len bytes, CDP_IO_ALIGN-aligned) at offset 0 of
 * "@path.tmp", the file extended to @size, fdatasync, rename over @path, fsync
 * of its directory. Returns the fd, or -errno with @err naming the file.
 */
struct cdp_err;
int cdp_io_open_or_create(const struct cdp_io *io, const char *path, const void *hdr,
			  size_t hdr_len, uint64_t size, struct cdp_err *err);

/*
 * Replaces @path whole or not at all (creating it when missing): @hdr at
 * offset 0 of "@path.tmp", extended to @size, fdatasync, rename over @path,
 * fsync of its directory. After a crash @path is the old file or the new
 * one, never a mix. Returns 0, or -errno with @err naming the file.
 */
int cdp_io_write_whole(const struct cdp_io *io, const char *path, const void *hdr,
		       size_t hdr_len, uint64_t size, struct cdp_err *err);

/* ---- reads in flight (the agent's sync) ------------------------------ */

/*
 * A queue of up to @depth reads in flight, on an io_uring of its own (not
 * the thread's batch ring). Without io_uring (refused, old kernel) each read
 * runs synchronously when it is started and its completion waits in the
 * queue: same calls, queue depth 1. One owner thread; not for the shim.
 */
struct cdp_io_rq;

/* Returns a new queue; caller frees with cdp_io_rq_free(). */
struct cdp_io_rq *cdp_io_rq_new(unsigned depth);
/*
 * Frees @q, first reaping reads still in flight (after a failed
 * cdp_io_rq_wait()). Returns false when some could not be reaped: the
 * kernel may still write into their buffers, so the caller must leave them
 * allocated (and @q is left open, leaked, for the same reason).
 */
bool cdp_io_rq_free(struct cdp_io_rq *q);
/* True when reads are in flight together (io_uring), false for the fallback. */
bool cdp_io_rq_async(const struct cdp_io_rq *q);

/*
 * Starts one read(2) of @len bytes at @off of @fd into @buf (borrowed until
 * its completion is reaped), tagged @tag. -EBUSY when @depth reads are in
 * flight; another -errno when the ring refused it (nothing was started).
 */
int cdp_io_rq_read(struct cdp_io_rq *q, int fd, void *buf, size_t len, uint64_t off,
		   uint64_t tag);

/*
 * Waits for one completion, in any order: *@tag and *@res (bytes read by
 * that one read, which may be short, or -errno). -ENOENT when nothing is in
 * flight.
 */
int cdp_io_rq_wait(struct cdp_io_rq *q, uint64_t *tag, long *res);

/* ---- power-cut shim (tests) ----------------------------------------- */

struct cdp_io_shim;

/* A shim over the kernel, deterministic for @seed. Caller frees with cdp_io_shim_free(). */
struct cdp_io_shim *cdp_io_shim_new(uint64_t seed);
void cdp_io_shim_free(struct cdp_io_shim *s);

/* The operations table to hand to the journal (valid until cdp_io_shim_free()). */
const struct cdp_io *cdp_io_shim_ops(struct cdp_io_shim *s);

struct cdp_io_shim_stats {
	uint64_t unsynced_writes;	/* pending at the cut */
	uint64_t dropped, torn, kept;	/* what the cut did with them */
};

/*
 * Simulates a power cut now: every write not covered by a later fdatasync of
 * its file is dropped, kept or torn at random; every later operation (and any
 * still running) fails with -EIO. Returns what was done.
 */
struct cdp_io_shim_stats cdp_io_shim_power_cut(struct cdp_io_shim *s);

/*
 * Cuts the power by itself just before the @nth (1-based) pwritev_batch,
 * fdatasync_batch or fallocate call from now, which fails with -EIO, as do all
 * later ones (0 = off). The cut then lands inside the windows where writes are
 * not yet synced; cdp_io_shim_power_cut() afterwards returns what it did.
 */
void cdp_io_shim_cut_at(struct cdp_io_shim *s, unsigned long nth);

/* Makes the @nth (1-based) pwritev_batch or fdatasync_batch call fail with @code (0 = off). */
void cdp_io_shim_fail_nth(struct cdp_io_shim *s, unsigned long nth, int code);

#endif
