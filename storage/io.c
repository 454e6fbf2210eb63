/*
 * storage/io - the kernel behind struct cdp_io (see io.h; the shim is in io_shim.c).
 *
 * Design. The journal's durable step is "many O_DIRECT writes, then one
 * fdatasync per touched file". Both halves are batches, and both go through
 * io_uring so that the disk sees queue depth instead of one request at a time:
 *
 *  - pwritev_batch cuts every write into chunks of at most CHUNK_MAX (1 MiB),
 *    so that a few large writes still give depth, and keeps at most
 *    MAX_INFLIGHT chunks in flight, refilling from the completions. A short
 *    write is continued from where it stopped; -EINTR/-EAGAIN completions of a
 *    write are resubmitted (writing the same bytes again is harmless). The
 *    first error stops the refill, then everything in flight is reaped before
 *    returning: no request ever outlives the call, so the caller's buffers are
 *    free again when it returns. Elements of one batch are in flight together:
 *    overlapping elements land in an unspecified order.
 *  - fdatasync_batch submits IORING_OP_FSYNC with IORING_FSYNC_DATASYNC for
 *    every fd together and waits for all; a failed sync is never retried
 *    (fsyncgate: after a failure the kernel may have dropped the dirty pages,
 *    and a second fdatasync would report success for data that is gone).
 *
 * One ring per thread (RING_ENTRIES entries), created on the thread's first
 * batch call and kept in a thread-local pointer; a pthread key destructor
 * tears it down at thread exit, and a fork child handler drops the forking
 * thread's ring (its memory is shared with the parent's kernel ring). If
 * io_uring cannot be set up (old kernel, io_uring_disabled, seccomp) the batch
 * calls fall back to pwrite/fdatasync loops - silently: only return values
 * report anything. cdp_io_plain() is that fallback as a table of its own.
 *
 * The agent's sync reads go through a cdp_io_rq: a small ring of its own,
 * reads only, completions reaped one at a time in any order.
 *
 * Everything else is a plain syscall returning -errno, with O_CLOEXEC added
 * to every open and EINTR retried where retrying is safe (never for fsync).
 * Only this file includes liburing.h.
 */
#include "storage/io.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define RING_ENTRIES 128u
#define MAX_INFLIGHT 64u
#define CHUNK_MAX (1u << 20)

/* ---- plain syscalls ------------------------------------------------- */

static int sys_open(void *ctx, const char *path, int flags, mode_t mode)
{
	int fd;

	do
		fd = open(path, flags | O_CLOEXEC, mode);
	while (fd < 0 && errno == EINTR);
	return fd < 0 ? -errno : fd;
}

static int sys_close(void *ctx, int fd)
{
	/* On Linux the fd is released even when close() fails: never retry. */
	if (close(fd) < 0 && errno != EINTR)
		return -errno;
	return 0;
}

static int sys_fsync_dir(void *ctx, const char *dir)
{
	int fd, rc = 0;

	do
		fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/*
 * pread until @len or EOF. On an O_DIRECT fd the read after a short read at
 * an unaligned EOF starts unaligned, but the kernel answers a read at or past
 * EOF with 0 before it checks alignment (test_pread_reads_until_eof).
 */
static long sys_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
	if (len > (size_t)LONG_MAX)
		return -EINVAL;
	return cdp_pread_full(fd, buf, len, off);
}

static int sys_ftruncate(void *ctx, int fd, uint64_t len)
{
	int rc;

	if (len > (uint64_t)INT64_MAX)
		return -EFBIG;
	do
		rc = ftruncate(fd, (off_t)len);
	while (rc < 0 && errno == EINTR);
	return rc < 0 ? -errno : 0;
}

static int sys_fallocate(void *ctx, int fd, int mode, uint64_t off, uint64_t len)
{
	int rc;

	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX)
		return -EFBIG;
	do
		rc = fallocate(fd, mode, (off_t)off, (off_t)len);
	while (rc < 0 && errno == EINTR);
	return rc < 0 ? -errno : 0;
}

static int sys_unlink(void *ctx, const char *path)
{
	return unlink(path) < 0 ? -errno : 0;
}

