/*
 * common/clock - injectable time.
 *
 * Every piece of logic that depends on time reads it through a struct
 * cdp_clock that comes in through its context, never from clock_gettime()
 * directly, so tests drive time with a fake clock and never sleep.
 *
 *  - wall: CLOCK_REALTIME, for display and for anchoring;
 *  - mono: CLOCK_MONOTONIC, for deadlines and intervals;
 *  - stamp (struct cdp_stamp_clock): the monotonic clock anchored to wall time
 *    once, at start (SPEC "Time"). Records are stamped with it, so a wall-clock
 *    step on the source never reorders points; it never goes backwards.
 *
 * Threads: the real clock is immutable; a fake clock may be read from any
 * thread while one thread advances it (fields are atomic). A stamp clock
 * belongs to one thread (the splitter's sequencing lock guards it).
 */
#ifndef CDP_COMMON_CLOCK_H
#define CDP_COMMON_CLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define CDP_NS_PER_SEC INT64_C(1000000000)
#define CDP_NS_PER_MS INT64_C(1000000)
#define CDP_NS_PER_US INT64_C(1000)

struct cdp_clock {
	bool fake;
	_Atomic int64_t fake_wall_ns;
	_Atomic int64_t fake_mono_ns;
};

/* The process-wide real clock (immutable; never freed). */
struct cdp_clock *cdp_clock_real(void);

/* A fake clock that starts at the given readings and moves only when told. */
void cdp_clock_fake_init(struct cdp_clock *c, int64_t wall_ns, int64_t mono_ns);

/* Fake clock: both wall and mono move forward by @ns (>= 0). */
void cdp_clock_fake_advance(struct cdp_clock *c, int64_t ns);

/* Fake clock: the wall clock alone steps by @ns (may be negative), as NTP would. */
void cdp_clock_fake_step_wall(struct cdp_clock *c, int64_t ns);

int64_t cdp_clock_wall_ns(struct cdp_clock *c);
int64_t cdp_clock_mono_ns(struct cdp_clock *c);

struct cdp_stamp_clock {
	struct cdp_clock *base;	/* borrowed */
	int64_t anchor_wall_ns;
	int64_t anchor_mono_ns;
	int64_t last_ns;
};

/* Anchors @s to @base's wall time now. */
void cdp_stamp_clock_init(struct cdp_stamp_clock *s, struct cdp_clock *base);

/* anchor_wall + (mono - anchor_mono); never less than the previous reading. */
int64_t cdp_stamp_clock_now(struct cdp_stamp_clock *s);

/* Formats @ns since the epoch as RFC 3339 UTC with milliseconds into @buf. */
const char *cdp_time_format(int64_t ns, char *buf, unsigned size);

#endif
