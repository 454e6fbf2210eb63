/*
 * common/util - see util.h.
 */
#include "common/util.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/ioprio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static void oom(size_t size)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "<2>cdp: out of memory allocating %zu bytes\n", size);

	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		abort();
	abort();
}

void *cdp_xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
		oom(size);
	return p;
}

void *cdp_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom(n * size);
	return p;
}

void *cdp_xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);

	if (!q)
		oom(size);
	return q;
}

char *cdp_xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = cdp_xmalloc(n);

	memcpy(p, s, n);
	return p;
}

void *cdp_xaligned_alloc(size_t align, size_t size)
{
	void *p = NULL;

	if (posix_memalign(&p, align, size ? size : align))
		oom(size);
	return p;
}

void cdp_freep(void *p)
{
	free(*(void **)p);
}

void cdp_closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

struct thread_start {
	char name[16];
	void *(*fn)(void *);
	void *arg;
};

static void *thread_trampoline(void *p)
{
	struct thread_start ts = *(struct thread_start *)p;

	free(p);
	prctl(PR_SET_NAME, ts.name, 0, 0, 0);
	return ts.fn(ts.arg);
}

int cdp_thread_start(pthread_t *t, const char *name, void *(*fn)(void *), void *arg)
{
	struct thread_start *ts = cdp_xmalloc(sizeof(*ts));
	int rc;

	snprintf(ts->name, sizeof(ts->name), "%s", name);
	ts->fn = fn;
	ts->arg = arg;
	rc = pthread_create(t, NULL, thread_trampoline, ts);
	if (rc) {
		free(ts);
		return -rc;
	}
	return 0;
}

void cdp_thread_set_name(const char *name)
{
	prctl(PR_SET_NAME, name, 0, 0, 0);
}

int cdp_thread_io_idle(void)
{
	if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, (int)gettid(),
		    IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)))
		return -errno;
	return 0;
}

int cdp_thread_lower(int nice)
{
	id_t tid = (id_t)gettid();
	int prio;

	errno = 0;
	prio = getpriority(PRIO_PROCESS, tid);
	if (errno)
		return -errno;
	if (setpriority(PRIO_PROCESS, tid, prio + nice > 19 ? 19 : prio + nice))
		return -errno;
	return 0;
}

int cdp_thread_set_nice(int nice)
{
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), nice))
		return -errno;
	return 0;
}

/* The kernel's struct sched_attr, version 0 (glibc 2.36 has no wrapper). */
struct sched_attr0 {
	uint32_t size;
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime;	/* SCHED_OTHER: the slice asked for (Linux >= 6.12) */
	uint64_t deadline;
	uint64_t period;
};

int cdp_thread_set_slice(int64_t ns)
{
	struct sched_attr0 a = { .size = sizeof(a), .policy = SCHED_OTHER };
	pid_t tid = gettid();

	errno = 0;
	a.nice = getpriority(PRIO_PROCESS, (id_t)tid);	/* sched_setattr() sets it too */
	if (errno)
		return -errno;
	a.runtime = ns > 0 ? (uint64_t)ns : 0;
	if (syscall(SYS_sched_setattr, tid, &a, 0))
		return -errno;
	return 0;
}

int cdp_thread_set_idle(pid_t tid, bool idle)
{
	struct sched_param p = { 0 };

	if (sched_setscheduler(tid, idle ? SCHED_IDLE : SCHED_OTHER, &p))
		return -errno;
	return 0;
}

int cdp_thread_try_nice(int nice)
{
	int was, rc;

	errno = 0;
	was = getpriority(PRIO_PROCESS, (id_t)gettid());
	if (errno)
		return -errno;
	if (nice >= was)
		return 0;	/* raising the value is always permitted */
	rc = cdp_thread_set_nice(nice);
	if (rc)
		return rc;
	cdp_thread_set_nice(was);
	return 0;
}

bool cdp_thread_may_raise(void)
{
	int nice;

	errno = 0;
	nice = getpriority(PRIO_PROCESS, (id_t)gettid());
	return !errno && nice > -20 && cdp_thread_try_nice(nice - 1) == 0;
}

int cdp_write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int cdp_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

long cdp_read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (long)got;
}

long cdp_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (long)got;
}
