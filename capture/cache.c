/*
 * capture/cache - see cache.h. A singly linked list (oldest at the head),
 * a byte count against the bound, and a condition variable for the link.
 */
#include "capture/cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"

struct cdp_cache {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	uint64_t max_bytes;
	struct cdp_cache_seg *head, *tail;
	uint64_t bytes, segments;
	uint64_t next_pos;
	uint64_t wakes;
	uint64_t pushed, refused;
	uint8_t base[32];	/* digest the head follows */
	bool has_acked_ckpt;
	struct cdp_syncckpt acked_ckpt;	/* of the newest acked entry with one */
};

struct cdp_cache *cdp_cache_new(uint64_t max_bytes)
{
	struct cdp_cache *c = cdp_xcalloc(1, sizeof(*c));
	pthread_condattr_t ca;

	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	c->max_bytes = max_bytes;
	c->next_pos = 1;
	return c;
}

void cdp_cache_seg_free(struct cdp_cache_seg *s)
{
	free(s->data);
	free(s);
}

/* Unlinked from the list: the list's own reference goes. Lock held. */
static void drop_locked(struct cdp_cache *c, struct cdp_cache_seg *s)
{
	memcpy(c->base, s->digest, sizeof(c->base));
	c->bytes -= s->len;
	c->segments--;
	cdp_cache_put(s);
}

void cdp_cache_free(struct cdp_cache *c)
{
	if (!c)
		return;
	while (c->head) {
		struct cdp_cache_seg *s = c->head;

		c->head = s->next;
		drop_locked(c, s);
	}
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

int cdp_cache_push(struct cdp_cache *c, struct cdp_cache_seg *s)
{
	pthread_mutex_lock(&c->mu);
	if (c->max_bytes && c->bytes + s->len > c->max_bytes) {
		c->refused++;
		pthread_mutex_unlock(&c->mu);
		return -ENOSPC;
	}
	s->pos = c->next_pos++;
	atomic_init(&s->refs, 1);
	s->next = NULL;
	if (c->tail)
		c->tail->next = s;
	else
		c->head = s;
	c->tail = s;
	c->bytes += s->len;
	c->segments++;
	c->pushed++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

static struct timespec deadline(int64_t timeout_ns)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ns / CDP_NS_PER_SEC;
	until.tv_nsec += timeout_ns % CDP_NS_PER_SEC;
	if (until.tv_nsec >= CDP_NS_PER_SEC) {
		until.tv_sec++;
		until.tv_nsec -= CDP_NS_PER_SEC;
	}
	return until;
}

bool cdp_cache_wait_room(struct cdp_cache *c, uint64_t max_used, int64_t timeout_ns)
{
	struct timespec until = deadline(timeout_ns);
	bool ok;

	pthread_mutex_lock(&c->mu);
	while (c->bytes > max_used)
		if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT)
			break;
	ok = c->bytes <= max_used;
	pthread_mutex_unlock(&c->mu);
	return ok;
}

uint64_t cdp_cache_max_bytes(const struct cdp_cache *c)
{
	return c->max_bytes;
}

struct cdp_cache_seg *cdp_cache_next(struct cdp_cache *c, uint64_t after, int64_t timeout_ns)
{
	struct timespec until = deadline(timeout_ns);
	struct cdp_cache_seg *s = NULL;
	uint64_t wakes;

	pthread_mutex_lock(&c->mu);
	wakes = c->wakes;
	for (;;) {
		for (s = c->head; s && s->pos <= after; s = s->next)
			;
		if (s || wakes != c->wakes)
			break;
		if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT) {
			for (s = c->head; s && s->pos <= after; s = s->next)
				;
			break;
		}
	}
	if (s)
		cdp_cache_get(s);
	pthread_mutex_unlock(&c->mu);
	return s;
}

void cdp_cache_get(struct cdp_cache_seg *s)
{
	atomic_fetch_add(&s->refs, 1);
}

