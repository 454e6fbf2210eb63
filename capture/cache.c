/*
 * capture/cache - see cache.h. A singly linked list (oldest at the head),
 * a byte count against the memory bound, a condition variable for the link,
 * and the spill ring.
 *
 * The ring: spilled entries take consecutive ring positions (a byte count
 * that only grows; the file offset is position % spill_size, and an entry
 * crossing the end is written and read in two pieces). Entries leave the
 * list oldest first, so the spilled ones still listed occupy exactly
 * [spill_tail, spill_head). A read in progress pins its start (struct pin,
 * on the reader's stack), so a push never overwrites bytes being read after
 * an ack dropped their entry: the free space is spill_size minus
 * (spill_head - min(spill_tail, pins)). Only pushes move spill_head, one at
 * a time (push_mu), and only they write.
 */
#include "capture/cache.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "storage/io.h"

/* A read of spilled bytes in progress: ring space from @pos on stays put. */
struct pin {
	uint64_t pos;
	struct pin *next;
};

struct cdp_cache {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	uint64_t max_bytes;
	struct cdp_cache_seg *head, *tail;
	uint64_t bytes, segments;	/* in memory */
	uint64_t next_pos;
	uint64_t wakes;
	uint64_t pushed, refused;
	uint8_t base[32];	/* digest the head follows */
	bool has_acked_ckpt;
	struct cdp_syncckpt acked_ckpt;	/* of the newest acked entry with one */

	/* Serialises drop_all: when one returns, every entry dropped by any
	 * drop_all has been through its fn (held across the reads and fn). */
	pthread_mutex_t drop_mu;

	/* The spill file (fd -1: none); fixed after cdp_cache_spill_open(). */
	pthread_mutex_t push_mu;	/* serialises pushes; held across the spill write */
	const struct cdp_io *io;
	int fd;
	char *spill_path;
	uint64_t spill_size;
	/* guarded by mu */
	uint64_t spill_head, spill_tail;	/* ring positions of the listed spilled bytes */
	uint64_t spill_segments;
	struct pin *pins;

	/* Freed CDP_CACHE_SPARE_CAP buffers for the next seals (spare_mu). */
	pthread_mutex_t spare_mu;
	uint8_t *spare[CDP_CACHE_SPARES];
	unsigned nspare;
};

struct cdp_cache *cdp_cache_new(uint64_t max_bytes)
{
	struct cdp_cache *c = cdp_xcalloc(1, sizeof(*c));
	pthread_condattr_t ca;

	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->push_mu, NULL);
	pthread_mutex_init(&c->drop_mu, NULL);
	pthread_mutex_init(&c->spare_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	c->max_bytes = max_bytes;
	c->next_pos = 1;
	c->fd = -1;
	return c;
}

int cdp_cache_spill_open(struct cdp_cache *c, const char *path, uint64_t size,
			 const struct cdp_io *io, struct cdp_err *err)
{
	struct stat st;
	int fd;

	assert(c->fd < 0 && !c->pushed);
	if (!size)
		return cdp_err_set(err, -EINVAL, "spill file %s: size 0", path);
	if (!io)
		io = cdp_io_plain();
	fd = io->open(io->ctx, path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return cdp_err_sys(err, fd, "spill file %s: open", path);
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		io->close(io->ctx, fd);
		return cdp_err_set(err, -EINVAL, "spill file %s: not a regular file", path);
	}
	c->io = io;
	c->fd = fd;
	c->spill_path = cdp_xstrdup(path);
	c->spill_size = size;
	return 0;
}

/* Frees @s's bytes, into its cache's spares when they are spare-sized and it has room. */
static void data_free(struct cdp_cache_seg *s)
{
	struct cdp_cache *c = s->owner;

	if (c && s->data && s->cap == CDP_CACHE_SPARE_CAP) {
		pthread_mutex_lock(&c->spare_mu);
		if (c->nspare < CDP_CACHE_SPARES) {
			c->spare[c->nspare++] = s->data;
			s->data = NULL;
		}
		pthread_mutex_unlock(&c->spare_mu);
	}
	free(s->data);
	s->data = NULL;
}

void cdp_cache_seg_free(struct cdp_cache_seg *s)
{
	data_free(s);
	free(s);
}

uint8_t *cdp_cache_spare(struct cdp_cache *c)
{
	uint8_t *p = NULL;

	pthread_mutex_lock(&c->spare_mu);
	if (c->nspare)
		p = c->spare[--c->nspare];
	pthread_mutex_unlock(&c->spare_mu);
	return p;
}

