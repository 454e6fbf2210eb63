/*
 * Unit tests of common/config: the unit parsers, the table, loading files and
 * conf.d drop-ins, command-line overrides, the error messages (file, line, key),
 * dump and help output, and the log formatters.
 */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/config.h"
#include "common/util.h"

/* ---- a sample daemon config with every type ---- */

struct tconf {
	bool debug;
	char *name;
	bool enabled;
	int64_t count;
	int level;
	uint64_t cache_size;
	uint64_t spill_max;
	char *dir;
	int64_t timeout;
	int64_t interval;
	uint64_t bandwidth;
	int read_cap;
	int64_t raw_int;
	uint64_t raw_size;
	int extra;	/* not in the table: loads never touch it */
};

static const char *const levels[] = { "err", "warn", "info", "debug", NULL };

static const struct cdp_conf_option topts[] = {
	{ "", "debug", CDP_CONF_BOOL_AT(struct tconf, debug), .def = "no",
	  .help = "Log debug lines." },
	{ "main", "name", CDP_CONF_STRING_AT(struct tconf, name), .def = "cdp",
	  .help = "A name." },
	{ "main", "enabled", CDP_CONF_BOOL_AT(struct tconf, enabled), .def = "yes",
	  .help = "Whether it runs." },
	{ "main", "count", CDP_CONF_INT_AT(struct tconf, count), .def = "3", .min = -10,
	  .max = 100, .help = "How many." },
	{ "main", "level", CDP_CONF_ENUM_AT(struct tconf, level, levels), .def = "info",
	  .help = "Log level." },
	{ "cache", "size", CDP_CONF_SIZE_AT(struct tconf, cache_size), .def = "256MiB",
	  .min = 16 * CDP_CONF_MIB, .max = 64 * CDP_CONF_GIB,
	  .help = "Memory for segments the journal server has not acknowledged yet." },
	{ "cache", "spill_max", CDP_CONF_SIZE_AT(struct tconf, spill_max), .def = "0",
	  .min = 64 * CDP_CONF_MIB, .max = CDP_CONF_TIB, .flags = CDP_CONF_F_ZERO_OFF,
	  .help = "Spill file cap." },
	{ "cache", "dir", CDP_CONF_STRING_AT(struct tconf, dir),
	  .help = "Spill directory; empty: no spill." },
	{ "link", "timeout", CDP_CONF_DURATION_AT(struct tconf, timeout), .def = "2min",
	  .min = CDP_CONF_SEC, .max = CDP_CONF_DAY, .flags = CDP_CONF_F_RESTART,
	  .help = "How long the link may be down before incremental mode." },
	{ "link", "interval", CDP_CONF_DURATION_AT(struct tconf, interval), .def = "1s",
	  .min = 100 * CDP_CONF_MSEC, .max = CDP_CONF_HOUR, .help = "Point interval." },
	{ "link", "bandwidth", CDP_CONF_RATE_AT(struct tconf, bandwidth), .def = "300Mbit",
	  .min = CDP_CONF_MBIT, .max = 100 * CDP_CONF_GBIT, .flags = CDP_CONF_F_ZERO_OFF,
	  .help = "Network cap." },
	{ "link", "read_cap", CDP_CONF_PERCENT_AT(struct tconf, read_cap), .def = "30%",
	  .min = 1, .max = 100, .help = "Share of the measured disk bandwidth for syncs." },
	{ "link", "raw_int", CDP_CONF_INT_AT(struct tconf, raw_int), .def = "0",
	  .help = "Unbounded integer." },
	{ "link", "raw_size", CDP_CONF_SIZE_AT(struct tconf, raw_size), .def = "0",
	  .help = "Unbounded size." },
};

static const struct cdp_conf_table ttab = CDP_CONF_TABLE("cdp-test", topts, struct tconf);

/* ---- helpers ---- */

struct fixture {
	char dir[256];
	char path[512];		/* dir/agent.conf */
	char confd[512];	/* dir/agent.conf.d */
	struct tconf cfg;
	struct cdp_err err;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_non_null(cdp_test_mkdtemp(f->dir, sizeof(f->dir)));
	snprintf(f->path, sizeof(f->path), "%s/agent.conf", f->dir);
	snprintf(f->confd, sizeof(f->confd), "%s/agent.conf.d", f->dir);
	f->cfg.extra = 4242;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cdp_conf_release(&ttab, &f->cfg);
	cdp_test_rmrf(f->dir);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
	assert_int_equal(fclose(fp), 0);
}

static void write_dropin(struct fixture *f, const char *name, const char *text)
{
	char path[600];

	mkdir(f->confd, 0755);
	snprintf(path, sizeof(path), "%s/%s", f->confd, name);
	write_file(path, text);
}

/* Loads @text as the main file (no drop-ins) into f->cfg. */
static int load_text(struct fixture *f, const char *text)
{
	write_file(f->path, text);
	return cdp_conf_load(&ttab, &f->cfg, f->path, "", CDP_CONF_REQUIRED, &f->err);
}

/* Asserts -EINVAL and a message that contains "<main file>:<line>: <rest>". */
static void assert_file_err(struct fixture *f, int rc, int line, const char *rest)
{
	char needle[1024];

	snprintf(needle, sizeof(needle), "%s:%d: %s", f->path, line, rest);
	assert_err(&f->err, rc, -EINVAL, needle);
}

/* ---- the table ---- */

static void test_table_check_accepts_a_good_table(void **state)
{
	struct cdp_err err = CDP_ERR_INIT;

	assert_int_equal(cdp_conf_table_check(&ttab, &err), 0);
}

