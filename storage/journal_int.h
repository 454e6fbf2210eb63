/*
 * storage/journal_int - what the journal's .c files share (journal.c: open,
 * plans, group commit; journal_read.c: points, iterators, restore, seeding;
 * journal_fold.c: horizon and retention; journal_verify.c: verifier, scrub).
 * Not an API: nothing outside storage/journal*.c includes it.
 *
 * Key layout (all integers in keys big-endian so that they sort; values
 * little-endian; docs/format.md has the tables):
 *
 *   segments: plan u64 | first_seq u64 | t_last u64 (sign bit flipped) -> struct jseg
 *   points:   plan u64 | time u64 (sign bit flipped) | seq u64         -> flags u32, name
 *   meta:     'P' plan                -> plan record + caller's blob
 *             'S' plan                -> struct jstate (commit thread)
 *             'H' plan                -> horizon seq, digest, time, fold target
 *             'F' plan fileno         -> extent file record
 *             'C' plan name           -> cursor: seq, pinning
 *             'V' plan                -> verified seq and digest (verifier)
 *
 * Locks: j->mu guards the plan table and every in-memory field marked so;
 * it is never held across I/O. j->fold_mu serialises fold steps with reader
 * registration (a reader's pin must not be passed by a step in progress);
 * j->commit_mu is held by each group commit (plan deletion waits for it).
 */
#ifndef CDP_STORAGE_JOURNAL_INT_H
#define CDP_STORAGE_JOURNAL_INT_H

#include <pthread.h>
#include <rocksdb/c.h>

#include "storage/journal.h"

/*
 * The verifier runs this much below the threads that take and acknowledge
 * segments, and its reads in the idle I/O class: on a shared machine a
 * capture client's request does not wait for a CPU behind a 4 MiB SHA-256
 * nor for the disk behind a read-back, and a busy journal catches up on
 * proofs when ingest pauses (their lag is reported: verified_seq). Nice 10:
 * about a tenth of a normal thread's CPU share.
 */
#define JBG_NICE 10

#define JSEG_KEY_LEN 24
#define JPOINT_KEY_LEN 24
#define JSEG_VAL_LEN 96

/* An index entry of a stored segment. */
struct jseg {
	uint64_t plan_id;
	uint64_t first_seq;
	uint64_t last_seq;
	int64_t t_first;
	int64_t t_last;
	uint64_t fileno;
	uint64_t offset;	/* of the segment's header in the file */
	uint32_t len;		/* header + body */
	uint32_t flags;		/* segment flags */
	uint32_t raw_len;
	uint32_t nrecords;
	uint8_t digest[CDP_DIGEST_LEN];
	int64_t recv_time;
};

/* Per-plan state that only the commit thread changes (persisted as 'S'). */
struct jstate {
	uint64_t next_seq;		/* durable_seq + 1 */
	uint8_t digest[CDP_DIGEST_LEN];	/* of the last stored segment */
	int64_t last_t;			/* t_last of the last stored segment */
	int64_t last_point_t;
	bool synced;			/* the first full sync ended */
	bool sync_active;
	uint64_t open_sync_begin;	/* seq of the open sync's SYNC_BEGIN, 0 if none */
	uint64_t damaged_from;		/* 0 or first seq of a bad segment */
	uint64_t damage_seen_at;	/* next_seq when the damage was found */
	bool has_ckpt;
	struct cdp_journal_sync_ckpt ckpt;
};
#define JSTATE_VAL_LEN 128

struct jfile {
	uint64_t fileno;
	int fd;			/* O_DIRECT writer, -1 when not the current file */
	uint64_t size;		/* bytes allocated (written once) */
	uint64_t used;		/* next write offset, 4 KiB aligned */
	uint64_t first_seq;	/* of its first segment (0 = none yet) */
	uint64_t last_seq;	/* highest seq in it */
	int64_t opened_mono;	/* when it became current */
	bool sealed;		/* no more writes: full, slice over, reopened, or failed */
	bool prepared;		/* written whole once (a spare): recyclable as such */
	struct jfile *next;	/* ascending fileno */
};

