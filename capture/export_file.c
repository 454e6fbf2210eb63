/*
 * capture/export_file - a plain cdp_export over a file or block device (see
 * export.h): no capture, for front-end tests and as the "no capture"
 * reference in benchmarks.
 *
 * submit() checks the request and pushes it on the bounded queue
 * "front>file"; a few workers ("file/N") pop requests and run them with plain
 * syscalls, then call done() from the worker:
 *  - READ pread (a short read past a shrunk file's end reads zeros); WRITE
 *    pwrite; FLUSH, and FUA after a WRITE/TRIM/ZERO, fdatasync;
 *  - TRIM fallocate(PUNCH_HOLE|KEEP_SIZE), a no-op where unsupported (a trim
 *    is a hint);
 *  - ZERO fallocate(PUNCH_HOLE|KEEP_SIZE), or ZERO_RANGE when NO_HOLE asks
 *    for allocated blocks, falling back to ZERO_RANGE and then to writing
 *    zeros; a mode the file system refused once is not tried again.
 * Limits: min_block 512 (the logical sector size for a block device),
 * pref_block 4096, max_block 4 MiB; the size is rounded down to min_block.
 *
 * The queue's capacity (1024) is the backpressure: submit() waits for room
 * only when that many requests are queued (the NBD front end keeps at most
 * max_connections * max_inflight in flight, 1024 by default).
 *
 * Threads: submit() from any thread; close only when nothing is in flight.
 */
#include "capture/export.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/queue.h"
#include "common/util.h"

#define FILE_MIN_BLOCK 512u
#define FILE_PREF_BLOCK 4096u
#define FILE_MAX_BLOCK (4u << 20)
#define FILE_THREADS_DEF 4u
#define FILE_THREADS_MAX 64u
#define FILE_QUEUE 1024u
#define ZERO_CHUNK (64u << 10)

struct file_export {
	struct cdp_export e;	/* first: the front end's handle */
	int fd;
	char *name;
	char *path;
	struct cdp_queue *q;	/* "front>file" */
	unsigned nthreads;
	pthread_t *threads;
	atomic_bool no_punch;	/* PUNCH_HOLE refused once */
	atomic_bool no_zero_range;	/* ZERO_RANGE refused once */
};

static const uint8_t zero_buf[ZERO_CHUNK];

static bool unsupported(int err)
{
	return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS || err == EINVAL ||
	       err == ENOTTY;
}

/* fallocate(@mode) over the range; 0, -EOPNOTSUPP (now or earlier) or -errno. */
static int try_fallocate(struct file_export *f, atomic_bool *refused, int mode, uint64_t off,
			 uint64_t len)
{
	if (atomic_load(refused))
		return -EOPNOTSUPP;
	if (fallocate(f->fd, mode, (off_t)off, (off_t)len) == 0)
		return 0;
	if (unsupported(errno)) {
		atomic_store(refused, true);
		return -EOPNOTSUPP;
	}
	return -errno;
}

static int write_zeros(struct file_export *f, uint64_t off, uint64_t len)
{
	while (len) {
		size_t n = (size_t)CDP_MIN(len, (uint64_t)ZERO_CHUNK);
		int rc = cdp_pwrite_all(f->fd, zero_buf, n, off);

		if (rc)
			return rc;
		off += n;
		len -= n;
	}
	return 0;
}

static int do_zero(struct file_export *f, const struct cdp_io_req *r)
{
	int rc = -EOPNOTSUPP;

	if (!(r->flags & CDP_IO_F_NO_HOLE))
		rc = try_fallocate(f, &f->no_punch, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   r->offset, r->length);
	if (rc == -EOPNOTSUPP)
		rc = try_fallocate(f, &f->no_zero_range, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
				   r->offset, r->length);
	if (rc == -EOPNOTSUPP)
		rc = write_zeros(f, r->offset, r->length);
	return rc;
}

static int sync_fd(struct file_export *f)
{
	return fdatasync(f->fd) ? -errno : 0;
}

static int run(struct file_export *f, struct cdp_io_req *r)
{
	long n;
	int rc = 0;

	switch (r->kind) {
	case CDP_IO_READ:
		n = cdp_pread_full(f->fd, r->data, r->length, r->offset);
		if (n < 0)
			return (int)n;
		if ((uint32_t)n < r->length)
			memset((uint8_t *)r->data + n, 0, r->length - (size_t)n);
		return 0;
	case CDP_IO_WRITE:
		rc = cdp_pwrite_all(f->fd, r->data, r->length, r->offset);
		break;
	case CDP_IO_FLUSH:
		return sync_fd(f);
	case CDP_IO_TRIM:
		rc = try_fallocate(f, &f->no_punch, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   r->offset, r->length);
		if (rc == -EOPNOTSUPP)
			rc = 0;
		break;
	case CDP_IO_ZERO:
		rc = do_zero(f, r);
		break;
	}
	if (rc == 0 && (r->flags & CDP_IO_F_FUA))
		rc = sync_fd(f);
	return rc;
}

