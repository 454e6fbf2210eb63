/*
 * common/config - see config.h.
 *
 * Design: a file is read whole (at most CDP_CONF_FILE_MAX bytes) and handed to
 * inih through our own line reader, not fgets, because inih on its own cuts a
 * long line at its buffer and parses the rest as a new line (with wrong line
 * numbers), treats an indented line as a continuation that sets the previous
 * key again, stops at a NUL byte, and ignores text after "[section]". The
 * reader counts lines (inih's handler gets no line number in the Debian build),
 * refuses long lines and NUL bytes, strips leading blanks (so there are no
 * continuation lines), and checks "[section]" lines. inih's globals (its
 * settings in the Debian build) are never written.
 *
 * A load parses into a scratch struct of the table's size and copies the
 * options into the caller's struct only once everything succeeded, so a failed
 * reload leaves the running config alone.
 *
 * Every byte that comes from a file and goes into a message passes through
 * show(), so a message never carries control characters into the log.
 */
#include "common/config.h"

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "common/buf.h"
#include "common/util.h"

typedef unsigned __int128 u128;

#define NAME_MAX_LEN 49		/* inih keeps 50 bytes of a section name */
#define SHOW_VALUE 64		/* bytes of a value quoted in a message */
#define SHOW_PATH 160		/* bytes of a path in a message */

/* ---- messages ---------------------------------------------------------- */

/*
 * Copies at most @max bytes of @s into @buf for a message: bytes below 0x20
 * and 0x7f become \xNN, and a longer string ends in "...". Returns @buf.
 */
static const char *show(const char *s, size_t max, char *buf, size_t size)
{
	size_t o = 0, i;

	for (i = 0; s[i] && i < max && o + 8 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f)
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
		else
			buf[o++] = (char)c;
	}
	if (s[i] && o + 4 <= size) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

#define SHOWBUF (SHOW_PATH * 4 + 8)

static const char *type_name(enum cdp_conf_type type)
{
	switch (type) {
	case CDP_CONF_STRING: return "string";
	case CDP_CONF_BOOL: return "bool";
	case CDP_CONF_INT: return "integer";
	case CDP_CONF_SIZE: return "size";
	case CDP_CONF_DURATION: return "duration";
	case CDP_CONF_RATE: return "rate";
	case CDP_CONF_PERCENT: return "percent";
	case CDP_CONF_ENUM: return "enum";
	}
	return "?";
}

static size_t type_storage(enum cdp_conf_type type)
{
	switch (type) {
	case CDP_CONF_STRING: return sizeof(char *);
	case CDP_CONF_BOOL: return sizeof(bool);
	case CDP_CONF_INT: return sizeof(int64_t);
	case CDP_CONF_SIZE: return sizeof(uint64_t);
	case CDP_CONF_DURATION: return sizeof(int64_t);
	case CDP_CONF_RATE: return sizeof(uint64_t);
	case CDP_CONF_PERCENT: return sizeof(int);
	case CDP_CONF_ENUM: return sizeof(int);
	}
	return 0;
}

/* "section.name", or "name" in section "". */
static const char *key_of(const struct cdp_conf_option *o, char *buf, size_t size)
{
	if (*o->section)
		snprintf(buf, size, "%s.%s", o->section, o->name);
	else
		snprintf(buf, size, "%s", o->name);
	return buf;
}

#define KEYBUF (2 * NAME_MAX_LEN + 8)

/* ---- numbers and units ------------------------------------------------- */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* A decimal number: ip + fp / 10^fdigits. */
struct num {
	uint64_t ip;
	uint64_t fp;
	int fdigits;
};

/*
 * Parses "[0-9]+(.[0-9]+)?" at *@p and advances it. Returns 0, -EINVAL when
 * there is no number there, -ERANGE when it has too many digits.
 */
static int parse_num(const char **p, struct num *n)
{
	const char *s = *p;

	if (!is_digit(*s))
		return -EINVAL;
	n->ip = 0;
	n->fp = 0;
	n->fdigits = 0;
	for (; is_digit(*s); s++)
		if (__builtin_mul_overflow(n->ip, 10, &n->ip) ||
		    __builtin_add_overflow(n->ip, (uint64_t)(*s - '0'), &n->ip))
			return -ERANGE;
	if (*s == '.') {
		s++;
		if (!is_digit(*s))
			return -EINVAL;
		for (; is_digit(*s); s++) {
			if (n->fdigits == 18)
				return -ERANGE;
			n->fp = n->fp * 10 + (uint64_t)(*s - '0');
			n->fdigits++;
		}
	}
	*p = s;
	return 0;
}

static bool num_is_zero(const struct num *n)
{
	return n->ip == 0 && n->fp == 0;
}

/* @n * @unit exactly: -EDOM if not a whole number, -ERANGE above INT64_MAX. */
static int scale(const struct num *n, uint64_t unit, u128 *out)
{
	u128 pow = 1, frac, v;

	for (int i = 0; i < n->fdigits; i++)
		pow *= 10;
	frac = (u128)n->fp * unit;
	if (frac % pow)
		return -EDOM;
	v = (u128)n->ip * unit + frac / pow;
	if (v > INT64_MAX)
		return -ERANGE;
	*out = v;
	return 0;
}

struct unit {
	const char *name;
	uint64_t mult;
};

#define KI UINT64_C(1024)
#define E3 UINT64_C(1000)
#define E6 UINT64_C(1000000)
#define E9 UINT64_C(1000000000)
#define E12 UINT64_C(1000000000000)
#define E15 UINT64_C(1000000000000000)
#define E18 UINT64_C(1000000000000000000)

static const struct unit size_units[] = {
	{ "B", 1 },
	{ "K", KI }, { "KiB", KI }, { "kB", E3 }, { "KB", E3 },
	{ "M", KI * KI }, { "MiB", KI * KI }, { "MB", E6 },
	{ "G", KI * KI * KI }, { "GiB", KI * KI * KI }, { "GB", E9 },
	{ "T", KI * KI * KI * KI }, { "TiB", KI * KI * KI * KI }, { "TB", E12 },
	{ "P", KI * KI * KI * KI * KI }, { "PiB", KI * KI * KI * KI * KI }, { "PB", E15 },
	{ "E", KI * KI * KI * KI * KI * KI }, { "EiB", KI * KI * KI * KI * KI * KI }, { "EB", E18 },
};

static const struct unit duration_units[] = {
	{ "ns", 1 }, { "us", E3 }, { "\xc2\xb5s", E3 }, { "ms", E6 }, { "s", E9 },
	{ "m", 60 * E9 }, { "min", 60 * E9 }, { "h", 3600 * E9 }, { "d", 86400 * E9 },
};

static const struct unit rate_units[] = {
	{ "bit", 1 }, { "bit/s", 1 }, { "bps", 1 },
	{ "kbit", E3 }, { "Kbit", E3 }, { "kbit/s", E3 }, { "Kbit/s", E3 },
	{ "kbps", E3 }, { "Kbps", E3 },
	{ "Mbit", E6 }, { "Mbit/s", E6 }, { "Mbps", E6 },
	{ "Gbit", E9 }, { "Gbit/s", E9 }, { "Gbps", E9 },
	{ "Tbit", E12 }, { "Tbit/s", E12 }, { "Tbps", E12 },
	{ "B/s", 8 }, { "kB/s", 8 * E3 }, { "KB/s", 8 * E3 }, { "MB/s", 8 * E6 },
	{ "GB/s", 8 * E9 }, { "TB/s", 8 * E12 },
	{ "KiB/s", 8 * KI }, { "MiB/s", 8 * KI * KI }, { "GiB/s", 8 * KI * KI * KI },
	{ "TiB/s", 8 * KI * KI * KI * KI },
};

