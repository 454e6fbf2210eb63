/*
 * tests/fuzz/fuzz_config - config files and unit strings from arbitrary bytes.
 *
 * The input is loaded as a config file through a table with every type. Beyond
 * "no crash, no leak, no undefined behaviour", it checks properties:
 *  - a failure is -EINVAL with a message free of control characters (messages
 *    quote file content and go to the log);
 *  - a config that loads, dumped and loaded again, is equal (the dump may only
 *    fail by making a line too long);
 *  - the same bytes as one string through each unit parser: a value parsed is
 *    accepted by cdp_conf_set(), formats exactly, and parses back to itself;
 *    the log formatters take it without overrunning their buffer.
 * Seeds: tests/fuzz/corpus/fuzz_config/ (files and bare unit strings).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

struct fconf {
	bool debug;
	char *name;
	bool enabled;
	int64_t count;
	int mode;
	uint64_t size;
	uint64_t spill_max;
	char *dir;
	int64_t timeout;
	int64_t interval;
	uint64_t bandwidth;
	uint64_t cap;
	int read_cap;
	int64_t n;
};

static const char *const modes[] = { "fast", "safe", "off", NULL };

static const struct cdp_conf_option fopts[] = {
	{ "", "debug", CDP_CONF_BOOL_AT(struct fconf, debug), .def = "no", .help = "h" },
	{ "main", "name", CDP_CONF_STRING_AT(struct fconf, name), .def = "cdp", .help = "h" },
	{ "main", "enabled", CDP_CONF_BOOL_AT(struct fconf, enabled), .def = "yes", .help = "h" },
	{ "main", "count", CDP_CONF_INT_AT(struct fconf, count), .def = "3", .min = -1000,
	  .max = 1000, .help = "h" },
	{ "main", "mode", CDP_CONF_ENUM_AT(struct fconf, mode, modes), .def = "safe", .help = "h" },
	{ "cache", "size", CDP_CONF_SIZE_AT(struct fconf, size), .def = "256MiB", .help = "h" },
	{ "cache", "spill_max", CDP_CONF_SIZE_AT(struct fconf, spill_max), .def = "0",
	  .min = CDP_CONF_MIB, .max = CDP_CONF_TIB, .flags = CDP_CONF_F_ZERO_OFF, .help = "h" },
	{ "cache", "dir", CDP_CONF_STRING_AT(struct fconf, dir), .help = "h" },
	{ "link", "timeout", CDP_CONF_DURATION_AT(struct fconf, timeout), .def = "2min",
	  .help = "h" },
	{ "link", "interval", CDP_CONF_DURATION_AT(struct fconf, interval), .def = "1s",
	  .min = CDP_CONF_MSEC, .max = CDP_CONF_DAY, .flags = CDP_CONF_F_RESTART, .help = "h" },
	{ "link", "bandwidth", CDP_CONF_RATE_AT(struct fconf, bandwidth), .def = "300Mbit",
	  .help = "h" },
	{ "link", "cap", CDP_CONF_RATE_AT(struct fconf, cap), .def = "0", .min = CDP_CONF_KBIT,
	  .max = CDP_CONF_GBIT, .flags = CDP_CONF_F_ZERO_OFF, .help = "h" },
	{ "link", "read_cap", CDP_CONF_PERCENT_AT(struct fconf, read_cap), .def = "30%",
	  .help = "h" },
	{ "x", "n", CDP_CONF_INT_AT(struct fconf, n), .def = "0", .help = "h" },
};

static const struct cdp_conf_table ftab = CDP_CONF_TABLE("fuzz", fopts, struct fconf);

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_config: %s: %s\n", what, detail);
	abort();
}

static void check_err(int rc, const struct cdp_err *err)
{
	if (rc != -EINVAL)
		die("unexpected code", err->msg);
	if (!err->msg[0])
		die("empty message", "");
	for (const char *p = err->msg; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			die("control character in message", err->msg);
}

static void round_trip_dump(const struct fconf *c)
{
	struct fconf back = { 0 };
	const struct cdp_conf_option *diff;
	struct cdp_err err = CDP_ERR_INIT;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int rc;

	if (!f)
		abort();
	cdp_conf_dump(&ftab, c, f);
	fclose(f);
	rc = cdp_conf_load_buffer(&ftab, &back, "dump", text, len, &err);
	if (rc && !strstr(err.msg, "line too long"))
		die("dump does not load back", err.msg);
	if (!rc && !cdp_conf_equal(&ftab, c, &back, &diff))
		die("dump loads back different", diff->name);
	cdp_conf_release(&ftab, &back);
	free(text);
}

/* @s parsed fine as @key's type: set it, format it exactly, parse it back. */
static void round_trip_value(struct fconf *c, const char *key, const char *s)
{
	const struct cdp_conf_option *o = cdp_conf_find(&ftab, key);
	struct cdp_err err = CDP_ERR_INIT;
	struct fconf again = { 0 };
	char text[64];

	if (cdp_conf_set(&ftab, c, key, s, &err))
		die("parsed but not set", err.msg);
	cdp_conf_format_value(o, c, text, sizeof(text));
	cdp_conf_defaults(&ftab, &again);
	if (cdp_conf_set(&ftab, &again, key, text, &err))
		die("formatted value does not parse", text);
	if (memcmp((const char *)c + o->offset, (const char *)&again + o->offset, o->size))
		die("formatted value parses to another value", text);
	cdp_conf_release(&ftab, &again);
}

