/*
 * cdp-agent - the source side: serves each protected volume over NBD
 * through the splitter, and streams the captured segments to cdp-journald.
 *
 *	cdp-agent [--config FILE] [--set section.key=value]... [--debug MODULES]
 *		  [--print-config] [--help-config[=ini|markdown]]
 *
 * Threads: the NBD server's (capture/nbd), the splitter's I/O and seal
 * threads, "tick" (point interval; settles the activity log), "link" (dials
 * cdp-journald, says hello, resends what the journal lacks from the log
 * cache, then sends new segments in place), "link/rx" (acks, commands,
 * notices; a stream without an ack for ack_timeout while segments are
 * outstanding counts as a cut link: a blackholed link never closes), and
 * "sync" (full sync and resyncs). The main thread waits on a signalfd:
 * SIGTERM/SIGINT stop cleanly (NBD first, then drain what the link allows
 * within stop_timeout, persist the bitmap); SIGHUP rereads the config and
 * applies sync.rate and sync.read_percent at once (the rest at the next
 * start).
 *
 * Start-up: the activity log's recovered extents (an unclean stop) are
 * marked dirty in the bitmap first; capture runs INCREMENTAL until the first
 * welcome says where the journal's chain stands; then a full sync when the
 * journal holds nothing of the plan or its full sync is unfinished (resuming
 * from the journal's checkpoint), else a resync of the dirty blocks, and
 * continuous capture from then on.
 *
 * The full-sync checkpoint: the journal's copy (on segments, back in the
 * welcome) decides where a sync resumes. A local copy (storage/syncckpt,
 * state_dir/sync-checkpoint) follows the newest checkpoint the journal
 * acknowledged, written by the tick thread at most every SYNC_CKPT_INTERVAL;
 * it is read at start and weighed against the first welcome's, to say when
 * the journal lost acknowledged blocks or no longer knows the sync.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "capture/cache.h"
#include "capture/nbd.h"
#include "capture/splitter.h"
#include "cdp/v1/capture.pb-c.h"
#include "common/config.h"
#include "common/log.h"
#include "common/util.h"
#include "proto/rpc.h"
#include "proto/wire.h"
#include "storage/actlog.h"
#include "storage/dirtymap.h"
#include "storage/syncckpt.h"

#define MAX_VOLUMES 4
/*
 * The local copy of the full-sync checkpoint is rewritten at most this
 * often (and at once when a sync starts or finishes): the agent resumes from
 * the journal's copy, the local one only cross-checks it, so a second of lag
 * costs nothing, while each write is two fsyncs and a rename that a fast
 * sync should not pay per 4 MiB segment.
 */
#define SYNC_CKPT_INTERVAL CDP_NS_PER_SEC
#define CAPTURE_METHOD "/cdp.v1.Capture/Stream"

struct agent_conf {
	char *id, *plan, *server, *state_dir, *spill_dir;
	char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
	char *vol_name[MAX_VOLUMES], *vol_path[MAX_VOLUMES], *vol_nbd[MAX_VOLUMES];
	int64_t point_interval, link_down_limit, ack_timeout, reconnect_min, reconnect_max;
	int64_t stop_timeout, stats_interval, request_slice;
	uint64_t cache_size, spill_max, extent_size, bitmap_granularity, max_request;
	uint64_t sync_rate;	/* bit/s */
	int64_t sync_read_percent;
	int64_t max_active, io_threads, request_nice;
};

