/*
 * capture/splitter - see splitter.h for what it guarantees. How:
 *
 * Locks, in order: rl_mu (range locks of all volumes) is never held with mu;
 * mu (sequencing: seq, wid, the open segment, mode) is held only for memory
 * work, never across I/O; q_mu (I/O queue) and seal_mu are leaves.
 *
 * A request becomes an op. submit() takes the range: granted at once when
 * nothing earlier overlaps it, else queued behind (FIFO per volume, so order
 * among overlapping requests is arrival order). A granted op goes to the I/O
 * threads — or, when the front end says it waits anyway (CDP_IO_F_INLINE: a
 * client with one request in flight), runs on the caller's thread, which
 * saves two thread hand-offs per request: activity log, source I/O, then
 * complete_change(), which records it under mu, releases the range
 * (granting waiters) and answers.
 */
#include "capture/splitter.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "storage/io.h"

#define SEAL_LEVEL_FAST (-5)	/* zstd level when the seal thread falls behind */
#define SEAL_BACKLOG_FAST 2	/* segments waiting: go fast */
#define SEAL_BACKLOG_RAW 4	/* segments waiting: store raw */
#define ENC_POOL 8
#define SEAL_NICE 5		/* the seal thread's nice value, above the agent's */
/*
 * A segment that zstd shrank by less than 1/SEAL_GAIN_MIN is stored raw
 * anyway (by the codec, or nearly so): the next SEAL_SKIP_AFTER_RAW segments
 * skip zstd, then one tries again. Random or encrypted data (a full sync of
 * such a volume) then costs SHA-256 only, not zstd too.
 */
#define SEAL_GAIN_MIN 32
#define SEAL_SKIP_AFTER_RAW 8
/*
 * A segment that zstd's level 1 shrank by less than 1/SEAL_GAIN_FAST
 * (already compressed or random-looking data) cost as much CPU as one it
 * halves, for little: the next SEAL_FAST_AFTER_POOR segments use the fast
 * level, then level 1 tries again (at once when the fast level shrinks one
 * by more than that). On fio's buffers, level 1 makes 1.12x at ~220 MB/s
 * and the fast level 1.09x at ~940 MB/s: the seal thread's CPU is CPU the
 * application's writes and the link wait for.
 */
#define SEAL_GAIN_FAST 4
#define SEAL_FAST_AFTER_POOR 8
/*
 * Segments waiting for the seal thread before completions wait for it: at
 * this backlog it already stores raw (SHA-256 is then its only work), so the
 * bound holds memory to ~SEAL_BACKLOG_MAX x 4 MiB without slowing writes
 * that the sealer can keep up with.
 */
#define SEAL_BACKLOG_MAX 16
#define SYNC_CHUNK (1u << 20)	/* bytes read per RESYNC record run */

struct cdp_splitter;

struct rl_node {
	struct rl_node *next;
	uint64_t off, len;
	bool granted;
	bool is_op;		/* else a blocking sync read waiting on rl_cond */
};

struct op {
	struct rl_node rl;	/* first: lists hold rl_node pointers */
	struct cdp_io_req *req;
	struct vol *v;
	struct op *qnext;
	uint64_t flush_wid;	/* FLUSH: writes <= it are covered */
};

struct vol {
	struct cdp_splitter *sp;
	unsigned id;
	int fd;
	int sfd;			/* sync reads (sync thread; -1: none open) */
	bool sdirect;			/* sfd is O_DIRECT, else buffered without readahead */
	uint64_t size;
	bool blockdev;
	char name[64];
	struct cdp_export exp;
	struct rl_node *active;		/* rl_mu */
	struct rl_node *wait_head, *wait_tail;	/* rl_mu */
	uint64_t last_write_wid;	/* mu */
	uint64_t flushed_wid;		/* mu: every write <= it is flushed */
};

struct seal_item {
	struct seal_item *next;
	struct cdp_seg_enc *enc;
	bool point;
	int64_t t;		/* point or heartbeat time */
	uint64_t max_wid;
	bool has_ckpt;
	struct cdp_sync_info ckpt_sync;
	uint32_t ckpt_volume;
	uint64_t ckpt_offset;
};

struct cdp_splitter {
	struct cdp_splitter_opts o;
	struct cdp_clock *clock;
	struct vol *vols;
	unsigned nvol;

	pthread_mutex_t rl_mu;
	pthread_cond_t rl_cond;		/* sync readers waiting for a range */

	pthread_mutex_t q_mu;
	pthread_cond_t q_cond;
	struct op *q_head, *q_tail;
	bool q_stop;
	pthread_t *workers;
	unsigned inflight;		/* q_mu: ops submitted, not yet answered */
	pthread_cond_t idle_cond;

	pthread_mutex_t mu;
	enum cdp_split_mode mode;
	struct cdp_stamp_clock stamp;
	uint64_t plan_id, epoch;
	bool anchored;			/* the chain continues the journal's (continue()) */
	uint64_t wid;
	struct cdp_seg_enc *enc;	/* the open segment (CONTINUOUS) */
	struct cdp_seg_enc *free_enc[ENC_POOL];
	unsigned nfree_enc;
	int64_t next_point;		/* stamp time the open interval ends */
	int64_t t_last;			/* newest record or point time */
	uint64_t acked_wid;		/* every write <= it acknowledged */
	uint64_t bitmap_wid;		/* every write <= it is in the persisted bitmap */
	uint64_t acked_seq;
	bool have_ckpt;
	struct cdp_sync_info ckpt_sync;
	uint32_t ckpt_volume;
	uint64_t ckpt_offset;
	struct cdp_splitter_stats st;

	pthread_mutex_t seal_mu;
	pthread_cond_t seal_cond;
	struct seal_item *seal_head, *seal_tail;
	unsigned seal_backlog;
	bool seal_stop;
	bool seal_busy;
	pthread_t sealer;
	pid_t seal_tid;			/* seal_mu: 0 until the thread runs */
	bool seal_idle_ok;		/* seal_mu: it may go SCHED_IDLE (and come back) */
	bool seal_idle;			/* seal_mu: it is SCHED_IDLE now */
	uint64_t seal_promotions;	/* seal_mu */
	uint8_t digest[CDP_DIGEST_LEN];	/* seal thread: chain head */
	unsigned seal_skip_zstd;	/* seal thread: segments left to store raw */
	unsigned seal_fast_left;	/* seal thread: segments left at the fast level */
};

/* ---- range lock ------------------------------------------------------------ */

static bool overlaps(const struct rl_node *a, uint64_t off, uint64_t len)
{
	return a->off < off + len && off < a->off + a->len;
}

/* Whether @n may be granted now: nothing active and nothing earlier waiting overlaps it. */
static bool rl_free_locked(struct vol *v, const struct rl_node *n)
{
	for (struct rl_node *a = v->active; a; a = a->next)
		if (overlaps(a, n->off, n->len))
			return false;
	for (struct rl_node *w = v->wait_head; w && w != n; w = w->next)
		if (overlaps(w, n->off, n->len))
			return false;
	return true;
}

static void rl_activate_locked(struct vol *v, struct rl_node *n)
{
	n->granted = true;
	n->next = v->active;
	v->active = n;
}

static void queue_op(struct cdp_splitter *sp, struct op *op);

/* Takes the range for @n; returns true when granted now, false when queued. */
static bool rl_take(struct vol *v, struct rl_node *n)
{
	struct cdp_splitter *sp = v->sp;
	bool now;

	n->granted = false;
	n->next = NULL;
	pthread_mutex_lock(&sp->rl_mu);
	now = rl_free_locked(v, n);	/* n is not queued: every waiter is earlier */
	if (now) {
		rl_activate_locked(v, n);
	} else {
		if (v->wait_tail)
			v->wait_tail->next = n;
		else
			v->wait_head = n;
		v->wait_tail = n;
	}
	pthread_mutex_unlock(&sp->rl_mu);
	return now;
}

