/*
 * tests/fuzz/fuzz_proto - arbitrary bytes through protobuf-c unpacking and
 * cdp-journald's validation of every message type it accepts from the
 * network: CaptureUp (hello fields, and a segment fully decoded against
 * volume sizes), Plan (jd_plan_check), and the Control requests.
 * The first byte picks the message type; nothing may crash or leak.
 * CaptureUp is also read by proto/wire's zero-copy path, which must agree with
 * protobuf-c on every input: both refuse, or both give the same fields and
 * segment bytes (a disagreement aborts).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cdp/v1/capture.pb-c.h"
#include "cdp/v1/control.pb-c.h"
#include "cdp/v1/standby.pb-c.h"
#include "journald/journald.h"
#include "proto/wire.h"
#include "storage/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_checkpoint(const Cdp__V1__Segment *a, const Cdp__V1__Segment *b)
{
	if (a->has_checkpoint != b->has_checkpoint || !a->checkpoint != !b->checkpoint)
		__builtin_trap();
	if (a->checkpoint &&
	    (a->checkpoint->sync_id != b->checkpoint->sync_id ||
	     a->checkpoint->kind != b->checkpoint->kind ||
	     a->checkpoint->volume != b->checkpoint->volume ||
	     a->checkpoint->offset != b->checkpoint->offset))
		__builtin_trap();
}

/* proto/wire against protobuf-c on the same bytes. */
static void wire_agrees(const uint8_t *p, size_t n, const Cdp__V1__CaptureUp *ref)
{
	Cdp__V1__CaptureUp *up;
	const uint8_t *data;
	size_t len;
	int rc = cdp_capture_up_unpack(p, n, &up, &data, &len);

	if ((rc == 0) != (ref != NULL))
		__builtin_trap();
	if (rc)
		return;
	if (up->msg_case != ref->msg_case || !up->segment != !ref->segment)
		__builtin_trap();
	if (ref->msg_case == CDP__V1__CAPTURE_UP__MSG_SEGMENT && ref->segment) {
		if (len != ref->segment->data.len ||
		    (len && memcmp(data, ref->segment->data.data, len)))
			__builtin_trap();
		same_checkpoint(up->segment, ref->segment);
	} else if (data || len) {
		__builtin_trap();
	}
	cdp__v1__capture_up__free_unpacked(up, NULL);
}

static void capture_up(const uint8_t *p, size_t n)
{
	static const uint64_t sizes[2] = { 1u << 20, 1u << 20 };
	Cdp__V1__CaptureUp *up = cdp__v1__capture_up__unpack(NULL, n, p);

	wire_agrees(p, n, up);
	if (!up)
		return;
	if (up->msg_case == CDP__V1__CAPTURE_UP__MSG_SEGMENT && up->segment) {
		struct cdp_seg_expect ex = { 0 };
		struct cdp_segment *seg = NULL;

		ex.volume_sizes = sizes;
		ex.nvolumes = 2;
		ex.min_time = INT64_MIN;
		ex.borrow_raw = n & 1;	/* both ways of holding the body */
		if (cdp_seg_decode(up->segment->data.data, up->segment->data.len, &ex, &seg,
				   NULL) == 0)
			cdp_segment_free(seg);
	} else if (up->msg_case == CDP__V1__CAPTURE_UP__MSG_HELLO && up->hello) {
		/* What handle_hello() reads: strings and volumes must be usable. */
		size_t total = strlen(up->hello->plan) + strlen(up->hello->agent_id);

		for (size_t i = 0; i < up->hello->n_volumes; i++)
			total += strlen(up->hello->volumes[i]->name) + up->hello->volumes[i]->size;
		(void)total;
	}
	cdp__v1__capture_up__free_unpacked(up, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const ProtobufCMessageDescriptor *descs[] = {
		&cdp__v1__plan__descriptor,	    &cdp__v1__plan_ref__descriptor,
		&cdp__v1__points_request__descriptor, &cdp__v1__mark_request__descriptor,
		&cdp__v1__restore_request__descriptor, &cdp__v1__standby_up__descriptor,
		&cdp__v1__capture_down__descriptor,
	};
	ProtobufCMessage *m;
	unsigned which;

	if (!size)
		return 0;
	which = data[0] % (unsigned)(sizeof(descs) / sizeof(descs[0]) + 1);
	data++;
	size--;
	if (which == sizeof(descs) / sizeof(descs[0])) {
		capture_up(data, size);
		return 0;
	}
	m = protobuf_c_message_unpack(descs[which], NULL, size, data);
	if (!m)
		return 0;
	if (descs[which] == &cdp__v1__plan__descriptor)
		jd_plan_check((Cdp__V1__Plan *)m, NULL);
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