#define VOL_OPTS(n)                                                                         \
	{ "volume" #n, "name", CDP_CONF_STRING_AT(struct agent_conf, vol_name[n]),         \
	  .flags = CDP_CONF_F_RESTART, .help = "Volume " #n ": its name in the plan." },    \
	{ "volume" #n, "path", CDP_CONF_STRING_AT(struct agent_conf, vol_path[n]),         \
	  .flags = CDP_CONF_F_RESTART,                                                      \
	  .help = "Volume " #n ": the source file or block device." },                     \
	{ "volume" #n, "nbd", CDP_CONF_STRING_AT(struct agent_conf, vol_nbd[n]),           \
	  .flags = CDP_CONF_F_RESTART,                                                      \
	  .help = "Volume " #n ": NBD address the application's block device uses: "       \
	  "unix:PATH or HOST:PORT." }

static const struct cdp_conf_option options[] = {
	{ "agent", "id", CDP_CONF_STRING_AT(struct agent_conf, id), .def = "agent",
	  .flags = CDP_CONF_F_RESTART, .help = "This agent's identity (the plan's agent_id; "
	  "with TLS, its certificate's common name)." },
	{ "agent", "plan", CDP_CONF_STRING_AT(struct agent_conf, plan), .flags = CDP_CONF_F_RESTART,
	  .help = "The plan this agent captures for." },
	{ "agent", "state_dir", CDP_CONF_STRING_AT(struct agent_conf, state_dir),
	  .def = "cdp-agent-state", .flags = CDP_CONF_F_RESTART,
	  .help = "Directory of the activity log and the dirty bitmap." },
	{ "agent", "stats_interval", CDP_CONF_DURATION_AT(struct agent_conf, stats_interval),
	  .def = "60s", .min = 0, .max = CDP_CONF_DAY, .flags = CDP_CONF_F_ZERO_OFF,
	  .help = "How often the agent logs its mode, cache, RSS and CPU seconds per GB "
	  "captured (0: never)." },
	{ "server", "address", CDP_CONF_STRING_AT(struct agent_conf, server),
	  .def = "unix:cdp-state/journald.sock", .flags = CDP_CONF_F_RESTART,
	  .help = "cdp-journald's address: unix:PATH or HOST:PORT." },
	{ "tls", "ca", CDP_CONF_STRING_AT(struct agent_conf, tls_ca), .flags = CDP_CONF_F_RESTART,
	  .help = "CA certificate (PEM); with cert and key: mutual TLS." },
	{ "tls", "cert", CDP_CONF_STRING_AT(struct agent_conf, tls_cert),
	  .flags = CDP_CONF_F_RESTART, .help = "This agent's certificate (PEM)." },
	{ "tls", "key", CDP_CONF_STRING_AT(struct agent_conf, tls_key),
	  .flags = CDP_CONF_F_RESTART, .help = "This agent's private key (PEM)." },
	{ "tls", "server_name", CDP_CONF_STRING_AT(struct agent_conf, tls_server_name),
	  .flags = CDP_CONF_F_RESTART, .help = "Name the server certificate must carry "
	  "(default: the address's host)." },
	{ "capture", "point_interval", CDP_CONF_DURATION_AT(struct agent_conf, point_interval),
	  .def = "1s", .min = 100 * CDP_CONF_MSEC, .max = CDP_CONF_MINUTE,
	  .flags = CDP_CONF_F_RESTART, .help = "A recovery point at least this often." },
	{ "capture", "max_request", CDP_CONF_SIZE_AT(struct agent_conf, max_request),
	  .def = "1MiB", .min = 4096, .max = 2 * CDP_CONF_MIB, .flags = CDP_CONF_F_RESTART,
	  .help = "Largest NBD read or write accepted." },
	{ "capture", "io_threads", CDP_CONF_INT_AT(struct agent_conf, io_threads), .def = "4",
	  .min = 1, .max = 64, .flags = CDP_CONF_F_RESTART,
	  .help = "Threads doing source I/O." },
	{ "capture", "request_nice", CDP_CONF_INT_AT(struct agent_conf, request_nice),
	  .def = "-5", .min = -20, .max = 19, .flags = CDP_CONF_F_RESTART,
	  .help = "Nice value of the threads the application's requests wait for (NBD "
	  "connections, source I/O), ahead of the agent's seal, link and sync threads "
	  "(nice 0 to 5) on a busy machine. Below 0 needs root or CAP_SYS_NICE; "
	  "without, they run at 0 (a warning says so)." },
	{ "capture", "request_slice", CDP_CONF_DURATION_AT(struct agent_conf, request_slice),
	  .def = "100us", .min = 0, .max = 100 * CDP_CONF_MSEC, .flags = CDP_CONF_F_RESTART,
	  .help = "Scheduling slice the same threads ask for (Linux >= 6.12; older kernels "
	  "ignore it): a waking request thread then preempts a thread with a longer slice "
	  "instead of waiting up to a few ms for the CPU. The kernel makes it at least 100us; "
	  "0: the kernel's default." },
	{ "cache", "size", CDP_CONF_SIZE_AT(struct agent_conf, cache_size), .def = "256MiB",
	  .min = 16 * CDP_CONF_MIB, .max = 64 * CDP_CONF_GIB, .flags = CDP_CONF_F_RESTART,
	  .help = "Memory for segments the journal server has not acknowledged; when full "
	  "(and the spill file too), the agent goes to incremental mode. Syncs leave 8 MiB "
	  "of it to continuous capture." },
	{ "cache", "spill_max", CDP_CONF_SIZE_AT(struct agent_conf, spill_max), .def = "0",
	  .min = 16 * CDP_CONF_MIB, .max = CDP_CONF_TIB,
	  .flags = CDP_CONF_F_ZERO_OFF | CDP_CONF_F_RESTART,
	  .help = "Disk for unacknowledged segments once the memory is full: a scratch ring "
	  "file of at most this size, emptied at start and never synced (0: none)." },
	{ "cache", "spill_dir", CDP_CONF_STRING_AT(struct agent_conf, spill_dir),
	  .flags = CDP_CONF_F_RESTART,
	  .help = "Directory of the spill file 'spill' (default: STATE_DIR), on a local "
	  "disk, when spill_max is set." },
	{ "actlog", "extent_size", CDP_CONF_SIZE_AT(struct agent_conf, extent_size),
	  .def = "4MiB", .min = 64 * CDP_CONF_KIB, .max = CDP_CONF_GIB,
	  .flags = CDP_CONF_F_RESTART, .help = "Activity log extent (a power of two)." },
	{ "actlog", "max_active", CDP_CONF_INT_AT(struct agent_conf, max_active), .def = "1024",
	  .min = 16, .max = 65536, .flags = CDP_CONF_F_RESTART,
	  .help = "Extents the activity log keeps active." },
	{ "bitmap", "granularity", CDP_CONF_SIZE_AT(struct agent_conf, bitmap_granularity),
	  .def = "64KiB", .min = 4 * CDP_CONF_KIB, .max = 64 * CDP_CONF_KIB,
	  .flags = CDP_CONF_F_RESTART, .help = "Bytes per dirty bit (a power of two)." },
	{ "link", "down_limit", CDP_CONF_DURATION_AT(struct agent_conf, link_down_limit),
	  .def = "2min", .min = CDP_CONF_SEC, .max = CDP_CONF_DAY,
	  .help = "A link down longer than this sends the agent to incremental mode." },
	{ "link", "ack_timeout", CDP_CONF_DURATION_AT(struct agent_conf, ack_timeout),
	  .def = "30s", .min = 100 * CDP_CONF_MSEC, .max = CDP_CONF_HOUR,
	  .help = "No ack for this long while segments are outstanding: the link is cut." },
	{ "link", "reconnect_min", CDP_CONF_DURATION_AT(struct agent_conf, reconnect_min),
	  .def = "200ms", .min = CDP_CONF_MSEC, .max = CDP_CONF_MINUTE,
	  .help = "First wait before dialing again." },
	{ "link", "reconnect_max", CDP_CONF_DURATION_AT(struct agent_conf, reconnect_max),
	  .def = "5s", .min = CDP_CONF_MSEC, .max = CDP_CONF_HOUR,
	  .help = "Longest wait between dials (doubling from reconnect_min)." },
	{ "link", "stop_timeout", CDP_CONF_DURATION_AT(struct agent_conf, stop_timeout),
	  .def = "10s", .min = 0, .max = CDP_CONF_HOUR,
	  .help = "At SIGTERM, how long to wait for the journal to acknowledge what is cached." },
	{ "sync", "rate", CDP_CONF_RATE_AT(struct agent_conf, sync_rate), .def = "300Mbit",
	  .flags = CDP_CONF_F_ZERO_OFF,
	  .help = "Network cap on sync traffic: RESYNC data payload (0: unlimited)." },
	{ "sync", "read_percent", CDP_CONF_INT_AT(struct agent_conf, sync_read_percent),
	  .def = "30", .min = 0, .max = 100,
	  .help = "Cap on sync reads, percent of the source's read bandwidth measured at the "
		  "start of each sync (0: off)." },
	VOL_OPTS(0), VOL_OPTS(1), VOL_OPTS(2), VOL_OPTS(3),
};

static const struct cdp_conf_table table = CDP_CONF_TABLE("cdp-agent", options, struct agent_conf);

struct agent {
	struct agent_conf cfg;
	unsigned nvol;
	const char *names[MAX_VOLUMES], *paths[MAX_VOLUMES];
	uint64_t sizes[MAX_VOLUMES];
	struct cdp_actlog *al;
	struct cdp_dirtymap *dm;
	struct cdp_cache *cache;
	char spill_file[4096];		/* "" without a spill file */
	struct cdp_splitter *sp;
	int request_nice;		/* capture.request_nice, or 0 where not permitted */
	struct cdp_nbd_server *nbd[MAX_VOLUMES];
	struct cdp_export *exports[MAX_VOLUMES];	/* the NBD servers borrow them */
	struct cdp_rpc_channel *ch;
	_Atomic bool stop;
	/* sync.rate (as bytes/s) and sync.read_percent; the journal's Throttle, SIGHUP */
	struct cdp_sync_caps caps;
	uint64_t captured_base;		/* write bytes at the last stats line */
	/* The local sync checkpoint: what the file held at start (read by the
	 * first welcome), and what was written last (tick thread only). */
	char ckpt_path[4096];
	bool have_local;
	struct cdp_syncckpt local;
	bool have_ckpt_file, ckpt_failing;
	struct cdp_syncckpt ckpt_file;
	int64_t ckpt_written_at;	/* mono ns */
	int64_t stats_at;		/* mono ns of the next stats line */
	/* Capture went incremental while the link was up: segments the journal
	 * may never get were dropped, so the stream restarts and the next welcome
	 * re-anchors the chain before the resync. */
	_Atomic bool restream;

	pthread_mutex_t mu;
	pthread_cond_t cond;
	/* guarded by mu */
	uint64_t epoch;
	bool started;		/* the chain continues (first welcome seen) */
	bool want_sync;		/* a sync should run */
	uint32_t sync_kind;
	unsigned sync_volume;
	uint64_t sync_offset;
	bool syncing;
	bool link_up;
	int64_t down_since;	/* mono ns, 0 while up */
	uint64_t sent_hi;	/* highest record seq sent on it */
	uint64_t resume_pos;	/* the welcome's answer: send cache entries after it */
	uint64_t durable;	/* highest acked seq */
	int64_t last_progress;	/* mono ns of the last ack (or stream start) */
	pthread_t tick, link, sync;
};

static int64_t mono(void)
{
	return cdp_clock_mono_ns(cdp_clock_real());
}

/* Waits on a->cond until @until (mono ns) or a stop; the daemon's timer waits. */
static void wait_until(struct agent *a, int64_t until)
{
	struct timespec ts;

	ts.tv_sec = until / CDP_NS_PER_SEC;
	ts.tv_nsec = until % CDP_NS_PER_SEC;
	pthread_mutex_lock(&a->mu);
	if (!atomic_load(&a->stop))
		pthread_cond_timedwait(&a->cond, &a->mu, &ts);
	pthread_mutex_unlock(&a->mu);
}

/* The agent's footprint: RSS and CPU seconds per GB captured (SPEC targets). */
static void log_stats(struct agent *a)
{
	struct cdp_splitter_stats st;
	struct cdp_cache_stats cst;
	struct rusage ru;
	char line[256], spill[80], per_gb[32];
	uint64_t rss_kib = 0;
	double cpu, gb;
	FILE *f;

	cdp_splitter_stats(a->sp, &st);
	cdp_cache_stats(a->cache, &cst);
	getrusage(RUSAGE_SELF, &ru);
	f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %" SCNu64, &rss_kib) == 1)
			break;
	if (f)
		fclose(f);
	cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	      (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	gb = (double)st.write_bytes / 1e9;
	per_gb[0] = 0;
	if (gb > 0)
		snprintf(per_gb, sizeof(per_gb), " (%.2f s/GB)", cpu / gb);
	spill[0] = 0;
	if (a->spill_file[0])
		snprintf(spill, sizeof(spill), " (spilled %" PRIu64 " segments %.1f MiB)",
			 cst.spilled_segments, (double)cst.spilled_bytes / (1 << 20));
	cdp_log_info("agent: stats: %s, next seq %" PRIu64 ", cache %" PRIu64 " segments %.1f MiB%s, "
		     "captured %.3f GB in %" PRIu64 " writes, RSS %.1f MiB, CPU %.2f s%s, "
		     "sealed %" PRIu64 " segments (%" PRIu64 " at zstd's fast level, %" PRIu64
		     " raw), seal thread behind %" PRIu64 " times",
		     st.mode == CDP_SPLIT_CONTINUOUS ? "continuous" : "incremental", st.next_seq,
		     cst.segments, (double)cst.bytes / (1 << 20), spill, gb, st.writes,
		     (double)rss_kib / 1024, cpu, per_gb,
		     st.segments, st.seals_fast, st.seals_raw, st.seal_promotions);
}

/*
 * Writes the journal's newest acknowledged full-sync checkpoint to the local
 * file when cdp_syncckpt_due() says so (@interval 0: whenever it changed).
 * Tick thread, or agent_stop() once it is joined.
 */
static void ckpt_step(struct agent *a, int64_t now, int64_t interval)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_syncckpt ck;

	if (!cdp_cache_acked_ckpt(a->cache, &ck) ||
	    !cdp_syncckpt_due(&ck, a->have_ckpt_file ? &a->ckpt_file : NULL, a->ckpt_written_at,
			      now, interval, a->nvol))
		return;
	a->ckpt_written_at = now;
	if (cdp_syncckpt_write(a->ckpt_path, &ck, NULL, &err)) {
		if (!a->ckpt_failing)	/* once until a write succeeds again */
			cdp_log_warn("agent: %s", err.msg);
		a->ckpt_failing = true;
		return;
	}
	a->ckpt_failing = false;
	a->ckpt_file = ck;
	a->have_ckpt_file = true;
	if (ck.volume >= a->nvol)
		cdp_log_info("agent: full sync %" PRIu64 " acknowledged to its end; local checkpoint "
			     "marked done", ck.sync_id);
	else
		cdp_log_debug("agent", "local sync checkpoint: full sync %" PRIu64 " at volume %"
			      PRIu32 ", offset %" PRIu64, ck.sync_id, ck.volume, ck.offset);
}

static void *tick_main(void *arg)
{
	struct agent *a = arg;
	int64_t step = a->cfg.point_interval / 4;

	while (!atomic_load(&a->stop)) {
		int64_t now = mono();
		bool go_incr = false;

		cdp_splitter_tick(a->sp);
		ckpt_step(a, now, SYNC_CKPT_INTERVAL);
		if (a->cfg.stats_interval && now >= a->stats_at) {
			if (a->stats_at)
				log_stats(a);
			a->stats_at = now + a->cfg.stats_interval;
		}
		pthread_mutex_lock(&a->mu);
		if (!a->link_up && a->down_since && now - a->down_since > a->cfg.link_down_limit &&
		    cdp_splitter_mode(a->sp) == CDP_SPLIT_CONTINUOUS)
			go_incr = true;
		pthread_mutex_unlock(&a->mu);
		if (go_incr) {
			struct cdp_err err = CDP_ERR_INIT;

			if (cdp_splitter_go_incremental(a->sp, "link down longer than "
							"link.down_limit", &err))
				cdp_log_err("agent: %s", err.msg);
		}
		wait_until(a, now + step);
	}
	return NULL;
}

/* ---- sync thread ------------------------------------------------------------- */

static void *sync_main(void *arg)
{
	struct agent *a = arg;

	while (!atomic_load(&a->stop)) {
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_splitter_stats before, after;
		uint32_t kind;
		unsigned vol;
		uint64_t off;
		int rc;

		pthread_mutex_lock(&a->mu);
		while (!atomic_load(&a->stop) && !(a->want_sync && a->link_up && a->started))
			pthread_cond_wait(&a->cond, &a->mu);
		kind = a->sync_kind;
		vol = a->sync_volume;
		off = a->sync_offset;
		a->want_sync = false;
		a->syncing = true;
		pthread_mutex_unlock(&a->mu);
		if (atomic_load(&a->stop))
			break;
		cdp_log_info("agent: %s sync starts (volume %u, offset %" PRIu64 ")",
			     kind == CDP_SYNC_FULL ? "full" : "incremental", vol, off);
		cdp_splitter_stats(a->sp, &before);
		rc = cdp_splitter_resync(a->sp, kind, vol, off, &a->stop, &a->caps, &err);
		pthread_mutex_lock(&a->mu);
		a->syncing = false;
		if (rc && !atomic_load(&a->stop)) {
			cdp_log_warn("agent: sync: %s", err.msg);
			/* Interrupted: the next welcome decides what to do again. */
		}
		pthread_cond_broadcast(&a->cond);
		pthread_mutex_unlock(&a->mu);
		if (!rc) {
			cdp_splitter_stats(a->sp, &after);
			cdp_log_info("agent: sync done: %" PRIu64 " bytes sent, %" PRIu64
				     " bytes as zero ranges, %" PRIu64 " bytes read (%" PRIu64
				     " with O_DIRECT)",
				     after.resync_bytes - before.resync_bytes,
				     after.resync_zero_bytes - before.resync_zero_bytes,
				     after.resync_read_bytes - before.resync_read_bytes,
				     after.resync_direct_bytes - before.resync_direct_bytes);
		}
	}
	return NULL;
}

/* ---- the link ------------------------------------------------------------ */

static int send_hello(struct agent *a, struct cdp_rpc_stream *st, struct cdp_err *err)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__CaptureHello h = CDP__V1__CAPTURE_HELLO__INIT;
	Cdp__V1__Volume vols[MAX_VOLUMES], *vp[MAX_VOLUMES];
	struct cdp_cache_stats cst;
	uint8_t *buf;
	size_t len;
	int rc;

	cdp_cache_stats(a->cache, &cst);
	h.plan = a->cfg.plan;
	h.agent_id = a->cfg.id;
	pthread_mutex_lock(&a->mu);
	h.epoch = a->epoch;
	h.acked_seq = a->durable;
	pthread_mutex_unlock(&a->mu);
	h.mode = cdp_splitter_mode(a->sp) == CDP_SPLIT_CONTINUOUS ?
		 CDP__V1__CAPTURE_MODE__CAPTURE_MODE_CONTINUOUS :
		 CDP__V1__CAPTURE_MODE__CAPTURE_MODE_INCREMENTAL;
	h.cache_first_seq = cst.first_seq;
	for (unsigned i = 0; i < a->nvol; i++) {
		cdp__v1__volume__init(&vols[i]);
		vols[i].id = i;
		vols[i].name = (char *)a->names[i];
		vols[i].size = a->sizes[i];
		vp[i] = &vols[i];
	}
	h.volumes = vp;
	h.n_volumes = a->nvol;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_HELLO;
	up.hello = &h;
	len = cdp__v1__capture_up__get_packed_size(&up);
	buf = cdp_xmalloc(len);
	cdp__v1__capture_up__pack(&up, buf);
	rc = cdp_rpc_stream_send(st, buf, len, a->cfg.ack_timeout, err);
	free(buf);
	return rc;
}

/* Asks the sync thread for a sync (a->mu held); one already running goes on. */
static void want_sync_locked(struct agent *a, uint32_t kind, unsigned volume, uint64_t offset)
{
	if (a->syncing)
		return;
	a->want_sync = true;
	a->sync_kind = kind;
	a->sync_volume = volume;
	a->sync_offset = offset;
	pthread_cond_broadcast(&a->cond);
}

/*
 * The first welcome against the local sync checkpoint read at start. The
 * journal is the authority (only blocks it acknowledged count): the agent
 * always follows its checkpoint; this only says when the two disagree.
 */
static void reconcile_ckpt(struct agent *a, const Cdp__V1__CaptureWelcome *w)
{
	const struct cdp_syncckpt *l = &a->local;
	struct cdp_syncckpt j = { 0 };
	bool jhas = w->has_checkpoint && w->checkpoint;

	if (jhas)
		j = (struct cdp_syncckpt){ .sync_id = w->checkpoint->sync_id,
					   .kind = w->checkpoint->kind,
					   .volume = w->checkpoint->volume,
					   .offset = w->checkpoint->offset };
	switch (cdp_syncckpt_compare(a->have_local ? l : NULL, jhas ? &j : NULL, a->nvol)) {
	case CDP_SYNCCKPT_JOURNAL_BEHIND:
		cdp_log_warn("agent: full sync %" PRIu64 ": the journal server's checkpoint "
			     "(volume %" PRIu32 ", offset %" PRIu64 ") is behind the local one "
			     "(volume %" PRIu32 ", offset %" PRIu64 "): the journal lost data it "
			     "had acknowledged; resuming from the journal's", l->sync_id, j.volume,
			     j.offset, l->volume, l->offset);
		break;
	case CDP_SYNCCKPT_RESUME:
		cdp_log_info("agent: full sync %" PRIu64 ": resuming from the journal server's "
			     "checkpoint (volume %" PRIu32 ", offset %" PRIu64 "; local copy: "
			     "volume %" PRIu32 ", offset %" PRIu64 ")", l->sync_id, j.volume,
			     j.offset, l->volume, l->offset);
		break;
	case CDP_SYNCCKPT_JOURNAL_OTHER:
	case CDP_SYNCCKPT_JOURNAL_NONE:
		cdp_log_info("agent: the local checkpoint has full sync %" PRIu64 " unfinished "
			     "(volume %" PRIu32 ", offset %" PRIu64 ") but the journal server %s; "
			     "following the journal", l->sync_id, l->volume, l->offset,
			     jhas && j.kind == CDP_SYNC_FULL ? "is at another full sync" :
			     "has no full sync in progress (was the plan recreated?)");
		break;
	case CDP_SYNCCKPT_QUIET:
		break;
	}
}

/* What the journal's welcome means for capture: resend, continue, sync. */
static void on_welcome(struct agent *a, const Cdp__V1__CaptureWelcome *w)
{
	struct cdp_cache_stats cst;
	bool resume_cache, full_unfinished, first;
	uint8_t digest[CDP_DIGEST_LEN] = { 0 };
	uint64_t after = 0;

	if (w->digest.len == CDP_DIGEST_LEN)
		memcpy(digest, w->digest.data, CDP_DIGEST_LEN);
	pthread_mutex_lock(&a->mu);
	first = !a->started;
	a->epoch = w->epoch;
	a->durable = w->durable_seq;
	pthread_mutex_unlock(&a->mu);
	/* Drop what the journal has, then find where its chain ends in the cache. */
	cdp_splitter_acked(a->sp, w->durable_seq, digest);
	resume_cache = !first && cdp_splitter_mode(a->sp) == CDP_SPLIT_CONTINUOUS &&
		       cdp_cache_resume(a->cache, digest, &after) == 0;
	if (!resume_cache) {
		struct cdp_err err = CDP_ERR_INIT;

		/* What the cache held after the journal's position is lost to it: dirty. */
		if (!first && cdp_splitter_go_incremental(a->sp, "the cache does not cover the "
							  "journal's gap", &err))
			cdp_log_err("agent: %s", err.msg);
		cdp_splitter_continue(a->sp, w->plan_id, w->epoch, w->durable_seq, digest,
				      w->last_time_ns);
		cdp_cache_stats(a->cache, &cst);
		after = cst.last_pos;
	}
	pthread_mutex_lock(&a->mu);
	a->resume_pos = after;
	pthread_mutex_unlock(&a->mu);
	if (first)
		reconcile_ckpt(a, w);
	/* A finished full sync leaves its checkpoint past the last volume. */
	full_unfinished = w->has_checkpoint && w->checkpoint &&
			  w->checkpoint->kind == CDP_SYNC_FULL && w->checkpoint->volume < a->nvol;
	pthread_mutex_lock(&a->mu);
	a->started = true;
	if (w->durable_seq == 0 || full_unfinished)
		want_sync_locked(a, CDP_SYNC_FULL, full_unfinished ? w->checkpoint->volume : 0,
				 full_unfinished ? w->checkpoint->offset : 0);
	else if (cdp_splitter_mode(a->sp) == CDP_SPLIT_INCREMENTAL)
		want_sync_locked(a, CDP_SYNC_INCREMENTAL, 0, 0);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->mu);
	cdp_log_info("agent: plan %s: journal durable at seq %" PRIu64 "%s", a->cfg.plan,
		     w->durable_seq, resume_cache ? ", resending from the cache" : "");
}

