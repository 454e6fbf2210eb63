/*
 * Crash tests of storage/journal, two kinds, each over many rounds on one
 * journal that lives on from round to round:
 *
 *  1. SIGKILL: a child process appends segments (and folds now and then),
 *     writing each acknowledged seq to a pipe before it goes on; the parent
 *     kills it at a random moment. SIGKILL keeps the page cache, so this
 *     proves the protocol (ack after index, index after bytes), not the
 *     fsync ordering.
 *  2. Power cut: the journal runs on the I/O shim; just before a random
 *     data operation (inside a group commit or a fold) the shim drops or
 *     tears every write to extent and base files not covered by an fsync,
 *     and fails everything after. RocksDB is trusted with its
 *     own synced WAL (docs/format.md).
 *
 * After each round the journal is reopened and checked: every acknowledged
 * segment is present byte for byte and in order, nothing half-written is
 * visible (scrub passes), the newest point restores to the image the test
 * computes itself, and the base image equals the model at the horizon (so a
 * fold interrupted by the crash ends as an uninterrupted one would).
 *
 * Rounds: 20 of each by default, 5 under sanitizers, 1000 with --long.
 */
#include "tests/unit/jtest.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "storage/io.h"

#define PLAN 7

struct world {
	char dir[256];
	char out[300];
	uint64_t acked;		/* highest seq acknowledged so far, over all rounds */
	uint64_t rng;
};

static uint64_t rnd(struct world *w)
{
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return w->rng;
}

/* A writer advanced to the end of the stored stream (segments 1..n regenerated). */
static uint64_t writer_to(struct jt_writer *w, uint64_t durable)
{
	uint64_t i = 0;

	jt_init(w, PLAN, 0);
	while (w->next_seq - 1 < durable) {
		jt_gen(w, ++i, true);
		jt_seal(w, true);
	}
	assert_int_equal(w->next_seq - 1, durable);
	return i;
}

static void create_plan(struct world *w)
{
	struct cdp_journal_plan p;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal *j = jt_open(w->dir, NULL);

	jt_plan(&p, PLAN, "crash");
	assert_int_equal(cdp_journal_plan_create(j, &p, NULL, 0, &err), 0);
	cdp_journal_close(j);
}

/* Reopens with the kernel and checks everything the header comment lists. */
static void check_world(struct world *w)
{
	struct cdp_journal_opts o = { 0 };
	struct cdp_journal_resume r;
	struct cdp_journal_stats st;
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	struct jt_writer gen;
	struct cdp_journal *j;
	struct cdp_journal_iter *it;
	struct cdp_buf seg = CDP_BUF_INIT;
	struct cdp_seg_header h;
	uint64_t bad = 0, i = 0, expect_first;
	int rc;

	o.extent_max_bytes = 256u << 10;
	o.no_verifier = true;
	j = jt_open(w->dir, &o);
	assert_int_equal(cdp_journal_resume_info(j, PLAN, &r, &err), 0);
	if (r.durable_seq < w->acked)
		fail_msg("acknowledged seq %llu lost: journal ends at %llu",
			 (unsigned long long)w->acked, (unsigned long long)r.durable_seq);
	rc = cdp_journal_scrub(j, PLAN, &bad, &err);
	if (rc)
		fail_msg("scrub after crash: %s", err.msg);
	assert_int_equal(cdp_journal_stats(j, PLAN, &st, &err), 0);

	/* Every stored segment equals the one the writer made, in order. */
	jt_init(&gen, PLAN, 0);
	expect_first = st.horizon_seq + 1;
	while (gen.next_seq <= st.horizon_seq) {
		jt_gen(&gen, ++i, true);
		jt_seal(&gen, true);
	}
	{
		/* The base image is the model at the horizon. */
		jt_check_base(w->dir, PLAN, gen.model);
	}
	if (st.horizon_seq < r.durable_seq) {
		it = cdp_journal_iter_new(j, PLAN, expect_first, &err);
		if (!it)
			fail_msg("iter: %s", err.msg);
		while ((rc = cdp_journal_iter_next(it, &seg, &h, &err)) == 1) {
			jt_gen(&gen, ++i, true);
			jt_seal(&gen, true);
			if (seg.len != gen.seg.len || memcmp(seg.data, gen.seg.data, seg.len))
				fail_msg("segment %llu differs from what was written",
					 (unsigned long long)h.first_seq);
		}
		assert_int_equal(rc, 0);
		cdp_journal_iter_free(it);
	}
	assert_int_equal(gen.next_seq - 1, r.durable_seq);
	/* The newest consistent point restores to the model. */
	if (cdp_journal_point_find(j, PLAN, INT64_MAX, true, &pt, &err) == 0 &&
	    pt.seq == r.durable_seq)
		jt_check_restore(j, PLAN, pt.seq, w->out, gen.model);
	jt_release(&gen);
	cdp_buf_release(&seg);
	cdp_journal_close(j);
	w->acked = r.durable_seq;
}