/* Unlinked from the list: the list's own reference goes. Lock held. */
static void drop_locked(struct cdp_cache *c, struct cdp_cache_seg *s)
{
	memcpy(c->base, s->digest, sizeof(c->base));
	if (s->spilled) {
		assert(s->spill_off == c->spill_tail);
		c->spill_tail = s->spill_off + s->len;
		c->spill_segments--;
	} else {
		c->bytes -= s->len;
		c->segments--;
	}
	cdp_cache_put(s);
}

void cdp_cache_free(struct cdp_cache *c)
{
	if (!c)
		return;
	while (c->head) {
		struct cdp_cache_seg *s = c->head;

		c->head = s->next;
		drop_locked(c, s);
	}
	if (c->fd >= 0) {
		/* Scratch: give the disk back, as an empty file. */
		c->io->ftruncate(c->io->ctx, c->fd, 0);
		c->io->close(c->io->ctx, c->fd);
	}
	free(c->spill_path);
	while (c->nspare)
		free(c->spare[--c->nspare]);
	pthread_mutex_destroy(&c->spare_mu);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->push_mu);
	pthread_mutex_destroy(&c->drop_mu);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* Ring bytes a push may take now (lock held). */
static uint64_t spill_free_locked(const struct cdp_cache *c)
{
	uint64_t tail = c->spill_tail;

	for (const struct pin *p = c->pins; p; p = p->next)
		tail = CDP_MIN(tail, p->pos);
	assert(c->spill_head - tail <= c->spill_size);
	return c->spill_size - (c->spill_head - tail);
}

static void pin_locked(struct cdp_cache *c, struct pin *p, uint64_t pos)
{
	p->pos = pos;
	p->next = c->pins;
	c->pins = p;
}

static void unpin_locked(struct cdp_cache *c, struct pin *p)
{
	struct pin **pp = &c->pins;

	while (*pp != p)
		pp = &(*pp)->next;
	*pp = p->next;
}

/*
 * Writes (@write) or reads @len bytes at ring position @pos, in two pieces
 * when they cross the file's end. 0 or -errno; a short read is -EIO.
 */
static int ring_io(struct cdp_cache *c, bool write, uint8_t *buf, size_t len, uint64_t pos)
{
	uint64_t off = pos % c->spill_size;

	while (len) {
		size_t n = (size_t)CDP_MIN((uint64_t)len, c->spill_size - off);

		if (write) {
			int rc = cdp_io_pwrite(c->io, c->fd, buf, n, off);

			if (rc < 0)
				return rc;
		} else {
			long r = c->io->pread(c->io->ctx, c->fd, buf, n, off);

			if (r < 0)
				return (int)r;
			if ((size_t)r != n)
				return -EIO;
		}
		buf += n;
		len -= n;
		off = 0;
	}
	return 0;
}

/* Appends @s to the list (lock held). */
static void link_locked(struct cdp_cache *c, struct cdp_cache_seg *s)
{
	s->pos = c->next_pos++;
	atomic_init(&s->refs, 1);
	s->next = NULL;
	if (c->tail)
		c->tail->next = s;
	else
		c->head = s;
	c->tail = s;
	if (s->spilled) {
		c->spill_head += s->len;
		c->spill_segments++;
	} else {
		c->bytes += s->len;
		c->segments++;
	}
	c->pushed++;
	pthread_cond_broadcast(&c->cond);
}

int cdp_cache_push(struct cdp_cache *c, struct cdp_cache_seg *s, struct cdp_err *err)
{
	uint64_t pos;
	int rc;

	s->spilled = false;
	s->read_err = 0;
	s->owner = c;
	pthread_mutex_lock(&c->push_mu);
	pthread_mutex_lock(&c->mu);
	if (!c->max_bytes || c->bytes + s->len <= c->max_bytes) {
		link_locked(c, s);
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_unlock(&c->push_mu);
		return 0;
	}
	if (c->fd < 0 || s->len > spill_free_locked(c)) {
		c->refused++;
		if (c->fd < 0)
			rc = cdp_err_set(err, -ENOSPC, "log cache full: %zu bytes more do not fit "
					 "in memory (%" PRIu64 " of %" PRIu64 " bytes used)", s->len,
					 c->bytes, c->max_bytes);
		else
			rc = cdp_err_set(err, -ENOSPC, "log cache full: %zu bytes more do not fit "
					 "in memory (%" PRIu64 " of %" PRIu64 " bytes used) nor in "
					 "spill file %s (%" PRIu64 " of %" PRIu64 " bytes free)",
					 s->len, c->bytes, c->max_bytes, c->spill_path,
					 spill_free_locked(c), c->spill_size);
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_unlock(&c->push_mu);
		return rc;
	}
	/* [pos, pos + len) is free and stays ours: only pushes take ring space. */
	pos = c->spill_head;
	pthread_mutex_unlock(&c->mu);
	rc = ring_io(c, true, s->data, s->len, pos);
	pthread_mutex_lock(&c->mu);
	if (rc) {
		c->refused++;
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_unlock(&c->push_mu);
		return cdp_err_set(err, -ENOSPC, "log cache full: spill file %s: write of %zu "
				   "bytes at %" PRIu64 ": %s", c->spill_path, s->len,
				   pos % c->spill_size, strerror(-rc));
	}
	assert(c->spill_head == pos);
	data_free(s);
	s->spilled = true;
	s->spill_off = pos;
	link_locked(c, s);
	pthread_mutex_unlock(&c->mu);
	pthread_mutex_unlock(&c->push_mu);
	return 0;
}