static void on_command(struct agent *a, const Cdp__V1__Command *c)
{
	struct cdp_err err = CDP_ERR_INIT;

	switch (c->cmd_case) {
	case CDP__V1__COMMAND__CMD_BOOKMARK:
		if (c->bookmark && cdp_splitter_mark(a->sp, c->bookmark->name, &err))
			cdp_log_warn("agent: bookmark: %s", err.msg);
		break;
	case CDP__V1__COMMAND__CMD_RESYNC:
		if (!c->resync)
			break;
		for (size_t i = 0; i < c->resync->n_ranges; i++) {
			const Cdp__V1__Range *r = c->resync->ranges[i];

			if (r->volume < a->nvol)
				cdp_dirtymap_set(a->dm, r->volume, r->offset, r->length);
		}
		cdp_log_warn("agent: journal asks for a resync of %zu ranges: %s",
			     c->resync->n_ranges, c->resync->reason);
		if (cdp_splitter_go_incremental(a->sp, "resync requested", &err))
			cdp_log_err("agent: %s", err.msg);
		atomic_store(&a->restream, true);
		pthread_mutex_lock(&a->mu);
		want_sync_locked(a, CDP_SYNC_INCREMENTAL, 0, 0);
		pthread_mutex_unlock(&a->mu);
		break;
	case CDP__V1__COMMAND__CMD_THROTTLE:
		if (c->throttle && c->throttle->read_percent > 100) {
			cdp_log_warn("agent: journal server's throttle: read_percent %" PRIu32
				     " > 100; ignored", c->throttle->read_percent);
		} else if (c->throttle) {
			atomic_store(&a->caps.net_bps, c->throttle->net_bits_per_sec / 8);
			atomic_store(&a->caps.read_percent, c->throttle->read_percent);
			cdp_log_info("agent: sync caps set by the journal server: network %" PRIu64
				     " bit/s%s, reads %" PRIu32 " %%%s",
				     c->throttle->net_bits_per_sec,
				     c->throttle->net_bits_per_sec ? "" : " (unlimited)",
				     c->throttle->read_percent,
				     c->throttle->read_percent ? "" : " (off)");
		}
		break;
	case CDP__V1__COMMAND__CMD_FULL_SYNC:
		pthread_mutex_lock(&a->mu);
		want_sync_locked(a, CDP_SYNC_FULL, 0, 0);
		pthread_mutex_unlock(&a->mu);
		break;
	default:
		cdp_log_debug("agent", "command %d not handled yet", (int)c->cmd_case);
		break;
	}
}

