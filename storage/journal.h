/*
 * storage/journal - the journal of one journal server (docs/format.md,
 * "Journal store", is the reference for the layout and its invariants).
 *
 * Owns: the RocksDB index (column families segments, points, meta) and the
 * files below the journal directory: extent files (segment bodies as
 * received, per plan and time slice, O_DIRECT, 4 KiB units) and base images
 * (one sparse file per plan and volume, the volume as of the plan's horizon).
 * Nothing else opens them. All file I/O goes through a struct cdp_io, so a
 * test can simulate power cuts.
 *
 * Invariants:
 *  - an index entry is written only after its extent bytes are synced, and a
 *    segment is acknowledged only after its index entry is synced; a 4 KiB
 *    block that holds acknowledged bytes is never written again;
 *  - per plan, stored seqs are contiguous from horizon_seq + 1 to durable_seq
 *    and each segment's digest chains from the previous one (checked by the
 *    background verifier, restore and scrub, which decompress);
 *  - point times are strictly increasing per plan;
 *  - the base image holds the volume exactly as of horizon_seq once open()
 *    returns (an interrupted fold is finished first); the horizon never passes
 *    a pinning cursor or an open reader.
 *
 * Threads: a commit thread ("io/commit") performs group commits of what
 * cdp_journal_submit() queues; a verifier thread ("verify") checks new
 * segments; an optional retention thread ("retain") folds. Every other call
 * may come from any thread. Callbacks run on the commit or verifier thread
 * and must not call back into the journal's write paths.
 */
#ifndef CDP_STORAGE_JOURNAL_H
#define CDP_STORAGE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "storage/io.h"
#include "storage/segment.h"

#define CDP_JOURNAL_MAX_VOLUMES 16
#define CDP_JOURNAL_NAME_MAX 63
#define CDP_JOURNAL_CURSOR_MAX 63

struct cdp_journal;

enum cdp_journal_event_kind {
	CDP_JOURNAL_EV_CORRUPT = 1,	/* a stored segment failed a check after its ack */
	CDP_JOURNAL_EV_IO_ERROR = 2,	/* a write or sync failed; the file was retired */
};

struct cdp_journal_range {
	uint32_t volume;
	uint64_t offset;
	uint64_t length;
};

struct cdp_journal_event {
	enum cdp_journal_event_kind kind;
	uint64_t plan_id;
	uint64_t first_seq;	/* of the bad segment */
	uint64_t last_seq;
	/* Ranges the bad segment touched, when its record headers could be read. */
	const struct cdp_journal_range *ranges;	/* borrowed for the callback */
	size_t nranges;
	bool ranges_known;
	char msg[CDP_ERR_MSG_MAX];
};

/* Ingest this fast (bytes/s) is busy: the verifier and spare files wait for it. */
#define CDP_JOURNAL_BUSY_RATE (20u << 20)
/* ... measured over at least this long (ns): several group commits. */
#define CDP_JOURNAL_BUSY_WINDOW (500 * 1000 * 1000ll)

struct cdp_journal_opts {
	struct cdp_clock *clock;	/* NULL = the real clock */
	const struct cdp_io *io;	/* NULL = cdp_io_real() */
	uint64_t extent_max_bytes;	/* size of one extent file; default 256 MiB */
	int64_t extent_slice_ns;	/* time span of one extent file; default 60 s */
	unsigned spare_extents;		/* ready (already written) extent files kept; 0 = none */
	uint64_t group_max_bytes;	/* bytes per durable step; default 64 MiB */
	unsigned queue_max;		/* submissions waiting; default 1024 */
	int64_t submit_timeout_ns;	/* how long submit waits for queue room; default 10 s */
	bool no_verifier;		/* tests: no background verifier thread */
	int64_t verify_interval_ns;	/* verifier poll interval; default 200 ms */
	/*
	 * How long the verifier may let its rounds go while ingest is busy
	 * (more than CDP_JOURNAL_BUSY_RATE bytes/s stored): its read-backs
	 * and hashes then wait for a pause, or for this long at most. 0 = never.
	 */
	int64_t verify_defer_max_ns;
	int64_t retain_interval_ns;	/* retention thread period; 0 = no thread (call fold) */
	uint64_t fold_batch_bytes;	/* segment bytes folded per step; default 256 MiB */
	void (*on_event)(void *arg, const struct cdp_journal_event *ev);
	void *event_arg;
};

/*
 * Opens (creating if needed) the journal in directory @dir. Recovers after a
 * crash: extent bytes no index entry points to are ignored and overwritten
 * later, an interrupted fold is finished, and indexed segments not yet
 * verified are checked (a failure is reported through on_event, not skipped).
 * Returns NULL and fills @err on failure. Caller closes with cdp_journal_close().
 */