/* Releases @n and grants every waiter that became free (ops go to the I/O threads). */
static void rl_release(struct vol *v, struct rl_node *n)
{
	struct cdp_splitter *sp = v->sp;
	struct op *go = NULL, **go_tail = &go;
	bool wake = false;

	pthread_mutex_lock(&sp->rl_mu);
	for (struct rl_node **pp = &v->active; *pp; pp = &(*pp)->next)
		if (*pp == n) {
			*pp = n->next;
			break;
		}
	for (struct rl_node **pp = &v->wait_head, *prev = NULL; *pp;) {
		struct rl_node *w = *pp;

		if (!rl_free_locked(v, w)) {
			prev = w;
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		if (v->wait_tail == w)
			v->wait_tail = prev;
		rl_activate_locked(v, w);
		if (w->is_op) {
			*go_tail = (struct op *)w;
			go_tail = &((struct op *)w)->qnext;
			((struct op *)w)->qnext = NULL;
		} else {
			wake = true;
		}
	}
	if (wake)
		pthread_cond_broadcast(&sp->rl_cond);
	pthread_mutex_unlock(&sp->rl_mu);
	while (go) {
		struct op *next = go->qnext;

		queue_op(sp, go);
		go = next;
	}
}

/* Waits until @n (queued by rl_take()) is granted. */
static void rl_wait_granted(struct vol *v, struct rl_node *n)
{
	struct cdp_splitter *sp = v->sp;

	pthread_mutex_lock(&sp->rl_mu);
	while (!n->granted)
		pthread_cond_wait(&sp->rl_cond, &sp->rl_mu);
	pthread_mutex_unlock(&sp->rl_mu);
}

/* ---- records ------------------------------------------------------------ */

static void seal_push(struct cdp_splitter *sp, struct seal_item *it);

static struct cdp_seg_enc *enc_get_locked(struct cdp_splitter *sp, uint64_t first_seq,
					  bool sync_active)
{
	struct cdp_seg_enc *e;

	if (sp->nfree_enc)
		e = sp->free_enc[--sp->nfree_enc];
	else
		e = cdp_seg_enc_new(sp->plan_id, sp->epoch, first_seq, NULL);
	cdp_seg_enc_restart(e, first_seq, sync_active, sp->t_last);
	return e;
}

/* Cuts the open segment (mu held). @point: it closes the interval at @t. */
static void cut_locked(struct cdp_splitter *sp, bool point, int64_t t)
{
	struct seal_item *it;
	uint64_t next;
	bool sync_active;

	if (sp->mode != CDP_SPLIT_CONTINUOUS || !sp->enc)
		return;
	if (!point && !cdp_seg_enc_nrecords(sp->enc))
		return;
	it = cdp_xcalloc(1, sizeof(*it));
	it->enc = sp->enc;
	it->point = point;
	it->t = point ? CDP_MAX(t, sp->t_last) : 0;
	it->max_wid = sp->wid;
	if (sp->have_ckpt) {
		it->has_ckpt = true;
		it->ckpt_sync = sp->ckpt_sync;
		it->ckpt_volume = sp->ckpt_volume;
		it->ckpt_offset = sp->ckpt_offset;
	}
	if (point)
		sp->t_last = it->t;
	next = cdp_seg_enc_next_seq(sp->enc);
	sync_active = cdp_seg_enc_sync_active(sp->enc);
	sp->enc = enc_get_locked(sp, next, sync_active);
	seal_push(sp, it);
}

/*
 * Adds a record (mu held, CONTINUOUS); cuts when the segment is full.
 * @crc_opt: CDP_SEG_ENC_COMPUTE_CRC, or CDP_SEG_ENC_CRC_TRUSTED when the
 * caller computed r->crc32c before taking mu.
 */
static int add_record_opt_locked(struct cdp_splitter *sp, struct cdp_record *r,
				 unsigned crc_opt, struct cdp_err *err)
{
	int rc;

	r->time_ns = cdp_stamp_clock_now(&sp->stamp);
	if (r->time_ns < sp->t_last)
		r->time_ns = sp->t_last;
	r->seq = cdp_seg_enc_next_seq(sp->enc);
	rc = cdp_seg_enc_add(sp->enc, r, crc_opt, err);
	if (rc == -E2BIG) {
		cut_locked(sp, false, 0);
		r->seq = cdp_seg_enc_next_seq(sp->enc);
		rc = cdp_seg_enc_add(sp->enc, r, crc_opt, err);
	}
	if (rc)
		return rc;
	sp->t_last = r->time_ns;
	sp->st.records++;
	sp->st.next_seq = r->seq + 1;
	if (cdp_seg_enc_raw_len(sp->enc) >= CDP_SEG_MAX_RAW - CDP_REC_HDR_LEN - CDP_SECTOR)
		cut_locked(sp, false, 0);
	return 0;
}

static int add_record_locked(struct cdp_splitter *sp, struct cdp_record *r, struct cdp_err *err)
{
	return add_record_opt_locked(sp, r, CDP_SEG_ENC_COMPUTE_CRC, err);
}

/* ---- I/O ------------------------------------------------------------------- */

static int source_write(struct vol *v, const struct cdp_io_req *req)
{
	size_t done = 0;

	while (done < req->length) {
		ssize_t n = pwrite(v->fd, (const uint8_t *)req->data + done, req->length - done,
				   (off_t)(req->offset + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (size_t)n;
	}
	return 0;
}

/*
 * ZERO and TRIM leave zeros on the source, as the journal restores them. On
 * a block device too fallocate() is the call: PUNCH_HOLE there zeroes (with
 * unmap where the device guarantees zeros after it, else it fails) and
 * ZERO_RANGE is BLKZEROOUT; BLKDISCARD would not guarantee that reads give
 * zeros afterwards.
 */
static int source_zero(struct vol *v, const struct cdp_io_req *req, bool trim)
{
	static const int punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	int mode = trim ? punch : FALLOC_FL_ZERO_RANGE;
	static const uint8_t zeros[65536];

	if (fallocate(v->fd, mode, (off_t)req->offset, (off_t)req->length) == 0)
		return 0;
	if (fallocate(v->fd, trim ? FALLOC_FL_ZERO_RANGE : punch, (off_t)req->offset,
		      (off_t)req->length) == 0)
		return 0;
	/* No support: write zeros (also for TRIM, so reads give zeros as recorded). */
	for (uint64_t off = 0; off < req->length;) {
		size_t n = CDP_MIN(sizeof(zeros), req->length - off);
		ssize_t w = pwrite(v->fd, zeros, n, (off_t)(req->offset + off));

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		off += (uint64_t)w;
	}
	return 0;
}

/* pread of @len bytes at @off, zeros past the end of a shorter file. */
static int pread_zero_fill(int fd, void *buf, uint64_t off, uint32_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {	/* past the end of a shorter file: zeros */
			memset((uint8_t *)buf + done, 0, len - done);
			break;
		}
		done += (size_t)n;
	}
	return 0;
}

static int source_read(struct vol *v, void *buf, uint64_t off, uint32_t len)
{
	return pread_zero_fill(v->fd, buf, off, len);
}

static void answer(struct cdp_splitter *sp, struct op *op, int rc)
{
	struct cdp_io_req *req = op->req;

	free(op);
	req->done(req, rc);
	pthread_mutex_lock(&sp->q_mu);
	if (--sp->inflight == 0)
		pthread_cond_broadcast(&sp->idle_cond);
	pthread_mutex_unlock(&sp->q_mu);
}

/* Holds a completion while the seal thread is SEAL_BACKLOG_MAX segments behind. */
static void seal_backpressure(struct cdp_splitter *sp)
{
	/* Written under seal_mu; a stale read only means one more lock below. */
	if (__atomic_load_n(&sp->seal_backlog, __ATOMIC_RELAXED) < SEAL_BACKLOG_MAX)
		return;
	pthread_mutex_lock(&sp->seal_mu);
	while (sp->seal_backlog >= SEAL_BACKLOG_MAX && !sp->seal_stop)
		pthread_cond_wait(&sp->seal_cond, &sp->seal_mu);
	pthread_mutex_unlock(&sp->seal_mu);
}

/* A change reached the source: record it (or mark it dirty), then answer. */
static void complete_change(struct cdp_splitter *sp, struct op *op)
{
	struct cdp_io_req *req = op->req;
	struct vol *v = op->v;
	struct cdp_err err = CDP_ERR_INIT;
	uint32_t crc = 0;
	uint64_t wid;
	int rc = 0;

	/* The payload's CRC outside mu: completions serialise only on the copy. */
	if (req->kind == CDP_IO_WRITE)
		crc = cdp_crc32c(0, req->data, req->length);
	seal_backpressure(sp);
	pthread_mutex_lock(&sp->mu);
	wid = ++sp->wid;
	v->last_write_wid = wid;
	sp->st.writes++;
	sp->st.write_bytes += req->length;
	if (sp->mode == CDP_SPLIT_CONTINUOUS) {
		struct cdp_record r = { 0 };

		r.volume = v->id;
		r.offset = req->offset;
		r.length = req->length;
		if (req->kind == CDP_IO_WRITE) {
			r.kind = CDP_REC_WRITE;
			r.payload = req->data;
			r.crc32c = crc;
		} else {
			r.kind = req->kind == CDP_IO_TRIM ? CDP_REC_TRIM : CDP_REC_ZERO;
		}
		rc = add_record_opt_locked(sp, &r, CDP_SEG_ENC_CRC_TRUSTED, &err);
	}
	if (sp->mode != CDP_SPLIT_CONTINUOUS || rc)
		cdp_dirtymap_set(sp->o.dm, v->id, req->offset, req->length);
	pthread_mutex_unlock(&sp->mu);
	if (rc)
		cdp_log_warn("splitter: %s: record not added (%s); range marked dirty", v->name,
			     err.msg);
	cdp_actlog_note(sp->o.al, v->id, req->offset, req->length, wid);
	rl_release(v, &op->rl);
	answer(sp, op, 0);
}

static void run_op(struct cdp_splitter *sp, struct op *op)
{
	struct cdp_io_req *req = op->req;
	struct vol *v = op->v;
	struct cdp_err err = CDP_ERR_INIT;
	int rc = 0;

	switch (req->kind) {
	case CDP_IO_READ:
		rc = source_read(v, req->data, req->offset, req->length);
		rl_release(v, &op->rl);
		answer(sp, op, rc);
		return;
	case CDP_IO_FLUSH:
		rc = fdatasync(v->fd) ? -errno : 0;
		if (!rc) {
			pthread_mutex_lock(&sp->mu);
			v->flushed_wid = CDP_MAX(v->flushed_wid, op->flush_wid);
			pthread_mutex_unlock(&sp->mu);
		}
		answer(sp, op, rc);
		return;
	default:
		break;
	}
	/* WRITE, TRIM, ZERO: the extent is in the activity log before the source sees it. */
	rc = cdp_actlog_begin(sp->o.al, v->id, req->offset, req->length, &err);
	if (rc) {
		cdp_log_warn("splitter: %s: activity log: %s", v->name, err.msg);
		rl_release(v, &op->rl);
		answer(sp, op, -EIO);
		return;
	}
	if (sp->o.before_source_write)
		sp->o.before_source_write(sp->o.arg, v->id, req);
	if (req->kind == CDP_IO_WRITE)
		rc = source_write(v, req);
	else
		rc = source_zero(v, req, req->kind == CDP_IO_TRIM);
	if (!rc && (req->flags & CDP_IO_F_FUA))
		rc = fdatasync(v->fd) ? -errno : 0;
	if (rc) {
		/* Not journaled; the range may have changed on the source: dirty. */
		pthread_mutex_lock(&sp->mu);
		cdp_dirtymap_set(sp->o.dm, v->id, req->offset, req->length);
		sp->st.source_errors++;
		pthread_mutex_unlock(&sp->mu);
		cdp_log_warn("splitter: %s: source %s at %" PRIu64 "+%" PRIu32 ": %s", v->name,
			     req->kind == CDP_IO_WRITE ? "write" : "zero", req->offset, req->length,
			     strerror(-rc));
		rl_release(v, &op->rl);
		answer(sp, op, rc);
		return;
	}
	complete_change(sp, op);
}

static void *worker_main(void *arg)
{
	struct cdp_splitter *sp = arg;
	int rc;

	/* The application waits for these: ahead of the seal, the link and the sync. */
	if (sp->o.io_nice && (rc = cdp_thread_set_nice(sp->o.io_nice)))
		cdp_log_debug("splitter", "splitter: I/O thread: setpriority %d: %s", sp->o.io_nice,
			      strerror(-rc));
	if (sp->o.io_slice_ns && (rc = cdp_thread_set_slice(sp->o.io_slice_ns)))
		cdp_log_debug("splitter", "splitter: I/O thread: sched_setattr: %s", strerror(-rc));

	for (;;) {
		struct op *op;

		pthread_mutex_lock(&sp->q_mu);
		while (!sp->q_head && !sp->q_stop)
			pthread_cond_wait(&sp->q_cond, &sp->q_mu);
		op = sp->q_head;
		if (op) {
			sp->q_head = op->qnext;
			if (!sp->q_head)
				sp->q_tail = NULL;
		}
		pthread_mutex_unlock(&sp->q_mu);
		if (!op)
			return NULL;
		run_op(sp, op);
	}
}

static void queue_op(struct cdp_splitter *sp, struct op *op)
{
	op->qnext = NULL;
	pthread_mutex_lock(&sp->q_mu);
	if (sp->q_tail)
		sp->q_tail->qnext = op;
	else
		sp->q_head = op;
	sp->q_tail = op;
	pthread_cond_signal(&sp->q_cond);
	pthread_mutex_unlock(&sp->q_mu);
}

static int vol_submit(struct cdp_export *e, struct cdp_io_req *req)
{
	struct vol *v = e->ctx;
	struct cdp_splitter *sp = v->sp;
	struct op *op;

	if (req->kind != CDP_IO_FLUSH &&
	    (!req->length || req->offset % CDP_SECTOR || req->length % CDP_SECTOR ||
	     req->offset > v->size || req->length > v->size - req->offset ||
	     (req->kind != CDP_IO_TRIM && req->kind != CDP_IO_ZERO &&
	      req->length > sp->o.max_request)))
		return -EINVAL;
	op = cdp_xcalloc(1, sizeof(*op));
	op->req = req;
	op->v = v;
	pthread_mutex_lock(&sp->q_mu);
	if (sp->q_stop) {
		pthread_mutex_unlock(&sp->q_mu);
		free(op);
		return -ESHUTDOWN;
	}
	sp->inflight++;
	pthread_mutex_unlock(&sp->q_mu);
	if (req->kind == CDP_IO_FLUSH) {
		/* Its seq on receipt: it covers exactly the writes completed before it. */
		pthread_mutex_lock(&sp->mu);
		op->flush_wid = sp->wid;
		if (sp->mode == CDP_SPLIT_CONTINUOUS) {
			struct cdp_record r = { .kind = CDP_REC_FLUSH };
			struct cdp_err err = CDP_ERR_INIT;

			if (add_record_locked(sp, &r, &err))
				cdp_log_warn("splitter: flush record: %s", err.msg);
		}
		pthread_mutex_unlock(&sp->mu);
		if (req->flags & CDP_IO_F_INLINE)
			run_op(sp, op);
		else
			queue_op(sp, op);
		return 0;
	}
	op->rl.off = req->offset;
	op->rl.len = req->length;
	op->rl.is_op = true;
	if (rl_take(v, &op->rl)) {
		/* A lone request runs here: no hand-off to an I/O thread and back. */
		if (req->flags & CDP_IO_F_INLINE)
			run_op(sp, op);
		else
			queue_op(sp, op);
	} else {
		pthread_mutex_lock(&sp->mu);
		sp->st.range_waits++;
		pthread_mutex_unlock(&sp->mu);
	}
	return 0;
}

/* ---- the seal thread ---------------------------------------------------- */

/*
 * While it keeps up (one segment at a time), the seal thread compresses and
 * hashes as SCHED_IDLE: it then only takes a CPU no normal thread wants, and
 * a waking request thread, fio or the application preempts it at once. Nice
 * alone does not give that: a nice 5 thread keeps a CPU for its slice
 * (milliseconds) while a -5 one that just woke waits (perf sched traces of
 * the seq bench). Only the compute is idle (cdp_seg_enc_seal() into a
 * buffer reserved before: no lock that others take, malloc's included; zstd
 * may still resize its workspace when the level changes): a SCHED_IDLE
 * thread preempted inside mu, the cache's lock or an arena's on a busy
 * machine would hold up every completion. When
 * SEAL_BACKLOG_FAST segments wait, whoever queued the last one puts it back
 * to SCHED_OTHER (at SEAL_NICE), so a busy machine cannot starve it. Only
 * where the process may do both (cdp_thread_may_raise()): leaving SCHED_IDLE
 * needs CAP_SYS_NICE. seal_mu held; true when the policy changed.
 */
static bool seal_set_idle_locked(struct cdp_splitter *sp, bool idle)
{
	int rc;

	if (!sp->seal_idle_ok || sp->seal_idle == idle)
		return false;
	rc = cdp_thread_set_idle(sp->seal_tid, idle);
	if (rc) {
		sp->seal_idle_ok = false;	/* stays as it is: SCHED_OTHER unless idle */
		cdp_log_warn("splitter: seal thread: %s: %s", idle ? "SCHED_IDLE" : "SCHED_OTHER",
			     strerror(-rc));
		return false;
	}
	sp->seal_idle = idle;
	return true;
}

static void seal_set_idle(struct cdp_splitter *sp, bool idle)
{
	pthread_mutex_lock(&sp->seal_mu);
	seal_set_idle_locked(sp, idle);
	pthread_mutex_unlock(&sp->seal_mu);
}

static void seal_push(struct cdp_splitter *sp, struct seal_item *it)
{
	pthread_mutex_lock(&sp->seal_mu);
	if (sp->seal_tail)
		sp->seal_tail->next = it;
	else
		sp->seal_head = it;
	sp->seal_tail = it;
	__atomic_store_n(&sp->seal_backlog, sp->seal_backlog + 1, __ATOMIC_RELAXED);
	if (sp->seal_backlog >= SEAL_BACKLOG_FAST && seal_set_idle_locked(sp, false))
		sp->seal_promotions++;	/* it fell behind while idle */
	pthread_cond_broadcast(&sp->seal_cond);
	pthread_mutex_unlock(&sp->seal_mu);
}

/* Marks the ranges of a sealed segment's changes dirty (going incremental). */
static void mark_dirty(struct cdp_splitter *sp, const uint8_t *data, size_t len)
{
	struct cdp_segment *seg = NULL;
	struct cdp_seg_expect ex = { .min_time = INT64_MIN, .borrow_raw = true };
	struct cdp_err err = CDP_ERR_INIT;

	if (cdp_seg_decode(data, len, &ex, &seg, &err)) {
		cdp_log_err("splitter: own segment unreadable (%s): every volume is dirty",
			    err.msg);
		for (unsigned i = 0; i < sp->nvol; i++)
			cdp_dirtymap_set(sp->o.dm, i, 0, sp->vols[i].size);
		return;
	}
	for (uint32_t i = 0; i < seg->h.nrecords; i++) {
		const struct cdp_record *r = &seg->recs[i];

		if ((r->kind == CDP_REC_WRITE || r->kind == CDP_REC_ZERO ||
		     r->kind == CDP_REC_TRIM) && r->volume < sp->nvol)
			cdp_dirtymap_set(sp->o.dm, r->volume, r->offset, r->length);
	}
	cdp_segment_free(seg);
}

static void mark_cached_dirty(void *arg, const struct cdp_cache_seg *s)
{
	struct cdp_splitter *sp = arg;

	if (!s->data) {
		/* Its bytes are lost (the spill file failed): its ranges are unknown.
		 * Said once: the next lost ones find every volume dirty already. */
		bool all = true;

		for (unsigned i = 0; i < sp->nvol; i++)
			all = all && cdp_dirtymap_dirty_bytes(sp->o.dm, i) == sp->vols[i].size;
		if (all)
			return;
		cdp_log_err("splitter: cached segment of seq %" PRIu64 " unreadable in the spill "
			    "file (%s): every volume is dirty", s->first_seq, strerror(-s->read_err));
		for (unsigned i = 0; i < sp->nvol; i++)
			cdp_dirtymap_set(sp->o.dm, i, 0, sp->vols[i].size);
		return;
	}
	mark_dirty(sp, s->data, s->len);
}

static void seal_one(struct cdp_splitter *sp, struct seal_item *it, unsigned backlog)
{
	struct cdp_seg_seal_opts so = { 0 };
	struct cdp_buf out = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_cache_seg *cs;
	uint32_t nrec = cdp_seg_enc_nrecords(it->enc);
	uint64_t first = cdp_seg_enc_next_seq(it->enc) - nrec;
	size_t raw = cdp_seg_enc_raw_len(it->enc);
	bool incremental, refused = false;
	int rc;

	so.flags = it->point ? CDP_SEG_F_POINT_END : 0;
	if (backlog >= SEAL_BACKLOG_RAW) {
		so.compression = CDP_COMP_NONE;
	} else if (sp->seal_skip_zstd && nrec) {
		so.compression = CDP_COMP_NONE;
		sp->seal_skip_zstd--;
	} else {
		bool poor = sp->seal_fast_left && nrec;	/* level 1 paid little lately */

		so.compression = CDP_COMP_ZSTD;
		so.level = backlog >= SEAL_BACKLOG_FAST || poor ? SEAL_LEVEL_FAST : 1;
		sp->seal_fast_left -= poor;
	}
	if (!nrec) {
		so.t_first = it->t;
		so.t_last = it->t;
	} else if (it->point) {
		so.t_last = it->t;
	}
	/*
	 * A big segment gets a spare buffer: stored raw (the sync's data, or
	 * zstd off), it leaves in the records' own buffer and the spare takes
	 * its place for the next records, with no 4 MiB copy here. From the
	 * cache's spares, whose pages are resident: neither this thread nor a
	 * completion's copy into the records' buffer takes page faults.
	 */
	if (raw >= CDP_SEG_MAX_RAW / 2) {
		out.data = cdp_cache_spare(sp->o.cache);
		if (out.data)
			out.cap = CDP_CACHE_SPARE_CAP;
		else
			cdp_buf_reserve_exact(&out, CDP_CACHE_SPARE_CAP);
	}
	/* Allocated here, not inside the seal: its compute may run SCHED_IDLE. */
	cdp_buf_reserve(&out, cdp_seg_seal_room(raw));
	cdp_seg_enc_set_prev(it->enc, sp->digest);
	seal_set_idle(sp, backlog < SEAL_BACKLOG_FAST);
	if (sp->o.before_seal)
		sp->o.before_seal(sp->o.arg);
	rc = cdp_seg_enc_seal(it->enc, &so, &out, sp->digest, &err);
	seal_set_idle(sp, false);
	if (rc) {
		/* Our own encoder refused its records: a bug; keep the data safe. */
		cdp_log_err("splitter: seal of seq %" PRIu64 ": %s", first, err.msg);
		cdp_buf_release(&out);
		pthread_mutex_lock(&sp->mu);
		for (unsigned i = 0; i < sp->nvol; i++)
			cdp_dirtymap_set(sp->o.dm, i, 0, sp->vols[i].size);
		sp->mode = CDP_SPLIT_INCREMENTAL;
		pthread_mutex_unlock(&sp->mu);
		return;
	}
	if (so.compression == CDP_COMP_ZSTD && raw >= SEAL_GAIN_MIN * CDP_SECTOR) {
		if (out.len >= CDP_SEG_HDR_LEN + raw - raw / SEAL_GAIN_MIN)
			sp->seal_skip_zstd = SEAL_SKIP_AFTER_RAW;
		else if (out.len < CDP_SEG_HDR_LEN + raw - raw / SEAL_GAIN_FAST)
			sp->seal_fast_left = 0;	/* compresses well: level 1 from the next */
		else if (so.level == 1)
			sp->seal_fast_left = SEAL_FAST_AFTER_POOR;
	}
	/* The cache counts len: what zstd saved is given back too. */
	if (out.cap - out.len > out.len / 8)
		cdp_buf_shrink(&out);
	cs = cdp_xcalloc(1, sizeof(*cs));
	cs->first_seq = first;
	cs->last_seq = first + nrec - 1;
	cs->nrecords = nrec;
	cs->t_last = so.t_last;
	cs->max_wid = it->max_wid;
	cs->has_ckpt = it->has_ckpt;
	cs->ckpt_sync_id = it->ckpt_sync.sync_id;
	cs->ckpt_kind = it->ckpt_sync.kind;
	cs->ckpt_volume = it->ckpt_volume;
	cs->ckpt_offset = it->ckpt_offset;
	memcpy(cs->digest, sp->digest, CDP_DIGEST_LEN);
	cs->data = out.data;	/* taken */
	cs->len = out.len;
	cs->cap = out.cap;

	pthread_mutex_lock(&sp->mu);
	incremental = sp->mode != CDP_SPLIT_CONTINUOUS;
	sp->st.segments++;
	sp->st.heartbeats += !nrec;
	if (nrec && so.compression == CDP_COMP_NONE)
		sp->st.seals_raw++;
	else if (nrec && so.level == SEAL_LEVEL_FAST)
		sp->st.seals_fast++;
	pthread_mutex_unlock(&sp->mu);
	if (!incremental && cdp_cache_push(sp->o.cache, cs, &err) == 0)
		return;
	refused = !incremental;
	/* Incremental, or the cache is full: its changes go to the bitmap. */
	mark_dirty(sp, cs->data, cs->len);
	cdp_cache_seg_free(cs);
	if (refused) {
		/* Why it is full (memory, spill file, or the spill file's error). */
		char why[CDP_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "%s", err.msg[0] ? err.msg : "log cache full");
		cdp_err_clear(&err);
		if (cdp_splitter_go_incremental(sp, why, &err))
			cdp_log_err("splitter: %s", err.msg);
		if (sp->o.on_incremental)
			sp->o.on_incremental(sp->o.arg, why);
	}
}

static void *seal_main(void *arg)
{
	struct cdp_splitter *sp = arg;
	int rc;

	/*
	 * Below the threads that answer the application: on a busy machine a
	 * request must not wait for a CPU behind a 4 MiB seal (zstd, SHA-256:
	 * milliseconds). Its compute SCHED_IDLE while it keeps up, else nice
	 * SEAL_NICE (seal_set_idle_locked); further behind, its level drops and
	 * then completions wait for it (seal_backpressure).
	 */
	rc = cdp_thread_lower(SEAL_NICE);
	if (rc)
		cdp_log_debug("splitter", "splitter: seal thread: setpriority: %s", strerror(-rc));
	pthread_mutex_lock(&sp->seal_mu);
	sp->seal_tid = gettid();
	sp->seal_idle_ok = cdp_thread_may_raise();
	pthread_mutex_unlock(&sp->seal_mu);
	if (!sp->seal_idle_ok)
		cdp_log_debug("splitter", "splitter: seal thread: no CAP_SYS_NICE: stays at nice %d",
			      SEAL_NICE);
	for (;;) {
		struct seal_item *it;
		unsigned backlog;

		pthread_mutex_lock(&sp->seal_mu);
		while (!sp->seal_head && !sp->seal_stop)
			pthread_cond_wait(&sp->seal_cond, &sp->seal_mu);
		it = sp->seal_head;
		if (it) {
			sp->seal_head = it->next;
			if (!sp->seal_head)
				sp->seal_tail = NULL;
			sp->seal_busy = true;
		}
		backlog = sp->seal_backlog;
		pthread_mutex_unlock(&sp->seal_mu);
		if (!it)
			return NULL;
		seal_one(sp, it, backlog);
		pthread_mutex_lock(&sp->mu);
		if (sp->nfree_enc < ENC_POOL)
			sp->free_enc[sp->nfree_enc++] = it->enc;
		else
			cdp_seg_enc_free(it->enc);
		pthread_mutex_unlock(&sp->mu);
		free(it);
		pthread_mutex_lock(&sp->seal_mu);
		__atomic_store_n(&sp->seal_backlog, sp->seal_backlog - 1, __ATOMIC_RELAXED);
		sp->seal_busy = false;
		pthread_cond_broadcast(&sp->seal_cond);
		pthread_mutex_unlock(&sp->seal_mu);
	}
}

/* Waits until everything cut so far is sealed (and cached or marked dirty). */
static void seal_drain(struct cdp_splitter *sp)
{
	pthread_mutex_lock(&sp->seal_mu);
	while (sp->seal_head || sp->seal_busy)
		pthread_cond_wait(&sp->seal_cond, &sp->seal_mu);
	pthread_mutex_unlock(&sp->seal_mu);
}

/* ---- modes, points, acks ----------------------------------------------- */

void cdp_splitter_continue(struct cdp_splitter *sp, uint64_t plan_id, uint64_t epoch,
			   uint64_t durable_seq, const uint8_t digest[CDP_DIGEST_LEN],
			   int64_t t_min)
{
	uint64_t dirty;

	seal_drain(sp);
	pthread_mutex_lock(&sp->mu);
	sp->plan_id = plan_id;
	sp->epoch = epoch;
	sp->acked_seq = durable_seq;
	sp->t_last = CDP_MAX(sp->t_last, t_min);
	for (unsigned i = 0; i < sp->nfree_enc; i++)
		cdp_seg_enc_free(sp->free_enc[i]);
	sp->nfree_enc = 0;
	if (sp->enc)
		cdp_seg_enc_free(sp->enc);
	sp->enc = cdp_seg_enc_new(plan_id, epoch, durable_seq + 1, digest);
	cdp_seg_enc_restart(sp->enc, durable_seq + 1, false, sp->t_last);
	sp->st.next_seq = durable_seq + 1;
	sp->anchored = true;
	/* With nothing dirty, records start now; else a resync switches over. */
	dirty = 0;
	for (unsigned i = 0; i < sp->nvol; i++)
		dirty += cdp_dirtymap_dirty_bytes(sp->o.dm, i);
	if (!dirty)
		sp->mode = CDP_SPLIT_CONTINUOUS;
	pthread_mutex_unlock(&sp->mu);
	memcpy(sp->digest, digest, CDP_DIGEST_LEN);	/* the seal thread is idle */
	cdp_cache_set_base(sp->o.cache, digest);
}

int cdp_splitter_go_incremental(struct cdp_splitter *sp, const char *why, struct cdp_err *err)
{
	bool was;
	uint64_t wid;
	int rc;

	pthread_mutex_lock(&sp->mu);
	was = sp->mode == CDP_SPLIT_CONTINUOUS;
	cut_locked(sp, false, 0);	/* its records get marked like the rest */
	sp->mode = CDP_SPLIT_INCREMENTAL;
	/* Dropped segments may never reach the journal: the chain must be
	 * re-anchored on the journal's head (the next welcome) before records. */
	sp->anchored = false;
	pthread_mutex_unlock(&sp->mu);
	if (was)
		cdp_log_warn("splitter: incremental mode: %s", why);
	/* Called from the seal thread itself when the cache is full: do not wait for it. */
	if (!pthread_equal(pthread_self(), sp->sealer))
		seal_drain(sp);
	cdp_cache_drop_all(sp->o.cache, mark_cached_dirty, sp);
	pthread_mutex_lock(&sp->mu);
	wid = sp->wid;
	pthread_mutex_unlock(&sp->mu);
	rc = cdp_dirtymap_persist(sp->o.dm, err);
	if (!rc)
		cdp_actlog_settle(sp->o.al, wid);	/* the bitmap covers every write <= wid */
	return rc;
}

enum cdp_split_mode cdp_splitter_mode(struct cdp_splitter *sp)
{
	enum cdp_split_mode m;

	pthread_mutex_lock(&sp->mu);
	m = sp->mode;
	pthread_mutex_unlock(&sp->mu);
	return m;
}

static void settle(struct cdp_splitter *sp);

/*
 * Lets the activity log shrink: in incremental mode by persisting the bitmap
 * (it then covers every write so far); in continuous mode by flushing
 * volumes written since their last flush (an extent becomes idle only once
 * its writes are acknowledged AND flushed on the source) — but only when
 * half of the log's extents are busy. Idle extents stay in the log until
 * their slot is needed anyway (storage/actlog), so an earlier flush would
 * not shrink a crash's resync; it would only cost the application: an
 * fdatasync() of the source every point interval measured at ~40 % of QD1
 * write IOPS. Below that mark the application's own FLUSH/FUA makes
 * extents idle; at it, the flush keeps a busy extent from being spilled to
 * the bitmap when a new one needs its slot. Runs on the ticker thread, no
 * lock held across the I/O.
 */
static void settle_step(struct cdp_splitter *sp)
{
	struct cdp_actlog_stats als;
	enum cdp_split_mode mode;
	uint64_t wid, bitmap_wid;

	pthread_mutex_lock(&sp->mu);
	mode = sp->mode;
	wid = sp->wid;
	bitmap_wid = sp->bitmap_wid;
	pthread_mutex_unlock(&sp->mu);
	if (mode == CDP_SPLIT_INCREMENTAL) {
		struct cdp_err err = CDP_ERR_INIT;

		if (wid == bitmap_wid)
			return;
		if (cdp_dirtymap_persist(sp->o.dm, &err)) {
			cdp_log_warn("splitter: bitmap: %s", err.msg);
			return;
		}
		pthread_mutex_lock(&sp->mu);
		sp->bitmap_wid = wid;
		pthread_mutex_unlock(&sp->mu);
		cdp_actlog_settle(sp->o.al, wid);
		return;
	}
	cdp_actlog_stats(sp->o.al, &als);
	if (als.busy < CDP_MAX(als.max_active / 2, 1u)) {
		settle(sp);
		return;
	}
	for (unsigned i = 0; i < sp->nvol; i++) {
		struct vol *v = &sp->vols[i];
		bool need;

		pthread_mutex_lock(&sp->mu);
		need = v->last_write_wid > v->flushed_wid && sp->acked_wid > v->flushed_wid;
		wid = sp->wid;
		pthread_mutex_unlock(&sp->mu);
		if (need && fdatasync(v->fd) == 0) {
			pthread_mutex_lock(&sp->mu);
			v->flushed_wid = CDP_MAX(v->flushed_wid, wid);
			pthread_mutex_unlock(&sp->mu);
		}
	}
	settle(sp);
}

void cdp_splitter_tick(struct cdp_splitter *sp)
{
	int64_t now;
	bool cut = false;

	pthread_mutex_lock(&sp->mu);
	now = cdp_stamp_clock_now(&sp->stamp);
	if (!sp->next_point)
		sp->next_point = now + sp->o.point_interval_ns;
	if (now >= sp->next_point) {
		cut_locked(sp, true, now);
		/* The next interval ends one interval after this cut (no burst after a stall). */
		sp->next_point = now + sp->o.point_interval_ns;
		cut = true;
	}
	pthread_mutex_unlock(&sp->mu);
	if (cut)
		settle_step(sp);
}

int cdp_splitter_mark(struct cdp_splitter *sp, const char *name, struct cdp_err *err)
{
	struct cdp_record r = { .kind = CDP_REC_MARK };
	size_t n = strlen(name);
	int rc;

	if (!n || n > CDP_MARK_NAME_MAX)
		return cdp_err_set(err, -EINVAL, "mark: name of %zu bytes (1..%d)", n,
				   CDP_MARK_NAME_MAX);
	r.length = (uint32_t)n;
	r.payload = (const uint8_t *)name;
	pthread_mutex_lock(&sp->mu);
	if (sp->mode != CDP_SPLIT_CONTINUOUS)
		rc = cdp_err_set(err, -EAGAIN, "mark %s: the plan is in incremental mode", name);
	else
		rc = add_record_locked(sp, &r, err);
	pthread_mutex_unlock(&sp->mu);
	return rc;
}

/* The activity log may let go of extents whose writes are acked and flushed. */
static void settle(struct cdp_splitter *sp)
{
	uint64_t safe;

	pthread_mutex_lock(&sp->mu);
	safe = sp->acked_wid;
	for (unsigned i = 0; i < sp->nvol; i++) {
		struct vol *v = &sp->vols[i];

		if (v->last_write_wid > v->flushed_wid)
			safe = CDP_MIN(safe, v->flushed_wid);
	}
	pthread_mutex_unlock(&sp->mu);
	cdp_actlog_settle(sp->o.al, safe);
}

void cdp_splitter_acked(struct cdp_splitter *sp, uint64_t durable_seq, const uint8_t *digest)
{
	uint64_t wid = cdp_cache_ack(sp->o.cache, durable_seq, digest);

	pthread_mutex_lock(&sp->mu);
	sp->acked_seq = CDP_MAX(sp->acked_seq, durable_seq);
	sp->acked_wid = CDP_MAX(sp->acked_wid, wid);
	pthread_mutex_unlock(&sp->mu);
	settle(sp);
}

/* ---- resync and full sync -------------------------------------------------- */

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t w;

		memcpy(&w, p + i, 8);
		if (w)
			return false;
	}
	return true;
}

