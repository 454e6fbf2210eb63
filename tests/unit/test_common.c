/*
 * Unit tests of common/: err, clock, fault points, buf, log rate limit,
 * little-endian helpers, named threads.
 */
#include "tests/unit/testutil.h"

#include <errno.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"

static void test_err_set_prefix_and_null(void **state)
{
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	rc = cdp_err_set(&err, -EBADMSG, "raw_len %u > %u", 9u, 4u);
	assert_int_equal(rc, -EBADMSG);
	assert_string_equal(err.msg, "raw_len 9 > 4");
	assert_int_equal(cdp_err_prefix(&err, "segment %d", 7), -EBADMSG);
	assert_string_equal(err.msg, "segment 7: raw_len 9 > 4");
	assert_int_equal(cdp_err_set(NULL, -EIO, "ignored"), -EIO);
	cdp_err_sys(&err, -ENOSPC, "write %s", "x.ext");
	assert_string_equal(err.msg, "write x.ext: No space left on device");
	cdp_err_clear(&err);
	assert_int_equal(err.code, 0);
	assert_string_equal(cdp_err_msg(&err), "");
}

static void test_err_truncates_long_messages(void **state)
{
	struct cdp_err err;
	char big[600];

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	cdp_err_set(&err, -EINVAL, "%s", big);
	assert_int_equal(strlen(err.msg), CDP_ERR_MSG_MAX - 1);
	cdp_err_prefix(&err, "ctx");
	assert_int_equal(strlen(err.msg), CDP_ERR_MSG_MAX - 1);
	assert_memory_equal(err.msg, "ctx: aaa", 8);
}

static void test_fake_clock_moves_only_when_told(void **state)
{
	struct cdp_clock c;

	cdp_clock_fake_init(&c, 1000 * CDP_NS_PER_SEC, 5);
	assert_int_equal(cdp_clock_wall_ns(&c), 1000 * CDP_NS_PER_SEC);
	assert_int_equal(cdp_clock_mono_ns(&c), 5);
	cdp_clock_fake_advance(&c, 10);
	assert_int_equal(cdp_clock_mono_ns(&c), 15);
	assert_int_equal(cdp_clock_wall_ns(&c), 1000 * CDP_NS_PER_SEC + 10);
	cdp_clock_fake_advance(&c, -3);	/* time never runs backwards */
	assert_int_equal(cdp_clock_mono_ns(&c), 15);
}

static void test_stamp_clock_ignores_wall_steps(void **state)
{
	struct cdp_clock c;
	struct cdp_stamp_clock s;
	int64_t a, b, d;

	cdp_clock_fake_init(&c, 1700000000 * CDP_NS_PER_SEC, 42);
	cdp_stamp_clock_init(&s, &c);
	a = cdp_stamp_clock_now(&s);
	assert_int_equal(a, 1700000000 * CDP_NS_PER_SEC);
	cdp_clock_fake_step_wall(&c, -3600 * CDP_NS_PER_SEC);	/* NTP steps back an hour */
	cdp_clock_fake_advance(&c, CDP_NS_PER_SEC);
	b = cdp_stamp_clock_now(&s);
	assert_int_equal(b - a, CDP_NS_PER_SEC);
	cdp_clock_fake_step_wall(&c, 7200 * CDP_NS_PER_SEC);	/* and forward */
	d = cdp_stamp_clock_now(&s);
	assert_int_equal(d, b);
}

static void test_real_clock_is_monotonic(void **state)
{
	struct cdp_clock *c = cdp_clock_real();
	int64_t a = cdp_clock_mono_ns(c), b = cdp_clock_mono_ns(c);

	assert_true(b >= a);
	assert_true(cdp_clock_wall_ns(c) > 1600000000 * CDP_NS_PER_SEC);
}

static void test_time_format_rfc3339(void **state)
{
	char buf[40];

	assert_string_equal(cdp_time_format(0, buf, sizeof(buf)), "1970-01-01T00:00:00.000Z");
	assert_string_equal(cdp_time_format(1700000000123456789, buf, sizeof(buf)),
			    "2023-11-14T22:13:20.123Z");
}

