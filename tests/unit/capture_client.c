/*
 * tests/unit/capture_client - a test agent for cdp-journald's Capture.Stream,
 * built on proto/rpc: it speaks the real protocol with segments from the
 * journal tests' deterministic writer (tests/unit/jtest.h), so what it sent
 * can be regenerated and compared after a restore.
 *
 *	capture_client [TLS opts] TARGET PLAN AGENT MODE [N [OUTDIR]]
 *
 * MODE send: hello; resume after the welcome's durable seq (regenerating the
 *   writer up to it); send segments 1..N; wait for every ack; close; write
 *   the volumes as of segment N's point to OUTDIR/vol0.img, vol1.img.
 *   Prints "acked SEQ".
 * MODE resync: after the stored stream, one raw segment writing 4 KiB at
 *   volume 1 offset 8192; its bytes to OUTDIR/last.seg; prints "acked SEQ",
 *   then waits for a Resync command and prints "resync VOL:OFF:LEN" lines.
 * Bad-input modes (each prints "status CODE: message" and exits 0 when the
 * server ended the stream with an error, 3 when it did not): unknown-plan,
 * wrong-agent, bad-epoch, bad-volumes, no-hello, gap, corrupt, oversize,
 * garbage, past-end.
 *
 * TLS opts: --tls-ca F --tls-cert F --tls-key F.
 * --clock-offset MS: each segment says it was sent at now + MS (the agent's
 *   clock that far off; default 0). Notices are printed as "notice KIND TEXT".
 */
#include "tests/unit/jtest.h"

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>

#include "cdp/v1/capture.pb-c.h"
#include "proto/rpc.h"

#define T_WAIT (30 * CDP_NS_PER_SEC)

static struct cdp_rpc_stream *st;
static int64_t clock_offset_ns;
static struct cdp_buf in = CDP_BUF_INIT;

static void die(const char *what, const struct cdp_err *err)
{
	fprintf(stderr, "capture_client: %s: %s\n", what, err ? err->msg : "");
	exit(1);
}

static void send_up(const Cdp__V1__CaptureUp *up)
{
	struct cdp_err err = CDP_ERR_INIT;
	size_t len = protobuf_c_message_get_packed_size(&up->base);
	uint8_t *buf = cdp_xmalloc(len ? len : 1);

	protobuf_c_message_pack(&up->base, buf);
	if (cdp_rpc_stream_send(st, buf, len, T_WAIT, &err) && err.code != -ECANCELED)
		die("send", &err);
	free(buf);
}

static void send_raw(const void *p, size_t len)
{
	struct cdp_err err = CDP_ERR_INIT;

	cdp_rpc_stream_send(st, p, len, T_WAIT, &err);
}

static void hello(const char *plan, const char *agent, uint64_t epoch, bool bad_volumes)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__CaptureHello h = CDP__V1__CAPTURE_HELLO__INIT;
	Cdp__V1__Volume v[JT_NVOL], *vp[JT_NVOL];
	char names[JT_NVOL][8];

	for (int i = 0; i < JT_NVOL; i++) {
		cdp__v1__volume__init(&v[i]);
		snprintf(names[i], sizeof(names[i]), "vol%d", i);
		v[i].id = (uint32_t)i;
		v[i].name = names[i];
		v[i].size = JT_VOL + (bad_volumes && i == 1 ? CDP_SECTOR : 0);
		vp[i] = &v[i];
	}
	h.plan = (char *)plan;
	h.agent_id = (char *)agent;
	h.epoch = epoch;
	h.n_volumes = JT_NVOL;
	h.volumes = vp;
	h.mode = CDP__V1__CAPTURE_MODE__CAPTURE_MODE_CONTINUOUS;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_HELLO;
	up.hello = &h;
	send_up(&up);
}