/*
 * A sync keeps up to SYNC_QD chunks in flight, oldest first in a small ring
 * of slots. Each chunk takes its range (the same range lock as the
 * application's requests) before its read is started and keeps it until its
 * RESYNC record is added: a write overlapping a chunk waits for it and
 * becomes a record after it. Records are added in chunk order, so the
 * checkpoint (offset after the last record) only moves past chunks that are
 * all sent.
 *
 * The sync thread never waits while holding a chunk's range for something
 * that may itself wait for that range: when a new chunk's range is not free
 * (an earlier overlapping write, itself perhaps queued behind one of our
 * chunks), when a cap says to pause, and when the cache has no room, the
 * chunks in flight are finished first. Only the sealer and the journal's
 * acks (neither takes a range) are waited for with chunks in flight, for
 * SYNC_HOLD_WAIT at most: an overlapping write waits that much longer.
 *
 * Reads go through v->dfd (O_DIRECT: no page cache left behind, none of the
 * application's evicted; coherent with its buffered writes, since the kernel
 * writes dirty pages of the range back before a direct read) on a read queue
 * (storage/io's cdp_io_rq, io_uring). Where O_DIRECT is refused, at open or
 * at the first read, reads are buffered and followed by POSIX_FADV_DONTNEED.
 */
#define SYNC_QD 4			/* chunks in flight */
#define SYNC_ALIGN 4096u		/* O_DIRECT buffer, offset and length */
#define SYNC_CACHE_MAX (32ull << 20)	/* log cache a sync's records may fill */
#define SYNC_SPLIT_MIN (64u << 10)	/* a chunk's data is split to fill a segment's room past this */
#define SYNC_PROBE (64ull << 20)	/* bytes read at full speed to measure the source */
#define SYNC_PROBE_MIN (4ull << 20)	/* less data than this measures nothing */
#define SYNC_NAP_MAX (100 * CDP_NS_PER_MS)	/* pacing sleeps between stop checks */
#define PACER_CREDIT CDP_NS_PER_SEC	/* idle time a pacer may catch up on */
/*
 * Segments waiting for the sealer that a sync goes on with: enough that
 * reads and sealing overlap through each other's jitter (with 1, the sync
 * waited ~270 ms of a 1.6 s sync for the sealer). At 2 the sealer
 * compresses at its fast level, which is what a sync at full speed wants.
 * A chunk cuts at most one segment past the check: the backlog stays below
 * SEAL_BACKLOG_RAW (a point cut aside), so sync data is still compressed.
 */
