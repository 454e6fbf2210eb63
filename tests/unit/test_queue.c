/*
 * Unit tests of common/queue: FIFO order, the bound, batches, close waking
 * both sides, timeouts, and many producers into one consumer (each item
 * exactly once). Labelled "threaded" so tools/test --tsan runs it.
 *
 * Nothing here sleeps to wait for another thread: a test that needs a thread
 * blocked inside the queue polls the queue's waiter counts (with a deadline),
 * and real timeouts are only upper bounds.
 */
#include "tests/unit/testutil.h"

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#include "common/queue.h"
#include "common/util.h"

#define SEC INT64_C(1000000000)
#define MSEC INT64_C(1000000)
/*
 * How long a thread may take to reach a wait, or to return once woken: upper
 * bounds, never slept. Blocked threads themselves wait far longer (60 s or
 * until closed), so a lost wake-up fails the test instead of passing late.
 */
#define REACH_DEADLINE (30 * SEC)
#define WAKE_DEADLINE (10 * SEC)

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void *item(uintptr_t v)
{
	return (void *)v;
}

/* Spins (yielding) until @q has @producers and @consumers waiting, or fails. */
static void wait_for_waiters(struct cdp_queue *q, unsigned producers, unsigned consumers)
{
	int64_t until = mono_ns() + REACH_DEADLINE;
	struct cdp_queue_stats st;

	for (;;) {
		cdp_queue_stats(q, &st);
		if (st.waiting_producers == producers && st.waiting_consumers == consumers)
			return;
		if (mono_ns() > until)
			fail_msg("waiters: %u producers, %u consumers; want %u and %u",
				 st.waiting_producers, st.waiting_consumers, producers, consumers);
		sched_yield();
	}
}

static void test_fifo_order_and_name(void **state)
{
	struct cdp_queue *q = cdp_queue_new("ingest>io", 8);
	void *p;

	assert_string_equal(cdp_queue_name(q), "ingest>io");
	/* Several laps around the ring, with the depth varying. */
	for (uintptr_t lap = 0; lap < 5; lap++) {
		for (uintptr_t i = 1; i <= 5 + lap % 3; i++)
			assert_int_equal(cdp_queue_push(q, item(lap * 100 + i), 0), 0);
		for (uintptr_t i = 1; i <= 5 + lap % 3; i++) {
			assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
			assert_ptr_equal(p, item(lap * 100 + i));
		}
	}
	assert_int_equal(cdp_queue_push(q, NULL, 0), 0);	/* NULL is an item like any */
	p = item(1);
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
	assert_null(p);
	cdp_queue_free(q);
	cdp_queue_free(NULL);
}

static void test_push_fails_when_full_and_counts_it(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 4);
	struct cdp_queue_stats st;
	int64_t t0;
	void *p;

	for (uintptr_t i = 0; i < 4; i++)
		assert_int_equal(cdp_queue_push(q, item(i), 0), 0);
	assert_int_equal(cdp_queue_push(q, item(9), 0), -ETIMEDOUT);
	t0 = mono_ns();
	assert_int_equal(cdp_queue_push(q, item(9), 2 * MSEC), -ETIMEDOUT);
	assert_true(mono_ns() - t0 >= 2 * MSEC);	/* it did wait the whole timeout */
	cdp_queue_stats(q, &st);
	assert_string_equal(st.name, "a>b");
	assert_int_equal(st.capacity, 4);
	assert_int_equal(st.depth, 4);
	assert_int_equal(st.high_water, 4);
	assert_int_equal(st.pushed, 4);
	assert_int_equal(st.full, 2);
	assert_int_equal(st.timeouts, 2);
	/* Room again: the failed items were never queued. */
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
	assert_ptr_equal(p, item(0));
	assert_int_equal(cdp_queue_push(q, item(4), 0), 0);
	for (uintptr_t i = 1; i <= 4; i++) {
		assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
		assert_ptr_equal(p, item(i));
	}
	cdp_queue_stats(q, &st);
	assert_int_equal(st.depth, 0);
	assert_int_equal(st.popped, 5);
	cdp_queue_free(q);
}

