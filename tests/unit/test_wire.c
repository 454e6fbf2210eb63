/*
 * tests/unit/test_wire - proto/wire's CaptureUp reader: the segment bytes come
 * back in place for the messages an agent sends, and every unusual encoding
 * gives exactly protobuf-c's answer. Messages are built with protobuf-c's own
 * packer and then edited byte by byte where a case needs a hand-made encoding.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/wire.h"

struct msg {
	uint8_t *p;
	size_t len;
};

static struct msg pack_segment(const uint8_t *data, size_t len, bool ckpt)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT;
	Cdp__V1__Segment sg = CDP__V1__SEGMENT__INIT;
	Cdp__V1__SyncCheckpoint c = CDP__V1__SYNC_CHECKPOINT__INIT;
	struct msg m;

	sg.data.data = (uint8_t *)data;
	sg.data.len = len;
	if (ckpt) {
		c.sync_id = 7;
		c.volume = 1;
		c.offset = 1u << 30;
		sg.checkpoint = &c;
		sg.has_checkpoint = true;
	}
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_SEGMENT;
	up.segment = &sg;
	m.len = cdp__v1__capture_up__get_packed_size(&up);
	m.p = malloc(m.len + 64);	/* room for the cases that add bytes */
	assert_non_null(m.p);
	cdp__v1__capture_up__pack(&up, m.p);
	return m;
}

static bool inside(const struct msg *m, const uint8_t *p)
{
	return p >= m->p && p < m->p + m->len;
}

static void test_segment_bytes_stay_in_place(void **state)
{
	uint8_t data[3000];
	struct msg m;
	Cdp__V1__CaptureUp *up;
	const uint8_t *d;
	size_t n;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 13);
	for (int ckpt = 0; ckpt < 2; ckpt++) {
		m = pack_segment(data, sizeof(data), ckpt);
		assert_int_equal(cdp_capture_up_unpack(m.p, m.len, &up, &d, &n), 0);
		assert_int_equal(up->msg_case, CDP__V1__CAPTURE_UP__MSG_SEGMENT);
		assert_true(inside(&m, d));		/* no copy */
		assert_int_equal(n, sizeof(data));
		assert_memory_equal(d, data, sizeof(data));
		assert_int_equal(up->segment->data.len, 0);
		assert_int_equal(up->segment->has_checkpoint, ckpt);
		if (ckpt) {
			assert_non_null(up->segment->checkpoint);
			assert_int_equal(up->segment->checkpoint->sync_id, 7);
			assert_int_equal(up->segment->checkpoint->volume, 1);
			assert_int_equal(up->segment->checkpoint->offset, 1u << 30);
		} else {
			assert_null(up->segment->checkpoint);
		}
		cdp__v1__capture_up__free_unpacked(up, NULL);
		free(m.p);
	}
}

static void test_hello_goes_to_protobuf_c(void **state)
{
	Cdp__V1__CaptureUp up = CDP__V1__CAPTURE_UP__INIT, *out;
	Cdp__V1__CaptureHello h = CDP__V1__CAPTURE_HELLO__INIT;
	uint8_t buf[256];
	const uint8_t *d;
	size_t len, n;

	h.plan = "db1";
	h.agent_id = "src";
	h.epoch = 3;
	up.msg_case = CDP__V1__CAPTURE_UP__MSG_HELLO;
	up.hello = &h;
	len = cdp__v1__capture_up__pack(&up, buf);
	assert_int_equal(cdp_capture_up_unpack(buf, len, &out, &d, &n), 0);
	assert_int_equal(out->msg_case, CDP__V1__CAPTURE_UP__MSG_HELLO);
	assert_string_equal(out->hello->plan, "db1");
	assert_int_equal(out->hello->epoch, 3);
	assert_null(d);
	assert_int_equal(n, 0);
	cdp__v1__capture_up__free_unpacked(out, NULL);
}

/* Segment.data twice: protobuf-c keeps the last; so must we (via protobuf-c). */
static void test_repeated_data_field_keeps_the_last(void **state)
{
	const uint8_t first[4] = { 1, 2, 3, 4 };
	struct msg m = pack_segment(first, sizeof(first), false);
	Cdp__V1__CaptureUp *up;
	const uint8_t *d;
	size_t n;

	/* 12 06 | 0a 04 01 02 03 04  ->  12 0a | 0a 04 01 02 03 04 | 0a 02 09 09 */
	assert_int_equal(m.len, 8);
	m.p[1] = 10;
	memcpy(m.p + 8, (const uint8_t[]){ 0x0a, 0x02, 0x09, 0x09 }, 4);
	m.len = 12;
	assert_int_equal(cdp_capture_up_unpack(m.p, m.len, &up, &d, &n), 0);
	assert_int_equal(n, 2);
	assert_memory_equal(d, ((const uint8_t[]){ 9, 9 }), 2);
	cdp__v1__capture_up__free_unpacked(up, NULL);
	free(m.p);
}

