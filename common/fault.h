/*
 * common/fault - fault points compiled into test builds (CDP_FAULTS).
 *
 *	if (cdp_fault_point("journal.sync"))
 *		return cdp_err_set(err, -EIO, "fault injected at journal.sync");
 *
 * A test arms a point to fail its Nth hit (1-based) - once, or that hit and
 * every one after it (sticky) - and loops N = 1, 2, ... until the operation
 * completes without the fault firing, checking invariants after each run.
 * Real processes arm points from the environment: CDP_FAULT="name:N[:sticky],...".
 * In builds without CDP_FAULTS, cdp_fault_point() is the constant false.
 *
 * Threads: any thread may hit a point; arming happens while no hits race with
 * it in unit tests, and at start-up in daemons. A mutex guards the table.
 */
#ifndef CDP_COMMON_FAULT_H
#define CDP_COMMON_FAULT_H

#include <stdbool.h>

#ifdef CDP_FAULTS
bool cdp_fault_hit(const char *name);
#define cdp_fault_point(name) cdp_fault_hit(name)
#else
#define cdp_fault_point(name) false
#endif

/* Arms @name to fail its @nth hit (and every later one if @sticky); 0 disarms. */
void cdp_fault_arm(const char *name, unsigned long nth, bool sticky);

/* Arms points listed in $CDP_FAULT; returns 0, or -EINVAL on a malformed list. */
int cdp_fault_arm_from_env(void);

/* True when @name has fired since it was armed. */
bool cdp_fault_fired(const char *name);

/* Disarms every point and clears the counters. */
void cdp_fault_reset(void);

#endif
