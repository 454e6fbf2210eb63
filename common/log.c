/*
 * common/log - see log.h. Lines are assembled in a stack buffer and written
 * with one write(2) so lines from several threads never interleave.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static const char *log_prog = "cdp";
static enum cdp_log_level log_level = CDP_LOG_INFO;
static char log_debug[256];	/* ",mod1,mod2," or ",all," */

void cdp_log_init(const char *prog)
{
	log_prog = prog;
}

void cdp_log_set_level(enum cdp_log_level level)
{
	log_level = level;
}

int cdp_log_set_debug(const char *modules)
{
	snprintf(log_debug, sizeof(log_debug), ",%s,", modules ? modules : "");
	return 0;
}

bool cdp_log_enabled(enum cdp_log_level level)
{
	return level <= log_level;
}

bool cdp_log_debug_enabled(const char *module)
{
	char key[64];

	if (!log_debug[0])
		return false;
	if (strstr(log_debug, ",all,"))
		return true;
	snprintf(key, sizeof(key), ",%s,", module);
	return strstr(log_debug, key) != NULL;
}

void cdp_log(enum cdp_log_level level, const char *fmt, ...)
{
	char line[1024];
	char thread[17] = "";
	va_list ap;
	int n, m;

	if (level > log_level && level != CDP_LOG_DEBUG)
		return;
	prctl(PR_GET_NAME, thread, 0, 0, 0);
	n = snprintf(line, sizeof(line), "<%d>%s[%s]: ", (int)level, log_prog, thread);
	if (n < 0)
		return;
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n += m;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write: a short write of a log line is not worth a retry loop. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

bool cdp_ratelimit_ok(struct cdp_ratelimit *rl, int64_t now_ns)
{
	if (now_ns - rl->window_start >= rl->interval_ns || now_ns < rl->window_start) {
		rl->window_start = now_ns;
		rl->printed = 0;
		rl->suppressed = 0;
	}
	if (rl->printed < rl->burst) {
		rl->printed++;
		return true;
	}
	rl->suppressed++;
	return false;
}
