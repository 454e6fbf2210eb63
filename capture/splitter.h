/*
 * capture/splitter - the heart of the agent: every protected volume's I/O
 * passes through here on its way to the source, and every completed change
 * becomes a record in the plan's one ordered stream (SPEC "Data path
 * requirements").
 *
 *  - Range lock per volume: an overlapping request (write, trim, zero, read,
 *    sync read) waits for every earlier overlapping one; others run in
 *    parallel on the I/O threads.
 *  - Activity log (storage/actlog) before a write is submitted to the source.
 *  - A write is answered only after it is on the source (fdatasync'd for FUA)
 *    AND recorded: seq and time are assigned at completion under one lock
 *    (sp->mu) for the whole plan; a FLUSH gets its seq on receipt. A source
 *    write that fails is answered with the error, not journaled, and its range
 *    is marked dirty.
 *  - Records go into the open segment; it is cut at every point interval
 *    (cdp_splitter_tick(), flagged POINT_END; an idle interval gives a
 *    heartbeat) and when full (4 MiB raw). A seal thread compresses, chains
 *    and puts sealed segments in the log cache (capture/cache); its zstd
 *    level drops with its backlog, so the application never waits for it.
 *  - Modes: CONTINUOUS (records) and INCREMENTAL (changes kept only in the
 *    dirty bitmap, storage/dirtymap). Going incremental marks the ranges of
 *    everything not yet acknowledged dirty, persists the bitmap and drops the
 *    cache; cdp_splitter_resync() sends the dirty blocks back as RESYNC
 *    records between SYNC_BEGIN and SYNC_END and returns to CONTINUOUS.
 *  - Nothing is captured until cdp_splitter_continue() says where the chain
 *    goes on (the journal's durable seq and digest, from the link's welcome):
 *    until then the plan runs INCREMENTAL.
 *
 * Write ids (wid): a counter of completed writes, in completion order, that
 * the activity log uses as its "seq": an extent leaves once every write in
 * it is acknowledged by the journal and the source was flushed since, or its
 * ranges are persisted in the bitmap.
 */
#ifndef CDP_CAPTURE_SPLITTER_H
#define CDP_CAPTURE_SPLITTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "capture/cache.h"
#include "capture/export.h"
#include "common/clock.h"
#include "common/err.h"
#include "storage/actlog.h"
#include "storage/dirtymap.h"
#include "storage/segment.h"

struct cdp_splitter;

struct cdp_splitter_opts {
	unsigned nvolumes;
	const char *const *names;	/* export names */
	const char *const *paths;	/* source files or block devices */
	struct cdp_clock *clock;	/* NULL: real */
	int64_t point_interval_ns;	/* 0: 1 s */
	unsigned io_threads;		/* 0: 4 */
	int io_nice;			/* the I/O threads' nice value (-20..19); 0: inherited */
	int64_t io_slice_ns;		/* their scheduling slice (cdp_thread_set_slice); 0: the kernel's */
	uint32_t max_request;		/* 0: 1 MiB; <= CDP_REC_MAX_WRITE */
	struct cdp_actlog *al;		/* borrowed, required */
	struct cdp_dirtymap *dm;	/* borrowed, required */
	struct cdp_cache *cache;	/* borrowed, required */
	/* Called (from the seal thread, no lock held) when the splitter fell back
	 * to incremental mode on its own (cache full). */
	void (*on_incremental)(void *arg, const char *why);
	void *arg;
	/* Test seam: called on the I/O thread just before a change reaches the
	 * source (the range is held). NULL in the daemon. */
	void (*before_source_write)(void *arg, unsigned volume, const struct cdp_io_req *req);
	/* Test seam: called on the seal thread as it starts a segment's compute
	 * (already SCHED_IDLE if it will be). */
	void (*before_seal)(void *arg);
	/* Test seam: sync reads buffered, as where O_DIRECT is refused. */
	bool sync_buffered;
};

enum cdp_split_mode { CDP_SPLIT_INCREMENTAL, CDP_SPLIT_CONTINUOUS };

int cdp_splitter_open(const struct cdp_splitter_opts *o, struct cdp_splitter **out,
		      struct cdp_err *err);
/* Waits for in-flight I/O and the seal thread; seals nothing more. */
void cdp_splitter_close(struct cdp_splitter *sp);

/*
 * The size of the source file or block device at @path (BLKGETSIZE64 for a
 * block device), as cdp_splitter_open() will serve it: the agent sizes its
 * dirty bitmap before the splitter opens.
 */
int cdp_splitter_source_size(const char *path, uint64_t *size, struct cdp_err *err);

struct cdp_export *cdp_splitter_export(struct cdp_splitter *sp, unsigned volume);
uint64_t cdp_splitter_volume_size(struct cdp_splitter *sp, unsigned volume);

/*
 * Capture goes on as records after @durable_seq, chaining from @digest, at
 * @plan_id/@epoch, with the journal's sync state (@sync_active: a sync span
 * open there) and no record older than @t_min. Records already cached that
 * the journal lacks are the link's business; the splitter only continues.
 * Returns the mode after the call (still INCREMENTAL when the bitmap has
 * dirty blocks: cdp_splitter_resync() then).
 */
void cdp_splitter_continue(struct cdp_splitter *sp, uint64_t plan_id, uint64_t epoch,
			   uint64_t durable_seq, const uint8_t digest[CDP_DIGEST_LEN],
			   int64_t t_min);