static int sys_rename(void *ctx, const char *from, const char *to)
{
	return rename(from, to) < 0 ? -errno : 0;
}

/* Element by element, stopping at the first error. */
static int loop_pwritev_batch(void *ctx, const struct cdp_io_write *w, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		int rc = cdp_pwrite_all(w[i].fd, w[i].buf, w[i].len, w[i].off);

		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Every fd is synced even after a failure (as the ring does); the first error wins. */
static int loop_fdatasync_batch(void *ctx, const int *fds, unsigned n)
{
	int err = 0;

	for (unsigned i = 0; i < n; i++)
		if (fdatasync(fds[i]) < 0 && !err)
			err = -errno;
	return err;
}

/* ---- the per-thread ring -------------------------------------------- */

static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static pthread_key_t ring_key;
static bool ring_key_ok;		/* written once under ring_once */
static atomic_bool uring_off;		/* io_uring refused for good: loops only */
static __thread struct io_uring *tls_ring;

static void ring_free(void *p)
{
	struct io_uring *r = p;

	if (r == tls_ring)
		tls_ring = NULL;
	io_uring_queue_exit(r);
	free(r);
}

static void drop_thread_ring(void)
{
	struct io_uring *r = tls_ring;

	if (!r)
		return;
	pthread_setspecific(ring_key, NULL);
	ring_free(r);
}

static void ring_once_init(void)
{
	if (pthread_key_create(&ring_key, ring_free) != 0)
		return;
	/*
	 * The forking thread's ring is mapped shared with the kernel ring the
	 * parent keeps using: the child must not touch it. (Other threads'
	 * rings are not in the child's TLS: nothing to do for them.)
	 */
	pthread_atfork(NULL, NULL, drop_thread_ring);
	ring_key_ok = true;
}

static bool ops_supported(struct io_uring *r)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(r);
	bool ok;

	if (!p)
		return false;
	ok = io_uring_opcode_supported(p, IORING_OP_WRITE) &&
	     io_uring_opcode_supported(p, IORING_OP_FSYNC);
	io_uring_free_probe(p);
	return ok;
}

/* The calling thread's ring, set up on first use; NULL means "use the loops". */
static struct io_uring *thread_ring(void)
{
	struct io_uring *r;
	int rc;

	if (tls_ring)
		return tls_ring;
	if (atomic_load_explicit(&uring_off, memory_order_relaxed))
		return NULL;
	pthread_once(&ring_once, ring_once_init);
	if (!ring_key_ok)
		return NULL;
	r = cdp_xmalloc(sizeof(*r));
	rc = io_uring_queue_init(RING_ENTRIES, r, 0);
	if (rc < 0) {
		free(r);
		/* Out of fds is this moment's problem; anything else is for good. */
		if (rc != -EMFILE && rc != -ENFILE)
			atomic_store(&uring_off, true);
		return NULL;
	}
	if (!ops_supported(r)) {
		io_uring_queue_exit(r);
		free(r);
		atomic_store(&uring_off, true);
		return NULL;
	}
	if (pthread_setspecific(ring_key, r) != 0) {
		io_uring_queue_exit(r);
		free(r);
		return NULL;
	}
	tls_ring = r;
	return r;
}

bool cdp_io_real_uses_uring(void)
{
	return thread_ring() != NULL;
}

/* ---- batches on the ring -------------------------------------------- */

struct op {
	int fd;
	bool sync;		/* fdatasync, else a write of the rest below */
	const uint8_t *buf;
	size_t len;		/* bytes still to write */
	uint64_t off;
};

struct batch {
	struct io_uring *ring;
	struct op op[MAX_INFLIGHT];
	unsigned free_slot[MAX_INFLIGHT];
	unsigned nfree;
	unsigned queued;	/* in the SQ ring, not yet taken by the kernel */
	unsigned inflight;	/* taken by the kernel, completion not yet reaped */
	bool broken;		/* the ring refused a submit: reap, then tear it down */
	int err;		/* first error */
};

/* Produces the next operation into *op; false when there is none left. */
typedef bool (*next_fn)(void *arg, struct op *op);

static void set_err(struct batch *b, int err)
{
	if (!b->err)
		b->err = err;
}

