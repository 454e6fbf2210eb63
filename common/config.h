/*
 * common/config - config files, driven by one option table per daemon.
 *
 * Each option is declared once, in its daemon's table (section, name, type,
 * default, bounds, help, and the field of the daemon's config struct it fills);
 * that table drives parsing, validation, defaults, the effective-config dump,
 * --help-config and the man page (Redis's config.c idea). A daemon:
 *
 *	struct agent_conf { uint64_t cache_size; int64_t point_interval; char *spill_dir; };
 *	static const struct cdp_conf_option agent_options[] = {
 *		{ "cache", "size", CDP_CONF_SIZE_AT(struct agent_conf, cache_size),
 *		  .def = "256MiB", .min = 16 * CDP_CONF_MIB, .max = 64 * CDP_CONF_GIB,
 *		  .help = "Memory for segments the journal server has not acknowledged." },
 *		...
 *	};
 *	static const struct cdp_conf_table agent_conf_table =
 *		CDP_CONF_TABLE("cdp-agent", agent_options, struct agent_conf);
 *
 *	struct agent_conf cfg = { 0 };
 *	rc = cdp_conf_load(&agent_conf_table, &cfg, "/etc/cdp/agent.conf", NULL,
 *			   config_flag_given ? CDP_CONF_REQUIRED : 0, &err);
 *	then cdp_conf_set() for each command-line override; cdp_conf_release() at exit.
 *
 * Files (docs/configuration.md has the operator's version): the main file, then
 * the NAME.conf files of "<main file>.d/" in byte order of NAME; a later file
 * overrides a key set by an earlier one, a key set twice in one file is an
 * error. Then command-line overrides (cdp_conf_set), which win over every
 * file. A missing main file is fine (defaults) unless CDP_CONF_REQUIRED.
 *
 * Syntax: inih's INI ([section], "key = value", comments on their own line
 * with ';' or '#', inline comments after whitespace + ';'), made strict:
 * unknown sections and keys, junk after "[section]", unquoted " #" in a value,
 * control characters, NUL bytes and lines longer than CDP_CONF_LINE_MAX are
 * errors (inih would truncate them silently); there are no continuation lines
 * (an indented line is an ordinary line). A value may be enclosed in double
 * quotes, which are removed (no escapes inside); that keeps leading or trailing
 * blanks and a " #". Keys and sections are case-sensitive.
 *
 * Errors name the file, the line and the key, with what was expected:
 *	/etc/cdp/agent.conf:12: unknown key 'cache.sise' (did you mean 'cache.size'?)
 *	/etc/cdp/agent.conf:7: cache.size: '256Mx' is not a size (use e.g. 256MiB)
 * Codes: -EINVAL for anything in a file's content, a bad value or unknown key;
 * a file that cannot be read passes its errno through (-ENOENT only when
 * CDP_CONF_REQUIRED, -EACCES, -ENOTDIR, -EISDIR, -EIO, ...).
 *
 * Units, all exact (a value that is not a whole number of the base unit is an
 * error) and overflow-checked; numbers may have a decimal fraction ("1.5GiB"):
 *	size     bytes. B or no unit; K KiB M MiB G GiB T TiB P PiB E EiB (x1024);
 *	         kB KB MB GB TB PB EB (x1000). At most INT64_MAX bytes.
 *	duration nanoseconds. ns us µs ms s m min h d, and sums of them ("1h30m",
 *	         "2m 10s"). A number without a unit is an error, except "0".
 *	rate     bits per second. bit kbit Mbit Gbit Tbit (x1000, optional "/s"),
 *	         bps kbps Mbps Gbps Tbps; bytes per second B/s kB/s KB/s MB/s GB/s
 *	         TB/s KiB/s MiB/s GiB/s TiB/s (x8). No unit is an error, except "0".
 *	bool     yes/no, true/false, on/off, 1/0 (any case).
 *	int      decimal, optional '-'.   percent: 0..100, optional '%'.
 *	enum     one of the option's values (exact case).
 *
 * Ownership: string fields are heap strings owned by the config struct and are
 * never NULL once defaults are in; every other field is a plain value.
 * Threads: no global state (inih's settings are only read). A config struct is
 * written by one thread, then read-only; to reload (SIGHUP), load a fresh
 * struct, re-apply the command-line overrides, and swap it in on success.
 */