static void test_table_check_rejects_our_bugs(void **state)
{
	static const char *const none[] = { NULL };
	struct {
		struct cdp_conf_option o;
		const char *needle;
	} bad[] = {
		{ { "c", "x", CDP_CONF_SIZE_AT(struct tconf, cache_size), .def = "1KiB",
		    .min = 1024 * 1024, .max = 2048 * 1024, .help = "h" },
		  "c.x: default: '1KiB' is less than the minimum 1MiB" },
		{ { "c", "x", CDP_CONF_SIZE_AT(struct tconf, cache_size), .def = "1x",
		    .help = "h" },
		  "c.x: default: '1x' is not a size" },
		{ { "c", "Bad-Name", CDP_CONF_BOOL_AT(struct tconf, debug), .def = "no",
		    .help = "h" },
		  "is not [a-z0-9_]" },
		{ { "c", "x", CDP_CONF_ENUM_AT(struct tconf, level, none), .def = "a",
		    .help = "h" },
		  "no enum values" },
		{ { "c", "x", CDP_CONF_ENUM_AT(struct tconf, level, NULL), .def = "a",
		    .help = "h" },
		  "values[] missing" },
		{ { "c", "x", CDP_CONF_BOOL_AT(struct tconf, debug), .def = "no" }, "no help" },
		{ { "c", "x", CDP_CONF_STRING_AT(struct tconf, name), .def = "a`b", .help = "h" },
		  "a default with a backquote" },
		{ { "c", "x", CDP_CONF_INT_AT(struct tconf, count), .help = "h" }, "no default" },
		{ { "c", "x", .type = CDP_CONF_INT, .offset = 0, .size = 4, .def = "1",
		    .help = "h" },
		  "field of 4 bytes for type integer (want 8)" },
		{ { "c", "x", .type = CDP_CONF_INT, .offset = sizeof(struct tconf), .size = 8,
		    .def = "1", .help = "h" }, "outside the" },
		{ { "c", "x", CDP_CONF_BOOL_AT(struct tconf, debug), .def = "no", .min = 1,
		    .max = 2, .help = "h" }, "bounds on a bool" },
		{ { "c", "x", CDP_CONF_SIZE_AT(struct tconf, raw_size), .def = "0", .min = -1,
		    .max = 2, .help = "h" }, "bounds -1..2 not within" },
		{ { "c", "x", CDP_CONF_STRING_AT(struct tconf, name),
		    .flags = CDP_CONF_F_ZERO_OFF, .help = "h" }, "ZERO_OFF on a string" },
		{ { "c", "x", CDP_CONF_PERCENT_AT(struct tconf, read_cap), .def = "5", .min = 1,
		    .max = 101, .help = "h" }, "not within 0..100" },
		{ { "c", "x", CDP_CONF_ENUM_AT(struct tconf, level, levels), .def = "info",
		    .flags = 0x80, .help = "h" }, "unknown flags 0x80" },
		{ { "c", "x", .type = (enum cdp_conf_type)99, .size = 4, .help = "h" },
		  "unknown type 99" },
	};
	static const char *const twice[] = { "a", "b", "a", NULL };
	struct cdp_conf_option rep = { "c", "x", CDP_CONF_ENUM_AT(struct tconf, level, twice),
				       .def = "a", .help = "h" };
	struct cdp_conf_table noprog = { NULL, &rep, 1, sizeof(struct tconf) };
	struct cdp_conf_table reptab = { "t", &rep, 1, sizeof(struct tconf) };
	struct cdp_err err = CDP_ERR_INIT;

	assert_err(&err, cdp_conf_table_check(&reptab, &err), -EINVAL,
		   "option c.x: enum value 'a' empty or repeated");
	assert_err(&err, cdp_conf_table_check(&noprog, &err), -EINVAL, "table: prog");

	for (size_t i = 0; i < CDP_ARRAY_SIZE(bad); i++) {
		struct cdp_conf_table t = { "t", &bad[i].o, 1, sizeof(struct tconf) };

		cdp_err_clear(&err);
		assert_err(&err, cdp_conf_table_check(&t, &err), -EINVAL, bad[i].needle);
	}
	{
		struct cdp_conf_option two[] = {
			{ "c", "x", CDP_CONF_BOOL_AT(struct tconf, debug), .def = "no",
			  .help = "h" },
			{ "c", "x", CDP_CONF_BOOL_AT(struct tconf, enabled), .def = "no",
			  .help = "h" },
		};
		struct cdp_conf_table t = { "t", two, 2, sizeof(struct tconf) };

		assert_err(&err, cdp_conf_table_check(&t, &err), -EINVAL, "c.x: declared twice");
		two[1].name = "y";
		two[1].offset = two[0].offset;
		assert_err(&err, cdp_conf_table_check(&t, &err), -EINVAL, "overlaps option c.x");
	}
}

static void test_defaults_fill_every_type(void **state)
{
	struct tconf c = { .extra = 7 };

	cdp_conf_defaults(&ttab, &c);
	assert_false(c.debug);
	assert_string_equal(c.name, "cdp");
	assert_true(c.enabled);
	assert_int_equal(c.count, 3);
	assert_int_equal(c.level, 2);
	assert_int_equal(c.cache_size, 256 * CDP_CONF_MIB);
	assert_int_equal(c.spill_max, 0);
	assert_non_null(c.dir);
	assert_string_equal(c.dir, "");
	assert_int_equal(c.timeout, 2 * CDP_CONF_MINUTE);
	assert_int_equal(c.interval, CDP_CONF_SEC);
	assert_int_equal(c.bandwidth, 300 * CDP_CONF_MBIT);
	assert_int_equal(c.read_cap, 30);
	assert_int_equal(c.extra, 7);
	cdp_conf_defaults(&ttab, &c);	/* again: the old strings are freed, not leaked */
	cdp_conf_release(&ttab, &c);
	assert_null(c.name);
	cdp_conf_release(&ttab, &c);	/* twice is fine */
}

/* ---- the unit parsers ---- */

static void test_parse_size_units(void **state)
{
	static const struct {
		const char *s;
		uint64_t v;
	} ok[] = {
		{ "0", 0 }, { "512", 512 }, { "512B", 512 }, { "4KiB", 4096 }, { "4K", 4096 },
		{ "4kB", 4000 }, { "4KB", 4000 }, { "256MiB", 256ull << 20 },
		{ "256M", 256ull << 20 },
		{ "256MB", 256000000 }, { "1GiB", 1ull << 30 }, { "1GB", 1000000000 },
		{ "1TiB", 1ull << 40 }, { "2PiB", 2ull << 50 }, { "7EiB", 7ull << 60 },
		{ "1.5GiB", 3ull << 29 }, { "0.5KiB", 512 }, { "256 MiB", 256ull << 20 },
		{ "256\tMiB", 256ull << 20 }, { "9223372036854775807", INT64_MAX },
		{ "0.25MB", 250000 },
	};
	static const struct {
		const char *s, *needle;
	} bad[] = {
		{ "", "'' is not a size (use e.g. 256MiB)" },
		{ "256Mx", "'256Mx' is not a size (use e.g. 256MiB)" },
		{ "256mb", "'256mb' is not a size" },
		{ "MiB", "'MiB' is not a size" },
		{ "256MiB ", "'256MiB ' is not a size" },
		{ "256 ", "'256 ' is not a size" },
		{ "256 1", "'256 1' is not a size" },
		{ " 256MiB", "' 256MiB' is not a size" },
		{ "256MiB4", "'256MiB4' is not a size" },
		{ "1.", "'1.' is not a size" },
		{ ".5KiB", "'.5KiB' is not a size" },
		{ "1e3", "'1e3' is not a size" },
		{ "0x10", "'0x10' is not a size" },
		{ "+1", "'+1' is not a size" },
		{ "-1", "'-1' is negative; a size is 0 or more" },
		{ "-1MiB", "'-1MiB' is negative" },
		{ "1.5B", "'1.5B' is not a whole number of bytes" },
		{ "0.1", "'0.1' is not a whole number of bytes" },
		{ "8EiB", "'8EiB' is too large for a size (at most 9223372036854775807 bytes)" },
		{ "9223372036854775808", "is too large for a size" },
		{ "18446744073709551616", "is too large for a size" },
		{ "99999999999999999999999KiB", "is too large for a size" },
		{ "16777216TiB", "is too large for a size" },
		{ "1.0000000000000000001KiB", "is too large for a size" },
	};

	for (size_t i = 0; i < CDP_ARRAY_SIZE(ok); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		uint64_t v = 1;

		if (cdp_conf_parse_size(ok[i].s, &v, &err))
			fail_msg("'%s': %s", ok[i].s, err.msg);
		assert_int_equal(v, ok[i].v);
	}
	for (size_t i = 0; i < CDP_ARRAY_SIZE(bad); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		uint64_t v = 77;

		assert_err(&err, cdp_conf_parse_size(bad[i].s, &v, &err), -EINVAL, bad[i].needle);
		assert_int_equal(v, 77);	/* untouched on failure */
	}
}

