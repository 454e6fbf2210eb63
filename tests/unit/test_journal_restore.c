/*
 * The restore test of storage/journal: random writes (overlapping, 512-byte
 * aligned but not 4 KiB aligned), zeroes, trims and RESYNC spans between
 * SYNC_BEGIN and SYNC_END are journaled; restoring several points, before
 * and after folds, gives byte for byte the image the test computes itself;
 * a point inside a resync span is refused. Compressed and raw segments both.
 */
#include "tests/unit/jtest.h"

#include <time.h>

#define PLAN 7

struct snap {
	uint64_t seq;
	uint64_t i;
	uint8_t *img[JT_NVOL];
};

static void run(bool compressed)
{
	char dir[256], out[300];
	struct cdp_journal_plan p;
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal *j;
	struct jt_writer w;
	struct snap *snaps;
	int nseg = cdp_test_rounds(120, 40, 1500), rc;

	/* The last segment's point is restored below: it must be a consistent one. */
	while (!jt_gen_consistent((uint64_t)nseg, true))
		nseg--;
	uint64_t seed = (uint64_t)time(NULL);

	print_message("seed %llu\n", (unsigned long long)seed);
	assert_non_null(cdp_test_mkdtemp(dir, sizeof(dir)));
	snprintf(out, sizeof(out), "%s/out", dir);
	assert_int_equal(mkdir(out, 0700), 0);
	j = jt_open(dir, NULL);
	jt_plan(&p, PLAN, "restore");
	assert_int_equal(cdp_journal_plan_create(j, &p, NULL, 0, &err), 0);
	jt_init(&w, PLAN, 0);
	w.comp_level = compressed ? 3 : 0;
	w.salt = seed;
	snaps = cdp_xcalloc((size_t)nseg + 1, sizeof(*snaps));
	for (int i = 1; i <= nseg; i++) {
		jt_gen(&w, (uint64_t)i, true);
		snaps[i].seq = jt_seal(&w, true);
		snaps[i].i = (uint64_t)i;
		jt_append_ok(j, &w);
		/* Keep images for a handful of points only: memory stays small. */
		if (i % 17 == 0 || i == nseg || i % 9 == 0) {
			for (int v = 0; v < JT_NVOL; v++) {
				snaps[i].img[v] = cdp_xmalloc(JT_VOL);
				memcpy(snaps[i].img[v], w.model[v], JT_VOL);
			}
		}
	}
	/* A point inside a resync span is never restored. */
	rc = cdp_journal_restore_to_dir(j, PLAN, snaps[9].seq, false, out, &err);
	assert_err(&err, rc, -EINVAL, "inconsistent");
	assert_int_equal(cdp_journal_point_by_seq(j, PLAN, snaps[9].seq, &pt, &err), 0);
	assert_false(pt.flags & CDP_POINT_F_CONSISTENT);
	/* Before any fold (points inside a resync span are refused, above). */
	for (int i = 17; i <= nseg; i += 17)
		if (jt_gen_consistent((uint64_t)i, true))
			jt_check_restore(j, PLAN, snaps[i].seq, out, snaps[i].img);
	/* After folds to successive boundaries, the later points still restore exactly. */
	for (int k = 1; k <= 3; k++) {
		int cut = nseg * k / 4;

		assert_int_equal(cdp_journal_fold_to(j, PLAN, snaps[cut].seq, &err), 0);
		for (int i = 17; i <= nseg; i += 17)
			if (snaps[i].seq >= snaps[cut].seq && jt_gen_consistent((uint64_t)i, true))
				jt_check_restore(j, PLAN, snaps[i].seq, out, snaps[i].img);
		jt_check_restore(j, PLAN, snaps[nseg].seq, out, snaps[nseg].img);
	}
	/* The same after a reopen, and every stored segment passes scrub. */
	cdp_journal_close(j);
	j = jt_open(dir, NULL);
	jt_check_restore(j, PLAN, snaps[nseg].seq, out, snaps[nseg].img);
	assert_int_equal(cdp_journal_scrub(j, PLAN, NULL, &err), 0);
	cdp_journal_close(j);
	for (int i = 0; i <= nseg; i++)
		for (int v = 0; v < JT_NVOL; v++)
			free(snaps[i].img[v]);
	free(snaps);
	jt_release(&w);
	cdp_test_rmrf(dir);
}

static void test_restore_compressed(void **state)
{
	run(true);
}

static void test_restore_raw(void **state)
{
	run(false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_restore_compressed),
		cmocka_unit_test(test_restore_raw),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
