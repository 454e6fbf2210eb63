/*
 * storage/actlog - the agent's activity log (see actlog.h for the API and
 * docs/format.md "Agent state files" for the bytes).
 *
 * DESIGN
 * - DRBD's idea in a simpler format: each log write holds the WHOLE active
 *   set (at most max_active entries of 12 bytes, so 12 KiB at the default
 *   1024), so open needs only the newest valid slot, not a replay. A slot is
 *   written as the 4 KiB-rounded prefix that holds its entries and CRC.
 * - Slot choice: the next slot of the ring, skipping the one that holds the
 *   newest synced generation (good_slot). So a torn or failed write never
 *   touches the one slot open would fall back to, even after a run of
 *   failed writes (fsyncgate: a failed write's bytes may or may not land;
 *   the CRC decides on open). Generations grow with every attempt, so a
 *   failed slot that lands anyway is superseded by the next successful one.
 * - Extents live in a hash (volume, index) and, while in the set, on an LRU
 *   list (newest first). An entry that must leave while writes to it are in
 *   flight (a spill) stays in the hash as a ghost, out of the set, keeping
 *   its in-flight count: when it comes back, the note() of the old write
 *   must not count against the new one. A ghost is freed at its last note().
 * - Group commit with epochs: `snap` counts slot writes started, `done` the
 *   newest that completed. An entry that joins the set records need =
 *   snap + 1 (the first write that will include it). begin() returns once
 *   done >= the largest need of its extents; so a caller whose extents are
 *   all in an already synced slot takes the mutex briefly and never waits
 *   for a write in progress, and callers that add extents while a write is
 *   in progress are all carried by the next one. One writer at a time
 *   (`writing`); it builds the slot under the mutex, then writes and
 *   fdatasyncs with the mutex released. A waiter whose write failed tries
 *   again as the writer itself: each begin() that needs a write returns the
 *   result of a write that started after it joined, its own or another's.
 * - Idle (no note() seq above safe_seq, nothing in flight, not recovered):
 *   computed when needed, never stored, so settle() is O(1). Idle extents
 *   stay in the set (and in later slots: the LRU cache of DRBD) until room
 *   is needed; eviction scans from the LRU tail for an idle one, then spills
 *   the least recently used busy one not touched by the same begin() call
 *   (so a range of up to max_active extents always fits).
 * - The recovered set is immutable after open and read without the mutex.
 *
 * Threads: everything below `mu` in struct cdp_actlog is guarded by it; buf
 * belongs to the thread that set `writing`.
 */
#include "storage/actlog.h"

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "storage/io.h"
#include "storage/segment.h"

#define AL_MAGIC "CDP-ALOG"
#define AL_VERSION 1u
#define AL_HDR_SIZE 4096u
#define AL_NSLOTS 4u		/* slots of a new log */
#define AL_MAX_SLOTS 64u	/* accepted in an existing one */
#define AL_SLOT_MAGIC "ALSL"
#define AL_ENTRY 12u		/* volume u32, index u64 */
#define AL_MAX_ACTIVE 65536u
#define AL_MAX_VOLUMES 65536u
#define AL_RANGE_END (UINT64_C(1) << 63)
#define AL_AHEAD_MAX 32u	/* extents taken ahead of a sequential writer */

/* Header offsets (docs/format.md). */
enum {
	H_MAGIC = 0,		/* 8 bytes */
	H_VERSION = 8,		/* u32 */
	H_HDR_SIZE = 12,	/* u32 */
	H_NVOLUMES = 16,	/* u32 */
	H_SHIFT = 20,		/* u32 */
	H_MAX_ACTIVE = 24,	/* u32 */
	H_NSLOTS = 28,		/* u32 */
	H_SLOT_SIZE = 32,	/* u32 */
	H_CRC = 60,		/* u32, of [0, 60) */
};

/* Slot offsets. */
enum {
	S_MAGIC = 0,		/* 4 bytes */
	S_COUNT = 4,		/* u32 */
	S_GEN = 8,		/* u64 */
	S_ENTRIES = 16,		/* count x 12 bytes, then the CRC32C of [0, here) */
};