static void test_parse_duration_units(void **state)
{
	static const struct {
		const char *s;
		int64_t v;
	} ok[] = {
		{ "0", 0 }, { "0s", 0 }, { "0.0", 0 }, { "1ns", 1 }, { "5us", 5000 },
		{ "5\xc2\xb5s", 5000 }, { "100ms", 100 * CDP_CONF_MSEC },
		{ "2s", 2 * CDP_CONF_SEC },
		{ "1.5s", 1500 * CDP_CONF_MSEC }, { "2min", 2 * CDP_CONF_MINUTE },
		{ "15m", 15 * CDP_CONF_MINUTE }, { "1h", CDP_CONF_HOUR },
		{ "15d", 15 * CDP_CONF_DAY },
		{ "1h30m", 90 * CDP_CONF_MINUTE }, { "2m10s", 130 * CDP_CONF_SEC },
		{ "2min 10s", 130 * CDP_CONF_SEC }, { "1 h 30 m", 90 * CDP_CONF_MINUTE },
		{ "1d2h3m4s5ms6us7ns", CDP_CONF_DAY + 2 * CDP_CONF_HOUR + 3 * CDP_CONF_MINUTE +
		  4 * CDP_CONF_SEC + 5 * CDP_CONF_MSEC + 6000 + 7 },
		{ "0.5h", 30 * CDP_CONF_MINUTE }, { "106751d", 106751 * CDP_CONF_DAY },
	};
	static const struct {
		const char *s, *needle;
	} bad[] = {
		{ "100", "'100' has no unit (use e.g. 100ms, 2s, 2min or 1h30m)" },
		{ "1.5", "'1.5' has no unit" },
		{ "", "'' is not a duration" },
		{ "2x", "'2x' is not a duration (use e.g. 100ms, 2s, 2min or 1h30m)" },
		{ "2S", "'2S' is not a duration" },
		{ "2s ", "'2s ' is not a duration" },
		{ "0 ", "'0 ' is not a duration" },
		{ "2s junk", "'2s junk' is not a duration" },
		{ "1h 30", "'1h 30' is not a duration" },
		{ "s", "'s' is not a duration" },
		{ "-1s", "'-1s' is negative; a duration is 0 or more" },
		{ "0.5ns", "'0.5ns' is not a whole number of nanoseconds" },
		{ "106752d", "'106752d' is too large for a duration (at most about 292 years)" },
		{ "106751d 1d", "is too large for a duration" },
		{ "99999999999999999999s", "is too large for a duration" },
	};

	for (size_t i = 0; i < CDP_ARRAY_SIZE(ok); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		int64_t v = -1;

		if (cdp_conf_parse_duration(ok[i].s, &v, &err))
			fail_msg("'%s': %s", ok[i].s, err.msg);
		assert_int_equal(v, ok[i].v);
	}
	for (size_t i = 0; i < CDP_ARRAY_SIZE(bad); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		int64_t v = 77;

		assert_err(&err, cdp_conf_parse_duration(bad[i].s, &v, &err), -EINVAL,
			   bad[i].needle);
		assert_int_equal(v, 77);
	}
}

static void test_parse_rate_units(void **state)
{
	static const struct {
		const char *s;
		uint64_t v;
	} ok[] = {
		{ "0", 0 }, { "0bit", 0 }, { "300Mbit", 300000000 }, { "300Mbit/s", 300000000 },
		{ "300Mbps", 300000000 }, { "1Gbit", 1000000000 }, { "1.5Gbit", 1500000000 },
		{ "64kbit", 64000 }, { "64Kbit", 64000 }, { "100bit", 100 },
		{ "2Tbit", 2000000000000 }, { "40MB/s", 320000000 }, { "1B/s", 8 },
		{ "1MiB/s", 8 << 20 }, { "1 GiB/s", 8ull << 30 },
	};
	static const struct {
		const char *s, *needle;
	} bad[] = {
		{ "300", "'300' has no unit (use e.g. 300Mbit or 40MB/s)" },
		{ "300Mb/s", "'300Mb/s' is not a rate (use e.g. 300Mbit or 40MB/s)" },
		{ "300mbit", "'300mbit' is not a rate" },
		{ "300Mbit/", "is not a rate" },
		{ "-300Mbit", "'-300Mbit' is negative; a rate is 0 or more" },
		{ "0.5bit", "'0.5bit' is not a whole number of bits per second" },
		{ "9223372036854775808bit", "is too large for a rate" },
		{ "2000000000TB/s", "is too large for a rate" },
	};

	for (size_t i = 0; i < CDP_ARRAY_SIZE(ok); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		uint64_t v = 1;

		if (cdp_conf_parse_rate(ok[i].s, &v, &err))
			fail_msg("'%s': %s", ok[i].s, err.msg);
		assert_int_equal(v, ok[i].v);
	}
	for (size_t i = 0; i < CDP_ARRAY_SIZE(bad); i++) {
		struct cdp_err err = CDP_ERR_INIT;
		uint64_t v = 77;

		assert_err(&err, cdp_conf_parse_rate(bad[i].s, &v, &err), -EINVAL, bad[i].needle);
		assert_int_equal(v, 77);
	}
}

static void test_parse_bool_int_percent(void **state)
{
	static const char *const yes[] = { "yes", "YES", "true", "True", "on", "1" };
	static const char *const no[] = { "no", "No", "false", "FALSE", "off", "0" };
	static const char *const notbool[] = { "", "y", "yes!", " yes", "2", "enable" };
	struct cdp_err err = CDP_ERR_INIT;
	int64_t i64;
	bool b;
	int pct;

	for (size_t i = 0; i < CDP_ARRAY_SIZE(yes); i++) {
		b = false;
		assert_int_equal(cdp_conf_parse_bool(yes[i], &b, &err), 0);
		assert_true(b);
		assert_int_equal(cdp_conf_parse_bool(no[i], &b, &err), 0);
		assert_false(b);
	}
	for (size_t i = 0; i < CDP_ARRAY_SIZE(notbool); i++)
		assert_err(&err, cdp_conf_parse_bool(notbool[i], &b, &err), -EINVAL,
			   "is not a boolean (use yes or no)");

	assert_int_equal(cdp_conf_parse_int("-42", &i64, &err), 0);
	assert_int_equal(i64, -42);
	assert_int_equal(cdp_conf_parse_int("9223372036854775807", &i64, &err), 0);
	assert_int_equal(i64, INT64_MAX);
	assert_int_equal(cdp_conf_parse_int("-9223372036854775808", &i64, &err), 0);
	assert_true(i64 == INT64_MIN);
	assert_err(&err, cdp_conf_parse_int("9223372036854775808", &i64, &err), -EINVAL,
		   "'9223372036854775808' is out of range for an integer");
	assert_err(&err, cdp_conf_parse_int("-9223372036854775809", &i64, &err), -EINVAL,
		   "is out of range for an integer");
	assert_err(&err, cdp_conf_parse_int("99999999999999999999999", &i64, &err), -EINVAL,
		   "is out of range for an integer");
	assert_err(&err, cdp_conf_parse_int("12x", &i64, &err), -EINVAL,
		   "'12x' is not an integer");
	assert_err(&err, cdp_conf_parse_int("-", &i64, &err), -EINVAL, "'-' is not an integer");
	assert_err(&err, cdp_conf_parse_int("", &i64, &err), -EINVAL, "'' is not an integer");
	assert_err(&err, cdp_conf_parse_int("1.5", &i64, &err), -EINVAL, "is not an integer");

	assert_int_equal(cdp_conf_parse_percent("30%", &pct, &err), 0);
	assert_int_equal(pct, 30);
	assert_int_equal(cdp_conf_parse_percent("100", &pct, &err), 0);
	assert_int_equal(pct, 100);
	assert_int_equal(cdp_conf_parse_percent("0%", &pct, &err), 0);
	assert_int_equal(pct, 0);
	assert_err(&err, cdp_conf_parse_percent("101%", &pct, &err), -EINVAL,
		   "'101%' is not a percentage (0 to 100, e.g. 30%)");
	assert_err(&err, cdp_conf_parse_percent("99999999999999%", &pct, &err), -EINVAL,
		   "is not a percentage");
	assert_err(&err, cdp_conf_parse_percent("30%%", &pct, &err), -EINVAL,
		   "is not a percentage");
	assert_err(&err, cdp_conf_parse_percent("%", &pct, &err), -EINVAL, "is not a percentage");
	assert_err(&err, cdp_conf_parse_percent("-5%", &pct, &err), -EINVAL,
		   "is not a percentage");
}

