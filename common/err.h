/*
 * common/err - the error convention of every cdp module.
 *
 * A function that can fail returns int: >= 0 on success, a negative errno on
 * failure, and fills the caller's struct cdp_err (which may be NULL) with the
 * same code and a one-line message: lowercase, no full stop, expected vs found.
 * Callers add context with cdp_err_prefix(). Only the outermost layer logs.
 *
 * Codes: -EINVAL bad argument or config; -EBADMSG bytes fail a check or decode;
 * -EPROTO the peer broke the protocol; -EIO/-ENOSPC from the kernel;
 * -ETIMEDOUT deadline; -ECANCELED shutdown.
 *
 * Threads: a struct cdp_err belongs to one caller; no global state.
 */
#ifndef CDP_COMMON_ERR_H
#define CDP_COMMON_ERR_H

#include <errno.h>

#define CDP_ERR_MSG_MAX 256

struct cdp_err {
	int code;		/* 0 or a negative errno */
	char msg[CDP_ERR_MSG_MAX];
};

#define CDP_ERR_INIT { 0, { 0 } }

/* Sets @err (if not NULL) to @code and the formatted message; returns @code. */
int cdp_err_set(struct cdp_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepends "<formatted>: " to the message of @err (if not NULL); returns err->code. */
int cdp_err_prefix(struct cdp_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Sets @err from errno-style @code with "<formatted>: strerror(-code)"; returns @code. */
int cdp_err_sys(struct cdp_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Resets @err to success. */
void cdp_err_clear(struct cdp_err *err);

/* The message, or "" when @err is NULL. */
const char *cdp_err_msg(const struct cdp_err *err);

#endif