struct ext {
	struct ext *hnext;		/* hash chain */
	struct ext *prev, *next;	/* LRU, newest first (in the set only) */
	uint32_t volume;
	uint64_t index;
	uint64_t max_seq;	/* highest seq noted */
	uint64_t need;		/* the slot write (epoch) that makes it durable */
	uint64_t stamp;		/* the begin() call that touched it last */
	unsigned inflight;	/* begin() without its note() yet */
	bool ghost;		/* spilled with writes in flight: not in the set */
	bool recovered;		/* from the log at open, until recovered_done() */
};

struct cdp_actlog {
	const struct cdp_io *io;
	int fd;
	unsigned nvolumes, shift, max_active, nslots;
	uint32_t slot_size;
	uint64_t max_index;
	int (*spill)(void *arg, const struct cdp_al_extent *x, struct cdp_err *err);
	void *spill_arg;
	struct cdp_al_extent *rec;	/* recovered set, sorted; immutable after open */
	size_t nrec;
	uint8_t *buf;			/* slot image: the writer's */

	pthread_mutex_t mu;
	pthread_cond_t cond;		/* a slot write ended */
	/* Everything below is guarded by mu. */
	struct ext **hash;
	size_t hmask;
	struct ext *head, *tail;	/* LRU */
	unsigned nactive;
	uint64_t safe_seq;
	uint64_t calls;			/* begin() calls (stamps) */
	uint64_t gen;			/* newest generation written or found */
	unsigned good_slot;		/* holds the newest synced one; nslots: none */
	unsigned last_slot;		/* written last */
	bool writing;
	uint64_t snap, done;		/* slot writes started / newest completed */
	uint64_t log_writes, spills, ahead;
	uint64_t *vol_extents;		/* extents per volume (NULL: none taken ahead) */
};

/* ---- the set ---------------------------------------------------------- */

static size_t hash_of(const struct cdp_actlog *al, uint32_t volume, uint64_t index)
{
	uint64_t z = index * 0x9e3779b97f4a7c15ull ^ ((uint64_t)volume << 32 | volume);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (size_t)(z ^ (z >> 31)) & al->hmask;
}

static struct ext *lookup(const struct cdp_actlog *al, uint32_t volume, uint64_t index)
{
	struct ext *e = al->hash[hash_of(al, volume, index)];

	while (e && (e->volume != volume || e->index != index))
		e = e->hnext;
	return e;
}

static struct ext *hash_add(struct cdp_actlog *al, uint32_t volume, uint64_t index)
{
	struct ext *e = cdp_xcalloc(1, sizeof(*e));
	size_t h = hash_of(al, volume, index);

	e->volume = volume;
	e->index = index;
	e->hnext = al->hash[h];
	al->hash[h] = e;
	return e;
}

static void hash_del(struct cdp_actlog *al, struct ext *e)
{
	struct ext **p = &al->hash[hash_of(al, e->volume, e->index)];

	while (*p != e)
		p = &(*p)->hnext;
	*p = e->hnext;
	free(e);
}

