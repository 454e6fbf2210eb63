/*
 * Unit tests of storage/journal: appends and every refusal, points,
 * resume info, cursors, restore, folding, the byte cap, iterators, seeding,
 * the verifier and scrub. Real RocksDB and real files under /var/tmp.
 */
#include "tests/unit/jtest.h"

#include <fcntl.h>
#include <unistd.h>

#include "common/fault.h"
#include "storage/journal_int.h"

struct fixture {
	char dir[256];
	char out[300];
	struct cdp_journal *j;
	struct jt_writer w;
	struct cdp_journal_plan plan;
};

static void full_sync(struct jt_writer *w)
{
	jt_sync(w, CDP_REC_SYNC_BEGIN, 1, CDP_SYNC_FULL);
	for (uint32_t v = 0; v < JT_NVOL; v++)
		jt_add(w, CDP_REC_ZERO, CDP_REC_F_RESYNC, v, 0, JT_VOL, NULL);
	jt_sync(w, CDP_REC_SYNC_END, 1, CDP_SYNC_FULL);
}

static int setup(void **state)
{
	struct fixture *f = cdp_xcalloc(1, sizeof(*f));
	struct cdp_err err = CDP_ERR_INIT;

	assert_non_null(cdp_test_mkdtemp(f->dir, sizeof(f->dir)));
	snprintf(f->out, sizeof(f->out), "%s/out", f->dir);
	assert_int_equal(mkdir(f->out, 0700), 0);
	f->j = jt_open(f->dir, NULL);
	jt_plan(&f->plan, 7, "db01");
	assert_int_equal(cdp_journal_plan_create(f->j, &f->plan, "blob", 4, &err), 0);
	jt_init(&f->w, 7, 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cdp_journal_close(f->j);
	jt_release(&f->w);
	cdp_test_rmrf(f->dir);
	free(f);
	return 0;
}

static void reopen(struct fixture *f)
{
	cdp_journal_close(f->j);
	f->j = jt_open(f->dir, NULL);
}

static int append(struct fixture *f, struct cdp_err *err, bool *dup)
{
	return cdp_journal_append_wait(f->j, f->w.plan, f->w.seg.data, f->w.seg.len, NULL, dup,
				       err);
}

static void test_append_points_and_restore(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_resume r;
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t *snap[JT_NVOL];
	uint64_t p1, p2;

	full_sync(&f->w);
	jt_write(&f->w, 0, 4096, 8192);
	jt_write(&f->w, 1, 512, 1024);
	p1 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	for (int v = 0; v < JT_NVOL; v++) {
		snap[v] = cdp_xmalloc(JT_VOL);
		memcpy(snap[v], f->w.model[v], JT_VOL);
	}
	jt_write(&f->w, 0, 6144, 4096);	/* overlaps the first write */
	jt_add(&f->w, CDP_REC_TRIM, 0, 1, 0, 4096, NULL);
	p2 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);

	assert_int_equal(cdp_journal_resume_info(f->j, 7, &r, &err), 0);
	assert_int_equal(r.durable_seq, p2);
	assert_int_equal(r.epoch, 0);
	assert_int_equal(cdp_journal_point_find(f->j, 7, INT64_MAX, true, &pt, &err), 0);
	assert_int_equal(pt.seq, p2);
	assert_true(pt.flags & CDP_POINT_F_CONSISTENT);
	assert_int_equal(r.last_point_ns, pt.time_ns);

	jt_check_restore(f->j, 7, p2, f->out, f->w.model);
	jt_check_restore(f->j, 7, p1, f->out, snap);
	/* Same after a reopen. */
	reopen(f);
	jt_check_restore(f->j, 7, p1, f->out, snap);
	jt_check_restore(f->j, 7, p2, f->out, f->w.model);
	for (int v = 0; v < JT_NVOL; v++)
		free(snap[v]);
}

static void test_points_before_full_sync_are_inconsistent(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seq;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq, &pt, &err), 0);
	assert_false(pt.flags & CDP_POINT_F_CONSISTENT);
	rc = cdp_journal_restore_to_dir(f->j, 7, seq, false, f->out, &err);
	assert_err(&err, rc, -EINVAL, "inconsistent");
	/* A full sync whose point falls inside the span stays inconsistent too. */
	jt_sync(&f->w, CDP_REC_SYNC_BEGIN, 9, CDP_SYNC_FULL);
	jt_add(&f->w, CDP_REC_ZERO, CDP_REC_F_RESYNC, 0, 0, JT_VOL, NULL);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq, &pt, &err), 0);
	assert_false(pt.flags & CDP_POINT_F_CONSISTENT);
	jt_add(&f->w, CDP_REC_ZERO, CDP_REC_F_RESYNC, 1, 0, JT_VOL, NULL);
	jt_sync(&f->w, CDP_REC_SYNC_END, 9, CDP_SYNC_FULL);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq, &pt, &err), 0);
	assert_true(pt.flags & CDP_POINT_F_CONSISTENT);
	jt_check_restore(f->j, 7, seq, f->out, f->w.model);
	/* A seq that is not a point at all. */
	rc = cdp_journal_restore_to_dir(f->j, 7, seq - 1, false, f->out, &err);
	assert_err(&err, rc, -EINVAL, "not a recovery point");
}