static const struct unit *find_unit(const struct unit *u, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(u[i].name) == len && !memcmp(u[i].name, name, len))
			return &u[i];
	return NULL;
}

/* How a numeric type reads and what its messages say. */
struct scaled_kind {
	const char *what;	/* "size" */
	const char *example;	/* "256MiB" */
	const char *base;	/* "bytes" */
	const char *max;	/* "9223372036854775807 bytes" */
	const struct unit *units;
	size_t n_units;
	bool unit_required;	/* a bare number other than 0 is an error */
	bool sum;		/* "1h30m": a sum of parts */
};

static const struct scaled_kind size_kind = {
	"size", "256MiB", "bytes", "9223372036854775807 bytes",
	size_units, CDP_ARRAY_SIZE(size_units), false, false,
};
static const struct scaled_kind duration_kind = {
	"duration", "100ms, 2s, 2min or 1h30m", "nanoseconds", "about 292 years",
	duration_units, CDP_ARRAY_SIZE(duration_units), true, true,
};
static const struct scaled_kind rate_kind = {
	"rate", "300Mbit or 40MB/s", "bits per second", "9223372036854775807 bit/s",
	rate_units, CDP_ARRAY_SIZE(rate_units), true, false,
};

static int parse_scaled(const char *s, const struct scaled_kind *k, uint64_t *out,
			struct cdp_err *err)
{
	char shown[SHOWBUF];
	const char *p = s;
	u128 total = 0;
	int parts = 0;

	show(s, SHOW_VALUE, shown, sizeof(shown));
	if (*s == '-')
		return cdp_err_set(err, -EINVAL, "'%s' is negative; a %s is 0 or more", shown,
				   k->what);
	for (;;) {
		const struct unit *u;
		const char *unit, *end;
		struct num n;
		u128 v;
		int rc;

		rc = parse_num(&p, &n);
		if (rc == -ERANGE)
			return cdp_err_set(err, -EINVAL, "'%s' is too large for a %s (at most %s)",
					   shown, k->what, k->max);
		if (rc)
			break;
		end = p;
		while (is_blank(*p))
			p++;
		unit = p;
		while (*p && !is_blank(*p) && !is_digit(*p))
			p++;
		if (p == unit) {
			if (*p || parts || unit != end)	/* "1 2", "1h 30", "256 " */
				break;
			if (k->unit_required && !num_is_zero(&n))
				return cdp_err_set(err, -EINVAL, "'%s' has no unit (use e.g. %s)",
						   shown, k->example);
			u = &k->units[0];	/* the base unit */
		} else {
			u = find_unit(k->units, k->n_units, unit, (size_t)(p - unit));
			if (!u)
				break;
		}
		rc = scale(&n, u->mult, &v);
		if (rc == -EDOM)
			return cdp_err_set(err, -EINVAL, "'%s' is not a whole number of %s", shown,
					   k->base);
		if (rc == 0)
			total += v;
		if (rc == -ERANGE || total > INT64_MAX)
			return cdp_err_set(err, -EINVAL, "'%s' is too large for a %s (at most %s)",
					   shown, k->what, k->max);
		parts++;
		if (!*p) {
			*out = (uint64_t)total;
			return 0;
		}
		if (!k->sum)
			break;
		while (is_blank(*p))
			p++;
	}
	return cdp_err_set(err, -EINVAL, "'%s' is not a %s (use e.g. %s)", shown, k->what,
			   k->example);
}

int cdp_conf_parse_size(const char *s, uint64_t *bytes, struct cdp_err *err)
{
	return parse_scaled(s, &size_kind, bytes, err);
}

int cdp_conf_parse_duration(const char *s, int64_t *ns, struct cdp_err *err)
{
	uint64_t v;
	int rc = parse_scaled(s, &duration_kind, &v, err);

	if (!rc)
		*ns = (int64_t)v;
	return rc;
}

int cdp_conf_parse_rate(const char *s, uint64_t *bits_per_sec, struct cdp_err *err)
{
	return parse_scaled(s, &rate_kind, bits_per_sec, err);
}

int cdp_conf_parse_int(const char *s, int64_t *out, struct cdp_err *err)
{
	char shown[SHOWBUF];
	const char *p = s + (*s == '-');
	uint64_t mag = 0;

	show(s, SHOW_VALUE, shown, sizeof(shown));
	if (!is_digit(*p))
		return cdp_err_set(err, -EINVAL, "'%s' is not an integer", shown);
	for (; is_digit(*p); p++)
		if (__builtin_mul_overflow(mag, 10, &mag) ||
		    __builtin_add_overflow(mag, (uint64_t)(*p - '0'), &mag) ||
		    mag > (uint64_t)INT64_MAX + 1)
			return cdp_err_set(err, -EINVAL, "'%s' is out of range for an integer (%"
					   PRId64 " to %" PRId64 ")", shown, INT64_MIN,
					   INT64_MAX);
	if (*p)
		return cdp_err_set(err, -EINVAL, "'%s' is not an integer", shown);
	if (*s != '-' && mag > INT64_MAX)
		return cdp_err_set(err, -EINVAL, "'%s' is out of range for an integer (%" PRId64
				   " to %" PRId64 ")", shown, INT64_MIN, INT64_MAX);
	*out = *s == '-' ? (int64_t)(0 - mag) : (int64_t)mag;
	return 0;
}

int cdp_conf_parse_percent(const char *s, int *pct, struct cdp_err *err)
{
	char shown[SHOWBUF];
	const char *p = s;
	int v = 0;

	for (; is_digit(*p) && v <= 100; p++)
		v = v * 10 + (*p - '0');
	if (p > s && *p == '%')
		p++;
	if (p == s || !is_digit(*s) || *p || v > 100)
		return cdp_err_set(err, -EINVAL, "'%s' is not a percentage (0 to 100, e.g. 30%%)",
				   show(s, SHOW_VALUE, shown, sizeof(shown)));
	*pct = v;
	return 0;
}