/* ---- loading files ---- */

static void test_load_reads_every_type(void **state)
{
	struct fixture *f = *state;
	int rc;

	rc = load_text(f,
		       "; a comment\n"
		       "# another comment\n"
		       "debug = yes\n"
		       "\n"
		       "[main]\n"
		       "name = db01 primary\n"
		       "enabled = off\n"
		       "count = -7\n"
		       "level = debug\n"
		       "[cache]\n"
		       "size = 1.5GiB ; inline comment\n"
		       "spill_max = 2TiB\n"
		       "dir = /var/spool/cdp\n"
		       "[link]\n"
		       "timeout = 15m\n"
		       "interval = 100ms\n"
		       "bandwidth = 40MB/s\n"
		       "read_cap = 50%\n"
		       "raw_int=-9223372036854775808\n"
		       "raw_size:1EiB\n");
	assert_err(&f->err, rc, -EINVAL, "spill_max: '2TiB' is more than the maximum 1TiB");
	write_file(f->path, "[cache]\nspill_max = 1TiB\n");
	rc = cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err);
	assert_int_equal(rc, 0);
	assert_int_equal(f->cfg.spill_max, CDP_CONF_TIB);

	rc = load_text(f,
		       "debug = yes\n"
		       "[main]\n"
		       "name = db01 primary\n"
		       "enabled = off\n"
		       "count = -7\n"
		       "level = debug\n"
		       "[cache]\n"
		       "size = 1.5GiB ; inline comment\n"
		       "spill_max = 0\n"
		       "dir = /var/spool/cdp\n"
		       "[link]\n"
		       "timeout = 15m\n"
		       "interval = 100ms\n"
		       "bandwidth = 40MB/s\n"
		       "read_cap = 50%\n"
		       "raw_int=-9223372036854775808\n"
		       "raw_size:1EiB\n");
	if (rc)
		fail_msg("%s", f->err.msg);
	assert_true(f->cfg.debug);
	assert_string_equal(f->cfg.name, "db01 primary");
	assert_false(f->cfg.enabled);
	assert_int_equal(f->cfg.count, -7);
	assert_int_equal(f->cfg.level, 3);
	assert_int_equal(f->cfg.cache_size, 3 * CDP_CONF_GIB / 2);
	assert_int_equal(f->cfg.spill_max, 0);	/* ZERO_OFF: 0 passes below min */
	assert_string_equal(f->cfg.dir, "/var/spool/cdp");
	assert_int_equal(f->cfg.timeout, 15 * CDP_CONF_MINUTE);
	assert_int_equal(f->cfg.interval, 100 * CDP_CONF_MSEC);
	assert_int_equal(f->cfg.bandwidth, 320 * CDP_CONF_MBIT);
	assert_int_equal(f->cfg.read_cap, 50);
	assert_true(f->cfg.raw_int == INT64_MIN);
	assert_int_equal(f->cfg.raw_size, 1ull << 60);
	assert_int_equal(f->cfg.extra, 4242);
}

static void test_load_unknown_key_names_file_line_and_key(void **state)
{
	struct fixture *f = *state;

	assert_file_err(f, load_text(f, "[cache]\nsize = 1GiB\n\nsise = 2GiB\n"), 4,
			"unknown key 'cache.sise' (did you mean 'cache.size'?)");
	assert_file_err(f, load_text(f, "[cache]\nSize = 1GiB\n"), 2,
			"unknown key 'cache.Size' (did you mean 'cache.size'?)");
	assert_file_err(f, load_text(f, "[link]\nsize = 1GiB\n"), 2,
			"unknown key 'link.size' (did you mean 'cache.size'?)");
	assert_file_err(f, load_text(f, "[link]\nwhatever = 1\n"), 2,
			"unknown key 'link.whatever'");
	assert_false(strstr(f->err.msg, "did you mean"));
	assert_file_err(f, load_text(f, "size = 1GiB\n"), 1,
			"unknown key 'size' before any [section] (did you mean 'cache.size'?)");
	assert_file_err(f, load_text(f, "[cache]\n= 1GiB\n"), 2, "no key name before '='");
	/* A long value is cut in the message, which still names file, line and key. */
	assert_file_err(f, load_text(f, "[cache]\nsize = 0123456789abcdefghijklmnopqrstuvwxyz"
				     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnop\n"),
			2, "cache.size: '0123456789abcdefghijklmnopqrstuvwxyz"
			"ABCDEFGHIJKLMNOPQRSTUVWXYZ01...' is not a size");
	/* No struct cdp_err: same return, nothing to fill. */
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, NULL), -EINVAL);
	assert_int_equal(cdp_conf_load_buffer(&ttab, &f->cfg, "b", "x", 1, NULL), -EINVAL);
	assert_int_equal(cdp_conf_set(&ttab, &f->cfg, "nosuch", "1", NULL), -EINVAL);
}

static void test_load_unknown_section_names_its_line(void **state)
{
	struct fixture *f = *state;

	assert_file_err(f, load_text(f, "[cache]\nsize = 1GiB\n[cachee]\nsize = 2GiB\n"), 3,
			"unknown section [cachee] (did you mean [cache]?)");
	/* An empty unknown section is an error too: inih alone never reports it. */
	assert_file_err(f, load_text(f, "[main]\n[nosuch]\n"), 2, "unknown section [nosuch]");
	assert_file_err(f, load_text(f, "[]\n"), 1, "unknown section []");
	assert_file_err(f, load_text(f, "[cache] junk\nsize = 1GiB\n"), 1,
			"text after ']' in '[cache] junk'");
	assert_int_equal(load_text(f, "  [cache] ; a comment\nsize = 1GiB\n[link]# c\n"), 0);
	assert_file_err(f, load_text(f, "[main]\n[cache\nsize = 1GiB\n"), 2,
			"expected ']' to close the section name in '[cache'");
}

static void test_load_bad_value_per_type(void **state)
{
	static const struct {
		const char *text, *needle;
	} cases[] = {
		{ "[main]\nenabled = maybe\n",
		  "main.enabled: 'maybe' is not a boolean (use yes or no)" },
		{ "[main]\ncount = 3x\n", "main.count: '3x' is not an integer" },
		{ "[main]\nlevel = verbose\n",
		  "main.level: 'verbose' is not one of: err, warn, info, debug" },
		{ "[main]\nlevel = INFO\n", "main.level: 'INFO' is not one of" },
		{ "[cache]\nsize = 256Mx\n",
		  "cache.size: '256Mx' is not a size (use e.g. 256MiB)" },
		{ "[link]\ntimeout = 2 fortnights\n",
		  "link.timeout: '2 fortnights' is not a duration" },
		{ "[link]\ntimeout = 120\n", "link.timeout: '120' has no unit" },
		{ "[link]\nbandwidth = fast\n", "link.bandwidth: 'fast' is not a rate" },
		{ "[link]\nread_cap = half\n", "link.read_cap: 'half' is not a percentage" },
		{ "[cache]\nsize =\n", "cache.size: '' is not a size" },
		{ "[cache]\nsize = -1GiB\n", "cache.size: '-1GiB' is negative" },
	};

	for (size_t i = 0; i < CDP_ARRAY_SIZE(cases); i++) {
		struct fixture *f = *state;

		assert_file_err(f, load_text(f, cases[i].text), 2, cases[i].needle);
	}
}

