/*
 * common/buf - a growable byte buffer (git's strbuf idea, for bytes).
 *
 *	struct cdp_buf b = CDP_BUF_INIT;
 *	cdp_buf_append(&b, p, n);
 *	...
 *	cdp_buf_release(&b);
 *
 * Owns: data. Growth aborts on out-of-memory like cdp_xmalloc(). Callers that
 * take sizes from outside check them against a limit before growing.
 * Threads: none; a buffer belongs to one thread at a time.
 */
#ifndef CDP_COMMON_BUF_H
#define CDP_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

struct cdp_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

#define CDP_BUF_INIT { NULL, 0, 0 }

/* Makes room for @extra more bytes past len. */
void cdp_buf_reserve(struct cdp_buf *b, size_t extra);
/* Same without doubling: capacity becomes exactly len + @extra when it grows. */
void cdp_buf_reserve_exact(struct cdp_buf *b, size_t extra);
/* Gives back the capacity past len (in place for glibc: no copy). */
void cdp_buf_shrink(struct cdp_buf *b);
void cdp_buf_append(struct cdp_buf *b, const void *p, size_t n);
/* Appends @n zero bytes and returns a pointer to them (valid until the next growth). */
uint8_t *cdp_buf_append_zero(struct cdp_buf *b, size_t n);
void cdp_buf_reset(struct cdp_buf *b);	/* len = 0, keeps the memory */
void cdp_buf_release(struct cdp_buf *b);	/* frees; back to CDP_BUF_INIT */
/* Moves the contents of @src into @dst (released first); @src becomes empty. */
void cdp_buf_move(struct cdp_buf *dst, struct cdp_buf *src);

#endif
