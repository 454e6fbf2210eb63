/*
 * capture/cache - the agent's log cache: sealed segments, oldest first, kept
 * until the journal server acknowledges them (SPEC "Durability": the agent
 * frees its cache only on that ack), so that after a link cut or a journal
 * server restart exactly what it lacks is sent again.
 *
 * Bounded by max_bytes of memory: a push that would pass it goes to the
 * spill file when there is one (cdp_cache_spill_open()), else it is refused
 * (-ENOSPC) and the splitter falls back to incremental mode. Entries are
 * reference counted: the link sends a segment's bytes in place (gRPC reads
 * them until it releases its reference), so an ack never frees bytes still
 * on the wire.
 *
 * Spill file: scratch, not durable state (created empty, never synced; a
 * crash loses it with the memory, and the activity log and the dirty bitmap
 * cover that). A ring of spill_size bytes: a spilled entry keeps its
 * metadata in memory and its bytes at a ring position; acks free space at
 * the ring's tail (entries leave oldest first), so the file never grows
 * past spill_size. Entries stay where they were pushed (memory or file)
 * until acked: the order is the list's, whichever holds the bytes. Memory is
 * max_bytes of segments + ~200 bytes per entry + the spilled entries being
 * read at the moment (one per holder of cdp_cache_next()) + the spare
 * buffers (cdp_cache_spare()).
 *
 * Each entry has a position (pos, increasing by one per push) that the link
 * uses as its send cursor; heartbeats carry no seq of their own, so seqs
 * cannot serve.
 *
 * Threads: any; one mutex (memory work only), one condition variable for the
 * link's wait. Pushes are serialised by a second mutex held across the spill
 * write, drop_all calls by a third; reads of spilled bytes happen without
 * the first, the ring space they read pinned until they finish.
 */
#ifndef CDP_CAPTURE_CACHE_H
#define CDP_CAPTURE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stdatomic.h>

#include "common/clock.h"
#include "common/err.h"
#include "storage/segment.h"
#include "storage/syncckpt.h"

struct cdp_cache;
struct cdp_io;

struct cdp_cache_seg {
	uint64_t pos;
	uint64_t first_seq, last_seq;	/* last_seq = first_seq - 1 for a heartbeat */
	int64_t t_last;
	uint32_t nrecords;
	uint64_t max_wid;	/* the splitter's write id of its newest write */
	uint8_t digest[32];	/* its chain digest (from its header) */
	bool has_ckpt;		/* a full-sync checkpoint rides on it */
	uint64_t ckpt_sync_id, ckpt_offset;
	uint32_t ckpt_kind, ckpt_volume;
	/*
	 * Header + body as sealed. Holders (cdp_cache_next(), drop_all's fn)
	 * always see the bytes, except when reading a spilled entry back
	 * failed: then data is NULL and read_err the -errno.
	 */
	uint8_t *data;
	size_t len;
	/* data's allocation: CDP_CACHE_SPARE_CAP makes it reusable (cdp_cache_spare()) */
	size_t cap;
	int read_err;
	/* private */
	struct cdp_cache *owner;	/* set by the push */
	_Atomic unsigned refs;	/* the list's one + each holder's */
	bool spilled;		/* on the list: bytes in the spill file, data NULL */
	uint64_t spill_off;	/* ring position (bytes pushed to the spill before it) */
	struct cdp_cache_seg *next;
};

/* A cache of @max_bytes of memory (0: unbounded) and no spill file. */
struct cdp_cache *cdp_cache_new(uint64_t max_bytes);
/* Frees every entry, empties and closes the spill file. No holder may remain. */
void cdp_cache_free(struct cdp_cache *c);

/*
 * Gives @c a spill file of at most @size bytes at @path (created, or
 * truncated: its old contents mean nothing), through @io (NULL: plain
 * syscalls). Call once, before the first push. -errno with @err naming the
 * file: open failed, not a regular file, or @size 0 (-EINVAL).
 */
int cdp_cache_spill_open(struct cdp_cache *c, const char *path, uint64_t size,
			 const struct cdp_io *io, struct cdp_err *err);

/*
 * Appends @s (malloc()ed, data too): to memory when it fits max_bytes, else
 * to the spill file (its data is written there and freed). On success the
 * cache owns @s. -ENOSPC when neither has room, or the spill write failed
 * (any errno: the spill file is the cache, and full is what it is then);
 * @err says which ("log cache full: ...", with the spill file's name and
 * the error), the caller still owns @s (cdp_cache_seg_free()) and must go to
 * incremental mode. Nothing cached before is touched.
 */
