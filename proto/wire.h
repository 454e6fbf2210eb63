/*
 * proto/wire - reading a CaptureUp without copying its segment bytes.
 *
 * protobuf-c's unpack copies every bytes field into memory it allocates. For
 * Capture.Stream that is the whole segment (up to ~4 MiB per message), copied
 * once more after gRPC already flattened it. cdp_capture_up_unpack() walks the
 * protobuf wire format just far enough to find Segment.data, hands protobuf-c
 * the small rest (checkpoint, flags) to unpack and check as usual, and returns
 * the data as a span inside the caller's buffer.
 *
 * Anything unusual (a hello, a field repeated, unknown fields, groups, an
 * encoding protobuf-c might read differently) takes protobuf-c's own unpack,
 * so the result is always what protobuf-c would have produced; tests/fuzz/
 * fuzz_proto checks exactly that on every input it generates.
 */
#ifndef CDP_PROTO_WIRE_H
#define CDP_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "cdp/v1/capture.pb-c.h"

/*
 * Unpacks the CaptureUp in @msg[0..len). On success returns 0 and *@up (free
 * with cdp__v1__capture_up__free_unpacked()); when it carries a segment,
 * *@data and *@data_len are Segment.data, either inside @msg (then
 * (*up)->segment->data is empty and @msg must outlive its use) or inside
 * *@up. Returns -EBADMSG when protobuf-c would refuse the message.
 */
int cdp_capture_up_unpack(const uint8_t *msg, size_t len, Cdp__V1__CaptureUp **up,
			  const uint8_t **data, size_t *data_len);

/* Room for any head cdp_capture_up_segment_head() writes. */
#define CDP_CAPTURE_UP_HEAD_MAX 96

/*
 * The sending side: writes into @out the bytes of a CaptureUp { segment } that
 * come before Segment.data's @data_len bytes, so that head + data is the whole
 * message (the data can then be sent from where it is, without packing a
 * copy). @sg gives the other Segment fields; its data must be empty. Returns
 * the head's length, at most CDP_CAPTURE_UP_HEAD_MAX.
 */
size_t cdp_capture_up_segment_head(const Cdp__V1__Segment *sg, size_t data_len,
				   uint8_t out[CDP_CAPTURE_UP_HEAD_MAX]);

#endif