static void test_fault_fails_exactly_the_nth_hit(void **state)
{
	cdp_fault_reset();
	assert_false(cdp_fault_point("t.x"));	/* unarmed: never */
	cdp_fault_arm("t.x", 3, false);
	assert_false(cdp_fault_point("t.x"));
	assert_false(cdp_fault_point("t.x"));
	assert_false(cdp_fault_fired("t.x"));
	assert_true(cdp_fault_point("t.x"));
	assert_true(cdp_fault_fired("t.x"));
	assert_false(cdp_fault_point("t.x"));
	assert_false(cdp_fault_point("t.other"));
	cdp_fault_arm("t.y", 2, true);
	assert_false(cdp_fault_point("t.y"));
	assert_true(cdp_fault_point("t.y"));
	assert_true(cdp_fault_point("t.y"));	/* sticky */
	cdp_fault_reset();
	assert_false(cdp_fault_point("t.y"));
}

static void test_fault_env_parsing(void **state)
{
	cdp_fault_reset();
	setenv("CDP_FAULT", "a.b:2,c.d:1:sticky", 1);
	assert_int_equal(cdp_fault_arm_from_env(), 0);
	assert_false(cdp_fault_point("a.b"));
	assert_true(cdp_fault_point("a.b"));
	assert_true(cdp_fault_point("c.d"));
	assert_true(cdp_fault_point("c.d"));
	setenv("CDP_FAULT", "nocolon", 1);
	assert_int_equal(cdp_fault_arm_from_env(), -EINVAL);
	setenv("CDP_FAULT", "x:12junk", 1);
	assert_int_equal(cdp_fault_arm_from_env(), -EINVAL);
	setenv("CDP_FAULT", "x:", 1);
	assert_int_equal(cdp_fault_arm_from_env(), -EINVAL);
	unsetenv("CDP_FAULT");
	cdp_fault_reset();
}

struct hit_arg {
	int fired;
};

static void *hit_many(void *p)
{
	struct hit_arg *a = p;

	for (int i = 0; i < 10000; i++)
		if (cdp_fault_point("t.race"))
			a->fired++;
	return NULL;
}

