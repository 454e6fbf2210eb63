/*
 * tests/unit/nbd_serve - serves one file or block device over NBD through
 * capture/export_file and capture/nbd, for the interop tests with real
 * clients (tests/integration/test-nbd.sh):
 *
 *   nbd_serve --listen unix:/path|HOST:PORT [--name N] [--read-only]
 *             [--max-connections N] [--max-inflight N] [--handshake-timeout-ms N]
 *             [--debug] FILE
 *
 * Prints "ready port=N" (0 on a unix socket) on stdout once listening, and
 * stops cleanly (exit 0) on SIGTERM or SIGINT, which arrive through a
 * signalfd; every thread starts with them blocked.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "capture/export.h"
#include "capture/nbd.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

static void usage(void)
{
	fprintf(stderr, "usage: nbd_serve --listen unix:/path|HOST:PORT [--name N] [--read-only]\n"
			"                 [--max-connections N] [--max-inflight N]\n"
			"                 [--handshake-timeout-ms N] [--debug] FILE\n");
	exit(2);
}

static unsigned parse_uint(const char *opt, const char *v)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, 10);
	if (errno || end == v || *end || n > 1000000) {
		fprintf(stderr, "nbd_serve: %s: '%s' is not a number in 0..1000000\n", opt, v);
		exit(2);
	}
	return (unsigned)n;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "name", required_argument, NULL, 'n' },
		{ "read-only", no_argument, NULL, 'r' },
		{ "max-connections", required_argument, NULL, 'c' },
		{ "max-inflight", required_argument, NULL, 'i' },
		{ "handshake-timeout-ms", required_argument, NULL, 't' },
		{ "debug", no_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	struct cdp_nbd_opts o = { 0 };
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_nbd_server *s;
	struct cdp_export *e;
	struct signalfd_siginfo si = { 0 };
	const char *name = "";
	bool read_only = false;
	sigset_t set;
	int opt, sfd;

	cdp_log_init("nbd_serve");
	cdp_thread_set_name("main");
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			o.listen = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'r':
			read_only = true;
			break;
		case 'c':
			o.max_connections = parse_uint("--max-connections", optarg);
			break;
		case 'i':
			o.max_inflight = parse_uint("--max-inflight", optarg);
			break;
		case 't':
			o.handshake_timeout_ns = CDP_NS_PER_MS *
				(int64_t)parse_uint("--handshake-timeout-ms", optarg);
			break;
		case 'd':
			cdp_log_set_level(CDP_LOG_DEBUG);
			cdp_log_set_debug("nbd");
			break;
		default:
			usage();
		}
	}
	if (!o.listen || optind != argc - 1)
		usage();

	/* Before any thread starts, so that every thread inherits the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0) {
		fprintf(stderr, "nbd_serve: signalfd: %s\n", strerror(errno));
		return 1;
	}

	e = cdp_export_file_open(name, argv[optind], 0, &err);
	if (!e) {
		fprintf(stderr, "nbd_serve: %s\n", err.msg);
		return 1;
	}
	if (read_only)
		e->read_only = true;
	o.exports = &e;
	o.nexports = 1;
	if (cdp_nbd_server_start(&o, &s, &err)) {
		fprintf(stderr, "nbd_serve: %s\n", err.msg);
		cdp_export_file_close(e);
		return 1;
	}
	printf("ready port=%d\n", cdp_nbd_server_port(s));
	fflush(stdout);

	while (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si)) {
		if (errno != EINTR) {
			fprintf(stderr, "nbd_serve: read signalfd: %s\n", strerror(errno));
			break;
		}
	}
	cdp_log_info("nbd_serve: signal %u: stopping", si.ssi_signo);
	cdp_nbd_server_stop(s);
	cdp_export_file_close(e);
	close(sfd);
	return 0;
}