struct jpin {
	uint64_t seq;		/* the horizon may not pass it */
	const char *what;	/* "restore", "seed", "iterator" */
	struct jpin *next;
};

struct jplan {
	struct cdp_journal_plan conf;	/* guarded by mu */
	struct jstate st;		/* guarded by mu; published by the index thread */
	struct jstate ast;		/* guarded by mu; the commit thread's accept state */
	uint64_t horizon_seq;		/* guarded by mu; written by folds */
	uint8_t horizon_digest[CDP_DIGEST_LEN];
	int64_t horizon_t;
	uint64_t bytes;			/* stored bytes above the horizon; guarded by mu */
	uint64_t nsegments;		/* guarded by mu */
	/* The verifier's position (guarded by mu; written by the verifier and folds). */
	uint64_t verified_first;	/* key of the last verified segment */
	int64_t verified_t;
	uint64_t verified_next;		/* next seq to verify */
	uint8_t verified_digest[CDP_DIGEST_LEN];
	uint64_t horizon_first;		/* key of the last folded segment */
	struct jfile *files;		/* guarded by mu */
	uint64_t next_fileno;		/* guarded by mu */
	struct jpin *pins;		/* guarded by mu */
	bool deleted;			/* guarded by mu */
	unsigned refs;			/* guarded by mu: readers holding the plan */
};

/* Internal work items on the commit queue besides segment appends. */
enum jop_kind {
	JOP_APPEND = 0,
	JOP_DAMAGE = 1,		/* the verifier found a bad segment */
};

struct jappend_info {
	/* From a full decode at submit time (only for MARK or SYNC segments). */
	unsigned nmarks;
	struct {
		uint64_t seq;
		int64_t time;
		char name[CDP_MARK_NAME_MAX + 1];
	} marks[8];
	uint64_t sync_begin_seq;	/* last SYNC_BEGIN in it, 0 if none */
	uint32_t sync_end_kind;		/* kind of the last SYNC_END in it, 0 if none */
	uint64_t sync_end_seq;
};

struct cdp_journal {
	char *dir;
	struct cdp_journal_opts opts;
	const struct cdp_io *io;
	struct cdp_clock *clock;

	rocksdb_t *db;
	rocksdb_options_t *dbopts;
	rocksdb_column_family_handle_t *cf_default, *cf_seg, *cf_point, *cf_meta;
	rocksdb_writeoptions_t *wsync;
	rocksdb_readoptions_t *ropts;

	pthread_mutex_t mu;
	struct jplan **plans;		/* guarded by mu */
	size_t nplans;			/* guarded by mu */

	/* commit queue, guarded by qmu */
	pthread_mutex_t qmu;
	pthread_cond_t qcond;		/* items arrived or closing */
	pthread_cond_t qroom;		/* room in the queue */
	struct cdp_journal_append *qhead, *qtail;
	unsigned qlen;
	bool closing;

	pthread_mutex_t fold_mu;
	pthread_mutex_t commit_mu;	/* held by a group commit; plan deletion waits on it */

	/* spare extent files ready for use, guarded by mu */
	unsigned nspares;
	uint64_t next_spare;
	pthread_cond_t spare_cond;

	pthread_t commit_thread, index_thread, verify_thread, retain_thread, prep_thread;
	bool have_commit, have_index, have_verify, have_retain, have_prep;

	/* the commit -> index hand-off (one prepared step), guarded by smu */
	pthread_mutex_t smu;
	pthread_cond_t scond;
	struct pstep *ready;
	bool indexing;
	bool index_stop;
	unsigned pending;		/* steps prepared and not yet indexed */
	uint64_t gen;			/* atomic: bumped when an index write fails */
	pthread_mutex_t bgmu;		/* background threads' sleep */
	pthread_cond_t bgcond;
	bool stopping;			/* guarded by bgmu */

	/* commit thread only: where a group's runs are laid out before writing */
	uint8_t *stage;
	size_t stage_cap;

	/* statistics, commit thread only (read racily for reports) */
	uint64_t steps, step_segments, step_bytes;
};