#ifndef CDP_COMMON_CONFIG_H
#define CDP_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

/* Handy for bounds in tables; sizes in bytes, rates in bit/s, durations in ns. */
#define CDP_CONF_KIB (INT64_C(1) << 10)
#define CDP_CONF_MIB (INT64_C(1) << 20)
#define CDP_CONF_GIB (INT64_C(1) << 30)
#define CDP_CONF_TIB (INT64_C(1) << 40)
#define CDP_CONF_KBIT INT64_C(1000)
#define CDP_CONF_MBIT INT64_C(1000000)
#define CDP_CONF_GBIT INT64_C(1000000000)
#define CDP_CONF_MSEC INT64_C(1000000)
#define CDP_CONF_SEC INT64_C(1000000000)
#define CDP_CONF_MINUTE (60 * CDP_CONF_SEC)
#define CDP_CONF_HOUR (60 * CDP_CONF_MINUTE)
#define CDP_CONF_DAY (24 * CDP_CONF_HOUR)

/*
 * Longest line accepted, in bytes without the line end. inih reads lines into
 * a fixed buffer (200 bytes on Debian 12, 3 of them for "\r\n\0"); a longer
 * line is reported, never cut. If inih's buffer is smaller, its limit applies.
 */
#define CDP_CONF_LINE_MAX 197
/* Largest config file read (bytes). */
#define CDP_CONF_FILE_MAX (1024 * 1024)

enum cdp_conf_type {
	CDP_CONF_STRING,	/* char *: heap, owned by the config, never NULL */
	CDP_CONF_BOOL,		/* bool */
	CDP_CONF_INT,		/* int64_t */
	CDP_CONF_SIZE,		/* uint64_t: bytes, <= INT64_MAX */
	CDP_CONF_DURATION,	/* int64_t: nanoseconds, >= 0 */
	CDP_CONF_RATE,		/* uint64_t: bits per second, <= INT64_MAX */
	CDP_CONF_PERCENT,	/* int: 0..100 */
	CDP_CONF_ENUM,		/* int: index into the option's values[] */
};

/* Option flags. */
#define CDP_CONF_F_ZERO_OFF 0x1u	/* 0 means off/unlimited: allowed below min */
#define CDP_CONF_F_RESTART 0x2u		/* a reload does not apply it (help says so) */

struct cdp_conf_option {
	const char *section;	/* "cache"; "" for keys before any [section] */
	const char *name;	/* "size": [a-z0-9_], as is the section */
	enum cdp_conf_type type;
	size_t offset;		/* of the field in the config struct... */
	size_t size;		/* ...and its size: set both with CDP_CONF_*_AT() */
	const char *def;	/* default in file syntax; NULL is "" (strings only) */
	int64_t min, max;	/* bounds in base units; both 0: the type's whole range */
	const char *const *values;	/* CDP_CONF_ENUM: the names, NULL-terminated */
	unsigned flags;		/* CDP_CONF_F_* */
	const char *help;	/* sentences for --help-config and the man page */
};

/*
 * Type and field of an option in one go. The field's C type is checked at
 * compile time (_Generic has no default), so a size cannot land in an int.
 */
#define CDP_CONF_FIELD_(T, field, ctype) \
	.offset = offsetof(T, field), .size = _Generic(((T *)0)->field, ctype: sizeof(ctype))
