/*
 * storage/io_shim - the power-cut simulator behind cdp_io_shim_new() (see io.h).
 *
 * Design (SQLite's test6.c idea, but on real files). Every operation is done
 * for real, through the plain syscalls of cdp_io_plain(); the shim remembers,
 * per inode, the writes the disk may not have yet, and undoes some of them at
 * the cut. Why per inode and not per fd: fdatasync() covers every write made
 * to the inode, through any fd, so the pending list is keyed by (st_dev, st_ino).
 *
 * For each inode the shim keeps:
 *  - its own plain O_RDWR fd (bfd) for the bookkeeping reads and the restores,
 *    so that the caller's O_DIRECT fds (aligned buffers only) never see them;
 *    it also pins the inode, so its number cannot be reused while tracked;
 *  - durable_size: the size the file keeps if every pending write is dropped
 *    (the size at the first pending write, then whatever a sync, truncate or
 *    fallocate made durable);
 *  - the list of writes since the last sync, oldest first: offset, length,
 *    the file size right after the write, and the bytes it replaced, read
 *    through bfd just before the write (bytes past EOF read as zeros: "did
 *    not exist", and a hole looks the same).
 *
 * A successful fdatasync of any fd of the inode empties the list. A failed
 * one (real, or injected with cdp_io_shim_fail_nth()) models the worst case of
 * fsyncgate: Linux reports the error once and may drop the dirty pages, so a
 * later fdatasync succeeds without writing them. The writes pending at a failed
 * sync become POISONED: they stay at risk until the cut whatever syncs follow;
 * later writes that are then synced stay in the list as DURABLE, only so that
 * undoing a poisoned write never clobbers them; that later sync makes the
 * current size durable (fdatasync writes the size it needs).
 *
 * cdp_io_shim_power_cut() walks each list newest first. A DURABLE write is
 * kept. Any other is kept, dropped or torn, each with probability 1/3 from the
 * seeded generator (a write within one 512-byte sector cannot tear: it is kept
 * or dropped). Torn means every 512-byte sector of the write (by file offset)
 * is independently kept or dropped. Dropping restores the replaced bytes,
 * except where a newer write was kept (the "kept" intervals), so each byte
 * ends up with the value of the newest write that survived there, or its
 * durable value. Then the file is cut back to the larger of durable_size and
 * the size each surviving write left behind (the size right after it: so the
 * file only ever gets a size it really had), where a torn write survives for
 * the size only if its last sector was kept. Bytes below that size that no
 * surviving write covers read as before the writes: zeros past the old EOF.
 * Unlinked inodes are skipped: their content is gone after a reboot anyway.
 * From then on every operation returns -EIO; close() still releases the fd
 * (as close(2) does even when it fails), so a test can loop without leaking
 * descriptors.
 *
 * Metadata operations are durable at once (io.h): open with O_CREAT/O_TRUNC,
 * ftruncate, fallocate, unlink, rename. So a truncate clips the pending writes
 * to the new size and makes that size durable, and a punched hole removes the
 * punched range from the pending writes. fallocate takes only the modes io.h
 * names (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE);
 * others are -EOPNOTSUPP. O_APPEND is -EINVAL at open: pwrite() on such an fd
 * ignores its offset, which the bookkeeping cannot follow. An fd that did not
 * come from this shim's open() is -EBADF: a write that bypassed the shim would
 * be a hole in the proof.
 *
 * Cost: each pending write holds a copy of the bytes it replaced until the
 * next sync. Fine for tests; this is not for production.
 *
 * Threads: one mutex (mu) around every operation, held across the real I/O on
 * purpose: a write racing with the cut either completes (and is pending, so
 * the cut may drop it) or starts after it (and fails with -EIO); it can never
 * land after the cut.
 *
 * cdp_io_shim_fail_nth() counts pwritev_batch and fdatasync_batch calls from
 * when it is armed; the failing call does nothing: a failed write batch writes
 * nothing, a failed sync syncs nothing and poisons the pending writes of every
 * fd in the call (all of them fail together).
 */
#include "storage/io.h"

#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

#define SECTOR 512u

enum wstate {
	PENDING,		/* not yet covered by a sync */
	POISONED,		/* pending at a failed sync: at risk until the cut */
	DURABLE,		/* synced after a poisoned write: always kept */
};

