/*
 * common/fault - see fault.h. A small fixed table: tests arm a handful of
 * points at a time, and only armed points are counted.
 */
#include "common/fault.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAULT_MAX 16

struct fault {
	char name[48];
	unsigned long nth;
	unsigned long hits;
	bool sticky;
	bool fired;
};

static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fault faults[FAULT_MAX];	/* guarded by fault_mu */
static int nfaults;			/* guarded by fault_mu */

static struct fault *find(const char *name)
{
	for (int i = 0; i < nfaults; i++)
		if (!strcmp(faults[i].name, name))
			return &faults[i];
	return NULL;
}

bool cdp_fault_hit(const char *name)
{
	struct fault *f;
	bool fire = false;

	if (!__atomic_load_n(&nfaults, __ATOMIC_RELAXED))
		return false;
	pthread_mutex_lock(&fault_mu);
	f = find(name);
	if (f && f->nth) {
		f->hits++;
		fire = f->hits == f->nth || (f->sticky && f->hits > f->nth);
		if (fire)
			f->fired = true;
	}
	pthread_mutex_unlock(&fault_mu);
	return fire;
}

void cdp_fault_arm(const char *name, unsigned long nth, bool sticky)
{
	struct fault *f;

	pthread_mutex_lock(&fault_mu);
	f = find(name);
	if (!f && nfaults < FAULT_MAX) {
		f = &faults[nfaults];
		snprintf(f->name, sizeof(f->name), "%s", name);
		__atomic_store_n(&nfaults, nfaults + 1, __ATOMIC_RELAXED);
	}
	if (f) {
		f->nth = nth;
		f->hits = 0;
		f->sticky = sticky;
		f->fired = false;
	}
	pthread_mutex_unlock(&fault_mu);
}

int cdp_fault_arm_from_env(void)
{
	const char *env = getenv("CDP_FAULT");
	char buf[512], *save = NULL, *tok;

	if (!env || !*env)
		return 0;
	snprintf(buf, sizeof(buf), "%s", env);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(tok, ':'), *end;
		unsigned long nth;
		bool sticky;

		if (!colon)
			return -EINVAL;
		*colon = '\0';
		nth = strtoul(colon + 1, &end, 10);
		sticky = !strcmp(end, ":sticky");
		if (end == colon + 1 || (*end && !sticky))
			return -EINVAL;
		cdp_fault_arm(tok, nth, sticky);
	}
	return 0;
}

bool cdp_fault_fired(const char *name)
{
	struct fault *f;
	bool fired;

	pthread_mutex_lock(&fault_mu);
	f = find(name);
	fired = f && f->fired;
	pthread_mutex_unlock(&fault_mu);
	return fired;
}

void cdp_fault_reset(void)
{
	pthread_mutex_lock(&fault_mu);
	memset(faults, 0, sizeof(faults));
	__atomic_store_n(&nfaults, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&fault_mu);
}