struct rx {
	struct agent *a;
	struct cdp_rpc_stream *st;
	_Atomic bool dead;
	bool welcomed;
	pthread_mutex_t mu;
	pthread_cond_t cond;
};

static void *rx_main(void *arg)
{
	struct rx *x = arg;
	struct agent *a = x->a;
	struct cdp_buf in = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;

	while (!atomic_load(&x->dead) && !atomic_load(&a->stop)) {
		Cdp__V1__CaptureDown *d;
		int rc = cdp_rpc_stream_recv(x->st, &in, 100 * CDP_NS_PER_MS, &err);

		if (rc == -ETIMEDOUT) {
			int64_t now = mono();
			bool stalled;

			pthread_mutex_lock(&a->mu);
			/* Waiting for a welcome, or for an ack of records sent. */
			stalled = now - a->last_progress > a->cfg.ack_timeout &&
				  (!x->welcomed || a->sent_hi > a->durable);
			pthread_mutex_unlock(&a->mu);
			if (stalled) {
				cdp_log_warn("agent: no answer from %s for %" PRId64 " ms: link cut",
					     a->cfg.server, a->cfg.ack_timeout / CDP_NS_PER_MS);
				break;
			}
			continue;
		}
		if (rc <= 0) {
			if (rc < 0)
				cdp_log_warn("agent: link: %s", err.msg);
			break;
		}
		d = cdp__v1__capture_down__unpack(NULL, in.len, in.data);
		if (!d) {
			cdp_log_warn("agent: link: unreadable message from the journal server");
			break;
		}
		pthread_mutex_lock(&a->mu);
		a->last_progress = mono();
		pthread_mutex_unlock(&a->mu);
		if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_WELCOME && d->welcome) {
			on_welcome(a, d->welcome);
			pthread_mutex_lock(&x->mu);
			x->welcomed = true;
			pthread_cond_broadcast(&x->cond);
			pthread_mutex_unlock(&x->mu);
		} else if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_ACK && d->ack) {
			pthread_mutex_lock(&a->mu);
			a->durable = CDP_MAX(a->durable, d->ack->durable_seq);
			pthread_mutex_unlock(&a->mu);
			cdp_splitter_acked(a->sp, d->ack->durable_seq,
					   d->ack->digest.len == CDP_DIGEST_LEN ?
					   d->ack->digest.data : NULL);
		} else if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_COMMAND && d->command) {
			on_command(a, d->command);
		} else if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_NOTICE && d->notice) {
			cdp_log_warn("agent: journal server: %s", d->notice->text);
			if (d->notice->kind == CDP__V1__NOTICE__KIND__KIND_JOURNAL_FULL) {
				if (cdp_splitter_go_incremental(a->sp, "journal full", &err))
					cdp_log_err("agent: %s", err.msg);
				atomic_store(&a->restream, true);
			}
		}
		cdp__v1__capture_down__free_unpacked(d, NULL);
	}
	{
		enum cdp_rpc_code code;
		struct cdp_err e2 = CDP_ERR_INIT;

		if (!atomic_load(&a->stop) &&
		    cdp_rpc_stream_status(x->st, 0, &code, &e2) < 0 && e2.msg[0])
			cdp_log_warn("agent: link closed: %s", e2.msg);
	}
	atomic_store(&x->dead, true);
	pthread_mutex_lock(&x->mu);
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->mu);
	cdp_cache_wake(a->cache);
	cdp_buf_release(&in);
	return NULL;
}

