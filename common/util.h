/*
 * common/util - small helpers every module uses: allocation that aborts on
 * failure (the daemons must survive SIGKILL anyway, so OOM is a crash, not an
 * error path), cleanup attributes, explicit little-endian byte access, and
 * named threads.
 */
#ifndef CDP_COMMON_UTIL_H
#define CDP_COMMON_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define CDP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define CDP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CDP_MAX(a, b) ((a) > (b) ? (a) : (b))
#define CDP_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define CDP_ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))
#define CDP_UNUSED __attribute__((unused))
#define CDP_CLEANUP(fn) __attribute__((cleanup(fn)))

void *cdp_xmalloc(size_t size);
void *cdp_xcalloc(size_t n, size_t size);
void *cdp_xrealloc(void *p, size_t size);
char *cdp_xstrdup(const char *s);
/* Aligned allocation (for O_DIRECT buffers); free with free(). */
void *cdp_xaligned_alloc(size_t align, size_t size);

/* For CDP_CLEANUP: frees *(void **)p. */
void cdp_freep(void *p);
/* For CDP_CLEANUP: closes *(int *)p when >= 0. */
void cdp_closep(int *fd);

static inline void cdp_put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void cdp_put_le32(uint8_t *p, uint32_t v)
{
	cdp_put_le16(p, (uint16_t)v);
	cdp_put_le16(p + 2, (uint16_t)(v >> 16));
}

static inline void cdp_put_le64(uint8_t *p, uint64_t v)
{
	cdp_put_le32(p, (uint32_t)v);
	cdp_put_le32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t cdp_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t cdp_get_le32(const uint8_t *p)
{
	return (uint32_t)cdp_get_le16(p) | ((uint32_t)cdp_get_le16(p + 2) << 16);
}

static inline uint64_t cdp_get_le64(const uint8_t *p)
{
	return (uint64_t)cdp_get_le32(p) | ((uint64_t)cdp_get_le32(p + 4) << 32);
}

/*
 * Starts a thread named @name (at most 15 characters; shown in every log line
 * and in top -H). Returns 0 or -errno.
 */
int cdp_thread_start(pthread_t *t, const char *name, void *(*fn)(void *), void *arg);

/* Names the calling thread (main() uses it for "main"). */
void cdp_thread_set_name(const char *name);

/*
 * Lowers the calling thread's priority by @nice (its nice value + @nice, at
 * most 19), for background work that must not take a CPU from the threads
 * that answer a client: on a busy machine they run first, and the
 * background thread still gets its share (nice 5: about a third of a
 * normal thread's). Returns 0 or -errno (the thread runs on unchanged).
 */
int cdp_thread_lower(int nice);

/*
 * Sets the calling thread's nice value to @nice (-20..19); threads it starts
 * inherit it. Below the current value needs CAP_SYS_NICE (or RLIMIT_NICE).
 * Returns 0 or -errno (the thread runs on unchanged).
 */
int cdp_thread_set_nice(int nice);

/*
 * Asks for a scheduling slice of @ns for the calling thread (it stays a
 * normal thread at its nice value). With EEVDF's custom slices (Linux >=
 * 6.12), a waking thread with a shorter slice than the running one takes
 * the CPU at once instead of waiting for that one's slice to end (up to a
 * few ms): for the threads the application waits for. The kernel clamps
 * it to 0.1..100 ms; older kernels accept and ignore it. Returns 0 or
 * -errno (the thread runs on unchanged).
 */
int cdp_thread_set_slice(int64_t ns);

/*
 * Moves thread @tid (a TID of this process) to SCHED_IDLE (@idle: it runs
 * when no normal thread wants the CPU, and any waking one preempts it), or
 * back to SCHED_OTHER at its nice value. Going back needs CAP_SYS_NICE or
 * RLIMIT_NICE (cdp_thread_may_raise()). Returns 0 or -errno.
 */
int cdp_thread_set_idle(pid_t tid, bool idle);

/*
 * Whether the calling thread may set its nice value to @nice (-20..19):
 * lowering it is tried, then undone. 0 or -errno (-EACCES, -EPERM).
 */
int cdp_thread_try_nice(int nice);

/* Whether the calling thread may lower its nice value (cdp_thread_try_nice()). */
bool cdp_thread_may_raise(void);

/*
 * Puts the calling thread's disk I/O in the idle class: the kernel's
 * scheduler (mq-deadline, bfq) serves it when no other I/O waits. For
 * background work (journald's spare extent files and read-backs). Returns 0 or
 * -errno (the thread's I/O keeps its class).
 */
int cdp_thread_io_idle(void);

/* write()/pwrite() of all @len bytes, retrying short writes and EINTR; 0 or -errno. */
int cdp_write_all(int fd, const void *buf, size_t len);
int cdp_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
/* read()/pread() until @len bytes or EOF; returns bytes read or -errno. */
long cdp_read_full(int fd, void *buf, size_t len);
long cdp_pread_full(int fd, void *buf, size_t len, uint64_t off);

#endif
