/*
 * storage/dirtymap - the agent's persisted dirty bitmap (see dirtymap.h for
 * the API and docs/format.md "Agent state files" for the bytes).
 *
 * DESIGN
 * - In memory: one array of 64-bit words for all volumes (volume v from word
 *   word0[v]; bit b of word w is block 64 * (w - word0[v]) + b). Bits past a
 *   volume's last block are always zero, so scanning needs no masks at the
 *   end. Set bits are counted per volume as they change (popcount of the
 *   bits each word operation flips), so dirty_bytes() is O(1).
 * - A block is `granularity` bytes; a volume's last block may be partial.
 *   set() rounds outward; clear() inward, except that a range reaching the
 *   end of the volume covers the partial last block wholly.
 * - Persist: `changes` counts set()/clear() calls that flipped a bit;
 *   `durable` is the count the last successful persist covered. A persist
 *   with nothing new writes nothing. Otherwise one writer at a time
 *   (`writing`) copies the map into the slot image under the mutex, then
 *   writes and fdatasyncs with it released, into the slot that does not
 *   hold the last synced generation (so a torn or failed persist, even
 *   several in a row, never touches the slot open falls back to). Callers
 *   that arrive during a write wait for it and return at once when it
 *   covered their changes (group commit); otherwise one of them writes next.
 * - Generations grow with every attempt; open takes the valid slot with the
 *   highest one.
 *
 * Threads: everything below `mu` in struct cdp_dirtymap is guarded by it;
 * buf belongs to the thread that set `writing`.
 */
#include "storage/dirtymap.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "storage/io.h"
#include "storage/segment.h"

#define DM_MAGIC "CDP-DMAP"
#define DM_VERSION 1u
#define DM_SLOT_MAGIC "DMSL"
#define DM_MAX_VOLUMES 4096u
#define DM_MAX_MAP (UINT64_C(256) << 20)	/* bytes of bits, all volumes */

/* Header offsets (docs/format.md). */
enum {
	H_MAGIC = 0,		/* 8 bytes */
	H_VERSION = 8,		/* u32 */
	H_HDR_SIZE = 12,	/* u32 */
	H_NVOLUMES = 16,	/* u32 */
	H_GRANULARITY = 20,	/* u32 */
	H_SLOT_SIZE = 24,	/* u64 */
	H_SIZES = 32,		/* nvolumes x u64, then the CRC32C of [0, here) */
};

/* Slot offsets. */
enum {
	S_MAGIC = 0,		/* 4 bytes */
	S_ZERO = 4,		/* u32 */
	S_GEN = 8,		/* u64 */
	S_BITS = 16,		/* nwords x u64, then the CRC32C of [0, here) */
};

struct cdp_dirtymap {
	const struct cdp_io *io;
	int fd;
	unsigned nvolumes;
	uint32_t gran;
	unsigned gshift;
	uint64_t *sizes;	/* bytes */
	uint64_t *nbits;	/* blocks */
	size_t *word0;		/* nvolumes + 1 entries */
	size_t nwords;
	uint32_t hdr_size;
	uint64_t slot_size;
	uint8_t *buf;		/* slot image: the writer's */

	pthread_mutex_t mu;
	pthread_cond_t cond;	/* a persist ended */
	/* Everything below is guarded by mu. */
	uint64_t *bits;
	uint64_t *ndirty;	/* set bits per volume */
	uint64_t changes, durable;
	uint64_t gen;		/* of the last successful persist (or found at open) */
	uint64_t attempt;	/* newest generation written or found */
	unsigned good_slot;	/* holds gen; 2: none */
	bool writing;
};

/* ---- bits ------------------------------------------------------------- */