static void release_seg(void *ctx)
{
	cdp_cache_put(ctx);
}

/* One stream: hello, welcome, then segments from the cache until it dies. */
static void run_stream(struct agent *a, struct cdp_rpc_stream *st)
{
	struct rx x = { .a = a, .st = st };
	struct cdp_err err = CDP_ERR_INIT;
	uint64_t pos = 0;
	pthread_t t;

	pthread_mutex_init(&x.mu, NULL);
	pthread_cond_init(&x.cond, NULL);
	pthread_mutex_lock(&a->mu);
	a->last_progress = mono();
	a->sent_hi = 0;
	pthread_mutex_unlock(&a->mu);
	atomic_store(&a->restream, false);
	if (send_hello(a, st, &err)) {
		cdp_log_warn("agent: hello: %s", err.msg);
		pthread_mutex_destroy(&x.mu);
		pthread_cond_destroy(&x.cond);
		return;
	}
	cdp_thread_start(&t, "link/rx", rx_main, &x);
	pthread_mutex_lock(&x.mu);
	while (!x.welcomed && !atomic_load(&x.dead) && !atomic_load(&a->stop))
		pthread_cond_wait(&x.cond, &x.mu);
	pthread_mutex_unlock(&x.mu);
	if (x.welcomed) {
		pthread_mutex_lock(&a->mu);
		pos = a->resume_pos;
		a->link_up = true;
		a->down_since = 0;
		pthread_cond_broadcast(&a->cond);
		pthread_mutex_unlock(&a->mu);
	}
	while (x.welcomed && !atomic_load(&x.dead) && !atomic_load(&a->stop) &&
	       !atomic_load(&a->restream)) {
		struct cdp_cache_seg *s = cdp_cache_next(a->cache, pos, 100 * CDP_NS_PER_MS);
		Cdp__V1__Segment sg = CDP__V1__SEGMENT__INIT;
		Cdp__V1__SyncCheckpoint ck = CDP__V1__SYNC_CHECKPOINT__INIT;
		uint8_t head[CDP_CAPTURE_UP_HEAD_MAX];
		uint64_t s_last;
		uint32_t s_nrec;
		size_t hl;
		int rc;

		if (!s)
			continue;
		if (!s->data) {
			/* The spill file lost it: the journal's chain cannot go on. */
			char why[CDP_ERR_MSG_MAX];

			snprintf(why, sizeof(why), "spill file %s: read back: %s", a->spill_file,
				 strerror(-s->read_err));
			cdp_cache_put(s);
			if (cdp_splitter_go_incremental(a->sp, why, &err))
				cdp_log_err("agent: %s", err.msg);
			atomic_store(&a->restream, true);
			break;
		}
		pos = s->pos;
		if (s->has_ckpt) {
			ck.sync_id = s->ckpt_sync_id;
			ck.kind = s->ckpt_kind;
			ck.volume = s->ckpt_volume;
			ck.offset = s->ckpt_offset;
			sg.checkpoint = &ck;
			sg.has_checkpoint = true;
		}
		s_nrec = s->nrecords;
		s_last = s->last_seq;
		sg.sent_ns = cdp_clock_wall_ns(cdp_clock_real());	/* journald's skew check */
		hl = cdp_capture_up_segment_head(&sg, s->len, head);
		/* Each attempt hands gRPC a reference of its own (released whatever
		 * the send returns); ours, from cdp_cache_next(), goes after the loop,
		 * so the bytes outlive a cache that drops the segment meanwhile. */
		do {
			cdp_cache_get(s);
			rc = cdp_rpc_stream_send_parts(st, head, hl, s->data, s->len, release_seg, s,
						       a->cfg.ack_timeout, &err);
		} while (rc == -ETIMEDOUT && !atomic_load(&x.dead) && !atomic_load(&a->stop));
		cdp_cache_put(s);
		if (rc) {
			if (rc != -ETIMEDOUT)
				cdp_log_warn("agent: send: %s", err.msg);
			break;
		}
		pthread_mutex_lock(&a->mu);
		if (a->sent_hi <= a->durable)	/* nothing was outstanding: the wait starts now */
			a->last_progress = mono();
		if (s_nrec)
			a->sent_hi = CDP_MAX(a->sent_hi, s_last);
		pthread_mutex_unlock(&a->mu);
	}
	atomic_store(&x.dead, true);
	pthread_join(t, NULL);
	pthread_mutex_destroy(&x.mu);
	pthread_cond_destroy(&x.cond);
}

