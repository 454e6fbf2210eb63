/*
 * storage/actlog - the agent's activity log (DRBD's idea, our format): a
 * small on-disk record of the volume extents (default 4 MiB) that may hold
 * writes the journal server has not made durable yet. After an unclean stop
 * of the agent or the source, exactly those extents (plus the dirty bitmap,
 * storage/dirtymap) are resynced, instead of whole volumes.
 *
 * Rules (ARCHITECTURE "The agent"):
 *  - cdp_actlog_begin() before a write is submitted to the source: every
 *    extent it touches is made active; the log file is written and synced
 *    only when an extent enters the active set, so writes to hot extents cost
 *    nothing.
 *  - cdp_actlog_note() after the write completed with its seq;
 *    cdp_actlog_settle(safe_seq) when the journal has acknowledged every seq
 *    <= safe_seq AND the source was flushed after those writes completed:
 *    extents whose writes all have seq <= safe_seq become idle and may leave
 *    the set (they leave lazily, when room is needed: until then they stay
 *    in the set and in the log, so writing to them again costs nothing).
 *  - When a new extent must enter and the set is full of busy extents, the
 *    least recently used one is handed to @spill (the caller marks its range
 *    dirty in the bitmap and persists that) and then leaves.
 *  - Sequential writers: when a log write is due for a new extent that
 *    follows a run of active ones, the extents after it enter in the same
 *    write, twice the run's length (at most AL_AHEAD_MAX, only into room
 *    that is free or idle), as readahead does for reads. A stream then
 *    costs one sync per AL_AHEAD_MAX extents, not one per extent; a crash
 *    resyncs at most that much more of it. Needs the volume sizes.
 *
 * On-disk: a fixed-size file of slots; each log write goes to the next slot
 * (a ring) with a generation number and CRC32C, holding the whole active set;
 * open picks the valid slot with the highest generation, so a torn write of
 * one slot loses nothing. All file I/O goes through storage/io (power-cut
 * shim in tests). Thread-safe: one mutex; fdatasync happens with it released
 * for writers whose extents are already active.
 */
#ifndef CDP_STORAGE_ACTLOG_H
#define CDP_STORAGE_ACTLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct cdp_io;
struct cdp_actlog;

struct cdp_al_extent {
	uint32_t volume;
	uint64_t index;		/* extent number: offset >> extent_shift */
};

struct cdp_actlog_opts {
	unsigned nvolumes;
	unsigned extent_shift;	/* 0: 22 (4 MiB); 16..30 */
	unsigned max_active;	/* 0: 1024 extents (4 GiB of volume at 4 MiB) */
	const struct cdp_io *io;	/* NULL: the real one */
	/* Volume sizes in bytes (nvolumes of them): extents past the end are
	 * never taken ahead. NULL: none are. */
	const uint64_t *volume_sizes;
	/* Called (lock held, from begin()) for a busy extent that must leave. */
	int (*spill)(void *arg, const struct cdp_al_extent *x, struct cdp_err *err);
	void *spill_arg;
};

/*
 * Opens (creating when missing) the log at @path. An existing log's active
 * set becomes the recovered set (cdp_actlog_recovered()); it stays active
 * until the caller has resynced it and calls cdp_actlog_recovered_done().
 * A log made with a different nvolumes, extent_shift or max_active is refused
 * (-EINVAL, naming the field); a damaged header is -EBADMSG.
 */
int cdp_actlog_open(const char *path, const struct cdp_actlog_opts *o, struct cdp_actlog **out,
		    struct cdp_err *err);
void cdp_actlog_close(struct cdp_actlog *al);

/* The extents active at the last stop (in order); returns the count (<= max). */
size_t cdp_actlog_recovered(struct cdp_actlog *al, struct cdp_al_extent *out, size_t max);
/* The recovered extents were resynced: they may leave like any idle extent. */
void cdp_actlog_recovered_done(struct cdp_actlog *al);

/*
 * Makes every extent of [off, off+len) on @volume active (durably) before a
 * write is submitted. Returns 0, or -errno (-EIO: the log could not be
 * written: the write must not be submitted; -EINVAL: len 0, a range past
 * 2^63, more than max_active extents, or no such volume; -EBUSY: the set is
 * full of busy extents and there is no @spill; or @spill's error).
 */
int cdp_actlog_begin(struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len,
		     struct cdp_err *err);
/*
 * Lets every idle extent leave now and writes the set that remains (a clean
 * stop: after the caller made every write safe, the log is empty and the
 * next start resyncs nothing). Returns 0 or -errno.
 */
int cdp_actlog_trim(struct cdp_actlog *al, struct cdp_err *err);

/* The write over [off, off+len) completed with @seq. */
void cdp_actlog_note(struct cdp_actlog *al, uint32_t volume, uint64_t off, uint64_t len,
		     uint64_t seq);
/* Every seq <= @safe_seq is durable in the journal and flushed on the source. */
void cdp_actlog_settle(struct cdp_actlog *al, uint64_t safe_seq);

struct cdp_actlog_stats {
	unsigned active;	/* extents in the set */
	unsigned max_active;	/* its bound */
	unsigned busy;		/* with writes above the last safe seq */
	uint64_t log_writes;	/* synced slot writes since open */
	uint64_t ahead;		/* extents taken ahead of a sequential writer */
	uint64_t spills;	/* busy extents handed to spill */
};
void cdp_actlog_stats(struct cdp_actlog *al, struct cdp_actlog_stats *st);

#endif