#define SYNC_SEAL_BACKLOG (SEAL_BACKLOG_RAW - 2)

struct sync_slot {
	struct rl_node n;	/* the chunk's range: from before its read to its record */
	struct vol *v;
	uint64_t off;
	uint32_t len;
	bool hole;		/* SEEK_DATA said a hole: a ZERO record, no read */
	bool dirty;		/* from the bitmap: its bits were cleared */
	bool reading;		/* in the read queue, not reaped */
	bool direct;		/* read through v->dfd */
	long res;		/* the reaped read: bytes, or -errno */
	uint8_t *buf;		/* SYNC_CHUNK bytes, SYNC_ALIGN-aligned */
};

/* One sync's state (the sync thread's alone). */
struct sync {
	struct cdp_splitter *sp;
	const _Atomic bool *stop;
	const struct cdp_sync_caps *caps;
	struct cdp_io_rq *rq;
	uint8_t *bufs;
	struct sync_slot slot[SYNC_QD];
	unsigned head, n;		/* in use: slot[(head + i) % SYNC_QD], oldest first */
	struct cdp_splitter_pacer net, rd;
	bool probed;			/* the read bandwidth was measured (or tried) */
	uint64_t read_bps;		/* measured source read bandwidth (0: not yet) */
};

void cdp_splitter_pacer_add(struct cdp_splitter_pacer *p, uint64_t bytes)
{
	p->bytes += bytes;
}

