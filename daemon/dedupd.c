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
#include "tunables.h"
#include "util.h"

static void help(const Manager *defaults) {
        printf("Usage: dedupd [OPTIONS]\n\n"
               "Deduplicate the memory of guests whose RAM is a shared memfd.\n\n"
               "  -h --help                                    show this help\n"
               "     --version                                 show the version\n"
               "     --config=PATH                             config file (default %s)\n"
               "     --check-config[=PATH]                     check the config file and exit\n"
               "     --socket=PATH                             VMM registration socket (default %s)\n"
               "     --allow-group=GROUP                       besides root, let this group register VMMs\n"
               "     --bus=system|session|ADDRESS|none         D-Bus to serve org.dedupd1 on (default system)\n"
               "     --bus-introspect=PATH                     write the D-Bus interface XML to PATH and exit\n"
               "     --numa-topology=FILE                      injected NUMA topology (tests)\n"
               "     --status-file=PATH                        write counters there (every 500 ms if changed)\n"
               "     --status-interval-ms=MS                   ... every MS ms instead (10-60000)\n\n"
               "Tunables (also D-Bus properties of org.dedupd1.Manager, see org.dedupd1(5)):\n",
               DEDUPD_CONFIG_FILE, DEDUP_DEFAULT_SOCKET);
        tunables_print_help(defaults);
}

static int parse_status_interval(const char *s, uint32_t *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v < 10 || v > 60000) {
                fprintf(stderr, "dedupd: --status-interval-ms: '%s' is not a number of milliseconds from 10 to 60000\n", s);
                return -EINVAL;
        }
        *ret = (uint32_t) v;
        return 0;
}

enum {
        ARG_VERSION = 0x100, ARG_CONFIG, ARG_CHECK_CONFIG, ARG_SOCKET, ARG_ALLOW_GROUP, ARG_BUS, ARG_BUS_INTROSPECT, ARG_TOPOLOGY, ARG_STATUS,
        ARG_STATUS_INTERVAL,
        ARG_TUNABLE,    /* + index in tunables[] */
};

static int parse_argv(Manager *m, int argc, char **argv, const char **ret_socket) {
        static const struct option fixed[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "check-config", optional_argument, NULL, ARG_CHECK_CONFIG },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "allow-group", required_argument, NULL, ARG_ALLOW_GROUP },
                { "bus", required_argument, NULL, ARG_BUS },
                { "bus-introspect", required_argument, NULL, ARG_BUS_INTROSPECT },
                { "numa-topology", required_argument, NULL, ARG_TOPOLOGY },
                { "status-file", required_argument, NULL, ARG_STATUS },
                { "status-interval-ms", required_argument, NULL, ARG_STATUS_INTERVAL },
        };
        struct option options[ELEMENTSOF(fixed) + 32] = {};
        char err[256];
        struct group *g;
        uint32_t v;
        int c, r = 0;

        if (n_tunables >= 32)
                return -E2BIG;
        memcpy(options, fixed, sizeof(fixed));
        for (size_t i = 0; i < n_tunables; i++)
                options[ELEMENTSOF(fixed) + i] = (struct option) { tunables[i].option, required_argument, NULL,
                                                                   ARG_TUNABLE + (int) i };

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help(m);
                        return 0;
                case ARG_VERSION:
                        printf("dedupd %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_CONFIG:
                case ARG_CHECK_CONFIG:
                        break;          /* done by load_config() */
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
                case ARG_BUS:
                        free(m->bus_spec);
                        m->bus_spec = strdup(optarg);
                        if (!m->bus_spec)
                                return -ENOMEM;
                        break;
                case ARG_BUS_INTROSPECT:
                        r = manager_bus_introspect(optarg);
                        return r < 0 ? r : 0;
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
                case ARG_STATUS_INTERVAL:
                        r = parse_status_interval(optarg, &m->status_interval_ms);
                        break;
                default:
                        if (c < ARG_TUNABLE || c >= ARG_TUNABLE + (int) n_tunables)
                                return -EINVAL;
                        r = tunable_parse(&tunables[c - ARG_TUNABLE], optarg, &v, err, sizeof(err));
                        if (r >= 0)
                                r = tunable_set(m, &tunables[c - ARG_TUNABLE], v, err, sizeof(err));
                        if (r < 0)
                                fprintf(stderr, "dedupd: --%s: %s\n", tunables[c - ARG_TUNABLE].option, err);
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

/* The config file comes first so that options override it: --config=PATH
 * (must exist) or the default (may be absent). --check-config[=PATH] only
 * checks it. Returns 1 to go on, 0 to exit successfully, < 0 on error. */
static int load_config(Manager *m, int argc, char **argv, const char **ret_socket) {
        _cleanup_(config_freep) Config *c = NULL;
        const char *path = DEDUPD_CONFIG_FILE;
        bool must_exist = false, check = false;
        int r;

        for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
                if (strncmp(argv[i], "--config=", 9) == 0)
                        path = argv[i] + 9, must_exist = true;
                else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
                        path = argv[++i], must_exist = true;
                else if (strcmp(argv[i], "--check-config") == 0)
                        check = true;
                else if (strncmp(argv[i], "--check-config=", 15) == 0)
                        path = argv[i] + 15, must_exist = check = true;
        }
        r = config_load(path, must_exist, &c);
        if (r < 0) {
                if (check)
                        printf("%s: invalid\n", path);
                return r;
        }
        if (check) {
                printf("%s: OK\n", path);
                return 0;
        }
        r = config_apply(c, m);
        if (r < 0)
                return r;
        if (config_socket(c))
                *ret_socket = config_socket(c);
        m->config = TAKE_PTR(c);
        return 1;
}

/* Every VM costs a few fds and dedupd never uses select(): take the hard
 * limit (systemd's soft default is 1024). */
static void raise_fd_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
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
        r = load_config(m, argc, argv, &socket_path);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
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

        raise_fd_limit();
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
        r = manager_connect_bus(m);
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