int cdp_conf_parse_bool(const char *s, bool *out, struct cdp_err *err)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };
	char shown[SHOWBUF];

	for (size_t i = 0; i < CDP_ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcasecmp(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return cdp_err_set(err, -EINVAL, "'%s' is not a boolean (use yes or no)",
			   show(s, SHOW_VALUE, shown, sizeof(shown)));
}

/* ---- exact formatting (file syntax, parses back to the same value) ----- */

static const char *fmt_size_exact(uint64_t v, char *buf, size_t size)
{
	static const struct unit bin[] = {
		{ "EiB", KI * KI * KI * KI * KI * KI }, { "PiB", KI * KI * KI * KI * KI },
		{ "TiB", KI * KI * KI * KI }, { "GiB", KI * KI * KI }, { "MiB", KI * KI },
		{ "KiB", KI }, { "EB", E18 }, { "PB", E15 }, { "TB", E12 }, { "GB", E9 },
		{ "MB", E6 }, { "kB", E3 },
	};

	for (size_t i = 0; v && i < CDP_ARRAY_SIZE(bin); i++)
		if (v % bin[i].mult == 0) {
			snprintf(buf, size, "%" PRIu64 "%s", v / bin[i].mult, bin[i].name);
			return buf;
		}
	snprintf(buf, size, "%" PRIu64, v);
	return buf;
}

static const char *fmt_rate_exact(uint64_t v, char *buf, size_t size)
{
	static const struct unit dec[] = {
		{ "Tbit", E12 }, { "Gbit", E9 }, { "Mbit", E6 }, { "kbit", E3 }, { "bit", 1 },
	};

	if (!v) {
		snprintf(buf, size, "0");
		return buf;
	}
	for (size_t i = 0;; i++)
		if (v % dec[i].mult == 0) {
			snprintf(buf, size, "%" PRIu64 "%s", v / dec[i].mult, dec[i].name);
			return buf;
		}
}

/* Every nonzero part: "1d2h3m4s5ms6us7ns". */
static const char *fmt_duration_exact(int64_t ns, char *buf, size_t size)
{
	static const struct unit parts[] = {
		{ "d", 86400 * E9 }, { "h", 3600 * E9 }, { "m", 60 * E9 }, { "s", E9 },
		{ "ms", E6 }, { "us", E3 }, { "ns", 1 },
	};
	uint64_t v = (uint64_t)ns;
	size_t o = 0;

	if (ns <= 0) {
		snprintf(buf, size, ns ? "%" PRId64 "ns" : "0s", ns);
		return buf;
	}
	buf[0] = '\0';
	for (size_t i = 0; i < CDP_ARRAY_SIZE(parts) && o < size; i++) {
		uint64_t q = v / parts[i].mult;

		if (!q)
			continue;
		v -= q * parts[i].mult;
		o += (size_t)snprintf(buf + o, size - o, "%" PRIu64 "%s", q, parts[i].name);
	}
	return buf;
}

/* ---- values ------------------------------------------------------------ */

union value {
	char *s;
	bool b;
	int64_t i;
	uint64_t u;
	int e;
};

static void *field(const struct cdp_conf_option *o, void *cfg)
{
	return (char *)cfg + o->offset;
}

static const void *cfield(const struct cdp_conf_option *o, const void *cfg)
{
	return (const char *)cfg + o->offset;
}

/* A numeric option's value as int64_t (sizes and rates are <= INT64_MAX). */
static int64_t numeric(const struct cdp_conf_option *o, const union value *v)
{
	switch (o->type) {
	case CDP_CONF_INT:
	case CDP_CONF_DURATION:
		return v->i;
	case CDP_CONF_SIZE:
	case CDP_CONF_RATE:
		return (int64_t)v->u;
	case CDP_CONF_PERCENT:
		return v->e;
	default:
		return 0;
	}
}

static bool is_numeric(enum cdp_conf_type type)
{
	return type == CDP_CONF_INT || type == CDP_CONF_SIZE || type == CDP_CONF_DURATION ||
	       type == CDP_CONF_RATE || type == CDP_CONF_PERCENT;
}

/* The whole range of a numeric type. */
static void type_range(enum cdp_conf_type type, int64_t *min, int64_t *max)
{
	*min = type == CDP_CONF_INT ? INT64_MIN : 0;
	*max = type == CDP_CONF_PERCENT ? 100 : INT64_MAX;
}

/* The bounds that apply: the option's, or its type's whole range. */
static void bounds(const struct cdp_conf_option *o, int64_t *min, int64_t *max)
{
	if (o->min || o->max) {
		*min = o->min;
		*max = o->max;
	} else {
		type_range(o->type, min, max);
	}
}

static bool bounded(const struct cdp_conf_option *o)
{
	return o->min || o->max;
}

static const char *fmt_numeric(const struct cdp_conf_option *o, int64_t v, char *buf, size_t size)
{
	switch (o->type) {
	case CDP_CONF_SIZE:
		return fmt_size_exact((uint64_t)v, buf, size);
	case CDP_CONF_RATE:
		return fmt_rate_exact((uint64_t)v, buf, size);
	case CDP_CONF_DURATION:
		return fmt_duration_exact(v, buf, size);
	case CDP_CONF_PERCENT:
		snprintf(buf, size, "%" PRId64 "%%", v);
		return buf;
	default:
		snprintf(buf, size, "%" PRId64, v);
		return buf;
	}
}

static int check_bounds(const struct cdp_conf_option *o, int64_t v, const char *raw,
			struct cdp_err *err)
{
	char shown[SHOWBUF], lim[48];
	const char *off = o->flags & CDP_CONF_F_ZERO_OFF ? " (or 0 for off)" : "";
	int64_t min, max;

	bounds(o, &min, &max);
	if ((v == 0 && (o->flags & CDP_CONF_F_ZERO_OFF)) || (v >= min && v <= max))
		return 0;
	show(raw, SHOW_VALUE, shown, sizeof(shown));
	if (v < min)
		return cdp_err_set(err, -EINVAL, "'%s' is less than the minimum %s%s", shown,
				   fmt_numeric(o, min, lim, sizeof(lim)), off);
	return cdp_err_set(err, -EINVAL, "'%s' is more than the maximum %s", shown,
			   fmt_numeric(o, max, lim, sizeof(lim)));
}

/* Parses @raw for @o into @v (a new heap string for strings); 0 or -EINVAL. */
static int parse_value(const struct cdp_conf_option *o, const char *raw, union value *v,
		       struct cdp_err *err)
{
	char shown[SHOWBUF];
	int rc = 0;

	for (const char *p = raw; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return cdp_err_set(err, -EINVAL, "'%s' contains control character 0x%02x",
					   show(raw, SHOW_VALUE, shown, sizeof(shown)), c);
	}
	switch (o->type) {
	case CDP_CONF_STRING:
		v->s = cdp_xstrdup(raw);
		return 0;
	case CDP_CONF_BOOL:
		return cdp_conf_parse_bool(raw, &v->b, err);
	case CDP_CONF_ENUM:
		for (int i = 0; o->values[i]; i++)
			if (!strcmp(raw, o->values[i])) {
				v->e = i;
				return 0;
			}
		{
			char list[160];
			size_t n = 0;

			list[0] = '\0';
			for (int i = 0; o->values[i] && n < sizeof(list); i++)
				n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s",
						      i ? ", " : "", o->values[i]);
			return cdp_err_set(err, -EINVAL, "'%s' is not one of: %s",
					   show(raw, SHOW_VALUE, shown, sizeof(shown)), list);
		}
	case CDP_CONF_INT:
		rc = cdp_conf_parse_int(raw, &v->i, err);
		break;
	case CDP_CONF_SIZE:
		rc = cdp_conf_parse_size(raw, &v->u, err);
		break;
	case CDP_CONF_DURATION:
		rc = cdp_conf_parse_duration(raw, &v->i, err);
		break;
	case CDP_CONF_RATE:
		rc = cdp_conf_parse_rate(raw, &v->u, err);
		break;
	case CDP_CONF_PERCENT:
		rc = cdp_conf_parse_percent(raw, &v->e, err);
		break;
	}
	if (rc)
		return rc;
	return check_bounds(o, numeric(o, v), raw, err);
}

/* Stores @v into @cfg, freeing the string it replaces. */
static void store(const struct cdp_conf_option *o, void *cfg, const union value *v)
{
	void *f = field(o, cfg);

	switch (o->type) {
	case CDP_CONF_STRING:
		free(*(char **)f);
		*(char **)f = v->s;
		break;
	case CDP_CONF_BOOL:
		*(bool *)f = v->b;
		break;
	case CDP_CONF_INT:
	case CDP_CONF_DURATION:
		*(int64_t *)f = v->i;
		break;
	case CDP_CONF_SIZE:
	case CDP_CONF_RATE:
		*(uint64_t *)f = v->u;
		break;
	case CDP_CONF_PERCENT:
	case CDP_CONF_ENUM:
		*(int *)f = v->e;
		break;
	}
}