static void test_fault_counts_hits_across_threads(void **state)
{
	struct hit_arg a[4] = { { 0 } };
	pthread_t t[4];
	int total = 0;

	cdp_fault_reset();
	cdp_fault_arm("t.race", 25000, false);
	for (int i = 0; i < 4; i++)
		assert_int_equal(cdp_thread_start(&t[i], "hit", hit_many, &a[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += a[i].fired;
	}
	assert_int_equal(total, 1);
	cdp_fault_reset();
}

static void test_buf_grows_and_moves(void **state)
{
	struct cdp_buf a = CDP_BUF_INIT, b = CDP_BUF_INIT;
	uint8_t *z;

	for (int i = 0; i < 1000; i++)
		cdp_buf_append(&a, "xy", 2);
	assert_int_equal(a.len, 2000);
	assert_memory_equal(a.data + 1998, "xy", 2);
	z = cdp_buf_append_zero(&a, 10);
	assert_int_equal(z[9], 0);
	assert_int_equal(a.len, 2010);
	cdp_buf_move(&b, &a);
	assert_null(a.data);
	assert_int_equal(b.len, 2010);
	cdp_buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_true(b.cap >= 2010);
	cdp_buf_release(&b);
	cdp_buf_release(&a);
}

/* Exact reservations do not double; a shrink keeps the bytes and gives back the rest. */
static void test_buf_exact_and_shrink(void **state)
{
	struct cdp_buf a = CDP_BUF_INIT;

	(void)state;
	cdp_buf_reserve_exact(&a, 1000);
	assert_int_equal(a.cap, 1000);
	cdp_buf_append(&a, "abc", 3);
	cdp_buf_reserve_exact(&a, 997);		/* fits: unchanged */
	assert_int_equal(a.cap, 1000);
	cdp_buf_reserve_exact(&a, 1000);	/* len 3 + 1000, not 2000 */
	assert_int_equal(a.cap, 1003);
	assert_memory_equal(a.data, "abc", 3);
	cdp_buf_shrink(&a);
	assert_int_equal(a.cap, 3);
	assert_int_equal(a.len, 3);
	assert_memory_equal(a.data, "abc", 3);
	cdp_buf_reset(&a);
	cdp_buf_shrink(&a);			/* empty: released */
	assert_null(a.data);
	assert_int_equal(a.cap, 0);
	cdp_buf_shrink(&a);			/* nothing to do */
	cdp_buf_release(&a);
}

static void test_ratelimit_bursts_then_suppresses(void **state)
{
	struct cdp_ratelimit rl = { .interval_ns = CDP_NS_PER_SEC, .burst = 2 };

	assert_true(cdp_ratelimit_ok(&rl, 0));
	assert_true(cdp_ratelimit_ok(&rl, 1));
	assert_false(cdp_ratelimit_ok(&rl, 2));
	assert_int_equal(rl.suppressed, 1);
	assert_true(cdp_ratelimit_ok(&rl, CDP_NS_PER_SEC));
}

static void test_log_debug_modules(void **state)
{
	cdp_log_set_debug("journal,segment");
	assert_true(cdp_log_debug_enabled("journal"));
	assert_true(cdp_log_debug_enabled("segment"));
	assert_false(cdp_log_debug_enabled("jour"));
	cdp_log_set_debug("all");
	assert_true(cdp_log_debug_enabled("anything"));
	cdp_log_set_debug("");
	assert_false(cdp_log_debug_enabled("journal"));
	cdp_log_set_level(CDP_LOG_WARN);
	assert_false(cdp_log_enabled(CDP_LOG_INFO));
	assert_true(cdp_log_enabled(CDP_LOG_ERR));
	cdp_log_set_level(CDP_LOG_INFO);
}

static void test_le_helpers_round_trip(void **state)
{
	uint8_t b[8];

	cdp_put_le64(b, 0x0102030405060708ull);
	assert_int_equal(b[0], 0x08);
	assert_int_equal(b[7], 0x01);
	assert_int_equal(cdp_get_le64(b), 0x0102030405060708ull);
	cdp_put_le32(b, 0xdeadbeef);
	assert_int_equal(cdp_get_le32(b), 0xdeadbeef);
	assert_int_equal(cdp_get_le16(b), 0xbeef);
}

static void *name_of_thread(void *p)
{
	prctl(PR_GET_NAME, (char *)p, 0, 0, 0);
	return NULL;
}

/* cdp_thread_try_nice() tries and undoes: the thread's nice value is as before. */
static void *try_nice_main(void *arg)
{
	int was, rc;

	(void)arg;
	assert_int_equal(cdp_thread_set_nice(5), 0);
	was = getpriority(PRIO_PROCESS, (id_t)gettid());
	assert_int_equal(was, 5);
	assert_int_equal(cdp_thread_try_nice(8), 0);	/* raising: always */
	assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid()), 5);
	rc = cdp_thread_try_nice(2);
	if (geteuid() == 0)	/* CAP_SYS_NICE */
		assert_int_equal(rc, 0);
	else
		assert_true(rc == 0 || rc == -EACCES || rc == -EPERM);
	assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid()), 5);
	assert_int_equal(cdp_thread_may_raise(), rc == 0);
	assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid()), 5);
	return NULL;
}

static void test_thread_try_nice_leaves_it_unchanged(void **state)
{
	pthread_t t;

	(void)state;
	assert_int_equal(pthread_create(&t, NULL, try_nice_main, NULL), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
}

static void test_thread_gets_its_name(void **state)
{
	char name[17] = "";
	pthread_t t;

	assert_int_equal(cdp_thread_start(&t, "ingest/0", name_of_thread, name), 0);
	pthread_join(t, NULL);
	assert_string_equal(name, "ingest/0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_err_set_prefix_and_null),
		cmocka_unit_test(test_err_truncates_long_messages),
		cmocka_unit_test(test_fake_clock_moves_only_when_told),
		cmocka_unit_test(test_stamp_clock_ignores_wall_steps),
		cmocka_unit_test(test_real_clock_is_monotonic),
		cmocka_unit_test(test_time_format_rfc3339),
		cmocka_unit_test(test_fault_fails_exactly_the_nth_hit),
		cmocka_unit_test(test_fault_env_parsing),
		cmocka_unit_test(test_fault_counts_hits_across_threads),
		cmocka_unit_test(test_buf_grows_and_moves),
		cmocka_unit_test(test_buf_exact_and_shrink),
		cmocka_unit_test(test_ratelimit_bursts_then_suppresses),
		cmocka_unit_test(test_log_debug_modules),
		cmocka_unit_test(test_le_helpers_round_trip),
		cmocka_unit_test(test_thread_try_nice_leaves_it_unchanged),
		cmocka_unit_test(test_thread_gets_its_name),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
