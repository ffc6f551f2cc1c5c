/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* dedupd: argv, startup, main loop. Everything else lives in manager*.c. */

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>

#include "dedup.h"
#include "manager.h"
#include "util.h"

static void help(void) {
        printf("Usage: dedupd [OPTIONS]\n\n"
               "Deduplicate the memory of guests whose RAM is a shared memfd.\n\n"
               "  -h --help                  show this help\n"
               "     --socket=PATH           VMM registration socket (default %s)\n"
               "     --allow-group=GROUP     besides root, let this group register VMMs\n"
               "     --run=0|1|2             0 stop, 1 merge, 2 unmerge everything (default 1)\n"
               "     --pages-to-scan=N       pages per scan batch (default 10000)\n"
               "     --sleep-millisecs=N     pause between batches (default 20)\n"
               "     --max-page-sharing=N    sharers per canonical page, 2..%u (default 256)\n"
               "     --merge-across-nodes=0|1  merge pages of different NUMA nodes (default 1)\n"
               "     --use-zero-pages=0|1    map zero pages to zero memory (default 1)\n"
               "     --vma-headroom=N        VMAs kept free below vm.max_map_count (default 4096)\n"
               "     --numa-topology=FILE    injected NUMA topology (tests)\n"
               "     --status-file=PATH      write counters there every 500 ms\n",
               DEDUP_DEFAULT_SOCKET, DEDUP_MAX_PAGE_SHARING_MAX);
}

/* Parse an unsigned option value in [min, max], naming it on error. */
static int parse_uint(const char *opt, const char *s, unsigned long long min, unsigned long long max,
                      unsigned long long *ret) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
                fprintf(stderr, "dedupd: invalid value '%s' for --%s: expected %llu..%llu\n", s, opt, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

enum {
        ARG_SOCKET = 0x100, ARG_ALLOW_GROUP, ARG_RUN, ARG_PAGES, ARG_SLEEP, ARG_MAX_SHARING, ARG_ACROSS,
        ARG_ZERO, ARG_HEADROOM, ARG_TOPOLOGY, ARG_STATUS,
};

static int parse_argv(Manager *m, int argc, char **argv, const char **ret_socket) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "allow-group", required_argument, NULL, ARG_ALLOW_GROUP },
                { "run", required_argument, NULL, ARG_RUN },
                { "pages-to-scan", required_argument, NULL, ARG_PAGES },
                { "sleep-millisecs", required_argument, NULL, ARG_SLEEP },
                { "max-page-sharing", required_argument, NULL, ARG_MAX_SHARING },
                { "merge-across-nodes", required_argument, NULL, ARG_ACROSS },
                { "use-zero-pages", required_argument, NULL, ARG_ZERO },
                { "vma-headroom", required_argument, NULL, ARG_HEADROOM },
                { "numa-topology", required_argument, NULL, ARG_TOPOLOGY },
                { "status-file", required_argument, NULL, ARG_STATUS },
                {}
        };
        unsigned long long v;
        struct group *g;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                const char *name = c >= ARG_SOCKET ? options[c - ARG_SOCKET + 1].name : "";
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_SOCKET:
                        *ret_socket = optarg;
                        break;
                case ARG_ALLOW_GROUP:
                        g = getgrnam(optarg);
                        if (!g) {
                                fprintf(stderr, "dedupd: unknown group '%s' for --allow-group\n", optarg);
                                return -EINVAL;
                        }
                        m->allowed_gid = g->gr_gid;
                        break;
                case ARG_RUN:
                        r = parse_uint(name, optarg, 0, 2, &v);
                        if (r >= 0)
                                m->run = (unsigned) v;
                        break;
                case ARG_PAGES:
                        r = parse_uint(name, optarg, 1, 1000000, &v);
                        if (r >= 0)
                                m->pages_to_scan = (unsigned) v;
                        break;
                case ARG_SLEEP:
                        r = parse_uint(name, optarg, 0, 60000, &v);
                        if (r >= 0)
                                m->sleep_ms = (unsigned) v;
                        break;
                case ARG_MAX_SHARING:
                        r = parse_uint(name, optarg, DEDUP_MAX_PAGE_SHARING_MIN, DEDUP_MAX_PAGE_SHARING_MAX, &v);
                        if (r >= 0)
                                r = dedup_engine_set_max_page_sharing(m->engine, (unsigned) v);
                        break;
                case ARG_ACROSS:
                        r = parse_uint(name, optarg, 0, 1, &v);
                        if (r >= 0)
                                r = dedup_engine_set_merge_across_nodes(m->engine, v);
                        break;
                case ARG_ZERO:
                        r = parse_uint(name, optarg, 0, 1, &v);
                        if (r >= 0)
                                dedup_engine_set_use_zero_pages(m->engine, v);
                        break;
                case ARG_HEADROOM:
                        r = parse_uint(name, optarg, 0, INT_MAX, &v);
                        if (r >= 0)
                                m->vma_headroom = v;
                        break;
                case ARG_TOPOLOGY:
                        m->topology = numa_topology_free(m->topology);
                        r = numa_topology_load(optarg, &m->topology);
                        break;
                case ARG_STATUS:
                        free(m->status_file);
                        m->status_file = strdup(optarg);
                        if (!m->status_file)
                                return -ENOMEM;
                        break;
                default:
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
        }
        if (optind < argc) {
                fprintf(stderr, "dedupd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char **argv) {
        _cleanup_(manager_freep) Manager *m = NULL;
        const char *socket_path = getenv("DEDUPD_SOCKET") ?: DEDUP_DEFAULT_SOCKET;
        sigset_t ss;
        int r;

        r = manager_new(&m);
        if (r < 0) {
                log_error_errno(r, "Cannot set up: %m");
                return EXIT_FAILURE;
        }
        r = parse_argv(m, argc, argv, &socket_path);
        if (r <= 0)
                return r < 0 ? 2 : EXIT_SUCCESS;
        if (!m->topology) {
                r = numa_topology_new_real(&m->topology);
                if (r < 0) {
                        log_error_errno(r, "Cannot read the NUMA topology: %m");
                        return EXIT_FAILURE;
                }
        }

        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigprocmask(SIG_BLOCK, &ss, NULL);
        signal(SIGPIPE, SIG_IGN);
        (void) sd_event_add_signal(m->event, NULL, SIGTERM, NULL, NULL);
        (void) sd_event_add_signal(m->event, NULL, SIGINT, NULL, NULL);

        r = manager_setup_zero_pool(m);
        if (r < 0) {
                log_error_errno(r, "Cannot set up the zero area: %m");
                return EXIT_FAILURE;
        }
        r = manager_listen(m, socket_path);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_start(m);
        if (r < 0) {
                log_error_errno(r, "Cannot start: %m");
                return EXIT_FAILURE;
        }
        log_info("dedupd %s listening on '%s': pages_to_scan=%u sleep_millisecs=%u max_map_count=%llu vma_headroom=%llu",
                 PACKAGE_VERSION, m->socket_path, m->pages_to_scan, m->sleep_ms, (unsigned long long) m->max_map_count,
                 (unsigned long long) m->vma_headroom);
        (void) sd_notify(false, "READY=1");
        manager_write_status(m);
        r = sd_event_loop(m->event);
        (void) sd_notify(false, "STOPPING=1");
        if (r < 0) {
                log_error_errno(r, "Event loop failed: %m");
                return EXIT_FAILURE;
        }
        log_info("dedupd stopping: guests keep their merged pages");
        return EXIT_SUCCESS;
}
