/*
 * storage/syncckpt - see syncckpt.h. The file: magic "CDP-SCKP", version,
 * kind, sync id, volume, zero, offset, CRC32C of what precedes it; all
 * little-endian (docs/format.md).
 */
#include "storage/syncckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>

#include "common/util.h"
#include "storage/io.h"
#include "storage/segment.h"

#define MAGIC "CDP-SCKP"
#define VERSION 1u
#define CRC_AT 40

int cdp_syncckpt_write(const char *path, const struct cdp_syncckpt *ck, const struct cdp_io *io,
		       struct cdp_err *err)
{
	uint8_t b[CDP_SYNCCKPT_LEN] = { 0 };

	memcpy(b, MAGIC, 8);
	cdp_put_le32(b + 8, VERSION);
	cdp_put_le32(b + 12, ck->kind);
	cdp_put_le64(b + 16, ck->sync_id);
	cdp_put_le32(b + 24, ck->volume);
	cdp_put_le64(b + 32, ck->offset);
	cdp_put_le32(b + CRC_AT, cdp_crc32c(0, b, CRC_AT));
	return cdp_io_write_whole(io ? io : cdp_io_real(), path, b, sizeof(b), sizeof(b), err);
}

int cdp_syncckpt_decode(const uint8_t *b, size_t n, const char *name, struct cdp_syncckpt *ck,
			struct cdp_err *err)
{
	if (n != CDP_SYNCCKPT_LEN)
		return cdp_err_set(err, -EBADMSG, "sync checkpoint %s: %s%zu bytes, expected %d",
				   name, n > CDP_SYNCCKPT_LEN ? "more than " : "",
				   n > CDP_SYNCCKPT_LEN ? (size_t)CDP_SYNCCKPT_LEN : n,
				   CDP_SYNCCKPT_LEN);
	if (memcmp(b, MAGIC, 8))
		return cdp_err_set(err, -EBADMSG, "sync checkpoint %s: bad magic", name);
	if (cdp_get_le32(b + CRC_AT) != cdp_crc32c(0, b, CRC_AT))
		return cdp_err_set(err, -EBADMSG, "sync checkpoint %s: CRC 0x%08" PRIx32 ", "
				   "expected 0x%08" PRIx32, name, cdp_get_le32(b + CRC_AT),
				   cdp_crc32c(0, b, CRC_AT));
	if (cdp_get_le32(b + 8) != VERSION)
		return cdp_err_set(err, -EBADMSG, "sync checkpoint %s: version %" PRIu32
				   ", expected %u", name, cdp_get_le32(b + 8), VERSION);
	if (cdp_get_le32(b + 28))
		return cdp_err_set(err, -EBADMSG, "sync checkpoint %s: reserved bytes 28..31 "
				   "not zero", name);
	ck->kind = cdp_get_le32(b + 12);
	ck->sync_id = cdp_get_le64(b + 16);
	ck->volume = cdp_get_le32(b + 24);
	ck->offset = cdp_get_le64(b + 32);
	return 0;
}

int cdp_syncckpt_read(const char *path, struct cdp_syncckpt *ck, const struct cdp_io *io,
		      struct cdp_err *err)
{
	uint8_t b[CDP_SYNCCKPT_LEN + 1];
	long n;
	int fd, rc;

	if (!io)
		io = cdp_io_real();
	fd = io->open(io->ctx, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return cdp_err_sys(err, fd, "sync checkpoint %s: open", path);
	n = io->pread(io->ctx, fd, b, sizeof(b), 0);
	io->close(io->ctx, fd);
	if (n < 0)
		return cdp_err_sys(err, (int)n, "sync checkpoint %s: read", path);
	rc = cdp_syncckpt_decode(b, (size_t)n, path, ck, err);
	return rc ? rc : 1;
}

bool cdp_syncckpt_before(const struct cdp_syncckpt *a, const struct cdp_syncckpt *b)
{
	return a->volume < b->volume || (a->volume == b->volume && a->offset < b->offset);
}

bool cdp_syncckpt_due(const struct cdp_syncckpt *ck, const struct cdp_syncckpt *last,
		      int64_t last_ns, int64_t now_ns, int64_t interval_ns, unsigned nvolumes)
{
	if (!last || ck->sync_id != last->sync_id || ck->kind != last->kind)
		return true;
	if (ck->volume == last->volume && ck->offset == last->offset)
		return false;
	return ck->volume >= nvolumes || now_ns - last_ns >= interval_ns;
}

enum cdp_syncckpt_verdict cdp_syncckpt_compare(const struct cdp_syncckpt *local,
					       const struct cdp_syncckpt *journal,
					       unsigned nvolumes)
{
	if (!local || local->kind != CDP_SYNC_FULL)
		return CDP_SYNCCKPT_QUIET;
	if (journal && journal->kind != CDP_SYNC_FULL)
		journal = NULL;
	if (journal && journal->sync_id == local->sync_id) {
		if (cdp_syncckpt_before(journal, local))
			return CDP_SYNCCKPT_JOURNAL_BEHIND;
		return journal->volume < nvolumes ? CDP_SYNCCKPT_RESUME : CDP_SYNCCKPT_QUIET;
	}
	if (local->volume >= nvolumes)
		return CDP_SYNCCKPT_QUIET;
	return journal ? CDP_SYNCCKPT_JOURNAL_OTHER : CDP_SYNCCKPT_JOURNAL_NONE;
}
