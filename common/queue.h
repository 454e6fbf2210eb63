/*
 * common/queue - a bounded queue of pointers between named threads.
 *
 * Many producers push, one consumer pops (one at a time or in batches, for
 * group commit). It is named "producer>consumer" ("ingest>io"): the name is
 * what "queue full" warnings and metrics show.
 *
 * Owns: its ring of slots, never the items (whoever pops an item owns it; items
 * left at cdp_queue_free() are the caller's to drain first).
 * Invariants: 0 <= depth <= capacity; items leave in the order they entered
 * (FIFO across all producers, as serialised by the queue's lock); after
 * cdp_queue_close() no push succeeds, and pops drain what is left, then fail.
 * Threads: any number of producers and consumers (built for one consumer);
 * a mutex and two condition variables on CLOCK_MONOTONIC. No lock is held while
 * the caller does anything else.
 *
 * Every wait has a timeout, in nanoseconds: 0 tries once without waiting; a
 * negative timeout is a bug (asserted). CDP_QUEUE_UNTIL_CLOSED waits for as
 * long as it takes: for a worker whose shutdown is cdp_queue_close(). Waits use
 * the real monotonic clock (a kernel wait cannot follow a fake clock), so tests
 * use 0, or short real timeouts as upper bounds only.
 */
#ifndef CDP_COMMON_QUEUE_H
#define CDP_COMMON_QUEUE_H

#include <errno.h>	/* the -ETIMEDOUT and -ECANCELED returns */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Waits until there is an item (or room), or the queue is closed. */
#define CDP_QUEUE_UNTIL_CLOSED INT64_MAX
/* Largest capacity (slots are pointers: 128 MiB of them). */
#define CDP_QUEUE_MAX_CAPACITY (1u << 24)

struct cdp_queue;

struct cdp_queue_stats {
	const char *name;	/* valid until cdp_queue_free() */
	size_t capacity;
	size_t depth;		/* items in the queue now */
	size_t high_water;	/* the largest depth seen */
	uint64_t pushed;	/* items pushed, in total */
	uint64_t popped;	/* items popped, in total */
	uint64_t full;		/* pushes that found the queue full (and waited or failed) */
	uint64_t timeouts;	/* pushes that failed with -ETIMEDOUT */
	unsigned waiting_producers;	/* blocked in push now */
	unsigned waiting_consumers;	/* blocked in pop now */
	bool closed;
};

/*
 * Returns a new queue of @capacity (1..CDP_QUEUE_MAX_CAPACITY; asserted) named
 * @name (copied; "producer>consumer"). Free with cdp_queue_free(). Aborts on
 * out-of-memory like cdp_xmalloc().
 */
struct cdp_queue *cdp_queue_new(const char *name, size_t capacity);

/*
 * Frees @q (NULL: nothing). No thread may be inside a queue call; items still
 * queued are not freed (drain with cdp_queue_pop_batch() first).
 */
void cdp_queue_free(struct cdp_queue *q);

/*
 * Appends @item (any pointer, NULL too), waiting up to @timeout_ns for room.
 * Returns 0; -ETIMEDOUT if the queue stayed full; -ECANCELED once closed
 * (even with room). The item is not taken on failure.
 */
int cdp_queue_push(struct cdp_queue *q, void *item, int64_t timeout_ns);

/*
 * Takes the oldest item into *@item, waiting up to @timeout_ns for one.
 * Returns 0; -ETIMEDOUT if the queue stayed empty; -ECANCELED when the queue
 * is closed and empty.
 */
int cdp_queue_pop(struct cdp_queue *q, void **item, int64_t timeout_ns);

/*
 * Takes up to @max (>= 1) of the oldest items into @items, in order, waiting
 * up to @timeout_ns for the first one; it never waits for more. Returns the
 * count (>= 1), -ETIMEDOUT or -ECANCELED as cdp_queue_pop().
 */
long cdp_queue_pop_batch(struct cdp_queue *q, void **items, size_t max, int64_t timeout_ns);

/*
 * Closes @q: pushes fail from now on, pops drain what is left, and every
 * thread waiting in a push or pop wakes up. Idempotent.
 */
void cdp_queue_close(struct cdp_queue *q);

/* A consistent snapshot of @q's counters. */
void cdp_queue_stats(struct cdp_queue *q, struct cdp_queue_stats *st);

/* The queue's name, valid until cdp_queue_free(). */
const char *cdp_queue_name(const struct cdp_queue *q);

#endif