/*
 * The child of a SIGKILL round (a fresh process: the test execs itself, so
 * no thread of the parent's RocksDB is inherited): appends forever,
 * reporting each ack on @fd.
 */
static void child_append(struct world *w, int fd, uint64_t seed)
{
	struct cdp_journal_opts o = { 0 };
	struct cdp_journal_resume r;
	struct cdp_err err = CDP_ERR_INIT;
	struct jt_writer gen;
	struct cdp_journal *j;
	uint64_t i, x = seed | 1;

	o.extent_max_bytes = 256u << 10;
	o.no_verifier = true;
	o.spare_extents = 1;
	j = cdp_journal_open(w->dir, &o, &err);
	if (!j)
		_exit(3);
	if (cdp_journal_resume_info(j, PLAN, &r, &err))
		_exit(4);
	i = writer_to(&gen, r.durable_seq);
	for (;;) {
		uint64_t seq;

		jt_gen(&gen, ++i, true);
		seq = jt_seal(&gen, true);
		if (cdp_journal_append_wait(j, PLAN, gen.seg.data, gen.seg.len, NULL, NULL, &err))
			_exit(5);
		if (write(fd, &seq, sizeof(seq)) != sizeof(seq))
			_exit(6);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (x % 8 == 0 && seq > 10)
			cdp_journal_fold_to(j, PLAN, seq - (x % 7), &err);
	}
}

static void test_sigkill_rounds(void **state)
{
	struct world *w = *state;
	int rounds = cdp_test_rounds(20, 5, 1000);

	create_plan(w);
	for (int round = 0; round < rounds; round++) {
		int fds[2], status;
		uint64_t want = 1 + rnd(w) % 12, got = 0, seq;
		pid_t pid;

		assert_int_equal(pipe(fds), 0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			char fdarg[16], seedarg[32];

			close(fds[0]);
			snprintf(fdarg, sizeof(fdarg), "%d", fds[1]);
			snprintf(seedarg, sizeof(seedarg), "%llu", (unsigned long long)rnd(w));
			execl("/proc/self/exe", "test_journal_crash", "--child", w->dir, fdarg,
			      seedarg, (char *)NULL);
			_exit(7);
		}
		close(fds[1]);
		/* Read acks until the chosen count, then kill at once. */
		while (got < want && read(fds[0], &seq, sizeof(seq)) == sizeof(seq)) {
			if (seq > w->acked)
				w->acked = seq;
			got++;
		}
		kill(pid, SIGKILL);
		/* Acks written before the kill still count. */
		while (read(fds[0], &seq, sizeof(seq)) == sizeof(seq))
			if (seq > w->acked)
				w->acked = seq;
		close(fds[0]);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!WIFSIGNALED(status))
			fail_msg("child exited with %d before the kill", WEXITSTATUS(status));
		check_world(w);
	}
}

struct cut_ctx {
	struct cdp_journal *j;
	struct jt_writer gen;
	uint64_t i;
	uint64_t acked;		/* guarded by mu */
	pthread_mutex_t mu;
	uint64_t seed;
};