static void test_pop_times_out_when_empty(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 2);
	void *items[2], *p = item(7);
	int64_t t0;

	assert_int_equal(cdp_queue_pop(q, &p, 0), -ETIMEDOUT);
	assert_ptr_equal(p, item(7));
	t0 = mono_ns();
	assert_int_equal(cdp_queue_pop_batch(q, items, 2, 3 * MSEC), -ETIMEDOUT);
	assert_true(mono_ns() - t0 >= 3 * MSEC);
	cdp_queue_free(q);
}

static void test_pop_batch_takes_what_is_there_in_order(void **state)
{
	struct cdp_queue *q = cdp_queue_new("ingest>io", 16);
	void *items[16];
	struct cdp_queue_stats st;

	for (uintptr_t i = 0; i < 10; i++)
		assert_int_equal(cdp_queue_push(q, item(i), 0), 0);
	assert_int_equal(cdp_queue_pop_batch(q, items, 4, 0), 4);
	for (uintptr_t i = 0; i < 4; i++)
		assert_ptr_equal(items[i], item(i));
	/* Wrap the ring: 6 left at slots 4..9, add 8 more (slots 10..15, 0, 1). */
	for (uintptr_t i = 10; i < 18; i++)
		assert_int_equal(cdp_queue_push(q, item(i), 0), 0);
	assert_int_equal(cdp_queue_pop_batch(q, items, 16, 0), 14);
	for (uintptr_t i = 0; i < 14; i++)
		assert_ptr_equal(items[i], item(i + 4));
	assert_int_equal(cdp_queue_pop_batch(q, items, 16, 0), -ETIMEDOUT);
	cdp_queue_stats(q, &st);
	assert_int_equal(st.high_water, 14);
	assert_int_equal(st.pushed, 18);
	assert_int_equal(st.popped, 18);
	cdp_queue_free(q);
}

static void test_close_drains_then_cancels(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 4);
	struct cdp_queue_stats st;
	void *items[4], *p;

	assert_int_equal(cdp_queue_push(q, item(1), 0), 0);
	assert_int_equal(cdp_queue_push(q, item(2), 0), 0);
	assert_int_equal(cdp_queue_push(q, item(3), 0), 0);
	cdp_queue_close(q);
	cdp_queue_close(q);	/* idempotent */
	assert_int_equal(cdp_queue_push(q, item(4), 0), -ECANCELED);
	assert_int_equal(cdp_queue_push(q, item(4), SEC), -ECANCELED);
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
	assert_ptr_equal(p, item(1));
	assert_int_equal(cdp_queue_pop_batch(q, items, 4, SEC), 2);
	assert_ptr_equal(items[0], item(2));
	assert_ptr_equal(items[1], item(3));
	assert_int_equal(cdp_queue_pop(q, &p, 0), -ECANCELED);
	assert_int_equal(cdp_queue_pop(q, &p, CDP_QUEUE_UNTIL_CLOSED), -ECANCELED);
	cdp_queue_stats(q, &st);
	assert_true(st.closed);
	assert_int_equal(st.full, 0);	/* pushes refused by close are not "full" */
	cdp_queue_free(q);
}

/* One queue call made by a thread of its own. */
struct call {
	struct cdp_queue *q;
	int64_t timeout;
	void *item;
	int rc;
	pthread_t t;
	atomic_bool done;
};

static void *pop_thread(void *arg)
{
	struct call *c = arg;

	c->rc = cdp_queue_pop(c->q, &c->item, c->timeout);
	atomic_store(&c->done, true);
	return NULL;
}

static void *push_thread(void *arg)
{
	struct call *c = arg;

	c->rc = cdp_queue_push(c->q, c->item, c->timeout);
	atomic_store(&c->done, true);
	return NULL;
}

/*
 * Joins @c's thread, which something has just woken. If it is still blocked
 * WAKE_DEADLINE later, the wake-up was lost: close the queue (so the thread
 * ends and nothing dangles) and fail.
 */
static void join_woken(struct call *c, const char *what)
{
	int64_t until = mono_ns() + WAKE_DEADLINE;

	while (!atomic_load(&c->done) && mono_ns() < until)
		sched_yield();
	if (!atomic_load(&c->done)) {
		cdp_queue_close(c->q);
		pthread_join(c->t, NULL);
		fail_msg("%s: still blocked %d s after its wake-up", what,
			 (int)(WAKE_DEADLINE / SEC));
	}
	assert_int_equal(pthread_join(c->t, NULL), 0);
}