static void *link_main(void *arg)
{
	struct agent *a = arg;
	int64_t backoff = a->cfg.reconnect_min;

	while (!atomic_load(&a->stop)) {
		struct cdp_err err = CDP_ERR_INIT;
		struct cdp_rpc_stream *st;
		int64_t t0 = mono();

		st = cdp_rpc_stream_open(a->ch, CAPTURE_METHOD, CDP_RPC_NO_DEADLINE, &err);
		if (st) {
			run_stream(a, st);
			cdp_rpc_stream_free(st);
		} else {
			cdp_log_warn("agent: %s", err.msg);
		}
		pthread_mutex_lock(&a->mu);
		if (a->link_up || !a->down_since)
			a->down_since = mono();
		a->link_up = false;
		pthread_mutex_unlock(&a->mu);
		if (atomic_load(&a->stop))
			break;
		/* A stream that lived a while starts the backoff over. */
		if (mono() - t0 > a->cfg.reconnect_max)
			backoff = a->cfg.reconnect_min;
		wait_until(a, mono() + backoff);
		backoff = CDP_MIN(backoff * 2, a->cfg.reconnect_max);
	}
	return NULL;
}

/* ---- start and stop ------------------------------------------------------- */

/* The splitter fell back to incremental mode on its own (log cache full). */
static void on_incremental(void *arg, const char *why)
{
	struct agent *a = arg;

	atomic_store(&a->restream, true);
	cdp_cache_wake(a->cache);
}

/*
 * The nice value the request threads get: capture.request_nice when this
 * process may set it (tried on the calling thread, then undone), else 0
 * with a warning. Threads set themselves (nice is per thread on Linux).
 */
static int request_nice(const struct agent *a)
{
	int want = (int)a->cfg.request_nice, rc = cdp_thread_try_nice(want);

	if (rc) {
		cdp_log_warn("agent: capture.request_nice = %d: %s; the request threads run at "
			     "nice 0", want, strerror(-rc));
		return 0;
	}
	return want;
}

