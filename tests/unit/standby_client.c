/*
 * tests/unit/standby_client - a test standby for cdp-journald's Standby.Stream:
 * applies what it receives to plain image files, durably, and acks.
 *
 *	standby_client TARGET PLAN STANDBY_ID DIR UNTIL_SEQ
 *
 * DIR holds vol0.img and vol1.img (JT_VOL bytes each, as the test writer's
 * plans have) and "applied" (the applied seq and its chain digest, replaced
 * atomically after the images are flushed). The hello names that position;
 * the client applies seeding (base image blocks) and segments — each one
 * decoded and checked against the chain and its order — flushes, records the
 * position, acks, and exits 0 once UNTIL_SEQ is applied ("applied SEQ").
 */
#include "tests/unit/jtest.h"

#include <fcntl.h>
#include <inttypes.h>
#include <unistd.h>

#include "cdp/v1/standby.pb-c.h"
#include "proto/rpc.h"

#define T_WAIT (30 * CDP_NS_PER_SEC)

static int fds[JT_NVOL];
static uint64_t applied;
static uint8_t digest[CDP_DIGEST_LEN];
static char dir[4096];

static void die(const char *what, const struct cdp_err *err)
{
	fprintf(stderr, "standby_client: %s: %s\n", what, err ? err->msg : "");
	exit(1);
}

static void load_state(void)
{
	char path[4200], hex[65] = "";
	unsigned long long seq = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/applied", dir);
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%llu %64s", &seq, hex) != 2)
			die("state file unreadable", NULL);
		fclose(f);
		for (int i = 0; i < CDP_DIGEST_LEN; i++) {
			unsigned b;

			sscanf(hex + 2 * i, "%2x", &b);
			digest[i] = (uint8_t)b;
		}
	}
	applied = seq;
	for (int v = 0; v < JT_NVOL; v++) {
		snprintf(path, sizeof(path), "%s/vol%d.img", dir, v);
		fds[v] = open(path, O_RDWR | O_CREAT, 0640);
		if (fds[v] < 0 || ftruncate(fds[v], JT_VOL))
			die("open image", NULL);
	}
}

static void save_state(void)
{
	char path[4200], tmp[4300];
	FILE *f;

	for (int v = 0; v < JT_NVOL; v++)
		if (fdatasync(fds[v]))
			die("fdatasync image", NULL);
	snprintf(path, sizeof(path), "%s/applied", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		die("write state", NULL);
	fprintf(f, "%llu ", (unsigned long long)applied);
	for (int i = 0; i < CDP_DIGEST_LEN; i++)
		fprintf(f, "%02x", digest[i]);
	fprintf(f, "\n");
	if (fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, path))
		die("write state", NULL);
}

static void zero(uint32_t v, uint64_t off, uint64_t len)
{
	static const uint8_t z[65536];

	for (uint64_t o = 0; o < len;) {
		size_t n = (size_t)CDP_MIN(len - o, (uint64_t)sizeof(z));

		if (cdp_pwrite_all(fds[v], z, n, off + o))
			die("zero", NULL);
		o += n;
	}
}

static void ack(struct cdp_rpc_stream *st, uint64_t seq)
{
	Cdp__V1__StandbyUp up = CDP__V1__STANDBY_UP__INIT;
	Cdp__V1__StandbyAck a = CDP__V1__STANDBY_ACK__INIT;
	struct cdp_err err = CDP_ERR_INIT;
	uint8_t buf[32];
	size_t len;

	a.applied_seq = seq;
	up.msg_case = CDP__V1__STANDBY_UP__MSG_ACK;
	up.ack = &a;
	len = protobuf_c_message_pack(&up.base, buf);
	if (cdp_rpc_stream_send(st, buf, len, T_WAIT, &err))
		die("ack", &err);
}

