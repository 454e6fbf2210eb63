/*
 * cdp-journald - the journal server: stores what agents capture, serves
 * recovery points and restores, and (later) feeds standbys.
 *
 *	cdp-journald [--config FILE] [--state-dir DIR] [--listen ADDR[,ADDR...]]
 *		     [--set section.key=value]... [--debug MODULES]
 *		     [--print-config] [--help-config[=ini|markdown]]
 *
 * Without --config, /etc/cdp/journald.conf is read when it exists; without
 * any file the daemon runs on defaults with its state in ./cdp-state and a
 * unix socket there, so a first run needs no setup. Signals arrive through a
 * signalfd: SIGTERM/SIGINT stop (stop accepting, finish the group commit in
 * flight, close cleanly), SIGHUP reloads the config (log settings; the rest
 * needs a restart and says so). With systemd (Type=notify) READY=1 is sent
 * once serving.
 */
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/config.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "journald/journald.h"
#include "proto/wire.h"
#include "storage/segment.h"

/* The CaptureUp of a full raw segment: what agents send most of the time. */
#define JD_SEGMENT_MSG_MAX ((size_t)CDP_CAPTURE_UP_HEAD_MAX + CDP_SEG_HDR_LEN + CDP_SEG_MAX_RAW)

static const struct cdp_conf_option options[] = {
	{ "server", "listen", CDP_CONF_STRING_AT(struct jd_config, listen),
	  .def = "unix:cdp-state/journald.sock", .flags = CDP_CONF_F_RESTART,
	  .help = "Addresses to serve on, comma-separated: "
	  "unix:PATH or HOST:PORT." },
	{ "server", "state_dir", CDP_CONF_STRING_AT(struct jd_config, state_dir),
	  .def = "cdp-state", .flags = CDP_CONF_F_RESTART,
	  .help = "Directory of the journal store." },
	{ "tls", "ca", CDP_CONF_STRING_AT(struct jd_config, tls_ca), .flags = CDP_CONF_F_RESTART,
	  .help = "CA certificate (PEM) that signs every client certificate. With cert and key: "
	  "mutual TLS, required of every client." },
	{ "tls", "cert", CDP_CONF_STRING_AT(struct jd_config, tls_cert),
	  .flags = CDP_CONF_F_RESTART, .help = "The server's certificate (PEM)." },
	{ "tls", "key", CDP_CONF_STRING_AT(struct jd_config, tls_key), .flags = CDP_CONF_F_RESTART,
	  .help = "The server's private key (PEM)." },
	{ "tls", "admin_id", CDP_CONF_STRING_AT(struct jd_config, admin_id), .def = "admin",
	  .flags = CDP_CONF_F_RESTART, .help = "Common name of the certificate allowed to use the Control API." },
	{ "limits", "max_segment", CDP_CONF_SIZE_AT(struct jd_config, max_segment), .def = "5MiB",
	  .min = 4096, .max = 64 << 20, .flags = CDP_CONF_F_RESTART, .help = "Largest segment message accepted." },
	{ "limits", "max_clock_skew", CDP_CONF_DURATION_AT(struct jd_config, max_clock_skew),
	  .def = "2s", .min = 0, .max = INT64_C(3600) * CDP_NS_PER_SEC,
	  .help = "Agent stamps further than this from the server's clock raise an alarm." },
	{ "limits", "ingest_queue", CDP_CONF_INT_AT(struct jd_config, ingest_queue), .def = "16",
	  .min = 2, .max = 4096, .help = "Segments waiting per stream before reads pause." },
	{ "limits", "ingest_threads", CDP_CONF_INT_AT(struct jd_config, ingest_threads),
	  .def = "2", .min = 1, .max = 64, .flags = CDP_CONF_F_RESTART,
	  .help = "Threads that decode and check segments." },
	{ "journal", "extent_size", CDP_CONF_SIZE_AT(struct jd_config, extent_size),
	  .def = "256MiB", .min = 1 << 20, .max = INT64_C(16) << 30, .flags = CDP_CONF_F_RESTART,
	  .help = "Size of one extent file." },
	{ "journal", "spare_extents", CDP_CONF_SIZE_AT(struct jd_config, spare_extents),
	  .def = "2", .min = 0, .max = 64, .flags = CDP_CONF_F_RESTART,
	  .help = "Extent files kept written and ready ahead of need." },
	{ "journal", "retain_interval", CDP_CONF_DURATION_AT(struct jd_config, retain_interval),
	  .def = "10s", .min = 100 * CDP_NS_PER_MS, .max = INT64_C(3600) * CDP_NS_PER_SEC,
	  .flags = CDP_CONF_F_RESTART, .help = "How often retention and the byte cap fold." },
	{ "journal", "verify_interval", CDP_CONF_DURATION_AT(struct jd_config, verify_interval),
	  .def = "200ms", .min = 10 * CDP_NS_PER_MS, .max = 60 * CDP_NS_PER_SEC,
	  .flags = CDP_CONF_F_RESTART, .help = "How soon new segments are read back and checked." },
	{ "journal", "verify_defer_max", CDP_CONF_DURATION_AT(struct jd_config, verify_defer_max),
	  .def = "10s", .min = 0, .max = INT64_C(3600) * CDP_NS_PER_SEC, .flags = CDP_CONF_F_RESTART,
	  .help = "How long read-backs may wait while ingest is busy (0: never)." },
};

