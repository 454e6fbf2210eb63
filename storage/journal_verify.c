/*
 * storage/journal_verify - the background verifier and scrub.
 *
 * Ingest checks only what is cheap (header, body CRC). The verifier reads
 * every new segment back from its extent file within verify_interval of its
 * ack, decompresses it and checks its records and the chain digest from the
 * previous segment. A bad segment is reported through on_event (with the
 * ranges its record headers name, when they can be read) and queued to the
 * commit thread as damage, which marks every point from it on inconsistent
 * until a resync that began after the damage was found ends. Verification
 * goes on past it from the digest its index entry (and header) claims, so
 * one bad segment does not hide a second.
 *
 * Scrub does the same for everything above the horizon, from scratch (a
 * bad segment is reported and marked as damage the same way), and names the
 * first bad segment.
 */
#include "storage/journal_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

#define MAX_RANGES 4096

/* Ranges named by the record headers of a raw body, without trusting payloads. */
static size_t raw_ranges(const uint8_t *raw, size_t raw_len, struct cdp_journal_range *out,
			 size_t max, bool *complete)
{
	size_t pos = 0, n = 0;

	*complete = false;
	while (pos + CDP_REC_HDR_LEN <= raw_len && n < max) {
		uint16_t kind = cdp_get_le16(raw + pos + 12);
		uint32_t len = cdp_get_le32(raw + pos + 24);
		uint64_t off = cdp_get_le64(raw + pos + 16);
		uint32_t vol = cdp_get_le32(raw + pos + 8);
		size_t payload = (kind == CDP_REC_WRITE || kind == CDP_REC_MARK ||
				  kind == CDP_REC_SYNC_BEGIN || kind == CDP_REC_SYNC_END) ? len : 0;

		if (kind < 1 || kind > CDP_REC_KIND_MAX || payload > raw_len - pos - CDP_REC_HDR_LEN)
			return n;
		if (kind == CDP_REC_WRITE || kind == CDP_REC_ZERO || kind == CDP_REC_TRIM) {
			if (n && out[n - 1].volume == vol &&
			    out[n - 1].offset + out[n - 1].length == off)
				out[n - 1].length += len;
			else
				out[n++] = (struct cdp_journal_range){ vol, off, len };
		}
		pos += CDP_REC_HDR_LEN + payload;
	}
	*complete = pos == raw_len;
	return n;
}

/* Fills the event's ranges from a bad segment's bytes when its records can be read. */
static void event_ranges(struct cdp_journal_event *ev, const struct cdp_buf *buf,
			 struct cdp_journal_range *ranges)
{
	struct cdp_seg_header h;
	uint8_t *raw = NULL;
	bool complete = false;

	if (buf->len < CDP_SEG_HDR_LEN || cdp_seg_parse_header(buf->data, buf->len, &h, NULL))
		return;
	if (h.compression == CDP_COMP_NONE) {
		ev->nranges = raw_ranges(buf->data + CDP_SEG_HDR_LEN, h.body_len, ranges,
					 MAX_RANGES, &complete);
	} else {
		raw = cdp_xmalloc(h.raw_len ? h.raw_len : 1);
		if (!cdp_seg_decompress(&h, buf->data + CDP_SEG_HDR_LEN, raw, NULL))
			ev->nranges = raw_ranges(raw, h.raw_len, ranges, MAX_RANGES, &complete);
		free(raw);
	}
	ev->ranges = ranges;
	ev->ranges_known = complete;
}

struct verify_ctx {
	struct cdp_journal *j;
	struct jplan *p;
	bool scrub;
	uint64_t next_seq;
	uint8_t digest[CDP_DIGEST_LEN];
	uint64_t last_first;
	int64_t last_t;
	uint64_t bad_seq;	/* first bad one (scrub) */
	struct cdp_err bad_err;
	struct cdp_buf buf;
	bool progressed;
	bool skip_until_key;
	uint64_t limit_seq;	/* verify only what was durable when the pass began */
};

