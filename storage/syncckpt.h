/*
 * storage/syncckpt - the agent's local copy of its full-sync checkpoint
 * (SPEC: "progress is persisted locally and on the journal server").
 *
 * Owns: one small file in the agent's state_dir holding the checkpoint the
 * journal server acknowledged last: sync id, kind, volume and offset (the
 * bytes of that volume the journal has; volume == the number of volumes:
 * the sync finished). The journal's copy is the authority: the agent resumes
 * from the welcome's checkpoint and uses this one to notice a journal that
 * lost acknowledged data, or a sync the journal no longer knows.
 *
 * Crash safety: every write replaces the file whole (cdp_io_write_whole:
 * temporary file, fdatasync, rename, fsync of the directory), so a crash
 * leaves the old checkpoint or the new one. A torn or garbage file fails
 * its checks (magic, version, size, CRC32C) and is reported, never trusted.
 * Format: docs/format.md, "Sync checkpoint".
 *
 * Threads: no state; callers serialise writes to one path.
 */
#ifndef CDP_STORAGE_SYNCCKPT_H
#define CDP_STORAGE_SYNCCKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct cdp_io;

#define CDP_SYNCCKPT_LEN 44	/* bytes of the file */

struct cdp_syncckpt {
	uint64_t sync_id;
	uint32_t kind;		/* CDP_SYNC_FULL */
	uint32_t volume;	/* >= the number of volumes: finished */
	uint64_t offset;	/* bytes of @volume acknowledged */
};

/* Writes @ck to @path (see above; @io NULL: the real one). 0 or -errno, @err naming the file. */
int cdp_syncckpt_write(const char *path, const struct cdp_syncckpt *ck, const struct cdp_io *io,
		       struct cdp_err *err);

/*
 * Reads @path: 1 with *@ck filled; 0 when there is no file; -EBADMSG when it
 * fails a check (torn, garbage), -errno when it cannot be read, with @err a
 * one-line message naming the file. The caller treats an error as no file.
 */
int cdp_syncckpt_read(const char *path, struct cdp_syncckpt *ck, const struct cdp_io *io,
		      struct cdp_err *err);

/*
 * Decodes the @n bytes of a checkpoint file: 0 with *@ck filled, or
 * -EBADMSG with @err one line naming @name (the file) and what failed.
 */
int cdp_syncckpt_decode(const uint8_t *b, size_t n, const char *name, struct cdp_syncckpt *ck,
			struct cdp_err *err);

/* Whether @a is before @b in sync order (volume, then offset). */
bool cdp_syncckpt_before(const struct cdp_syncckpt *a, const struct cdp_syncckpt *b);

/*
 * Whether a newly acknowledged checkpoint @ck is to be written now, @last
 * (NULL: none yet) having been written at @last_ns: a new sync or a finished
 * one (volume >= @nvolumes) at once; progress of the same sync at most once
 * per @interval_ns; nothing new, never.
 */
bool cdp_syncckpt_due(const struct cdp_syncckpt *ck, const struct cdp_syncckpt *last,
		      int64_t last_ns, int64_t now_ns, int64_t interval_ns, unsigned nvolumes);

/* What the journal's checkpoint says against the local copy (see compare()). */
enum cdp_syncckpt_verdict {
	CDP_SYNCCKPT_QUIET,		/* nothing to say: no local copy, or both agree */
	CDP_SYNCCKPT_RESUME,		/* one sync, unfinished, the journal's at or past ours */
	CDP_SYNCCKPT_JOURNAL_BEHIND,	/* one sync, the journal's before ours: it lost data */
	CDP_SYNCCKPT_JOURNAL_OTHER,	/* ours unfinished, the journal has another sync */
	CDP_SYNCCKPT_JOURNAL_NONE,	/* ours unfinished, the journal has no full sync */
};

/*
 * Weighs the local copy @local (NULL: none) against the journal server's
 * full-sync checkpoint @journal (NULL: none) at start. Only full syncs
 * count; volume >= @nvolumes is a finished sync. The journal stays the
 * authority whatever this says: the caller resumes from @journal.
 */
enum cdp_syncckpt_verdict cdp_syncckpt_compare(const struct cdp_syncckpt *local,
					       const struct cdp_syncckpt *journal,
					       unsigned nvolumes);

#endif