static struct timespec deadline(int64_t timeout_ns)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ns / CDP_NS_PER_SEC;
	until.tv_nsec += timeout_ns % CDP_NS_PER_SEC;
	if (until.tv_nsec >= CDP_NS_PER_SEC) {
		until.tv_sec++;
		until.tv_nsec -= CDP_NS_PER_SEC;
	}
	return until;
}

bool cdp_cache_wait_room(struct cdp_cache *c, uint64_t max_used, int64_t timeout_ns)
{
	struct timespec until = deadline(timeout_ns);
	bool ok;

	pthread_mutex_lock(&c->mu);
	while (c->bytes > max_used)
		if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT)
			break;
	ok = c->bytes <= max_used;
	pthread_mutex_unlock(&c->mu);
	return ok;
}

uint64_t cdp_cache_max_bytes(const struct cdp_cache *c)
{
	return c->max_bytes;
}

/*
 * A listed spilled entry's copy with its bytes (lock held; dropped around
 * the read, with the ring space pinned). Returns it referenced once.
 */
static struct cdp_cache_seg *read_back_locked(struct cdp_cache *c, const struct cdp_cache_seg *s)
{
	struct cdp_cache_seg *cp = cdp_xmalloc(sizeof(*cp));
	struct pin pin;
	int rc;

	*cp = *s;
	atomic_init(&cp->refs, 1);
	cp->next = NULL;
	cp->owner = NULL;	/* its bytes are its own malloc() */
	pin_locked(c, &pin, s->spill_off);
	pthread_mutex_unlock(&c->mu);
	cp->data = cdp_xmalloc(cp->len);
	rc = ring_io(c, false, cp->data, cp->len, cp->spill_off);
	if (rc) {
		free(cp->data);
		cp->data = NULL;
		cp->read_err = rc;
	}
	pthread_mutex_lock(&c->mu);
	unpin_locked(c, &pin);
	return cp;
}

/* The first listed entry after @after (lock held). */
static struct cdp_cache_seg *find_locked(struct cdp_cache *c, uint64_t after)
{
	struct cdp_cache_seg *s;

	for (s = c->head; s && s->pos <= after; s = s->next)
		;
	return s;
}

struct cdp_cache_seg *cdp_cache_next(struct cdp_cache *c, uint64_t after, int64_t timeout_ns)
{
	struct timespec until = deadline(timeout_ns);
	struct cdp_cache_seg *s = NULL;
	uint64_t wakes;

	pthread_mutex_lock(&c->mu);
	wakes = c->wakes;
	for (;;) {
		s = find_locked(c, after);
		if (s || wakes != c->wakes)
			break;
		if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT) {
			s = find_locked(c, after);
			break;
		}
	}
	if (s && s->spilled)
		s = read_back_locked(c, s);
	else if (s)
		cdp_cache_get(s);
	pthread_mutex_unlock(&c->mu);
	return s;
}

void cdp_cache_get(struct cdp_cache_seg *s)
{
	atomic_fetch_add(&s->refs, 1);
}

void cdp_cache_put(struct cdp_cache_seg *s)
{
	if (atomic_fetch_sub(&s->refs, 1) == 1)
		cdp_cache_seg_free(s);
}

void cdp_cache_wake(struct cdp_cache *c)
{
	pthread_mutex_lock(&c->mu);
	c->wakes++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
}