#define CDP_CONF_STRING_AT(T, f) .type = CDP_CONF_STRING, CDP_CONF_FIELD_(T, f, char *)
#define CDP_CONF_BOOL_AT(T, f) .type = CDP_CONF_BOOL, CDP_CONF_FIELD_(T, f, bool)
#define CDP_CONF_INT_AT(T, f) .type = CDP_CONF_INT, CDP_CONF_FIELD_(T, f, int64_t)
#define CDP_CONF_SIZE_AT(T, f) .type = CDP_CONF_SIZE, CDP_CONF_FIELD_(T, f, uint64_t)
#define CDP_CONF_DURATION_AT(T, f) .type = CDP_CONF_DURATION, CDP_CONF_FIELD_(T, f, int64_t)
#define CDP_CONF_RATE_AT(T, f) .type = CDP_CONF_RATE, CDP_CONF_FIELD_(T, f, uint64_t)
#define CDP_CONF_PERCENT_AT(T, f) .type = CDP_CONF_PERCENT, CDP_CONF_FIELD_(T, f, int)
#define CDP_CONF_ENUM_AT(T, f, vals) \
	.type = CDP_CONF_ENUM, CDP_CONF_FIELD_(T, f, int), .values = (vals)

/* One daemon's options and the struct they fill. */
struct cdp_conf_table {
	const char *prog;	/* "cdp-agent", for --help-config */
	const struct cdp_conf_option *options;
	size_t n_options;
	size_t size;		/* sizeof the config struct */
};

#define CDP_CONF_TABLE(prog, options, T) \
	{ (prog), (options), sizeof(options) / sizeof((options)[0]), sizeof(T) }

/*
 * Checks a table: names well-formed and unique, fields inside the struct with
 * the size of their type, defaults parse and lie within bounds, enums have
 * values, help present. Our own bug if it fails: every daemon's unit test
 * calls it, and the functions below assert it.
 */
int cdp_conf_table_check(const struct cdp_conf_table *t, struct cdp_err *err);

/*
 * Fills every option of @cfg with its default. @cfg must be zero-filled or
 * hold a config from this module (its strings are freed first).
 */
void cdp_conf_defaults(const struct cdp_conf_table *t, void *cfg);

/* Frees @cfg's strings (and NULLs them). Safe to call twice; other fields stay. */
void cdp_conf_release(const struct cdp_conf_table *t, void *cfg);

#define CDP_CONF_REQUIRED 0x1u	/* the main file must exist (it was named by --config) */

/*
 * Loads defaults, then @path (may be NULL: none), then the "*.conf" files of
 * @confd in byte order of their names (NULL: "<path>.d"; "": none; a missing
 * directory is fine). All or nothing: on success @cfg's options are replaced
 * (old strings freed, fields outside the table untouched); on failure @cfg is
 * unchanged and @err names file:line and key. @cfg as for cdp_conf_defaults().
 */
int cdp_conf_load(const struct cdp_conf_table *t, void *cfg, const char *path, const char *confd,
		  unsigned flags, struct cdp_err *err);

/*
 * cdp_conf_load() of defaults plus one in-memory file of @len bytes (NUL bytes
 * in it are errors); @name stands for the file in messages. Borrows @data.
 */
int cdp_conf_load_buffer(const struct cdp_conf_table *t, void *cfg, const char *name,
			 const char *data, size_t len, struct cdp_err *err);

/*
 * Sets one option of @cfg from the command line: @key is "section.name" (or
 * "name" in section ""), @value is taken verbatim (no quote removal). Parsed
 * and checked as in a file; @cfg is unchanged on failure. Errors read
 * "cache.size: '1x' is not a size (use e.g. 256MiB)"; callers prefix the flag.
 */
int cdp_conf_set(const struct cdp_conf_table *t, void *cfg, const char *key, const char *value,
		 struct cdp_err *err);

/* cdp_conf_set() of "section.name=value" (a -o/--set argument); "=" is required. */
int cdp_conf_set_arg(const struct cdp_conf_table *t, void *cfg, const char *arg,
		     struct cdp_err *err);