const char *cdp_conf_format_value(const struct cdp_conf_option *o, const void *cfg, char *buf,
				  size_t size)
{
	const void *f = cfield(o, cfg);

	switch (o->type) {
	case CDP_CONF_STRING:
		snprintf(buf, size, "%s", *(char *const *)f ? *(char *const *)f : "");
		return buf;
	case CDP_CONF_BOOL:
		snprintf(buf, size, "%s", *(const bool *)f ? "yes" : "no");
		return buf;
	case CDP_CONF_ENUM: {
		int e = *(const int *)f;
		int n = 0;

		while (o->values[n])
			n++;
		snprintf(buf, size, "%s", e >= 0 && e < n ? o->values[e] : "?");
		return buf;
	}
	case CDP_CONF_INT:
	case CDP_CONF_DURATION:
		return fmt_numeric(o, *(const int64_t *)f, buf, size);
	case CDP_CONF_SIZE:
	case CDP_CONF_RATE:
		return fmt_numeric(o, (int64_t)*(const uint64_t *)f, buf, size);
	case CDP_CONF_PERCENT:
		return fmt_numeric(o, *(const int *)f, buf, size);
	}
	return buf;
}

/* ---- the table ----------------------------------------------------------- */

static bool valid_name(const char *s, bool empty_ok)
{
	size_t n = strlen(s);

	if ((!n && !empty_ok) || n > NAME_MAX_LEN)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || is_digit(*s) || *s == '_'))
			return false;
	return true;
}

static bool has_section(const struct cdp_conf_table *t, const char *section)
{
	for (size_t i = 0; i < t->n_options; i++)
		if (!strcmp(t->options[i].section, section))
			return true;
	return false;
}

static const struct cdp_conf_option *find_opt(const struct cdp_conf_table *t,
					      const char *section, size_t section_len,
					      const char *name)
{
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];

		if (strlen(o->section) == section_len &&
		    !memcmp(o->section, section, section_len) && !strcmp(o->name, name))
			return o;
	}
	return NULL;
}

const struct cdp_conf_option *cdp_conf_find(const struct cdp_conf_table *t, const char *key)
{
	const char *dot = strchr(key, '.');

	if (!dot)
		return find_opt(t, "", 0, key);
	return find_opt(t, key, (size_t)(dot - key), dot + 1);
}

static int check_option(const struct cdp_conf_table *t, size_t idx, struct cdp_err *err)
{
	const struct cdp_conf_option *o = &t->options[idx];
	char key[KEYBUF];
	union value v;
	int rc;

	if (!o->section || !o->name || !valid_name(o->section, true) || !valid_name(o->name, false))
		return cdp_err_set(err, -EINVAL, "option %zu: name '%s.%s' is not [a-z0-9_]{1,%d}",
				   idx, o->section ? o->section : "(null)",
				   o->name ? o->name : "(null)", NAME_MAX_LEN);
	key_of(o, key, sizeof(key));
	if ((unsigned)o->type > CDP_CONF_ENUM)
		return cdp_err_set(err, -EINVAL, "option %s: unknown type %d", key, (int)o->type);
	if (o->size != type_storage(o->type))
		return cdp_err_set(err, -EINVAL, "option %s: field of %zu bytes for type %s "
				   "(want %zu)", key, o->size, type_name(o->type),
				   type_storage(o->type));
	if (o->offset > t->size || o->size > t->size - o->offset)
		return cdp_err_set(err, -EINVAL, "option %s: field at %zu+%zu is outside the %zu"
				   "-byte struct", key, o->offset, o->size, t->size);
	if (!o->help || !*o->help)
		return cdp_err_set(err, -EINVAL, "option %s: no help text", key);
	if (o->def && strchr(o->def, '`'))	/* a code span in the Markdown help */
		return cdp_err_set(err, -EINVAL, "option %s: a default with a backquote", key);
	if (o->flags & ~(CDP_CONF_F_ZERO_OFF | CDP_CONF_F_RESTART))
		return cdp_err_set(err, -EINVAL, "option %s: unknown flags 0x%x", key, o->flags);
	if ((o->flags & CDP_CONF_F_ZERO_OFF) && !is_numeric(o->type))
		return cdp_err_set(err, -EINVAL, "option %s: ZERO_OFF on a %s", key,
				   type_name(o->type));
	if ((o->type == CDP_CONF_ENUM) != (o->values != NULL))
		return cdp_err_set(err, -EINVAL, "option %s: values[] %s", key,
				   o->values ? "on a non-enum" : "missing");
	if (o->type == CDP_CONF_ENUM) {
		if (!o->values[0])
			return cdp_err_set(err, -EINVAL, "option %s: no enum values", key);
		for (int i = 0; o->values[i]; i++)
			for (int j = 0; j < i; j++)
				if (!*o->values[i] || !strcmp(o->values[i], o->values[j]))
					return cdp_err_set(err, -EINVAL, "option %s: enum value "
							   "'%s' empty or repeated", key,
							   o->values[i]);
	}
	if (bounded(o)) {
		int64_t lo, hi;

		if (!is_numeric(o->type))
			return cdp_err_set(err, -EINVAL, "option %s: bounds on a %s", key,
					   type_name(o->type));
		type_range(o->type, &lo, &hi);
		if (o->min > o->max || o->min < lo || o->max > hi)
			return cdp_err_set(err, -EINVAL, "option %s: bounds %" PRId64 "..%" PRId64
					   " not within %" PRId64 "..%" PRId64, key, o->min,
					   o->max, lo, hi);
	}
	if (!o->def && o->type != CDP_CONF_STRING)
		return cdp_err_set(err, -EINVAL, "option %s: no default", key);
	rc = parse_value(o, o->def ? o->def : "", &v, err);
	if (rc)
		return cdp_err_prefix(err, "option %s: default", key);
	if (o->type == CDP_CONF_STRING)
		free(v.s);
	for (size_t j = 0; j < idx; j++) {
		const struct cdp_conf_option *p = &t->options[j];

		if (!strcmp(p->section, o->section) && !strcmp(p->name, o->name))
			return cdp_err_set(err, -EINVAL, "option %s: declared twice", key);
		if (o->offset < p->offset + p->size && p->offset < o->offset + o->size)
			return cdp_err_set(err, -EINVAL, "option %s: field overlaps option %s.%s",
					   key, p->section, p->name);
	}
	return 0;
}

int cdp_conf_table_check(const struct cdp_conf_table *t, struct cdp_err *err)
{
	if (!t->prog || (t->n_options && !t->options) || !t->size)
		return cdp_err_set(err, -EINVAL, "table: prog, options or size missing");
	for (size_t i = 0; i < t->n_options; i++) {
		int rc = check_option(t, i, err);

		if (rc)
			return rc;
	}
	return 0;
}

static bool table_ok(const struct cdp_conf_table *t)
{
	struct cdp_err err;

	if (cdp_conf_table_check(t, &err)) {
		fprintf(stderr, "cdp_conf_table_check(%s): %s\n", t->prog ? t->prog : "?",
			err.msg);
		return false;
	}
	return true;
}

void cdp_conf_release(const struct cdp_conf_table *t, void *cfg)
{
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];

		if (o->type == CDP_CONF_STRING) {
			free(*(char **)field(o, cfg));
			*(char **)field(o, cfg) = NULL;
		}
	}
}