static void test_gap_is_refused_naming_expected_seq(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);	/* seq 2: skipped */
	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);	/* seq 3 */
	rc = append(f, &err, NULL);
	assert_err(&err, rc, -EPROTO, "expected seq 2, got 3");
}

static void test_replay_identical_is_acked_different_is_refused(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf first = CDP_BUF_INIT;
	struct jt_writer other;
	bool dup = false;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	cdp_buf_append(&first, f->w.seg.data, f->w.seg.len);
	jt_append_ok(f->j, &f->w);
	rc = append(f, &err, &dup);
	assert_int_equal(rc, 0);
	assert_true(dup);

	/* Same seq and time, other bytes. */
	jt_init(&other, 7, 0);
	jt_write(&other, 0, 512, 4096);
	jt_seal(&other, true);
	rc = cdp_journal_append_wait(f->j, 7, other.seg.data, other.seg.len, NULL, &dup, &err);
	assert_err(&err, rc, -EEXIST, "seq 1 already stored with a different digest");
	jt_release(&other);
	cdp_buf_release(&first);
}

static void test_stale_epoch_and_unknown_plan(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	assert_int_equal(cdp_journal_plan_set_epoch(f->j, 7, 3, &err), 0);
	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);	/* epoch 0 */
	rc = append(f, &err, NULL);
	assert_err(&err, rc, -ESTALE, "stale epoch 0, plan is at epoch 3");
	rc = cdp_journal_plan_set_epoch(f->j, 7, 2, &err);
	assert_err(&err, rc, -EINVAL, "epoch 2 < current 3");
	rc = cdp_journal_append_wait(f->j, 99, f->w.seg.data, f->w.seg.len, NULL, NULL, &err);
	assert_err(&err, rc, -ENOENT, "unknown plan 99");
	reopen(f);
	{
		struct cdp_journal_plan p;
		struct cdp_buf blob = CDP_BUF_INIT;

		assert_int_equal(cdp_journal_plan_get(f->j, 7, &p, &blob, &err), 0);
		assert_int_equal(p.epoch, 3);
		assert_int_equal(blob.len, 4);
		assert_memory_equal(blob.data, "blob", 4);
		cdp_buf_release(&blob);
	}
}

static void test_bad_crc_is_refused_at_submit(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	f->w.seg.data[f->w.seg.len - 1] ^= 0x40;
	rc = append(f, &err, NULL);
	assert_int_equal(rc, -EBADMSG);
	assert_non_null(strstr(err.msg, "crc32c"));
	assert_non_null(strstr(err.msg, "plan 7"));
}

static void test_time_going_backwards_is_refused(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	/* A heartbeat whose point time is not after the last point. */
	{
		struct cdp_seg_seal_opts o = { CDP_SEG_F_POINT_END, CDP_COMP_NONE, 0, 5, 5 };

		cdp_buf_reset(&f->w.seg);
		assert_int_equal(cdp_seg_enc_seal(f->w.enc, &o, &f->w.seg, NULL, &err), 0);
	}
	rc = append(f, &err, NULL);
	assert_err(&err, rc, -EPROTO, "goes backwards");
}

static void test_heartbeats_advance_points(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_point pt;
	struct cdp_journal_resume r;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seq;

	full_sync(&f->w);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	for (int i = 0; i < 3; i++) {
		seq = jt_seal(&f->w, true);	/* nothing added: a heartbeat */
		jt_append_ok(f->j, &f->w);
	}
	assert_int_equal(cdp_journal_point_find(f->j, 7, INT64_MAX, true, &pt, &err), 0);
	assert_int_equal(pt.seq, seq);
	assert_int_equal(cdp_journal_resume_info(f->j, 7, &r, &err), 0);
	assert_int_equal(r.durable_seq, seq);
	assert_int_equal(r.last_point_ns, pt.time_ns);
	assert_int_equal(r.last_time_ns, pt.time_ns);
	jt_write(&f->w, 1, 0, 512);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	jt_check_restore(f->j, 7, seq, f->out, f->w.model);
	reopen(f);
	assert_int_equal(cdp_journal_resume_info(f->j, 7, &r, &err), 0);
	assert_int_equal(r.durable_seq, seq);
}