uint64_t cdp_cache_ack(struct cdp_cache *c, uint64_t durable_seq, const uint8_t *digest)
{
	struct cdp_cache_seg *upto = NULL;
	uint64_t wid = 0;

	pthread_mutex_lock(&c->mu);
	for (struct cdp_cache_seg *s = c->head; s; s = s->next) {
		if (digest ? !memcmp(s->digest, digest, sizeof(s->digest)) :
			     s->nrecords && s->last_seq <= durable_seq)
			upto = s;
		if (digest ? upto != NULL : s->nrecords && s->last_seq > durable_seq)
			break;
	}
	while (upto && c->head) {
		struct cdp_cache_seg *s = c->head;
		bool last = s == upto;

		c->head = s->next;
		if (!c->head)
			c->tail = NULL;
		wid = CDP_MAX(wid, s->max_wid);
		if (s->has_ckpt) {
			c->has_acked_ckpt = true;
			c->acked_ckpt = (struct cdp_syncckpt){ .sync_id = s->ckpt_sync_id,
							       .kind = s->ckpt_kind,
							       .volume = s->ckpt_volume,
							       .offset = s->ckpt_offset };
		}
		drop_locked(c, s);
		if (last)
			break;
	}
	if (upto)
		pthread_cond_broadcast(&c->cond);	/* room for a waiting sync */
	pthread_mutex_unlock(&c->mu);
	return wid;
}

bool cdp_cache_acked_ckpt(struct cdp_cache *c, struct cdp_syncckpt *out)
{
	bool has;

	pthread_mutex_lock(&c->mu);
	has = c->has_acked_ckpt;
	if (has)
		*out = c->acked_ckpt;
	pthread_mutex_unlock(&c->mu);
	return has;
}

void cdp_cache_set_base(struct cdp_cache *c, const uint8_t digest[32])
{
	pthread_mutex_lock(&c->mu);
	memcpy(c->base, digest, sizeof(c->base));
	pthread_mutex_unlock(&c->mu);
}

int cdp_cache_resume(struct cdp_cache *c, const uint8_t digest[32], uint64_t *after)
{
	int rc = -ENOENT;

	pthread_mutex_lock(&c->mu);
	if (!memcmp(c->base, digest, sizeof(c->base))) {
		*after = c->head ? c->head->pos - 1 : c->next_pos - 1;
		rc = 0;
	}
	for (struct cdp_cache_seg *s = c->head; s && rc; s = s->next)
		if (!memcmp(s->digest, digest, sizeof(s->digest))) {
			*after = s->pos;
			rc = 0;
		}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/*
 * The list is taken off the cache whole under the lock (the cache is empty
 * at once for everyone else); @fn then runs without it, reading spilled
 * bytes back with their ring space pinned. drop_mu makes a concurrent
 * drop_all wait for this one's fn calls, as it did when they ran under mu.
 */
void cdp_cache_drop_all(struct cdp_cache *c, void (*fn)(void *arg, const struct cdp_cache_seg *s),
			void *arg)
{
	struct cdp_cache_seg *list;
	struct pin pin;

	pthread_mutex_lock(&c->drop_mu);
	pthread_mutex_lock(&c->mu);
	list = c->head;
	c->head = NULL;
	c->tail = NULL;
	if (c->fd >= 0)
		pin_locked(c, &pin, c->spill_tail);
	for (struct cdp_cache_seg *s = list; s; s = s->next)
		if (!s->next)
			memcpy(c->base, s->digest, sizeof(c->base));
	c->bytes = 0;
	c->segments = 0;
	c->spill_tail = c->spill_head;
	c->spill_segments = 0;
	c->wakes++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	while (list) {
		struct cdp_cache_seg *s = list;

		list = s->next;
		if (fn && s->spilled) {
			struct cdp_cache_seg v = *s;
			int rc;

			v.data = cdp_xmalloc(v.len);
			rc = ring_io(c, false, v.data, v.len, v.spill_off);
			if (rc) {
				free(v.data);
				v.data = NULL;
				v.read_err = rc;
			}
			fn(arg, &v);
			free(v.data);
		} else if (fn) {
			fn(arg, s);
		}
		cdp_cache_put(s);
	}
	if (c->fd >= 0) {
		pthread_mutex_lock(&c->mu);
		unpin_locked(c, &pin);
		pthread_mutex_unlock(&c->mu);
	}
	pthread_mutex_unlock(&c->drop_mu);
}

void cdp_cache_stats(struct cdp_cache *c, struct cdp_cache_stats *st)
{
	pthread_mutex_lock(&c->mu);
	st->spilled_bytes = c->spill_head - c->spill_tail;
	st->spilled_segments = c->spill_segments;
	st->bytes = c->bytes + st->spilled_bytes;
	st->segments = c->segments + st->spilled_segments;
	st->first_seq = 0;
	for (struct cdp_cache_seg *s = c->head; s; s = s->next)
		if (s->nrecords) {
			st->first_seq = s->first_seq;
			break;
		}
	st->last_pos = c->tail ? c->tail->pos : 0;
	st->pushed = c->pushed;
	st->refused = c->refused;
	pthread_mutex_unlock(&c->mu);
}