void cdp_splitter_pacer_sub(struct cdp_splitter_pacer *p, uint64_t bytes)
{
	p->bytes -= CDP_MIN(bytes, p->bytes);
}

int64_t cdp_splitter_pacer_wait(struct cdp_splitter_pacer *p, uint64_t rate, int64_t now)
{
	int64_t due, at;

	if (rate != p->rate) {	/* a new rate (or the first): a new window */
		p->rate = rate;
		p->t0 = now;
		p->bytes = 0;
	}
	if (!rate)
		return 0;
	at = now - p->t0;
	due = (int64_t)((unsigned __int128)p->bytes * CDP_NS_PER_SEC / rate);
	if (due > at)
		return due - at;
	if (at - due > PACER_CREDIT) {	/* idle for long: no burst to catch up */
		p->t0 = now;
		p->bytes = 0;
	}
	return 0;
}

uint64_t cdp_splitter_read_bandwidth(uint64_t bytes, int64_t busy_ns)
{
	if (busy_ns <= 0)
		return 0;
	return (uint64_t)((unsigned __int128)bytes * CDP_NS_PER_SEC / (uint64_t)busy_ns);
}

uint64_t cdp_splitter_read_cap(uint64_t measured_bps, unsigned percent)
{
	if (!percent || percent >= 100)
		return percent ? measured_bps : 0;
	return (uint64_t)((unsigned __int128)measured_bps * percent / 100);
}

/* Real time: pacing sleeps for real, and reads take real time. */
static int64_t sync_now(void)
{
	return cdp_clock_mono_ns(cdp_clock_real());
}

static int sync_marker(struct cdp_splitter *sp, uint16_t kind, const struct cdp_sync_info *si,
		       struct cdp_err *err)
{
	uint8_t payload[CDP_SYNC_INFO_LEN];
	struct cdp_record r = { .kind = kind, .length = CDP_SYNC_INFO_LEN, .payload = payload };
	int rc;

	cdp_sync_info_encode(si, payload);
	pthread_mutex_lock(&sp->mu);
	if (sp->mode != CDP_SPLIT_CONTINUOUS)
		rc = cdp_err_set(err, -ECANCELED, "resync: the plan went incremental");
	else
		rc = add_record_locked(sp, &r, err);
	pthread_mutex_unlock(&sp->mu);
	return rc;
}

#define SYNC_ROOM_POLL (100 * CDP_NS_PER_MS)
/* How long a sync waits for room with its reads in flight (their ranges held). */
#define SYNC_HOLD_WAIT (20 * CDP_NS_PER_MS)

/*
 * Whether at most SYNC_SEAL_BACKLOG segments wait for the seal thread
 * (waiting up to @timeout_ns for it): the sealer always has the next
 * segment while the sync fills more, and never a long queue of them.
 */