/* Sets (or clears) bits [a, b) of @volume; counts what flipped. */
static void flip_range(struct cdp_dirtymap *m, unsigned volume, uint64_t a, uint64_t b, bool set)
{
	uint64_t *w = m->bits + m->word0[volume];
	uint64_t n = 0;

	while (a < b) {
		uint64_t i = a >> 6, lo = a & 63, hi = CDP_MIN(b - (i << 6), 64);
		uint64_t mask = (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
		uint64_t flip = set ? ~w[i] & mask : w[i] & mask;

		if (flip) {
			w[i] ^= flip;
			n += (uint64_t)__builtin_popcountll(flip);
		}
		a = (i + 1) << 6;
	}
	if (!n)
		return;
	if (set)
		m->ndirty[volume] += n;
	else
		m->ndirty[volume] -= n;
	m->changes++;
}

/* First bit at or after @a (< @end) with value @val, or @end. */
static uint64_t scan(const uint64_t *w, uint64_t a, uint64_t end, bool val)
{
	while (a < end) {
		uint64_t i = a >> 6, x = val ? w[i] : ~w[i];

		x &= ~0ull << (a & 63);
		if (x)
			return CDP_MIN((i << 6) + (uint64_t)__builtin_ctzll(x), end);
		a = (i + 1) << 6;
	}
	return end;
}

static bool range_ok(const struct cdp_dirtymap *m, uint32_t volume, uint64_t off, uint64_t len)
{
	return volume < m->nvolumes && len && off < m->sizes[volume];
}

void cdp_dirtymap_set(struct cdp_dirtymap *m, uint32_t volume, uint64_t off, uint64_t len)
{
	uint64_t end, a, b;

	if (!range_ok(m, volume, off, len))
		return;
	end = len > m->sizes[volume] - off ? m->sizes[volume] : off + len;
	a = off >> m->gshift;
	b = ((end - 1) >> m->gshift) + 1;
	pthread_mutex_lock(&m->mu);
	flip_range(m, volume, a, b, true);
	pthread_mutex_unlock(&m->mu);
}

void cdp_dirtymap_clear(struct cdp_dirtymap *m, uint32_t volume, uint64_t off, uint64_t len)
{
	uint64_t a, b;

	if (!range_ok(m, volume, off, len))
		return;
	a = (off >> m->gshift) + ((off & (m->gran - 1)) != 0);
	if (len >= m->sizes[volume] - off)
		b = m->nbits[volume];	/* to the end: the partial last block too */
	else
		b = (off + len) >> m->gshift;
	if (a >= b)
		return;
	pthread_mutex_lock(&m->mu);
	flip_range(m, volume, a, b, false);
	pthread_mutex_unlock(&m->mu);
}

bool cdp_dirtymap_next(struct cdp_dirtymap *m, uint32_t volume, uint64_t from, uint64_t max_len,
		       uint64_t *off, uint64_t *len)
{
	uint64_t a, b, start, end, size;

	if (volume >= m->nvolumes || from >= m->sizes[volume])
		return false;
	size = m->sizes[volume];
	pthread_mutex_lock(&m->mu);
	a = scan(m->bits + m->word0[volume], from >> m->gshift, m->nbits[volume], true);
	b = a < m->nbits[volume] ? scan(m->bits + m->word0[volume], a, m->nbits[volume], false) : a;
	pthread_mutex_unlock(&m->mu);
	if (a == b)
		return false;
	start = CDP_MAX(from, a << m->gshift);
	end = b >= m->nbits[volume] ? size : b << m->gshift;
	if (max_len && end - start > max_len)
		end = start + max_len;
	*off = start;
	*len = end - start;
	return true;
}

uint64_t cdp_dirtymap_dirty_bytes(struct cdp_dirtymap *m, uint32_t volume)
{
	uint64_t n, bytes;
	bool last;

	if (volume >= m->nvolumes)
		return 0;
	pthread_mutex_lock(&m->mu);
	n = m->ndirty[volume];
	last = n && (m->bits[m->word0[volume] + ((m->nbits[volume] - 1) >> 6)] >>
		     ((m->nbits[volume] - 1) & 63)) & 1;
	pthread_mutex_unlock(&m->mu);
	bytes = n << m->gshift;
	if (last)	/* the last block may be partial */
		bytes -= (m->nbits[volume] << m->gshift) - m->sizes[volume];
	return bytes;
}

uint64_t cdp_dirtymap_generation(struct cdp_dirtymap *m)
{
	uint64_t g;

	pthread_mutex_lock(&m->mu);
	g = m->gen;
	pthread_mutex_unlock(&m->mu);
	return g;
}

uint32_t cdp_dirtymap_granularity(const struct cdp_dirtymap *m)
{
	return m->gran;
}

/* ---- persist ---------------------------------------------------------- */

/* Writes and syncs the map (mu held on entry and return, released during I/O). */
static int write_map(struct cdp_dirtymap *m, struct cdp_err *err)
{
	uint64_t snap = m->changes, gen = ++m->attempt;
	unsigned slot = m->good_slot == 0 ? 1 : 0;
	uint64_t off = m->hdr_size + slot * m->slot_size;
	size_t used = S_BITS + m->nwords * 8;
	int rc;

	memcpy(m->buf + S_MAGIC, DM_SLOT_MAGIC, 4);
	cdp_put_le32(m->buf + S_ZERO, 0);
	cdp_put_le64(m->buf + S_GEN, gen);
	for (size_t i = 0; i < m->nwords; i++)
		cdp_put_le64(m->buf + S_BITS + i * 8, m->bits[i]);
	m->writing = true;
	pthread_mutex_unlock(&m->mu);

	cdp_put_le32(m->buf + used, cdp_crc32c(0, m->buf, used));
	rc = cdp_io_pwrite(m->io, m->fd, m->buf, (size_t)m->slot_size, off);
	if (rc < 0) {
		cdp_err_sys(err, rc, "dirty map: writing slot %u (generation %" PRIu64 ")", slot,
			    gen);
	} else {
		rc = cdp_io_fdatasync(m->io, m->fd);
		if (rc < 0)
			cdp_err_sys(err, rc,
				    "dirty map: fdatasync of slot %u (generation %" PRIu64 ")",
				    slot, gen);
	}

	pthread_mutex_lock(&m->mu);
	m->writing = false;
	if (rc == 0) {
		m->durable = snap;
		m->gen = gen;
		m->good_slot = slot;
	}
	pthread_cond_broadcast(&m->cond);
	return rc;
}

int cdp_dirtymap_persist(struct cdp_dirtymap *m, struct cdp_err *err)
{
	uint64_t need;
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	need = m->changes;
	while (m->durable < need) {
		if (!m->writing) {
			rc = write_map(m, err);
			if (rc < 0)
				break;
			continue;
		}
		pthread_cond_wait(&m->cond, &m->mu);
	}
	pthread_mutex_unlock(&m->mu);
	return rc;
}

/* ---- open and close --------------------------------------------------- */

static uint32_t hdr_size_for(unsigned nvolumes)
{
	return CDP_ALIGN_UP(H_SIZES + 8 * nvolumes + 4, CDP_IO_ALIGN);
}


static void fill_header(const struct cdp_dirtymap *m, uint8_t *h)
{
	size_t crc_at = H_SIZES + 8 * (size_t)m->nvolumes;

	memset(h, 0, m->hdr_size);
	memcpy(h + H_MAGIC, DM_MAGIC, 8);
	cdp_put_le32(h + H_VERSION, DM_VERSION);
	cdp_put_le32(h + H_HDR_SIZE, m->hdr_size);
	cdp_put_le32(h + H_NVOLUMES, m->nvolumes);
	cdp_put_le32(h + H_GRANULARITY, m->gran);
	cdp_put_le64(h + H_SLOT_SIZE, m->slot_size);
	for (unsigned v = 0; v < m->nvolumes; v++)
		cdp_put_le64(h + H_SIZES + 8 * v, m->sizes[v]);
	cdp_put_le32(h + crc_at, cdp_crc32c(0, h, crc_at));
}

static int read_header(struct cdp_dirtymap *m, struct cdp_err *err)
{
	uint32_t max = hdr_size_for(DM_MAX_VOLUMES), nvol, hsize, crc;
	uint8_t *h = cdp_xaligned_alloc(CDP_IO_ALIGN, max);
	size_t crc_at;
	long n;
	int rc;

	n = m->io->pread(m->io->ctx, m->fd, h, max, 0);
	if (n < 0) {
		rc = cdp_err_sys(err, (int)n, "reading the header");
		goto out;
	}
	rc = -EBADMSG;
	if (n < H_SIZES) {
		cdp_err_set(err, rc, "header: %ld bytes, want %u", n, m->hdr_size);
		goto out;
	}
	if (memcmp(h + H_MAGIC, DM_MAGIC, 8)) {
		cdp_err_set(err, rc, "header: bad magic (not a dirty map)");
		goto out;
	}
	if (cdp_get_le32(h + H_VERSION) != DM_VERSION) {
		cdp_err_set(err, rc, "header: version %" PRIu32 ", want %u",
			    cdp_get_le32(h + H_VERSION), DM_VERSION);
		goto out;
	}
	/* The header's own size and count first: its CRC is at their end. */
	nvol = cdp_get_le32(h + H_NVOLUMES);
	hsize = cdp_get_le32(h + H_HDR_SIZE);
	if (nvol < 1 || nvol > DM_MAX_VOLUMES || hsize != hdr_size_for(nvol)) {
		cdp_err_set(err, rc, "header: nvolumes %" PRIu32 " with size %" PRIu32
			    " is not a valid header", nvol, hsize);
		goto out;
	}
	if (n < hsize) {
		cdp_err_set(err, rc, "header: %ld bytes, want %" PRIu32, n, hsize);
		goto out;
	}
	crc_at = H_SIZES + 8 * (size_t)nvol;
	crc = cdp_crc32c(0, h, crc_at);
	if (crc != cdp_get_le32(h + crc_at)) {
		cdp_err_set(err, rc, "header: crc32c %08" PRIx32 ", computed %08" PRIx32,
			    cdp_get_le32(h + crc_at), crc);
		goto out;
	}
	rc = -EINVAL;
	if (nvol != m->nvolumes) {
		cdp_err_set(err, rc, "nvolumes %u, the map has %" PRIu32, m->nvolumes, nvol);
		goto out;
	}
	if (cdp_get_le32(h + H_GRANULARITY) != m->gran) {
		cdp_err_set(err, rc, "granularity %" PRIu32 ", the map has %" PRIu32, m->gran,
			    cdp_get_le32(h + H_GRANULARITY));
		goto out;
	}
	for (unsigned v = 0; v < nvol; v++) {
		if (cdp_get_le64(h + H_SIZES + 8 * v) != m->sizes[v]) {
			cdp_err_set(err, rc, "volume %u size %" PRIu64 ", the map has %" PRIu64, v,
				    m->sizes[v], cdp_get_le64(h + H_SIZES + 8 * v));
			goto out;
		}
	}
	if (cdp_get_le64(h + H_SLOT_SIZE) != m->slot_size) {
		rc = cdp_err_set(err, -EBADMSG, "header: slot_size %" PRIu64 ", want %" PRIu64,
				 cdp_get_le64(h + H_SLOT_SIZE), m->slot_size);
		goto out;
	}
	rc = 0;
out:
	free(h);
	return rc;
}

/* Reads slot @i into buf; its generation when valid, else 0. */
static int read_slot(struct cdp_dirtymap *m, unsigned i, uint64_t *gen, struct cdp_err *err)
{
	size_t used = S_BITS + m->nwords * 8;
	long n = m->io->pread(m->io->ctx, m->fd, m->buf, (size_t)m->slot_size,
			      m->hdr_size + i * m->slot_size);

	*gen = 0;
	if (n < 0)
		return cdp_err_sys(err, (int)n, "reading slot %u", i);
	if ((uint64_t)n < used + 4 || memcmp(m->buf + S_MAGIC, DM_SLOT_MAGIC, 4) ||
	    cdp_crc32c(0, m->buf, used) != cdp_get_le32(m->buf + used))
		return 0;
	*gen = cdp_get_le64(m->buf + S_GEN);
	return 0;
}

/* The newest valid slot becomes the map. */
static int load(struct cdp_dirtymap *m, struct cdp_err *err)
{
	uint64_t g[2];
	unsigned best;
	int rc;

	for (unsigned i = 0; i < 2; i++) {
		rc = read_slot(m, i, &g[i], err);
		if (rc < 0)
			return rc;
	}
	if (!g[0] && !g[1]) {
		m->good_slot = 2;
		return 0;
	}
	best = g[1] > g[0];
	rc = read_slot(m, best, &g[best], err);
	if (rc < 0)
		return rc;
	if (!g[best])
		return cdp_err_set(err, -EIO, "slot %u changed while opening", best);
	m->gen = m->attempt = g[best];
	m->good_slot = best;
	for (unsigned v = 0; v < m->nvolumes; v++) {
		size_t end = m->word0[v + 1];

		for (size_t i = m->word0[v]; i < end; i++) {
			uint64_t w = cdp_get_le64(m->buf + S_BITS + i * 8);

			if (i == end - 1 && (m->nbits[v] & 63) && w >> (m->nbits[v] & 63))
				return cdp_err_set(err, -EBADMSG,
						   "slot %u (generation %" PRIu64 "): volume %u has"
						   " bits past its %" PRIu64 " blocks",
						   best, m->gen, v, m->nbits[v]);
			m->bits[i] = w;
			m->ndirty[v] += (uint64_t)__builtin_popcountll(w);
		}
	}
	return 0;
}

static int check_opts(const struct cdp_dirtymap_opts *o, struct cdp_err *err)
{
	uint32_t g = o->granularity ? o->granularity : 65536;
	uint64_t bytes = 0;

	if (o->nvolumes < 1 || o->nvolumes > DM_MAX_VOLUMES)
		return cdp_err_set(err, -EINVAL, "nvolumes %u not in 1..%u", o->nvolumes,
				   DM_MAX_VOLUMES);
	if (!o->volume_sizes)
		return cdp_err_set(err, -EINVAL, "volume_sizes missing");
	if (g < 4096 || g > 65536 || (g & (g - 1)))
		return cdp_err_set(err, -EINVAL,
				   "granularity %" PRIu32 " not a power of two in 4096..65536", g);
	for (unsigned v = 0; v < o->nvolumes; v++) {
		uint64_t words = (o->volume_sizes[v] / g + 1 + 63) / 64;

		bytes += 8 * words;
		if (bytes > DM_MAX_MAP)
			return cdp_err_set(err, -EINVAL,
					   "volume %u size %" PRIu64 ": map over %" PRIu64
					   " bytes at granularity %" PRIu32,
					   v, o->volume_sizes[v], DM_MAX_MAP, g);
	}
	return 0;
}

int cdp_dirtymap_open(const char *path, const struct cdp_dirtymap_opts *o,
		      struct cdp_dirtymap **out, struct cdp_err *err)
{
	struct cdp_dirtymap *m;
	int rc;

	*out = NULL;
	rc = check_opts(o, err);
	if (rc < 0) {
		cdp_err_prefix(err, "dirty map %s", path);
		return rc;
	}
	m = cdp_xcalloc(1, sizeof(*m));
	m->io = o->io ? o->io : cdp_io_real();
	m->fd = -1;
	m->nvolumes = o->nvolumes;
	m->gran = o->granularity ? o->granularity : 65536;
	m->gshift = (unsigned)__builtin_ctz(m->gran);
	m->sizes = cdp_xcalloc(m->nvolumes, sizeof(*m->sizes));
	m->nbits = cdp_xcalloc(m->nvolumes, sizeof(*m->nbits));
	m->word0 = cdp_xcalloc(m->nvolumes + 1, sizeof(*m->word0));
	m->ndirty = cdp_xcalloc(m->nvolumes, sizeof(*m->ndirty));
	for (unsigned v = 0; v < m->nvolumes; v++) {
		m->sizes[v] = o->volume_sizes[v];
		m->nbits[v] = (m->sizes[v] >> m->gshift) + ((m->sizes[v] & (m->gran - 1)) != 0);
		m->word0[v + 1] = m->word0[v] + (size_t)((m->nbits[v] + 63) / 64);
	}
	m->nwords = m->word0[m->nvolumes];
	m->bits = cdp_xcalloc(m->nwords ? m->nwords : 1, sizeof(*m->bits));
	m->hdr_size = hdr_size_for(m->nvolumes);
	m->slot_size = CDP_ALIGN_UP(S_BITS + 8 * (uint64_t)m->nwords + 4, CDP_IO_ALIGN);
	m->buf = cdp_xaligned_alloc(CDP_IO_ALIGN, (size_t)m->slot_size);
	memset(m->buf, 0, (size_t)m->slot_size);
	m->good_slot = 2;
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cond, NULL);

	/* A new map is created whole: header and zeroed slots, written aside, renamed. */
	{
		uint8_t *h = cdp_xaligned_alloc(CDP_IO_ALIGN, m->hdr_size);

		fill_header(m, h);
		rc = cdp_io_open_or_create(m->io, path, h, m->hdr_size,
					   m->hdr_size + 2 * m->slot_size, err);
		free(h);
	}
	if (rc < 0)
		goto fail;
	m->fd = rc;
	rc = read_header(m, err);
	if (rc == 0)
		rc = load(m, err);
	if (rc < 0)
		goto fail;
	*out = m;
	return 0;
fail:
	cdp_dirtymap_close(m);
	cdp_err_prefix(err, "dirty map %s", path);
	return rc;
}

void cdp_dirtymap_close(struct cdp_dirtymap *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		m->io->close(m->io->ctx, m->fd);
	free(m->bits);
	free(m->ndirty);
	free(m->word0);
	free(m->nbits);
	free(m->sizes);
	free(m->buf);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->mu);
	free(m);
}