/* An unknown field next to the data stays protobuf-c's business; data stays in place. */
static void test_unknown_field_is_kept_out_of_the_way(void **state)
{
	const uint8_t data[5] = { 5, 4, 3, 2, 1 };
	struct msg m = pack_segment(data, sizeof(data), false);
	Cdp__V1__CaptureUp *up;
	const uint8_t *d;
	size_t n;

	/* 12 07 | 0a 05 ...  ->  12 0a | 48 96 01 (field 9, varint 150) | 0a 05 ... */
	memmove(m.p + 5, m.p + 2, 7);
	memcpy(m.p + 2, (const uint8_t[]){ 0x48, 0x96, 0x01 }, 3);
	m.p[1] = 10;
	m.len = 12;
	assert_int_equal(cdp_capture_up_unpack(m.p, m.len, &up, &d, &n), 0);
	assert_true(inside(&m, d));
	assert_int_equal(n, sizeof(data));
	assert_memory_equal(d, data, sizeof(data));
	cdp__v1__capture_up__free_unpacked(up, NULL);
	free(m.p);
}

static void test_malformed_messages_are_refused(void **state)
{
	const uint8_t data[16] = { 0 };
	struct msg m = pack_segment(data, sizeof(data), true);
	Cdp__V1__CaptureUp *up = (void *)1;
	const uint8_t *d = (void *)1;
	size_t n = 1;

	/* Every truncation of a valid message. */
	for (size_t cut = 1; cut < m.len; cut++) {
		assert_int_equal(cdp_capture_up_unpack(m.p, cut, &up, &d, &n), -EBADMSG);
		assert_null(up);
		assert_null(d);
		assert_int_equal(n, 0);
	}
	/* A data length running past the message. */
	m.p[3] = 100;
	assert_int_equal(cdp_capture_up_unpack(m.p, m.len, &up, &d, &n), -EBADMSG);
	/* Wire type 7 does not exist. */
	m.p[0] = 0x17;
	assert_int_equal(cdp_capture_up_unpack(m.p, m.len, &up, &d, &n), -EBADMSG);
	free(m.p);
}

/* The sender's head + data is a message both readers take, data in place. */
static void test_segment_head_frames_the_data(void **state)
{
	static uint8_t data[300000];
	Cdp__V1__Segment sg = CDP__V1__SEGMENT__INIT;
	Cdp__V1__SyncCheckpoint c = CDP__V1__SYNC_CHECKPOINT__INIT;
	size_t sizes[] = { 0, 1, 127, 128, 16383, 16384, sizeof(data) };
	uint8_t *m = malloc(CDP_CAPTURE_UP_HEAD_MAX + sizeof(data));

	assert_non_null(m);
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 31 + 7);
	c.sync_id = UINT64_MAX;
	c.kind = 2;
	c.volume = UINT32_MAX;
	c.offset = UINT64_MAX - 1;
	for (int ckpt = 0; ckpt < 2; ckpt++) {
		sg.checkpoint = ckpt ? &c : NULL;
		sg.has_checkpoint = ckpt;
		for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
			size_t h = cdp_capture_up_segment_head(&sg, sizes[k], m), n;
			Cdp__V1__CaptureUp *ref, *up;
			const uint8_t *d;

			assert_true(h <= CDP_CAPTURE_UP_HEAD_MAX);
			memcpy(m + h, data, sizes[k]);
			ref = cdp__v1__capture_up__unpack(NULL, h + sizes[k], m);
			assert_non_null(ref);
			assert_int_equal(ref->msg_case, CDP__V1__CAPTURE_UP__MSG_SEGMENT);
			assert_int_equal(ref->segment->data.len, sizes[k]);
			if (sizes[k])
				assert_memory_equal(ref->segment->data.data, data, sizes[k]);
			assert_int_equal(ref->segment->has_checkpoint, ckpt);
			if (ckpt)
				assert_int_equal(ref->segment->checkpoint->offset, UINT64_MAX - 1);
			assert_int_equal(cdp_capture_up_unpack(m, h + sizes[k], &up, &d, &n), 0);
			assert_int_equal(n, sizes[k]);
			assert_ptr_equal(d, m + h);
			assert_int_equal(up->segment->has_checkpoint, ckpt);
			cdp__v1__capture_up__free_unpacked(up, NULL);
			cdp__v1__capture_up__free_unpacked(ref, NULL);
		}
	}
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_segment_bytes_stay_in_place),
		cmocka_unit_test(test_hello_goes_to_protobuf_c),
		cmocka_unit_test(test_repeated_data_field_keeps_the_last),
		cmocka_unit_test(test_unknown_field_is_kept_out_of_the_way),
		cmocka_unit_test(test_malformed_messages_are_refused),
		cmocka_unit_test(test_segment_head_frames_the_data),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