struct pending {
	uint64_t off;
	size_t len;
	uint64_t size_after;	/* the file size this write left (metadata it dirtied) */
	uint8_t *old;		/* the @len bytes it replaced; NULL once DURABLE */
	enum wstate state;
};

struct inode {
	dev_t dev;
	ino_t ino;
	char *path;		/* as first opened through the shim (messages) */
	int bfd;		/* our O_RDWR fd; -1 until a writable open */
	unsigned refs;		/* caller fds open on it */
	uint64_t durable_size;	/* meaningful while nw > 0 */
	struct pending *w;	/* oldest first */
	unsigned nw, capw;
};

struct fdent {
	struct inode *ino;	/* NULL: not a regular file */
	int accmode;
	bool open;
};

struct interval {
	uint64_t start, end;
};

struct cdp_io_shim {
	struct cdp_io ops;
	const struct cdp_io *k;	/* the kernel */
	pthread_mutex_t mu;
	/* Everything below is guarded by mu. */
	uint64_t rng;
	bool cut;
	unsigned long calls, fail_nth;
	int fail_code;
	unsigned long dataops, cut_at;	/* cdp_io_shim_cut_at() */
	struct cdp_io_shim_stats cut_stats;
	struct fdent *fds;	/* indexed by fd */
	unsigned nfds;
	struct inode **inodes;
	unsigned ninodes, capinodes;
	struct interval *kept;	/* scratch of the cut */
	unsigned nkept, capkept;
};

static uint64_t rnd(struct cdp_io_shim *s)
{
	uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);	/* splitmix64 */

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The shim cannot go on once a restore failed: its whole point is lost. */
static void die(const char *what, const struct inode *ino, int err)
{
	fprintf(stderr, "cdp io shim: %s %s: %s\n", what, ino->path, strerror(-err));
	abort();
}

static struct fdent *lookup(struct cdp_io_shim *s, int fd)
{
	if (fd < 0 || (unsigned)fd >= s->nfds || !s->fds[fd].open)
		return NULL;
	return &s->fds[fd];
}

static int file_size(int fd, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	*size = (uint64_t)st.st_size;
	return 0;
}

static void free_writes(struct inode *ino)
{
	for (unsigned i = 0; i < ino->nw; i++)
		free(ino->w[i].old);
	ino->nw = 0;
}

static void inode_free(struct inode *ino)
{
	free_writes(ino);
	free(ino->w);
	if (ino->bfd >= 0)
		close(ino->bfd);
	free(ino->path);
	free(ino);
}

/* Forgets inodes that no fd uses and whose fate no longer matters. */
static void sweep(struct cdp_io_shim *s)
{
	unsigned j = 0;

	for (unsigned i = 0; i < s->ninodes; i++) {
		struct inode *ino = s->inodes[i];
		struct stat st;
		bool gone = ino->bfd < 0 || (fstat(ino->bfd, &st) == 0 && st.st_nlink == 0);

		if (!ino->refs && (!ino->nw || gone))
			inode_free(ino);
		else
			s->inodes[j++] = ino;
	}
	s->ninodes = j;
}

static struct inode *inode_get(struct cdp_io_shim *s, const struct stat *st, const char *path)
{
	struct inode *ino;

	for (unsigned i = 0; i < s->ninodes; i++)
		if (s->inodes[i]->dev == st->st_dev && s->inodes[i]->ino == st->st_ino)
			return s->inodes[i];
	ino = cdp_xcalloc(1, sizeof(*ino));
	ino->dev = st->st_dev;
	ino->ino = st->st_ino;
	ino->path = cdp_xstrdup(path);
	ino->bfd = -1;
	if (s->ninodes == s->capinodes) {
		s->capinodes = s->capinodes ? 2 * s->capinodes : 8;
		s->inodes = cdp_xrealloc(s->inodes, s->capinodes * sizeof(*s->inodes));
	}
	s->inodes[s->ninodes++] = ino;
	return ino;
}

static struct pending *insert_write(struct inode *ino, unsigned at)
{
	if (ino->nw == ino->capw) {
		ino->capw = ino->capw ? 2 * ino->capw : 8;
		ino->w = cdp_xrealloc(ino->w, ino->capw * sizeof(*ino->w));
	}
	memmove(&ino->w[at + 1], &ino->w[at], (ino->nw - at) * sizeof(*ino->w));
	ino->nw++;
	return &ino->w[at];
}

