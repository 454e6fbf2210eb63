/*
 * common/buf - see buf.h. Capacity doubles unless reserved exactly; shrinks only when asked.
 */
#include "common/buf.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void cdp_buf_reserve(struct cdp_buf *b, size_t extra)
{
	size_t need = b->len + extra, cap = b->cap ? b->cap : 64;

	if (need <= b->cap)
		return;
	while (cap < need)
		cap *= 2;
	b->data = cdp_xrealloc(b->data, cap);
	b->cap = cap;
}

void cdp_buf_reserve_exact(struct cdp_buf *b, size_t extra)
{
	size_t need = b->len + extra;

	if (need <= b->cap)
		return;
	b->data = cdp_xrealloc(b->data, need);
	b->cap = need;
}

void cdp_buf_shrink(struct cdp_buf *b)
{
	if (b->len == b->cap || !b->data)
		return;
	if (!b->len) {
		cdp_buf_release(b);
		return;
	}
	b->data = cdp_xrealloc(b->data, b->len);
	b->cap = b->len;
}

void cdp_buf_append(struct cdp_buf *b, const void *p, size_t n)
{
	if (!n)
		return;
	cdp_buf_reserve(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

uint8_t *cdp_buf_append_zero(struct cdp_buf *b, size_t n)
{
	uint8_t *p;

	cdp_buf_reserve(b, n);
	p = b->data + b->len;
	memset(p, 0, n);
	b->len += n;
	return p;
}

void cdp_buf_reset(struct cdp_buf *b)
{
	b->len = 0;
}

void cdp_buf_release(struct cdp_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void cdp_buf_move(struct cdp_buf *dst, struct cdp_buf *src)
{
	cdp_buf_release(dst);
	*dst = *src;
	src->data = NULL;
	src->len = src->cap = 0;
}
