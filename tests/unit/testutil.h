/*
 * tests/unit/testutil - what every cmocka test shares: the scale knobs that
 * tools/test sets (CDP_TEST_LONG, CDP_TEST_SANITIZE), scratch directories
 * removed at the end, and cmocka's includes in the order it needs them.
 */
#ifndef CDP_TESTS_TESTUTIL_H
#define CDP_TESTS_TESTUTIL_H

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

static inline int cdp_test_env_flag(const char *name)
{
	const char *v = getenv(name);

	return v && *v && strcmp(v, "0") != 0;
}

/* Rounds for a loop test: @normal by default, @sanitized under sanitizers, @lng with --long. */
static inline int cdp_test_rounds(int normal, int sanitized, int lng)
{
	if (cdp_test_env_flag("CDP_TEST_LONG"))
		return lng;
	if (cdp_test_env_flag("CDP_TEST_SANITIZE"))
		return sanitized;
	return normal;
}

/* Makes a fresh scratch directory under $TMPDIR (or /var/tmp: a real disk). */
static inline char *cdp_test_mkdtemp(char *buf, size_t size)
{
	const char *base = getenv("TMPDIR");

	snprintf(buf, size, "%s/cdp-test-XXXXXX", base && *base ? base : "/var/tmp");
	return mkdtemp(buf);
}

/* Removes a scratch directory and everything below it. */
static inline void cdp_test_rmrf(const char *dir)
{
	char cmd[4200];

	if (!dir || !*dir || !strstr(dir, "cdp-test-"))
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* A scratch directory and one file in it: the fixture of the file-format tests. */
struct cdp_test_dirfile {
	char dir[256];
	char path[300];	/* dir/name */
};

/* cmocka setup: *@state becomes a cdp_test_dirfile whose path names @name. */
static inline int cdp_test_dirfile_setup(void **state, const char *name)
{
	struct cdp_test_dirfile *fx = calloc(1, sizeof(*fx));

	if (!fx || !cdp_test_mkdtemp(fx->dir, sizeof(fx->dir))) {
		free(fx);
		return -1;
	}
	snprintf(fx->path, sizeof(fx->path), "%s/%s", fx->dir, name);
	*state = fx;
	return 0;
}

static inline int cdp_test_dirfile_teardown(void **state)
{
	struct cdp_test_dirfile *fx = *state;

	cdp_test_rmrf(fx->dir);
	free(fx);
	return 0;
}

/*
 * Field @field (proc(5) numbering: 19 nice, 41 policy) of /proc/self/task/
 * TID/stat of this process's thread whose name starts with @prefix; 99: no
 * such thread.
 */
static inline int cdp_test_thread_stat(const char *prefix, int field)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int v = 99;

	assert_non_null(d);
	while (v == 99 && (e = readdir(d))) {
		char path[64], buf[512], *p;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;	/* the thread has ended */
		p = fgets(buf, sizeof(buf), f);
		fclose(f);
		if (!p || strncmp(buf, prefix, strlen(prefix)))
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
		fclose(f);
		/* After "pid (comm)": state is field 3. */
		for (int k = 2; p && k < field; k++)
			p = strchr(p + 1, ' ');
		if (p)
			v = atoi(p + 1);
	}
	closedir(d);
	return v;
}

static inline int cdp_test_thread_nice(const char *prefix)
{
	return cdp_test_thread_stat(prefix, 19);
}

/*
 * Polls (every millisecond, for 10 s at most) until the thread named
 * @prefix... shows @want in stat field @field: a thread names itself and
 * sets its nice value or policy once it runs. Returns the last value seen
 * (99: no such thread).
 */
static inline int cdp_test_thread_stat_is(const char *prefix, int field, int want)
{
	struct timespec now, until, nap = { .tv_nsec = 1000000 };
	int v;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += 10;
	for (;;) {
		v = cdp_test_thread_stat(prefix, field);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (v == want || now.tv_sec > until.tv_sec ||
		    (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
			return v;
		nanosleep(&nap, NULL);
	}
}

static inline int cdp_test_thread_nice_is(const char *prefix, int want)
{
	return cdp_test_thread_stat_is(prefix, 19, want);
}

/* Bytes zstd cannot shrink, the same for the same @seed (xorshift64). */
static inline void cdp_test_noise(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t k = 0; k < len; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[k] = (uint8_t)x;
	}
}

/* Asserts that @err holds @code and that its message contains @needle. */
#define assert_err(err, rc, want_code, needle)                                        \
	do {                                                                          \
		assert_int_equal((rc), (want_code));                                  \
		assert_int_equal((err)->code, (want_code));                           \
		if (!strstr((err)->msg, (needle)))                                    \
			fail_msg("error message '%s' does not name '%s'", (err)->msg, \
				 (needle));                                           \
	} while (0)

#endif