static void prep(struct batch *b, unsigned slot)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(b->ring);
	struct op *op = &b->op[slot];

	/* queued + inflight <= MAX_INFLIGHT < RING_ENTRIES: there is always room. */
	assert(sqe);
	if (op->sync)
		io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
	else
		io_uring_prep_write(sqe, op->fd, op->buf, (unsigned)op->len, op->off);
	io_uring_sqe_set_data64(sqe, slot);
	b->queued++;
}

static void release(struct batch *b, unsigned slot)
{
	b->free_slot[b->nfree++] = slot;
}

static void complete(struct batch *b, unsigned slot, int res)
{
	struct op *op = &b->op[slot];

	b->inflight--;
	if (op->sync) {
		if (res < 0)
			set_err(b, res);	/* never retried */
		release(b, slot);
		return;
	}
	if (res < 0) {
		if ((res == -EINTR || res == -EAGAIN) && !b->err && !b->broken) {
			prep(b, slot);
			return;
		}
		set_err(b, res);
		release(b, slot);
		return;
	}
	if (res == 0 || (size_t)res > op->len) {
		set_err(b, -EIO);	/* no progress (or nonsense): as cdp_pwrite_all() */
		release(b, slot);
		return;
	}
	op->buf += res;
	op->off += (uint64_t)res;
	op->len -= (size_t)res;
	if (op->len && !b->err && !b->broken)
		prep(b, slot);		/* short write: continue with the rest */
	else
		release(b, slot);
}

static void reap(struct batch *b)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	io_uring_for_each_cqe(b->ring, head, cqe) {
		complete(b, (unsigned)io_uring_cqe_get_data64(cqe), cqe->res);
		seen++;
	}
	io_uring_cq_advance(b->ring, seen);
}

/* Submits what is queued (if the ring still takes it) and waits for a completion. */
static void submit_and_wait(struct batch *b)
{
	struct io_uring_cqe *cqe;
	int rc;

	if (b->queued && !b->broken) {
		rc = io_uring_submit_and_wait(b->ring, 1);
		if (rc >= 0) {
			b->queued -= (unsigned)rc;
			b->inflight += (unsigned)rc;
			return;
		}
		if (rc == -EINTR)
			return;
		if ((rc == -EAGAIN || rc == -EBUSY) && b->inflight)
			goto wait;	/* room comes back with completions */
		/*
		 * The kernel will not take the queued entries. They must never run
		 * after we return (the buffers go back to the caller): reap what is
		 * in flight, then tear the ring down with them unsubmitted.
		 */
		set_err(b, rc);
		b->broken = true;
		if (!b->inflight)
			return;
	}
wait:
	do
		rc = io_uring_wait_cqe(b->ring, &cqe);
	while (rc == -EINTR);
	if (rc < 0 && !b->err)
		set_err(b, rc);
}

static int run_batch(struct io_uring *ring, next_fn next, void *arg)
{
	struct batch b = { .ring = ring };
	bool more = true;

	for (unsigned i = 0; i < MAX_INFLIGHT; i++)
		b.free_slot[i] = MAX_INFLIGHT - 1 - i;
	b.nfree = MAX_INFLIGHT;
	for (;;) {
		while (more && b.nfree && !b.err && !b.broken) {
			unsigned slot = b.free_slot[b.nfree - 1];

			more = next(arg, &b.op[slot]);
			if (!more)
				break;
			b.nfree--;
			prep(&b, slot);
		}
		if (!b.inflight && (!b.queued || b.broken))
			break;
		submit_and_wait(&b);
		reap(&b);
	}
	if (b.broken)
		drop_thread_ring();
	return b.err;
}

struct write_cursor {
	const struct cdp_io_write *w;
	unsigned n, i;
	size_t done;		/* bytes of w[i] already handed out */
};

static bool next_write(void *arg, struct op *op)
{
	struct write_cursor *c = arg;

	while (c->i < c->n && c->done == c->w[c->i].len) {
		c->i++;
		c->done = 0;
	}
	if (c->i == c->n)
		return false;
	op->fd = c->w[c->i].fd;
	op->sync = false;
	op->buf = (const uint8_t *)c->w[c->i].buf + c->done;
	op->len = CDP_MIN(c->w[c->i].len - c->done, (size_t)CHUNK_MAX);
	op->off = c->w[c->i].off + c->done;
	c->done += op->len;
	return true;
}

