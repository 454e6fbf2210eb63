/*
 * journald/journald - what the cdp-journald modules share: the daemon's
 * state (config, journal, plan table, RPC server, workers).
 *
 * Owns: the plan table (plans as cdp.v1.Plan messages, persisted as the
 * journal's plan blob), the connected agent streams, the workers.
 *
 * Threads:
 *  - "cq": the RPC glue's thread; callbacks only queue work;
 *  - "ingest/N": decode and validate segments, submit them to the journal;
 *  - "ctl": control requests (plan changes, status, points, verify);
 *  - "restore/N": one per running restore stream;
 *  - the journal's own threads (commit, verify, retain, prep); acks go out
 *    from the journal's commit thread through thread-safe RPC sends.
 * jd->mu guards the plan table and each plan's agent pointer; it is never
 * held across I/O or an RPC wait.
 */
#ifndef CDP_JOURNALD_JOURNALD_H
#define CDP_JOURNALD_JOURNALD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cdp/v1/capture.pb-c.h"
#include "cdp/v1/control.pb-c.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/queue.h"
#include "proto/rpc.h"
#include "storage/journal.h"

struct jd_config {
	char *listen;		/* comma-separated addresses */
	char *state_dir;
	char *tls_ca, *tls_cert, *tls_key;
	char *admin_id;		/* certificate CN allowed to use Control */
	uint64_t max_segment;	/* largest Segment message accepted */
	int64_t max_clock_skew;
	uint64_t extent_size;
	int64_t retain_interval;
	int64_t verify_interval;
	int64_t verify_defer_max;
	int64_t ingest_queue;	/* segments queued per stream before reads pause */
	int64_t ingest_threads;
	uint64_t spare_extents;
};

struct jd_stream;

struct jd_plan {
	uint64_t id;
	Cdp__V1__Plan *pb;		/* owned; replaced whole on change */
	struct jd_stream *agent;	/* the connected capture stream, or NULL */
	uint64_t skew_alarms;
	/* Ranges to resync, found while no agent was connected (guarded by mu). */
	struct cdp_journal_range *resync;
	size_t nresync;
};

struct jd {
	struct jd_config cfg;
	struct cdp_clock *clock;
	struct cdp_journal *j;
	struct cdp_rpc_server *srv;
	pthread_mutex_t mu;
	struct jd_plan **plans;		/* guarded by mu */
	size_t nplans;			/* guarded by mu */
	struct cdp_queue *ctlq;		/* "cq>ctl" */
	struct cdp_queue **ingq;	/* "cq>ingest/N" */
	pthread_t ctl_thread;
	pthread_t *ing_threads;
	bool tls;
};

/* plans.c */
int jd_plans_load(struct jd *d, struct cdp_err *err);
void jd_plans_free(struct jd *d);
/* Validates @pb (a request), naming the field on error. */
int jd_plan_check(const Cdp__V1__Plan *pb, struct cdp_err *err);
/* Creates (fails if it exists) or applies (creates or updates) a plan; *out gets a copy. */
int jd_plan_put(struct jd *d, const Cdp__V1__Plan *pb, bool create, Cdp__V1__Plan **out,
		struct cdp_err *err);
int jd_plan_delete(struct jd *d, const char *name, struct cdp_err *err);
int jd_plan_set_paused(struct jd *d, const char *name, bool paused, Cdp__V1__Plan **out,
		       struct cdp_err *err);
/* A packed copy of the plan (caller frees with cdp__v1__plan__free_unpacked). */
Cdp__V1__Plan *jd_plan_copy(const Cdp__V1__Plan *pb);
/* With mu held: the plan named @name or with id @id, or NULL. */
struct jd_plan *jd_plan_find_locked(struct jd *d, const char *name);
struct jd_plan *jd_plan_by_id_locked(struct jd *d, uint64_t id);

/* ingest.c */
int jd_ingest_start(struct jd *d, struct cdp_err *err);
void jd_ingest_stop(struct jd *d);
/* Sends a command to the plan's agent; -ENOTCONN when none is connected. */
int jd_agent_command(struct jd *d, uint64_t plan_id, const Cdp__V1__Command *cmd,
		     struct cdp_err *err);
void jd_on_journal_event(void *arg, const struct cdp_journal_event *ev);

/* replay.c: Standby.Stream */
int jd_replay_start(struct jd *d, struct cdp_err *err);

/* control.c */
int jd_control_start(struct jd *d, struct cdp_err *err);
void jd_control_stop(struct jd *d);

/* Packs @m into a malloc'ed buffer for cdp_rpc_call_send_take(). */
void *jd_pack(const ProtobufCMessage *m, size_t *len);

#endif