static int verify_cb(void *arg, const struct jseg *s)
{
	struct verify_ctx *v = arg;
	struct cdp_seg_expect ex = { 0 };
	struct cdp_seg_header h;
	struct cdp_segment *seg = NULL;
	struct cdp_err err = CDP_ERR_INIT;
	int rc;

	if (v->skip_until_key && (s->first_seq < v->last_first ||
				  (s->first_seq == v->last_first && s->t_last <= v->last_t)))
		return 0;
	if (s->first_seq > v->limit_seq)
		return 1;
	rc = jseg_read(v->j, s, &v->buf, &h, &err);
	if (!rc) {
		ex.prev_digest = v->digest;
		ex.check_first_seq = true;
		ex.first_seq = v->next_seq;
		ex.check_plan = false;
		ex.min_time = INT64_MIN;
		ex.volume_sizes = v->p->conf.volume_size;
		ex.nvolumes = v->p->conf.nvolumes;
		ex.borrow_raw = true;	/* v->buf outlives seg */
		ex.body_checked = true;	/* by jseg_read(), on v->buf */
		rc = cdp_seg_decode(v->buf.data, v->buf.len, &ex, &seg, &err);
		if (rc)
			cdp_err_prefix(&err, "plan %s seq %" PRIu64, v->p->conf.name, s->first_seq);
		cdp_segment_free(seg);
	}
	if (rc) {
		struct cdp_journal_event ev = { 0 };
		struct cdp_journal_range *ranges = cdp_xcalloc(MAX_RANGES, sizeof(*ranges));

		if (!v->bad_seq) {
			v->bad_seq = s->first_seq ? s->first_seq : 1;
			v->bad_err = err;
		}
		{
			/* Verifier or scrub: the damage is reported and acted on. */
			ev.kind = CDP_JOURNAL_EV_CORRUPT;
			ev.plan_id = s->plan_id;
			ev.first_seq = s->first_seq;
			ev.last_seq = s->last_seq;
			snprintf(ev.msg, sizeof(ev.msg), "%s", err.msg);
			event_ranges(&ev, &v->buf, ranges);
			jevent(v->j, &ev);
			jqueue_damage(v->j, s->plan_id, s->first_seq);
		}
		free(ranges);
	}
	/* Go on from the digest the index entry claims. */
	memcpy(v->digest, s->digest, CDP_DIGEST_LEN);
	if (s->nrecords)
		v->next_seq = s->last_seq + 1;
	v->last_first = s->first_seq;
	v->last_t = s->t_last;
	v->skip_until_key = true;
	v->progressed = true;
	return 0;
}

static int verify_run(struct cdp_journal *j, struct jplan *p, bool scrub, uint64_t *bad_seq,
		      struct cdp_err *err)
{
	struct verify_ctx v = { 0 };
	struct jpin pin;
	int rc;

	/* Hold folds back while reading: they delete what they fold. */
	jpin_add(j, p, &pin, 0, scrub ? "scrub" : "verifier");
	v.j = j;
	v.p = p;
	v.scrub = scrub;
	pthread_mutex_lock(&j->mu);
	if (scrub || p->verified_next <= p->horizon_seq) {
		v.next_seq = p->horizon_seq + 1;
		memcpy(v.digest, p->horizon_digest, CDP_DIGEST_LEN);
		v.last_first = p->horizon_first;
		v.last_t = p->horizon_t;
		v.skip_until_key = p->horizon_seq > 0;
	} else {
		v.next_seq = p->verified_next;
		memcpy(v.digest, p->verified_digest, CDP_DIGEST_LEN);
		v.last_first = p->verified_first;
		v.last_t = p->verified_t;
		v.skip_until_key = p->verified_t != INT64_MIN;
	}
	v.limit_seq = p->st.next_seq;
	pin.seq = v.next_seq - 1;
	pthread_mutex_unlock(&j->mu);