struct sync_cursor {
	const int *fds;
	unsigned n, i;
};

static bool next_sync(void *arg, struct op *op)
{
	struct sync_cursor *c = arg;

	if (c->i == c->n)
		return false;
	op->fd = c->fds[c->i++];
	op->sync = true;
	op->buf = NULL;
	op->len = 0;
	op->off = 0;
	return true;
}

static int ring_pwritev_batch(void *ctx, const struct cdp_io_write *w, unsigned n)
{
	struct io_uring *ring = thread_ring();
	struct write_cursor c = { w, n, 0, 0 };

	if (!ring)
		return loop_pwritev_batch(ctx, w, n);
	return run_batch(ring, next_write, &c);
}

static int ring_fdatasync_batch(void *ctx, const int *fds, unsigned n)
{
	struct io_uring *ring = thread_ring();
	struct sync_cursor c = { fds, n, 0 };

	if (!ring)
		return loop_fdatasync_batch(ctx, fds, n);
	return run_batch(ring, next_sync, &c);
}

/* ---- the tables ----------------------------------------------------- */

static const struct cdp_io real_io = {
	.ctx = NULL,
	.open = sys_open,
	.close = sys_close,
	.pwritev_batch = ring_pwritev_batch,
	.fdatasync_batch = ring_fdatasync_batch,
	.fsync_dir = sys_fsync_dir,
	.pread = sys_pread,
	.ftruncate = sys_ftruncate,
	.fallocate = sys_fallocate,
	.unlink = sys_unlink,
	.rename = sys_rename,
};

static const struct cdp_io plain_io = {
	.ctx = NULL,
	.open = sys_open,
	.close = sys_close,
	.pwritev_batch = loop_pwritev_batch,
	.fdatasync_batch = loop_fdatasync_batch,
	.fsync_dir = sys_fsync_dir,
	.pread = sys_pread,
	.ftruncate = sys_ftruncate,
	.fallocate = sys_fallocate,
	.unlink = sys_unlink,
	.rename = sys_rename,
};

const struct cdp_io *cdp_io_real(void)
{
	return &real_io;
}

const struct cdp_io *cdp_io_plain(void)
{
	return &plain_io;
}

/* ---- reads in flight ------------------------------------------------ */

struct rq_done {
	uint64_t tag;
	long res;
};

struct cdp_io_rq {
	struct io_uring ring;
	bool uring;		/* else the fallback: reads done at submit */
	unsigned depth;
	unsigned inflight;	/* started, completion not yet reaped */
	struct rq_done *done;	/* fallback: completions waiting, FIFO */
	unsigned ndone;
};

struct cdp_io_rq *cdp_io_rq_new(unsigned depth)
{
	struct cdp_io_rq *q = cdp_xcalloc(1, sizeof(*q));

	q->depth = depth ? depth : 1;
	q->done = cdp_xcalloc(q->depth, sizeof(*q->done));
	if (!atomic_load_explicit(&uring_off, memory_order_relaxed) &&
	    io_uring_queue_init(q->depth, &q->ring, 0) == 0)
		q->uring = true;
	return q;
}

bool cdp_io_rq_free(struct cdp_io_rq *q)
{
	uint64_t tag;
	long res;

	if (!q)
		return true;
	while (q->inflight)
		if (cdp_io_rq_wait(q, &tag, &res)) {
			cdp_log_err("io: %u sync reads cannot be reaped; their ring and buffers "
				    "are left allocated", q->inflight);
			return false;
		}
	if (q->uring)
		io_uring_queue_exit(&q->ring);
	free(q->done);
	free(q);
	return true;
}

bool cdp_io_rq_async(const struct cdp_io_rq *q)
{
	return q->uring;
}