static bool seal_room(struct cdp_splitter *sp, int64_t timeout_ns)
{
	struct timespec until;
	bool room;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += timeout_ns;
	if (until.tv_nsec >= CDP_NS_PER_SEC) {
		until.tv_sec++;
		until.tv_nsec -= CDP_NS_PER_SEC;
	}
	pthread_mutex_lock(&sp->seal_mu);
	if (sp->seal_backlog > SYNC_SEAL_BACKLOG)
		pthread_cond_timedwait(&sp->seal_cond, &sp->seal_mu, &until);
	room = sp->seal_backlog <= SYNC_SEAL_BACKLOG;
	pthread_mutex_unlock(&sp->seal_mu);
	return room;
}

/*
 * The cache fill a sync stops at: room for the open segment, one more and
 * the chunks in flight; and at most SYNC_CACHE_MAX, enough to cover the
 * journal's acknowledgement delay at the disk's speed. More would not make
 * the sync faster, only hold more memory and give CDP records less room.
 */
static uint64_t sync_cache_limit(struct cdp_splitter *sp)
{
	uint64_t max = cdp_cache_max_bytes(sp->o.cache);
	uint64_t keep = 2ull * CDP_SEG_MAX_RAW + (uint64_t)SYNC_QD * SYNC_CHUNK;

	return CDP_MIN(max > 2 * keep ? max - keep : max / 2, SYNC_CACHE_MAX);
}

/*
 * Waits for room for sync records: see seal_room(), and the cache under
 * sync_cache_limit(); gives up when stopped or no longer continuous. Called
 * with no chunk in flight.
 */
static int sync_room(struct cdp_splitter *sp, const _Atomic bool *stop, struct cdp_err *err)
{
	uint64_t limit = sync_cache_limit(sp);

	while (!seal_room(sp, SYNC_ROOM_POLL) ||
	       !cdp_cache_wait_room(sp->o.cache, limit, SYNC_ROOM_POLL)) {
		if (stop && atomic_load(stop))
			return cdp_err_set(err, -ECANCELED, "resync: stopped");
		if (cdp_splitter_mode(sp) != CDP_SPLIT_CONTINUOUS)
			return cdp_err_set(err, -ECANCELED, "resync: the plan went incremental");
	}
	return 0;
}

/* A pacing sleep (a throttle, not a wait for state: nothing to poll for). */
static void nap(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / CDP_NS_PER_SEC, .tv_nsec = ns % CDP_NS_PER_SEC };

	nanosleep(&ts, NULL);
}

/*
 * The next run of a sync at or after @off: with @dirty_walk the next dirty
 * blocks (cleared before they are read: a write after that is a record
 * anyway), else the next chunk of the volume, a hole (*@hole: ZERO records,
 * no read) when SEEK_DATA says so. False at the end of the volume.
 */
static bool next_run(struct cdp_splitter *sp, struct vol *v, bool dirty_walk, uint64_t off,
		     uint64_t *doff, uint64_t *dlen, bool *hole)
{
	off_t data;
	bool found;

	*hole = false;
	if (dirty_walk) {
		pthread_mutex_lock(&sp->mu);
		found = cdp_dirtymap_next(sp->o.dm, v->id, off, SYNC_CHUNK, doff, dlen);
		if (found)
			cdp_dirtymap_clear(sp->o.dm, v->id, *doff, *dlen);
		pthread_mutex_unlock(&sp->mu);
		return found;
	}
	if (off >= v->size)
		return false;
	*doff = off;
	*dlen = CDP_MIN((uint64_t)SYNC_CHUNK, v->size - off);
	data = v->blockdev ? (off_t)off : lseek(v->fd, (off_t)off, SEEK_DATA);
	if (data < 0 || (uint64_t)data > off) {
		uint64_t end = data < 0 ? v->size : CDP_MIN((uint64_t)data, v->size);

		*dlen = CDP_MIN(*dlen, end - off);
		*hole = true;
	}
	return true;
}

/* Dirty blocks whose bits were cleared but whose record never went out. */
static void redirty(struct cdp_splitter *sp, struct vol *v, uint64_t off, uint64_t len)
{
	pthread_mutex_lock(&sp->mu);
	cdp_dirtymap_set(sp->o.dm, v->id, off, len);
	pthread_mutex_unlock(&sp->mu);
}

static int sync_read_start(struct sync *s, unsigned i)
{
	struct sync_slot *sl = &s->slot[i];
	struct vol *v = sl->v;
	uint32_t len = sl->len;
	int fd = v->sfd, rc;

	/* A full sync's chunks start aligned; a hole's end or a dirty run may not. */
	sl->direct = v->sdirect && !(sl->off % SYNC_ALIGN);
	if (sl->direct)
		len = CDP_ALIGN_UP(len, SYNC_ALIGN);	/* <= SYNC_CHUNK; the rest unused */
	else if (v->sdirect)
		fd = v->fd;	/* unaligned: buffered, dropped after */
	rc = cdp_io_rq_read(s->rq, fd, sl->buf, len, sl->off, i);
	if (rc)
		return rc;
	sl->reading = true;
	cdp_splitter_pacer_add(&s->rd, sl->len);
	/* Counted as payload now, so that the chunks in flight count too; a
	 * chunk that turns out all zero is given back (a ZERO record). */
	cdp_splitter_pacer_add(&s->net, sl->len);
	return 0;
}

/* Reaps completions until slot @i's read is done. */
static int sync_reap(struct sync *s, unsigned i)
{
	while (s->slot[i].reading) {
		uint64_t tag;
		long res;
		int rc = cdp_io_rq_wait(s->rq, &tag, &res);

		if (rc)
			return rc;
		assert(tag < SYNC_QD && s->slot[tag].reading);
		s->slot[tag].res = res;
		s->slot[tag].reading = false;
	}
	return 0;
}

/*
 * Measures the source's read bandwidth (no chunk in flight): up to SYNC_PROBE
 * bytes of @v's data from @off on (holes skipped: they cost the disk
 * nothing), read the way the sync reads (same fd, 1 MiB, queue depth
 * SYNC_QD) and thrown away: no record, no range lock, nothing else done
 * meanwhile. Bandwidth = bytes over the time from the first read started to
 * the last completed. Less than SYNC_PROBE_MIN of data keeps an earlier
 * sync's figure, if any.
 */
static void sync_probe(struct sync *s, struct vol *v, uint64_t off)
{
	struct cdp_splitter *sp = s->sp;
	uint64_t started = 0, bytes = 0, next = off;
	unsigned inflight = 0, freemask = (1u << SYNC_QD) - 1;
	uint32_t len[SYNC_QD];
	uint64_t at[SYNC_QD];
	bool more = true;
	int64_t t0 = sync_now(), t;

	s->probed = true;
	while (more || inflight) {
		uint64_t tag, doff, dlen;
		long res;
		bool hole;

		while (more && inflight < SYNC_QD) {
			unsigned i = (unsigned)__builtin_ctz(freemask);

			more = started < SYNC_PROBE && next_run(sp, v, false, next, &doff, &dlen,
								   &hole);
			if (!more)
				break;
			next = doff + dlen;
			if (hole || (v->sdirect && doff % SYNC_ALIGN))
				continue;
			len[i] = (uint32_t)dlen;
			if (v->sdirect)
				len[i] = CDP_ALIGN_UP(len[i], SYNC_ALIGN);
			at[i] = doff;
			if (cdp_io_rq_read(s->rq, v->sfd, s->slot[i].buf, len[i], doff, i)) {
				more = false;
				break;
			}
			freemask &= ~(1u << i);
			inflight++;
			started += dlen;
		}
		if (!inflight || cdp_io_rq_wait(s->rq, &tag, &res))
			break;
		inflight--;
		freemask |= 1u << tag;
		if (res > 0)
			bytes += (uint64_t)res;
		if (!v->sdirect)
			posix_fadvise(v->sfd, (off_t)at[tag], len[tag], POSIX_FADV_DONTNEED);
	}
	t = sync_now() - t0;
	if (bytes >= SYNC_PROBE_MIN)
		s->read_bps = cdp_splitter_read_bandwidth(bytes, t);
	pthread_mutex_lock(&sp->mu);
	if (s->read_bps)
		sp->st.resync_read_bps = s->read_bps;
	else
		s->read_bps = sp->st.resync_read_bps;	/* an earlier sync's, or none */
	pthread_mutex_unlock(&sp->mu);
	if (bytes >= SYNC_PROBE_MIN)
		cdp_log_info("splitter: %s: sync reads %.1f MB/s from the source (%" PRIu64
			     " MiB in %.3f s at queue depth %d, %s%s); read cap %u %% of it",
			     v->name, (double)s->read_bps / 1e6, bytes >> 20, (double)t / 1e9,
			     SYNC_QD, v->sdirect ? "O_DIRECT" : "buffered",
			     cdp_io_rq_async(s->rq) ? ", io_uring" : "",
			     s->caps ? atomic_load(&s->caps->read_percent) : 0);
}

/* Completes slot @sl's read: short or refused O_DIRECT reads end buffered. */
static int sync_read_finish(struct sync *s, struct sync_slot *sl, struct cdp_err *err)
{
	struct cdp_splitter *sp = s->sp;
	struct vol *v = sl->v;
	long res = sl->res;
	uint32_t got;
	int rc;

	if (res == -EINVAL && sl->direct) {
		/* The filesystem or device wants something else: buffered from now on. */
		int fd = open(sp->o.paths[v->id], O_RDONLY | O_CLOEXEC);

		if (v->sdirect && fd >= 0) {
			cdp_log_warn("splitter: %s: O_DIRECT read at %" PRIu64 " refused; sync "
				     "reads are buffered from now on", v->name, sl->off);
			posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
			close(v->sfd);
			v->sfd = fd;
			v->sdirect = false;
		} else if (fd >= 0) {
			close(fd);
		}
		sl->direct = false;
		res = 0;
	}
	if (res == -EINTR || res == -EAGAIN)
		res = 0;
	if (res < 0)
		return cdp_err_sys(err, (int)res, "resync: %s: read at %" PRIu64, v->name, sl->off);
	got = (uint64_t)res >= sl->len ? sl->len : (uint32_t)res;
	if (got < sl->len) {	/* cut short (or EOF: zeros): the rest buffered */
		rc = pread_zero_fill(v->sdirect ? v->fd : v->sfd, sl->buf + got, sl->off + got,
				     sl->len - got);
		if (rc)
			return cdp_err_sys(err, rc, "resync: %s: read at %" PRIu64, v->name,
					   sl->off + got);
	}
	pthread_mutex_lock(&sp->mu);
	sp->st.resync_read_bytes += sl->len;
	if (sl->direct)
		sp->st.resync_direct_bytes += got;
	pthread_mutex_unlock(&sp->mu);
	if (!sl->direct || got < sl->len)
		posix_fadvise(v->fd, (off_t)sl->off, sl->len, POSIX_FADV_DONTNEED);
	return 0;
}