void cdp_cache_put(struct cdp_cache_seg *s)
{
	if (atomic_fetch_sub(&s->refs, 1) == 1)
		cdp_cache_seg_free(s);
}

void cdp_cache_wake(struct cdp_cache *c)
{
	pthread_mutex_lock(&c->mu);
	c->wakes++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
}

uint64_t cdp_cache_ack(struct cdp_cache *c, uint64_t durable_seq, const uint8_t *digest)
{
	struct cdp_cache_seg *upto = NULL;
	uint64_t wid = 0;

	pthread_mutex_lock(&c->mu);
	for (struct cdp_cache_seg *s = c->head; s; s = s->next) {
		if (digest ? !memcmp(s->digest, digest, sizeof(s->digest)) :
			     s->nrecords && s->last_seq <= durable_seq)
			upto = s;
		if (digest ? upto != NULL : s->nrecords && s->last_seq > durable_seq)
			break;
	}
	while (upto && c->head) {
		struct cdp_cache_seg *s = c->head;
		bool last = s == upto;

		c->head = s->next;
		if (!c->head)
			c->tail = NULL;
		wid = CDP_MAX(wid, s->max_wid);
		if (s->has_ckpt) {
			c->has_acked_ckpt = true;
			c->acked_ckpt = (struct cdp_syncckpt){ .sync_id = s->ckpt_sync_id,
							       .kind = s->ckpt_kind,
							       .volume = s->ckpt_volume,
							       .offset = s->ckpt_offset };
		}
		drop_locked(c, s);
		if (last)
			break;
	}
	if (upto)
		pthread_cond_broadcast(&c->cond);	/* room for a waiting sync */
	pthread_mutex_unlock(&c->mu);
	return wid;
}

bool cdp_cache_acked_ckpt(struct cdp_cache *c, struct cdp_syncckpt *out)
{
	bool has;

	pthread_mutex_lock(&c->mu);
	has = c->has_acked_ckpt;
	if (has)
		*out = c->acked_ckpt;
	pthread_mutex_unlock(&c->mu);
	return has;
}

void cdp_cache_set_base(struct cdp_cache *c, const uint8_t digest[32])
{
	pthread_mutex_lock(&c->mu);
	memcpy(c->base, digest, sizeof(c->base));
	pthread_mutex_unlock(&c->mu);
}

int cdp_cache_resume(struct cdp_cache *c, const uint8_t digest[32], uint64_t *after)
{
	int rc = -ENOENT;

	pthread_mutex_lock(&c->mu);
	if (!memcmp(c->base, digest, sizeof(c->base))) {
		*after = c->head ? c->head->pos - 1 : c->next_pos - 1;
		rc = 0;
	}
	for (struct cdp_cache_seg *s = c->head; s && rc; s = s->next)
		if (!memcmp(s->digest, digest, sizeof(s->digest))) {
			*after = s->pos;
			rc = 0;
		}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

void cdp_cache_drop_all(struct cdp_cache *c, void (*fn)(void *arg, const struct cdp_cache_seg *s),
			void *arg)
{
	pthread_mutex_lock(&c->mu);
	while (c->head) {
		struct cdp_cache_seg *s = c->head;

		c->head = s->next;
		if (fn)
			fn(arg, s);
		drop_locked(c, s);
	}
	c->tail = NULL;
	c->wakes++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
}

void cdp_cache_stats(struct cdp_cache *c, struct cdp_cache_stats *st)
{
	pthread_mutex_lock(&c->mu);
	st->bytes = c->bytes;
	st->segments = c->segments;
	st->first_seq = 0;
	for (struct cdp_cache_seg *s = c->head; s; s = s->next)
		if (s->nrecords) {
			st->first_seq = s->first_seq;
			break;
		}
	st->last_pos = c->tail ? c->tail->pos : 0;
	st->pushed = c->pushed;
	st->refused = c->refused;
	pthread_mutex_unlock(&c->mu);
}