int cdp_cache_push(struct cdp_cache *c, struct cdp_cache_seg *s, struct cdp_err *err);
void cdp_cache_seg_free(struct cdp_cache_seg *s);

/*
 * Buffers of CDP_CACHE_SPARE_CAP bytes (a sealer's spare, CDP_SEG_ENC_SPARE)
 * are not freed when their entry goes: the cache keeps CDP_CACHE_SPARES of
 * them and hands them back here, NULL when it has none. Their pages stay
 * resident: a seal into a fresh malloc() pays a page fault per 4 KiB (half
 * the cost of a full sync's seal, measured), and glibc gives 4 MiB blocks
 * back to the kernel as often as not.
 */
#define CDP_CACHE_SPARE_CAP CDP_SEG_ENC_SPARE
#define CDP_CACHE_SPARES 16	/* kept at most: 68 MiB */
uint8_t *cdp_cache_spare(struct cdp_cache *c);

/*
 * The first entry with pos > @after (referenced: cdp_cache_put() it), waiting
 * up to @timeout_ns of the real monotonic clock for one; NULL on timeout or
 * after cdp_cache_wake(). For a spilled entry, a copy not on the list whose
 * data (read from the file, no lock held) it owns: the last put frees both;
 * when the read fails its data is NULL and read_err says why.
 */
struct cdp_cache_seg *cdp_cache_next(struct cdp_cache *c, uint64_t after, int64_t timeout_ns);
void cdp_cache_get(struct cdp_cache_seg *s);
void cdp_cache_put(struct cdp_cache_seg *s);
/*
 * Waits up to @timeout_ns (real monotonic clock) until the cache holds at
 * most @max_used bytes in memory; returns whether it does. Syncs use it so
 * that their records never fill the cache that CDP records need (the spill
 * file is left to CDP records).
 */
bool cdp_cache_wait_room(struct cdp_cache *c, uint64_t max_used, int64_t timeout_ns);
/* The memory bound. */
uint64_t cdp_cache_max_bytes(const struct cdp_cache *c);

/* Wakes every waiter of cdp_cache_next() once. */
void cdp_cache_wake(struct cdp_cache *c);

/*
 * Drops entries the journal has made durable: the entry whose digest is
 * @digest and everything before it (heartbeats have no seq of their own, so
 * the digest says which one an ack is for). Without a digest (NULL), every
 * entry with records whose records are all <= @durable_seq and the
 * heartbeats before it. Returns the max_wid of the newest entry dropped (0
 * if none).
 */
uint64_t cdp_cache_ack(struct cdp_cache *c, uint64_t durable_seq, const uint8_t *digest);

/*
 * The full-sync checkpoint of the newest entry cdp_cache_ack() dropped that
 * carried one (the journal has every block before it): true with *@out
 * filled, false while none was acknowledged. Entries dropped otherwise
 * (cdp_cache_drop_all()) never count.
 */
bool cdp_cache_acked_ckpt(struct cdp_cache *c, struct cdp_syncckpt *out);

/* The chain digest the oldest entry follows (its predecessor's, once dropped). */
void cdp_cache_set_base(struct cdp_cache *c, const uint8_t digest[32]);

/*
 * Where to resend from after the journal said its chain ends at @digest:
 * 0 with *@after = the position to send after (every later entry is
 * missing there), or -ENOENT when no cached entry nor the base has that
 * digest (the cache cannot bridge the journal's gap).
 */
int cdp_cache_resume(struct cdp_cache *c, const uint8_t digest[32], uint64_t *after);

/*
 * Drops everything, calling @fn on each entry first (oldest first, no lock
 * held, spilled ones read back: data NULL and read_err set if that failed;
 * @s is valid during the call): the splitter marks their ranges dirty when
 * it falls back to incremental mode.
 */
void cdp_cache_drop_all(struct cdp_cache *c, void (*fn)(void *arg, const struct cdp_cache_seg *s),
			void *arg);

struct cdp_cache_stats {
	uint64_t bytes, segments;	/* everything cached, memory and spill file */
	uint64_t spilled_bytes, spilled_segments;	/* the part in the spill file */
	uint64_t first_seq;	/* of the oldest entry with records; 0 when none */
	uint64_t last_pos;	/* of the newest entry */
	uint64_t pushed, refused;
};
void cdp_cache_stats(struct cdp_cache *c, struct cdp_cache_stats *st);

#endif