/*
 * Finishes the oldest chunk: its read, its RESYNC record (unless @rc says the
 * sync already failed), its range. Returns @rc or the first error.
 */
/*
 * Adds a chunk's record (mu held). Its data fills the open segment: the
 * part that fits closes it, the rest starts the next one. 1 MiB chunks
 * whole would leave each segment at 3 MiB, a third more segments to seal,
 * send, index and acknowledge, and each one's sealed buffer too small to be
 * a spare (seal_one).
 */
static int add_sync_record_locked(struct cdp_splitter *sp, struct cdp_record *r,
				  struct cdp_err *err)
{
	size_t room = CDP_SEG_MAX_RAW - cdp_seg_enc_raw_len(sp->enc);
	struct cdp_record rest;
	uint32_t head;
	int rc;

	if (r->kind != CDP_REC_WRITE || room < CDP_REC_HDR_LEN + SYNC_SPLIT_MIN ||
	    room >= cdp_seg_record_size(r->length))
		return add_record_locked(sp, r, err);
	head = (uint32_t)CDP_ALIGN_DOWN(room - CDP_REC_HDR_LEN, SYNC_ALIGN);
	rest = *r;
	r->length = head;
	rc = add_record_locked(sp, r, err);
	r->length = rest.length;
	if (rc)
		return rc;
	rest.offset += head;
	rest.length -= head;
	rest.payload += head;
	return add_record_locked(sp, &rest, err);
}

static int sync_finish(struct sync *s, int rc, struct cdp_err *err)
{
	struct cdp_splitter *sp = s->sp;
	struct sync_slot *sl = &s->slot[s->head];
	struct vol *v = sl->v;
	struct cdp_record r = { .flags = CDP_REC_F_RESYNC };
	int qrc = sync_reap(s, s->head);

	assert(s->n);
	if (!rc && qrc)
		rc = cdp_err_sys(err, qrc, "resync: %s: read queue", v->name);
	if (!rc && !sl->hole)
		rc = sync_read_finish(s, sl, err);
	if (!rc) {
		r.volume = v->id;
		r.offset = sl->off;
		r.length = sl->len;
		if (sl->hole || all_zero(sl->buf, sl->len)) {
			r.kind = CDP_REC_ZERO;
		} else {
			r.kind = CDP_REC_WRITE;
			r.payload = sl->buf;
		}
		pthread_mutex_lock(&sp->mu);
		if (sp->mode != CDP_SPLIT_CONTINUOUS) {
			rc = cdp_err_set(err, -ECANCELED, "resync: the plan went incremental");
		} else {
			rc = add_sync_record_locked(sp, &r, err);
			if (!rc && r.kind == CDP_REC_WRITE)
				sp->st.resync_bytes += sl->len;
			else if (!rc)
				sp->st.resync_zero_bytes += sl->len;
			if (!rc && sp->have_ckpt && !sl->dirty) {
				sp->ckpt_volume = v->id;
				sp->ckpt_offset = sl->off + sl->len;
			}
		}
		pthread_mutex_unlock(&sp->mu);
		if (!sl->hole && r.kind == CDP_REC_ZERO)
			cdp_splitter_pacer_sub(&s->net, sl->len);
	}
	if (rc && sl->dirty)
		redirty(sp, v, sl->off, sl->len);
	rl_release(v, &sl->n);
	s->head = (s->head + 1) % SYNC_QD;
	s->n--;
	return rc;
}

static int sync_drain(struct sync *s, int rc, struct cdp_err *err)
{
	while (s->n)
		rc = sync_finish(s, rc, err);
	return rc;
}

static bool sync_stopped(struct sync *s)
{
	return s->stop && atomic_load(s->stop);
}

/*
 * Before a read: the caps (network: RESYNC payload; source: bytes read, at a
 * share of the bandwidth measured when the read cap is first on, at
 * @v/@off), then room in the cache. Sleeps and waits only with no chunk in
 * flight.
 */
static int sync_throttle(struct sync *s, struct vol *v, uint64_t off, struct cdp_err *err)
{
	int rc;

	if (!s->probed && s->caps && atomic_load(&s->caps->read_percent)) {
		/* The read cap needs the source's bandwidth: measured once it is on. */
		rc = sync_drain(s, 0, err);
		if (rc)
			return rc;
		sync_probe(s, v, off);
	}

	for (;;) {
		uint64_t net = s->caps ? atomic_load(&s->caps->net_bps) : 0;
		unsigned pct = s->caps ? atomic_load(&s->caps->read_percent) : 0;
		uint64_t rcap = cdp_splitter_read_cap(s->read_bps, pct);
		int64_t now = sync_now();
		int64_t wnet = cdp_splitter_pacer_wait(&s->net, net, now);
		int64_t wrd = cdp_splitter_pacer_wait(&s->rd, rcap, now);
		int64_t wait = CDP_MAX(wnet, wrd);

		if (wait <= 0)
			break;
		if (s->n) {
			rc = sync_drain(s, 0, err);
			if (rc)
				return rc;
			continue;	/* that took time: ask again */
		}
		if (sync_stopped(s))
			return cdp_err_set(err, -ECANCELED, "resync: stopped");
		nap(CDP_MIN(wait, SYNC_NAP_MAX));
	}
	/*
	 * Room within a few milliseconds (the sealer finishing a segment, the
	 * journal acknowledging one) is waited for with the reads in flight:
	 * draining them first would leave the disk and then the sealer idle at
	 * every wait. A longer wait (a link down) drains first, so that an
	 * application write waiting for one of our chunks does not wait for it.
	 */
	if (seal_room(s->sp, SYNC_HOLD_WAIT) &&
	    cdp_cache_wait_room(s->sp->o.cache, sync_cache_limit(s->sp), SYNC_HOLD_WAIT))
		return 0;
	rc = sync_drain(s, 0, err);
	return rc ? rc : sync_room(s->sp, s->stop, err);
}

/*
 * One run of the sync: throttled, into a slot, its range taken, its read
 * started. On failure the run's dirty bits are set again (by sync_finish()
 * once it has a slot).
 */
static int sync_step(struct sync *s, struct vol *v, uint64_t off, uint32_t len, bool hole,
		     bool dirty, struct cdp_err *err)
{
	struct sync_slot *sl;
	unsigned i;
	int rc = 0;

	if (sync_stopped(s))
		rc = cdp_err_set(err, -ECANCELED, "resync: stopped");
	/* Sync records never crowd out CDP records: see sync_room(). */
	if (!rc && !hole)
		rc = sync_throttle(s, v, off, err);
	if (!rc && s->n == SYNC_QD)
		rc = sync_finish(s, 0, err);
	if (rc) {
		if (dirty)
			redirty(s->sp, v, off, len);
		return rc;
	}
	i = (s->head + s->n++) % SYNC_QD;
	sl = &s->slot[i];
	sl->v = v;
	sl->off = off;
	sl->len = len;
	sl->hole = hole;
	sl->dirty = dirty;
	sl->reading = sl->direct = false;
	sl->res = 0;
	memset(&sl->n, 0, sizeof(sl->n));
	sl->n.off = off;
	sl->n.len = len;
	sl->n.is_op = false;
	if (!rl_take(v, &sl->n)) {
		pthread_mutex_lock(&s->sp->mu);
		s->sp->st.resync_range_waits++;
		pthread_mutex_unlock(&s->sp->mu);
		/* What we wait for may wait for one of our chunks: finish those first. */
		while (s->n > 1)
			rc = sync_finish(s, rc, err);
		rl_wait_granted(v, &sl->n);
		if (rc)
			return rc;	/* the caller's drain releases it */
	}
	if (hole) {
		/* A write in flight when SEEK_DATA looked may have filled it since. */
		off_t data = lseek(v->fd, (off_t)off, SEEK_DATA);

		if (data >= 0 && (uint64_t)data < off + len)
			hole = sl->hole = false;
	}
	if (!hole) {
		rc = sync_read_start(s, i);
		if (rc)
			return cdp_err_sys(err, rc, "resync: %s: read at %" PRIu64, v->name, off);
	}
	return 0;
}

int cdp_splitter_resync(struct cdp_splitter *sp, uint32_t kind, unsigned from_volume,
			uint64_t from_offset, const _Atomic bool *stop,
			const struct cdp_sync_caps *caps, struct cdp_err *err)
{
	struct cdp_sync_info si = { .kind = kind };
	struct sync s = { .sp = sp, .stop = stop, .caps = caps };
	int rc;

	pthread_mutex_lock(&sp->mu);
	if (!sp->enc || !sp->anchored) {
		pthread_mutex_unlock(&sp->mu);
		return cdp_err_set(err, -EAGAIN, "resync: the chain is not anchored on the "
				   "journal's yet (waiting for a welcome)");
	}
	si.sync_id = (uint64_t)cdp_clock_wall_ns(sp->clock);
	sp->mode = CDP_SPLIT_CONTINUOUS;
	sp->have_ckpt = kind == CDP_SYNC_FULL;
	sp->ckpt_sync = si;
	sp->ckpt_volume = from_volume;
	sp->ckpt_offset = from_offset;
	pthread_mutex_unlock(&sp->mu);
	s.rq = cdp_io_rq_new(SYNC_QD);
	s.bufs = cdp_xaligned_alloc(SYNC_ALIGN, (size_t)SYNC_QD * SYNC_CHUNK);
	for (unsigned i = 0; i < SYNC_QD; i++)
		s.slot[i].buf = s.bufs + (size_t)i * SYNC_CHUNK;
	rc = sync_marker(sp, CDP_REC_SYNC_BEGIN, &si, err);
	/*
	 * A full sync reads every volume from the checkpoint on, then (pass 1)
	 * sends the dirty bitmap's blocks too: changes kept only there (an
	 * interrupted sync, incremental mode) would otherwise be missing from
	 * the first consistent point. An incremental sync is that pass alone.
	 */
	for (int pass = kind == CDP_SYNC_FULL ? 0 : 1; !rc && pass < 2; pass++) {
		for (unsigned vi = pass ? 0 : from_volume; !rc && vi < sp->nvol; vi++) {
			struct vol *v = &sp->vols[vi];
			uint64_t off = !pass && vi == from_volume ? from_offset : 0;
			uint64_t doff, dlen;
			bool hole;

			while (!rc && next_run(sp, v, pass, off, &doff, &dlen, &hole)) {
				rc = sync_step(&s, v, doff, (uint32_t)dlen, hole, pass, err);
				off = doff + dlen;
			}
		}
	}
	rc = sync_drain(&s, rc, err);
	if (!rc)
		rc = sync_marker(sp, CDP_REC_SYNC_END, &si, err);
	pthread_mutex_lock(&sp->mu);
	if (!rc && sp->have_ckpt) {
		/* Done: the checkpoint past the last volume rides on the SYNC_END. */
		sp->ckpt_volume = sp->nvol;
		sp->ckpt_offset = 0;
	}
	cut_locked(sp, false, 0);
	sp->have_ckpt = false;
	pthread_mutex_unlock(&sp->mu);
	if (cdp_io_rq_free(s.rq))
		free(s.bufs);	/* else the kernel may still write there: leaked */
	return rc;
}