struct cdp_journal *cdp_journal_open(const char *dir, const struct cdp_journal_opts *opts,
				     struct cdp_err *err);

/* Stops accepting, finishes the group commit in flight, stops threads, closes. */
void cdp_journal_close(struct cdp_journal *j);

/* ---- plans ------------------------------------------------------------ */

struct cdp_journal_plan {
	uint64_t plan_id;	/* > 0, chosen by the caller */
	char name[CDP_JOURNAL_NAME_MAX + 1];
	uint64_t epoch;
	uint32_t nvolumes;
	uint64_t volume_size[CDP_JOURNAL_MAX_VOLUMES];	/* bytes, multiples of 512 */
	char volume_name[CDP_JOURNAL_MAX_VOLUMES][CDP_JOURNAL_NAME_MAX + 1];
	int64_t retention_ns;		/* history kept; 0 = 24 h */
	uint64_t journal_max_bytes;	/* stored bytes above the horizon; 0 = no cap */
};

/*
 * Creates a plan. @blob (may be NULL) is stored with it for the caller
 * (journald keeps the rest of the plan's settings there). -EEXIST if it exists.
 */
int cdp_journal_plan_create(struct cdp_journal *j, const struct cdp_journal_plan *p,
			    const void *blob, size_t blob_len, struct cdp_err *err);

/* Updates name, retention, cap and blob (not volumes or epoch). */
int cdp_journal_plan_update(struct cdp_journal *j, const struct cdp_journal_plan *p,
			    const void *blob, size_t blob_len, struct cdp_err *err);

/* Raises the epoch (never lowers it). */
int cdp_journal_plan_set_epoch(struct cdp_journal *j, uint64_t plan_id, uint64_t epoch,
			       struct cdp_err *err);

/* Fills *p and, when @blob is not NULL, the stored blob. -ENOENT if unknown. */
int cdp_journal_plan_get(struct cdp_journal *j, uint64_t plan_id, struct cdp_journal_plan *p,
			 struct cdp_buf *blob, struct cdp_err *err);

/* Fills @ids with up to @max plan ids; returns how many plans exist. */
int cdp_journal_plan_list(struct cdp_journal *j, uint64_t *ids, size_t max, struct cdp_err *err);

/* Deletes a plan: its index entries, extent files and base images. -EBUSY while read. */
int cdp_journal_plan_delete(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err);

/* ---- appending ---------------------------------------------------------- */

/* The agent's full-sync progress, committed with the segment that carries it. */
struct cdp_journal_sync_ckpt {
	uint64_t sync_id;
	uint32_t kind;		/* enum cdp_sync_kind */
	uint32_t volume;
	uint64_t offset;	/* bytes of @volume acknowledged by this journal */
};

struct cdp_journal_append {
	/* in */
	uint64_t plan_id;
	const uint8_t *seg;	/* wire segment (header + body); borrowed until done() */
	size_t len;
	int64_t recv_time_ns;	/* 0 = now */
	bool has_ckpt;
	struct cdp_journal_sync_ckpt ckpt;
	void (*done)(struct cdp_journal_append *a); /* on the commit thread; may free @a */
	void *arg;
	/* out, valid in done() */
	int rc;			/* 0 = durable (or already stored with this digest) */
	bool duplicate;
	struct cdp_err err;
	/* private to the journal */
	struct cdp_journal_append *next;
	struct cdp_seg_header h;
	void *priv;
	size_t ent_off;
	int op;
	bool accepted;
	uint64_t damage_seq;
};

/*
 * Queues @a for the next group commit. Checks the header and body CRC here,
 * in the caller's thread; what depends on the plan's state (unknown plan,
 * stale epoch, gap, replay with different bytes, journal full) is checked by
 * the commit thread. done() is always called exactly once when this returns 0;
 * on a negative return it is not called. Never waits longer than
 * submit_timeout_ns for queue room (-ETIMEDOUT); -ECANCELED once closing.
 *
 * Errors given to done(): -EBADMSG bad bytes; -ENOENT unknown plan; -ESTALE
 * stale epoch; -EPROTO seq gap or time going backwards; -EEXIST a different
 * segment with the same seq is stored; -ENOSPC journal full (the message names
 * the pin) or disk full; -EIO a write or sync failed (nothing of that step is
 * stored).
 */
int cdp_journal_submit(struct cdp_journal *j, struct cdp_journal_append *a);