static void units(const char *s)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct fconf c = { 0 };
	char buf[CDP_FORMAT_MAX];
	uint64_t u;
	int64_t i;
	bool b;
	int pct, rc;

	cdp_conf_defaults(&ftab, &c);
	rc = cdp_conf_parse_size(s, &u, &err);
	if (rc)
		check_err(rc, &err);
	else {
		round_trip_value(&c, "cache.size", s);
		if (c.size != u)
			die("set differs from parse", s);
		if (strlen(cdp_format_bytes(u, buf, sizeof(buf))) >= sizeof(buf) - 1)
			die("format_bytes filled its buffer", buf);
	}
	rc = cdp_conf_parse_duration(s, &i, &err);
	if (rc)
		check_err(rc, &err);
	else {
		round_trip_value(&c, "link.timeout", s);
		if (c.timeout != i || i < 0)
			die("set differs from parse", s);
		if (strlen(cdp_format_duration(i, buf, sizeof(buf))) >= sizeof(buf) - 1)
			die("format_duration filled its buffer", buf);
	}
	rc = cdp_conf_parse_rate(s, &u, &err);
	if (rc)
		check_err(rc, &err);
	else {
		round_trip_value(&c, "link.bandwidth", s);
		if (strlen(cdp_format_rate(u, buf, sizeof(buf))) >= sizeof(buf) - 1)
			die("format_rate filled its buffer", buf);
	}
	rc = cdp_conf_parse_int(s, &i, &err);
	if (rc)
		check_err(rc, &err);
	else
		round_trip_value(&c, "x.n", s);
	rc = cdp_conf_parse_percent(s, &pct, &err);
	if (rc)
		check_err(rc, &err);
	else if (pct < 0 || pct > 100)
		die("percent out of range", s);
	else
		round_trip_value(&c, "link.read_cap", s);
	rc = cdp_conf_parse_bool(s, &b, &err);
	if (rc)
		check_err(rc, &err);
	rc = cdp_conf_set_arg(&ftab, &c, s, &err);	/* "key=value" with any key */
	if (rc)
		check_err(rc, &err);
	cdp_conf_release(&ftab, &c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct fconf c = { 0 };
	char *s;
	int rc;

	rc = cdp_conf_load_buffer(&ftab, &c, "fuzz.conf", (const char *)data, size, &err);
	if (rc)
		check_err(rc, &err);
	else
		round_trip_dump(&c);
	cdp_conf_release(&ftab, &c);

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	units(s);
	free(s);
	return 0;
}