/* ---- open, close, stats ----------------------------------------------------- */

struct cdp_export *cdp_splitter_export(struct cdp_splitter *sp, unsigned volume)
{
	return volume < sp->nvol ? &sp->vols[volume].exp : NULL;
}

uint64_t cdp_splitter_volume_size(struct cdp_splitter *sp, unsigned volume)
{
	return volume < sp->nvol ? sp->vols[volume].size : 0;
}

/* @fd's size: BLKGETSIZE64 for a block device, st_size for a file. */
static int fd_size(int fd, bool *blockdev, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st))
		return -errno;
	*blockdev = S_ISBLK(st.st_mode);
	if (*blockdev)
		return ioctl(fd, BLKGETSIZE64, size) ? -errno : 0;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	*size = (uint64_t)st.st_size;
	return 0;
}

int cdp_splitter_source_size(const char *path, uint64_t *size, struct cdp_err *err)
{
	bool blockdev;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return cdp_err_sys(err, -errno, "open %s", path);
	rc = fd_size(fd, &blockdev, size);
	close(fd);
	if (rc == -EINVAL)
		return cdp_err_set(err, rc, "%s: not a regular file or block device", path);
	if (rc)
		return cdp_err_sys(err, rc, "size of %s", path);
	return 0;
}

static int vol_open(struct cdp_splitter *sp, struct vol *v, unsigned i, struct cdp_err *err)
{
	int rc;

	v->sp = sp;
	v->id = i;
	snprintf(v->name, sizeof(v->name), "%s", sp->o.names[i]);
	v->fd = open(sp->o.paths[i], O_RDWR | O_CLOEXEC);
	if (v->fd < 0)
		return cdp_err_sys(err, -errno, "volume %s: open %s", v->name, sp->o.paths[i]);
	rc = fd_size(v->fd, &v->blockdev, &v->size);
	if (rc == -EINVAL)
		return cdp_err_set(err, rc, "volume %s: %s is not a regular file or block device",
				   v->name, sp->o.paths[i]);
	if (rc)
		return cdp_err_sys(err, rc, "volume %s: size of %s", v->name, sp->o.paths[i]);
	if (!v->size || v->size % CDP_SECTOR)
		return cdp_err_set(err, -EINVAL, "volume %s: size %" PRIu64 " of %s is not a "
				   "positive multiple of %u", v->name, v->size, sp->o.paths[i],
				   CDP_SECTOR);
	if (!sp->o.sync_buffered) {
		v->sfd = open(sp->o.paths[i], O_RDONLY | O_DIRECT | O_CLOEXEC);
		v->sdirect = v->sfd >= 0;
		if (v->sfd < 0)
			cdp_log_info("splitter: volume %s: O_DIRECT refused (%s); sync reads are "
				     "buffered, their pages dropped after each chunk", v->name,
				     strerror(errno));
	}
	if (v->sfd < 0) {
		v->sfd = open(sp->o.paths[i], O_RDONLY | O_CLOEXEC);
		if (v->sfd < 0)
			return cdp_err_sys(err, -errno, "volume %s: open %s", v->name,
					   sp->o.paths[i]);
		/* No readahead: pages past a chunk would outlive its DONTNEED. */
		posix_fadvise(v->sfd, 0, 0, POSIX_FADV_RANDOM);
	}
	v->exp.name = v->name;
	v->exp.size = v->size;
	v->exp.min_block = CDP_SECTOR;
	v->exp.pref_block = 4096;
	v->exp.max_block = sp->o.max_request;
	v->exp.can_trim = v->exp.can_zero = v->exp.can_flush = v->exp.can_fua = true;
	v->exp.submit = vol_submit;
	v->exp.ctx = v;
	return 0;
}

int cdp_splitter_open(const struct cdp_splitter_opts *o, struct cdp_splitter **out,
		      struct cdp_err *err)
{
	struct cdp_splitter *sp;
	int rc = 0;

	*out = NULL;
	if (!o->nvolumes || !o->al || !o->dm || !o->cache)
		return cdp_err_set(err, -EINVAL, "splitter: volumes, activity log, bitmap and "
				   "cache are required");
	if (o->io_nice < -20 || o->io_nice > 19)
		return cdp_err_set(err, -EINVAL, "splitter: io_nice %d not in -20..19", o->io_nice);
	if (o->io_slice_ns < 0)
		return cdp_err_set(err, -EINVAL, "splitter: io_slice_ns %" PRId64 " < 0",
				   o->io_slice_ns);
	sp = cdp_xcalloc(1, sizeof(*sp));
	sp->o = *o;
	if (!sp->o.point_interval_ns)
		sp->o.point_interval_ns = CDP_NS_PER_SEC;
	if (!sp->o.io_threads)
		sp->o.io_threads = 4;
	if (!sp->o.max_request)
		sp->o.max_request = 1u << 20;
	if (sp->o.max_request > CDP_REC_MAX_WRITE)
		sp->o.max_request = CDP_REC_MAX_WRITE & ~(CDP_SECTOR - 1);
	sp->clock = o->clock ? o->clock : cdp_clock_real();
	cdp_stamp_clock_init(&sp->stamp, sp->clock);
	sp->mode = CDP_SPLIT_INCREMENTAL;
	sp->nvol = o->nvolumes;
	sp->vols = cdp_xcalloc(sp->nvol, sizeof(*sp->vols));
	for (unsigned i = 0; i < sp->nvol; i++)
		sp->vols[i].fd = sp->vols[i].sfd = -1;
	for (unsigned i = 0; i < sp->nvol && !rc; i++)
		rc = vol_open(sp, &sp->vols[i], i, err);
	if (rc) {
		for (unsigned i = 0; i < sp->nvol; i++) {
			if (sp->vols[i].fd >= 0)
				close(sp->vols[i].fd);
			if (sp->vols[i].sfd >= 0)
				close(sp->vols[i].sfd);
		}
		free(sp->vols);
		free(sp);
		return rc;
	}
	pthread_mutex_init(&sp->rl_mu, NULL);
	pthread_cond_init(&sp->rl_cond, NULL);
	pthread_mutex_init(&sp->q_mu, NULL);
	pthread_cond_init(&sp->q_cond, NULL);
	pthread_cond_init(&sp->idle_cond, NULL);
	pthread_mutex_init(&sp->mu, NULL);
	pthread_mutex_init(&sp->seal_mu, NULL);
	pthread_cond_init(&sp->seal_cond, NULL);
	sp->workers = cdp_xcalloc(sp->o.io_threads, sizeof(*sp->workers));
	for (unsigned i = 0; i < sp->o.io_threads; i++)
		cdp_thread_start(&sp->workers[i], "split/io", worker_main, sp);
	cdp_thread_start(&sp->sealer, "split/seal", seal_main, sp);
	*out = sp;
	return 0;
}

void cdp_splitter_close(struct cdp_splitter *sp)
{
	if (!sp)
		return;
	pthread_mutex_lock(&sp->q_mu);
	while (sp->inflight)
		pthread_cond_wait(&sp->idle_cond, &sp->q_mu);
	sp->q_stop = true;
	pthread_cond_broadcast(&sp->q_cond);
	pthread_mutex_unlock(&sp->q_mu);
	for (unsigned i = 0; i < sp->o.io_threads; i++)
		pthread_join(sp->workers[i], NULL);
	pthread_mutex_lock(&sp->seal_mu);
	sp->seal_stop = true;
	pthread_cond_broadcast(&sp->seal_cond);
	pthread_mutex_unlock(&sp->seal_mu);
	pthread_join(sp->sealer, NULL);
	while (sp->seal_head) {
		struct seal_item *it = sp->seal_head;

		sp->seal_head = it->next;
		cdp_seg_enc_free(it->enc);
		free(it);
	}
	for (unsigned i = 0; i < sp->nfree_enc; i++)
		cdp_seg_enc_free(sp->free_enc[i]);
	cdp_seg_enc_free(sp->enc);
	for (unsigned i = 0; i < sp->nvol; i++) {
		close(sp->vols[i].fd);
		if (sp->vols[i].sfd >= 0)
			close(sp->vols[i].sfd);
	}
	free(sp->vols);
	free(sp->workers);
	pthread_cond_destroy(&sp->seal_cond);
	pthread_mutex_destroy(&sp->seal_mu);
	pthread_mutex_destroy(&sp->mu);
	pthread_cond_destroy(&sp->idle_cond);
	pthread_cond_destroy(&sp->q_cond);
	pthread_mutex_destroy(&sp->q_mu);
	pthread_cond_destroy(&sp->rl_cond);
	pthread_mutex_destroy(&sp->rl_mu);
	free(sp);
}

void cdp_splitter_stats(struct cdp_splitter *sp, struct cdp_splitter_stats *st)
{
	pthread_mutex_lock(&sp->mu);
	*st = sp->st;
	st->mode = sp->mode;
	pthread_mutex_unlock(&sp->mu);
	pthread_mutex_lock(&sp->seal_mu);
	st->seal_backlog = sp->seal_backlog;
	st->seal_promotions = sp->seal_promotions;
	st->seal_idle = sp->seal_idle;
	pthread_mutex_unlock(&sp->seal_mu);
}