/* keys and values (journal.c) */
void jseg_key(uint8_t k[JSEG_KEY_LEN], uint64_t plan, uint64_t first_seq, int64_t t_last);
void jseg_encode(const struct jseg *s, uint8_t v[JSEG_VAL_LEN]);
int jseg_decode(const uint8_t *k, size_t klen, const uint8_t *v, size_t vlen, struct jseg *s,
		struct cdp_err *err);
void jpoint_key(uint8_t k[JPOINT_KEY_LEN], uint64_t plan, int64_t time, uint64_t seq);
int jpoint_decode(const uint8_t *k, size_t klen, const uint8_t *v, size_t vlen,
		  struct cdp_journal_point *p);
void jmeta_key(uint8_t *k, size_t *klen, char tag, uint64_t plan, const void *extra,
	       size_t extra_len);
static inline uint64_t jtime_key(int64_t t)
{
	return (uint64_t)t ^ (UINT64_C(1) << 63);
}
static inline int64_t jtime_unkey(uint64_t k)
{
	return (int64_t)(k ^ (UINT64_C(1) << 63));
}
void jput_be64(uint8_t *p, uint64_t v);
uint64_t jget_be64(const uint8_t *p);

/* plans (journal.c); jplan_get takes a reference released by jplan_put */
struct jplan *jplan_find_locked(struct cdp_journal *j, uint64_t plan_id);
struct jplan *jplan_get(struct cdp_journal *j, uint64_t plan_id, struct cdp_err *err);
void jplan_put(struct cdp_journal *j, struct jplan *p);

/* paths */
void jpath_extent(struct cdp_journal *j, char *buf, size_t size, uint64_t plan, uint64_t fileno);
void jpath_base(struct cdp_journal *j, char *buf, size_t size, uint64_t plan, uint32_t volume);
void jpath_plan_dir(struct cdp_journal *j, char *buf, size_t size, const char *kind,
		    uint64_t plan);

/* reading a stored segment's wire bytes into @buf (checks header and body CRC) */
int jseg_read(struct cdp_journal *j, const struct jseg *s, struct cdp_buf *buf,
	      struct cdp_seg_header *h, struct cdp_err *err);

/*
 * Iterates index entries of @plan with first_seq >= @from (ascending); calls
 * @fn until it returns non-zero (that value is returned) or the end (0).
 */
int jseg_scan(struct cdp_journal *j, uint64_t plan, uint64_t from,
	      int (*fn)(void *arg, const struct jseg *s), void *arg, struct cdp_err *err);

/* The index entry of the segment that holds @seq (or the first after it); -ENOENT. */
int jseg_find(struct cdp_journal *j, uint64_t plan, uint64_t seq, struct jseg *s,
	      struct cdp_err *err);

/* rocksdb helpers (journal.c) */
int jdb_write(struct cdp_journal *j, rocksdb_writebatch_t *wb, struct cdp_err *err);
int jdb_get(struct cdp_journal *j, rocksdb_column_family_handle_t *cf, const uint8_t *k,
	    size_t klen, struct cdp_buf *out, bool *found, struct cdp_err *err);
void jstate_encode(const struct jstate *st, uint8_t v[JSTATE_VAL_LEN]);
/* The horizon: seq, digest and key (first_seq, t_last) of the last folded segment. */
void jhorizon_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan, uint64_t seq,
		  const uint8_t digest[CDP_DIGEST_LEN], uint64_t first, int64_t t,
		  uint64_t fold_target);
void jfile_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan,
	       const struct jfile *f);
/* The verifier's position: the key of the last verified segment, the next seq, the digest. */
void jverified_put(struct cdp_journal *j, rocksdb_writebatch_t *wb, uint64_t plan,
		   uint64_t last_first, int64_t last_t, uint64_t next_seq,
		   const uint8_t digest[CDP_DIGEST_LEN]);

/* pins (journal_read.c registers them; journal_fold.c honours them) */
int jpin_add(struct cdp_journal *j, struct jplan *p, struct jpin *pin, uint64_t seq,
	     const char *what);