static void send_segment(const struct cdp_buf *seg)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__Segment s = CDP__V1__SEGMENT__INIT;

	s.data.data = seg->data;
	s.data.len = seg->len;
	s.sent_ns = cdp_clock_wall_ns(cdp_clock_real()) + clock_offset_ns;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_SEGMENT;
	up.segment = &s;
	send_up(&up);
}

/* Next message down, or NULL at the end of the stream. */
static Cdp__V1__CaptureDown *recv_down(void)
{
	struct cdp_err err = CDP_ERR_INIT;
	Cdp__V1__CaptureDown *d;
	int rc = cdp_rpc_stream_recv(st, &in, T_WAIT, &err);

	if (rc == 0)
		return NULL;
	if (rc < 0)
		die("recv", &err);
	d = cdp__v1__capture_down__unpack(NULL, in.len, in.data);
	if (!d)
		die("recv: not a CaptureDown", NULL);
	return d;
}

/* The stream's end: prints the status; returns its code. */
static int finish_status(void)
{
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_rpc_code code = CDP_RPC_OK;

	while (1) {
		Cdp__V1__CaptureDown *d = recv_down();

		if (!d)
			break;
		cdp__v1__capture_down__free_unpacked(d, NULL);
	}
	cdp_rpc_stream_status(st, T_WAIT, &code, &err);
	printf("status %s: %s\n", cdp_rpc_code_name(code), err.msg);
	return (int)code;
}

static void write_images(struct jt_writer *w, const char *dir)
{
	for (int v = 0; v < JT_NVOL; v++) {
		char path[4096];
		FILE *f;

		snprintf(path, sizeof(path), "%s/vol%d.img", dir, v);
		f = fopen(path, "wb");
		if (!f || fwrite(w->model[v], 1, JT_VOL, f) != JT_VOL || fclose(f))
			die("write model image", NULL);
	}
}