static void remove_write(struct inode *ino, unsigned at)
{
	free(ino->w[at].old);
	memmove(&ino->w[at], &ino->w[at + 1], (ino->nw - at - 1) * sizeof(*ino->w));
	ino->nw--;
}

/* Drops the list once only DURABLE entries are left: nothing to undo, nothing to protect. */
static void trim_durable(struct inode *ino)
{
	while (ino->nw && ino->w[0].state == DURABLE)
		remove_write(ino, 0);
}

/* Removes [a, b) from every pending write (it is zeros or gone, durably). */
static void clip(struct inode *ino, uint64_t a, uint64_t b)
{
	for (unsigned i = 0; i < ino->nw;) {
		struct pending *p = &ino->w[i];
		uint64_t s = p->off, e = p->off + p->len;

		if (e <= a || s >= b) {
			i++;
		} else if (a <= s && e <= b) {
			remove_write(ino, i);
		} else if (s < a && e > b) {
			struct pending *r = insert_write(ino, i + 1);

			p = &ino->w[i];	/* insert_write() may have moved the array */
			r->off = b;
			r->len = (size_t)(e - b);
			r->size_after = p->size_after;
			r->state = p->state;
			r->old = NULL;
			if (p->old) {
				r->old = cdp_xmalloc(r->len);
				memcpy(r->old, p->old + (b - s), r->len);
			}
			p->len = (size_t)(a - s);
			i += 2;
		} else if (s < a) {
			p->len = (size_t)(a - s);
			i++;
		} else {
			if (p->old)
				memmove(p->old, p->old + (b - s), (size_t)(e - b));
			p->off = b;
			p->len = (size_t)(e - b);
			i++;
		}
	}
	trim_durable(ino);
}

/* Remembers the write [off, off + len) with the bytes it is about to replace. */
static int record_write(struct inode *ino, uint64_t off, size_t len)
{
	struct pending *p;
	uint64_t size;
	uint8_t *old;
	long n;
	int rc;

	rc = file_size(ino->bfd, &size);
	if (rc < 0)
		return rc;
	if (!ino->nw)
		ino->durable_size = size;
	old = cdp_xmalloc(len);
	n = cdp_pread_full(ino->bfd, old, len, off);
	if (n < 0) {
		free(old);
		return (int)n;
	}
	memset(old + n, 0, len - (size_t)n);
	p = insert_write(ino, ino->nw);
	p->off = off;
	p->len = len;
	p->size_after = CDP_MAX(size, off + len);
	p->old = old;
	p->state = PENDING;
	return 0;
}

static void sync_ok(struct inode *ino)
{
	bool poisoned = false;

	if (!ino->nw)
		return;
	for (unsigned i = 0; i < ino->nw; i++)
		poisoned |= ino->w[i].state == POISONED;
	if (!poisoned) {
		free_writes(ino);
		return;
	}
	file_size(ino->bfd, &ino->durable_size);
	for (unsigned i = 0; i < ino->nw; i++) {
		if (ino->w[i].state == PENDING) {
			ino->w[i].state = DURABLE;
			free(ino->w[i].old);
			ino->w[i].old = NULL;
		}
	}
	trim_durable(ino);
}

static void sync_failed(struct inode *ino)
{
	for (unsigned i = 0; i < ino->nw; i++)
		if (ino->w[i].state == PENDING)
			ino->w[i].state = POISONED;
}

static void cut_locked(struct cdp_io_shim *s);

/* Counts a data operation for cdp_io_shim_cut_at(); true when the power just went. */
static bool cut_now(struct cdp_io_shim *s)
{
	if (!s->cut_at || ++s->dataops < s->cut_at)
		return false;
	cut_locked(s);
	return true;
}

/* Counts the call for cdp_io_shim_fail_nth(); true when this one must fail. */
static bool fail_now(struct cdp_io_shim *s)
{
	if (!s->fail_nth)
		return false;
	if (++s->calls != s->fail_nth)
		return false;
	s->fail_nth = 0;
	return true;
}

/* ---- the operations ------------------------------------------------- */