static void test_load_out_of_bounds_names_min_and_max(void **state)
{
	struct fixture *f = *state;

	assert_file_err(f, load_text(f, "[cache]\nsize = 8MiB\n"), 2,
			"cache.size: '8MiB' is less than the minimum 16MiB");
	assert_file_err(f, load_text(f, "[cache]\nsize = 65GiB\n"), 2,
			"cache.size: '65GiB' is more than the maximum 64GiB");
	assert_file_err(f, load_text(f, "[cache]\nspill_max = 1MiB\n"), 2,
			"cache.spill_max: '1MiB' is less than the minimum 64MiB (or 0 for off)");
	assert_file_err(f, load_text(f, "[main]\ncount = -11\n"), 2,
			"main.count: '-11' is less than the minimum -10");
	assert_file_err(f, load_text(f, "[main]\ncount = 101\n"), 2,
			"main.count: '101' is more than the maximum 100");
	assert_file_err(f, load_text(f, "[link]\ninterval = 50ms\n"), 2,
			"link.interval: '50ms' is less than the minimum 100ms");
	assert_file_err(f, load_text(f, "[link]\ntimeout = 1d1s\n"), 2,
			"link.timeout: '1d1s' is more than the maximum 1d");
	assert_file_err(f, load_text(f, "[link]\ntimeout = 0\n"), 2,
			"link.timeout: '0' is less than the minimum 1s");
	assert_file_err(f, load_text(f, "[link]\nbandwidth = 101Gbit\n"), 2,
			"link.bandwidth: '101Gbit' is more than the maximum 100Gbit");
	assert_file_err(f, load_text(f, "[link]\nread_cap = 0%\n"), 2,
			"link.read_cap: '0%' is less than the minimum 1%");
	assert_int_equal(load_text(f, "[link]\nbandwidth = 0\ninterval = 1h\n"), 0);
	assert_int_equal(f->cfg.bandwidth, 0);
	assert_int_equal(f->cfg.interval, CDP_CONF_HOUR);
}

static void test_load_overflow_and_trailing_junk(void **state)
{
	struct fixture *f = *state;

	assert_file_err(f, load_text(f, "[link]\nraw_int = 9223372036854775808\n"), 2,
			"link.raw_int: '9223372036854775808' is out of range for an integer");
	assert_file_err(f, load_text(f, "[link]\nraw_size = 99999999999EiB\n"), 2,
			"link.raw_size: '99999999999EiB' is too large for a size");
	assert_file_err(f, load_text(f, "[link]\ninterval = 99999999999999999999h\n"), 2,
			"link.interval: '99999999999999999999h' is too large for a duration");
	assert_file_err(f, load_text(f, "[cache]\nsize = 256MiB extra\n"), 2,
			"cache.size: '256MiB extra' is not a size");
	assert_file_err(f, load_text(f, "[main]\nenabled = yes please\n"), 2,
			"main.enabled: 'yes please' is not a boolean");
	/* '#' is not an inline comment: say so instead of taking it into the value. */
	assert_file_err(f, load_text(f, "[cache]\ndir = /var/x # spill here\n"), 2,
			"cache.dir: '/var/x # spill here' has a '#' after a blank");
	assert_int_equal(load_text(f, "[cache]\ndir = \"/var/x # spill here\"\n"), 0);
	assert_string_equal(f->cfg.dir, "/var/x # spill here");
}

static void test_load_quotes_comments_and_line_ends(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(load_text(f, "\xef\xbb\xbf[main]\r\nname = \"  padded \"\r\n"
				   "[cache]\r\ndir = a;b\r\n"), 0);
	assert_string_equal(f->cfg.name, "  padded ");
	assert_string_equal(f->cfg.dir, "a;b");
	assert_int_equal(load_text(f, "[main]\nname = \"\"\n[cache]\ndir = x\"y\"\n"), 0);
	assert_string_equal(f->cfg.name, "");
	assert_string_equal(f->cfg.dir, "x\"y\"");
	assert_int_equal(load_text(f, "[main]\nname = \"a\" ; comment\n"), 0);
	assert_string_equal(f->cfg.name, "a");
	/* Quotes work around any type; a blank + ';' right after '=' is a comment. */
	assert_int_equal(load_text(f, "[cache]\nsize = \"1GiB\"\ndir = ;x\n"), 0);
	assert_int_equal(f->cfg.cache_size, CDP_CONF_GIB);
	assert_string_equal(f->cfg.dir, "");
	/* A blank + ';' starts a comment even inside quotes: the quote is left open. */
	assert_file_err(f, load_text(f, "[main]\nname = \"a ; b\"\n"), 2,
			"main.name: '\"a' has no closing '\"'");
	assert_file_err(f, load_text(f, "[main]\nname = \"\n"), 2,
			"main.name: '\"' has no closing '\"'");
	/* No continuation lines: an indented line is a line of its own. */
	assert_file_err(f, load_text(f, "[main]\nname = a\n    continued\n"), 3,
			"expected 'key = value' or '[section]', found 'continued'");
	assert_int_equal(load_text(f, "[main]\nname = a\n    count = 5\n"), 0);
	assert_int_equal(f->cfg.count, 5);
	assert_file_err(f, load_text(f, "[main]\nname = a\x01z\n"), 2,
			"main.name: 'a\\x01z' contains control character 0x01");
	assert_file_err(f, load_text(f, "[main]\nname = a\rz\n"), 2,
			"main.name: 'a\\x0dz' contains control character 0x0d");
}

static void test_load_syntax_error_and_nul_byte(void **state)
{
	struct fixture *f = *state;
	static const char nul[] = "[main]\nname = a\0b\ncount = 1\n";

	assert_file_err(f, load_text(f, "[main]\nname = a\ngarbage here\ncount = 1x\n"), 3,
			"expected 'key = value' or '[section]', found 'garbage here'");
	/* The first error wins, whichever kind comes first. */
	assert_file_err(f, load_text(f, "[main]\ncount = 1x\ngarbage\n"), 2, "main.count:");
	write_file(f->path, "");
	{
		int fd = open(f->path, O_WRONLY | O_TRUNC);

		assert_true(fd >= 0);
		assert_int_equal(write(fd, nul, sizeof(nul) - 1), sizeof(nul) - 1);
		close(fd);
	}
	assert_file_err(f, cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err), 2,
			"NUL byte at column 9");
	assert_err(&f->err, cdp_conf_load_buffer(&ttab, &f->cfg, "buf", nul, sizeof(nul) - 1,
						 &f->err), -EINVAL, "buf:2: NUL byte");
}

