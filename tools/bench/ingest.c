/*
 * tools/bench/ingest - segments streamed over gRPC into the real cdp-journald
 * (acknowledged once durable) against the journal store alone on the same
 * segments, in the same run (SPEC "Performance targets").
 *
 *	ingest [--journald PATH] [--mkcerts PATH] [--dir DIR] [--runs N] [--mib N]
 *	       [--window N] [--extent-mib N] [--only store,tcp,unix,tls] [--keep]
 *	       [--smoke]
 *
 * Defaults: the cdp-journald of the bench's own build (BUILD/journald/, found
 * from /proc/self/exe), DIR /var/tmp (a real disk), 5 runs, 512 MiB per
 * measurement, window 16 (segments not yet acknowledged), extent files of
 * 256 MiB (journald's and the journal's default). Like the daemons
 * (TOOLCHAIN.md) the program sets mallopt(M_MMAP_THRESHOLD 64 MiB,
 * M_TRIM_THRESHOLD 256 MiB) first.
 *
 * Segments: ~4 MiB raw body of 64 KiB WRITE records of random bytes (the
 * encoder stores them raw), plan 1, epoch 1, one 1 GiB volume, encoded before
 * any timing by tools/bench/benchlib (the generator of the journal bench).
 *
 * Peer: the journal store alone. cdp_journal_open() on a fresh directory next
 * to the daemon's, spare extent files written first and the journal reopened
 * without a pool target (as the journal bench does), one submitter keeping
 * --window segments in flight; MB/s of acknowledged segment bytes from the
 * first submit to the last ack.
 *
 * Measured: cdp-journald on a fresh state directory, prepared the same way:
 * started with --set journal.spare_extents=N (the files the measurement
 * needs), its extents/spare/ polled (with a deadline) until all N are
 * written, stopped with SIGTERM and started again on the same directory with
 * spare_extents=0, so no background refill competes with the timed run. The
 * plan is created through the Control API (unary CreatePlan, a packed
 * cdp.v1.Plan); then one agent stream: hello, welcome, and a sender thread
 * sends every segment (packed into a CaptureUp on the fly, as an agent does)
 * while this thread reads acks, at most --window segments un-acked. MB/s from
 * the first send to the last ack. Transports: plaintext TCP to 127.0.0.1 (the
 * headline), plaintext over the unix socket, mutual TLS over TCP (certificates
 * from tools/mkcerts, made once). The daemon is stopped with SIGTERM and
 * waited for after each measurement (also when the bench dies), and every
 * scratch directory is removed.
 *
 * Each figure is the median over --runs; a ratio is the median of the per-run
 * ratios (store and daemon run back to back, so drift cancels). Each run's
 * line also gives journald's CPU seconds per GB and page faults per MiB
 * (minor faults over the daemon's whole life, the prefill at its start
 * included) and the client's own faults during the stream: first touches of
 * fresh pages cost more than copies on these VMs. Human table
 * on stderr; the last stdout line is one JSON object:
 * {"bench","metric","value","unit","peer","peer_value","ratio","more":[...]}.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cdp/v1/capture.pb-c.h"
#include "cdp/v1/control.pb-c.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "proto/rpc.h"
#include "proto/wire.h"
#include "tools/bench/benchlib.h"

#define PLAN_ID 1			/* the first plan of a fresh journald */
#define PLAN_NAME "bench1"
#define AGENT "agent-db01"
#define VOL_NAME "vol0"
#define INGEST_VOL (1ull << 30)
#define RPC_WAIT (60 * CDP_NS_PER_SEC)
#define START_DEADLINE_S 30

#ifndef CDP_SOURCE_DIR
#define CDP_SOURCE_DIR "."
#endif

struct opts {
	const char *journald;
	const char *mkcerts;
	const char *dir;
	unsigned runs;
	uint64_t mib;
	uint64_t extent_mib;
	unsigned window;
	const char *only;
	bool keep;
	bool smoke;
};

enum transport { TR_TCP, TR_UNIX, TR_TLS, TR_COUNT };

static const char *const tr_name[TR_COUNT] = { "tcp", "unix", "tls" };