static void *worker_main(void *arg)
{
	struct file_export *f = arg;
	void *p;

	while (cdp_queue_pop(f->q, &p, CDP_QUEUE_UNTIL_CLOSED) == 0) {
		struct cdp_io_req *r = p;

		r->done(r, run(f, r));
	}
	return NULL;
}

static int file_submit(struct cdp_export *e, struct cdp_io_req *r)
{
	struct file_export *f = (struct file_export *)e;

	switch (r->kind) {
	case CDP_IO_FLUSH:
		break;
	case CDP_IO_WRITE:
	case CDP_IO_TRIM:
	case CDP_IO_ZERO:
		if (e->read_only)
			return -EPERM;
		/* fall through */
	case CDP_IO_READ:
		if (r->length == 0 || r->length > e->max_block || r->offset > e->size ||
		    r->length > e->size - r->offset || r->offset % e->min_block ||
		    r->length % e->min_block)
			return -EINVAL;
		if ((r->kind == CDP_IO_READ || r->kind == CDP_IO_WRITE) && !r->data)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (!r->done)
		return -EINVAL;
	return cdp_queue_push(f->q, r, CDP_QUEUE_UNTIL_CLOSED);
}

struct cdp_export *cdp_export_file_open(const char *name, const char *path, unsigned threads,
					struct cdp_err *err)
{
	struct file_export *f;
	uint32_t min_block = FILE_MIN_BLOCK;
	bool read_only = false;
	uint64_t size;
	struct stat st;
	int fd, rc;

	if (threads > FILE_THREADS_MAX) {
		cdp_err_set(err, -EINVAL, "threads %u > %u", threads, FILE_THREADS_MAX);
		return NULL;
	}
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		read_only = true;
	}
	if (fd < 0) {
		cdp_err_sys(err, -errno, "open %s", path);
		return NULL;
	}
	if (fstat(fd, &st) < 0) {
		cdp_err_sys(err, -errno, "stat %s", path);
		close(fd);
		return NULL;
	}
	if (S_ISBLK(st.st_mode)) {
		int ssz = 0;

		if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
			cdp_err_sys(err, -errno, "%s: BLKGETSIZE64", path);
			close(fd);
			return NULL;
		}
		if (ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz >= 512 && ssz <= 65536 &&
		    !(ssz & (ssz - 1)))
			min_block = (uint32_t)ssz;
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else {
		cdp_err_set(err, -EINVAL, "%s: not a regular file or block device", path);
		close(fd);
		return NULL;
	}

	f = cdp_xcalloc(1, sizeof(*f));
	f->fd = fd;
	f->name = cdp_xstrdup(name ? name : "");
	f->path = cdp_xstrdup(path);
	f->e.name = f->name;
	f->e.size = CDP_ALIGN_DOWN(size, (uint64_t)min_block);
	f->e.min_block = min_block;
	f->e.pref_block = CDP_MAX(FILE_PREF_BLOCK, min_block);
	f->e.max_block = FILE_MAX_BLOCK;
	f->e.read_only = read_only;
	f->e.can_trim = f->e.can_zero = f->e.can_flush = f->e.can_fua = true;
	f->e.submit = file_submit;
	f->e.ctx = f;
	atomic_init(&f->no_punch, false);
	atomic_init(&f->no_zero_range, false);
	f->q = cdp_queue_new("front>file", FILE_QUEUE);
	f->nthreads = threads ? threads : FILE_THREADS_DEF;
	f->threads = cdp_xcalloc(f->nthreads, sizeof(*f->threads));
	for (unsigned i = 0; i < f->nthreads; i++) {
		char tname[16];

		snprintf(tname, sizeof(tname), "file/%u", i);
		rc = cdp_thread_start(&f->threads[i], tname, worker_main, f);
		if (rc) {
			cdp_err_sys(err, rc, "%s: cannot start worker %u", path, i);
			f->nthreads = i;
			cdp_export_file_close(&f->e);
			return NULL;
		}
	}
	return &f->e;
}

void cdp_export_file_close(struct cdp_export *e)
{
	struct file_export *f = (struct file_export *)e;

	if (!e)
		return;
	/* Workers drain what is queued, then see the queue closed. */
	cdp_queue_close(f->q);
	for (unsigned i = 0; i < f->nthreads; i++)
		pthread_join(f->threads[i], NULL);
	cdp_queue_free(f->q);
	close(f->fd);
	free(f->threads);
	free(f->name);
	free(f->path);
	free(f);
}