static void test_load_overlong_line_is_an_error_not_a_truncation(void **state)
{
	struct fixture *f = *state;
	char text[1024], val[400];
	size_t head = strlen("dir = ");

	/* Exactly CDP_CONF_LINE_MAX bytes: accepted, whole. */
	memset(val, 'v', sizeof(val));
	val[CDP_CONF_LINE_MAX - head] = '\0';
	snprintf(text, sizeof(text), "[cache]\ndir = %s\n", val);
	assert_int_equal(load_text(f, text), 0);
	assert_int_equal(strlen(f->cfg.dir), CDP_CONF_LINE_MAX - head);
	snprintf(text, sizeof(text), "[cache]\ndir = %s\r\n", val);	/* "\r\n" not counted */
	assert_int_equal(load_text(f, text), 0);
	assert_int_equal(strlen(f->cfg.dir), CDP_CONF_LINE_MAX - head);

	/* One more: an error at that line, and its tail is not parsed as a line. */
	val[CDP_CONF_LINE_MAX - head] = 'v';
	val[CDP_CONF_LINE_MAX - head + 1] = '\0';
	snprintf(text, sizeof(text), "[cache]\n\ndir = %s\n", val);
	assert_file_err(f, load_text(f, text), 3, "line too long (198 bytes, at most 197)");
	memset(val, 'v', 250);
	memcpy(val + 200, "=x", 2);
	val[250] = '\0';
	snprintf(text, sizeof(text), "[cache]\nsize = 1GiB\n%s\n", val);
	assert_file_err(f, load_text(f, text), 3, "line too long (250 bytes, at most 197)");
	/* Leading blanks count: the line is measured as written. */
	snprintf(text, sizeof(text), "[cache]\n%150s%s\n", "",
		 "dir = 0123456789012345678901234567890123456789012345678901");
	assert_file_err(f, load_text(f, text), 2, "line too long");
}

static void test_load_missing_file_is_fine_unless_required(void **state)
{
	struct fixture *f = *state;
	char needle[600];
	int rc;

	rc = cdp_conf_load(&ttab, &f->cfg, f->path, NULL, 0, &f->err);
	assert_int_equal(rc, 0);
	assert_int_equal(f->cfg.cache_size, 256 * CDP_CONF_MIB);	/* defaults */
	assert_string_equal(f->cfg.name, "cdp");
	rc = cdp_conf_load(&ttab, &f->cfg, f->path, NULL, CDP_CONF_REQUIRED, &f->err);
	snprintf(needle, sizeof(needle), "%s: cannot open: No such file or directory", f->path);
	assert_err(&f->err, rc, -ENOENT, needle);
	/* Drop-ins apply even without a main file. */
	write_dropin(f, "10-size.conf", "[cache]\nsize = 1GiB\n");
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, f->path, NULL, 0, &f->err), 0);
	assert_int_equal(f->cfg.cache_size, CDP_CONF_GIB);
}

static void test_load_unreadable_file_is_an_error(void **state)
{
	struct fixture *f = *state;
	char path[600], needle[700];
	int rc;

	/* A path through a regular file: not "missing", so an error even when optional. */
	write_file(f->path, "[main]\n");
	snprintf(path, sizeof(path), "%s/agent.conf/x.conf", f->dir);
	rc = cdp_conf_load(&ttab, &f->cfg, path, "", 0, &f->err);
	snprintf(needle, sizeof(needle), "%s: cannot open: Not a directory", path);
	assert_err(&f->err, rc, -ENOTDIR, needle);
	rc = cdp_conf_load(&ttab, &f->cfg, f->dir, "", 0, &f->err);
	snprintf(needle, sizeof(needle), "%s: is a directory, not a config file", f->dir);
	assert_err(&f->err, rc, -EISDIR, needle);
	rc = cdp_conf_load(&ttab, &f->cfg, "/dev/null", "", 0, &f->err);
	assert_err(&f->err, rc, -EINVAL, "/dev/null: not a regular file");
	/* conf.d that is a file. */
	rc = cdp_conf_load(&ttab, &f->cfg, NULL, f->path, 0, &f->err);
	snprintf(needle, sizeof(needle), "%s: cannot open directory: Not a directory", f->path);
	assert_err(&f->err, rc, -ENOTDIR, needle);
	if (geteuid() != 0) {	/* root reads through mode 000 */
		assert_int_equal(chmod(f->path, 0), 0);
		rc = cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err);
		assert_err(&f->err, rc, -EACCES, "cannot open: Permission denied");
	}
}

static void test_load_file_too_large(void **state)
{
	struct fixture *f = *state;
	size_t n = CDP_CONF_FILE_MAX + 1;
	char *big = malloc(n + 1);
	char needle[600];

	assert_non_null(big);
	memset(big, '\n', n);
	big[n] = '\0';
	write_file(f->path, big);
	snprintf(needle, sizeof(needle), "%s: file too large (%zu bytes, at most %d)", f->path, n,
		 CDP_CONF_FILE_MAX);
	assert_err(&f->err, cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err), -EINVAL,
		   needle);
	big[n - 1] = '\0';	/* exactly the limit: fine */
	write_file(f->path, big);
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err), 0);
	free(big);
}

static void test_duplicate_key_in_one_file_is_an_error(void **state)
{
	struct fixture *f = *state;

	assert_file_err(f, load_text(f, "[cache]\nsize = 1GiB\n[link]\n[cache]\nsize = 2GiB\n"), 5,
			"cache.size: already set on line 2");
	assert_int_equal(load_text(f, "[cache]\nsize = 1GiB\n[link]\ntimeout = 5m\n"), 0);
}

static void test_confd_files_apply_in_name_order_and_override(void **state)
{
	struct fixture *f = *state;

	write_file(f->path, "[cache]\nsize = 1GiB\n[main]\nname = main\ncount = 1\n");
	write_dropin(f, "20-b.conf", "[main]\nname = twenty\ncount = 20\n");
	write_dropin(f, "10-a.conf", "[main]\nname = ten\n[cache]\nsize = 2GiB\n");
	write_dropin(f, "30-c.conf", "[main]\ncount = 30\n");
	write_dropin(f, "99-z.conf.disabled", "[main]\ncount = 99\n");
	write_dropin(f, ".50-hidden.conf", "[main]\ncount = 50\n");
	write_dropin(f, "README", "not a config file\n");
	write_dropin(f, "A-upper.conf", "[main]\nenabled = no\n");	/* bytes: after digits */
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, f->path, NULL, CDP_CONF_REQUIRED, &f->err),
			 0);
	assert_int_equal(f->cfg.cache_size, 2 * CDP_CONF_GIB);	/* 10-a over main */
	assert_string_equal(f->cfg.name, "twenty");		/* 20-b over 10-a */
	assert_int_equal(f->cfg.count, 30);			/* 30-c over 20-b */
	assert_false(f->cfg.enabled);

	/* An explicit directory, and "" for none. */
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, f->path, "", 0, &f->err), 0);
	assert_int_equal(f->cfg.count, 1);
	assert_string_equal(f->cfg.name, "main");
	assert_int_equal(cdp_conf_load(&ttab, &f->cfg, NULL, f->confd, 0, &f->err), 0);
	assert_int_equal(f->cfg.count, 30);
	assert_int_equal(f->cfg.cache_size, 2 * CDP_CONF_GIB);
}

static void test_confd_error_names_the_dropin(void **state)
{
	struct fixture *f = *state;
	char needle[700];
	int rc;

	write_file(f->path, "[cache]\nsize = 1GiB\n");
	write_dropin(f, "10-a.conf", "[main]\ncount = 1\n");
	write_dropin(f, "20-b.conf", "[main]\n\ncount = many\n");
	rc = cdp_conf_load(&ttab, &f->cfg, f->path, NULL, 0, &f->err);
	snprintf(needle, sizeof(needle), "%s/20-b.conf:3: main.count: 'many' is not an integer",
		 f->confd);
	assert_err(&f->err, rc, -EINVAL, needle);
	/* A directory named like a drop-in is not skipped silently. */
	write_dropin(f, "20-b.conf", "[main]\n");
	snprintf(needle, sizeof(needle), "%s/15-dir.conf", f->confd);
	assert_int_equal(mkdir(needle, 0755), 0);
	rc = cdp_conf_load(&ttab, &f->cfg, f->path, NULL, 0, &f->err);
	assert_err(&f->err, rc, -EISDIR, "15-dir.conf: is a directory");
}