static void lru_unlink(struct cdp_actlog *al, struct ext *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		al->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		al->tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push(struct cdp_actlog *al, struct ext *e)
{
	e->prev = NULL;
	e->next = al->head;
	if (al->head)
		al->head->prev = e;
	else
		al->tail = e;
	al->head = e;
}

static bool idle(const struct cdp_actlog *al, const struct ext *e)
{
	return !e->inflight && !e->recovered && e->max_seq <= al->safe_seq;
}

/* Takes @e out of the set: freed, or a ghost while writes are in flight. */
static void leave(struct cdp_actlog *al, struct ext *e)
{
	lru_unlink(al, e);
	al->nactive--;
	e->recovered = false;
	if (e->inflight)
		e->ghost = true;
	else
		hash_del(al, e);
}

/* Drops one in-flight write of each extent of [first, last]. */
static void drop_inflight(struct cdp_actlog *al, uint32_t volume, uint64_t first, uint64_t last,
			  bool note, uint64_t seq)
{
	for (uint64_t i = first; i <= last; i++) {
		struct ext *e = lookup(al, volume, i);

		if (!e)
			continue;
		if (note && seq > e->max_seq)
			e->max_seq = seq;
		if (e->inflight)
			e->inflight--;
		if (e->ghost && !e->inflight)
			hash_del(al, e);
	}
}

/* Frees a place in the full set by letting the least recent idle extent go; false if none is. */
static bool make_idle_room(struct cdp_actlog *al)
{
	for (struct ext *e = al->tail; e; e = e->prev) {
		if (idle(al, e)) {
			leave(al, e);
			return true;
		}
	}
	return false;
}

/*
 * A log write is due for the new extents [first, last] of @volume: when a
 * run of active extents ends just before them, the next ones enter too
 * (twice the run, up to AL_AHEAD_MAX and the volume's end), into free or
 * idle room only. Lock held.
 */
static void take_ahead(struct cdp_actlog *al, uint32_t volume, uint64_t first, uint64_t last,
		       uint64_t stamp)
{
	unsigned run = 0, n;
	struct ext *e;

	if (!al->vol_extents)
		return;
	while (run < AL_AHEAD_MAX && first > run &&
	       (e = lookup(al, volume, first - 1 - run)) && !e->ghost)
		run++;
	n = CDP_MIN(CDP_MIN(2 * run, AL_AHEAD_MAX), al->max_active / 8);
	for (uint64_t i = last + 1; i <= last + n && i < al->vol_extents[volume]; i++) {
		e = lookup(al, volume, i);
		if (e && !e->ghost)
			continue;
		if (al->nactive == al->max_active && !make_idle_room(al))
			return;
		if (!e)
			e = hash_add(al, volume, i);
		e->ghost = false;
		e->need = al->snap + 1;
		e->stamp = stamp;
		al->nactive++;
		al->ahead++;
		lru_push(al, e);
	}
}

/* Frees a place in the full set for the begin() call @stamp. */
static int make_room(struct cdp_actlog *al, uint64_t stamp, struct cdp_err *err)
{
	struct cdp_al_extent x;
	struct ext *e;
	int rc;

	if (make_idle_room(al))
		return 0;
	for (e = al->tail; e && e->stamp == stamp; e = e->prev)
		;
	if (!e)		/* cannot happen: the range has fewer extents than the set */
		return cdp_err_set(err, -EBUSY, "activity log full: %u extents, all in this range",
				   al->max_active);
	if (!al->spill)
		return cdp_err_set(err, -EBUSY,
				   "activity log full: %u busy extents and no spill callback",
				   al->max_active);
	x = (struct cdp_al_extent){ e->volume, e->index };
	rc = al->spill(al->spill_arg, &x, err);
	if (rc < 0) {
		cdp_err_prefix(err, "spilling extent %" PRIu64 " of volume %" PRIu32, x.index,
			       x.volume);
		return rc;
	}
	al->spills++;
	leave(al, e);
	return 0;
}

/* ---- slot writes ------------------------------------------------------ */

static unsigned next_slot(const struct cdp_actlog *al)
{
	unsigned s = (al->last_slot + 1) % al->nslots;

	if (s == al->good_slot)
		s = (s + 1) % al->nslots;
	return s;
}

/* The slot image of the whole set with generation @gen; returns the bytes to write. */
static size_t fill_slot(struct cdp_actlog *al, uint64_t gen)
{
	uint8_t *p = al->buf + S_ENTRIES;
	uint32_t n = 0;
	size_t used;

	for (const struct ext *e = al->head; e; e = e->next, n++, p += AL_ENTRY) {
		cdp_put_le32(p, e->volume);
		cdp_put_le64(p + 4, e->index);
	}
	assert(n == al->nactive && n <= al->max_active);
	memcpy(al->buf + S_MAGIC, AL_SLOT_MAGIC, 4);
	cdp_put_le32(al->buf + S_COUNT, n);
	cdp_put_le64(al->buf + S_GEN, gen);
	used = S_ENTRIES + (size_t)n * AL_ENTRY;
	cdp_put_le32(al->buf + used, cdp_crc32c(0, al->buf, used));
	used = CDP_ALIGN_UP(used + 4, (size_t)CDP_IO_ALIGN);
	memset(p + 4, 0, used - (size_t)(p + 4 - al->buf));
	return used;
}

/* Writes and syncs one slot (mu held on entry and return, released during I/O). */
static int write_slot(struct cdp_actlog *al, struct cdp_err *err)
{
	uint64_t epoch = ++al->snap, gen = ++al->gen;
	unsigned slot = next_slot(al);
	uint64_t off = AL_HDR_SIZE + (uint64_t)slot * al->slot_size;
	size_t len = fill_slot(al, gen);
	int rc;

	al->writing = true;
	al->last_slot = slot;
	pthread_mutex_unlock(&al->mu);
	rc = cdp_io_pwrite(al->io, al->fd, al->buf, len, off);
	if (rc < 0) {
		cdp_err_sys(err, rc, "activity log: writing slot %u (generation %" PRIu64 ")",
			    slot, gen);
	} else {
		rc = cdp_io_fdatasync(al->io, al->fd);
		if (rc < 0)
			cdp_err_sys(err, rc,
				    "activity log: fdatasync of slot %u (generation %" PRIu64 ")",
				    slot, gen);
	}
	pthread_mutex_lock(&al->mu);
	al->writing = false;
	if (rc == 0) {
		al->done = epoch;
		al->good_slot = slot;
		al->log_writes++;
	}
	pthread_cond_broadcast(&al->cond);
	return rc;
}

/* Until a slot write >= @need completed: 0, or the error of our own attempt. */
static int commit(struct cdp_actlog *al, uint64_t need, struct cdp_err *err)
{
	while (al->done < need) {
		if (!al->writing) {
			int rc = write_slot(al, err);

			if (rc < 0)
				return rc;
			continue;
		}
		pthread_cond_wait(&al->cond, &al->mu);
	}
	return 0;
}

/* ---- the API ---------------------------------------------------------- */

/* Extents [*first, *last] of [off, off + len), or -EINVAL. */
static int extents_of(const struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len,
		      uint64_t *first, uint64_t *last, struct cdp_err *err)
{
	if (volume >= al->nvolumes)
		return cdp_err_set(err, -EINVAL, "activity log: volume %" PRIu32 " >= nvolumes %u",
				   volume, al->nvolumes);
	if (len == 0)
		return cdp_err_set(err, -EINVAL, "activity log: len 0 at offset %" PRIu64, off);
	if (off >= AL_RANGE_END || len > AL_RANGE_END - off)
		return cdp_err_set(err, -EINVAL,
				   "activity log: range offset %" PRIu64 " len %" PRIu64
				   " ends past 2^63", off, len);
	*first = off >> al->shift;
	*last = (off + len - 1) >> al->shift;
	if (*last - *first >= al->max_active)
		return cdp_err_set(err, -EINVAL,
				   "activity log: range offset %" PRIu64 " len %" PRIu64
				   " spans %" PRIu64 " extents > max_active %u",
				   off, len, *last - *first + 1, al->max_active);
	return 0;
}

int cdp_actlog_begin(struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len,
		     struct cdp_err *err)
{
	uint64_t first, last, stamp, need = 0;
	int rc;

	rc = extents_of(al, volume, off, len, &first, &last, err);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&al->mu);
	stamp = ++al->calls;
	for (uint64_t i = first; i <= last; i++) {
		struct ext *e = lookup(al, volume, i);

		if (e && !e->ghost) {
			lru_unlink(al, e);
		} else {
			if (al->nactive == al->max_active) {
				rc = make_room(al, stamp, err);
				if (rc < 0) {
					if (i > first)
						drop_inflight(al, volume, first, i - 1, false, 0);
					goto out;
				}
			}
			if (!e)
				e = hash_add(al, volume, i);
			e->ghost = false;
			e->need = al->snap + 1;
			al->nactive++;
		}
		lru_push(al, e);
		e->inflight++;
		e->stamp = stamp;
		need = CDP_MAX(need, e->need);
	}
	if (need > al->done)
		take_ahead(al, volume, first, last, stamp);
	rc = commit(al, need, err);
	if (rc < 0)
		drop_inflight(al, volume, first, last, false, 0);
out:
	pthread_mutex_unlock(&al->mu);
	return rc;
}

