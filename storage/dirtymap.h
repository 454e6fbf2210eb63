/*
 * storage/dirtymap - the agent's persisted dirty bitmap: per volume, one bit
 * per block of `granularity` bytes (4-64 KiB) whose content the journal may
 * lack. Incremental mode keeps changes here instead of as records; the
 * activity log spills busy extents here; a failed source write marks its
 * range here. A resync sends every dirty block as RESYNC records and clears
 * the bits it covered once the journal acknowledged them.
 *
 * Persisted with a generation marker: the file holds two slots; each
 * persist writes the whole map into the older slot with generation + 1 and a
 * CRC32C, then fdatasyncs; open takes the valid slot with the higher
 * generation, so a torn persist loses nothing persisted before. All file I/O
 * goes through storage/io. Thread-safe (one mutex).
 */
#ifndef CDP_STORAGE_DIRTYMAP_H
#define CDP_STORAGE_DIRTYMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct cdp_io;
struct cdp_dirtymap;

struct cdp_dirtymap_opts {
	unsigned nvolumes;
	const uint64_t *volume_sizes;	/* bytes, nvolumes entries */
	uint32_t granularity;		/* power of two, 4096..65536; 0: 65536 */
	const struct cdp_io *io;	/* NULL: the real one */
};

/*
 * Opens (creating when missing) the map at @path; an existing one keeps its
 * bits. A map made for other volume sizes or granularity is refused (-EINVAL).
 */
int cdp_dirtymap_open(const char *path, const struct cdp_dirtymap_opts *o,
		      struct cdp_dirtymap **out, struct cdp_err *err);
void cdp_dirtymap_close(struct cdp_dirtymap *m);

/* Marks / clears every block touching [off, off+len) (in memory). */
void cdp_dirtymap_set(struct cdp_dirtymap *m, uint32_t volume, uint64_t off, uint64_t len);
void cdp_dirtymap_clear(struct cdp_dirtymap *m, uint32_t volume, uint64_t off, uint64_t len);
/* Writes the map durably (see above); nothing when nothing changed since the
 * last persist. Returns 0 or -errno. */
int cdp_dirtymap_persist(struct cdp_dirtymap *m, struct cdp_err *err);

/*
 * The first dirty run of blocks at or after @from on @volume, as a byte range
 * clipped to the volume and to @max_len (0: no limit), starting at @from when
 * @from is inside a dirty block; returns false when none.
 */
bool cdp_dirtymap_next(struct cdp_dirtymap *m, uint32_t volume, uint64_t from, uint64_t max_len,
		       uint64_t *off, uint64_t *len);
uint64_t cdp_dirtymap_dirty_bytes(struct cdp_dirtymap *m, uint32_t volume);
uint64_t cdp_dirtymap_generation(struct cdp_dirtymap *m);	/* of the last persist */
uint32_t cdp_dirtymap_granularity(const struct cdp_dirtymap *m);

#endif