static void test_failed_load_leaves_config_unchanged(void **state)
{
	struct fixture *f = *state;
	const struct cdp_conf_option *diff = NULL;
	struct tconf before = { 0 };

	assert_int_equal(load_text(f, "[main]\nname = good\n[cache]\nsize = 1GiB\n"), 0);
	cdp_conf_defaults(&ttab, &before);
	assert_false(cdp_conf_equal(&ttab, &before, &f->cfg, &diff));
	assert_string_equal(diff->name, "name");
	cdp_conf_release(&ttab, &before);
	/* Copy the good config by reloading it, then fail a load mid-file. */
	assert_int_equal(cdp_conf_load(&ttab, &before, f->path, "", 0, &f->err), 0);
	assert_file_err(f, load_text(f, "[main]\nname = bad\n[cache]\nsize = huge\n"), 4,
			"cache.size: 'huge' is not a size");
	assert_true(cdp_conf_equal(&ttab, &before, &f->cfg, NULL));
	assert_string_equal(f->cfg.name, "good");
	assert_int_equal(f->cfg.extra, 4242);
	cdp_conf_release(&ttab, &before);
}

static void test_set_overrides_files(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(load_text(f, "[cache]\nsize = 1GiB\n[main]\nname = file\n"), 0);
	assert_int_equal(cdp_conf_set(&ttab, &f->cfg, "cache.size", "4GiB", &f->err), 0);
	assert_int_equal(f->cfg.cache_size, 4 * CDP_CONF_GIB);
	assert_int_equal(cdp_conf_set(&ttab, &f->cfg, "main.name", " \"raw\" ", &f->err), 0);
	assert_string_equal(f->cfg.name, " \"raw\" ");	/* verbatim: the shell quoted it */
	assert_int_equal(cdp_conf_set(&ttab, &f->cfg, "debug", "on", &f->err), 0);
	assert_true(f->cfg.debug);
	assert_int_equal(cdp_conf_set_arg(&ttab, &f->cfg, "link.timeout=1h30m", &f->err), 0);
	assert_int_equal(f->cfg.timeout, 90 * CDP_CONF_MINUTE);
	assert_int_equal(cdp_conf_set_arg(&ttab, &f->cfg, "main.name=a=b", &f->err), 0);
	assert_string_equal(f->cfg.name, "a=b");
	{
		char buf[64];

		assert_string_equal(cdp_conf_format_value(cdp_conf_find(&ttab, "main.name"),
							  &f->cfg, buf, sizeof(buf)), "a=b");
		assert_string_equal(cdp_conf_format_value(cdp_conf_find(&ttab, "link.timeout"),
							  &f->cfg, buf, sizeof(buf)), "1h30m");
	}

	assert_err(&f->err, cdp_conf_set(&ttab, &f->cfg, "cache.sise", "1GiB", &f->err), -EINVAL,
		   "unknown key 'cache.sise' (did you mean 'cache.size'?)");
	assert_err(&f->err, cdp_conf_set(&ttab, &f->cfg, "cache.size", "1x", &f->err), -EINVAL,
		   "cache.size: '1x' is not a size (use e.g. 256MiB)");
	assert_err(&f->err, cdp_conf_set(&ttab, &f->cfg, "cache.size", "1MiB", &f->err), -EINVAL,
		   "cache.size: '1MiB' is less than the minimum 16MiB");
	assert_err(&f->err, cdp_conf_set(&ttab, &f->cfg, "main.name", "a\nb", &f->err), -EINVAL,
		   "main.name: 'a\\x0ab' contains control character 0x0a");
	assert_err(&f->err, cdp_conf_set_arg(&ttab, &f->cfg, "cache.size", &f->err), -EINVAL,
		   "'cache.size' is not section.key=value");
	assert_err(&f->err, cdp_conf_set_arg(&ttab, &f->cfg, "=1", &f->err), -EINVAL,
		   "is not section.key=value");
	assert_int_equal(f->cfg.cache_size, 4 * CDP_CONF_GIB);	/* failures changed nothing */
	assert_non_null(cdp_conf_find(&ttab, "link.read_cap"));
	assert_non_null(cdp_conf_find(&ttab, "debug"));
	assert_null(cdp_conf_find(&ttab, "link"));
	assert_null(cdp_conf_find(&ttab, "link.read_cap.x"));
}

/* ---- output ---- */

static char *capture(void (*fn)(FILE *, const void *), const void *arg, size_t *len)
{
	char *text = NULL;
	FILE *fp = open_memstream(&text, len);

	assert_non_null(fp);
	fn(fp, arg);
	assert_int_equal(fclose(fp), 0);
	return text;
}

static void dump_fn(FILE *fp, const void *cfg)
{
	cdp_conf_dump(&ttab, cfg, fp);
}

static void help_ini_fn(FILE *fp, const void *arg)
{
	cdp_conf_print_help(&ttab, fp, CDP_CONF_HELP_INI);
}

static void help_md_fn(FILE *fp, const void *arg)
{
	cdp_conf_print_help(&ttab, fp, CDP_CONF_HELP_MARKDOWN);
}

static void test_dump_reads_back_to_an_equal_config(void **state)
{
	struct fixture *f = *state;
	const struct cdp_conf_option *diff = NULL;
	struct tconf back = { 0 };
	char *text;
	size_t len;

	if (load_text(f, "debug = yes\n[main]\nname = \" two  spaces \"\n"
		      "level = err\ncount = -10\n[cache]\nsize = 1.5GiB\n"
		      "spill_max = 1000000000\ndir =;odd\n[link]\n"
		      "timeout = 1d\ninterval = 59m 0.5s\nbandwidth = 0\n"
		      "read_cap = 1\nraw_int = -9223372036854775808\n"
		      "raw_size = 9223372036854775807\n"))
		fail_msg("%s", f->err.msg);
	text = capture(dump_fn, &f->cfg, &len);
	assert_non_null(strstr(text, "\n[cache]\nsize = 1536MiB\n"));
	assert_non_null(strstr(text, "name = \" two  spaces \"\n"));
	assert_non_null(strstr(text, "dir = \";odd\"\n"));
	assert_non_null(strstr(text, "interval = 59m500ms\n"));
	assert_non_null(strstr(text, "bandwidth = 0\n"));
	assert_int_equal(cdp_conf_set(&ttab, &f->cfg, "link.bandwidth", "1MiB/s", &f->err), 0);
	free(text);
	text = capture(dump_fn, &f->cfg, &len);
	assert_non_null(strstr(text, "bandwidth = 8388608bit\n"));
	assert_non_null(strstr(text, "spill_max = 1GB\n"));
	assert_true(strstr(text, "debug = yes\n") < strstr(text, "[main]"));
	if (cdp_conf_load_buffer(&ttab, &back, "dump", text, len, &f->err))
		fail_msg("%s\n%s", f->err.msg, text);
	if (!cdp_conf_equal(&ttab, &f->cfg, &back, &diff))
		fail_msg("%s differs after a round trip:\n%s", diff->name, text);
	free(text);
	cdp_conf_release(&ttab, &back);
}

