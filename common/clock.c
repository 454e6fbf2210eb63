/*
 * common/clock - see clock.h.
 */
#include "common/clock.h"

#include <stdio.h>
#include <time.h>

static struct cdp_clock real_clock = { .fake = false };

static int64_t read_clock(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * CDP_NS_PER_SEC + ts.tv_nsec;
}

struct cdp_clock *cdp_clock_real(void)
{
	return &real_clock;
}

void cdp_clock_fake_init(struct cdp_clock *c, int64_t wall_ns, int64_t mono_ns)
{
	c->fake = true;
	atomic_store(&c->fake_wall_ns, wall_ns);
	atomic_store(&c->fake_mono_ns, mono_ns);
}

void cdp_clock_fake_advance(struct cdp_clock *c, int64_t ns)
{
	if (ns < 0)
		ns = 0;
	atomic_fetch_add(&c->fake_wall_ns, ns);
	atomic_fetch_add(&c->fake_mono_ns, ns);
}

void cdp_clock_fake_step_wall(struct cdp_clock *c, int64_t ns)
{
	atomic_fetch_add(&c->fake_wall_ns, ns);
}

int64_t cdp_clock_wall_ns(struct cdp_clock *c)
{
	return c->fake ? atomic_load(&c->fake_wall_ns) : read_clock(CLOCK_REALTIME);
}

int64_t cdp_clock_mono_ns(struct cdp_clock *c)
{
	return c->fake ? atomic_load(&c->fake_mono_ns) : read_clock(CLOCK_MONOTONIC);
}

void cdp_stamp_clock_init(struct cdp_stamp_clock *s, struct cdp_clock *base)
{
	s->base = base;
	s->anchor_mono_ns = cdp_clock_mono_ns(base);
	s->anchor_wall_ns = cdp_clock_wall_ns(base);
	s->last_ns = s->anchor_wall_ns;
}

int64_t cdp_stamp_clock_now(struct cdp_stamp_clock *s)
{
	int64_t now = s->anchor_wall_ns + (cdp_clock_mono_ns(s->base) - s->anchor_mono_ns);

	if (now < s->last_ns)
		now = s->last_ns;
	s->last_ns = now;
	return now;
}

const char *cdp_time_format(int64_t ns, char *buf, unsigned size)
{
	time_t secs = (time_t)(ns / CDP_NS_PER_SEC);
	int64_t ms = (ns % CDP_NS_PER_SEC) / CDP_NS_PER_MS;
	struct tm tm;

	if (ms < 0) {
		ms += 1000;
		secs -= 1;
	}
	gmtime_r(&secs, &tm);
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
	return buf;
}