static void set_defaults(const struct cdp_conf_table *t, void *cfg)
{
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];
		union value v;
		int rc = parse_value(o, o->def ? o->def : "", &v, NULL);

		assert(rc == 0);	/* cdp_conf_table_check() parsed it */
		(void)rc;
		store(o, cfg, &v);
	}
}

void cdp_conf_defaults(const struct cdp_conf_table *t, void *cfg)
{
	assert(table_ok(t));
	set_defaults(t, cfg);
}

/* ---- suggestions --------------------------------------------------------- */

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Levenshtein distance ignoring case, of at most 64 bytes of each. */
static size_t distance(const char *a, const char *b)
{
	size_t la = CDP_MIN(strlen(a), (size_t)64), lb = CDP_MIN(strlen(b), (size_t)64);
	size_t row[65];

	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t cost = lower(a[i - 1]) != lower(b[j - 1]);

			row[j] = CDP_MIN(CDP_MIN(row[j] + 1, row[j - 1] + 1), diag + cost);
			diag = up;
		}
	}
	return row[lb];
}

static bool close_enough(const char *known, size_t d)
{
	return d <= CDP_MAX((size_t)2, strlen(known) / 4) && d < strlen(known);
}

/* " (did you mean 'cache.size'?)" for a mistyped key, or "". */
static const char *suggest_key(const struct cdp_conf_table *t, const char *key, char *buf,
			       size_t size)
{
	const struct cdp_conf_option *best = NULL;
	size_t best_d = SIZE_MAX;
	char k[KEYBUF];
	const char *name = strrchr(key, '.') ? strrchr(key, '.') + 1 : key;

	for (size_t i = 0; i < t->n_options; i++) {
		size_t d = distance(key, key_of(&t->options[i], k, sizeof(k)));

		if (d < best_d && close_enough(k, d)) {
			best = &t->options[i];
			best_d = d;
		}
	}
	for (size_t i = 0; !best && i < t->n_options; i++)
		if (!strcmp(t->options[i].name, name))
			best = &t->options[i];	/* the right key in the wrong section */
	buf[0] = '\0';
	if (best)
		snprintf(buf, size, " (did you mean '%s'?)", key_of(best, k, sizeof(k)));
	return buf;
}

static const char *suggest_section(const struct cdp_conf_table *t, const char *section, char *buf,
				   size_t size)
{
	const char *best = NULL;
	size_t best_d = SIZE_MAX;

	for (size_t i = 0; i < t->n_options; i++) {
		const char *s = t->options[i].section;
		size_t d = distance(section, s);

		if (*s && d < best_d && close_enough(s, d)) {
			best = s;
			best_d = d;
		}
	}
	buf[0] = '\0';
	if (best)
		snprintf(buf, size, " (did you mean [%s]?)", best);
	return buf;
}

/* "unknown key 'cache.sise'<where> (did you mean 'cache.size'?)" */
static int unknown_key(const struct cdp_conf_table *t, const char *key, const char *where,
		       struct cdp_err *err)
{
	char shown[SHOWBUF], hint[KEYBUF + 32];

	return cdp_err_set(err, -EINVAL, "unknown key '%s'%s%s", show(key, SHOW_VALUE, shown,
			   sizeof(shown)), where, suggest_key(t, key, hint, sizeof(hint)));
}

/* ---- loading --------------------------------------------------------------- */

struct loader {
	const struct cdp_conf_table *t;
	void *cfg;		/* the scratch config being filled */
	int *seen;		/* per option: the line that set it in this file, or 0 */
	struct cdp_err *err;
	const char *name;	/* the file, for messages (already shown()) */
	const char *data;	/* the file's bytes */
	size_t len, pos;
	int lineno;		/* of the line last handed to inih */
	int err_line;		/* of the first error we found, or 0 */
};