static void test_bookmarks_by_name(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t *snap[JT_NVOL];
	int rc;

	full_sync(&f->w);
	jt_write(&f->w, 0, 0, 4096);
	jt_mark(&f->w, "before-upgrade");
	for (int v = 0; v < JT_NVOL; v++) {
		snap[v] = cdp_xmalloc(JT_VOL);
		memcpy(snap[v], f->w.model[v], JT_VOL);
	}
	jt_write(&f->w, 0, 0, 8192);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_name(f->j, 7, "before-upgrade", &pt, &err), 0);
	assert_true(pt.flags & CDP_POINT_F_BOOKMARK);
	assert_true(pt.flags & CDP_POINT_F_CONSISTENT);
	jt_check_restore(f->j, 7, pt.seq, f->out, snap);
	rc = cdp_journal_point_by_name(f->j, 7, "nope", &pt, &err);
	assert_err(&err, rc, -ENOENT, "no bookmark 'nope'");
	for (int v = 0; v < JT_NVOL; v++)
		free(snap[v]);
}

static void test_sync_checkpoint_is_committed_with_segment(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_sync_ckpt ck = { 42, CDP_SYNC_FULL, 1, 65536 };
	struct cdp_journal_resume r;
	struct cdp_err err = CDP_ERR_INIT;

	jt_sync(&f->w, CDP_REC_SYNC_BEGIN, 42, CDP_SYNC_FULL);
	jt_add(&f->w, CDP_REC_ZERO, CDP_REC_F_RESYNC, 1, 0, 65536, NULL);
	jt_seal(&f->w, true);
	assert_int_equal(cdp_journal_append_wait(f->j, 7, f->w.seg.data, f->w.seg.len, &ck, NULL,
						 &err), 0);
	reopen(f);
	assert_int_equal(cdp_journal_resume_info(f->j, 7, &r, &err), 0);
	assert_true(r.has_ckpt);
	assert_int_equal(r.ckpt.sync_id, 42);
	assert_int_equal(r.ckpt.volume, 1);
	assert_int_equal(r.ckpt.offset, 65536);
}

static void test_cursors(void **state)
{
	struct fixture *f = *state;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seq;
	bool pin;
	int rc;

	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_cursor_set(f->j, 7, "standby-a", 1, true, &err), 0);
	rc = cdp_journal_cursor_set(f->j, 7, "standby-a", 5, true, &err);
	assert_err(&err, rc, -EINVAL, "seq 5 > durable seq 1");
	reopen(f);
	assert_int_equal(cdp_journal_cursor_get(f->j, 7, "standby-a", &seq, &pin, &err), 0);
	assert_int_equal(seq, 1);
	assert_true(pin);
	assert_int_equal(cdp_journal_cursor_delete(f->j, 7, "standby-a", &err), 0);
	rc = cdp_journal_cursor_get(f->j, 7, "standby-a", &seq, &pin, &err);
	assert_err(&err, rc, -ENOENT, "no cursor 'standby-a'");
}

