/*
 * Unit tests of storage/io: the real operations (io_uring batches and the
 * plain-syscall table, each test run against both) and the power-cut shim.
 *
 * Real: batches of many chunks land exactly (O_DIRECT and buffered, aligned
 * and not), a short write is continued (RLIMIT_FSIZE makes one), reads stop at
 * EOF, fdatasync of many files, metadata calls, -errno results, a failed
 * element does not break the thread's ring, concurrent batches from several
 * threads (each with its ring, freed at thread exit).
 *
 * Shim: unsynced writes come back per sector as old or new after a cut, with
 * drops, tears and keeps all seen for fixed seeds; synced writes survive;
 * dropped extensions give the size back; every operation fails after the
 * cut; fail_nth fails exactly the Nth call; an fdatasync covers writes made
 * through another fd of the file; a failed sync leaves its writes at risk.
 * Then random rounds against a per-sector model of what may be on disk.
 *
 * Files live under /var/tmp (or $TMPDIR): O_DIRECT needs a real file system.
 */
#include "tests/unit/testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "storage/io.h"

#define SECTOR 512u
#define ALIGN CDP_IO_ALIGN

struct fx {
	const char *name;
	const struct cdp_io *io;
	char dir[PATH_MAX];
};

static struct fx fx_real = { .name = "real" }, fx_plain = { .name = "plain" },
		 fx_shim = { .name = "shim" };

static int fx_setup(void **state)
{
	struct fx *fx = *state;

	if (!cdp_test_mkdtemp(fx->dir, sizeof(fx->dir)))
		return -1;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;

	cdp_test_rmrf(fx->dir);
	return 0;
}

static const char *path_in(const struct fx *fx, const char *name, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s", fx->dir, name);
	return buf;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rnd_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rnd(void)
{
	return rnd_next(&rng_state);
}

/* Bytes from @seed; a shorter fill is a prefix of a longer one. */
static void fill_pattern(uint8_t *p, size_t n, uint64_t seed)
{
	uint8_t word[8];
	uint64_t s = seed;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8)
		cdp_put_le64(p + i, rnd_next(&s));
	if (i < n) {
		cdp_put_le64(word, rnd_next(&s));
		memcpy(p + i, word, n - i);
	}
}