/* Sets the loader's error at @line: "file:line: <formatted>". Returns 0 for inih. */
static int fail_at(struct loader *l, int line, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail_at(struct loader *l, int line, int code, const char *fmt, ...)
{
	char msg[CDP_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cdp_err_set(l->err, code, "%s:%d: %s", l->name, line, msg);
	l->err_line = line;
	return 0;
}

/*
 * Checks a "[section]" line: the name must be in the table and only blanks or
 * a comment may follow. A line without ']' is left to inih (a syntax error).
 */
static bool check_section_line(struct loader *l, const char *s, size_t n)
{
	const char *rb = memchr(s, ']', n);
	char shown[SHOWBUF], hint[KEYBUF + 32], name[NAME_MAX_LEN + 2];
	size_t len;

	if (!rb)
		return true;
	len = (size_t)(rb - s - 1);
	for (const char *p = rb + 1; p < s + n; p++) {
		if (*p == ';' || *p == '#')
			break;
		if (!is_blank(*p) && *p != '\r' && *p != '\v' && *p != '\f') {
			char line[CDP_CONF_LINE_MAX + 2];

			memcpy(line, s, n);
			line[n] = '\0';
			fail_at(l, l->lineno, -EINVAL, "text after ']' in '%s'",
				show(line, SHOW_VALUE, shown, sizeof(shown)));
			return false;
		}
	}
	if (len == 0 || len > NAME_MAX_LEN) {
		char sec[CDP_CONF_LINE_MAX + 2];

		memcpy(sec, s + 1, len);
		sec[len] = '\0';
		fail_at(l, l->lineno, -EINVAL, "unknown section [%s]",
			show(sec, SHOW_VALUE, shown, sizeof(shown)));
		return false;
	}
	memcpy(name, s + 1, len);
	name[len] = '\0';
	if (!has_section(l->t, name)) {
		fail_at(l, l->lineno, -EINVAL, "unknown section [%s]%s",
			show(name, SHOW_VALUE, shown, sizeof(shown)),
			suggest_section(l->t, name, hint, sizeof(hint)));
		return false;
	}
	return true;
}

/* inih's ini_reader: hands over one line at a time; see the design note. */
static char *read_line(char *str, int num, void *stream)
{
	struct loader *l = stream;
	size_t limit = CDP_CONF_LINE_MAX, n, content;
	const char *s, *nl;

	if (l->err_line || l->pos >= l->len)
		return NULL;
	if (num < 4)
		return NULL;
	if ((size_t)num - 3 < limit)
		limit = (size_t)num - 3;
	s = l->data + l->pos;
	nl = memchr(s, '\n', l->len - l->pos);
	n = nl ? (size_t)(nl - s) : l->len - l->pos;
	l->pos += n + (nl != NULL);
	l->lineno++;
	content = n && s[n - 1] == '\r' ? n - 1 : n;
	if (memchr(s, '\0', n)) {
		fail_at(l, l->lineno, -EINVAL, "NUL byte at column %zu",
			(size_t)((const char *)memchr(s, '\0', n) - s) + 1);
		return NULL;
	}
	if (content > limit) {
		fail_at(l, l->lineno, -EINVAL, "line too long (%zu bytes, at most %zu)", content,
			limit);
		return NULL;
	}
	if (l->lineno == 1 && n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
		s += 3;
		n -= 3;
	}
	while (n && isspace((unsigned char)*s)) {
		s++;
		n--;
	}
	if (n && *s == '[' && !check_section_line(l, s, n))
		return NULL;
	memcpy(str, s, n);
	str[n] = '\0';
	return str;
}

/* inih's handler: one "key = value" of section @section. */
static int on_value(void *user, const char *section, const char *name, const char *value)
{
	struct loader *l = user;
	char shown[SHOWBUF], raw[CDP_CONF_LINE_MAX + NAME_MAX_LEN + 2], key[SHOWBUF];
	char buf[CDP_CONF_LINE_MAX + 2];
	const struct cdp_conf_option *o;
	size_t n = strlen(value);
	union value v;

	if (l->err_line)
		return 0;
	if (!*name)
		return fail_at(l, l->lineno, -EINVAL, "no key name before '='");
	snprintf(raw, sizeof(raw), "%s%s%s", section, *section ? "." : "", name);
	o = find_opt(l->t, section, strlen(section), name);
	if (!o) {
		unknown_key(l->t, raw, *section ? "" : " before any [section]", l->err);
		return fail_at(l, l->lineno, -EINVAL, "%s", l->err->msg);
	}
	show(raw, SHOW_VALUE, key, sizeof(key));
	if (l->seen[o - l->t->options])
		return fail_at(l, l->lineno, -EINVAL, "%s: already set on line %d (a key may be "
			       "set once per file)", key, l->seen[o - l->t->options]);
	assert(n < sizeof(buf));
	if (value[0] == '"') {
		if (n < 2 || value[n - 1] != '"')
			return fail_at(l, l->lineno, -EINVAL, "%s: '%s' has no closing '\"' (note "
				       "that a blank and ';' start a comment, even inside quotes)",
				       key, show(value, SHOW_VALUE, shown, sizeof(shown)));
		memcpy(buf, value + 1, n - 2);
		buf[n - 2] = '\0';
	} else {
		for (size_t i = 1; i < n; i++)
			if (value[i] == '#' && isspace((unsigned char)value[i - 1]))
				return fail_at(l, l->lineno, -EINVAL, "%s: '%s' has a '#' after a "
					       "blank: comments after a value start with ';' "
					       "(quote the value to keep the '#')", key,
					       show(value, SHOW_VALUE, shown, sizeof(shown)));
		memcpy(buf, value, n + 1);
	}
	if (parse_value(o, buf, &v, l->err))
		return fail_at(l, l->lineno, -EINVAL, "%s: %s", key, l->err->msg);
	store(o, l->cfg, &v);
	l->seen[o - l->t->options] = l->lineno;
	return 1;
}

/* The error for inih's syntax error at @line: quotes the line. */
static int syntax_error(struct loader *l, int line)
{
	char text[CDP_CONF_LINE_MAX + 2], shown[SHOWBUF];
	const char *s = l->data, *end = l->data + l->len, *nl;
	size_t n;

	for (int i = 1; i < line && s < end; i++) {
		nl = memchr(s, '\n', (size_t)(end - s));
		s = nl ? nl + 1 : end;
	}
	nl = memchr(s, '\n', (size_t)(end - s));
	n = CDP_MIN(nl ? (size_t)(nl - s) : (size_t)(end - s), sizeof(text) - 1);
	memcpy(text, s, n);
	text[n] = '\0';
	s = text;
	if (line == 1 && !memcmp(s, "\xef\xbb\xbf", 3))
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	while (n && isspace((unsigned char)text[n - 1]) && text + n > s)
		text[--n] = '\0';
	show(s, SHOW_VALUE, shown, sizeof(shown));
	if (*s == '[')
		fail_at(l, line, -EINVAL, "expected ']' to close the section name in '%s'", shown);
	else
		fail_at(l, line, -EINVAL, "expected 'key = value' or '[section]', found '%s'",
			shown);
	return l->err->code;
}

/* Applies one file's bytes to the scratch config. */
static int load_bytes(struct loader *l, const char *name, const char *data, size_t len)
{
	char shown[SHOWBUF];
	int ret;

	show(name, SHOW_PATH, shown, sizeof(shown));
	l->name = shown;
	l->data = data;
	l->len = len;
	l->pos = 0;
	l->lineno = 0;
	l->err_line = 0;
	memset(l->seen, 0, sizeof(*l->seen) * (l->t->n_options + 1));
	if (len > CDP_CONF_FILE_MAX)
		return cdp_err_set(l->err, -EINVAL, "%s: file too large (%zu bytes, at most %d)",
				   shown, len, CDP_CONF_FILE_MAX);
	ret = ini_parse_stream(read_line, l, on_value, l);
	if (ret < 0)
		return cdp_err_set(l->err, -ENOMEM, "%s: inih failed with %d", shown, ret);
	if (ret > 0 && (!l->err_line || ret < l->err_line))
		return syntax_error(l, ret);
	return l->err_line ? l->err->code : 0;
}

/*
 * Reads @path whole into @out. A missing file is *missing = true (and 0)
 * unless @required.
 */
static int read_file(const char *path, bool required, struct cdp_buf *out, bool *missing,
		     struct cdp_err *err)
{
	char shown[SHOWBUF];
	struct stat st;
	long n;
	int fd;

	*missing = false;
	show(path, SHOW_PATH, shown, sizeof(shown));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT && !required) {
			*missing = true;
			return 0;
		}
		return cdp_err_sys(err, -errno, "%s: cannot open", shown);
	}
	if (fstat(fd, &st) < 0) {
		int rc = cdp_err_sys(err, -errno, "%s: cannot stat", shown);

		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		if (S_ISDIR(st.st_mode))
			return cdp_err_set(err, -EISDIR, "%s: is a directory, not a config file",
					   shown);
		return cdp_err_set(err, -EINVAL, "%s: not a regular file", shown);
	}
	cdp_buf_reset(out);
	cdp_buf_reserve(out, CDP_CONF_FILE_MAX + 1);
	n = cdp_read_full(fd, out->data, CDP_CONF_FILE_MAX + 1);
	close(fd);
	if (n < 0)
		return cdp_err_sys(err, (int)n, "%s: cannot read", shown);
	out->len = (size_t)n;
	return 0;
}

static int load_path(struct loader *l, const char *path, bool required, struct cdp_buf *buf)
{
	bool missing;
	int rc = read_file(path, required, buf, &missing, l->err);

	if (rc || missing)
		return rc;
	return load_bytes(l, path, (const char *)buf->data, buf->len);
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The NAME.conf files of @dir, in byte order of NAME. A missing @dir is fine. */
static int load_dir(struct loader *l, const char *dir, struct cdp_buf *buf)
{
	char shown[SHOWBUF];
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	int rc = 0;
	DIR *d;

	d = opendir(dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;
		return cdp_err_sys(l->err, -errno, "%s: cannot open directory",
				   show(dir, SHOW_PATH, shown, sizeof(shown)));
	}
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);

		if (e->d_name[0] == '.' || len <= 5 || strcmp(e->d_name + len - 5, ".conf"))
			continue;
		names = cdp_xrealloc(names, (n + 1) * sizeof(*names));
		names[n++] = cdp_xstrdup(e->d_name);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n; i++) {
		char *path;

		if (!rc) {
			if (asprintf(&path, "%s/%s", dir, names[i]) < 0)
				abort();
			rc = load_path(l, path, true, buf);
			free(path);
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

/* Copies the scratch options into @cfg (taking its strings), freeing @cfg's old strings. */
static void commit(const struct cdp_conf_table *t, void *cfg, void *scratch)
{
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];

		if (o->type == CDP_CONF_STRING)
			free(*(char **)field(o, cfg));
		memcpy(field(o, cfg), field(o, scratch), o->size);
	}
}

static void loader_init(struct loader *l, const struct cdp_conf_table *t, struct cdp_err *err)
{
	memset(l, 0, sizeof(*l));
	l->t = t;
	l->err = err;
	l->cfg = cdp_xcalloc(1, t->size);
	l->seen = cdp_xcalloc(t->n_options + 1, sizeof(*l->seen));
	set_defaults(t, l->cfg);
}