static void test_fold_then_restore(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seqs[6];
	uint8_t *snap[6][JT_NVOL];
	int rc;

	full_sync(&f->w);
	for (int i = 0; i < 6; i++) {
		jt_write(&f->w, i % 2, (uint64_t)i * 8192, 12288);
		jt_add(&f->w, CDP_REC_ZERO, 0, 0, (uint64_t)i * 4096 + 65536, 4096, NULL);
		seqs[i] = jt_seal(&f->w, true);
		jt_append_ok(f->j, &f->w);
		for (int v = 0; v < JT_NVOL; v++) {
			snap[i][v] = cdp_xmalloc(JT_VOL);
			memcpy(snap[i][v], f->w.model[v], JT_VOL);
		}
	}
	assert_int_equal(cdp_journal_fold_to(f->j, 7, seqs[2], &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_int_equal(st.horizon_seq, seqs[2]);
	jt_check_restore(f->j, 7, seqs[2], f->out, snap[2]);
	jt_check_restore(f->j, 7, seqs[4], f->out, snap[4]);
	rc = cdp_journal_restore_to_dir(f->j, 7, seqs[1], false, f->out, &err);
	assert_int_equal(rc, -EINVAL);	/* its point is gone with the history */
	rc = cdp_journal_restore_to_dir(f->j, 7, seqs[1], true, f->out, &err);
	assert_err(&err, rc, -ERANGE, "older than the history kept");
	reopen(f);
	jt_check_restore(f->j, 7, seqs[5], f->out, snap[5]);
	assert_int_equal(cdp_journal_scrub(f->j, 7, NULL, &err), 0);
	for (int i = 0; i < 6; i++)
		for (int v = 0; v < JT_NVOL; v++)
			free(snap[i][v]);
}

static void test_retention_folds_old_history(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_clock clk;
	struct cdp_journal_opts o = { 0 };
	uint64_t last = 0;

	cdp_journal_close(f->j);
	cdp_clock_fake_init(&clk, f->w.t, 0);
	o.clock = &clk;
	o.extent_max_bytes = 1u << 20;
	o.no_verifier = true;
	f->j = jt_open(f->dir, &o);
	f->plan.retention_ns = 10 * CDP_NS_PER_SEC;
	assert_int_equal(cdp_journal_plan_update(f->j, &f->plan, NULL, 0, &err), 0);
	full_sync(&f->w);
	for (int i = 0; i < 20; i++) {
		jt_write(&f->w, 0, (uint64_t)i * 4096, 4096);
		last = jt_seal(&f->w, true);
		jt_append_ok(f->j, &f->w);
		f->w.t += CDP_NS_PER_SEC;	/* one point a second */
	}
	/* Nothing is older than 10 s yet on the journal's clock. */
	assert_int_equal(cdp_journal_fold(f->j, 7, &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_int_equal(st.horizon_seq, 0);
	cdp_clock_fake_advance(&clk, 15 * CDP_NS_PER_SEC);
	assert_int_equal(cdp_journal_fold(f->j, 7, &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_true(st.horizon_seq > 0);
	assert_true(st.horizon_seq < last);
	assert_true(st.oldest_point_ns >= cdp_clock_wall_ns(&clk) - 10 * CDP_NS_PER_SEC -
					      CDP_NS_PER_SEC);
	jt_check_restore(f->j, 7, last, f->out, f->w.model);
}

/* A standby's lag-bounded cursor holds retention back, until it lags too far. */
static void test_lag_bounded_cursor_expires(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_clock clk;
	struct cdp_journal_opts o = { 0 };
	uint64_t last = 0, at = 0, seq;
	bool pin;
	int rc;

	cdp_journal_close(f->j);
	cdp_clock_fake_init(&clk, f->w.t, 0);
	o.clock = &clk;
	o.extent_max_bytes = 1u << 20;
	o.no_verifier = true;
	f->j = jt_open(f->dir, &o);
	f->plan.retention_ns = 10 * CDP_NS_PER_SEC;
	assert_int_equal(cdp_journal_plan_update(f->j, &f->plan, NULL, 0, &err), 0);
	full_sync(&f->w);
	for (int i = 0; i < 20; i++) {
		jt_write(&f->w, 0, (uint64_t)i * 4096, 4096);
		last = jt_seal(&f->w, true);
		jt_append_ok(f->j, &f->w);
		if (i == 2)
			at = last;
		f->w.t += CDP_NS_PER_SEC;
	}
	rc = cdp_journal_cursor_set_lag(f->j, 7, "standby:s1", at, cdp_clock_wall_ns(&clk), 0,
					&err);
	assert_err(&err, rc, -EINVAL, "max_lag 0");
	assert_int_equal(cdp_journal_cursor_set_lag(f->j, 7, "standby:s1", at,
						    cdp_clock_wall_ns(&clk),
						    60 * CDP_NS_PER_SEC, &err), 0);
	/* Past retention, but the standby is 15 s behind: pinned. Also across a reopen. */
	cdp_clock_fake_advance(&clk, 15 * CDP_NS_PER_SEC);
	cdp_journal_close(f->j);
	f->j = jt_open(f->dir, &o);
	assert_int_equal(cdp_journal_fold(f->j, 7, &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_true(st.horizon_seq <= at);
	assert_int_equal(cdp_journal_cursor_get(f->j, 7, "standby:s1", &seq, &pin, &err), 0);
	assert_int_equal(seq, at);
	assert_true(pin);
	/* 61 s behind: released, and retention folds past it. */
	cdp_clock_fake_advance(&clk, 46 * CDP_NS_PER_SEC);
	assert_int_equal(cdp_journal_cursor_get(f->j, 7, "standby:s1", &seq, &pin, &err), 0);
	assert_false(pin);
	assert_int_equal(cdp_journal_fold(f->j, 7, &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_true(st.horizon_seq > at);
	jt_check_restore(f->j, 7, last, f->out, f->w.model);
}

static void test_journal_full_while_pinned(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	int rc = 0;

	f->plan.journal_max_bytes = 64 << 10;
	assert_int_equal(cdp_journal_plan_update(f->j, &f->plan, NULL, 0, &err), 0);
	f->w.comp_level = 0;	/* incompressible sizes */
	jt_write(&f->w, 0, 0, 4096);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_cursor_set(f->j, 7, "standby-b", 1, true, &err), 0);
	for (int i = 0; i < 40 && !rc; i++) {
		jt_write(&f->w, 0, 0, 4096);
		jt_seal(&f->w, true);
		rc = append(f, &err, NULL);
	}
	assert_err(&err, rc, -ENOSPC, "journal full for plan db01: pinned by cursor standby-b at "
		   "seq 1");
	/* Unpinned, the cap folds early instead of refusing. */
	assert_int_equal(cdp_journal_cursor_delete(f->j, 7, "standby-b", &err), 0);
	rc = append(f, &err, NULL);
	assert_int_equal(rc, 0);
	assert_int_equal(cdp_journal_fold(f->j, 7, &err), 0);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_true(st.bytes <= f->plan.journal_max_bytes);
	assert_true(st.horizon_seq > 1);
}

static void test_iterator_follows_the_tail(void **state)
{
	struct fixture *f = *state;
	struct cdp_buf seg = CDP_BUF_INIT;
	struct cdp_seg_header h;
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_iter *it;
	uint64_t expect = 1;
	int n = 0, rc;

	for (int i = 0; i < 4; i++) {
		jt_write(&f->w, 0, 0, 4096);
		jt_write(&f->w, 0, 4096, 4096);
		jt_seal(&f->w, true);
		jt_append_ok(f->j, &f->w);
	}
	it = cdp_journal_iter_new(f->j, 7, 3, &err);
	assert_non_null(it);
	expect = 3;
	while ((rc = cdp_journal_iter_next(it, &seg, &h, &err)) == 1) {
		assert_true(h.first_seq <= expect && h.last_seq >= expect);
		expect = h.last_seq + 1;
		n++;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(n, 3);
	jt_write(&f->w, 1, 0, 512);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_iter_next(it, &seg, &h, &err), 1);
	assert_int_equal(h.first_seq, 9);
	assert_int_equal(seg.len, f->w.seg.len);
	assert_memory_equal(seg.data, f->w.seg.data, seg.len);
	cdp_journal_iter_free(it);
	/* Folded history must be seeded. */
	assert_int_equal(cdp_journal_fold_to(f->j, 7, 4, &err), 0);
	it = cdp_journal_iter_new(f->j, 7, 2, &err);
	assert_null(it);
	assert_int_equal(err.code, -ERANGE);
	cdp_buf_release(&seg);
}

static void test_seed_reader_gives_the_base_image(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_seed *s;
	struct cdp_buf data = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t digest[CDP_DIGEST_LEN];
	uint8_t *img[JT_NVOL];
	uint64_t horizon, off, len, seq;
	uint32_t vol;
	bool zero;
	int rc;

	full_sync(&f->w);
	jt_write(&f->w, 0, 8192, 16384);
	jt_write(&f->w, 1, 0, 4096);
	seq = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_fold_to(f->j, 7, seq, &err), 0);
	s = cdp_journal_seed_new(f->j, 7, &horizon, digest, &err);
	assert_non_null(s);
	assert_int_equal(horizon, seq);
	/* While seeding, folding is pinned. */
	jt_write(&f->w, 0, 0, 512);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_fold_to(f->j, 7, seq + 1, &err), 0);
	for (int v = 0; v < JT_NVOL; v++)
		img[v] = cdp_xcalloc(1, JT_VOL);
	while ((rc = cdp_journal_seed_next(s, &vol, &off, &len, &zero, &data, &err)) == 1) {
		assert_true(vol < JT_NVOL && off + len <= JT_VOL);
		if (zero)
			memset(img[vol] + off, 0, len);
		else
			memcpy(img[vol] + off, data.data, len);
	}
	assert_int_equal(rc, 0);
	{
		struct cdp_journal_stats st;

		assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
		assert_int_equal(st.horizon_seq, seq);
		assert_non_null(strstr(st.pinned_by, "seeding"));
	}
	cdp_journal_seed_free(s);
	jt_write(&f->w, 0, 0, 512);	/* undo the model's view of the later write */
	for (int v = 0; v < JT_NVOL; v++)
		free(img[v]);
	cdp_buf_release(&data);
}

struct events {
	int corrupt;
	uint64_t seq;
	size_t nranges;
	struct cdp_journal_range r0;
	bool known;
};

static void on_event(void *arg, const struct cdp_journal_event *ev)
{
	struct events *e = arg;

	if (ev->kind != CDP_JOURNAL_EV_CORRUPT)
		return;
	e->corrupt++;
	e->seq = ev->first_seq;
	e->nranges = ev->nranges;
	e->known = ev->ranges_known;
	if (ev->nranges)
		e->r0 = ev->ranges[0];
}

static void flip_byte_of_segment(struct fixture *f, uint64_t seq, size_t at)
{
	/* Find the file and offset through a fresh iterator: read, then patch on disk. */
	char cmd[1024];
	struct cdp_journal_iter *it;
	struct cdp_buf seg = CDP_BUF_INIT;
	struct cdp_seg_header h;
	struct cdp_err err = CDP_ERR_INIT;
	char path[600];
	int fd;
	uint8_t b;
	off_t pos = -1;

	it = cdp_journal_iter_new(f->j, 7, seq, &err);
	assert_non_null(it);
	assert_int_equal(cdp_journal_iter_next(it, &seg, &h, &err), 1);
	cdp_journal_iter_free(it);
	/* Search the plan's extent files for the segment's bytes. */
	snprintf(cmd, sizeof(cmd), "ls %s/extents/0000000000000007/*.ext", f->dir);
	{
		FILE *ls = popen(cmd, "r");

		while (ls && fgets(path, sizeof(path), ls)) {
			uint8_t *buf = cdp_xmalloc(4u << 20);
			ssize_t n;

			path[strcspn(path, "\n")] = '\0';
			fd = open(path, O_RDONLY);
			n = pread(fd, buf, 4u << 20, 0);
			close(fd);
			if (n > 0) {
				uint8_t *hit = memmem(buf, (size_t)n, seg.data, seg.len);

				if (hit)
					pos = hit - buf;
			}
			free(buf);
			if (pos >= 0)
				break;
		}
		if (ls)
			pclose(ls);
	}
	assert_true(pos >= 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, pos + (off_t)at), 1);
	b ^= 0x01;
	assert_int_equal(pwrite(fd, &b, 1, pos + (off_t)at), 1);
	close(fd);
	cdp_buf_release(&seg);
}

/* The verifier defers to a busy ingest, for verify_defer_max at most. */
static void test_verifier_defers_to_busy_ingest(void **state)
{
	struct cdp_journal_opts o = { .verify_interval_ns = 200 * CDP_NS_PER_MS,
				      .verify_defer_max_ns = 10 * CDP_NS_PER_SEC };
	int64_t t = 1000 * CDP_NS_PER_SEC, since = 0;
	bool deferring = false;

	(void)state;
	/* A quiet journal: every round runs. */
	assert_false(jverify_defer(&o, false, t, &deferring, &since));
	/* Busy: rounds go until the deferral is as old as the limit, then one runs. */
	for (int i = 0; i < 50; i++) {
		assert_true(jverify_defer(&o, true, t, &deferring, &since));
		t += o.verify_interval_ns;
	}
	assert_int_equal(t - since, o.verify_defer_max_ns);
	assert_false(jverify_defer(&o, true, t, &deferring, &since));
	/* Still busy: a new deferral starts from there. */
	assert_true(jverify_defer(&o, true, t + 1, &deferring, &since));
	/* A quiet round ends it at once. */
	assert_false(jverify_defer(&o, false, t + 2, &deferring, &since));
	assert_false(deferring);
	assert_true(jverify_defer(&o, true, t + 3, &deferring, &since));
	assert_int_equal(since, t + 3);
	/* 0: never deferred. */
	o.verify_defer_max_ns = 0;
	assert_false(jverify_defer(&o, true, t, &deferring, &since));
}

/*
 * Busy means stored at CDP_JOURNAL_BUSY_RATE or more over a window of at
 * least CDP_JOURNAL_BUSY_WINDOW; a verdict stands through the gaps between
 * group commits, and a window's worth of bytes is busy at once.
 */
static void test_busy_meter_decides_per_window(void **state)
{
	const int64_t w = CDP_JOURNAL_BUSY_WINDOW, t0 = 1000 * CDP_NS_PER_SEC;
	const uint64_t full = (uint64_t)((double)CDP_JOURNAL_BUSY_RATE * w / CDP_NS_PER_SEC);
	struct jbusy m = { 0 };
	uint64_t b = 5000;

	(void)state;
	assert_false(jbusy_update(&m, b, t0));	/* the first look has nothing to compare */
	/* A commit of 1 MiB a moment later: not enough for a verdict yet. */
	b += 1 << 20;
	assert_false(jbusy_update(&m, b, t0 + CDP_NS_PER_MS));
	/* The window closes with 1 MiB in it: below the rate, quiet. */
	assert_false(jbusy_update(&m, b, t0 + w));
	/* A full sync starts: a window's worth in 100 ms is busy at once... */
	b += full;
	assert_true(jbusy_update(&m, b, t0 + w + 100 * CDP_NS_PER_MS));
	/* ...and stays busy between its commits, looked at every 5 ms. */
	for (int64_t t = t0 + w + 105 * CDP_NS_PER_MS; t < t0 + 2 * w; t += 5 * CDP_NS_PER_MS)
		assert_true(jbusy_update(&m, b, t));
	/* The window closes at the rate (just over): still busy, a new window. */
	b += 1 << 20;
	assert_true(jbusy_update(&m, b, t0 + 2 * w));
	/* Commits of 4 MiB every 150 ms (~27 MiB/s) through the next window: busy. */
	for (int i = 1; i <= 3; i++) {
		b += 4 << 20;
		assert_true(jbusy_update(&m, b, t0 + 2 * w + i * 150 * CDP_NS_PER_MS));
	}
	b += 4 << 20;
	assert_true(jbusy_update(&m, b, t0 + 3 * w));
	/* The sync ends: busy until the window closes with nothing in it. */
	assert_true(jbusy_update(&m, b, t0 + 3 * w + w / 2));
	assert_false(jbusy_update(&m, b, t0 + 4 * w));
	/* A trickle below the rate over a long window: quiet. */
	b += full / 4;
	assert_false(jbusy_update(&m, b, t0 + 5 * w));
}

/* jbusy_check() reads the journal's committed bytes and its clock. */
static void test_busy_meter(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_opts o = { 0 };
	struct cdp_clock clock, *clk = &clock;
	struct jbusy m = { 0 };
	uint64_t bytes;

	cdp_journal_close(f->j);
	cdp_clock_fake_init(clk, 1000 * CDP_NS_PER_SEC, 1000 * CDP_NS_PER_SEC);
	o.clock = clk;
	o.no_verifier = true;
	f->j = jt_open(f->dir, &o);
	assert_false(jbusy_check(f->j, &m));	/* the first look has nothing to compare */
	assert_int_equal(m.t, 1000 * CDP_NS_PER_SEC);
	full_sync(&f->w);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	cdp_journal_commit_stats(f->j, NULL, NULL, &bytes);
	assert_true(bytes > 0 && bytes < CDP_JOURNAL_BUSY_RATE / 2);
	/* Those bytes over a whole window: below the rate, quiet. */
	cdp_clock_fake_advance(clk, CDP_JOURNAL_BUSY_WINDOW);
	assert_false(jbusy_check(f->j, &m));
	assert_int_equal(m.bytes, bytes);
	assert_int_equal(m.t, 1000 * CDP_NS_PER_SEC + CDP_JOURNAL_BUSY_WINDOW);
	cdp_journal_close(f->j);
	f->j = NULL;
}

static void test_verifier_finds_flipped_byte(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_opts o = { 0 };
	struct cdp_journal_point pt;
	struct cdp_err err = CDP_ERR_INIT;
	struct events ev = { 0 };
	uint64_t seq1, seq2, seq3, bad = 0;
	int rc;

	cdp_journal_close(f->j);
	o.extent_max_bytes = 1u << 20;
	o.no_verifier = true;
	o.on_event = on_event;
	o.event_arg = &ev;
	f->j = jt_open(f->dir, &o);
	f->w.comp_level = 0;	/* the record headers stay readable */
	full_sync(&f->w);
	seq1 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	jt_write(&f->w, 1, 65536, 8192);
	seq2 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	jt_write(&f->w, 0, 0, 512);
	seq3 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_verify_now(f->j, &err), 0);
	assert_int_equal(ev.corrupt, 0);

	/* Flip a payload byte of the second segment after its ack. */
	flip_byte_of_segment(f, seq2, CDP_SEG_HDR_LEN + CDP_REC_HDR_LEN + 100);
	/* The verifier already passed it: scrub finds it. */
	rc = cdp_journal_scrub(f->j, 7, &bad, &err);
	assert_int_equal(rc, -EBADMSG);
	assert_int_equal(bad, seq2);
	assert_non_null(strstr(err.msg, "seq"));
	assert_int_equal(ev.corrupt, 1);	/* scrub reports it too */
	assert_int_equal(ev.seq, seq2);
	/* A reopen verifies from scratch what it has not seen: reset by reopening
	 * after a fresh journal directory would be heavier; instead the restart
	 * check runs on segments after the verified position, so flip before. */
	jt_write(&f->w, 1, 131072, 4096);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	flip_byte_of_segment(f, seq3 + 1, CDP_SEG_HDR_LEN + CDP_REC_HDR_LEN + 7);
	cdp_journal_close(f->j);
	f->j = jt_open(f->dir, &o);	/* open verifies what the verifier had not */
	assert_int_equal(ev.corrupt, 2);
	assert_int_equal(ev.seq, seq3 + 1);
	assert_true(ev.known);
	assert_int_equal(ev.nranges, 1);
	assert_int_equal(ev.r0.volume, 1);
	assert_int_equal(ev.r0.offset, 131072);
	assert_int_equal(ev.r0.length, 4096);
	/* Points from the bad segment on turn inconsistent; earlier ones stay. */
	jt_write(&f->w, 0, 0, 512);
	seq3 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq3, &pt, &err), 0);
	assert_false(pt.flags & CDP_POINT_F_CONSISTENT);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq1, &pt, &err), 0);
	assert_true(pt.flags & CDP_POINT_F_CONSISTENT);
	/* A resync that begins after the damage repairs the later points. */
	jt_sync(&f->w, CDP_REC_SYNC_BEGIN, 2, CDP_SYNC_INCREMENTAL);
	jt_add(&f->w, CDP_REC_ZERO, CDP_REC_F_RESYNC, 1, 131072, 4096, NULL);
	jt_sync(&f->w, CDP_REC_SYNC_END, 2, CDP_SYNC_INCREMENTAL);
	seq3 = jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	assert_int_equal(cdp_journal_point_by_seq(f->j, 7, seq3, &pt, &err), 0);
	assert_true(pt.flags & CDP_POINT_F_CONSISTENT);
}

static void test_plan_errors(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_plan p;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t ids[4];
	int rc;

	rc = cdp_journal_plan_create(f->j, &f->plan, NULL, 0, &err);
	assert_err(&err, rc, -EEXIST, "already exists");
	jt_plan(&p, 8, "bad");
	p.volume_size[1] = 1000;
	rc = cdp_journal_plan_create(f->j, &p, NULL, 0, &err);
	assert_err(&err, rc, -EINVAL, "volume 1: size 1000");
	jt_plan(&p, 8, "second");
	assert_int_equal(cdp_journal_plan_create(f->j, &p, NULL, 0, &err), 0);
	assert_int_equal(cdp_journal_plan_list(f->j, ids, 4, &err), 2);
	assert_int_equal(cdp_journal_plan_delete(f->j, 8, &err), 0);
	assert_int_equal(cdp_journal_plan_list(f->j, ids, 4, &err), 1);
	rc = cdp_journal_plan_get(f->j, 8, &p, NULL, &err);
	assert_err(&err, rc, -ENOENT, "unknown plan 8");
	reopen(f);
	assert_int_equal(cdp_journal_plan_list(f->j, ids, 4, &err), 1);
	assert_int_equal(ids[0], 7);
}

static void test_failed_sync_is_never_taken_as_success(void **state)
{
	struct fixture *f = *state;
	struct cdp_journal_resume r;
	struct cdp_journal_stats st;
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t seq;
	bool dup = true;
	int rc;

	full_sync(&f->w);
	jt_seal(&f->w, true);
	jt_append_ok(f->j, &f->w);
	jt_write(&f->w, 0, 0, 65536);
	seq = jt_seal(&f->w, true);
	cdp_fault_arm("journal.extent_sync", 1, false);
	rc = append(f, &err, NULL);
	assert_err(&err, rc, -EIO, "extent fdatasync");
	assert_int_equal(cdp_journal_resume_info(f->j, 7, &r, &err), 0);
	assert_int_equal(r.durable_seq, seq - 1);
	/* The writer resends: it is stored anew, in another file. */
	rc = append(f, &err, &dup);
	assert_int_equal(rc, 0);
	assert_false(dup);
	assert_int_equal(cdp_journal_stats(f->j, 7, &st, &err), 0);
	assert_int_equal(st.extent_files, 2);
	/* The index write failing loses nothing either. */
	jt_write(&f->w, 1, 4096, 4096);
	seq = jt_seal(&f->w, true);
	cdp_fault_arm("journal.index_write", 1, false);
	rc = append(f, &err, NULL);
	assert_err(&err, rc, -EIO, "index write");
	assert_int_equal(append(f, &err, &dup), 0);
	assert_false(dup);
	cdp_fault_reset();
	jt_check_restore(f->j, 7, seq, f->out, f->w.model);
	reopen(f);
	jt_check_restore(f->j, 7, seq, f->out, f->w.model);
	assert_int_equal(cdp_journal_scrub(f->j, 7, NULL, &err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_points_and_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(test_points_before_full_sync_are_inconsistent,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_gap_is_refused_naming_expected_seq, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_replay_identical_is_acked_different_is_refused,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_epoch_and_unknown_plan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_crc_is_refused_at_submit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_time_going_backwards_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_heartbeats_advance_points, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bookmarks_by_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_checkpoint_is_committed_with_segment,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_cursors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fold_then_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retention_folds_old_history, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lag_bounded_cursor_expires, setup, teardown),
		cmocka_unit_test_setup_teardown(test_journal_full_while_pinned, setup, teardown),
		cmocka_unit_test_setup_teardown(test_iterator_follows_the_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seed_reader_gives_the_base_image, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_verifier_finds_flipped_byte, setup, teardown),
		cmocka_unit_test(test_verifier_defers_to_busy_ingest),
		cmocka_unit_test(test_busy_meter_decides_per_window),
		cmocka_unit_test_setup_teardown(test_busy_meter, setup, teardown),
		cmocka_unit_test_setup_teardown(test_plan_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_sync_is_never_taken_as_success, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