static int shim_open(void *ctx, const char *path, int flags, mode_t mode)
{
	struct cdp_io_shim *s = ctx;
	struct inode *ino = NULL;
	struct stat st, bst;
	int fd, rc = -EIO;

	if (flags & O_APPEND)
		return -EINVAL;
	pthread_mutex_lock(&s->mu);
	if (s->cut)
		goto out;
	fd = rc = s->k->open(s->k->ctx, path, flags, mode);
	if (fd < 0)
		goto out;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	if (S_ISREG(st.st_mode)) {
		ino = inode_get(s, &st, path);
		if ((flags & O_ACCMODE) != O_RDONLY && ino->bfd < 0) {
			ino->bfd = open(path, O_RDWR | O_CLOEXEC);
			if (ino->bfd < 0) {
				rc = -errno;
				goto fail;
			}
			if (fstat(ino->bfd, &bst) < 0 || bst.st_dev != st.st_dev ||
			    bst.st_ino != st.st_ino) {
				close(ino->bfd);
				ino->bfd = -1;
				rc = -ESTALE;	/* renamed under us, by someone else */
				goto fail;
			}
		}
		if ((flags & O_TRUNC) && ino->nw) {
			clip(ino, 0, UINT64_MAX);
			ino->durable_size = 0;
		}
		ino->refs++;
	}
	if ((unsigned)fd >= s->nfds) {
		unsigned n = CDP_MAX((unsigned)fd + 1, 2 * s->nfds);

		s->fds = cdp_xrealloc(s->fds, n * sizeof(*s->fds));
		memset(&s->fds[s->nfds], 0, (n - s->nfds) * sizeof(*s->fds));
		s->nfds = n;
	}
	s->fds[fd] = (struct fdent){ .ino = ino, .accmode = flags & O_ACCMODE, .open = true };
	goto out;
fail:
	close(fd);
	sweep(s);
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_close(void *ctx, int fd)
{
	struct cdp_io_shim *s = ctx;
	struct fdent *e;
	int rc;

	pthread_mutex_lock(&s->mu);
	e = lookup(s, fd);
	if (!e) {
		rc = -EBADF;
		goto out;
	}
	rc = s->k->close(s->k->ctx, fd);
	e->open = false;
	if (e->ino) {
		e->ino->refs--;
		sweep(s);
	}
	if (s->cut)
		rc = -EIO;
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_pwritev_batch(void *ctx, const struct cdp_io_write *w, unsigned n)
{
	struct cdp_io_shim *s = ctx;
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	if (s->cut || cut_now(s)) {
		rc = -EIO;
		goto out;
	}
	if (fail_now(s)) {
		rc = s->fail_code;
		goto out;
	}
	for (unsigned i = 0; i < n && !rc; i++) {
		struct fdent *e = lookup(s, w[i].fd);

		if (!e) {
			rc = -EBADF;
			break;
		}
		/* Read-only fds and non-files: the kernel gives the error (or does it). */
		if (e->ino && e->accmode != O_RDONLY && w[i].len) {
			rc = record_write(e->ino, w[i].off, w[i].len);
			if (rc < 0)
				break;
		}
		rc = cdp_pwrite_all(w[i].fd, w[i].buf, w[i].len, w[i].off);
	}
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_fdatasync_batch(void *ctx, const int *fds, unsigned n)
{
	struct cdp_io_shim *s = ctx;
	bool inject;
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	if (s->cut || cut_now(s)) {
		rc = -EIO;
		goto out;
	}
	inject = fail_now(s);
	for (unsigned i = 0; i < n; i++) {
		struct fdent *e = lookup(s, fds[i]);
		int r;

		if (!e) {
			if (!rc)
				rc = -EBADF;
			continue;
		}
		r = inject ? s->fail_code : s->k->fdatasync_batch(s->k->ctx, &fds[i], 1);
		if (r < 0 && !rc)
			rc = r;
		if (!e->ino)
			continue;
		if (r < 0)
			sync_failed(e->ino);
		else
			sync_ok(e->ino);
	}
	if (inject)
		rc = s->fail_code;
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_fsync_dir(void *ctx, const char *dir)
{
	struct cdp_io_shim *s = ctx;
	int rc = -EIO;

	pthread_mutex_lock(&s->mu);
	if (!s->cut)
		rc = s->k->fsync_dir(s->k->ctx, dir);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static long shim_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
	struct cdp_io_shim *s = ctx;
	long rc = -EIO;

	pthread_mutex_lock(&s->mu);
	if (!s->cut)
		rc = lookup(s, fd) ? s->k->pread(s->k->ctx, fd, buf, len, off) : -EBADF;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_ftruncate(void *ctx, int fd, uint64_t len)
{
	struct cdp_io_shim *s = ctx;
	struct fdent *e;
	int rc = -EIO;

	pthread_mutex_lock(&s->mu);
	if (s->cut || cut_now(s))
		goto out;
	e = lookup(s, fd);
	if (!e) {
		rc = -EBADF;
		goto out;
	}
	rc = s->k->ftruncate(s->k->ctx, fd, len);
	if (rc == 0 && e->ino && e->ino->nw) {
		clip(e->ino, len, UINT64_MAX);
		for (unsigned i = 0; i < e->ino->nw; i++)
			e->ino->w[i].size_after = CDP_MIN(e->ino->w[i].size_after, len);
		e->ino->durable_size = len;
	}
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_fallocate(void *ctx, int fd, int mode, uint64_t off, uint64_t len)
{
	struct cdp_io_shim *s = ctx;
	struct fdent *e;
	int rc = -EIO;

	if (mode != 0 && mode != FALLOC_FL_KEEP_SIZE &&
	    mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		return -EOPNOTSUPP;
	pthread_mutex_lock(&s->mu);
	if (s->cut)
		goto out;
	e = lookup(s, fd);
	if (!e) {
		rc = -EBADF;
		goto out;
	}
	rc = s->k->fallocate(s->k->ctx, fd, mode, off, len);
	if (rc < 0 || !e->ino || !e->ino->nw)
		goto out;
	if (mode & FALLOC_FL_PUNCH_HOLE)
		clip(e->ino, off, off + len < off ? UINT64_MAX : off + len);
	else if (mode == 0)
		e->ino->durable_size = CDP_MAX(e->ino->durable_size, off + len);
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_unlink(void *ctx, const char *path)
{
	struct cdp_io_shim *s = ctx;
	int rc = -EIO;

	pthread_mutex_lock(&s->mu);
	if (!s->cut) {
		rc = s->k->unlink(s->k->ctx, path);
		sweep(s);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int shim_rename(void *ctx, const char *from, const char *to)
{
	struct cdp_io_shim *s = ctx;
	int rc = -EIO;

	pthread_mutex_lock(&s->mu);
	if (!s->cut) {
		rc = s->k->rename(s->k->ctx, from, to);
		sweep(s);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* ---- the cut -------------------------------------------------------- */

static void add_kept(struct cdp_io_shim *s, uint64_t start, uint64_t end)
{
	if (s->nkept && s->kept[s->nkept - 1].end == start) {
		s->kept[s->nkept - 1].end = end;	/* the next sector of a tear */
		return;
	}
	if (s->nkept == s->capkept) {
		s->capkept = s->capkept ? 2 * s->capkept : 64;
		s->kept = cdp_xrealloc(s->kept, s->capkept * sizeof(*s->kept));
	}
	s->kept[s->nkept++] = (struct interval){ start, end };
}

static int by_start(const void *a, const void *b)
{
	const struct interval *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static void restore_span(const struct inode *ino, const struct pending *p, uint64_t a, uint64_t b)
{
	int rc;

	if (a >= b)
		return;
	rc = cdp_pwrite_all(ino->bfd, p->old + (a - p->off), (size_t)(b - a), a);
	if (rc < 0)
		die("restoring", ino, rc);
}

/* Puts back the bytes @p replaced in [a, b), except where a newer write was kept. */
static void restore(struct cdp_io_shim *s, const struct inode *ino, const struct pending *p,
		    uint64_t a, uint64_t b)
{
	struct interval *ov = NULL;
	unsigned nov = 0;
	uint64_t cur = a;

	for (unsigned i = 0; i < s->nkept; i++)
		if (s->kept[i].start < b && s->kept[i].end > a) {
			if (!ov)
				ov = cdp_xmalloc(s->nkept * sizeof(*ov));
			ov[nov++] = s->kept[i];
		}
	if (nov > 1)
		qsort(ov, nov, sizeof(*ov), by_start);
	for (unsigned i = 0; i < nov; i++) {
		if (ov[i].start > cur)
			restore_span(ino, p, cur, CDP_MIN(ov[i].start, b));
		cur = CDP_MAX(cur, ov[i].end);
	}
	restore_span(ino, p, cur, b);
	free(ov);
}

enum fate { KEEP, DROP, TEAR };

static void cut_inode(struct cdp_io_shim *s, struct inode *ino, struct cdp_io_shim_stats *st)
{
	uint64_t size = ino->durable_size, now;
	int rc;

	s->nkept = 0;
	for (unsigned i = ino->nw; i-- > 0;) {
		const struct pending *p = &ino->w[i];
		uint64_t end = p->off + p->len;
		enum fate f;

		if (p->state == DURABLE) {
			add_kept(s, p->off, end);
			size = CDP_MAX(size, p->size_after);
			continue;
		}
		st->unsynced_writes++;
		f = (enum fate)(rnd(s) % 3);
		if (f == TEAR && p->off / SECTOR == (end - 1) / SECTOR)
			f = rnd(s) & 1 ? KEEP : DROP;
		if (f == KEEP) {
			st->kept++;
			add_kept(s, p->off, end);
			size = CDP_MAX(size, p->size_after);
		} else if (f == DROP) {
			st->dropped++;
			restore(s, ino, p, p->off, end);
		} else {
			/* Each sector on its own; runs of the same fate in one go. */
			uint64_t run = p->off, a = p->off;
			bool run_keep = false, keep = false;

			st->torn++;
			while (a < end) {
				uint64_t b = CDP_MIN(CDP_ALIGN_DOWN(a, SECTOR) + SECTOR, end);

				keep = rnd(s) & 1;
				if (a > p->off && keep != run_keep) {
					if (run_keep)
						add_kept(s, run, a);
					else
						restore(s, ino, p, run, a);
					run = a;
				}
				run_keep = keep;
				a = b;
			}
			if (run_keep)
				add_kept(s, run, end);
			else
				restore(s, ino, p, run, end);
			if (keep)
				size = CDP_MAX(size, p->size_after);
		}
	}
	rc = file_size(ino->bfd, &now);
	if (rc == 0 && now != size && ftruncate(ino->bfd, (off_t)size) < 0)
		rc = -errno;
	if (rc < 0)
		die("restoring the size of", ino, rc);
	free_writes(ino);
}

static void cut_locked(struct cdp_io_shim *s)
{
	if (s->cut)
		return;
	s->cut = true;
	for (unsigned i = 0; i < s->ninodes; i++) {
		struct inode *ino = s->inodes[i];
		struct stat sb;

		if (!ino->nw)
			continue;
		if (fstat(ino->bfd, &sb) == 0 && sb.st_nlink == 0) {
			free_writes(ino);	/* deleted: gone at the reboot */
			continue;
		}
		cut_inode(s, ino, &s->cut_stats);
	}
}

struct cdp_io_shim_stats cdp_io_shim_power_cut(struct cdp_io_shim *s)
{
	struct cdp_io_shim_stats st;

	pthread_mutex_lock(&s->mu);
	cut_locked(s);
	st = s->cut_stats;
	pthread_mutex_unlock(&s->mu);
	return st;
}

void cdp_io_shim_cut_at(struct cdp_io_shim *s, unsigned long nth)
{
	pthread_mutex_lock(&s->mu);
	s->dataops = 0;
	s->cut_at = nth;
	pthread_mutex_unlock(&s->mu);
}

void cdp_io_shim_fail_nth(struct cdp_io_shim *s, unsigned long nth, int code)
{
	pthread_mutex_lock(&s->mu);
	s->calls = 0;
	s->fail_code = code > 0 ? -code : code;
	s->fail_nth = code ? nth : 0;
	pthread_mutex_unlock(&s->mu);
}

/* ---- life cycle ----------------------------------------------------- */

struct cdp_io_shim *cdp_io_shim_new(uint64_t seed)
{
	struct cdp_io_shim *s = cdp_xcalloc(1, sizeof(*s));

	s->ops = (struct cdp_io){
		.ctx = s,
		.open = shim_open,
		.close = shim_close,
		.pwritev_batch = shim_pwritev_batch,
		.fdatasync_batch = shim_fdatasync_batch,
		.fsync_dir = shim_fsync_dir,
		.pread = shim_pread,
		.ftruncate = shim_ftruncate,
		.fallocate = shim_fallocate,
		.unlink = shim_unlink,
		.rename = shim_rename,
	};
	s->k = cdp_io_plain();
	pthread_mutex_init(&s->mu, NULL);
	s->rng = seed;
	return s;
}

const struct cdp_io *cdp_io_shim_ops(struct cdp_io_shim *s)
{
	return &s->ops;
}

void cdp_io_shim_free(struct cdp_io_shim *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->ninodes; i++)
		inode_free(s->inodes[i]);
	free(s->inodes);
	free(s->fds);
	free(s->kept);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