/* Whole content of @path read without O_DIRECT, into a new buffer (caller frees). */
static uint8_t *slurp(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	buf = cdp_xmalloc((size_t)st.st_size + 1);
	assert_int_equal(cdp_pread_full(fd, buf, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

static uint64_t size_of(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

/* Writes @len bytes of @seed's pattern at @off with plain syscalls, then fsyncs. */
static void put_plain(const char *path, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *buf = cdp_xmalloc(len);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	fill_pattern(buf, len, seed);
	assert_int_equal(cdp_pwrite_all(fd, buf, len, off), 0);
	assert_int_equal(fsync(fd), 0);
	close(fd);
	free(buf);
}

/* True when this machine lets the process use io_uring (so the real table must). */
static bool uring_expected(void)
{
	FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
	int v = 0;

	if (cdp_test_env_flag("CDP_TEST_NO_URING"))
		return false;
	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v == 0;
}

static unsigned count_uring_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	unsigned n = 0;

	assert_non_null(d);
	while ((de = readdir(d))) {
		char p[300], target[128];
		ssize_t k;

		snprintf(p, sizeof(p), "/proc/self/fd/%s", de->d_name);
		k = readlink(p, target, sizeof(target) - 1);
		if (k <= 0)
			continue;
		target[k] = '\0';
		n += strstr(target, "io_uring") != NULL;
	}
	closedir(d);
	return n;
}

/* ---- real operations (each test runs with cdp_io_real and cdp_io_plain) */

static void test_real_uses_uring_when_available(void **state)
{
	if (!uring_expected())
		skip();
	/* Otherwise every other "real" test would silently test the loops only. */
	assert_true(cdp_io_real_uses_uring());
}

struct region {
	uint64_t off;
	size_t len;
};

static void test_batch_of_many_chunks_lands_exactly_odirect(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	enum { N = 120, SLOT = 3 << 20 };
	struct cdp_io_write w[N];
	uint8_t *src, *back, *dbuf;
	char path[PATH_MAX + 16];
	unsigned order[N];
	uint64_t at = 0;
	size_t flen;
	int fd;

	fd = io->open(io->ctx, path_in(fx, "d", path, sizeof(path)),
		      O_RDWR | O_CREAT | O_DIRECT, 0644);
	assert_true(fd >= 0);
	/*
	 * 120 writes (more than the 64 the ring keeps in flight), a few of them
	 * over 1 MiB (split into chunks, one not a multiple of 1 MiB), the rest
	 * 4..256 KiB; in the file in shuffled order, with 4 KiB gaps.
	 */
	for (unsigned i = 0; i < N; i++) {
		unsigned j = (unsigned)(rnd() % (i + 1));

		order[i] = order[j];
		order[j] = i;
	}
	for (unsigned i = 0; i < N; i++) {
		struct cdp_io_write *x = &w[order[i]];

		x->fd = fd;
		x->len = (size_t)(1 + rnd() % 64) * ALIGN;
		if (order[i] < 3)
			x->len = SLOT - order[i] * ALIGN;
		x->off = at;
		at += x->len + ALIGN;
	}
	src = cdp_xaligned_alloc(ALIGN, (size_t)at);
	for (unsigned i = 0; i < N; i++) {
		w[i].buf = src + w[i].off;
		fill_pattern(src + w[i].off, w[i].len, w[i].off + 1);
	}
	assert_int_equal(io->pwritev_batch(io->ctx, w, N), 0);
	assert_int_equal(io->fdatasync_batch(io->ctx, &fd, 1), 0);
	back = slurp(path, &flen);
	for (unsigned i = 0; i < N; i++) {
		assert_true(w[i].off + w[i].len <= flen);
		if (memcmp(back + w[i].off, w[i].buf, w[i].len) != 0)
			fail_msg("%s: write %u (off %" PRIu64 " len %zu) did not land", fx->name, i,
				 w[i].off, w[i].len);
	}
	/* And read back through the O_DIRECT fd. */
	dbuf = cdp_xaligned_alloc(ALIGN, SLOT);
	for (unsigned i = 0; i < N; i += 7) {
		assert_int_equal(io->pread(io->ctx, fd, dbuf, w[i].len, w[i].off), (long)w[i].len);
		assert_memory_equal(dbuf, w[i].buf, w[i].len);
	}
	assert_int_equal(io->close(io->ctx, fd), 0);
	free(dbuf);
	free(back);
	free(src);
}

static void test_unaligned_buffered_writes_and_odirect_misuse(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	static const struct region r[] = {
		{ 0, 1 }, { 3, 4097 }, { 5000, 0 }, { 9001, (1u << 20) + 7 },
		{ (3u << 20) + 1, (2u << 20) + 3 },
	};
	struct cdp_io_write w[CDP_ARRAY_SIZE(r)];
	char path[PATH_MAX + 16];
	uint8_t *bufs[CDP_ARRAY_SIZE(r)], *back, *al;
	size_t flen;
	int fd;

	fd = io->open(io->ctx, path_in(fx, "u", path, sizeof(path)), O_RDWR | O_CREAT, 0644);
	assert_true(fd >= 0);
	for (unsigned i = 0; i < CDP_ARRAY_SIZE(r); i++) {
		bufs[i] = cdp_xmalloc(r[i].len + 1);
		fill_pattern(bufs[i], r[i].len, 77 + i);
		w[i] = (struct cdp_io_write){ fd, bufs[i], r[i].len, r[i].off };
	}
	assert_int_equal(io->pwritev_batch(io->ctx, w, 0), 0);
	assert_int_equal(io->pwritev_batch(io->ctx, w, CDP_ARRAY_SIZE(r)), 0);
	back = slurp(path, &flen);
	assert_int_equal(flen, r[4].off + r[4].len);
	for (unsigned i = 0; i < CDP_ARRAY_SIZE(r); i++)
		assert_memory_equal(back + r[i].off, bufs[i], r[i].len);
	free(back);
	/* A 1-byte write through the convenience wrapper. */
	assert_int_equal(cdp_io_pwrite(io, fd, "Z", 1, 2), 0);
	back = slurp(path, &flen);
	assert_int_equal(back[2], 'Z');
	free(back);
	assert_int_equal(io->close(io->ctx, fd), 0);

	/* O_DIRECT with an unaligned length, offset or buffer: the kernel's -EINVAL. */
	fd = io->open(io->ctx, path, O_RDWR | O_DIRECT, 0);
	assert_true(fd >= 0);
	al = cdp_xaligned_alloc(ALIGN, 2 * ALIGN);
	memset(al, 1, 2 * ALIGN);
	assert_int_equal(cdp_io_pwrite(io, fd, al, 100, 0), -EINVAL);
	assert_int_equal(cdp_io_pwrite(io, fd, al, ALIGN, 100), -EINVAL);
	assert_int_equal(cdp_io_pwrite(io, fd, al + 1, ALIGN, 0), -EINVAL);
	assert_int_equal(cdp_io_pwrite(io, fd, al, ALIGN, ALIGN), 0);
	assert_int_equal(io->close(io->ctx, fd), 0);
	free(al);
	for (unsigned i = 0; i < CDP_ARRAY_SIZE(r); i++)
		free(bufs[i]);
}

/*
 * RLIMIT_FSIZE makes the kernel write up to the limit and stop (a short
 * write), then fail what is left with EFBIG. Only a batch that continues the
 * short write sees that EFBIG: one that took the short write as complete
 * would return 0 with the tail missing.
 */
static int write_under_fsize_limit(const struct cdp_io *io, int fd, const void *buf, size_t len,
				   rlim_t limit)
{
	struct rlimit old, lim;
	void (*old_sig)(int);
	int rc;

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = limit;
	old_sig = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	rc = cdp_io_pwrite(io, fd, buf, len, 0);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_sig);
	return rc;
}

static void test_short_write_is_continued_then_fails(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	const size_t len = 2u << 20;
	static const size_t limit[2] = { 300000, (1u << 20) + (1u << 19) + 100 };
	char path[PATH_MAX + 16];
	uint8_t *buf = cdp_xmalloc(len), *back;
	size_t flen;
	int fd;

	fill_pattern(buf, len, 5);
	/* One chunk (512 KiB) past the limit; then two chunks, the second short. */
	for (unsigned i = 0; i < 2; i++) {
		fd = io->open(io->ctx, path_in(fx, "s", path, sizeof(path)),
			      O_RDWR | O_CREAT | O_TRUNC, 0644);
		assert_true(fd >= 0);
		assert_int_equal(write_under_fsize_limit(io, fd, buf, i ? len : 1u << 19, limit[i]),
				 -EFBIG);
		back = slurp(path, &flen);
		assert_int_equal(flen, limit[i]);
		assert_memory_equal(back, buf, limit[i]);
		assert_int_equal(io->close(io->ctx, fd), 0);
		free(back);
	}
	free(buf);
}

static void test_pread_reads_until_eof(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	char path[PATH_MAX + 16];
	uint8_t *buf = cdp_xaligned_alloc(ALIGN, 4 * ALIGN), want[5000];
	int fd;

	path_in(fx, "r", path, sizeof(path));
	put_plain(path, 0, sizeof(want), 9);
	fill_pattern(want, sizeof(want), 9);
	fd = io->open(io->ctx, path, O_RDONLY, 0);
	assert_true(fd >= 0);
	assert_int_equal(io->pread(io->ctx, fd, buf, 4 * ALIGN, 0), 5000);
	assert_memory_equal(buf, want, 5000);
	assert_int_equal(io->pread(io->ctx, fd, buf, 10, 4990), 10);
	assert_memory_equal(buf, want + 4990, 10);
	assert_int_equal(io->pread(io->ctx, fd, buf, 10, 5000), 0);
	assert_int_equal(io->pread(io->ctx, fd, buf, 10, 1u << 30), 0);
	assert_int_equal(io->close(io->ctx, fd), 0);
	/* O_DIRECT: the short read at an unaligned EOF is the end, not an EINVAL. */
	fd = io->open(io->ctx, path, O_RDONLY | O_DIRECT, 0);
	assert_true(fd >= 0);
	assert_int_equal(io->pread(io->ctx, fd, buf, 4 * ALIGN, 0), 5000);
	assert_memory_equal(buf, want, 5000);
	assert_int_equal(io->pread(io->ctx, fd, buf, ALIGN, ALIGN), 5000 - ALIGN);
	assert_int_equal(io->pread(io->ctx, fd, buf, ALIGN, 4 * ALIGN), 0);
	assert_int_equal(io->close(io->ctx, fd), 0);
	free(buf);
}

static void test_fdatasync_batch_of_many_files(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	enum { N = 100 };	/* more than the ring keeps in flight */
	int fds[N + 2];
	char path[PATH_MAX + 16], name[32];

	for (unsigned i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "f%u", i);
		fds[i] = io->open(io->ctx, path_in(fx, name, path, sizeof(path)),
				  O_RDWR | O_CREAT, 0644);
		assert_true(fds[i] >= 0);
		assert_int_equal(cdp_io_pwrite(io, fds[i], name, strlen(name), 0), 0);
	}
	assert_int_equal(io->fdatasync_batch(io->ctx, fds, N), 0);
	assert_int_equal(io->fdatasync_batch(io->ctx, fds, 0), 0);
	assert_int_equal(cdp_io_fdatasync(io, fds[7]), 0);
	/* A bad fd among good ones: its -EBADF comes back, and the ring still works. */
	fds[N] = fds[0];
	fds[N + 1] = -1;
	assert_int_equal(io->fdatasync_batch(io->ctx, fds + N - 1, 3), -EBADF);
	assert_int_equal(io->fdatasync_batch(io->ctx, fds, N), 0);
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(io->close(io->ctx, fds[i]), 0);
}

static void test_metadata_ops(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	char a[PATH_MAX + 16], b[PATH_MAX + 16];
	uint8_t buf[8192], *back;
	size_t flen;
	int fd;

	path_in(fx, "a", a, sizeof(a));
	path_in(fx, "b", b, sizeof(b));
	fd = io->open(io->ctx, a, O_RDWR | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(io->open(io->ctx, a, O_RDWR | O_CREAT | O_EXCL, 0644), -EEXIST);
	assert_int_equal(io->fsync_dir(io->ctx, fx->dir), 0);
	assert_int_equal(io->fsync_dir(io->ctx, a), -ENOTDIR);
	assert_int_equal(io->fsync_dir(io->ctx, b), -ENOENT);
	memset(buf, 0xab, sizeof(buf));
	assert_int_equal(cdp_io_pwrite(io, fd, buf, sizeof(buf), 0), 0);
	/* Punching a hole keeps the size and reads back as zeros. */
	assert_int_equal(io->fallocate(io->ctx, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       0, 4096), 0);
	assert_int_equal(io->fallocate(io->ctx, fd, 0, 0, 1u << 20), 0);
	assert_int_equal(size_of(a), 1u << 20);
	assert_int_equal(io->ftruncate(io->ctx, fd, 6000), 0);
	back = slurp(a, &flen);
	assert_int_equal(flen, 6000);
	for (unsigned i = 0; i < 6000; i++)
		assert_int_equal(back[i], i < 4096 ? 0 : 0xab);
	free(back);
	assert_int_equal(io->rename(io->ctx, a, b), 0);
	assert_int_equal(io->rename(io->ctx, a, b), -ENOENT);
	assert_int_equal(io->fsync_dir(io->ctx, fx->dir), 0);
	assert_int_equal(io->unlink(io->ctx, b), 0);
	assert_int_equal(io->unlink(io->ctx, b), -ENOENT);
	assert_int_equal(io->close(io->ctx, fd), 0);
}

static void test_errors_are_negative_errno(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	char path[PATH_MAX + 16];
	uint8_t buf[4096] = { 1 };
	struct cdp_io_write w[3];
	int ro, rw;

	assert_int_equal(io->open(io->ctx, path_in(fx, "missing", path, sizeof(path)),
				  O_RDONLY, 0), -ENOENT);
	path_in(fx, "e", path, sizeof(path));
	put_plain(path, 0, 100, 1);
	ro = io->open(io->ctx, path, O_RDONLY, 0);
	rw = io->open(io->ctx, path, O_RDWR, 0);
	assert_true(ro >= 0 && rw >= 0);
	assert_int_equal(cdp_io_pwrite(io, ro, buf, sizeof(buf), 0), -EBADF);
	/* The failing element is in the middle: the error comes back, the rest is reaped. */
	w[0] = (struct cdp_io_write){ rw, buf, sizeof(buf), 0 };
	w[1] = (struct cdp_io_write){ ro, buf, sizeof(buf), 8192 };
	w[2] = (struct cdp_io_write){ rw, buf, sizeof(buf), 4096 };
	assert_int_equal(io->pwritev_batch(io->ctx, w, 3), -EBADF);
	assert_int_equal(cdp_io_fdatasync(io, -1), -EBADF);
	assert_int_equal(io->pread(io->ctx, -1, buf, 1, 0), -EBADF);
	assert_int_equal(io->ftruncate(io->ctx, ro, 0), -EINVAL);
	assert_int_equal(io->fallocate(io->ctx, ro, 0, 0, 4096), -EBADF);
	/* The thread's ring is still good after failures. */
	assert_int_equal(io->pwritev_batch(io->ctx, w, 1), 0);
	assert_int_equal(io->close(io->ctx, ro), 0);
	assert_int_equal(io->close(io->ctx, rw), 0);
	assert_int_equal(io->close(io->ctx, rw), -EBADF);
}

struct worker {
	const struct cdp_io *io;
	int fd;
	unsigned idx;
	bool uring;
	char failure[200];
};

#define WORKERS 4
#define WORKER_SPAN (8u << 20)

static void *worker_main(void *p)
{
	struct worker *wk = p;
	const struct cdp_io *io = wk->io;
	enum { BATCH = 40, SLOT = WORKER_SPAN / BATCH / ALIGN * ALIGN };
	uint8_t *src = cdp_xaligned_alloc(ALIGN, WORKER_SPAN), *back;
	struct cdp_io_write w[BATCH];
	uint64_t base = (uint64_t)wk->idx * WORKER_SPAN, seed = 1000 + wk->idx;
	int rounds = cdp_test_rounds(10, 3, 50), rc;

	back = cdp_xaligned_alloc(ALIGN, WORKER_SPAN);
	if (io == cdp_io_real())
		wk->uring = cdp_io_real_uses_uring();
	for (int r = 0; r < rounds && !wk->failure[0]; r++) {
		for (unsigned i = 0; i < BATCH; i++) {
			size_t len = (size_t)(1 + rnd_next(&seed) % (SLOT / ALIGN)) * ALIGN;

			fill_pattern(src + (size_t)i * SLOT, len, rnd_next(&seed));
			w[i] = (struct cdp_io_write){ wk->fd, src + (size_t)i * SLOT, len,
						      base + (uint64_t)i * SLOT };
		}
		rc = io->pwritev_batch(io->ctx, w, BATCH);
		if (rc == 0)
			rc = io->fdatasync_batch(io->ctx, &wk->fd, 1);
		if (rc < 0) {
			snprintf(wk->failure, sizeof(wk->failure), "round %d: %s", r,
				 strerror(-rc));
			break;
		}
		for (unsigned i = 0; i < BATCH; i++) {
			long n = io->pread(io->ctx, wk->fd, back, w[i].len, w[i].off);

			if (n != (long)w[i].len || memcmp(back, w[i].buf, w[i].len) != 0) {
				snprintf(wk->failure, sizeof(wk->failure),
					 "round %d write %u: read %ld of %zu, or other bytes", r, i,
					 n, w[i].len);
				break;
			}
		}
	}
	free(back);
	free(src);
	return NULL;
}

static void test_batches_from_several_threads(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	struct worker wk[WORKERS];
	pthread_t t[WORKERS];
	char path[PATH_MAX + 16];
	unsigned rings_before;
	int fd;

	/* One shared O_DIRECT file, a disjoint span per thread. */
	fd = io->open(io->ctx, path_in(fx, "t", path, sizeof(path)),
		      O_RDWR | O_CREAT | O_DIRECT, 0644);
	assert_true(fd >= 0);
	rings_before = count_uring_fds();
	for (unsigned i = 0; i < WORKERS; i++) {
		wk[i] = (struct worker){ .io = io, .fd = fd, .idx = i };
		assert_int_equal(cdp_thread_start(&t[i], "io/test", worker_main, &wk[i]), 0);
	}
	for (unsigned i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
	for (unsigned i = 0; i < WORKERS; i++) {
		if (wk[i].failure[0])
			fail_msg("%s: thread %u: %s", fx->name, i, wk[i].failure);
		if (io == cdp_io_real() && uring_expected())
			assert_true(wk[i].uring);
	}
	/* Each thread's ring went away with the thread. */
	assert_int_equal(count_uring_fds(), rings_before);
	assert_int_equal(io->close(io->ctx, fd), 0);
}

/*
 * A forked child must not use the parent's ring: that memory is shared with
 * the kernel ring the parent goes on using, so the child's requests would
 * move the parent's queue heads and post completions into its queue. The
 * child writes first (5 writes), then the parent (32): both must land.
 */
static void test_fork_child_gets_its_own_ring(void **state)
{
	struct fx *fx = *state;
	const struct cdp_io *io = fx->io;
	enum { N = 32, NCHILD = 5, LEN = 16 * ALIGN };
	uint8_t *buf = cdp_xaligned_alloc(ALIGN, (size_t)N * LEN), *back;
	struct cdp_io_write w[N];
	char path[PATH_MAX + 16];
	int fd, status;
	size_t flen;
	pid_t pid;

	fd = io->open(io->ctx, path_in(fx, "fork", path, sizeof(path)),
		      O_RDWR | O_CREAT | O_DIRECT, 0644);
	assert_true(fd >= 0);
	for (unsigned i = 0; i < N; i++)
		w[i] = (struct cdp_io_write){ fd, buf + (size_t)i * LEN, LEN, (uint64_t)i * LEN };
	fill_pattern(buf, (size_t)N * LEN, 1);
	assert_int_equal(io->pwritev_batch(io->ctx, w, N), 0);	/* the ring exists */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (unsigned i = 0; i < NCHILD; i++)
			w[i].off = (uint64_t)(N + i) * LEN;
		fill_pattern(buf, (size_t)NCHILD * LEN, 2);
		_exit(io->pwritev_batch(io->ctx, w, NCHILD) == 0 ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	fill_pattern(buf, (size_t)N * LEN, 3);
	assert_int_equal(io->pwritev_batch(io->ctx, w, N), 0);
	assert_int_equal(io->pwritev_batch(io->ctx, w, N), 0);
	back = slurp(path, &flen);
	assert_int_equal(flen, (size_t)(N + NCHILD) * LEN);
	assert_memory_equal(back, buf, (size_t)N * LEN);
	fill_pattern(buf, (size_t)NCHILD * LEN, 2);
	assert_memory_equal(back + (size_t)N * LEN, buf, (size_t)NCHILD * LEN);
	assert_int_equal(io->close(io->ctx, fd), 0);
	free(back);
	free(buf);
}

/* ---- the shim --------------------------------------------------------- */

/* Old content (durable before the shim exists) and new content, per sector. */
static void make_old_file(const char *path, size_t len)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	close(fd);
	if (len)
		put_plain(path, 0, len, 0x01d);
}

/* Whether @got holds bytes [off, off + n) of @seed's pattern laid out from @base. */
static bool sector_is(const uint8_t *got, uint64_t off, size_t n, uint64_t seed, uint64_t base)
{
	uint8_t *want = cdp_xmalloc(off - base + n);
	bool same;

	fill_pattern(want, off - base + n, seed);
	same = memcmp(got, want + (off - base), n) == 0;
	free(want);
	return same;
}

static void test_shim_unsynced_writes_are_old_or_new_per_sector(void **state)
{
	struct fx *fx = *state;
	enum { NW = 8, WLEN = 8 * SECTOR, FILE_LEN = 16 * WLEN };
	struct cdp_io_shim_stats total = { 0 };
	char path[PATH_MAX + 16];
	unsigned mixed = 0, old_sectors = 0, new_sectors = 0;
	int trials = 60;

	path_in(fx, "p", path, sizeof(path));
	for (int t = 0; t < trials; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new((uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		struct cdp_io_write w[NW];
		struct cdp_io_shim_stats st;
		uint8_t *nb = cdp_xaligned_alloc(ALIGN, (size_t)NW * WLEN), *back;
		size_t flen;
		int fd;

		make_old_file(path, FILE_LEN);
		fd = io->open(io->ctx, path, O_RDWR | O_DIRECT, 0);
		assert_true(fd >= 0);
		/* Every other slot: no overlaps, so each sector is exactly old or new. */
		for (unsigned i = 0; i < NW; i++) {
			fill_pattern(nb + (size_t)i * WLEN, WLEN, 1000 + i);
			w[i] = (struct cdp_io_write){ fd, nb + (size_t)i * WLEN, WLEN,
						      (uint64_t)(2 * i) * WLEN };
		}
		assert_int_equal(io->pwritev_batch(io->ctx, w, NW / 2), 0);
		assert_int_equal(io->pwritev_batch(io->ctx, w + NW / 2, NW / 2), 0);
		st = cdp_io_shim_power_cut(s);
		assert_int_equal(st.unsynced_writes, NW);
		assert_int_equal(st.dropped + st.torn + st.kept, NW);
		total.dropped += st.dropped;
		total.torn += st.torn;
		total.kept += st.kept;
		back = slurp(path, &flen);
		assert_int_equal(flen, FILE_LEN);
		for (unsigned i = 0; i < NW; i++) {
			unsigned nold = 0, nnew = 0;

			for (unsigned k = 0; k < WLEN / SECTOR; k++) {
				uint64_t off = w[i].off + k * SECTOR;
				bool o = sector_is(back + off, off, SECTOR, 0x01d, 0);
				bool n = sector_is(back + off, k * SECTOR, SECTOR, 1000 + i, 0);

				if (!o && !n)
					fail_msg("seed %d: sector at %" PRIu64
						 " is neither old nor new", t, off);
				nold += o;
				nnew += n;
			}
			mixed += nold && nnew;
			old_sectors += nold;
			new_sectors += nnew;
		}
		/* The untouched slots are untouched. */
		for (unsigned i = 0; i < NW; i++)
			assert_true(sector_is(back + (2 * i + 1) * WLEN, (2 * i + 1) * WLEN, WLEN,
					      0x01d, 0));
		assert_int_equal(io->close(io->ctx, fd), -EIO);
		free(back);
		free(nb);
		cdp_io_shim_free(s);
	}
	assert_true(total.dropped > 0 && total.torn > 0 && total.kept > 0);
	assert_true(mixed > 0 && old_sectors > 0 && new_sectors > 0);

	/* The same seed, the same story. */
	{
		struct cdp_io_shim_stats a[2];

		for (int k = 0; k < 2; k++) {
			struct cdp_io_shim *s = cdp_io_shim_new(42);
			const struct cdp_io *io = cdp_io_shim_ops(s);
			uint8_t buf[SECTOR] = { 7 };
			int fd;

			make_old_file(path, FILE_LEN);
			fd = io->open(io->ctx, path, O_RDWR, 0);
			for (unsigned i = 0; i < 20; i++)
				assert_int_equal(cdp_io_pwrite(io, fd, buf, sizeof(buf),
							       (uint64_t)i * SECTOR), 0);
			a[k] = cdp_io_shim_power_cut(s);
			io->close(io->ctx, fd);
			cdp_io_shim_free(s);
		}
		assert_memory_equal(&a[0], &a[1], sizeof(a[0]));
	}
}

static void test_shim_synced_writes_survive_the_cut(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 16];
	uint64_t lost = 0;

	path_in(fx, "y", path, sizeof(path));
	for (int t = 0; t < 40; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new(1000 + (uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		uint8_t *a = cdp_xaligned_alloc(ALIGN, 8 * ALIGN), *back;
		size_t flen;
		int fd;

		make_old_file(path, 8 * ALIGN);
		fd = io->open(io->ctx, path, O_RDWR | O_DIRECT, 0);
		assert_true(fd >= 0);
		fill_pattern(a, 8 * ALIGN, 55);
		/* Synced: the first half, and an extension past the old end. */
		assert_int_equal(cdp_io_pwrite(io, fd, a, 4 * ALIGN, 0), 0);
		assert_int_equal(cdp_io_pwrite(io, fd, a, 8 * ALIGN, 8 * ALIGN), 0);
		assert_int_equal(cdp_io_fdatasync(io, fd), 0);
		/* Not synced: the second half. */
		assert_int_equal(cdp_io_pwrite(io, fd, a + 4 * ALIGN, 4 * ALIGN, 4 * ALIGN), 0);
		lost += cdp_io_shim_power_cut(s).dropped;
		back = slurp(path, &flen);
		assert_int_equal(flen, 16 * ALIGN);
		assert_memory_equal(back, a, 4 * ALIGN);
		assert_memory_equal(back + 8 * ALIGN, a, 8 * ALIGN);
		io->close(io->ctx, fd);
		free(back);
		free(a);
		cdp_io_shim_free(s);
	}
	assert_true(lost > 0);	/* the unsynced half was at risk */
}

static void test_shim_dropped_extension_gives_the_size_back(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 16];
	unsigned seen[3] = { 0 };	/* sizes: old, new, torn-short */

	path_in(fx, "x", path, sizeof(path));
	for (int t = 0; t < 60; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new(77 + (uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		uint8_t buf[4 * SECTOR], *back;
		struct cdp_io_shim_stats st;
		uint64_t sz;
		size_t flen;
		int fd;

		make_old_file(path, 2 * SECTOR);
		fd = io->open(io->ctx, path, O_RDWR, 0);
		assert_true(fd >= 0);
		fill_pattern(buf, sizeof(buf), 3);
		assert_int_equal(cdp_io_pwrite(io, fd, buf, sizeof(buf), 2 * SECTOR), 0);
		st = cdp_io_shim_power_cut(s);
		sz = size_of(path);
		back = slurp(path, &flen);
		assert_true(sector_is(back, 0, 2 * SECTOR, 0x01d, 0));
		if (st.dropped) {
			assert_int_equal(sz, 2 * SECTOR);
			seen[0]++;
		} else if (st.kept) {
			assert_int_equal(sz, 6 * SECTOR);
			assert_memory_equal(back + 2 * SECTOR, buf, sizeof(buf));
			seen[1]++;
		} else {
			/* Torn: the size survives exactly when the last sector did. */
			assert_int_equal(st.torn, 1);
			if (sz == 6 * SECTOR) {
				assert_memory_equal(back + 5 * SECTOR, buf + 3 * SECTOR, SECTOR);
			} else {
				assert_int_equal(sz, 2 * SECTOR);
				seen[2]++;
			}
			for (uint64_t o = 2 * SECTOR; o < sz; o += SECTOR) {
				static const uint8_t zero[SECTOR];

				assert_true(memcmp(back + o, buf + (o - 2 * SECTOR), SECTOR) == 0 ||
					    memcmp(back + o, zero, SECTOR) == 0);
			}
		}
		io->close(io->ctx, fd);
		free(back);
		cdp_io_shim_free(s);
	}
	assert_true(seen[0] && seen[1] && seen[2]);

	/* A new file whose only write is dropped is empty again. */
	for (int t = 0;; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new((uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		int fd;

		unlink(path);
		fd = io->open(io->ctx, path, O_RDWR | O_CREAT | O_EXCL, 0644);
		assert_true(fd >= 0);
		assert_int_equal(cdp_io_pwrite(io, fd, "abc", 3, 0), 0);
		if (cdp_io_shim_power_cut(s).dropped) {
			assert_int_equal(size_of(path), 0);
			io->close(io->ctx, fd);
			cdp_io_shim_free(s);
			break;
		}
		assert_int_equal(size_of(path), 3);
		io->close(io->ctx, fd);
		cdp_io_shim_free(s);
		assert_true(t < 100);
	}
}

static void test_shim_every_op_fails_after_the_cut(void **state)
{
	struct fx *fx = *state;
	struct cdp_io_shim *s = cdp_io_shim_new(1);
	const struct cdp_io *io = cdp_io_shim_ops(s);
	char a[PATH_MAX + 16], b[PATH_MAX + 16];
	uint8_t buf[16];
	struct cdp_io_shim_stats st;
	int fd, fd2;

	path_in(fx, "a", a, sizeof(a));
	path_in(fx, "b", b, sizeof(b));
	fd = io->open(io->ctx, a, O_RDWR | O_CREAT, 0644);
	fd2 = io->open(io->ctx, a, O_RDONLY, 0);
	assert_true(fd >= 0 && fd2 >= 0);
	assert_int_equal(cdp_io_pwrite(io, fd, "x", 1, 0), 0);
	assert_int_equal(cdp_io_fdatasync(io, fd), 0);
	st = cdp_io_shim_power_cut(s);
	assert_int_equal(st.unsynced_writes, 0);
	assert_int_equal(io->open(io->ctx, a, O_RDONLY, 0), -EIO);
	assert_int_equal(cdp_io_pwrite(io, fd, "y", 1, 0), -EIO);
	assert_int_equal(cdp_io_fdatasync(io, fd), -EIO);
	assert_int_equal(io->fsync_dir(io->ctx, fx->dir), -EIO);
	assert_int_equal(io->pread(io->ctx, fd, buf, 1, 0), -EIO);
	assert_int_equal(io->ftruncate(io->ctx, fd, 0), -EIO);
	assert_int_equal(io->fallocate(io->ctx, fd, 0, 0, 4096), -EIO);
	assert_int_equal(io->rename(io->ctx, a, b), -EIO);
	assert_int_equal(io->unlink(io->ctx, a), -EIO);
	/* Nothing happened on disk, and a second cut does nothing. */
	assert_int_equal(size_of(a), 1);
	st = cdp_io_shim_power_cut(s);
	assert_int_equal(st.unsynced_writes + st.dropped + st.torn + st.kept, 0);
	/* close fails too, but releases the fd. */
	assert_int_equal(io->close(io->ctx, fd), -EIO);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(io->close(io->ctx, fd2), -EIO);
	assert_int_equal(io->close(io->ctx, fd2), -EBADF);
	cdp_io_shim_free(s);
}

static void test_shim_fail_nth_fails_exactly_that_call(void **state)
{
	struct fx *fx = *state;
	struct cdp_io_shim *s = cdp_io_shim_new(2);
	const struct cdp_io *io = cdp_io_shim_ops(s);
	char path[PATH_MAX + 16];
	uint8_t *back;
	size_t flen;
	int fd;

	path_in(fx, "n", path, sizeof(path));
	fd = io->open(io->ctx, path, O_RDWR | O_CREAT, 0644);
	assert_true(fd >= 0);
	cdp_io_shim_fail_nth(s, 3, -EIO);
	assert_int_equal(cdp_io_pwrite(io, fd, "a", 1, 0), 0);	/* 1 */
	assert_int_equal(cdp_io_fdatasync(io, fd), 0);			/* 2 */
	assert_int_equal(cdp_io_pwrite(io, fd, "b", 1, 0), -EIO);	/* 3: not written */
	assert_int_equal(cdp_io_fdatasync(io, fd), 0);			/* 4 */
	back = slurp(path, &flen);
	assert_int_equal(flen, 1);
	assert_int_equal(back[0], 'a');
	free(back);
	/* Other calls do not count; a sync can be the one. */
	cdp_io_shim_fail_nth(s, 2, EIO);	/* either sign */
	assert_int_equal(io->pread(io->ctx, fd, &flen, 1, 0), 1);
	assert_int_equal(io->fsync_dir(io->ctx, fx->dir), 0);
	assert_int_equal(cdp_io_pwrite(io, fd, "c", 1, 1), 0);		/* 1 */
	assert_int_equal(cdp_io_fdatasync(io, fd), -EIO);		/* 2 */
	assert_int_equal(cdp_io_fdatasync(io, fd), 0);			/* 3 */
	/* 0 = off. */
	cdp_io_shim_fail_nth(s, 1, 0);
	assert_int_equal(cdp_io_pwrite(io, fd, "d", 1, 2), 0);
	cdp_io_shim_fail_nth(s, 1, -ENOSPC);
	assert_int_equal(cdp_io_pwrite(io, fd, "e", 1, 3), -ENOSPC);
	assert_int_equal(cdp_io_pwrite(io, fd, "e", 1, 3), 0);
	io->close(io->ctx, fd);
	cdp_io_shim_free(s);
}

/*
 * fsyncgate, worst case: writes pending at a failed sync stay at risk even
 * after a later sync succeeds; writes synced later survive, even over them.
 */
static void test_shim_failed_sync_leaves_writes_at_risk(void **state)
{
	struct fx *fx = *state;
	enum { R = 4 * SECTOR };	/* regions A, B, C at 0, R, 2R */
	char path[PATH_MAX + 16];
	unsigned b_lost = 0, b_kept = 0;
	uint8_t a1[R], a2[R], b1[R], c1[R];

	path_in(fx, "g", path, sizeof(path));
	fill_pattern(a1, R, 11);
	fill_pattern(a2, R, 12);
	fill_pattern(b1, R, 13);
	fill_pattern(c1, R, 14);
	for (int t = 0; t < 60; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new(500 + (uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		uint8_t *back;
		size_t flen;
		int fd;

		make_old_file(path, 3 * R);
		fd = io->open(io->ctx, path, O_RDWR, 0);
		assert_true(fd >= 0);
		assert_int_equal(cdp_io_pwrite(io, fd, a1, R, 0), 0);
		assert_int_equal(cdp_io_pwrite(io, fd, b1, R, R), 0);
		cdp_io_shim_fail_nth(s, 1, -EIO);
		assert_int_equal(cdp_io_fdatasync(io, fd), -EIO);
		assert_int_equal(cdp_io_pwrite(io, fd, a2, R, 0), 0);
		assert_int_equal(cdp_io_pwrite(io, fd, c1, R, 2 * R), 0);
		assert_int_equal(cdp_io_fdatasync(io, fd), 0);
		assert_int_equal(cdp_io_shim_power_cut(s).unsynced_writes, 2);
		back = slurp(path, &flen);
		assert_int_equal(flen, 3 * R);
		assert_memory_equal(back, a2, R);
		assert_memory_equal(back + 2 * R, c1, R);
		for (unsigned k = 0; k < R / SECTOR; k++) {
			const uint8_t *sec = back + R + k * SECTOR;
			bool o = sector_is(sec, R + k * SECTOR, SECTOR, 0x01d, 0);
			bool n = memcmp(sec, b1 + k * SECTOR, SECTOR) == 0;

			assert_true(o || n);
			b_lost += o;
			b_kept += n;
		}
		io->close(io->ctx, fd);
		free(back);
		cdp_io_shim_free(s);
	}
	assert_true(b_lost > 0 && b_kept > 0);
}

static void test_shim_sync_covers_writes_through_another_fd(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 16];
	uint8_t *a = cdp_xaligned_alloc(ALIGN, 2 * ALIGN);

	path_in(fx, "o", path, sizeof(path));
	fill_pattern(a, 2 * ALIGN, 21);
	for (int t = 0; t < 30; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new(900 + (uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		uint8_t *back;
		size_t flen;
		int d, p, q;

		make_old_file(path, 4 * ALIGN);
		d = io->open(io->ctx, path, O_RDWR | O_DIRECT, 0);
		p = io->open(io->ctx, path, O_RDWR, 0);
		assert_true(d >= 0 && p >= 0);
		/* Through the O_DIRECT fd, synced through the plain one; and the reverse. */
		assert_int_equal(cdp_io_pwrite(io, d, a, ALIGN, 0), 0);
		assert_int_equal(cdp_io_fdatasync(io, p), 0);
		assert_int_equal(cdp_io_pwrite(io, p, a + ALIGN, ALIGN, ALIGN), 0);
		assert_int_equal(cdp_io_fdatasync(io, d), 0);
		/* Closed with a write pending, then synced through a new fd. */
		assert_int_equal(cdp_io_pwrite(io, p, a, ALIGN, 2 * ALIGN), 0);
		assert_int_equal(io->close(io->ctx, p), 0);
		q = io->open(io->ctx, path, O_RDONLY, 0);
		assert_true(q >= 0);
		assert_int_equal(cdp_io_fdatasync(io, q), 0);
		/* Still pending: only this one. */
		assert_int_equal(cdp_io_pwrite(io, d, a, ALIGN, 3 * ALIGN), 0);
		assert_int_equal(cdp_io_shim_power_cut(s).unsynced_writes, 1);
		back = slurp(path, &flen);
		assert_int_equal(flen, 4 * ALIGN);
		assert_memory_equal(back, a, 2 * ALIGN);
		assert_memory_equal(back + 2 * ALIGN, a, ALIGN);
		io->close(io->ctx, d);
		io->close(io->ctx, q);
		free(back);
		cdp_io_shim_free(s);
	}
	free(a);
}

static void test_shim_truncate_and_punch_are_durable(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 16];
	uint8_t buf[8 * SECTOR];

	path_in(fx, "z", path, sizeof(path));
	fill_pattern(buf, sizeof(buf), 31);
	for (int t = 0; t < 30; t++) {
		struct cdp_io_shim *s = cdp_io_shim_new(3000 + (uint64_t)t);
		const struct cdp_io *io = cdp_io_shim_ops(s);
		static const uint8_t zero[4 * SECTOR];
		uint8_t *back;
		size_t flen;
		int fd;

		make_old_file(path, 8 * SECTOR);
		fd = io->open(io->ctx, path, O_RDWR, 0);
		assert_true(fd >= 0);
		/* Pending over [0, 16 sectors), then cut at 12 and a hole at [4, 8). */
		assert_int_equal(cdp_io_pwrite(io, fd, buf, sizeof(buf), 0), 0);
		assert_int_equal(cdp_io_pwrite(io, fd, buf, sizeof(buf), 8 * SECTOR), 0);
		assert_int_equal(io->ftruncate(io->ctx, fd, 12 * SECTOR), 0);
		assert_int_equal(io->fallocate(io->ctx, fd,
					       FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					       4 * SECTOR, 4 * SECTOR), 0);
		assert_int_equal(io->fallocate(io->ctx, fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4096),
				 -EOPNOTSUPP);
		cdp_io_shim_power_cut(s);
		back = slurp(path, &flen);
		assert_int_equal(flen, 12 * SECTOR);
		assert_memory_equal(back + 4 * SECTOR, zero, sizeof(zero));
		for (unsigned k = 0; k < 12; k++) {
			const uint8_t *sec = back + k * SECTOR;

			if (k >= 4 && k < 8)
				continue;
			assert_true(memcmp(sec, buf + (k % 8) * SECTOR, SECTOR) == 0 ||
				    (k < 8 && sector_is(sec, k * SECTOR, SECTOR, 0x01d, 0)) ||
				    (k >= 8 && memcmp(sec, zero, SECTOR) == 0));
		}
		io->close(io->ctx, fd);
		free(back);
		cdp_io_shim_free(s);
	}
}

static void test_shim_rejects_foreign_fds_and_append(void **state)
{
	struct fx *fx = *state;
	struct cdp_io_shim *s = cdp_io_shim_new(3);
	const struct cdp_io *io = cdp_io_shim_ops(s);
	char path[PATH_MAX + 16];
	int fd;

	path_in(fx, "f", path, sizeof(path));
	make_old_file(path, 100);
	fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(cdp_io_pwrite(io, fd, "x", 1, 0), -EBADF);
	assert_int_equal(cdp_io_fdatasync(io, fd), -EBADF);
	assert_int_equal(io->ftruncate(io->ctx, fd, 0), -EBADF);
	assert_int_equal(size_of(path), 100);
	close(fd);
	assert_int_equal(io->open(io->ctx, path, O_RDWR | O_APPEND, 0), -EINVAL);
	/* A write through a read-only fd: the kernel's error, no bookkeeping. */
	fd = io->open(io->ctx, path, O_RDONLY, 0);
	assert_true(fd >= 0);
	assert_int_equal(cdp_io_pwrite(io, fd, "x", 1, 0), -EBADF);
	assert_int_equal(cdp_io_shim_power_cut(s).unsynced_writes, 0);
	io->close(io->ctx, fd);
	cdp_io_shim_free(s);
	cdp_io_shim_free(NULL);
}

/*
 * Several threads write through the shim while the main thread cuts the power:
 * nothing lands after the cut (the file does not change once it returned),
 * every thread then gets -EIO, and each block holds its old content or one a
 * thread wrote there.
 */
#define RACERS 3
#define RACE_SLOTS 8
#define RACE_BLK (64u << 10)

struct racer {
	const struct cdp_io *io;
	int fd;
	unsigned idx;
	pthread_mutex_t *mu;
	pthread_cond_t *cv;
	unsigned *writes;		/* guarded by mu */
	unsigned ngen[RACE_SLOTS];
	uint32_t gen[RACE_SLOTS][512];
	int last_rc;
};

static uint64_t race_seed(unsigned idx, unsigned slot, uint32_t gen)
{
	return ((uint64_t)idx << 48) | ((uint64_t)slot << 32) | gen;
}

static void *racer_main(void *p)
{
	struct racer *r = p;
	uint8_t *buf = cdp_xaligned_alloc(ALIGN, RACE_BLK);
	int rc = 0;

	for (uint32_t g = 1; rc == 0; g++) {
		unsigned slot = g % RACE_SLOTS;
		uint64_t off = ((uint64_t)r->idx * RACE_SLOTS + slot) * RACE_BLK;

		fill_pattern(buf, RACE_BLK, race_seed(r->idx, slot, g));
		if (r->ngen[slot] == CDP_ARRAY_SIZE(r->gen[slot]))
			break;	/* the main thread never cut: it fails the test */
		/* Recorded before: a write that fails may still have been attempted. */
		r->gen[slot][r->ngen[slot]++] = g;
		rc = cdp_io_pwrite(r->io, r->fd, buf, RACE_BLK, off);
		/* Syncs keep the pending lists short, so the cut is quick. */
		if (rc == 0 && g % 2)
			rc = cdp_io_fdatasync(r->io, r->fd);
		pthread_mutex_lock(r->mu);
		(*r->writes)++;
		pthread_cond_signal(r->cv);
		pthread_mutex_unlock(r->mu);
	}
	r->last_rc = rc;
	free(buf);
	return NULL;
}

static void test_shim_cut_races_with_writers(void **state)
{
	struct fx *fx = *state;
	enum { LEN = RACERS * RACE_SLOTS * RACE_BLK };
	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
	struct cdp_io_shim *s = cdp_io_shim_new(7);
	const struct cdp_io *io = cdp_io_shim_ops(s);
	static struct racer rc[RACERS];
	char path[PATH_MAX + 16];
	uint8_t *at_cut, *after, *want = cdp_xmalloc(RACE_BLK);
	unsigned writes = 0;
	pthread_t t[RACERS];
	size_t l1, l2;

	path_in(fx, "race", path, sizeof(path));
	make_old_file(path, LEN);
	for (unsigned i = 0; i < RACERS; i++) {
		rc[i] = (struct racer){ .io = io, .idx = i, .mu = &mu, .cv = &cv,
					.writes = &writes };
		rc[i].fd = io->open(io->ctx, path, O_RDWR | O_DIRECT, 0);
		assert_true(rc[i].fd >= 0);
	}
	for (unsigned i = 0; i < RACERS; i++)
		assert_int_equal(cdp_thread_start(&t[i], "io/race", racer_main, &rc[i]), 0);
	pthread_mutex_lock(&mu);
	while (writes < 30)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	cdp_io_shim_power_cut(s);
	at_cut = slurp(path, &l1);
	for (unsigned i = 0; i < RACERS; i++)
		pthread_join(t[i], NULL);
	after = slurp(path, &l2);
	assert_int_equal(l1, LEN);
	assert_int_equal(l2, LEN);
	assert_memory_equal(at_cut, after, LEN);
	for (unsigned i = 0; i < RACERS; i++) {
		assert_int_equal(rc[i].last_rc, -EIO);
		for (unsigned slot = 0; slot < RACE_SLOTS; slot++) {
			uint64_t off = ((uint64_t)i * RACE_SLOTS + slot) * RACE_BLK;
			bool ok = sector_is(after + off, off, RACE_BLK, 0x01d, 0);

			for (unsigned k = 0; k < rc[i].ngen[slot] && !ok; k++) {
				fill_pattern(want, RACE_BLK,
					     race_seed(i, slot, rc[i].gen[slot][k]));
				ok = memcmp(after + off, want, RACE_BLK) == 0;
			}
			/* A torn block mixes sectors: check those one by one. */
			for (unsigned q = 0; q < RACE_BLK / SECTOR && !ok; q++) {
				const uint8_t *sec = after + off + q * SECTOR;
				bool sok = sector_is(sec, off + q * SECTOR, SECTOR, 0x01d, 0);

				for (unsigned k = 0; k < rc[i].ngen[slot] && !sok; k++) {
					fill_pattern(want, RACE_BLK,
						     race_seed(i, slot, rc[i].gen[slot][k]));
					sok = memcmp(sec, want + q * SECTOR, SECTOR) == 0;
				}
				if (!sok)
					fail_msg("thread %u slot %u sector %u: no allowed value", i,
						 slot, q);
			}
		}
		io->close(io->ctx, rc[i].fd);
	}
	free(want);
	free(at_cut);
	free(after);
	cdp_io_shim_free(s);
}

/*
 * Random rounds against a model. Every write is sector-aligned and fills each
 * sector with the pattern of (its generation, the sector), so a sector's
 * content names the write it came from (generation 0: zeros; 1..: the file's
 * initial content or a write). Per file and sector the model keeps the
 * generations it may hold after a cut: "cand" (durable: one value, or more
 * after a failed sync) and "pend" (written since the last sync); per file the
 * durable sizes and the sizes the pending writes left. After the cut, the size
 * must be one of those, and every sector below it one of its generations.
 */
#define MF 3		/* files */
#define MS 160		/* sectors per file in the model */
#define MG 128		/* generations per sector and list */

struct gens {
	unsigned n;
	uint32_t g[MG];
};

struct mfile {
	char path[PATH_MAX + 16];
	int fd_direct, fd_plain;
	uint64_t size;			/* sectors now */
	struct gens cand[MS], pend[MS];
	struct gens sizes, ends;	/* sector counts: durable, left by pending writes */
};

static void gens_add(struct gens *g, uint32_t v)
{
	for (unsigned i = 0; i < g->n; i++)
		if (g->g[i] == v)
			return;
	assert_true(g->n < MG);
	g->g[g->n++] = v;
}

static bool gens_has(const struct gens *g, uint32_t v)
{
	for (unsigned i = 0; i < g->n; i++)
		if (g->g[i] == v)
			return true;
	return false;
}

static void sector_fill(uint8_t *p, uint32_t gen, unsigned sector)
{
	if (gen == 0)
		memset(p, 0, SECTOR);
	else
		fill_pattern(p, SECTOR, ((uint64_t)gen << 20) | sector);
}

static void model_sync(struct mfile *f, bool ok)
{
	for (unsigned k = 0; k < MS; k++) {
		struct gens *p = &f->pend[k];

		if (!p->n)
			continue;
		if (ok) {
			f->cand[k].n = 0;
			gens_add(&f->cand[k], p->g[p->n - 1]);
		} else {
			for (unsigned i = 0; i < p->n; i++)
				gens_add(&f->cand[k], p->g[i]);
		}
		p->n = 0;
	}
	if (ok) {
		f->sizes.n = 0;
		gens_add(&f->sizes, (uint32_t)f->size);
		f->ends.n = 0;
	}
}

static void check_file(const struct mfile *f, uint64_t seed, int round)
{
	uint8_t want[SECTOR], *back;
	size_t flen;

	back = slurp(f->path, &flen);
	if (flen % SECTOR || (!gens_has(&f->sizes, (uint32_t)(flen / SECTOR)) &&
			      !gens_has(&f->ends, (uint32_t)(flen / SECTOR))))
		fail_msg("round %d seed %" PRIu64 " %s: size %zu not allowed", round, seed,
			 f->path, flen);
	for (unsigned k = 0; k < flen / SECTOR; k++) {
		bool ok = false;

		for (unsigned pass = 0; pass < 2 && !ok; pass++) {
			const struct gens *g = pass ? &f->pend[k] : &f->cand[k];

			for (unsigned i = 0; i < g->n && !ok; i++) {
				sector_fill(want, g->g[i], k);
				ok = memcmp(back + (size_t)k * SECTOR, want, SECTOR) == 0;
			}
		}
		if (!ok)
			fail_msg("round %d seed %" PRIu64 " %s: sector %u holds no allowed value",
				 round, seed, f->path, k);
	}
	free(back);
}

static void one_round(const struct fx *fx, uint64_t seed, int round,
		      struct cdp_io_shim_stats *total)
{
	static struct mfile mf[MF];
	struct cdp_io_shim *s = cdp_io_shim_new(seed);
	const struct cdp_io *io = cdp_io_shim_ops(s);
	uint64_t r = seed ^ 0xabcdef;
	uint32_t gen = 1;
	unsigned nops = 1 + (unsigned)(rnd_next(&r) % 24);
	struct cdp_io_shim_stats st;

	for (unsigned i = 0; i < MF; i++) {
		struct mfile *f = &mf[i];
		unsigned n0 = (unsigned)(rnd_next(&r) % 40);
		uint8_t sec[SECTOR];
		int fd;

		memset(f, 0, sizeof(*f));
		snprintf(f->path, sizeof(f->path), "%s/m%u", fx->dir, i);
		/* Initial content, durable: plain syscalls and fsync before the shim. */
		fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		assert_true(fd >= 0);
		for (unsigned k = 0; k < MS; k++)
			gens_add(&f->cand[k], 0);
		for (unsigned k = 0; k < n0; k++) {
			sector_fill(sec, gen, k);
			assert_int_equal(cdp_pwrite_all(fd, sec, SECTOR, (uint64_t)k * SECTOR), 0);
			f->cand[k].n = 0;
			gens_add(&f->cand[k], gen);
		}
		gen++;
		assert_int_equal(fsync(fd), 0);
		close(fd);
		f->size = n0;
		gens_add(&f->sizes, n0);
		f->fd_direct = io->open(io->ctx, f->path, O_RDWR | O_DIRECT, 0);
		f->fd_plain = io->open(io->ctx, f->path, O_RDWR, 0);
		assert_true(f->fd_direct >= 0 && f->fd_plain >= 0);
	}
	for (unsigned op = 0; op < nops; op++) {
		unsigned kind = (unsigned)(rnd_next(&r) % 16);
		struct mfile *f = &mf[rnd_next(&r) % MF];

		if (kind < 10) {
			/* A batch of 1..4 writes, each to a random file. */
			struct cdp_io_write w[4];
			uint8_t *bufs[4];
			unsigned nw = 1 + (unsigned)(rnd_next(&r) % 4);

			for (unsigned i = 0; i < nw; i++) {
				struct mfile *g = &mf[rnd_next(&r) % MF];
				unsigned len = 1 + (unsigned)(rnd_next(&r) % 16);
				unsigned at = (unsigned)(rnd_next(&r) % (MS - len));
				bool direct = rnd_next(&r) & 1;

				if (direct) {	/* O_DIRECT: whole 4 KiB blocks */
					at = at / 8 * 8;
					len = CDP_MAX(len / 8, 1u) * 8;
				}
				bufs[i] = cdp_xaligned_alloc(ALIGN, (size_t)len * SECTOR);
				for (unsigned k = 0; k < len; k++) {
					sector_fill(bufs[i] + (size_t)k * SECTOR, gen, at + k);
					gens_add(&g->pend[at + k], gen);
				}
				w[i] = (struct cdp_io_write){ direct ? g->fd_direct : g->fd_plain,
							      bufs[i], (size_t)len * SECTOR,
							      (uint64_t)at * SECTOR };
				/* The size this write leaves is one the file may keep. */
				g->size = CDP_MAX(g->size, (uint64_t)(at + len));
				gens_add(&g->ends, (uint32_t)g->size);
				gen++;
			}
			assert_int_equal(io->pwritev_batch(io->ctx, w, nw), 0);
			for (unsigned i = 0; i < nw; i++)
				free(bufs[i]);
		} else if (kind < 14) {
			/* fdatasync of a subset, through either fd; sometimes it fails. */
			int fds[MF];
			unsigned n = 0, pick = 1 + (unsigned)(rnd_next(&r) % 7);
			bool fail = rnd_next(&r) % 6 == 0;

			for (unsigned i = 0; i < MF; i++)
				if (pick & (1u << i))
					fds[n++] = rnd_next(&r) & 1 ? mf[i].fd_direct
								    : mf[i].fd_plain;
			if (fail)
				cdp_io_shim_fail_nth(s, 1, -EIO);
			assert_int_equal(io->fdatasync_batch(io->ctx, fds, n), fail ? -EIO : 0);
			for (unsigned i = 0; i < MF; i++)
				if (pick & (1u << i))
					model_sync(&mf[i], !fail);
		} else if (kind < 15) {
			/* ftruncate (durable at once), shorter or longer. */
			unsigned l = (unsigned)(rnd_next(&r) % MS);

			assert_int_equal(io->ftruncate(io->ctx, f->fd_plain,
						       (uint64_t)l * SECTOR), 0);
			for (unsigned k = l; k < MS; k++) {
				f->cand[k].n = f->pend[k].n = 0;
				gens_add(&f->cand[k], 0);
			}
			f->size = l;
			f->sizes.n = f->ends.n = 0;
			gens_add(&f->sizes, l);
		} else {
			/* Close and reopen the plain fd: pending writes stay pending. */
			assert_int_equal(io->close(io->ctx, f->fd_plain), 0);
			f->fd_plain = io->open(io->ctx, f->path, O_RDWR, 0);
			assert_true(f->fd_plain >= 0);
		}
	}
	st = cdp_io_shim_power_cut(s);
	total->unsynced_writes += st.unsynced_writes;
	total->dropped += st.dropped;
	total->torn += st.torn;
	total->kept += st.kept;
	assert_int_equal(st.dropped + st.torn + st.kept, st.unsynced_writes);
	for (unsigned i = 0; i < MF; i++) {
		assert_int_equal(cdp_io_fdatasync(io, mf[i].fd_plain), -EIO);
		check_file(&mf[i], seed, round);
		io->close(io->ctx, mf[i].fd_direct);
		io->close(io->ctx, mf[i].fd_plain);
	}
	cdp_io_shim_free(s);
}

static void test_shim_random_rounds_match_the_model(void **state)
{
	struct fx *fx = *state;
	struct cdp_io_shim_stats total = { 0 };
	int rounds = cdp_test_rounds(200, 50, 5000);
	uint64_t master = (uint64_t)time(NULL);
	const char *env = getenv("CDP_TEST_SEED");

	if (env && *env)
		master = strtoull(env, NULL, 0);
	print_message("shim rounds: %d, CDP_TEST_SEED=%" PRIu64 "\n", rounds, master);
	for (int i = 0; i < rounds; i++)
		one_round(fx, rnd_next(&master), i, &total);
	assert_true(total.dropped > 0 && total.torn > 0 && total.kept > 0);
}

/* Each real-op test twice, named for the table it ran with. */
#define REAL_AND_PLAIN(fn)                                                   \
	{ #fn "/real", fn, fx_setup, fx_teardown, &fx_real },                \
	{ #fn "/plain", fn, fx_setup, fx_teardown, &fx_plain }
#define SHIM(fn) cmocka_unit_test_prestate_setup_teardown(fn, fx_setup, fx_teardown, &fx_shim)

int main(void)
{
	fx_real.io = cdp_io_real();
	fx_plain.io = cdp_io_plain();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_real_uses_uring_when_available),
		REAL_AND_PLAIN(test_batch_of_many_chunks_lands_exactly_odirect),
		REAL_AND_PLAIN(test_unaligned_buffered_writes_and_odirect_misuse),
		REAL_AND_PLAIN(test_short_write_is_continued_then_fails),
		REAL_AND_PLAIN(test_pread_reads_until_eof),
		REAL_AND_PLAIN(test_fdatasync_batch_of_many_files),
		REAL_AND_PLAIN(test_metadata_ops),
		REAL_AND_PLAIN(test_errors_are_negative_errno),
		REAL_AND_PLAIN(test_batches_from_several_threads),
		REAL_AND_PLAIN(test_fork_child_gets_its_own_ring),
		SHIM(test_shim_unsynced_writes_are_old_or_new_per_sector),
		SHIM(test_shim_synced_writes_survive_the_cut),
		SHIM(test_shim_dropped_extension_gives_the_size_back),
		SHIM(test_shim_every_op_fails_after_the_cut),
		SHIM(test_shim_fail_nth_fails_exactly_that_call),
		SHIM(test_shim_failed_sync_leaves_writes_at_risk),
		SHIM(test_shim_sync_covers_writes_through_another_fd),
		SHIM(test_shim_truncate_and_punch_are_durable),
		SHIM(test_shim_rejects_foreign_fds_and_append),
		SHIM(test_shim_cut_races_with_writers),
		SHIM(test_shim_random_rounds_match_the_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