static int agent_open(struct agent *a, struct cdp_err *err)
{
	struct cdp_actlog_opts ao = { 0 };
	struct cdp_dirtymap_opts mo = { 0 };
	struct cdp_splitter_opts so = { 0 };
	struct cdp_rpc_channel_opts co = { 0 };
	struct cdp_al_extent *rec;
	char path[4096];
	size_t n;
	int rc;

	for (unsigned i = 0; i < MAX_VOLUMES; i++) {
		if (!a->cfg.vol_path[i][0])
			continue;
		if (i != a->nvol)
			return cdp_err_set(err, -EINVAL, "volume%u: volumes must be numbered from 0 "
					   "without gaps", i);
		if (!a->cfg.vol_name[i][0] || !a->cfg.vol_nbd[i][0])
			return cdp_err_set(err, -EINVAL, "volume%u: name and nbd are required", i);
		a->names[i] = a->cfg.vol_name[i];
		a->paths[i] = a->cfg.vol_path[i];
		a->nvol++;
	}
	if (!a->nvol)
		return cdp_err_set(err, -EINVAL, "volume0.path: no volume configured");
	if (!a->cfg.plan[0])
		return cdp_err_set(err, -EINVAL, "agent.plan: required");
	if (mkdir(a->cfg.state_dir, 0700) && errno != EEXIST)
		return cdp_err_sys(err, -errno, "agent.state_dir: mkdir %s", a->cfg.state_dir);
	/* The local sync checkpoint: logged now, weighed against the first welcome. */
	snprintf(a->ckpt_path, sizeof(a->ckpt_path), "%s/sync-checkpoint", a->cfg.state_dir);
	{
		struct cdp_err e2 = CDP_ERR_INIT;

		rc = cdp_syncckpt_read(a->ckpt_path, &a->local, NULL, &e2);
		if (rc < 0)
			cdp_log_warn("agent: %s; ignored", e2.msg);
		a->have_local = rc == 1;
		if (a->have_local && a->local.volume < a->nvol)
			cdp_log_info("agent: local sync checkpoint: full sync %" PRIu64 " at volume %"
				     PRIu32 ", offset %" PRIu64, a->local.sync_id, a->local.volume,
				     a->local.offset);
		else if (a->have_local)
			cdp_log_info("agent: local sync checkpoint: full sync %" PRIu64 " done",
				     a->local.sync_id);
		a->have_ckpt_file = a->have_local;
		a->ckpt_file = a->local;
	}

	a->cache = cdp_cache_new(a->cfg.cache_size);
	if (a->cfg.spill_max) {
		snprintf(a->spill_file, sizeof(a->spill_file), "%s/spill",
			 a->cfg.spill_dir[0] ? a->cfg.spill_dir : a->cfg.state_dir);
		rc = cdp_cache_spill_open(a->cache, a->spill_file, a->cfg.spill_max, NULL, err);
		if (rc)
			return cdp_err_prefix(err, "cache.spill_dir");
		cdp_log_info("agent: log cache %" PRIu64 " MiB of memory, then spill file %s of "
			     "%" PRIu64 " MiB", a->cfg.cache_size >> 20, a->spill_file,
			     a->cfg.spill_max >> 20);
	} else if (a->cfg.spill_dir[0]) {
		return cdp_err_set(err, -EINVAL, "cache.spill_dir: set, but cache.spill_max is 0 "
				   "(no spill file)");
	}
	/* The splitter opens the volumes; the bitmap needs their sizes first. */
	for (unsigned i = 0; i < a->nvol; i++) {
		rc = cdp_splitter_source_size(a->paths[i], &a->sizes[i], err);
		if (rc)
			return cdp_err_prefix(err, "volume%u.path", i);
	}
	ao.nvolumes = a->nvol;
	ao.extent_shift = (unsigned)__builtin_ctzll(a->cfg.extent_size);
	ao.max_active = (unsigned)a->cfg.max_active;
	ao.volume_sizes = a->sizes;
	snprintf(path, sizeof(path), "%s/actlog", a->cfg.state_dir);
	rc = cdp_actlog_open(path, &ao, &a->al, err);
	if (rc)
		return rc;
	so.nvolumes = a->nvol;
	so.names = a->names;
	so.paths = a->paths;
	so.point_interval_ns = a->cfg.point_interval;
	so.io_threads = (unsigned)a->cfg.io_threads;
	a->request_nice = request_nice(a);
	so.io_nice = a->request_nice;
	so.io_slice_ns = a->cfg.request_slice;
	so.max_request = (uint32_t)a->cfg.max_request;
	so.al = a->al;
	so.cache = a->cache;
	so.on_incremental = on_incremental;
	so.arg = a;
	mo.nvolumes = a->nvol;
	mo.volume_sizes = a->sizes;
	mo.granularity = (uint32_t)a->cfg.bitmap_granularity;
	snprintf(path, sizeof(path), "%s/bitmap", a->cfg.state_dir);
	rc = cdp_dirtymap_open(path, &mo, &a->dm, err);
	if (rc)
		return rc;
	so.dm = a->dm;
	rc = cdp_splitter_open(&so, &a->sp, err);
	if (rc)
		return rc;
	/* A source that changed size in between would not match the bitmap. */
	for (unsigned i = 0; i < a->nvol; i++)
		if (cdp_splitter_volume_size(a->sp, i) != a->sizes[i])
			return cdp_err_set(err, -EINVAL, "volume%u.path: %s changed size while "
					   "opening: %" PRIu64 " then %" PRIu64 " bytes", i,
					   a->paths[i], a->sizes[i],
					   cdp_splitter_volume_size(a->sp, i));

	/* An unclean stop: the extents that may hold unjournaled writes are dirty. */
	rec = cdp_xcalloc((size_t)a->cfg.max_active + 1, sizeof(*rec));
	n = cdp_actlog_recovered(a->al, rec, (size_t)a->cfg.max_active + 1);
	for (size_t i = 0; i < n; i++)
		if (rec[i].volume < a->nvol)
			cdp_dirtymap_set(a->dm, rec[i].volume, rec[i].index * a->cfg.extent_size,
					 a->cfg.extent_size);
	free(rec);
	if (n) {
		cdp_log_warn("agent: unclean stop: %zu activity log extents will be resynced", n);
		rc = cdp_dirtymap_persist(a->dm, err);
		if (rc)
			return rc;
	}
	cdp_actlog_recovered_done(a->al);

	co.target = a->cfg.server;
	co.tls_ca = a->cfg.tls_ca[0] ? a->cfg.tls_ca : NULL;
	co.tls_cert = a->cfg.tls_cert[0] ? a->cfg.tls_cert : NULL;
	co.tls_key = a->cfg.tls_key[0] ? a->cfg.tls_key : NULL;
	co.tls_server_name = a->cfg.tls_server_name[0] ? a->cfg.tls_server_name : NULL;
	co.max_message = 8u << 20;
	a->ch = cdp_rpc_channel_new(&co, err);
	if (!a->ch)
		return err->code ? err->code : -EINVAL;

	for (unsigned i = 0; i < a->nvol; i++) {
		struct cdp_nbd_opts no = { .listen = a->cfg.vol_nbd[i], .exports = &a->exports[i],
					   .nexports = 1, .thread_nice = a->request_nice,
					   .thread_slice_ns = a->cfg.request_slice };

		a->exports[i] = cdp_splitter_export(a->sp, i);
		rc = cdp_nbd_server_start(&no, &a->nbd[i], err);
		if (rc)
			return rc;
		if (cdp_nbd_server_port(a->nbd[i]) > 0)
			cdp_log_info("agent: volume %s on nbd port %d", a->names[i],
				     cdp_nbd_server_port(a->nbd[i]));
	}
	return 0;
}