void cdp_actlog_note(struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len,
		     uint64_t seq)
{
	uint64_t first, last;

	if (extents_of(al, volume, off, len, &first, &last, NULL) < 0)
		return;
	pthread_mutex_lock(&al->mu);
	drop_inflight(al, volume, first, last, true, seq);
	pthread_mutex_unlock(&al->mu);
}

void cdp_actlog_settle(struct cdp_actlog *al, uint64_t safe_seq)
{
	pthread_mutex_lock(&al->mu);
	if (safe_seq > al->safe_seq)
		al->safe_seq = safe_seq;
	pthread_mutex_unlock(&al->mu);
}

size_t cdp_actlog_recovered(struct cdp_actlog *al, struct cdp_al_extent *out, size_t max)
{
	size_t n = CDP_MIN(max, al->nrec);

	if (n)
		memcpy(out, al->rec, n * sizeof(*out));
	return n;
}

int cdp_actlog_trim(struct cdp_actlog *al, struct cdp_err *err)
{
	struct ext *e, *prev;
	int rc;

	pthread_mutex_lock(&al->mu);
	for (e = al->tail; e; e = prev) {
		prev = e->prev;
		if (idle(al, e))
			leave(al, e);
	}
	rc = commit(al, al->snap + 1, err);
	pthread_mutex_unlock(&al->mu);
	return rc;
}