/* Submits and waits for durability: cdp_journal_submit() plus done(). */
int cdp_journal_append_wait(struct cdp_journal *j, uint64_t plan_id, const uint8_t *seg,
			    size_t len, const struct cdp_journal_sync_ckpt *ckpt,
			    bool *duplicate, struct cdp_err *err);

/* What a restarted writer needs to resume: one call. */
struct cdp_journal_resume {
	uint64_t epoch;
	uint64_t durable_seq;		/* highest stored seq (0 = none) */
	uint8_t digest[CDP_DIGEST_LEN];	/* chain digest of the last stored segment */
	int64_t last_time_ns;		/* t_last of the last stored segment (0 = none) */
	int64_t last_point_ns;		/* time of the newest point (0 = none) */
	uint64_t horizon_seq;
	bool has_ckpt;
	struct cdp_journal_sync_ckpt ckpt;
};
int cdp_journal_resume_info(struct cdp_journal *j, uint64_t plan_id,
			    struct cdp_journal_resume *r, struct cdp_err *err);

/* ---- cursors ------------------------------------------------------------ */

/*
 * Sets a named durable position (a standby's applied seq): seq <= durable seq.
 * A pinning cursor holds the horizon at or below its seq.
 */
int cdp_journal_cursor_set(struct cdp_journal *j, uint64_t plan_id, const char *name,
			   uint64_t seq, bool pinning, struct cdp_err *err);
/*
 * A pinning cursor that stops pinning once it lags: it holds the horizon only
 * while now - @seq_time_ns <= @max_lag_ns (the journal's clock, checked each
 * time folding looks at pins), where @seq_time_ns is the time of the segment
 * holding @seq. A standby's cursor: history waits for a standby a little
 * behind, not for one that went away (it is seeded again when it returns).
 */
int cdp_journal_cursor_set_lag(struct cdp_journal *j, uint64_t plan_id, const char *name,
			       uint64_t seq, int64_t seq_time_ns, int64_t max_lag_ns,
			       struct cdp_err *err);
/* *@pinning: whether it pins now (false for a lag-bounded cursor past its lag). */
int cdp_journal_cursor_get(struct cdp_journal *j, uint64_t plan_id, const char *name,
			   uint64_t *seq, bool *pinning, struct cdp_err *err);
int cdp_journal_cursor_delete(struct cdp_journal *j, uint64_t plan_id, const char *name,
			      struct cdp_err *err);

/* ---- points ------------------------------------------------------------- */

#define CDP_POINT_F_CONSISTENT 0x1u
#define CDP_POINT_F_BOOKMARK 0x2u

struct cdp_journal_point {
	int64_t time_ns;
	uint64_t seq;		/* the image holds every record <= seq */
	uint32_t flags;		/* CDP_POINT_F_* */
	char name[CDP_MARK_NAME_MAX + 1];	/* bookmarks only */
};

/*
 * Calls @fn for each point with from <= time <= to, oldest first (stops early
 * when @fn returns non-zero). Points at or below the horizon are gone, except
 * the horizon itself when it is a point.
 */
int cdp_journal_points(struct cdp_journal *j, uint64_t plan_id, int64_t from, int64_t to,
		       int (*fn)(void *arg, const struct cdp_journal_point *p), void *arg,
		       struct cdp_err *err);

/* The newest point at or before @at (consistent ones only when asked); -ENOENT. */
int cdp_journal_point_find(struct cdp_journal *j, uint64_t plan_id, int64_t at,
			   bool consistent_only, struct cdp_journal_point *p, struct cdp_err *err);

/* The point with exactly @seq, or the bookmark named @name; -ENOENT. */
int cdp_journal_point_by_seq(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			     struct cdp_journal_point *p, struct cdp_err *err);
int cdp_journal_point_by_name(struct cdp_journal *j, uint64_t plan_id, const char *name,
			      struct cdp_journal_point *p, struct cdp_err *err);

/* ---- readers ------------------------------------------------------------ */

struct cdp_journal_iter;

/*
 * Iterates stored segments (wire bytes, as received) from the one holding
 * @from_seq (or, for a heartbeat-only tail, the first after it). -ERANGE when
 * @from_seq <= horizon: the reader must be seeded. The iterator pins the
 * horizon at its position. Caller frees with cdp_journal_iter_free().
 */
struct cdp_journal_iter *cdp_journal_iter_new(struct cdp_journal *j, uint64_t plan_id,
					      uint64_t from_seq, struct cdp_err *err);

/* 1 and the next segment in @seg (replaced), 0 when caught up (call again later). */
int cdp_journal_iter_next(struct cdp_journal_iter *it, struct cdp_buf *seg,
			  struct cdp_seg_header *h, struct cdp_err *err);