static void test_help_lists_every_option_and_is_a_valid_file(void **state)
{
	struct fixture *f = *state;
	struct tconf defaults = { 0 };
	enum cdp_conf_help_format fmt = CDP_CONF_HELP_MARKDOWN;
	char *ini, *md;
	size_t len, slen;

	ini = capture(help_ini_fn, NULL, &len);
	md = capture(help_md_fn, NULL, &slen);
	for (size_t i = 0; i < CDP_ARRAY_SIZE(topts); i++) {
		char line[128];

		if (!strstr(ini, topts[i].help))
			fail_msg("help of %s missing:\n%s", topts[i].name, ini);
		snprintf(line, sizeof(line), "\n#%s = ", topts[i].name);
		assert_non_null(strstr(ini, line));
	}
	assert_non_null(strstr(ini, "[cache]\n\n# Memory for segments the journal server "
				    "has not acknowledged yet.\n# size, 16MiB to 64GiB\n"
				    "#size = 256MiB\n"));
	assert_non_null(strstr(ini, "# size, 64MiB to 1TiB, or 0 for off\n#spill_max = 0\n"));
	assert_non_null(strstr(ini, "# enum: err | warn | info | debug\n#level = info\n"));
	assert_non_null(strstr(ini, "restart"));
	assert_non_null(strstr(ini, "#dir = \"\"\n"));
	/* Every option is commented out: it loads to the defaults. */
	assert_int_equal(cdp_conf_load_buffer(&ttab, &f->cfg, "help", ini, len, &f->err), 0);
	cdp_conf_defaults(&ttab, &defaults);
	assert_true(cdp_conf_equal(&ttab, &defaults, &f->cfg, NULL));
	cdp_conf_release(&ttab, &defaults);

	assert_non_null(strstr(md, "### `[cache]`\n\n- **`size`** = `256MiB`:\n"
				   "  size, 16MiB to 64GiB.\n  Memory for segments the journal server "
				   "has not acknowledged yet.\n"));
	assert_non_null(strstr(md, "- **`spill_max`** = `0`:\n  size, 64MiB to 1TiB, or 0 for off.\n"
				   "  Spill file cap.\n"));
	assert_non_null(strstr(md, "- **`dir`** = `\"\"` (empty):\n  string.\n  Spill directory; "
				   "empty: no spill.\n"));
	assert_non_null(strstr(md, "  enum: err \\| warn \\| info \\| debug.\n"));
	assert_non_null(strstr(md, "### Before the first section\n\n- **`debug`** = `no`:\n  bool.\n"));
	assert_true(strstr(md, "**`debug`**") < strstr(md, "### `[main]`"));
	free(ini);
	free(md);

	/* --help-config's argument */
	assert_int_equal(cdp_conf_help_format_parse(NULL, &fmt, &f->err), 0);
	assert_int_equal(fmt, CDP_CONF_HELP_INI);
	assert_int_equal(cdp_conf_help_format_parse("markdown", &fmt, &f->err), 0);
	assert_int_equal(fmt, CDP_CONF_HELP_MARKDOWN);
	assert_int_equal(cdp_conf_help_format_parse("man", &fmt, &f->err), -EINVAL);
	assert_string_equal(f->err.msg, "--help-config: 'man' is not one of: ini, markdown");
	assert_int_equal(fmt, CDP_CONF_HELP_MARKDOWN);
}

static void test_format_for_logs(void **state)
{
	static const struct {
		int64_t ns;
		const char *s;
	} d[] = {
		{ 0, "0s" }, { 850, "850ns" }, { 1500, "1.5us" }, { 150 * CDP_CONF_MSEC, "150ms" },
		{ 1234567, "1.23ms" }, { 2250 * CDP_CONF_MSEC, "2.25s" }, { 59999 * CDP_CONF_MSEC,
		  "59.99s" }, { 130 * CDP_CONF_SEC + 999, "2m10s" }, { CDP_CONF_MINUTE, "1m" },
		{ 3 * CDP_CONF_HOUR, "3h" }, { CDP_CONF_HOUR + 5 * CDP_CONF_MINUTE, "1h5m" },
		{ 15 * CDP_CONF_DAY + 2 * CDP_CONF_HOUR + 7 * CDP_CONF_SEC, "15d2h" },
		{ -2 * CDP_CONF_SEC, "-2s" }, { INT64_MIN, "-106751d23h" },
		{ INT64_MAX, "106751d23h" },
	};
	static const struct {
		uint64_t v;
		const char *bytes, *rate;
	} b[] = {
		{ 0, "0 B", "0 bit/s" }, { 512, "512 B", "512 bit/s" },
		{ 1023, "1023 B", "1.0 kbit/s" },
		{ 4096, "4.0 KiB", "4.1 kbit/s" }, { 256ull << 20, "256.0 MiB", "268.4 Mbit/s" },
		{ 3ull << 29, "1.5 GiB", "1.6 Gbit/s" },
		{ (1ull << 20) - 1, "1.0 MiB", "1.0 Mbit/s" },
		{ 300000000, "286.1 MiB", "300.0 Mbit/s" },
		{ UINT64_MAX, "16.0 EiB", "18.4 Ebit/s" },
	};
	char buf[CDP_FORMAT_MAX], small[4];

	for (size_t i = 0; i < CDP_ARRAY_SIZE(d); i++)
		assert_string_equal(cdp_format_duration(d[i].ns, buf, sizeof(buf)), d[i].s);
	for (size_t i = 0; i < CDP_ARRAY_SIZE(b); i++) {
		assert_string_equal(cdp_format_bytes(b[i].v, buf, sizeof(buf)), b[i].bytes);
		assert_string_equal(cdp_format_rate(b[i].v, buf, sizeof(buf)), b[i].rate);
	}
	assert_string_equal(cdp_format_duration(130 * CDP_CONF_SEC, small, sizeof(small)), "2m1");
	assert_string_equal(cdp_format_bytes(256ull << 20, small, sizeof(small)), "256");
}

/* A test that gets a fixture: a scratch directory and a config to fill. */
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_check_accepts_a_good_table),
		cmocka_unit_test(test_table_check_rejects_our_bugs),
		cmocka_unit_test(test_defaults_fill_every_type),
		cmocka_unit_test(test_parse_size_units),
		cmocka_unit_test(test_parse_duration_units),
		cmocka_unit_test(test_parse_rate_units),
		cmocka_unit_test(test_parse_bool_int_percent),
		T(test_load_reads_every_type),
		T(test_load_unknown_key_names_file_line_and_key),
		T(test_load_unknown_section_names_its_line),
		T(test_load_bad_value_per_type),
		T(test_load_out_of_bounds_names_min_and_max),
		T(test_load_overflow_and_trailing_junk),
		T(test_load_quotes_comments_and_line_ends),
		T(test_load_syntax_error_and_nul_byte),
		T(test_load_overlong_line_is_an_error_not_a_truncation),
		T(test_load_missing_file_is_fine_unless_required),
		T(test_load_unreadable_file_is_an_error),
		T(test_load_file_too_large),
		T(test_duplicate_key_in_one_file_is_an_error),
		T(test_confd_files_apply_in_name_order_and_override),
		T(test_confd_error_names_the_dropin),
		T(test_failed_load_leaves_config_unchanged),
		T(test_set_overrides_files),
		T(test_dump_reads_back_to_an_equal_config),
		T(test_help_lists_every_option_and_is_a_valid_file),
		cmocka_unit_test(test_format_for_logs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
