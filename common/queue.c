/*
 * common/queue - see queue.h.
 *
 * A ring of @capacity pointers under one mutex, with a condition variable for
 * "not empty" (consumers wait) and one for "not full" (producers wait), both on
 * CLOCK_MONOTONIC so a wall-clock step cannot stretch or cut a wait. A side
 * signals only when someone waits on the other side (the waiter counts are
 * guarded by mu too), so the uncontended path makes no futex calls. A deadline
 * is computed once per call, so spurious wake-ups never extend a wait.
 */
#include "common/queue.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"

struct cdp_queue {
	pthread_mutex_t mu;
	pthread_cond_t not_empty;	/* consumers wait on it */
	pthread_cond_t not_full;	/* producers wait on it */
	char *name;			/* immutable */
	size_t capacity;		/* immutable */
	void **slots;			/* [capacity]; guarded by mu */
	size_t head;			/* oldest item; guarded by mu */
	size_t depth;			/* guarded by mu */
	bool closed;			/* guarded by mu */
	unsigned waiting_producers;	/* guarded by mu */
	unsigned waiting_consumers;	/* guarded by mu */
	size_t high_water;		/* guarded by mu */
	uint64_t pushed, popped, full, timeouts;	/* guarded by mu */
};

static void check(int rc)
{
	if (rc)
		abort();	/* a pthread call on our own objects cannot fail but by a bug */
}

struct cdp_queue *cdp_queue_new(const char *name, size_t capacity)
{
	struct cdp_queue *q = cdp_xcalloc(1, sizeof(*q));
	pthread_condattr_t ca;

	assert(capacity >= 1 && capacity <= CDP_QUEUE_MAX_CAPACITY);
	check(pthread_mutex_init(&q->mu, NULL));
	check(pthread_condattr_init(&ca));
	check(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC));
	check(pthread_cond_init(&q->not_empty, &ca));
	check(pthread_cond_init(&q->not_full, &ca));
	pthread_condattr_destroy(&ca);
	q->name = cdp_xstrdup(name);
	q->capacity = capacity;
	q->slots = cdp_xcalloc(capacity, sizeof(*q->slots));
	return q;
}

void cdp_queue_free(struct cdp_queue *q)
{
	if (!q)
		return;
	assert(!q->waiting_producers && !q->waiting_consumers);
	pthread_cond_destroy(&q->not_empty);
	pthread_cond_destroy(&q->not_full);
	pthread_mutex_destroy(&q->mu);
	free(q->slots);
	free(q->name);
	free(q);
}

/*
 * Now + @timeout_ns on CLOCK_MONOTONIC. No overflow: INT64_MAX ns (what
 * CDP_QUEUE_UNTIL_CLOSED is) is 292 years, and the clock counts from boot.
 */
static struct timespec deadline(int64_t timeout_ns)
{
	struct timespec ts;
	int64_t sec = timeout_ns / 1000000000, nsec = timeout_ns % 1000000000;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += sec;
	ts.tv_nsec += nsec;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

/*
 * Waits on @cv until @ready() or the queue closes or the deadline passes.
 * Returns 0 when ready, -ECANCELED, or -ETIMEDOUT. Called with mu held.
 */
static int wait_for(struct cdp_queue *q, pthread_cond_t *cv, unsigned *waiters,
		    bool (*ready)(const struct cdp_queue *), int64_t timeout_ns)
{
	struct timespec until;
	int rc = 0;

	assert(timeout_ns >= 0);
	if (ready(q))
		return 0;
	if (q->closed)
		return -ECANCELED;
	if (timeout_ns == 0)
		return -ETIMEDOUT;
	until = deadline(timeout_ns);
	(*waiters)++;
	while (!ready(q) && !q->closed && rc != ETIMEDOUT) {
		rc = pthread_cond_timedwait(cv, &q->mu, &until);
		assert(rc == 0 || rc == ETIMEDOUT);
	}
	(*waiters)--;
	if (ready(q))
		return 0;
	return q->closed ? -ECANCELED : -ETIMEDOUT;
}

static bool has_room(const struct cdp_queue *q)
{
	return !q->closed && q->depth < q->capacity;
}

static bool has_item(const struct cdp_queue *q)
{
	return q->depth > 0;
}

int cdp_queue_push(struct cdp_queue *q, void *item, int64_t timeout_ns)
{
	int rc;

	check(pthread_mutex_lock(&q->mu));
	if (!q->closed && q->depth == q->capacity)
		q->full++;
	rc = wait_for(q, &q->not_full, &q->waiting_producers, has_room, timeout_ns);
	if (rc == 0) {
		q->slots[(q->head + q->depth) % q->capacity] = item;
		q->depth++;
		q->pushed++;
		if (q->depth > q->high_water)
			q->high_water = q->depth;
		if (q->waiting_consumers)
			check(pthread_cond_signal(&q->not_empty));
	} else if (rc == -ETIMEDOUT) {
		q->timeouts++;
	}
	check(pthread_mutex_unlock(&q->mu));
	return rc;
}

long cdp_queue_pop_batch(struct cdp_queue *q, void **items, size_t max, int64_t timeout_ns)
{
	size_t n;
	int rc;

	assert(max >= 1);
	check(pthread_mutex_lock(&q->mu));
	rc = wait_for(q, &q->not_empty, &q->waiting_consumers, has_item, timeout_ns);
	if (rc) {
		check(pthread_mutex_unlock(&q->mu));
		return rc;
	}
	n = CDP_MIN(max, q->depth);
	for (size_t i = 0; i < n; i++) {
		items[i] = q->slots[q->head];
		q->slots[q->head] = NULL;
		q->head = (q->head + 1) % q->capacity;
	}
	q->depth -= n;
	q->popped += n;
	if (q->waiting_producers) {
		if (n > 1)
			check(pthread_cond_broadcast(&q->not_full));
		else
			check(pthread_cond_signal(&q->not_full));
	}
	check(pthread_mutex_unlock(&q->mu));
	return (long)n;
}

int cdp_queue_pop(struct cdp_queue *q, void **item, int64_t timeout_ns)
{
	long n = cdp_queue_pop_batch(q, item, 1, timeout_ns);

	return n < 0 ? (int)n : 0;
}

void cdp_queue_close(struct cdp_queue *q)
{
	check(pthread_mutex_lock(&q->mu));
	q->closed = true;
	check(pthread_cond_broadcast(&q->not_empty));
	check(pthread_cond_broadcast(&q->not_full));
	check(pthread_mutex_unlock(&q->mu));
}

void cdp_queue_stats(struct cdp_queue *q, struct cdp_queue_stats *st)
{
	check(pthread_mutex_lock(&q->mu));
	*st = (struct cdp_queue_stats){
		.name = q->name,
		.capacity = q->capacity,
		.depth = q->depth,
		.high_water = q->high_water,
		.pushed = q->pushed,
		.popped = q->popped,
		.full = q->full,
		.timeouts = q->timeouts,
		.waiting_producers = q->waiting_producers,
		.waiting_consumers = q->waiting_consumers,
		.closed = q->closed,
	};
	check(pthread_mutex_unlock(&q->mu));
}

const char *cdp_queue_name(const struct cdp_queue *q)
{
	return q->name;
}