static const struct cdp_conf_table table = CDP_CONF_TABLE("cdp-journald", options,
							    struct jd_config);

static void usage(FILE *f)
{
	fprintf(f, "usage: cdp-journald [--config FILE] [--state-dir DIR] [--listen ADDR,...]\n"
		   "                    [--set section.key=value]... [--debug MODULES]\n"
		   "                    [--print-config] [--help-config[=ini|markdown]]\n");
}

static int split_listen(char *list, const char **out, size_t max)
{
	size_t n = 0;

	for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n < max;
	     t = strtok_r(NULL, ",", &save))
		out[n++] = t;
	return (int)n;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "listen", required_argument, NULL, 'l' },
		{ "set", required_argument, NULL, 'S' },
		{ "debug", required_argument, NULL, 'd' },
		{ "help-config", optional_argument, NULL, 'H' },
		{ "print-config", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct jd *d;	/* after the command line: its early exits have nothing to free */
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_journal_opts jo = { 0 };
	struct cdp_rpc_server_opts so = { 0 };
	const char *config = "/etc/cdp/journald.conf", *listen[8];
	char *sets[32], *state_arg = NULL, *listen_arg = NULL, *listen_copy;
	unsigned flags = 0;
	int nsets = 0, c, sfd, nlisten, rc = 1;
	bool print = false;
	sigset_t mask;

	cdp_log_init("cdp-journald");
	cdp_thread_set_name("main");
	/* gRPC throughput depends on the allocator (TOOLCHAIN.md). One arena:
	 * glibc unmaps a thread arena's heap as soon as it is empty, whatever
	 * the trim threshold, so gRPC's read buffers would keep landing in
	 * fresh pages (docs/performance.md, "Ingest over gRPC"). */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	mallopt(M_ARENA_MAX, 1);
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (c) {
		case 'c': config = optarg; flags = CDP_CONF_REQUIRED; break;
		case 's': state_arg = optarg; break;
		case 'l': listen_arg = optarg; break;
		case 'S':
			if (nsets == (int)CDP_ARRAY_SIZE(sets)) {
				fprintf(stderr, "cdp-journald: --set: at most %zu\n",
					CDP_ARRAY_SIZE(sets));
				return 2;
			}
			sets[nsets++] = optarg;
			break;
		case 'd': cdp_log_set_debug(optarg); break;
		case 'H': return cdp_conf_help_command(&table, optarg);
		case 'P': print = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "cdp-journald: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (cdp_fault_arm_from_env()) {
		fprintf(stderr, "cdp-journald: CDP_FAULT: malformed (name:N[:sticky],...)\n");
		return 2;
	}
	d = cdp_xcalloc(1, sizeof(*d));
	cdp_conf_defaults(&table, &d->cfg);
	if (cdp_conf_load(&table, &d->cfg, config, NULL, flags, &err))
		goto conf_fail;
	for (int i = 0; i < nsets; i++)
		if (cdp_conf_set_arg(&table, &d->cfg, sets[i], &err))
			goto conf_fail;
	if (state_arg && cdp_conf_set(&table, &d->cfg, "server.state_dir", state_arg, &err))
		goto conf_fail;
	if (listen_arg && cdp_conf_set(&table, &d->cfg, "server.listen", listen_arg, &err))
		goto conf_fail;
	if ((d->cfg.tls_ca[0] != '\0') + (d->cfg.tls_cert[0] != '\0') +
	    (d->cfg.tls_key[0] != '\0') == 1 ||
	    (d->cfg.tls_ca[0] != '\0') + (d->cfg.tls_cert[0] != '\0') +
	    (d->cfg.tls_key[0] != '\0') == 2) {
		cdp_err_set(&err, -EINVAL, "tls: ca, cert and key: all three or none");
		goto conf_fail;
	}
	if (print) {	/* the files and flags as the daemon would run with them */
		cdp_conf_dump(&table, &d->cfg, stdout);
		cdp_conf_release(&table, &d->cfg);
		free(d);
		return fflush(stdout) ? 1 : 0;
	}
	d->tls = d->cfg.tls_ca[0] != '\0';
	d->clock = cdp_clock_real();

	/* Signals through a signalfd, blocked in every thread started after this. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		cdp_log_err("signalfd: %s", strerror(errno));
		return 1;
	}

	mkdir(d->cfg.state_dir, 0750);
	{
		/* One daemon per state directory (gRPC would also take over its socket). */
		char lock[4096];
		int lfd;

		snprintf(lock, sizeof(lock), "%s/journald.lock", d->cfg.state_dir);
		lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
		if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB)) {
			cdp_log_err("%s: %s", lock, errno == EWOULDBLOCK ?
				    "another cdp-journald uses this state directory" : strerror(errno));
			return 1;
		}
		/* Held (open) until the process ends. */
	}
	jo.extent_max_bytes = d->cfg.extent_size;
	jo.spare_extents = (unsigned)d->cfg.spare_extents;
	jo.retain_interval_ns = d->cfg.retain_interval;
	jo.verify_interval_ns = d->cfg.verify_interval;
	jo.verify_defer_max_ns = d->cfg.verify_defer_max;
	jo.on_event = jd_on_journal_event;
	jo.event_arg = d;
	/* Before the journal: its open may already report a bad segment to us. */
	pthread_mutex_init(&d->mu, NULL);
	d->j = cdp_journal_open(d->cfg.state_dir, &jo, &err);
	if (!d->j) {
		cdp_log_err("journal %s: %s", d->cfg.state_dir, err.msg);
		return 1;
	}
	if (jd_plans_load(d, &err)) {
		cdp_log_err("plans: %s", err.msg);
		goto out_journal;
	}

	listen_copy = cdp_xstrdup(d->cfg.listen);
	nlisten = split_listen(listen_copy, listen, CDP_ARRAY_SIZE(listen));
	for (int i = 0; i < nlisten; i++)
		if (!strncmp(listen[i], "unix:", 5))
			unlink(listen[i] + 5);	/* a stale socket of a previous run */
	so.listen = listen;
	so.n_listen = (size_t)nlisten;
	so.max_message = d->cfg.max_segment + 4096;
	if (d->tls) {
		so.tls_ca = d->cfg.tls_ca;
		so.tls_cert = d->cfg.tls_cert;
		so.tls_key = d->cfg.tls_key;
	}
	d->srv = cdp_rpc_server_new(&so, &err);
	if (!d->srv) {
		cdp_log_err("%s", err.msg);
		free(listen_copy);
		goto out_plans;
	}
	/* Receive buffers for full segments, faulted in now rather than under
	 * the first agent's stream. */
	cdp_rpc_msg_pool_prefill(CDP_MIN((size_t)so.max_message, JD_SEGMENT_MSG_MAX),
				 CDP_RPC_MSG_POOL_MAX);
	if (jd_ingest_start(d, &err) || jd_replay_start(d, &err) || jd_control_start(d, &err) ||
	    cdp_rpc_server_start(d->srv, &err)) {
		cdp_log_err("%s", err.msg);
		goto out_server;
	}
	for (int i = 0; i < nlisten; i++) {
		int port = cdp_rpc_server_port(d->srv, (size_t)i);

		if (port > 0)
			cdp_log_info("serving on %s (port %d)%s", listen[i], port,
				     d->tls ? " with mutual TLS" : "");
		else
			cdp_log_info("serving on %s%s", listen[i], d->tls ? " with mutual TLS" : "");
	}
	sd_notify(0, "READY=1");
	rc = 0;
	for (;;) {
		struct signalfd_siginfo si;
		ssize_t n = read(sfd, &si, sizeof(si));

		if (n < 0 && errno == EINTR)
			continue;
		if (n != sizeof(si))
			break;
		if (si.ssi_signo == SIGHUP) {
			struct jd_config next = { 0 };
			struct cdp_err e2 = CDP_ERR_INIT;

			cdp_conf_defaults(&table, &next);
			if (cdp_conf_load(&table, &next, config, NULL, flags, &e2)) {
				cdp_log_warn("reload: %s (keeping the running config)", e2.msg);
			} else {
				/* What applies at run time; the rest says "restart". */
				__atomic_store_n(&d->cfg.max_clock_skew, next.max_clock_skew,
						 __ATOMIC_RELAXED);
				__atomic_store_n(&d->cfg.ingest_queue, next.ingest_queue,
						 __ATOMIC_RELAXED);
				cdp_log_info("reload: limits.max_clock_skew and limits.ingest_queue "
					     "applied; settings marked restart apply at the next "
					     "start");
			}
			cdp_conf_release(&table, &next);
			continue;
		}
		cdp_log_info("signal %d: stopping", (int)si.ssi_signo);
		sd_notify(0, "STOPPING=1");
		break;
	}
out_server:
	cdp_rpc_server_stop(d->srv);
	jd_control_stop(d);
	jd_ingest_stop(d);
	cdp_rpc_server_free(d->srv);
	free(listen_copy);
out_plans:
	jd_plans_free(d);
out_journal:
	cdp_journal_close(d->j);	/* finishes the group commit in flight */
	cdp_conf_release(&table, &d->cfg);
	close(sfd);
	free(d);
	cdp_log_info("stopped");
	return rc;
conf_fail:
	fprintf(stderr, "cdp-journald: %s\n", err.msg);
	cdp_conf_release(&table, &d->cfg);
	free(d);
	return 2;
}