static int loader_finish(struct loader *l, void *cfg, int rc)
{
	if (rc)
		cdp_conf_release(l->t, l->cfg);
	else
		commit(l->t, cfg, l->cfg);
	free(l->cfg);
	free(l->seen);
	return rc;
}

int cdp_conf_load(const struct cdp_conf_table *t, void *cfg, const char *path, const char *confd,
		  unsigned flags, struct cdp_err *err)
{
	struct cdp_buf buf = CDP_BUF_INIT;
	struct cdp_err local;
	struct loader l;
	char *dflt = NULL;
	int rc = 0;

	assert(table_ok(t));
	if (!err)
		err = &local;
	loader_init(&l, t, err);
	if (path)
		rc = load_path(&l, path, flags & CDP_CONF_REQUIRED, &buf);
	if (!confd && path) {
		if (asprintf(&dflt, "%s.d", path) < 0)
			abort();
		confd = dflt;
	}
	if (!rc && confd && *confd)
		rc = load_dir(&l, confd, &buf);
	free(dflt);
	cdp_buf_release(&buf);
	return loader_finish(&l, cfg, rc);
}

int cdp_conf_load_buffer(const struct cdp_conf_table *t, void *cfg, const char *name,
			 const char *data, size_t len, struct cdp_err *err)
{
	struct cdp_err local;
	struct loader l;

	assert(table_ok(t));
	if (!err)
		err = &local;
	loader_init(&l, t, err);
	return loader_finish(&l, cfg, load_bytes(&l, name, data, len));
}

int cdp_conf_set(const struct cdp_conf_table *t, void *cfg, const char *key, const char *value,
		 struct cdp_err *err)
{
	const struct cdp_conf_option *o = cdp_conf_find(t, key);
	char k[KEYBUF];
	union value v;

	if (!o)
		return unknown_key(t, key, "", err);
	if (parse_value(o, value, &v, err))
		return cdp_err_prefix(err, "%s", key_of(o, k, sizeof(k)));
	store(o, cfg, &v);
	return 0;
}

int cdp_conf_set_arg(const struct cdp_conf_table *t, void *cfg, const char *arg,
		     struct cdp_err *err)
{
	const char *eq = strchr(arg, '=');
	char shown[SHOWBUF], *key;
	int rc;

	if (!eq || eq == arg)
		return cdp_err_set(err, -EINVAL, "'%s' is not section.key=value",
				   show(arg, SHOW_VALUE, shown, sizeof(shown)));
	key = strndup(arg, (size_t)(eq - arg));
	if (!key)
		abort();
	rc = cdp_conf_set(t, cfg, key, eq + 1, err);
	free(key);
	return rc;
}

bool cdp_conf_equal(const struct cdp_conf_table *t, const void *a, const void *b,
		    const struct cdp_conf_option **diff)
{
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];
		bool same;

		if (o->type == CDP_CONF_STRING) {
			const char *x = *(char *const *)cfield(o, a);
			const char *y = *(char *const *)cfield(o, b);

			same = (!x || !y) ? x == y : !strcmp(x, y);
		} else if (o->type == CDP_CONF_BOOL) {
			same = *(const bool *)cfield(o, a) == *(const bool *)cfield(o, b);
		} else {
			same = !memcmp(cfield(o, a), cfield(o, b), o->size);
		}
		if (!same) {
			if (diff)
				*diff = o;
			return false;
		}
	}
	return true;
}

/* ---- printing -------------------------------------------------------------- */

/* Must a string be quoted to read back the same? */
static bool needs_quotes(const char *s)
{
	size_t n = strlen(s);

	if (!n || isspace((unsigned char)s[0]) || isspace((unsigned char)s[n - 1]) ||
	    s[0] == '"' || s[0] == ';')
		return true;
	for (size_t i = 1; i < n; i++)
		if ((s[i] == '#' || s[i] == ';') && isspace((unsigned char)s[i - 1]))
			return true;
	return false;
}

static void put_value(FILE *f, const char *prefix, const char *name, const char *value)
{
	const char *q = needs_quotes(value) ? "\"" : "";

	fprintf(f, "%s%s = %s%s%s\n", prefix, name, q, value, q);
}

/* Calls @fn for each section in order of first appearance, "" first. */
static void for_each_section(const struct cdp_conf_table *t,
			     void (*fn)(const struct cdp_conf_table *, const char *, void *),
			     void *arg)
{
	if (has_section(t, ""))
		fn(t, "", arg);
	for (size_t i = 0; i < t->n_options; i++) {
		const char *s = t->options[i].section;
		bool first = *s != '\0';

		for (size_t j = 0; first && j < i; j++)
			if (!strcmp(t->options[j].section, s))
				first = false;
		if (first)
			fn(t, s, arg);
	}
}

struct dump_arg {
	FILE *f;
	const void *cfg;
};

static void dump_section(const struct cdp_conf_table *t, const char *section, void *arg)
{
	struct dump_arg *a = arg;

	if (*section)
		fprintf(a->f, "\n[%s]\n", section);
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];
		char val[64];

		if (strcmp(o->section, section))
			continue;
		if (o->type == CDP_CONF_STRING) {
			const char *s = *(char *const *)cfield(o, a->cfg);

			put_value(a->f, "", o->name, s ? s : "");
		} else {
			put_value(a->f, "", o->name, cdp_conf_format_value(o, a->cfg, val,
									    sizeof(val)));
		}
	}
}

void cdp_conf_dump(const struct cdp_conf_table *t, const void *cfg, FILE *f)
{
	struct dump_arg a = { f, cfg };

	fprintf(f, "# %s: effective configuration\n", t->prog);
	for_each_section(t, dump_section, &a);
}

/*
 * "size, 16MiB to 64GiB, or 0 for off; a reload does not apply it (restart)";
 * without @with_type only what follows the type (maybe "").
 */
static const char *describe(const struct cdp_conf_option *o, bool with_type, char *buf,
			    size_t size)
{
	char lo[48], hi[48];
	const char *sep = with_type ? ", " : "";
	size_t n = 0;

	buf[0] = '\0';
	if (with_type)
		n = (size_t)snprintf(buf, size, "%s", type_name(o->type));
	if (o->type == CDP_CONF_ENUM) {
		for (int i = 0; o->values[i] && n < size; i++)
			n += (size_t)snprintf(buf + n, size - n, "%s%s",
					      i ? " | " : with_type ? ": " : "one of ",
					      o->values[i]);
		sep = ", ";
	}
	if (bounded(o) && n < size) {
		n += (size_t)snprintf(buf + n, size - n, "%s%s%s to %s", sep, n ? "" : "from ",
				      fmt_numeric(o, o->min, lo, sizeof(lo)),
				      fmt_numeric(o, o->max, hi, sizeof(hi)));
		sep = ", ";
	}
	if ((o->flags & CDP_CONF_F_ZERO_OFF) && n < size)
		n += (size_t)snprintf(buf + n, size - n, "%sor 0 for off", sep);
	if ((o->flags & CDP_CONF_F_RESTART) && n < size)
		snprintf(buf + n, size - n, "%sa reload does not apply it (restart)",
			 n ? "; " : "");
	return buf;
}

/* Writes @text word-wrapped to @width columns, each line starting with @prefix. */
static void wrap(FILE *f, const char *prefix, const char *text, size_t width,
		 void (*put)(FILE *, const char *, size_t))
{
	const char *p = text;

	while (*p) {
		size_t col = strlen(prefix), n = 0, last = 0;

		while (*p == ' ')
			p++;
		if (!*p)
			break;
		while (p[n] && (col + n < width || !last)) {
			if (p[n] == ' ')
				last = n;
			n++;
		}
		if (p[n] && last)
			n = last;
		fputs(prefix, f);
		put(f, p, n);
		fputc('\n', f);
		p += n;
	}
}