int cdp_io_rq_read(struct cdp_io_rq *q, int fd, void *buf, size_t len, uint64_t off,
		   uint64_t tag)
{
	struct io_uring_sqe *sqe;
	long n;
	int rc;

	if (q->inflight >= q->depth)
		return -EBUSY;
	if (len > UINT_MAX || off > (uint64_t)INT64_MAX)
		return -EINVAL;
	if (!q->uring) {
		do
			n = pread(fd, buf, len, (off_t)off);
		while (n < 0 && errno == EINTR);
		q->done[q->ndone].tag = tag;
		q->done[q->ndone++].res = n < 0 ? -errno : n;
		q->inflight++;
		return 0;
	}
	sqe = io_uring_get_sqe(&q->ring);
	if (!sqe)		/* inflight < depth = SQ entries: cannot happen */
		return -EBUSY;
	io_uring_prep_read(sqe, fd, buf, (unsigned)len, off);
	io_uring_sqe_set_data64(sqe, tag);
	do
		rc = io_uring_submit(&q->ring);
	while (rc == -EINTR);
	if (rc < 0)
		return rc;
	q->inflight++;
	return 0;
}

int cdp_io_rq_wait(struct cdp_io_rq *q, uint64_t *tag, long *res)
{
	struct io_uring_cqe *cqe;
	int rc;

	if (!q->inflight)
		return -ENOENT;
	if (!q->uring) {
		*tag = q->done[0].tag;
		*res = q->done[0].res;
		memmove(q->done, q->done + 1, --q->ndone * sizeof(*q->done));
		q->inflight--;
		return 0;
	}
	do
		rc = io_uring_wait_cqe(&q->ring, &cqe);
	while (rc == -EINTR);
	if (rc < 0)
		return rc;
	*tag = io_uring_cqe_get_data64(cqe);
	*res = cqe->res;
	io_uring_cqe_seen(&q->ring, cqe);
	q->inflight--;
	return 0;
}

/* ---- files created whole ------------------------------------------------ */

/* The directory of @path (for fsync_dir). */
static char *dir_of(const char *path)
{
	char *d = cdp_xstrdup(path), *slash = strrchr(d, '/');

	if (!slash)
		strcpy(d, ".");
	else if (slash == d)
		d[1] = 0;
	else
		*slash = 0;
	return d;
}

int cdp_io_write_whole(const struct cdp_io *io, const char *path, const void *hdr,
		       size_t hdr_len, uint64_t size, struct cdp_err *err)
{
	size_t plen = strlen(path);
	char *tmp = cdp_xmalloc(plen + 5), *dir = dir_of(path);
	int fd, rc;

	memcpy(tmp, path, plen);
	memcpy(tmp + plen, ".tmp", 5);
	fd = rc = io->open(io->ctx, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (rc < 0) {
		cdp_err_sys(err, rc, "creating %s", tmp);
		goto out;
	}
	rc = cdp_io_pwrite(io, fd, hdr, hdr_len, 0);
	if (rc == 0)
		rc = io->ftruncate(io->ctx, fd, size);
	if (rc == 0)
		rc = cdp_io_fdatasync(io, fd);
	if (rc < 0) {
		cdp_err_sys(err, rc, "writing %s", tmp);
		io->close(io->ctx, fd);
		goto out;
	}
	rc = io->close(io->ctx, fd);
	if (rc == 0)
		rc = io->rename(io->ctx, tmp, path);
	if (rc == 0)
		rc = io->fsync_dir(io->ctx, dir);
	if (rc < 0)
		cdp_err_sys(err, rc, "renaming %s to %s", tmp, path);
out:
	free(dir);
	free(tmp);
	return rc;
}

int cdp_io_open_or_create(const struct cdp_io *io, const char *path, const void *hdr,
			  size_t hdr_len, uint64_t size, struct cdp_err *err)
{
	int rc = io->open(io->ctx, path, O_RDWR | O_CLOEXEC, 0);

	if (rc == -ENOENT) {
		rc = cdp_io_write_whole(io, path, hdr, hdr_len, size, err);
		if (rc < 0)
			return rc;
		rc = io->open(io->ctx, path, O_RDWR | O_CLOEXEC, 0);
	}
	if (rc < 0)
		cdp_err_sys(err, rc, "open");
	return rc;
}