/* The option named "section.name" (or "name" in section ""), or NULL. */
const struct cdp_conf_option *cdp_conf_find(const struct cdp_conf_table *t, const char *key);

/*
 * Formats @opt's value in @cfg in file syntax ("256MiB", "1h30m", "300Mbit",
 * "yes", the enum name, the string itself), exact, so it parses back to the
 * same value. Truncates to @size; returns @buf.
 */
const char *cdp_conf_format_value(const struct cdp_conf_option *opt, const void *cfg, char *buf,
				  size_t size);

/*
 * Writes @cfg as a config file (every option, "[section]" headers), which
 * cdp_conf_load() reads back to an equal config: for --print-config and the
 * start-up log. Strings are quoted where needed; a string containing a blank
 * followed by ';' (possible only from the command line) cannot be written
 * back and is written quoted anyway.
 */
void cdp_conf_dump(const struct cdp_conf_table *t, const void *cfg, FILE *f);

/* True if every option of @a and @b is equal; else false and *@diff (if not NULL) is the first. */
bool cdp_conf_equal(const struct cdp_conf_table *t, const void *a, const void *b,
		    const struct cdp_conf_option **diff);

enum cdp_conf_help_format {
	CDP_CONF_HELP_INI,	/* a commented sample config file: --help-config */
	CDP_CONF_HELP_MARKDOWN,	/* the option list in docs/configuration.md */
};

/*
 * Prints every option, grouped by section in table order: type, default,
 * bounds, flags and help. The INI form is itself a valid config file (every
 * option commented out), so it can ship as the sample /etc/cdp/X.conf.
 */
void cdp_conf_print_help(const struct cdp_conf_table *t, FILE *f, enum cdp_conf_help_format fmt);

/* --help-config's argument: NULL or "ini", "markdown"; else -EINVAL naming it. */
int cdp_conf_help_format_parse(const char *s, enum cdp_conf_help_format *fmt,
			       struct cdp_err *err);

/*
 * A daemon's --help-config[=FORMAT]: prints the help in @format (NULL: ini)
 * to stdout and returns 0, or "PROG: --help-config: ..." to stderr and 2.
 */
int cdp_conf_help_command(const struct cdp_conf_table *t, const char *format);

/*
 * The unit parsers, on a whole string (no surrounding blanks; see the units
 * above). Each returns 0 or -EINVAL with a message such as
 * "'256Mx' is not a size (use e.g. 256MiB)"; *@out is written only on success.
 */
int cdp_conf_parse_bool(const char *s, bool *out, struct cdp_err *err);
int cdp_conf_parse_int(const char *s, int64_t *out, struct cdp_err *err);
int cdp_conf_parse_size(const char *s, uint64_t *bytes, struct cdp_err *err);
int cdp_conf_parse_duration(const char *s, int64_t *ns, struct cdp_err *err);
int cdp_conf_parse_rate(const char *s, uint64_t *bits_per_sec, struct cdp_err *err);
int cdp_conf_parse_percent(const char *s, int *pct, struct cdp_err *err);

/*
 * Human formatting for logs, approximate, not meant to be parsed back:
 *	duration: "0s", "850ns", "1.5us", "150ms", "2.25s", "2m10s", "3h", "15d2h"
 *	          (two largest units from a minute up, truncated; '-' if negative)
 *	bytes:    "512 B", "4.0 KiB", "256.0 MiB", "1.5 GiB" (binary units, rounded)
 *	rate:     "0 bit/s", "300.0 Mbit/s", "1.2 Gbit/s" (decimal units, rounded)
 * CDP_FORMAT_MAX bytes are always enough. They truncate to @size and return @buf.
 */
#define CDP_FORMAT_MAX 32
const char *cdp_format_duration(int64_t ns, char *buf, size_t size);
const char *cdp_format_bytes(uint64_t bytes, char *buf, size_t size);
const char *cdp_format_rate(uint64_t bits_per_sec, char *buf, size_t size);

#endif
