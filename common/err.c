/*
 * common/err - see err.h. Formatting never allocates, so it is safe while
 * failing (out of memory, disk full).
 */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cdp_err_set(struct cdp_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

int cdp_err_prefix(struct cdp_err *err, const char *fmt, ...)
{
	char prefix[CDP_ERR_MSG_MAX];
	char old[CDP_ERR_MSG_MAX];
	va_list ap;

	if (!err)
		return 0;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, old);
	return err->code;
}

int cdp_err_sys(struct cdp_err *err, int code, const char *fmt, ...)
{
	char what[CDP_ERR_MSG_MAX];
	va_list ap;

	if (!err)
		return code;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	err->code = code;
	snprintf(err->msg, sizeof(err->msg), "%s: %s", what, strerror(-code));
	return code;
}

void cdp_err_clear(struct cdp_err *err)
{
	if (!err)
		return;
	err->code = 0;
	err->msg[0] = '\0';
}

const char *cdp_err_msg(const struct cdp_err *err)
{
	return err ? err->msg : "";
}