void cdp_actlog_recovered_done(struct cdp_actlog *al)
{
	pthread_mutex_lock(&al->mu);
	for (struct ext *e = al->head; e; e = e->next)
		e->recovered = false;
	pthread_mutex_unlock(&al->mu);
}

void cdp_actlog_stats(struct cdp_actlog *al, struct cdp_actlog_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&al->mu);
	st->active = al->nactive;
	st->max_active = al->max_active;
	for (const struct ext *e = al->head; e; e = e->next)
		st->busy += !idle(al, e);
	st->log_writes = al->log_writes;
	st->ahead = al->ahead;
	st->spills = al->spills;
	pthread_mutex_unlock(&al->mu);
}

/* ---- open and close --------------------------------------------------- */

static uint32_t slot_size_for(unsigned max_active)
{
	return CDP_ALIGN_UP(S_ENTRIES + max_active * AL_ENTRY + 4, CDP_IO_ALIGN);
}

/* The header of a log with @al's parameters, into @h (AL_HDR_SIZE bytes). */
static void fill_header(const struct cdp_actlog *al, uint8_t *h)
{
	memset(h, 0, AL_HDR_SIZE);
	memcpy(h + H_MAGIC, AL_MAGIC, 8);
	cdp_put_le32(h + H_VERSION, AL_VERSION);
	cdp_put_le32(h + H_HDR_SIZE, AL_HDR_SIZE);
	cdp_put_le32(h + H_NVOLUMES, al->nvolumes);
	cdp_put_le32(h + H_SHIFT, al->shift);
	cdp_put_le32(h + H_MAX_ACTIVE, al->max_active);
	cdp_put_le32(h + H_NSLOTS, AL_NSLOTS);
	cdp_put_le32(h + H_SLOT_SIZE, al->slot_size);
	cdp_put_le32(h + H_CRC, cdp_crc32c(0, h, H_CRC));
}

static int check_param(const char *field, uint32_t want, uint32_t have, struct cdp_err *err)
{
	if (want == have)
		return 0;
	return cdp_err_set(err, -EINVAL, "%s %" PRIu32 ", the log has %" PRIu32, field, want, have);
}

static int read_header(struct cdp_actlog *al, struct cdp_err *err)
{
	uint8_t *h = cdp_xaligned_alloc(CDP_IO_ALIGN, AL_HDR_SIZE);
	uint32_t crc, ver, hsize;
	long n;
	int rc;

	n = al->io->pread(al->io->ctx, al->fd, h, AL_HDR_SIZE, 0);
	if (n < 0) {
		rc = cdp_err_sys(err, (int)n, "reading the header");
		goto out;
	}
	rc = -EBADMSG;
	if (n < AL_HDR_SIZE) {
		cdp_err_set(err, rc, "header: %ld bytes, want %u", n, AL_HDR_SIZE);
		goto out;
	}
	if (memcmp(h + H_MAGIC, AL_MAGIC, 8)) {
		cdp_err_set(err, rc, "header: bad magic (not an activity log)");
		goto out;
	}
	crc = cdp_crc32c(0, h, H_CRC);
	if (crc != cdp_get_le32(h + H_CRC)) {
		cdp_err_set(err, rc, "header: crc32c %08" PRIx32 ", computed %08" PRIx32,
			    cdp_get_le32(h + H_CRC), crc);
		goto out;
	}
	ver = cdp_get_le32(h + H_VERSION);
	hsize = cdp_get_le32(h + H_HDR_SIZE);
	if (ver != AL_VERSION || hsize != AL_HDR_SIZE) {
		cdp_err_set(err, rc, "header: version %" PRIu32 " size %" PRIu32 ", want %u and %u",
			    ver, hsize, AL_VERSION, AL_HDR_SIZE);
		goto out;
	}
	rc = check_param("nvolumes", al->nvolumes, cdp_get_le32(h + H_NVOLUMES), err);
	if (rc == 0)
		rc = check_param("extent_shift", al->shift, cdp_get_le32(h + H_SHIFT), err);
	if (rc == 0)
		rc = check_param("max_active", al->max_active, cdp_get_le32(h + H_MAX_ACTIVE), err);
	if (rc < 0)
		goto out;
	al->nslots = cdp_get_le32(h + H_NSLOTS);
	rc = -EBADMSG;
	if (al->nslots < 2 || al->nslots > AL_MAX_SLOTS) {
		cdp_err_set(err, rc, "header: nslots %u not in 2..%u", al->nslots, AL_MAX_SLOTS);
		goto out;
	}
	if (cdp_get_le32(h + H_SLOT_SIZE) != al->slot_size) {
		cdp_err_set(err, rc, "header: slot_size %" PRIu32 ", want %" PRIu32 " for max_active %u",
			    cdp_get_le32(h + H_SLOT_SIZE), al->slot_size, al->max_active);
		goto out;
	}
	rc = 0;
out:
	free(h);
	return rc;
}