	rc = jseg_scan(j, p->conf.plan_id, v.last_first, verify_cb, &v, err);
	cdp_buf_release(&v.buf);
	jpin_remove(j, p, &pin);
	if (rc < 0)
		return rc;
	if (!scrub && v.progressed) {
		rocksdb_writebatch_t *wb = rocksdb_writebatch_create();

		jverified_put(j, wb, p->conf.plan_id, v.last_first, v.last_t, v.next_seq,
			      v.digest);
		rc = jdb_write(j, wb, err);
		rocksdb_writebatch_destroy(wb);
		if (rc)
			return rc;
		pthread_mutex_lock(&j->mu);
		/* A fold may have moved past us meanwhile: keep the furthest. */
		if (v.next_seq > p->verified_next ||
		    (v.next_seq == p->verified_next && v.last_t > p->verified_t)) {
			p->verified_next = v.next_seq;
			p->verified_first = v.last_first;
			p->verified_t = v.last_t;
			memcpy(p->verified_digest, v.digest, CDP_DIGEST_LEN);
		}
		pthread_mutex_unlock(&j->mu);
	}
	if (v.bad_seq) {
		if (bad_seq)
			*bad_seq = v.bad_seq;
		if (err)
			*err = v.bad_err;
		return -EBADMSG;
	}
	return 0;
}

int jverify_plan(struct cdp_journal *j, struct jplan *p, struct cdp_err *err)
{
	return verify_run(j, p, false, NULL, err);
}

int cdp_journal_verify_now(struct cdp_journal *j, struct cdp_err *err)
{
	uint64_t ids[256];
	int n = cdp_journal_plan_list(j, ids, CDP_ARRAY_SIZE(ids), err), rc = 0;

	for (int i = 0; i < n && i < (int)CDP_ARRAY_SIZE(ids); i++) {
		struct jplan *p = jplan_get(j, ids[i], NULL);
		int r;

		if (!p)
			continue;
		r = jverify_plan(j, p, err);
		if (r && !rc)
			rc = r;
		jplan_put(j, p);
	}
	return rc;
}

bool jverify_defer(const struct cdp_journal_opts *o, bool busy, int64_t now, bool *deferring,
		   int64_t *since)
{
	if (!o->verify_defer_max_ns || !busy) {
		*deferring = false;
		return false;
	}
	if (!*deferring) {
		*deferring = true;
		*since = now;
	}
	if (now - *since < o->verify_defer_max_ns)
		return true;
	*deferring = false;	/* this round runs; the next busy one starts over */
	return false;
}

/*
 * Ingest first: under a sustained load (a full sync) the read-backs would
 * take the disk, and the hashes the CPU, from the segments arriving. The
 * verifier lets its rounds go then, for verify_defer_max at most, and a
 * round catches up on everything stored since.
 */
void *jverify_main(void *arg)
{
	struct cdp_journal *j = arg;
	struct jbusy m = { 0 };
	int64_t since = 0;
	bool deferring = false;

	cdp_thread_lower(JBG_NICE);
	cdp_thread_io_idle();
	jbusy_check(j, &m);
	while (jbg_sleep(j, j->opts.verify_interval_ns)) {
		struct cdp_err err = CDP_ERR_INIT;

		if (jverify_defer(&j->opts, jbusy_check(j, &m), cdp_clock_mono_ns(j->clock),
				  &deferring, &since))
			continue;
		/* Bad segments were reported as events already. */
		cdp_journal_verify_now(j, &err);
	}
	return NULL;
}

int cdp_journal_scrub(struct cdp_journal *j, uint64_t plan_id, uint64_t *bad_seq,
		      struct cdp_err *err)
{
	struct jplan *p = jplan_get(j, plan_id, err);
	int rc;

	if (!p)
		return -ENOENT;
	rc = verify_run(j, p, true, bad_seq, err);
	jplan_put(j, p);
	return rc;
}