static void *cut_appender(void *p)
{
	struct cut_ctx *c = p;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t x = c->seed | 1;

	for (;;) {
		uint64_t seq;

		jt_gen(&c->gen, ++c->i, true);
		seq = jt_seal(&c->gen, true);
		if (cdp_journal_append_wait(c->j, PLAN, c->gen.seg.data, c->gen.seg.len, NULL, NULL,
					    &err))
			break;	/* the power is out */
		pthread_mutex_lock(&c->mu);
		c->acked = seq;
		pthread_mutex_unlock(&c->mu);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (x % 6 == 0 && seq > 10 &&
		    cdp_journal_fold_to(c->j, PLAN, seq - (x % 5), &err) == -EIO)
			break;
	}
	return NULL;
}

static void test_power_cut_rounds(void **state)
{
	struct world *w = *state;
	int rounds = cdp_test_rounds(20, 5, 1000);
	uint64_t dropped = 0, torn = 0;

	create_plan(w);
	for (int round = 0; round < rounds; round++) {
		struct cdp_io_shim *shim = cdp_io_shim_new(rnd(w));
		struct cdp_journal_opts o = { 0 };
		struct cdp_journal_resume r;
		struct cdp_io_shim_stats s;
		struct cdp_err err = CDP_ERR_INIT;
		struct cut_ctx c;
		pthread_t t;
		unsigned long cut_at = 1 + rnd(w) % 120;

		o.extent_max_bytes = 256u << 10;
		o.no_verifier = true;
		o.io = cdp_io_shim_ops(shim);
		memset(&c, 0, sizeof(c));
		pthread_mutex_init(&c.mu, NULL);
		c.seed = rnd(w);
		c.j = cdp_journal_open(w->dir, &o, &err);
		if (!c.j)
			fail_msg("open: %s", err.msg);
		assert_int_equal(cdp_journal_resume_info(c.j, PLAN, &r, &err), 0);
		c.i = writer_to(&c.gen, r.durable_seq);
		cdp_io_shim_cut_at(shim, cut_at);
		assert_int_equal(cdp_thread_start(&t, "appender", cut_appender, &c), 0);
		/*
		 * The power goes just before the cut_at-th data operation: inside
		 * a group commit or a fold, with unsynced writes pending. The
		 * appender stops at its first failure.
		 */
		pthread_join(t, NULL);
		s = cdp_io_shim_power_cut(shim);
		dropped += s.dropped;
		torn += s.torn;
		pthread_mutex_lock(&c.mu);
		if (c.acked > w->acked)
			w->acked = c.acked;
		pthread_mutex_unlock(&c.mu);
		cdp_journal_close(c.j);
		cdp_io_shim_free(shim);
		jt_release(&c.gen);
		pthread_mutex_destroy(&c.mu);
		check_world(w);
	}
	print_message("power cuts: %llu unsynced writes dropped, %llu torn\n",
		      (unsigned long long)dropped, (unsigned long long)torn);
	/* Enough rounds must have cut into unsynced writes, or nothing was tested. */
	if (rounds >= 10)
		assert_true(dropped + torn > 0);
}

static int setup(void **state)
{
	struct world *w = cdp_xcalloc(1, sizeof(*w));

	assert_non_null(cdp_test_mkdtemp(w->dir, sizeof(w->dir)));
	snprintf(w->out, sizeof(w->out), "%s/out", w->dir);
	assert_int_equal(mkdir(w->out, 0700), 0);
	w->rng = (uint64_t)time(NULL) * 2654435761u | 1;
	print_message("seed %llu\n", (unsigned long long)w->rng);
	*state = w;
	return 0;
}

static int teardown(void **state)
{
	struct world *w = *state;

	cdp_test_rmrf(w->dir);
	free(w);
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sigkill_rounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_power_cut_rounds, setup, teardown),
	};

	if (argc == 5 && !strcmp(argv[1], "--child")) {
		struct world w = { 0 };

		snprintf(w.dir, sizeof(w.dir), "%s", argv[2]);
		child_append(&w, atoi(argv[3]), strtoull(argv[4], NULL, 10));
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