static char g_base[PATH_MAX];	/* scratch directory of this run, removed at exit */
static bool g_keep;
static pid_t g_pid;		/* the cdp-journald we started, 0 when none */
static char g_pki[PATH_MAX + 8];	/* certificates, "" when TLS is unavailable */

/* ---- the daemon ----------------------------------------------------------- */

/*
 * SIGTERM to the daemon we started, and waits for it (SIGKILL after a
 * deadline). Returns its CPU seconds (user + system) over its whole life,
 * and its minor page faults in *@minflt when @minflt is not NULL.
 */
static double jd_stop_faults(long *minflt)
{
	int64_t deadline = now_ns() + 30 * CDP_NS_PER_SEC;
	struct timespec poll = { 0, 10 * 1000000 };
	struct rusage ru;
	int status;
	pid_t pid = g_pid;

	if (!pid)
		return 0;
	g_pid = 0;
	kill(pid, SIGTERM);
	for (;;) {
		pid_t r = wait4(pid, &status, WNOHANG, &ru);

		if (r == pid)
			break;
		if (r < 0) {
			note("ingest bench: warning: wait for cdp-journald %d: %s\n", (int)pid,
			     strerror(errno));
			return 0;
		}
		if (now_ns() > deadline) {
			note("ingest bench: warning: cdp-journald %d still running 30 s after "
			     "SIGTERM; SIGKILL\n", (int)pid);
			kill(pid, SIGKILL);
			deadline = INT64_MAX;
		}
		nanosleep(&poll, NULL);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		note("ingest bench: warning: cdp-journald %d ended with status 0x%x (see %s/jd.log)\n",
		     (int)pid, status, g_base);
	if (minflt)
		*minflt = ru.ru_minflt;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double jd_stop(void)
{
	return jd_stop_faults(NULL);
}

static void cleanup(void)
{
	jd_stop();
	if (g_base[0] && !g_keep)
		rmtree(g_base);
}

/* The port of "serving on 127.0.0.1:0 (port N)" in @log, 0 while not there. */
static int log_port(const char *log)
{
	static const char key[] = "serving on 127.0.0.1:0 (port ";
	char buf[16384];
	int fd = open(log, O_RDONLY | O_CLOEXEC), port = 0;
	long n;
	char *p;

	if (fd < 0)
		return 0;
	n = cdp_read_full(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strstr(buf, key);
	if (p)
		port = atoi(p + sizeof(key) - 1);
	return port;
}

/*
 * Starts cdp-journald on @state with @spares spare extent files, log to
 * @base/jd.log (appended), and waits until it serves; returns the TCP port.
 */
static int jd_start(const struct opts *o, const char *state, const char *sock, unsigned spares,
		    bool tls)
{
	char log[PATH_MAX + 16], conf[PATH_MAX + 16], listen[PATH_MAX + 64], sp[64], ext[64], ca[PATH_MAX + 32],
		cert[PATH_MAX + 32], key[PATH_MAX + 32];
	const char *argv[20];
	int64_t deadline = now_ns() + START_DEADLINE_S * CDP_NS_PER_SEC;
	struct timespec poll = { 0, 5 * 1000000 };
	int n = 0, port, status, fd;

	snprintf(log, sizeof(log), "%s/jd.log", g_base);
	unlink(log);
	/* An empty config file: the host's /etc/cdp/journald.conf does not leak in. */
	snprintf(conf, sizeof(conf), "%s/journald.conf", g_base);
	fd = open(conf, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		die("create %s: %s", conf, strerror(errno));
	close(fd);
	snprintf(listen, sizeof(listen), "unix:%s,127.0.0.1:0", sock);
	snprintf(sp, sizeof(sp), "journal.spare_extents=%u", spares);
	snprintf(ext, sizeof(ext), "journal.extent_size=%" PRIu64 "MiB", o->extent_mib);
	argv[n++] = o->journald;
	argv[n++] = "--config";
	argv[n++] = conf;
	argv[n++] = "--state-dir";
	argv[n++] = state;
	argv[n++] = "--listen";
	argv[n++] = listen;
	argv[n++] = "--set";
	argv[n++] = sp;
	argv[n++] = "--set";
	argv[n++] = ext;
	if (tls) {
		snprintf(ca, sizeof(ca), "tls.ca=%s/ca.crt", g_pki);
		snprintf(cert, sizeof(cert), "tls.cert=%s/server.crt", g_pki);
		snprintf(key, sizeof(key), "tls.key=%s/server.key", g_pki);
		argv[n++] = "--set";
		argv[n++] = ca;
		argv[n++] = "--set";
		argv[n++] = cert;
		argv[n++] = "--set";
		argv[n++] = key;
	}
	argv[n] = NULL;
	fflush(NULL);
	g_pid = fork();
	if (g_pid < 0) {
		g_pid = 0;
		die("fork: %s", strerror(errno));
	}
	if (!g_pid) {
		fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(o->journald, (char *const *)argv);
		_exit(127);
	}
	while (!(port = log_port(log))) {
		if (waitpid(g_pid, &status, WNOHANG) == g_pid) {
			g_pid = 0;
			die("cdp-journald exited with status 0x%x before serving (log %s%s)", status,
			    log, g_keep ? "" : "; rerun with --keep to read it");
		}
		if (now_ns() > deadline)
			die("cdp-journald did not serve within %d s (log %s)", START_DEADLINE_S, log);
		nanosleep(&poll, NULL);
	}
	return port;
}

/* ---- the agent side ------------------------------------------------------ */

static struct cdp_rpc_channel *channel(const char *target, const char *who)
{
	struct cdp_rpc_channel_opts co = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_channel *ch;
	char ca[PATH_MAX + 16], cert[PATH_MAX + 64], key[PATH_MAX + 64];

	co.target = target;
	co.max_message = 8u << 20;
	if (who) {
		snprintf(ca, sizeof(ca), "%s/ca.crt", g_pki);
		snprintf(cert, sizeof(cert), "%s/%s.crt", g_pki, who);
		snprintf(key, sizeof(key), "%s/%s.key", g_pki, who);
		co.tls_ca = ca;
		co.tls_cert = cert;
		co.tls_key = key;
		co.tls_server_name = "localhost";
	}
	ch = cdp_rpc_channel_new(&co, &err);
	if (!ch)
		die("channel to %s: %s", target, err.msg);
	return ch;
}

/* CreatePlan of plan 1 (epoch 1, the segments' epoch) with one 1 GiB volume. */
static void create_plan(struct cdp_rpc_channel *ch)
{
	Cdp__V1__Plan pb = CDP__V1__PLAN__INIT, *reply;
	Cdp__V1__Volume v = CDP__V1__VOLUME__INIT, *vp = &v;
	struct cdp_buf req = CDP_BUF_INIT, out = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;

	v.name = (char *)VOL_NAME;
	v.size = INGEST_VOL;
	pb.name = (char *)PLAN_NAME;
	/*
	 * Set although it is the default: journald's fill_defaults() free()s an
	 * absent kind, protobuf-c's static empty string, and aborts.
	 */
	pb.kind = (char *)"protection";
	pb.agent_id = (char *)AGENT;
	pb.epoch = 1;
	pb.n_volumes = 1;
	pb.volumes = &vp;
	cdp_buf_reserve(&req, protobuf_c_message_get_packed_size(&pb.base) + 1);
	req.len = protobuf_c_message_pack(&pb.base, req.data);
	if (cdp_rpc_unary(ch, "/cdp.v1.Control/CreatePlan", req.data, req.len, RPC_WAIT, &out, NULL,
			  &err))
		die("%s", err.msg);
	reply = cdp__v1__plan__unpack(NULL, out.len, out.data);
	if (!reply || reply->plan_id != PLAN_ID || reply->epoch != 1)
		die("CreatePlan: plan %" PRIu64 " epoch %" PRIu64 ", expected plan %d epoch 1",
		    reply ? reply->plan_id : 0, reply ? reply->epoch : 0, PLAN_ID);
	cdp__v1__plan__free_unpacked(reply, NULL);
	cdp_buf_release(&req);
	cdp_buf_release(&out);
}

struct sender {
	struct cdp_rpc_stream *st;
	const struct seg *segs;
	unsigned n;
	unsigned window;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned acked;		/* guarded by mu: segments acknowledged */
	bool stop;		/* guarded by mu: the receiver gave up */
	int rc;			/* sender thread only, read after join */
	char msg[CDP_ERR_MSG_MAX];
};

static atomic_uint bodies_out;	/* segment bodies gRPC still reads in place */

static void body_release(void *ctx)
{
	atomic_fetch_sub(&bodies_out, 1);
}

/* Sends as an agent does: a CaptureUp head, then the sealed segment in place. */
static void *send_main(void *arg)
{
	struct sender *s = arg;
	Cdp__V1__Segment sg = CDP__V1__SEGMENT__INIT;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t head[CDP_CAPTURE_UP_HEAD_MAX];

	for (unsigned i = 0; i < s->n; i++) {
		size_t len;
		bool stop;

		pthread_mutex_lock(&s->mu);
		while (i - s->acked >= s->window && !s->stop)
			pthread_cond_wait(&s->cond, &s->mu);
		stop = s->stop;
		pthread_mutex_unlock(&s->mu);
		if (stop)
			break;
		sg.sent_ns = cdp_clock_wall_ns(cdp_clock_real());	/* as the agent does */
		len = cdp_capture_up_segment_head(&sg, s->segs[i].len, head);
		atomic_fetch_add(&bodies_out, 1);
		s->rc = cdp_rpc_stream_send_parts(s->st, head, len, s->segs[i].p, s->segs[i].len,
						  body_release, NULL, RPC_WAIT, &err);
		if (s->rc) {
			snprintf(s->msg, sizeof(s->msg), "segment %u: %s", i, err.msg);
			break;
		}
	}
	return NULL;
}

static Cdp__V1__CaptureDown *recv_down(struct cdp_rpc_stream *st, struct cdp_buf *in,
				       const char *what)
{
	struct cdp_err err = CDP_ERR_INIT;
	Cdp__V1__CaptureDown *d;
	int rc = cdp_rpc_stream_recv(st, in, RPC_WAIT, &err);

	if (rc <= 0) {
		if (!rc)
			cdp_rpc_stream_status(st, RPC_WAIT, NULL, &err);
		die("%s: %s", what, err.msg[0] ? err.msg : "the stream ended");
	}
	d = cdp__v1__capture_down__unpack(NULL, in->len, in->data);
	if (!d)
		die("%s: %zu bytes are not a CaptureDown", what, in->len);
	return d;
}

/*
 * One agent stream over @ch: hello, welcome, then @n segments with at most
 * @window un-acked. Returns the seconds from the first send to the last ack.
 */
static double stream_all(struct cdp_rpc_channel *ch, const struct seg *segs, unsigned n,
			 unsigned window)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__CaptureHello h = CDP__V1__CAPTURE_HELLO__INIT;
	Cdp__V1__Volume v = CDP__V1__VOLUME__INIT, *vp = &v;
	struct cdp_buf in = CDP_BUF_INIT, msg = CDP_BUF_INIT;
	struct cdp_err err = CDP_ERR_INIT;
	struct sender s = { 0 };
	Cdp__V1__CaptureDown *d;
	unsigned acked = 0;
	pthread_t t;
	int64_t t0, t1;

	s.st = cdp_rpc_stream_open(ch, "/cdp.v1.Capture/Stream", CDP_RPC_NO_DEADLINE, &err);
	if (!s.st)
		die("open Capture.Stream: %s", err.msg);
	v.name = (char *)VOL_NAME;
	v.size = INGEST_VOL;
	h.plan = (char *)PLAN_NAME;
	h.agent_id = (char *)AGENT;
	h.epoch = 1;
	h.n_volumes = 1;
	h.volumes = &vp;
	h.mode = CDP__V1__CAPTURE_MODE__CAPTURE_MODE_CONTINUOUS;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_HELLO;
	up.hello = &h;
	cdp_buf_reserve(&msg, protobuf_c_message_get_packed_size(&up.base) + 1);
	msg.len = protobuf_c_message_pack(&up.base, msg.data);
	if (cdp_rpc_stream_send(s.st, msg.data, msg.len, RPC_WAIT, &err))
		die("hello: %s", err.msg);
	d = recv_down(s.st, &in, "welcome");
	if (d->msg_case != CDP__V1__CAPTURE_DOWN__MSG_WELCOME || d->welcome->plan_id != PLAN_ID ||
	    d->welcome->durable_seq != 0)
		die("welcome: message %d, plan %" PRIu64 ", durable seq %" PRIu64 "; expected a "
		    "welcome of plan %d at seq 0", (int)d->msg_case,
		    d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_WELCOME ? d->welcome->plan_id : 0,
		    d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_WELCOME ? d->welcome->durable_seq : 0,
		    PLAN_ID);
	cdp__v1__capture_down__free_unpacked(d, NULL);

	s.segs = segs;
	s.n = n;
	s.window = window;
	pthread_mutex_init(&s.mu, NULL);
	pthread_cond_init(&s.cond, NULL);
	t0 = now_ns();
	if (cdp_thread_start(&t, "send", send_main, &s))
		die("cannot start the sender thread");
	/* This thread reads acks: each covers every segment up to its durable seq. */
	while (acked < n) {
		d = recv_down(s.st, &in, "ack");
		if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_ACK) {
			unsigned k = acked;

			while (k < n && segs[k].last_seq <= d->ack->durable_seq)
				k++;
			if (k != acked) {
				pthread_mutex_lock(&s.mu);
				s.acked = acked = k;
				pthread_cond_signal(&s.cond);
				pthread_mutex_unlock(&s.mu);
			}
		}
		cdp__v1__capture_down__free_unpacked(d, NULL);
	}
	t1 = now_ns();
	pthread_join(t, NULL);
	if (s.rc)
		die("send: %s", s.msg);
	if (cdp_rpc_stream_close_send(s.st, RPC_WAIT, &err))
		die("close: %s", err.msg);
	for (;;) {
		int rc = cdp_rpc_stream_recv(s.st, &in, RPC_WAIT, &err);

		if (rc < 0)
			die("recv after close: %s", err.msg);
		if (!rc)
			break;
	}
	if (cdp_rpc_stream_status(s.st, RPC_WAIT, NULL, &err))
		die("stream status: %s", err.msg);
	cdp_rpc_stream_free(s.st);
	pthread_mutex_destroy(&s.mu);
	pthread_cond_destroy(&s.cond);
	cdp_buf_release(&in);
	cdp_buf_release(&msg);
	return (double)(t1 - t0) / 1e9;
}

/* ---- results ------------------------------------------------------------- */

enum { M_TCP, M_UNIX, M_TLS, M_COUNT };

struct metric {
	const char *name;
	double v[MAX_RUNS], pv[MAX_RUNS], cpu[MAX_RUNS];
	unsigned n;
};

static const char PEER[] = "journal store alone";

static struct metric g_m[M_COUNT] = {
	[M_TCP] = { .name = "ingest_grpc_tcp_plaintext" },
	[M_UNIX] = { .name = "ingest_grpc_unix_plaintext" },
	[M_TLS] = { .name = "ingest_grpc_tcp_mtls" },
};

static double ratio_median(const struct metric *x, double *lo, double *hi)
{
	double r[MAX_RUNS];

	for (unsigned i = 0; i < x->n; i++)
		r[i] = x->pv[i] > 0 ? x->v[i] / x->pv[i] : 0;
	minmax(r, x->n, lo, hi);
	return median(r, x->n);
}

static void json_metric(const struct metric *x)
{
	double lo, hi;

	printf("\"bench\":\"ingest\",\"metric\":\"%s\",\"value\":%.1f,\"unit\":\"MB/s\","
	       "\"peer\":\"%s\",\"peer_value\":%.1f,\"ratio\":%.3f", x->name, median(x->v, x->n),
	       PEER, median(x->pv, x->n), ratio_median(x, &lo, &hi));
}

static void report(void)
{
	int head = M_TCP;

	note("\n%-30s %10s %10s %-6s %7s %-13s %s\n", "metric", "value", "store", "unit", "ratio",
	     "ratio min-max", "journald CPU s/GB");
	for (int m = 0; m < M_COUNT; m++) {
		const struct metric *x = &g_m[m];
		double lo, hi, r;

		if (!x->n)
			continue;
		r = ratio_median(x, &lo, &hi);
		note("%-30s %10.1f %10.1f %-6s %7.3f %.3f-%.3f   %.2f\n", x->name,
		     median(x->v, x->n), median(x->pv, x->n), "MB/s", r, lo, hi,
		     median(x->cpu, x->n));
	}
	note("(median of %u runs; store = %s, same segments, same disk)\n", g_m[head].n ?
	     g_m[head].n : g_m[M_UNIX].n ? g_m[M_UNIX].n : g_m[M_TLS].n, PEER);
	while (head < M_COUNT - 1 && !g_m[head].n)
		head++;
	if (!g_m[head].n)
		return;	/* --only store: the per-run lines are the result */
	printf("{");
	json_metric(&g_m[head]);
	printf(",\"more\":[");
	for (int m = 0, k = 0; m < M_COUNT; m++) {
		if (!g_m[m].n || m == head)
			continue;
		printf("%s{", k++ ? "," : "");
		json_metric(&g_m[m]);
		printf("}");
	}
	printf("]}\n");
	fflush(stdout);
}

/* ---- the measurements ---------------------------------------------------- */

static unsigned spares_for(uint64_t bytes, uint64_t ext)
{
	/* As the journal bench: room for groups that do not fit a file's end. */
	return (unsigned)((bytes * 3 / 2 + ext - 1) / ext);
}

static double store_one(const struct opts *o, const struct seg *segs, unsigned n, uint64_t bytes,
			unsigned run)
{
	const struct seg *sp[1] = { segs };
	uint64_t plan = PLAN_ID, acked, ext = o->extent_mib * MiB;
	struct cdp_journal *j;
	char jdir[PATH_MAX + 32];
	double secs;

	snprintf(jdir, sizeof(jdir), "%s/store-%u", g_base, run);
	j = jopen_ready(jdir, ext, spares_for(bytes, ext), true);
	plan_create(j, plan, INGEST_VOL);
	secs = submit_all(j, &plan, sp, &n, 1, o->window, &acked);
	cdp_journal_close(j);
	rmtree(jdir);
	if (acked != bytes)
		die("store: acked %" PRIu64 " bytes, expected %" PRIu64, acked, bytes);
	return (double)bytes / secs / 1e6;
}

static double daemon_one(const struct opts *o, enum transport tr, const struct seg *segs,
			 unsigned n, uint64_t bytes, unsigned run, double *cpu_s_per_gb,
			 double *faults_per_mib)
{
	struct rusage ru0, ru1;
	long jd_faults;
	uint64_t ext = o->extent_mib * MiB;
	unsigned spares = spares_for(bytes, ext), have;
	char state[PATH_MAX + 32], sock[PATH_MAX + 32], target[PATH_MAX + 40];
	int64_t deadline;
	struct timespec poll = { 0, 5 * 1000000 };
	struct cdp_rpc_channel *ctl, *agent;
	double secs;
	int port;

	snprintf(state, sizeof(state), "%s/jd-%s-%u", g_base, tr_name[tr], run);
	snprintf(sock, sizeof(sock), "%s/jd.sock", g_base);
	if (spares > 64)
		die("%u spare extent files needed, journald allows 64: raise --extent-mib", spares);
	/* Spare files first, then a restart without a pool target (see the top). */
	jd_start(o, state, sock, spares, false);
	deadline = now_ns() + (int64_t)(30 + 5 * spares) * CDP_NS_PER_SEC;
	while ((have = count_spares(state)) < spares) {
		if (now_ns() > deadline)
			die("cdp-journald %s: %u of %u spare extent files ready after the deadline",
			    state, have, spares);
		nanosleep(&poll, NULL);
	}
	jd_stop();
	port = jd_start(o, state, sock, 0, tr == TR_TLS);

	if (tr == TR_UNIX)
		snprintf(target, sizeof(target), "unix:%s", sock);
	else
		snprintf(target, sizeof(target), "127.0.0.1:%d", port);
	ctl = channel(target, tr == TR_TLS ? "admin" : NULL);
	create_plan(ctl);
	cdp_rpc_channel_free(ctl);
	agent = channel(target, tr == TR_TLS ? AGENT : NULL);
	getrusage(RUSAGE_SELF, &ru0);
	secs = stream_all(agent, segs, n, o->window);
	getrusage(RUSAGE_SELF, &ru1);
	cdp_rpc_channel_free(agent);
	for (int64_t until = now_ns() + 10 * (int64_t)1000000000;
	     atomic_load(&bodies_out) && now_ns() < until;)
		sched_yield();
	if (atomic_load(&bodies_out))
		die("gRPC still holds %u segment bodies", atomic_load(&bodies_out));
	*cpu_s_per_gb = jd_stop_faults(&jd_faults) / ((double)bytes / 1e9);
	faults_per_mib[0] = (double)jd_faults / ((double)bytes / MiB);
	faults_per_mib[1] = (double)(ru1.ru_minflt - ru0.ru_minflt) / ((double)bytes / MiB);
	rmtree(state);
	return (double)bytes / secs / 1e6;
}

/* ---- main ---------------------------------------------------------------- */

static bool want(const struct opts *o, const char *name)
{
	return bench_selected(o->only, name);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: ingest [--journald PATH] [--mkcerts PATH] [--dir DIR] [--runs N]\n"
		   "              [--mib N] [--window N] [--extent-mib N]\n"
		   "              [--only store,tcp,unix,tls] [--keep] [--smoke]\n");
}

static uint64_t num_arg(const char *name, const char *s, uint64_t min, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || !*s || v < min || v > max)
		die("--%s: '%s' is not a number in %" PRIu64 "..%" PRIu64, name, s, min, max);
	return v;
}