static void test_close_wakes_a_blocked_pop(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 2);
	struct call c = { .q = q, .timeout = CDP_QUEUE_UNTIL_CLOSED, .rc = 1 };

	assert_int_equal(pthread_create(&c.t, NULL, pop_thread, &c), 0);
	wait_for_waiters(q, 0, 1);
	cdp_queue_close(q);
	join_woken(&c, "pop after close");
	assert_int_equal(c.rc, -ECANCELED);
	cdp_queue_free(q);
}

static void test_close_wakes_a_blocked_push(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 1);
	struct call c = { .q = q, .timeout = 60 * SEC, .item = item(2), .rc = 1 };
	void *p;

	assert_int_equal(cdp_queue_push(q, item(1), 0), 0);
	assert_int_equal(pthread_create(&c.t, NULL, push_thread, &c), 0);
	wait_for_waiters(q, 1, 0);
	cdp_queue_close(q);
	join_woken(&c, "push after close");
	assert_int_equal(c.rc, -ECANCELED);
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);	/* the queued item survives */
	assert_ptr_equal(p, item(1));
	assert_int_equal(cdp_queue_pop(q, &p, 0), -ECANCELED);
	cdp_queue_free(q);
}

static void test_blocked_push_and_pop_complete_when_the_other_side_moves(void **state)
{
	struct cdp_queue *q = cdp_queue_new("a>b", 1);
	struct call push = { .q = q, .timeout = 60 * SEC, .item = item(2), .rc = 1 };
	struct call pop = { .q = q, .timeout = 60 * SEC, .rc = 1 };
	struct cdp_queue_stats st;
	void *p;

	/* A push blocked on a full queue goes in when the consumer takes one. */
	assert_int_equal(cdp_queue_push(q, item(1), 0), 0);
	assert_int_equal(pthread_create(&push.t, NULL, push_thread, &push), 0);
	wait_for_waiters(q, 1, 0);
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
	assert_ptr_equal(p, item(1));
	join_woken(&push, "push after a pop made room");
	assert_int_equal(push.rc, 0);
	assert_int_equal(cdp_queue_pop(q, &p, 0), 0);
	assert_ptr_equal(p, item(2));

	/* A pop blocked on an empty queue gets the next push. */
	assert_int_equal(pthread_create(&pop.t, NULL, pop_thread, &pop), 0);
	wait_for_waiters(q, 0, 1);
	assert_int_equal(cdp_queue_push(q, item(3), 0), 0);
	join_woken(&pop, "pop after a push");
	assert_int_equal(pop.rc, 0);
	assert_ptr_equal(pop.item, item(3));
	cdp_queue_stats(q, &st);
	assert_int_equal(st.full, 1);
	assert_int_equal(st.timeouts, 0);
	assert_int_equal(st.waiting_producers + st.waiting_consumers, 0);
	cdp_queue_free(q);
}

/* Many producers, one consumer: every item arrives once, each producer's in order. */

#define PRODUCERS 4

struct producer {
	struct cdp_queue *q;
	uintptr_t id;
	uintptr_t n;
	int failures;
};

static void *produce(void *arg)
{
	struct producer *pr = arg;

	for (uintptr_t i = 0; i < pr->n; i++)
		if (cdp_queue_push(pr->q, item((pr->id << 32) | (i + 1)), 60 * SEC))
			pr->failures++;
	return NULL;
}