void cdp_journal_iter_free(struct cdp_journal_iter *it);

/* Where restore writes: one raw image per volume. Return 0 or -errno. */
struct cdp_journal_sink {
	int (*begin)(void *arg, uint32_t volume, const char *name, uint64_t size,
		     struct cdp_err *err);
	int (*write)(void *arg, uint32_t volume, uint64_t off, const void *buf, size_t len,
		     struct cdp_err *err);
	/* [off, off+len) reads as zeros afterwards. */
	int (*zero)(void *arg, uint32_t volume, uint64_t off, uint64_t len, struct cdp_err *err);
	int (*end)(void *arg, uint32_t volume, struct cdp_err *err);
};

/*
 * Produces each volume's image as of the point with seq @seq (base image +
 * every record in (horizon, seq]), streaming and memory-bounded, verifying
 * every CRC and the chain. Refuses (-EINVAL) a seq that is not a consistent
 * point or bookmark unless @allow_inconsistent. Pins the horizon while it runs.
 */
int cdp_journal_restore(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			bool allow_inconsistent, const struct cdp_journal_sink *sink, void *arg,
			struct cdp_err *err);

/* Restore into DIR/<volume name>.img (created or truncated); the common sink. */
int cdp_journal_restore_to_dir(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			       bool allow_inconsistent, const char *dir, struct cdp_err *err);

/*
 * Seeding reader: the base image as of the horizon (pinned until freed), as
 * data and zero ranges, then the caller iterates segments from horizon + 1.
 */
struct cdp_journal_seed;
struct cdp_journal_seed *cdp_journal_seed_new(struct cdp_journal *j, uint64_t plan_id,
					      uint64_t *horizon_seq,
					      uint8_t horizon_digest[CDP_DIGEST_LEN],
					      struct cdp_err *err);
/*
 * Next piece of the base image: 1 with *zero set (a hole or zero range of
 * *len bytes) or data in @data; 0 at the end of the last volume.
 */
int cdp_journal_seed_next(struct cdp_journal_seed *s, uint32_t *volume, uint64_t *off,
			  uint64_t *len, bool *zero, struct cdp_buf *data, struct cdp_err *err);
void cdp_journal_seed_free(struct cdp_journal_seed *s);

/* ---- history ------------------------------------------------------------ */

/*
 * Folds now what retention and the byte cap allow: records in
 * (horizon, target] go into the base images, the horizon moves, extent files
 * wholly below it are deleted. Returns 0 (also when pinned: nothing to do).
 */
int cdp_journal_fold(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err);

/* Folds up to @seq exactly (a segment boundary at or below it), pins permitting. */
int cdp_journal_fold_to(struct cdp_journal *j, uint64_t plan_id, uint64_t seq,
			struct cdp_err *err);

struct cdp_journal_stats {
	uint64_t durable_seq;
	uint64_t horizon_seq;
	uint64_t verified_seq;
	uint64_t bytes;		/* stored segment bytes above the horizon */
	uint64_t segments;
	uint64_t extent_files;
	int64_t oldest_point_ns;
	int64_t newest_point_ns;
	bool synced;		/* the first full sync has ended */
	bool sync_active;
	uint64_t damaged_from;	/* 0, or the seq of a bad segment awaiting its resync */
	char pinned_by[CDP_ERR_MSG_MAX]; /* what holds the horizon, "" if nothing */
};
int cdp_journal_stats(struct cdp_journal *j, uint64_t plan_id, struct cdp_journal_stats *s,
		      struct cdp_err *err);

/*
 * Group-commit totals since open, over all plans: durable steps, segments and
 * segment bytes they stored (for benchmarks; any pointer may be NULL).
 */
void cdp_journal_commit_stats(struct cdp_journal *j, uint64_t *steps, uint64_t *segments,
			      uint64_t *bytes);

/* ---- integrity ---------------------------------------------------------- */

/*
 * Verifies every stored segment of the plan (CRCs, decompression, records and
 * the chain from the horizon). Returns 0 when all is well; -EBADMSG naming the
 * first bad segment by plan and seq (and *bad_seq set). Each bad segment is
 * also reported through on_event and marked as damage, as the verifier does.
 */
int cdp_journal_scrub(struct cdp_journal *j, uint64_t plan_id, uint64_t *bad_seq,
		      struct cdp_err *err);

/* Runs one verifier pass now (what the verifier thread does); for tests. */
int cdp_journal_verify_now(struct cdp_journal *j, struct cdp_err *err);

#endif