void jpin_remove(struct cdp_journal *j, struct jplan *p, struct jpin *pin);
/* Whether a cursor record pins history at wall time @now (lag-bounded ones expire). */
bool jcursor_pins(const uint8_t *v, size_t len, int64_t now);
/* The lowest seq the horizon may reach and what holds it (mu held). */
uint64_t jpin_limit_locked(struct cdp_journal *j, struct jplan *p, char *why, size_t why_size);
/* Same, reading pinning cursors from the index (no lock held). */
uint64_t jpin_limit(struct cdp_journal *j, struct jplan *p, char *why, size_t why_size);
/* Same without the verifier's and scrub's pins: what may make a journal full. */
uint64_t jpin_limit_holding(struct cdp_journal *j, struct jplan *p, char *why,
			    size_t why_size);

/* the commit queue: internal ops (journal.c) */
int jqueue_damage(struct cdp_journal *j, uint64_t plan, uint64_t first_seq);

/* fold (journal_fold.c) */
int jfold_recover(struct cdp_journal *j, struct jplan *p, uint64_t target, struct cdp_err *err);
void *jretain_main(void *arg);
/* Gives back extent files wholly at or below @seq (not the current one). */
void jfiles_release_below(struct cdp_journal *j, struct jplan *p, uint64_t seq);

/* verifier (journal_verify.c) */
void *jverify_main(void *arg);
/*
 * Whether ingest is busy (journal.c): it stored at CDP_JOURNAL_BUSY_RATE or
 * more over a window of at least CDP_JOURNAL_BUSY_WINDOW. Stores come in
 * group commits, tens of ms apart during a full sync: a caller that looks
 * every few ms (the spare writer, between its 4 MiB writes) must not read
 * the gap between two commits as quiet. So a verdict stands until a whole
 * window has passed since the last one, except that a window's worth of
 * bytes at the rate makes it busy at once. The first look says no.
 * jbusy_update() is the decision on the journal's counter and clock.
 */
struct jbusy {
	uint64_t bytes;		/* stored bytes at the window's start */
	int64_t t;		/* the window's start; 0: no look yet */
	bool busy;		/* the standing verdict */
};
bool jbusy_check(struct cdp_journal *j, struct jbusy *m);
bool jbusy_update(struct jbusy *m, uint64_t bytes, int64_t now);
/*
 * The verifier's choice for one round (journal_verify.c): true = let it go.
 * @busy: ingest is busy, @now: monotonic time, @since: when the current
 * deferral began (*@deferring says whether one has); updated.
 */
bool jverify_defer(const struct cdp_journal_opts *o, bool busy, int64_t now, bool *deferring,
		   int64_t *since);
int jverify_plan(struct cdp_journal *j, struct jplan *p, struct cdp_err *err);

/* events */
void jevent(struct cdp_journal *j, const struct cdp_journal_event *ev);

/* applying records to a sink, shared by restore and fold */
struct japply {
	const struct cdp_journal_sink *sink;
	void *arg;
	uint64_t upto;		/* apply records with seq <= upto */
	const uint64_t *sizes;
	uint32_t nvolumes;
};
int japply_segment(const struct japply *a, const struct cdp_segment *seg, struct cdp_err *err);

/* Where a replay ended: the last segment applied and its digest. */
struct jreplay_end {
	uint8_t digest[CDP_DIGEST_LEN];
	uint64_t last_first;
	int64_t last_t;
	uint64_t bytes, segments;
};

/*
 * Applies the stored segments after the horizon up to and including the one
 * that holds @upto (verifying CRCs and the chain from @horizon_digest) to the
 * sink (journal_read.c).
 */
int jreplay_range(struct cdp_journal *j, struct jplan *p, uint64_t horizon,
		  const uint8_t horizon_digest[CDP_DIGEST_LEN], uint64_t upto,
		  const struct cdp_journal_sink *sink, void *arg, struct jreplay_end *end,
		  struct cdp_err *err);

/* Background threads' sleep: false when the journal is stopping (journal.c). */
bool jbg_sleep(struct cdp_journal *j, int64_t ns);

#endif