static void test_many_producers_one_consumer_deliver_each_item_once(void **state)
{
	uintptr_t n = (uintptr_t)cdp_test_rounds(50000, 5000, 500000);
	struct cdp_queue *q = cdp_queue_new("ingest>io", 64);
	struct producer prs[PRODUCERS];
	pthread_t ts[PRODUCERS];
	uintptr_t next[PRODUCERS] = { 0 };
	uint64_t got = 0, batches = 0;
	struct cdp_queue_stats st;
	void *items[32];

	for (uintptr_t i = 0; i < PRODUCERS; i++) {
		prs[i] = (struct producer){ q, i, n, 0 };
		assert_int_equal(pthread_create(&ts[i], NULL, produce, &prs[i]), 0);
	}
	while (got < PRODUCERS * (uint64_t)n) {
		long k = cdp_queue_pop_batch(q, items, CDP_ARRAY_SIZE(items), 60 * SEC);

		if (k < 0)
			fail_msg("pop_batch: %ld after %" PRIu64 " items", k, got);
		batches++;
		for (long j = 0; j < k; j++) {
			uintptr_t v = (uintptr_t)items[j], id = v >> 32, seq = v & 0xffffffffu;

			assert_true(id < PRODUCERS);
			if (seq != next[id] + 1)	/* a gap, a repeat or a reorder */
				fail_msg("producer %" PRIuPTR ": item %" PRIuPTR " after %" PRIuPTR,
					 id, seq, next[id]);
			next[id] = seq;
		}
		got += (uint64_t)k;
	}
	for (int i = 0; i < PRODUCERS; i++) {
		assert_int_equal(pthread_join(ts[i], NULL), 0);
		assert_int_equal(prs[i].failures, 0);
		assert_int_equal(next[i], n);
	}
	assert_int_equal(cdp_queue_pop_batch(q, items, 1, 0), -ETIMEDOUT);	/* nothing extra */
	cdp_queue_stats(q, &st);
	assert_int_equal(st.pushed, PRODUCERS * (uint64_t)n);
	assert_int_equal(st.popped, PRODUCERS * (uint64_t)n);
	assert_true(st.high_water <= 64);
	assert_true(batches <= got);
	cdp_queue_free(q);
}

/* Several consumers too (the queue allows it): nothing lost or doubled. */
struct consumer {
	struct cdp_queue *q;
	uint64_t count, sum;
};

static void *consume(void *arg)
{
	struct consumer *c = arg;
	void *items[8];
	long k;

	while ((k = cdp_queue_pop_batch(c->q, items, 8, 60 * SEC)) > 0)
		for (long j = 0; j < k; j++) {
			c->count++;
			c->sum += (uintptr_t)items[j];
		}
	return k == -ECANCELED ? NULL : (void *)1;
}

static void test_close_after_producers_lets_consumers_drain_everything(void **state)
{
	uintptr_t n = (uintptr_t)cdp_test_rounds(20000, 2000, 200000);
	struct cdp_queue *q = cdp_queue_new("a>b", 16);
	struct producer prs[PRODUCERS];
	struct consumer cs[2] = { { q, 0, 0 }, { q, 0, 0 } };
	pthread_t pt[PRODUCERS], ct[2];
	uint64_t count = 0, sum = 0, want = 0;
	void *ret;

	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&ct[i], NULL, consume, &cs[i]), 0);
	for (uintptr_t i = 0; i < PRODUCERS; i++) {
		prs[i] = (struct producer){ q, i, n, 0 };
		assert_int_equal(pthread_create(&pt[i], NULL, produce, &prs[i]), 0);
	}
	for (int i = 0; i < PRODUCERS; i++) {
		assert_int_equal(pthread_join(pt[i], NULL), 0);
		assert_int_equal(prs[i].failures, 0);
	}
	cdp_queue_close(q);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_join(ct[i], &ret), 0);
		assert_null(ret);	/* ended by close, not by a timeout */
		count += cs[i].count;
		sum += cs[i].sum;
	}
	for (uintptr_t id = 0; id < PRODUCERS; id++)
		for (uintptr_t i = 1; i <= n; i++)
			want += (id << 32) | i;
	assert_int_equal(count, PRODUCERS * (uint64_t)n);
	assert_int_equal(sum, want);
	cdp_queue_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fifo_order_and_name),
		cmocka_unit_test(test_push_fails_when_full_and_counts_it),
		cmocka_unit_test(test_pop_times_out_when_empty),
		cmocka_unit_test(test_pop_batch_takes_what_is_there_in_order),
		cmocka_unit_test(test_close_drains_then_cancels),
		cmocka_unit_test(test_close_wakes_a_blocked_pop),
		cmocka_unit_test(test_close_wakes_a_blocked_push),
		cmocka_unit_test(test_blocked_push_and_pop_complete_when_the_other_side_moves),
		cmocka_unit_test(test_many_producers_one_consumer_deliver_each_item_once),
		cmocka_unit_test(test_close_after_producers_lets_consumers_drain_everything),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