int main(int argc, char **argv)
{
	static const uint64_t sizes[JT_NVOL] = { JT_VOL, JT_VOL };
	struct cdp_rpc_channel_opts co = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_buf in = CDP_BUF_INIT;
	Cdp__V1__StandbyUp up = CDP__V1__STANDBY_UP__INIT;
	Cdp__V1__StandbyHello h = CDP__V1__STANDBY_HELLO__INIT;
	struct cdp_rpc_channel *ch;
	struct cdp_rpc_stream *st;
	uint64_t until;
	uint8_t buf[512];
	size_t len;

	if (argc != 6)
		return 2;
	co.target = argv[1];
	snprintf(dir, sizeof(dir), "%s", argv[4]);
	until = strtoull(argv[5], NULL, 10);
	load_state();
	ch = cdp_rpc_channel_new(&co, &err);
	if (!ch)
		die("channel", &err);
	st = cdp_rpc_stream_open(ch, "/cdp.v1.Standby/Stream", CDP_RPC_NO_DEADLINE, &err);
	if (!st)
		die("open", &err);
	h.plan = argv[2];
	h.standby_id = argv[3];
	h.applied_seq = applied;
	h.applied_digest.data = digest;
	h.applied_digest.len = CDP_DIGEST_LEN;
	h.window = 8;
	up.msg_case = CDP__V1__STANDBY_UP__MSG_HELLO;
	up.hello = &h;
	len = protobuf_c_message_pack(&up.base, buf);
	if (cdp_rpc_stream_send(st, buf, len, T_WAIT, &err))
		die("hello", &err);

	while (applied < until) {
		Cdp__V1__StandbyDown *d;
		int rc = cdp_rpc_stream_recv(st, &in, T_WAIT, &err);

		if (rc <= 0) {
			cdp_rpc_stream_status(st, T_WAIT, NULL, &err);
			die("stream ended", &err);
		}
		d = cdp__v1__standby_down__unpack(NULL, in.len, in.data);
		if (!d)
			die("not a StandbyDown", NULL);
		switch (d->msg_case) {
		case CDP__V1__STANDBY_DOWN__MSG_SEED_BEGIN:
			if (d->seed_begin->horizon_digest.len != CDP_DIGEST_LEN)
				die("seed: digest length", NULL);
			for (int v = 0; v < JT_NVOL; v++)
				zero((uint32_t)v, 0, JT_VOL);
			memcpy(digest, d->seed_begin->horizon_digest.data, CDP_DIGEST_LEN);
			break;
		case CDP__V1__STANDBY_DOWN__MSG_SEED_BLOCK: {
			const Cdp__V1__SeedBlock *b = d->seed_block;

			if (b->volume >= JT_NVOL || b->offset + b->length > JT_VOL)
				die("seed block out of range", NULL);
			if (b->zero)
				zero(b->volume, b->offset, b->length);
			else if (b->data.len != b->length ||
				 cdp_pwrite_all(fds[b->volume], b->data.data, b->data.len, b->offset))
				die("seed block", NULL);
			break;
		}
		case CDP__V1__STANDBY_DOWN__MSG_SEED_END:
			applied = d->seed_end->horizon_seq;
			save_state();
			ack(st, applied);
			printf("seeded %" PRIu64 "\n", applied);
			break;
		case CDP__V1__STANDBY_DOWN__MSG_SEGMENT: {
			struct cdp_seg_expect ex = { 0 };
			struct cdp_segment *seg;

			ex.prev_digest = digest;
			ex.check_first_seq = true;
			ex.first_seq = applied + 1;	/* in order, nothing skipped */
			ex.min_time = INT64_MIN;
			ex.volume_sizes = sizes;
			ex.nvolumes = JT_NVOL;
			if (cdp_seg_decode(d->segment->data.data, d->segment->data.len, &ex, &seg,
					   &err))
				die("segment", &err);
			for (uint32_t i = 0; i < seg->h.nrecords; i++) {
				const struct cdp_record *r = &seg->recs[i];

				if (r->kind == CDP_REC_WRITE &&
				    cdp_pwrite_all(fds[r->volume], r->payload, r->length, r->offset))
					die("apply", NULL);
				if (r->kind == CDP_REC_ZERO || r->kind == CDP_REC_TRIM)
					zero(r->volume, r->offset, r->length);
			}
			if (seg->h.nrecords)
				applied = seg->h.last_seq;
			memcpy(digest, seg->h.digest, CDP_DIGEST_LEN);
			cdp_segment_free(seg);
			save_state();
			ack(st, applied);
			break;
		}
		default:
			die("unexpected message", NULL);
		}
		cdp__v1__standby_down__free_unpacked(d, NULL);
	}
	printf("applied %" PRIu64 "\n", applied);
	cdp_rpc_stream_cancel(st);
	cdp_rpc_stream_free(st);
	cdp_rpc_channel_free(ch);
	for (int v = 0; v < JT_NVOL; v++)
		close(fds[v]);
	cdp_buf_release(&in);
	return 0;
}
