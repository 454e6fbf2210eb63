/*
 * common/log - one line per event on stderr, journald-friendly.
 *
 * Format: "<N>prog[thread]: message" where N is the syslog priority
 * (3 err, 4 warn, 6 info, 7 debug) that journald strips and records.
 * Debug lines are off unless enabled per module ("journal,segment" or "all").
 * The level is checked before formatting. Repeated warnings go through
 * CDP_LOG_RATELIMIT so a flapping link cannot flood the log.
 *
 * Threads: the logger is the only global mutable state in cdp; it is set up
 * once by main() before threads start, and each line is one write(2).
 */
#ifndef CDP_COMMON_LOG_H
#define CDP_COMMON_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum cdp_log_level {
	CDP_LOG_ERR = 3,
	CDP_LOG_WARN = 4,
	CDP_LOG_INFO = 6,
	CDP_LOG_DEBUG = 7,
};

/* Sets the program name shown on every line (borrowed; must outlive the logger). */
void cdp_log_init(const char *prog);

/* Lines above @level are dropped (debug lines also need their module enabled). */
void cdp_log_set_level(enum cdp_log_level level);

/* Enables debug for a comma-separated list of modules, or "all". Returns 0. */
int cdp_log_set_debug(const char *modules);

bool cdp_log_enabled(enum cdp_log_level level);
bool cdp_log_debug_enabled(const char *module);

void cdp_log(enum cdp_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define cdp_log_err(...) cdp_log(CDP_LOG_ERR, __VA_ARGS__)
#define cdp_log_warn(...) cdp_log(CDP_LOG_WARN, __VA_ARGS__)
#define cdp_log_info(...)                                \
	do {                                             \
		if (cdp_log_enabled(CDP_LOG_INFO))       \
			cdp_log(CDP_LOG_INFO, __VA_ARGS__); \
	} while (0)
#define cdp_log_debug(module, ...)                        \
	do {                                              \
		if (cdp_log_debug_enabled(module))        \
			cdp_log(CDP_LOG_DEBUG, __VA_ARGS__); \
	} while (0)

/*
 * Rate limit: at most @burst lines per @interval_ns of the caller's clock
 * reading @now_ns; returns true when this line may be printed. The state is
 * the caller's, so tests drive it with a fake clock.
 */
struct cdp_ratelimit {
	int64_t interval_ns;
	unsigned burst;
	int64_t window_start;
	unsigned printed;
	unsigned suppressed;
};
bool cdp_ratelimit_ok(struct cdp_ratelimit *rl, int64_t now_ns);

#endif