/* BUILD/journald/cdp-journald for a bench at BUILD/tools/bench/ingest. */
static const char *default_journald(void)
{
	static char path[PATH_MAX + 32];
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return "cdp-journald";
	self[n] = '\0';
	snprintf(path, sizeof(path), "%s/../../journald/cdp-journald", dirname(self));
	return path;
}

/* Certificates into @base/pki with tools/mkcerts; false (and a note) if that fails. */
static bool make_certs(const struct opts *o)
{
	char cmd[3 * PATH_MAX];
	int rc;

	snprintf(g_pki, sizeof(g_pki), "%s/pki", g_base);
	snprintf(cmd, sizeof(cmd), "'%s' '%s' %s admin >/dev/null 2>&1", o->mkcerts, g_pki, AGENT);
	rc = system(cmd);
	if (rc) {
		note("note: %s failed (status 0x%x): no mTLS measurement\n", o->mkcerts, rc);
		g_pki[0] = '\0';
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "journald", required_argument, NULL, 'j' },
		{ "mkcerts", required_argument, NULL, 'c' },
		{ "dir", required_argument, NULL, 'd' },
		{ "runs", required_argument, NULL, 'r' },
		{ "mib", required_argument, NULL, 'm' },
		{ "window", required_argument, NULL, 'w' },
		{ "extent-mib", required_argument, NULL, 'e' },
		{ "only", required_argument, NULL, 'o' },
		{ "keep", no_argument, NULL, 'k' },
		{ "smoke", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct opts o = { .dir = "/var/tmp", .mkcerts = CDP_SOURCE_DIR "/tools/mkcerts" };
	struct src src = { .rng = 0x1234567890ABCDEFull };	/* the journal bench's stream */
	struct arena a;
	struct seg *segs;
	struct gen g;
	uint64_t bytes = 0;
	unsigned nsegs;
	bool tls;
	int c;

	bench_prog = "ingest bench";
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'j': o.journald = optarg; break;
		case 'c': o.mkcerts = optarg; break;
		case 'd': o.dir = optarg; break;
		case 'r': o.runs = (unsigned)num_arg("runs", optarg, 1, MAX_RUNS); break;
		case 'm': o.mib = num_arg("mib", optarg, 8, 1 << 16); break;
		case 'w': o.window = (unsigned)num_arg("window", optarg, 1, 1000); break;
		case 'e': o.extent_mib = num_arg("extent-mib", optarg, 8, 1 << 14); break;
		case 'o': o.only = optarg; break;
		case 'k': o.keep = true; break;
		case 's': o.smoke = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	o.runs = o.runs ? o.runs : o.smoke ? 1 : 5;
	o.mib = o.mib ? o.mib : o.smoke ? 16 : 512;
	o.extent_mib = o.extent_mib ? o.extent_mib : o.smoke ? 32 : 256;
	o.window = o.window ? o.window : 16;
	o.journald = o.journald ? o.journald : default_journald();
	if (access(o.journald, X_OK))
		die("%s: %s (build it: ninja cdp-journald, or pass --journald PATH)", o.journald,
		    strerror(errno));
	/* Like the daemons (TOOLCHAIN.md): big buffers stay on the heap. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	signal(SIGPIPE, SIG_IGN);
	nsegs = (unsigned)CDP_MAX((uint64_t)4, o.mib / 4);

	snprintf(g_base, sizeof(g_base), "%s/cdp-bench-ingest-XXXXXX", o.dir);
	if (!mkdtemp(g_base))
		die("mkdtemp %s: %s", g_base, strerror(errno));
	g_keep = o.keep;
	atexit(cleanup);
	cdp_rpc_init();
	tls = want(&o, "tls") && make_certs(&o);

	note("ingest bench: %s, %u run%s, %u segments (%" PRIu64 " MiB raw) per measurement, "
	     "window %u, extent files %" PRIu64 " MiB, %s\n", g_base, o.runs, o.runs > 1 ? "s" : "",
	     nsegs, (uint64_t)nsegs * 4, o.window, o.extent_mib, o.journald);
	arena_init(&a, (size_t)nsegs * (CDP_SEG_HDR_LEN + CDP_SEG_MAX_RAW) + 4096);
	segs = cdp_xcalloc(nsegs, sizeof(*segs));
	gen_init(&g, PLAN_ID, INGEST_VOL, 1, &src);
	for (unsigned i = 0; i < nsegs; i++) {
		gen_ingest_seg(&g, &a, &segs[i]);
		bytes += segs[i].len;
	}
	gen_release(&g);

	for (unsigned r = 1; r <= o.runs; r++) {
		double store = 0, v, cpu, flt[2];

		if (want(&o, "store") || !o.only) {
			store = store_one(&o, segs, nsegs, bytes, r);
			note("run %u: journal store alone       %8.1f MB/s\n", r, store);
		}
		for (int tr = 0; tr < TR_COUNT; tr++) {
			if (!want(&o, tr_name[tr]) || (tr == TR_TLS && !tls))
				continue;
			if (!store) {
				store = store_one(&o, segs, nsegs, bytes, r);
				note("run %u: journal store alone       %8.1f MB/s\n", r, store);
			}
			v = daemon_one(&o, (enum transport)tr, segs, nsegs, bytes, r, &cpu, flt);
			g_m[tr].v[g_m[tr].n] = v;
			g_m[tr].pv[g_m[tr].n] = store;
			g_m[tr].cpu[g_m[tr].n] = cpu;
			g_m[tr].n++;
			note("run %u: cdp-journald over %-4s %s %8.1f MB/s, ratio %.3f (journald "
			     "%.2f CPU s/GB; page faults per MiB: journald %.0f, client %.0f)\n", r,
			     tr_name[tr], tr == TR_TLS ? "mTLS " : "plain", v, v / store, cpu,
			     flt[0], flt[1]);
		}
	}
	report();
	cdp_rpc_shutdown();
	free(segs);
	free(a.base);
	return 0;
}