/* The ack reader (send mode): every ack, in order, up to the last seq sent. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_last, g_acked, g_durable;
static bool g_have_last;
static volatile bool g_ended;

static void *read_acks(void *arg)
{
	uint64_t acked = g_durable;

	for (;;) {
		Cdp__V1__CaptureDown *d;
		bool done;

		pthread_mutex_lock(&g_mu);
		done = g_have_last && acked >= g_last;
		pthread_mutex_unlock(&g_mu);
		if (done)
			break;
		d = recv_down();
		if (!d) {
			g_ended = true;	/* the server ended the stream */
			break;
		}
		if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_ACK) {
			if (d->ack->durable_seq < acked)
				die("acks went backwards", NULL);
			acked = d->ack->durable_seq;
			printf("ack %" PRIu64 "\n", acked);	/* a crash test keeps the highest */
			fflush(stdout);
		} else if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_NOTICE) {
			printf("notice %d %s\n", (int)d->notice->kind, d->notice->text);
			fflush(stdout);
		}
		cdp__v1__capture_down__free_unpacked(d, NULL);
	}
	pthread_mutex_lock(&g_mu);
	g_acked = acked;
	pthread_mutex_unlock(&g_mu);
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "tls-ca", required_argument, NULL, 'a' },
		{ "tls-cert", required_argument, NULL, 'c' },
		{ "tls-key", required_argument, NULL, 'k' },
		{ "clock-offset", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	struct cdp_rpc_channel_opts co = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_rpc_channel *ch;
	struct jt_writer w;
	const char *plan, *agent, *mode;
	uint64_t n = 0, durable = 0, i = 0, last = 0, acked = 0;
	Cdp__V1__CaptureDown *d;
	pthread_t reader;
	int c;

	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (c) {
		case 'a': co.tls_ca = optarg; break;
		case 'c': co.tls_cert = optarg; break;
		case 'k': co.tls_key = optarg; break;
		case 'o': clock_offset_ns = strtoll(optarg, NULL, 10) * CDP_NS_PER_MS; break;
		default: return 2;
		}
	}
	if (argc - optind < 4)
		return 2;
	co.target = argv[optind];
	plan = argv[optind + 1];
	agent = argv[optind + 2];
	mode = argv[optind + 3];
	if (argc - optind > 4)
		n = strtoull(argv[optind + 4], NULL, 10);
	ch = cdp_rpc_channel_new(&co, &err);
	if (!ch)
		die("channel", &err);
	st = cdp_rpc_stream_open(ch, "/cdp.v1.Capture/Stream", CDP_RPC_NO_DEADLINE, &err);
	if (!st)
		die("open", &err);
	jt_init(&w, 0, 0);

	if (strcmp(mode, "send") && strcmp(mode, "resync")) {
		/* Bad input: the server must end the stream with an error. */
		int code;

		if (!strcmp(mode, "garbage")) {
			static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99 };

			send_raw(junk, sizeof(junk));
		} else if (!strcmp(mode, "no-hello")) {
			jt_gen(&w, 1, true);
			jt_seal(&w, true);
			send_segment(&w.seg);
		} else {
			hello(!strcmp(mode, "unknown-plan") ? "no-such-plan" : plan,
			      !strcmp(mode, "wrong-agent") ? "agent-other" : agent,
			      !strcmp(mode, "bad-epoch") ? 5 : 0, !strcmp(mode, "bad-volumes"));
			d = recv_down();
			if (d && d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_WELCOME) {
				durable = d->welcome->durable_seq;
				w.plan = d->welcome->plan_id;
				cdp_seg_enc_free(w.enc);
				w.enc = cdp_seg_enc_new(w.plan, 0, 1, cdp_digest_zero);
				i = 0;
				while (w.next_seq - 1 < durable) {
					jt_gen(&w, ++i, true);
					jt_seal(&w, true);
				}
				if (!strcmp(mode, "gap")) {
					jt_gen(&w, ++i, true);
					jt_seal(&w, true);	/* skipped: never sent */
					jt_gen(&w, ++i, true);
					jt_seal(&w, true);
				} else if (!strcmp(mode, "past-end")) {
					static uint8_t data[4096];
					struct cdp_record r = { 0 };

					/* A write just past volume 1's end: valid bytes, bad range. */
					r.seq = w.next_seq++;
					r.volume = 1;
					r.kind = CDP_REC_WRITE;
					r.offset = JT_VOL;
					r.length = sizeof(data);
					r.time_ns = w.t;
					r.payload = data;
					if (cdp_seg_enc_add(w.enc, &r, CDP_SEG_ENC_COMPUTE_CRC, &err))
						die("encode", &err);
					jt_seal(&w, true);
				} else {
					jt_gen(&w, ++i, true);
					jt_seal(&w, true);
				}
				if (!strcmp(mode, "corrupt"))
					w.seg.data[w.seg.len - 1] ^= 0x20;
				if (!strcmp(mode, "oversize")) {
					cdp_buf_reserve(&w.seg, 6u << 20);
					memset(w.seg.data + w.seg.len, 0, (6u << 20) - w.seg.len);
					w.seg.len = 6u << 20;
				}
				send_segment(&w.seg);
			}
			if (d)
				cdp__v1__capture_down__free_unpacked(d, NULL);
		}
		cdp_rpc_stream_close_send(st, T_WAIT, &err);
		code = finish_status();
		cdp_rpc_stream_free(st);
		cdp_rpc_channel_free(ch);
		jt_release(&w);
		cdp_buf_release(&in);
		return code == CDP_RPC_OK ? 3 : 0;
	}

	if (!strcmp(mode, "resync")) {
		/*
		 * One raw segment with a single write, acknowledged; its bytes go to
		 * OUTDIR/last.seg so the test can damage them on disk; then wait for
		 * the resync command the verifier's finding must bring.
		 */
		hello(plan, agent, 0, false);
		d = recv_down();
		if (!d || d->msg_case != CDP__V1__CAPTURE_DOWN__MSG_WELCOME)
			die("hello refused", NULL);
		durable = d->welcome->durable_seq;
		w.plan = d->welcome->plan_id;
		cdp__v1__capture_down__free_unpacked(d, NULL);
		cdp_seg_enc_free(w.enc);
		w.enc = cdp_seg_enc_new(w.plan, 0, 1, cdp_digest_zero);
		while (w.next_seq - 1 < durable) {
			jt_gen(&w, ++i, true);
			jt_seal(&w, true);
		}
		w.comp_level = 0;
		jt_write(&w, 1, 8192, 4096);
		last = jt_seal(&w, true);
		send_segment(&w.seg);
		if (argc - optind > 5) {
			char path[4096];
			FILE *f;

			snprintf(path, sizeof(path), "%s/last.seg", argv[optind + 5]);
			f = fopen(path, "wb");
			if (!f || fwrite(w.seg.data, 1, w.seg.len, f) != w.seg.len || fclose(f))
				die("write last.seg", NULL);
		}
		while ((d = recv_down())) {
			if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_ACK && d->ack->durable_seq >= last) {
				printf("acked %" PRIu64 "\n", d->ack->durable_seq);
				fflush(stdout);
			}
			if (d->msg_case == CDP__V1__CAPTURE_DOWN__MSG_COMMAND &&
			    d->command->cmd_case == CDP__V1__COMMAND__CMD_RESYNC) {
				for (size_t k = 0; k < d->command->resync->n_ranges; k++) {
					const Cdp__V1__Range *r = d->command->resync->ranges[k];

					printf("resync %u:%" PRIu64 ":%" PRIu64 "\n", r->volume, r->offset,
					       r->length);
				}
				fflush(stdout);
				cdp__v1__capture_down__free_unpacked(d, NULL);
				break;
			}
			cdp__v1__capture_down__free_unpacked(d, NULL);
		}
		cdp_rpc_stream_cancel(st);
		cdp_rpc_stream_free(st);
		cdp_rpc_channel_free(ch);
		jt_release(&w);
		cdp_buf_release(&in);
		return 0;
	}

	hello(plan, agent, 0, false);
	d = recv_down();
	if (!d || d->msg_case != CDP__V1__CAPTURE_DOWN__MSG_WELCOME) {
		finish_status();
		die("hello refused", NULL);
	}
	durable = d->welcome->durable_seq;
	w.plan = d->welcome->plan_id;
	cdp__v1__capture_down__free_unpacked(d, NULL);
	cdp_seg_enc_free(w.enc);
	w.enc = cdp_seg_enc_new(w.plan, 0, 1, cdp_digest_zero);
	/* Resend exactly what the journal lacks: regenerate up to its durable seq. */
	while (w.next_seq - 1 < durable) {
		jt_gen(&w, ++i, true);
		jt_seal(&w, true);
	}
	if (w.next_seq - 1 != durable)
		die("welcome: durable seq is not a segment boundary of this writer", NULL);
	/* Acks are read on a thread of their own while segments go out. */
	g_durable = durable;
	if (pthread_create(&reader, NULL, read_acks, NULL))
		die("pthread_create", NULL);
	while (i < n) {
		jt_gen(&w, ++i, true);
		last = jt_seal(&w, true);
		send_segment(&w.seg);
		if (g_ended)
			break;
	}
	pthread_mutex_lock(&g_mu);
	g_last = last ? last : durable;
	g_have_last = true;
	pthread_mutex_unlock(&g_mu);
	pthread_join(reader, NULL);
	acked = g_acked;
	if (acked < (last ? last : durable)) {
		finish_status();
		die("stream ended before every ack", NULL);
	}
	cdp_rpc_stream_close_send(st, T_WAIT, &err);
	if (finish_status() != CDP_RPC_OK)
		return 1;
	printf("acked %" PRIu64 "\n", acked);
	if (argc - optind > 5)
		write_images(&w, argv[optind + 5]);
	cdp_rpc_stream_free(st);
	cdp_rpc_channel_free(ch);
	jt_release(&w);
	cdp_buf_release(&in);
	return 0;
}