/* Falls back to incremental mode (see above). */
int cdp_splitter_go_incremental(struct cdp_splitter *sp, const char *why, struct cdp_err *err);

enum cdp_split_mode cdp_splitter_mode(struct cdp_splitter *sp);

/*
 * The caps of a sync; any thread may change them while it runs (read before
 * each chunk).
 */
struct cdp_sync_caps {
	/* bytes/s of RESYNC WRITE payload (ZERO records count nothing); 0: unlimited */
	_Atomic uint64_t net_bps;
	/* percent of the source's read bandwidth, measured by a probe of up to
	 * 64 MiB of data when the cap is first on in a sync; 0: off */
	_Atomic unsigned read_percent;
};

/*
 * Needs the chain anchored: after cdp_splitter_go_incremental() (which may
 * drop segments the journal never receives), only a cdp_splitter_continue()
 * from the journal's head re-anchors it; until then -EAGAIN.
 * Sends dirty blocks as RESYNC records inside SYNC_BEGIN/SYNC_END of @kind
 * (CDP_SYNC_INCREMENTAL, or CDP_SYNC_FULL: every block of every volume, holes
 * and zero blocks as ZERO records, from the checkpoint (@from_volume,
 * @from_offset)). Switches to CONTINUOUS first (writes during the resync are
 * records after the blocks they overwrite). Blocking: call from a sync
 * thread. Stops early with -ECANCELED when @stop becomes true or the mode
 * goes back to INCREMENTAL.
 *
 * Reads 1 MiB chunks with O_DIRECT (buffered plus POSIX_FADV_DONTNEED where
 * refused), up to 4 in flight, each under its range lock until its record is
 * added. Paced by @caps (borrowed; NULL: unlimited): the stricter of the two
 * caps wins. The records never crowd CDP records out of the cache.
 */
int cdp_splitter_resync(struct cdp_splitter *sp, uint32_t kind, unsigned from_volume,
			uint64_t from_offset, const _Atomic bool *stop,
			const struct cdp_sync_caps *caps, struct cdp_err *err);

/*
 * Pacing arithmetic (pure; the sync reads the clock and sleeps). A pacer
 * counts bytes since the start of its window; the window restarts when the
 * rate changes, and after more than 1 s idle (no burst to catch up).
 */
struct cdp_splitter_pacer {
	uint64_t rate;		/* bytes/s the window was started with */
	int64_t t0;		/* mono ns, the window's start */
	uint64_t bytes;		/* since t0 */
};
void cdp_splitter_pacer_add(struct cdp_splitter_pacer *p, uint64_t bytes);
/* Gives @bytes back (counted but not sent); never below the window's start. */
void cdp_splitter_pacer_sub(struct cdp_splitter_pacer *p, uint64_t bytes);
/* ns to wait at @now (mono ns) before more bytes may go at @rate (bytes/s; 0: none). */
int64_t cdp_splitter_pacer_wait(struct cdp_splitter_pacer *p, uint64_t rate, int64_t now);
/* bytes/s of @bytes read in @busy_ns (0 when @busy_ns <= 0: not measurable). */
uint64_t cdp_splitter_read_bandwidth(uint64_t bytes, int64_t busy_ns);
/* The read cap, bytes/s, for @percent (0: off) of @measured_bps (0: not measured: off). */
uint64_t cdp_splitter_read_cap(uint64_t measured_bps, unsigned percent);

/* Point interval: cuts the open segment (POINT_END, or a heartbeat) when due. */
void cdp_splitter_tick(struct cdp_splitter *sp);
/* A MARK record with the next seq (CONTINUOUS only; -EAGAIN otherwise). */
int cdp_splitter_mark(struct cdp_splitter *sp, const char *name, struct cdp_err *err);
/*
 * The journal made every seq <= @durable_seq durable, and the segment with
 * chain digest @digest (NULL: not said) and everything before it.
 */
void cdp_splitter_acked(struct cdp_splitter *sp, uint64_t durable_seq, const uint8_t *digest);

struct cdp_splitter_stats {
	enum cdp_split_mode mode;
	uint64_t next_seq;
	uint64_t writes, write_bytes;	/* completed through the splitter */
	uint64_t records, segments, heartbeats;
	uint64_t seals_fast, seals_raw;	/* segments with records: zstd's fast level, no zstd */
	uint64_t resync_bytes;		/* RESYNC WRITE payload sent */
	uint64_t resync_zero_bytes;	/* covered by RESYNC ZERO records */
	uint64_t resync_read_bytes;	/* read from the sources by syncs */
	uint64_t resync_direct_bytes;	/* of which with O_DIRECT */
	uint64_t resync_read_bps;	/* the last sync's measured source read bandwidth */
	uint64_t source_errors;
	uint64_t range_waits;		/* requests that waited for an overlap */
	uint64_t resync_range_waits;	/* sync chunks that waited for an overlapping write */
	unsigned seal_backlog;
	uint64_t seal_promotions;	/* times the idle seal thread fell behind (SCHED_OTHER) */
	bool seal_idle;			/* the seal thread computes as SCHED_IDLE now */
};
void cdp_splitter_stats(struct cdp_splitter *sp, struct cdp_splitter_stats *st);

#endif