/* Reads slot @i into buf; its generation when valid, else 0. */
static int read_slot(struct cdp_actlog *al, unsigned i, uint64_t *gen, struct cdp_err *err)
{
	uint64_t off = AL_HDR_SIZE + (uint64_t)i * al->slot_size;
	long n = al->io->pread(al->io->ctx, al->fd, al->buf, al->slot_size, off);
	uint32_t count;
	size_t used;

	*gen = 0;
	if (n < 0)
		return cdp_err_sys(err, (int)n, "reading slot %u", i);
	memset(al->buf + n, 0, al->slot_size - (size_t)n);
	count = cdp_get_le32(al->buf + S_COUNT);
	if (memcmp(al->buf + S_MAGIC, AL_SLOT_MAGIC, 4) || count > al->max_active)
		return 0;
	used = S_ENTRIES + (size_t)count * AL_ENTRY;
	if (cdp_crc32c(0, al->buf, used) != cdp_get_le32(al->buf + used))
		return 0;
	*gen = cdp_get_le64(al->buf + S_GEN);
	return 0;
}

static int cmp_extent(const void *a, const void *b)
{
	const struct cdp_al_extent *x = a, *y = b;

	if (x->volume != y->volume)
		return x->volume < y->volume ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* The newest valid slot becomes the set (committed, recovered). */
static int load(struct cdp_actlog *al, struct cdp_err *err)
{
	unsigned best = al->nslots;
	uint64_t best_gen = 0, gen;
	uint32_t count;
	int rc;

	for (unsigned i = 0; i < al->nslots; i++) {
		rc = read_slot(al, i, &gen, err);
		if (rc < 0)
			return rc;
		if (gen > best_gen) {
			best_gen = gen;
			best = i;
		}
	}
	al->gen = best_gen;
	al->good_slot = best;
	al->last_slot = best < al->nslots ? best : al->nslots - 1;
	if (best == al->nslots)
		return 0;
	rc = read_slot(al, best, &gen, err);
	if (rc < 0)
		return rc;
	if (gen != best_gen)
		return cdp_err_set(err, -EIO, "slot %u changed while opening", best);
	count = cdp_get_le32(al->buf + S_COUNT);
	al->rec = cdp_xcalloc(count ? count : 1, sizeof(*al->rec));
	for (uint32_t k = 0; k < count; k++) {
		const uint8_t *p = al->buf + S_ENTRIES + (size_t)k * AL_ENTRY;
		uint32_t volume = cdp_get_le32(p);
		uint64_t index = cdp_get_le64(p + 4);
		struct ext *e;

		if (volume >= al->nvolumes || index > al->max_index)
			return cdp_err_set(err, -EBADMSG,
					   "slot %u (generation %" PRIu64 ") entry %" PRIu32
					   ": volume %" PRIu32 " extent %" PRIu64
					   " outside nvolumes %u, extent max %" PRIu64,
					   best, best_gen, k, volume, index, al->nvolumes,
					   al->max_index);
		if (lookup(al, volume, index))
			continue;
		e = hash_add(al, volume, index);
		e->recovered = true;
		lru_push(al, e);
		al->nactive++;
		al->rec[al->nrec++] = (struct cdp_al_extent){ volume, index };
	}
	qsort(al->rec, al->nrec, sizeof(*al->rec), cmp_extent);
	return 0;
}

static int check_opts(const struct cdp_actlog_opts *o, struct cdp_err *err)
{
	if (o->nvolumes < 1 || o->nvolumes > AL_MAX_VOLUMES)
		return cdp_err_set(err, -EINVAL, "nvolumes %u not in 1..%u", o->nvolumes,
				   AL_MAX_VOLUMES);
	if (o->extent_shift && (o->extent_shift < 16 || o->extent_shift > 30))
		return cdp_err_set(err, -EINVAL, "extent_shift %u not in 16..30", o->extent_shift);
	if (o->max_active > AL_MAX_ACTIVE)
		return cdp_err_set(err, -EINVAL, "max_active %u > %u", o->max_active,
				   AL_MAX_ACTIVE);
	return 0;
}

int cdp_actlog_open(const char *path, const struct cdp_actlog_opts *o, struct cdp_actlog **out,
		    struct cdp_err *err)
{
	struct cdp_actlog *al;
	size_t nb = 1;
	int rc;

	*out = NULL;
	rc = check_opts(o, err);
	if (rc < 0) {
		cdp_err_prefix(err, "activity log %s", path);
		return rc;
	}
	al = cdp_xcalloc(1, sizeof(*al));
	al->io = o->io ? o->io : cdp_io_real();
	al->fd = -1;
	al->nvolumes = o->nvolumes;
	al->shift = o->extent_shift ? o->extent_shift : 22;
	al->max_active = o->max_active ? o->max_active : 1024;
	al->nslots = AL_NSLOTS;
	al->slot_size = slot_size_for(al->max_active);
	al->max_index = (AL_RANGE_END - 1) >> al->shift;
	al->spill = o->spill;
	al->spill_arg = o->spill_arg;
	if (o->volume_sizes) {
		al->vol_extents = cdp_xcalloc(al->nvolumes, sizeof(*al->vol_extents));
		for (unsigned i = 0; i < al->nvolumes; i++)
			al->vol_extents[i] = (o->volume_sizes[i] + (1ull << al->shift) - 1) >>
					     al->shift;
	}
	al->buf = cdp_xaligned_alloc(CDP_IO_ALIGN, al->slot_size);
	memset(al->buf, 0, al->slot_size);
	while (nb < 2 * (size_t)al->max_active)
		nb <<= 1;
	al->hash = cdp_xcalloc(nb, sizeof(*al->hash));
	al->hmask = nb - 1;
	pthread_mutex_init(&al->mu, NULL);
	pthread_cond_init(&al->cond, NULL);

	/* A new log is created whole: header and zeroed slots, written aside, renamed. */
	{
		uint8_t *h = cdp_xaligned_alloc(CDP_IO_ALIGN, AL_HDR_SIZE);

		fill_header(al, h);
		rc = cdp_io_open_or_create(al->io, path, h, AL_HDR_SIZE,
					   AL_HDR_SIZE + (uint64_t)AL_NSLOTS * al->slot_size, err);
		free(h);
	}
	if (rc < 0)
		goto fail;
	al->fd = rc;
	rc = read_header(al, err);
	if (rc == 0)
		rc = load(al, err);
	if (rc < 0)
		goto fail;
	*out = al;
	return 0;
fail:
	cdp_actlog_close(al);
	cdp_err_prefix(err, "activity log %s", path);
	return rc;
}

void cdp_actlog_close(struct cdp_actlog *al)
{
	if (!al)
		return;
	if (al->fd >= 0)
		al->io->close(al->io->ctx, al->fd);
	for (size_t h = 0; h <= al->hmask; h++) {
		while (al->hash[h]) {
			struct ext *e = al->hash[h];

			al->hash[h] = e->hnext;
			free(e);
		}
	}
	free(al->hash);
	free(al->rec);
	free(al->vol_extents);
	free(al->buf);
	pthread_cond_destroy(&al->cond);
	pthread_mutex_destroy(&al->mu);
	free(al);
}
