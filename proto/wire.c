/*
 * proto/wire - see wire.h. The fast path reads only what it must: the outer
 * CaptureUp must be one field 2 (the segment) covering the whole message, the
 * Segment's fields must have one-byte tags and the four wire types proto3
 * uses, and Segment.data (field 1) must occur exactly once. The message minus
 * that one field is then re-framed and unpacked by protobuf-c, so every other
 * field gets protobuf-c's checks and representation. Whatever does not fit
 * goes to protobuf-c whole.
 */
#include "proto/wire.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define TAG_SEGMENT 0x12	/* field 2, wire type 2 (CaptureUp.segment) */
#define TAG_DATA 0x0a		/* field 1, wire type 2 (Segment.data) */
#define LEN_MAX_BYTES 5		/* protobuf-c reads length prefixes of up to 5 bytes */
#define VARINT_MAX_BYTES 10

/* A length prefix as protobuf-c reads it; false when it would refuse it or it overruns. */
static bool read_len(const uint8_t *p, size_t len, size_t *pos, size_t *out)
{
	size_t val = 0;

	for (unsigned i = 0; i < LEN_MAX_BYTES && *pos + i < len; i++) {
		val |= (size_t)(p[*pos + i] & 0x7f) << (7 * i);
		if (!(p[*pos + i] & 0x80)) {
			*pos += i + 1;
			if (val > INT_MAX || val > len - *pos)
				return false;
			*out = val;
			return true;
		}
	}
	return false;
}

/* Skips one field's value of wire type @wt at *pos; false when unsure. */
static bool skip_value(const uint8_t *p, size_t len, size_t *pos, unsigned wt)
{
	size_t n;

	switch (wt) {
	case 0:
		for (unsigned i = 0; i < VARINT_MAX_BYTES && *pos + i < len; i++)
			if (!(p[*pos + i] & 0x80)) {
				*pos += i + 1;
				return true;
			}
		return false;
	case 1:
	case 5:
		n = wt == 1 ? 8 : 4;
		if (n > len - *pos)
			return false;
		*pos += n;
		return true;
	case 2:
		if (!read_len(p, len, pos, &n))
			return false;
		*pos += n;
		return true;
	default:		/* groups and invalid types: protobuf-c decides */
		return false;
	}
}

static size_t put_varint(uint8_t *out, size_t v)
{
	size_t n = 0;

	do {
		out[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			out[n] |= 0x80;
		n++;
	} while (v);
	return n;
}

/*
 * The fast path. Returns true with *@up set (or NULL when protobuf-c refused
 * the remainder) when it applied; false to fall back.
 */
static bool unpack_borrowed(const uint8_t *msg, size_t len, Cdp__V1__CaptureUp **up,
			    const uint8_t **data, size_t *data_len)
{
	size_t pos = 1, seg_len, seg_start, data_field = 0, data_end = 0, dlen = 0;
	unsigned ndata = 0;
	uint8_t *rest;
	size_t rest_len, hdr;

	if (len < 2 || msg[0] != TAG_SEGMENT || !read_len(msg, len, &pos, &seg_len) ||
	    pos + seg_len != len)
		return false;
	seg_start = pos;
	while (pos < len) {
		size_t field = pos;
		uint8_t tag = msg[pos++];

		if ((tag & 0x80) || !(tag & 0xf8))
			return false;	/* multi-byte tag or field 0 */
		if (tag == TAG_DATA) {
			if (!read_len(msg, len, &pos, &dlen))
				return false;
			ndata++;
			data_field = field;
			*data = msg + pos;
			pos += dlen;
			data_end = pos;
		} else if ((tag >> 3) == 1 || !skip_value(msg, len, &pos, tag & 7)) {
			return false;	/* data with another wire type, or unsure */
		}
	}
	if (ndata != 1)
		return false;

	/* CaptureUp { segment = Segment minus its data field } */
	rest_len = (len - seg_start) - (data_end - data_field);
	rest = malloc(1 + VARINT_MAX_BYTES + rest_len);
	if (!rest)
		abort();
	rest[0] = TAG_SEGMENT;
	hdr = 1 + put_varint(rest + 1, rest_len);
	memcpy(rest + hdr, msg + seg_start, data_field - seg_start);
	memcpy(rest + hdr + (data_field - seg_start), msg + data_end, len - data_end);
	*up = cdp__v1__capture_up__unpack(NULL, hdr + rest_len, rest);
	free(rest);
	*data_len = dlen;
	return true;
}

int cdp_capture_up_unpack(const uint8_t *msg, size_t len, Cdp__V1__CaptureUp **up,
			  const uint8_t **data, size_t *data_len)
{
	*up = NULL;
	*data = NULL;
	*data_len = 0;
	if (!unpack_borrowed(msg, len, up, data, data_len)) {
		*up = cdp__v1__capture_up__unpack(NULL, len, msg);
		if (*up && (*up)->msg_case == CDP__V1__CAPTURE_UP__MSG_SEGMENT &&
		    (*up)->segment) {
			*data = (*up)->segment->data.data;
			*data_len = (*up)->segment->data.len;
		}
	}
	if (!*up) {
		*data = NULL;
		*data_len = 0;
		return -EBADMSG;
	}
	return 0;
}

size_t cdp_capture_up_segment_head(const Cdp__V1__Segment *sg, size_t data_len,
				   uint8_t out[CDP_CAPTURE_UP_HEAD_MAX])
{
	uint8_t rest[CDP_CAPTURE_UP_HEAD_MAX];
	size_t rest_len = cdp__v1__segment__get_packed_size(sg);
	uint8_t dhdr[1 + VARINT_MAX_BYTES];
	size_t dhdr_len, n;

	/* A checkpoint is 4 varints and a flag: far below the bound. */
	if (sg->data.len || rest_len > CDP_CAPTURE_UP_HEAD_MAX - 2 * (1 + LEN_MAX_BYTES) - 1)
		abort();
	cdp__v1__segment__pack(sg, rest);
	dhdr[0] = TAG_DATA;
	dhdr_len = 1 + put_varint(dhdr + 1, data_len);
	out[0] = TAG_SEGMENT;
	n = 1 + put_varint(out + 1, rest_len + dhdr_len + data_len);
	memcpy(out + n, rest, rest_len);
	memcpy(out + n + rest_len, dhdr, dhdr_len);
	return n + rest_len + dhdr_len;
}