static void agent_stop(struct agent *a)
{
	struct cdp_err err = CDP_ERR_INIT;
	int64_t until = mono() + a->cfg.stop_timeout;

	for (unsigned i = 0; i < a->nvol; i++)
		if (a->nbd[i])
			cdp_nbd_server_stop(a->nbd[i]);
	if (a->sp) {
		/* Seal what is open and give the link stop_timeout to have it acknowledged. */
		cdp_splitter_tick(a->sp);
		for (;;) {
			struct cdp_cache_stats cst;
			bool up;

			cdp_cache_stats(a->cache, &cst);
			pthread_mutex_lock(&a->mu);
			up = a->link_up;
			pthread_mutex_unlock(&a->mu);
			if (!cst.segments || !up || mono() >= until)
				break;
			wait_until(a, mono() + 50 * CDP_NS_PER_MS);
		}
	}
	pthread_mutex_lock(&a->mu);
	atomic_store(&a->stop, true);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->mu);
	if (a->cache)
		cdp_cache_wake(a->cache);
	if (a->tick)
		pthread_join(a->tick, NULL);
	if (a->sync)
		pthread_join(a->sync, NULL);
	if (a->link)
		pthread_join(a->link, NULL);
	if (a->cache)
		ckpt_step(a, mono(), 0);
	/* Everything unacknowledged is in the persisted bitmap now: the activity
	 * log can be emptied, so a clean restart resyncs only those blocks. */
	if (a->sp && cdp_splitter_go_incremental(a->sp, "stopping", &err))
		cdp_log_err("agent: %s", err.msg);
	else if (a->al && cdp_actlog_trim(a->al, &err))
		cdp_log_err("agent: %s", err.msg);
	cdp_splitter_close(a->sp);
	cdp_rpc_channel_free(a->ch);
	cdp_dirtymap_close(a->dm);
	cdp_actlog_close(a->al);
	cdp_cache_free(a->cache);
}

/*
 * SIGHUP: reread the config; sync.rate and sync.read_percent apply at once,
 * everything else at the next start (the log says which keys changed and
 * wait for it). A config
 * that does not parse is refused and the running one kept.
 */
static void reload(struct agent *a, const char *config, unsigned flags, const char *const *sets,
		   unsigned nsets)
{
	struct agent_conf nc = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	const struct cdp_conf_option *diff = NULL;
	uint64_t rate;
	int64_t pct;
	int rc = cdp_conf_load(&table, &nc, config, NULL, flags, &err);

	for (unsigned i = 0; !rc && i < nsets; i++)
		rc = cdp_conf_set_arg(&table, &nc, sets[i], &err);
	if (rc) {
		cdp_log_warn("cdp-agent: SIGHUP: %s; keeping the running config", err.msg);
		cdp_conf_release(&table, &nc);
		return;
	}
	rate = nc.sync_rate;
	pct = nc.sync_read_percent;
	atomic_store(&a->caps.net_bps, rate / 8);
	atomic_store(&a->caps.read_percent, (unsigned)pct);
	nc.sync_rate = a->cfg.sync_rate;	/* the keys applied now */
	nc.sync_read_percent = a->cfg.sync_read_percent;
	if (!cdp_conf_equal(&table, &a->cfg, &nc, &diff) && diff)
		cdp_log_warn("cdp-agent: SIGHUP: %s.%s (at least) changed; only sync.rate and "
			     "sync.read_percent apply now, the rest at the next start",
			     diff->section, diff->name);
	cdp_log_info("cdp-agent: SIGHUP: config reread; sync.rate is %" PRIu64 " bit/s, "
		     "sync.read_percent %" PRId64, rate, pct);
	cdp_conf_release(&table, &nc);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: cdp-agent [--config FILE] [--set section.key=value]... "
		"[--debug MODULES] [--print-config] [--help-config[=ini|markdown]]\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 's' },
		{ "debug", required_argument, NULL, 'd' },
		{ "help-config", optional_argument, NULL, 'H' },
		{ "print-config", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct agent a;
	struct cdp_err err = CDP_ERR_INIT;
	const char *config = "/etc/cdp/agent.conf", *sets[64];
	unsigned nsets = 0, flags = 0;
	bool print = false;
	struct signalfd_siginfo si;
	sigset_t mask;
	int c, sfd, rc = 1;

	/*
	 * Memory is bounded by the cache (SPEC): unlike journald, the agent lets
	 * glibc give freed memory back (default trim threshold; journald's 256
	 * MiB kept ~0.7 GiB resident across 7 per-thread arenas, each never
	 * trimmed) and keeps few arenas. 4 MiB buffers still come from the heap.
	 */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 8 << 20);
	mallopt(M_ARENA_MAX, 2);
	while ((c = getopt_long(argc, argv, "c:s:d:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			flags = CDP_CONF_REQUIRED;
			break;
		case 's':
			if (nsets == CDP_ARRAY_SIZE(sets)) {
				fprintf(stderr, "cdp-agent: --set: at most %zu\n", CDP_ARRAY_SIZE(sets));
				return 2;
			}
			sets[nsets++] = optarg;
			break;
		case 'd':
			cdp_log_set_debug(optarg);
			break;
		case 'H':
			return cdp_conf_help_command(&table, optarg);
		case 'P':
			print = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "cdp-agent: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (cdp_conf_load(&table, &a.cfg, config, NULL, flags, &err))
		goto conf_fail;
	for (unsigned i = 0; i < nsets; i++)
		if (cdp_conf_set_arg(&table, &a.cfg, sets[i], &err))
			goto conf_fail;
	if (a.cfg.reconnect_max < a.cfg.reconnect_min)
		a.cfg.reconnect_max = a.cfg.reconnect_min;
	if (print) {	/* the files and flags as the agent would run with them */
		cdp_conf_dump(&table, &a.cfg, stdout);
		cdp_conf_release(&table, &a.cfg);
		return fflush(stdout) ? 1 : 0;
	}

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		cdp_log_err("signalfd: %s", strerror(errno));
		return 1;
	}
	pthread_mutex_init(&a.mu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&a.cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (agent_open(&a, &err)) {
		cdp_log_err("cdp-agent: %s", err.msg);
		agent_stop(&a);
		goto out;
	}
	a.down_since = mono();
	atomic_store(&a.caps.net_bps, a.cfg.sync_rate / 8);
	atomic_store(&a.caps.read_percent, (unsigned)a.cfg.sync_read_percent);
	cdp_thread_start(&a.tick, "tick", tick_main, &a);
	cdp_thread_start(&a.sync, "sync", sync_main, &a);
	cdp_thread_start(&a.link, "link", link_main, &a);
	cdp_log_info("cdp-agent: plan %s, %u volume(s), journal server %s", a.cfg.plan, a.nvol,
		     a.cfg.server);
	for (;;) {
		ssize_t n = read(sfd, &si, sizeof(si));

		if (n < 0 && errno == EINTR)
			continue;
		if (n != sizeof(si) || si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			break;
		if (si.ssi_signo == SIGHUP)
			reload(&a, config, flags, sets, nsets);
	}
	cdp_log_info("cdp-agent: stopping");
	agent_stop(&a);
	rc = 0;
out:
	close(sfd);
	cdp_conf_release(&table, &a.cfg);
	return rc;
conf_fail:
	fprintf(stderr, "cdp-agent: %s\n", err.msg);
	cdp_conf_release(&table, &a.cfg);
	return 2;
}
