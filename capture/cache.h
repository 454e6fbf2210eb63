/*
 * capture/cache - the agent's log cache: sealed segments, oldest first, kept
 * until the journal server acknowledges them (SPEC "Durability": the agent
 * frees its cache only on that ack), so that after a link cut or a journal
 * server restart exactly what it lacks is sent again.
 *
 * Bounded by max_bytes: a push that would pass it is refused (-ENOSPC) and
 * the splitter falls back to incremental mode. Entries are reference
 * counted: the link sends a segment's bytes in place (gRPC reads them until
 * it releases its reference), so an ack never frees bytes still on the wire.
 *
 * Each entry has a position (pos, increasing by one per push) that the link
 * uses as its send cursor; heartbeats carry no seq of their own, so seqs
 * cannot serve.
 *
 * Threads: any; one mutex, one condition variable for the link's wait.
 */
#ifndef CDP_CAPTURE_CACHE_H
#define CDP_CAPTURE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stdatomic.h>

#include "common/clock.h"
#include "storage/syncckpt.h"

struct cdp_cache;

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
	uint8_t *data;		/* header + body as sealed */
	size_t len;
	/* private */
	_Atomic unsigned refs;	/* the list's one + each holder's */
	struct cdp_cache_seg *next;
};

struct cdp_cache *cdp_cache_new(uint64_t max_bytes);
void cdp_cache_free(struct cdp_cache *c);

/*
 * Appends @s (malloc()ed, data too): on success the cache owns it. Returns 0,
 * or -ENOSPC when it would pass max_bytes: then the caller still owns @s
 * (cdp_cache_seg_free()) and must go to incremental mode.
 */
int cdp_cache_push(struct cdp_cache *c, struct cdp_cache_seg *s);
void cdp_cache_seg_free(struct cdp_cache_seg *s);

/*
 * The first entry with pos > @after (referenced: cdp_cache_put() it), waiting
 * up to @timeout_ns of the real monotonic clock for one; NULL on timeout or
 * after cdp_cache_wake().
 */
struct cdp_cache_seg *cdp_cache_next(struct cdp_cache *c, uint64_t after, int64_t timeout_ns);
void cdp_cache_get(struct cdp_cache_seg *s);
void cdp_cache_put(struct cdp_cache_seg *s);
/*
 * Waits up to @timeout_ns (real monotonic clock) until the cache holds at
 * most @max_used bytes; returns whether it does. Syncs use it so that their
 * records never fill the cache that CDP records need.
 */
bool cdp_cache_wait_room(struct cdp_cache *c, uint64_t max_used, int64_t timeout_ns);
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
 * Drops everything, calling @fn on each entry first (oldest first): the
 * splitter marks their ranges dirty when it falls back to incremental mode.
 */
void cdp_cache_drop_all(struct cdp_cache *c, void (*fn)(void *arg, const struct cdp_cache_seg *s),
			void *arg);

struct cdp_cache_stats {
	uint64_t bytes, segments;
	uint64_t first_seq;	/* of the oldest entry with records; 0 when none */
	uint64_t last_pos;	/* of the newest entry */
	uint64_t pushed, refused;
};
void cdp_cache_stats(struct cdp_cache *c, struct cdp_cache_stats *st);

#endif