static void put_plain(FILE *f, const char *s, size_t n)
{
	fwrite(s, 1, n, f);
}

/* Markdown: escape what would format (emphasis, code, links, HTML, tables). */
static void put_md(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] && strchr("\\*_`[]<>|#", s[i]))
			fputc('\\', f);
		fputc(s[i], f);
	}
}

struct help_arg {
	FILE *f;
	enum cdp_conf_help_format fmt;
};

static void help_ini(const struct cdp_conf_table *t, const char *section, void *arg)
{
	struct help_arg *a = arg;

	if (*section)
		fprintf(a->f, "\n[%s]\n", section);
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];
		char what[256];

		if (strcmp(o->section, section))
			continue;
		fputc('\n', a->f);
		wrap(a->f, "# ", o->help, 78, put_plain);
		wrap(a->f, "# ", describe(o, true, what, sizeof(what)), 78, put_plain);
		put_value(a->f, "#", o->name, o->def ? o->def : "");
	}
}

/*
 * One bullet per option: name, default, type and bounds, then the help, as
 * one paragraph wrapped to 78 columns. Names and defaults are code spans:
 * cdp_conf_table_check() lets neither hold a backquote.
 */
static void help_markdown(const struct cdp_conf_table *t, const char *section, void *arg)
{
	struct help_arg *a = arg;

	if (*section)
		fprintf(a->f, "\n### `[%s]`\n\n", section);
	else
		fputs("\n### Before the first section\n\n", a->f);
	for (size_t i = 0; i < t->n_options; i++) {
		const struct cdp_conf_option *o = &t->options[i];
		const char *def = o->def ? o->def : "";
		char what[256];

		if (strcmp(o->section, section))
			continue;
		fprintf(a->f, "- **`%s`** = `%s`%s:\n", o->name, *def ? def : "\"\"",
			*def ? "" : " (empty)");
		describe(o, true, what, sizeof(what));
		strncat(what, ".", sizeof(what) - strlen(what) - 1);
		wrap(a->f, "  ", what, 78, put_md);
		wrap(a->f, "  ", o->help, 78, put_md);
	}
}

int cdp_conf_help_format_parse(const char *s, enum cdp_conf_help_format *fmt,
			       struct cdp_err *err)
{
	if (!s || !strcmp(s, "ini"))
		*fmt = CDP_CONF_HELP_INI;
	else if (!strcmp(s, "markdown"))
		*fmt = CDP_CONF_HELP_MARKDOWN;
	else
		return cdp_err_set(err, -EINVAL, "--help-config: '%s' is not one of: ini, markdown",
				   s);
	return 0;
}

int cdp_conf_help_command(const struct cdp_conf_table *t, const char *format)
{
	struct cdp_err err = CDP_ERR_INIT;
	enum cdp_conf_help_format fmt;

	if (cdp_conf_help_format_parse(format, &fmt, &err)) {
		fprintf(stderr, "%s: %s\n", t->prog, err.msg);
		return 2;
	}
	cdp_conf_print_help(t, stdout, fmt);
	return fflush(stdout) ? 1 : 0;
}

void cdp_conf_print_help(const struct cdp_conf_table *t, FILE *f, enum cdp_conf_help_format fmt)
{
	struct help_arg a = { f, fmt };

	if (fmt == CDP_CONF_HELP_MARKDOWN) {
		fprintf(f, "<!-- %s --help-config=markdown -->\n", t->prog);
		for_each_section(t, help_markdown, &a);
		return;
	}
	fprintf(f, "# %s configuration: every option, commented out, with its default.\n"
		"# Syntax and units: docs/configuration.md or cdp.conf(5).\n", t->prog);
	for_each_section(t, help_ini, &a);
}

/* ---- human formatting for logs --------------------------------------------- */

/* "12", "1.5", "2.25": @v / @unit with up to two decimals, truncated. */
static const char *frac2(uint64_t v, uint64_t unit, const char *name, char *buf, size_t size)
{
	uint64_t ip = v / unit, hund = (v % unit) / (unit / 100);

	if (!hund)
		snprintf(buf, size, "%" PRIu64 "%s", ip, name);
	else if (hund % 10 == 0)
		snprintf(buf, size, "%" PRIu64 ".%" PRIu64 "%s", ip, hund / 10, name);
	else
		snprintf(buf, size, "%" PRIu64 ".%02" PRIu64 "%s", ip, hund, name);
	return buf;
}

const char *cdp_format_duration(int64_t ns, char *buf, size_t size)
{
	static const struct unit big[] = {
		{ "d", 86400 * E9 }, { "h", 3600 * E9 }, { "m", 60 * E9 }, { "s", E9 },
	};
	char tmp[CDP_FORMAT_MAX];
	uint64_t v = ns < 0 ? 0 - (uint64_t)ns : (uint64_t)ns;
	const char *sign = ns < 0 ? "-" : "";

	if (!size)
		return buf;
	if (v < E3)
		snprintf(tmp, sizeof(tmp), "%" PRIu64 "%s", v, v ? "ns" : "s");
	else if (v < E6)
		frac2(v, E3, "us", tmp, sizeof(tmp));
	else if (v < E9)
		frac2(v, E6, "ms", tmp, sizeof(tmp));
	else if (v < 60 * E9)
		frac2(v, E9, "s", tmp, sizeof(tmp));
	else {
		size_t i = 0;

		while (v < big[i].mult)
			i++;
		uint64_t q = v / big[i].mult, r = (v % big[i].mult) / big[i + 1].mult;

		if (r)
			snprintf(tmp, sizeof(tmp), "%" PRIu64 "%s%" PRIu64 "%s", q, big[i].name, r,
				 big[i + 1].name);
		else
			snprintf(tmp, sizeof(tmp), "%" PRIu64 "%s", q, big[i].name);
	}
	snprintf(buf, size, "%s%s", sign, tmp);
	return buf;
}

/* @v in the largest of @units (each @step times the last) it reaches, one decimal, rounded. */
static const char *human(uint64_t v, uint64_t step, const char *const *units, size_t n,
			 char *buf, size_t size)
{
	uint64_t unit = 1, whole, tenths;
	size_t i = 0;

	while (i + 1 < n && v / unit >= step) {
		unit *= step;
		i++;
	}
	if (i == 0) {
		snprintf(buf, size, "%" PRIu64 " %s", v, units[0]);
		return buf;
	}
	whole = v / unit;
	tenths = ((v % unit) * 10 + unit / 2) / unit;
	if (tenths == 10) {
		whole++;
		tenths = 0;
	}
	if (whole == step && i + 1 < n) {
		whole = 1;
		i++;
	}
	snprintf(buf, size, "%" PRIu64 ".%" PRIu64 " %s", whole, tenths, units[i]);
	return buf;
}

const char *cdp_format_bytes(uint64_t bytes, char *buf, size_t size)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };

	return human(bytes, 1024, units, CDP_ARRAY_SIZE(units), buf, size);
}

const char *cdp_format_rate(uint64_t bits_per_sec, char *buf, size_t size)
{
	static const char *const units[] = {
		"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s", "Pbit/s", "Ebit/s",
	};

	return human(bits_per_sec, 1000, units, CDP_ARRAY_SIZE(units), buf, size);
}
