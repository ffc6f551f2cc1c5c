/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * dedupctl: look at and tune a running dedupd, over D-Bus only
 * (org.dedupd1(5)). One function per verb; each read verb prints text or,
 * with --json, one JSON object.
 */

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#include "bus-util.h"
#include "dedup-util.h"

#define BUS_NAME "org.dedupd1"
#define MANAGER_PATH "/org/dedupd1"
#define MANAGER_IFACE "org.dedupd1.Manager"
#define VM_PREFIX "/org/dedupd1/vm"
#define VM_IFACE "org.dedupd1.VM"

enum { EXIT_REFUSED = 1, EXIT_USAGE = 2, EXIT_NOT_RUNNING = 3, EXIT_NO_SUCH = 4 };

static const char *arg_address;
static bool arg_user;
static bool arg_json;
static double arg_interval = 1.0;

static const char *const tunable_names[] = {
        "Run", "PagesToScan", "SleepMillisecs", "MergeAcrossNodes", "UseZeroPages", "MaxPageSharing",
        "StableNodeChainsPruneMillisecs", "SmartScan", "AdvisorMode", "AdvisorTargetScanTimeSec",
        "AdvisorMaxCpuPercent", "VmaHeadroom", "ScanThreads",
};
static const char *const counter_names[] = {
        "PagesShared", "PagesSharing", "PagesUnshared", "PagesVolatile", "PagesScanned", "FullScans",
        "StableNodeChains", "StableNodeDups", "ZeroPages", "MergeAborts", "Unmerges", "MetadataBytes",
        "PagesTracked", "GeneralProfit",
};

/* ---- errors ---- */

static int bus_fail(const sd_bus_error *e, int r) {
        if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER,
                                   SD_BUS_ERROR_NO_REPLY)) {
                fprintf(stderr, "dedupctl: dedupd is not running (%s)\n", e->message ?: e->name);
                return EXIT_NOT_RUNNING;
        }
        if (sd_bus_error_has_names(e, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_PROPERTY)) {
                fprintf(stderr, "dedupctl: %s\n", e->message ?: e->name);
                return EXIT_NO_SUCH;
        }
        if (sd_bus_error_is_set(e))
                fprintf(stderr, "dedupctl: %s: %s\n", e->name, e->message ?: "");
        else
                fprintf(stderr, "dedupctl: %s\n", strerror(-r));
        return EXIT_REFUSED;
}

/* ---- reading properties ---- */

/* All properties of an object as one GetAll reply, kept for lookups. */
typedef struct Props {
        sd_bus_message *reply;
} Props;

static int props_get(sd_bus *bus, const char *path, const char *iface, Props *ret, sd_bus_error *e) {
        return sd_bus_call_method(bus, BUS_NAME, path, "org.freedesktop.DBus.Properties", "GetAll", e, &ret->reply,
                                  "s", iface);
}

/* Position the reply at the variant of property name; its signature in
 * *ret_sig. 0 if absent. */
static int props_seek(Props *p, const char *name, const char **ret_sig) {
        const char *key;
        int r;

        r = sd_bus_message_rewind(p->reply, true);
        if (r >= 0)
                r = sd_bus_message_enter_container(p->reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(p->reply, 'e', "sv")) > 0) {
                r = sd_bus_message_read(p->reply, "s", &key);
                if (r < 0)
                        return r;
                if (strcmp(key, name) == 0) {
                        char type;
                        r = sd_bus_message_peek_type(p->reply, &type, ret_sig);
                        if (r >= 0)
                                r = sd_bus_message_enter_container(p->reply, 'v', *ret_sig);
                        return r < 0 ? r : 1;
                }
                r = sd_bus_message_skip(p->reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(p->reply);
        }
        return r;
}

/* A scalar property as text ("123", "yes", "scan-time"); "" if absent. */
static const char *props_text(Props *p, const char *name, char *buf, size_t len) {
        const char *sig, *s;
        uint64_t t = 0;
        int64_t x;
        uint32_t u;
        uint16_t q;
        int b;

        buf[0] = 0;
        if (props_seek(p, name, &sig) <= 0)
                return buf;
        switch (sig[0]) {
        case 't':
                if (sd_bus_message_read(p->reply, "t", &t) >= 0)
                        snprintf(buf, len, "%llu", (unsigned long long) t);
                break;
        case 'x':
                if (sd_bus_message_read(p->reply, "x", &x) >= 0)
                        snprintf(buf, len, "%lld", (long long) x);
                break;
        case 'u':
                if (sd_bus_message_read(p->reply, "u", &u) >= 0)
                        snprintf(buf, len, "%u", u);
                break;
        case 'q':
                if (sd_bus_message_read(p->reply, "q", &q) >= 0)
                        snprintf(buf, len, "%u", q);
                break;
        case 'b':
                if (sd_bus_message_read(p->reply, "b", &b) >= 0)
                        snprintf(buf, len, "%s", b ? "yes" : "no");
                break;
        case 's':
                if (sd_bus_message_read(p->reply, "s", &s) >= 0)
                        snprintf(buf, len, "%s", s);
                break;
        }
        return buf;
}

static long long props_num(Props *p, const char *name) {
        char buf[64];
        return atoll(props_text(p, name, buf, sizeof(buf)));
}

static void props_done(Props *p) {
        p->reply = sd_bus_message_unref(p->reply);
}

/* ---- output ---- */

static void json_string(const char *s) {
        putchar('"');
        for (; *s; s++) {
                if (*s == '"' || *s == '\\')
                        printf("\\%c", *s);
                else if ((unsigned char) *s < 0x20)
                        printf("\\u%04x", *s);
                else
                        putchar(*s);
        }
        putchar('"');
}

/* "key": value, where value is a number if it looks like one. */
static void json_field(bool *first, const char *key, const char *value) {
        char *end;

        printf("%s", *first ? "" : ", ");
        *first = false;
        json_string(key);
        printf(": ");
        if (value[0] && (strtoll(value, &end, 10), !*end))
                printf("%s", value);
        else if (strcmp(value, "yes") == 0 || strcmp(value, "no") == 0)
                printf("%s", value[0] == 'y' ? "true" : "false");
        else
                json_string(value);
}

static const char *human(long long bytes, char *buf, size_t len) {
        double v = (double) (bytes < 0 ? -bytes : bytes);
        const char *unit = "B";

        if (v >= 1 << 30)
                v /= 1 << 30, unit = "GiB";
        else if (v >= 1 << 20)
                v /= 1 << 20, unit = "MiB";
        else if (v >= 1 << 10)
                v /= 1 << 10, unit = "KiB";
        snprintf(buf, len, "%s%.1f %s", bytes < 0 ? "-" : "", v, unit);
        return buf;
}

/* ---- verbs ---- */

typedef struct VmEntry {
        char name[64], uuid[40], state[16], path[256];
        uint32_t pid;
        uint16_t group;
} VmEntry;

static int list_vms(sd_bus *bus, VmEntry **ret, size_t *ret_n, sd_bus_error *e) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *name, *uuid, *state, *path;
        VmEntry *v = NULL;
        size_t n = 0;
        uint32_t pid;
        uint16_t group;
        int r;

        r = sd_bus_call_method(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "ListVMs", e, &reply, NULL);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(ssuqso)");
        while (r >= 0 && (r = sd_bus_message_read(reply, "(ssuqso)", &name, &uuid, &pid, &group, &state, &path)) > 0) {
                VmEntry *nv = realloc(v, (n + 1) * sizeof(*v));
                if (!nv) {
                        r = -ENOMEM;
                        break;
                }
                v = nv;
                v[n] = (VmEntry) { .pid = pid, .group = group };
                snprintf(v[n].name, sizeof(v[n].name), "%s", name);
                snprintf(v[n].uuid, sizeof(v[n].uuid), "%s", uuid);
                snprintf(v[n].state, sizeof(v[n].state), "%s", state);
                snprintf(v[n].path, sizeof(v[n].path), "%s", path);
                n++;
        }
        if (r < 0) {
                free(v);
                return r;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

static int verb_status(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        _cleanup_free_ VmEntry *vms = NULL;
        Props p = {};
        char a[64], b[64], c[64];
        size_t n = 0;
        bool first = true;
        int r;

        r = props_get(bus, MANAGER_PATH, MANAGER_IFACE, &p, e);
        if (r >= 0)
                r = list_vms(bus, &vms, &n, e);
        if (r < 0) {
                props_done(&p);
                return r;
        }
        if (arg_json) {
                printf("{");
                json_field(&first, "Version", props_text(&p, "Version", a, sizeof(a)));
                json_field(&first, "Run", props_text(&p, "Run", a, sizeof(a)));
                json_field(&first, "Idle", props_text(&p, "Idle", a, sizeof(a)));
                snprintf(a, sizeof(a), "%zu", n);
                json_field(&first, "VMs", a);
                snprintf(a, sizeof(a), "%lld", (props_num(&p, "PagesSharing") + props_num(&p, "ZeroPages")) * 4096);
                json_field(&first, "SavedBytes", a);
                for (size_t i = 0; i < ELEMENTSOF(counter_names); i++)
                        json_field(&first, counter_names[i], props_text(&p, counter_names[i], a, sizeof(a)));
                printf("}\n");
        } else {
                long long run = props_num(&p, "Run");
                bool idle = strcmp(props_text(&p, "Idle", b, sizeof(b)), "yes") == 0;

                printf("dedupd %s: %s%s, %zu VMs\n", props_text(&p, "Version", a, sizeof(a)),
                       run == 0 ? "stopped (Run=0)" : run == 1 ? "merging (Run=1)" : "unmerging everything (Run=2)",
                       idle ? ", idle (nothing changed in the last full scans)" : "", n);
                printf("  saved:          %s (%lld pages sharing, %lld zero pages)\n",
                       human((props_num(&p, "PagesSharing") + props_num(&p, "ZeroPages")) * 4096, a, sizeof(a)),
                       props_num(&p, "PagesSharing"), props_num(&p, "ZeroPages"));
                printf("  canonical:      %s in %lld pages shared\n", human(props_num(&p, "PagesShared") * 4096, b, sizeof(b)),
                       props_num(&p, "PagesShared"));
                printf("  general profit: %s (metadata %s)\n", human(props_num(&p, "GeneralProfit"), c, sizeof(c)),
                       human(props_num(&p, "MetadataBytes"), a, sizeof(a)));
                for (size_t i = 0; i < ELEMENTSOF(counter_names); i++)
                        printf("  %-17s %s\n", counter_names[i], props_text(&p, counter_names[i], a, sizeof(a)));
        }
        props_done(&p);
        return 0;
}

static int verb_vms(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        _cleanup_free_ VmEntry *vms = NULL;
        size_t n = 0;
        int r;

        r = list_vms(bus, &vms, &n, e);
        if (r < 0)
                return r;
        if (arg_json)
                printf("[");
        else
                printf("%-20s %8s %5s %-12s %10s %10s %10s %10s\n", "NAME", "PID", "GROUP", "STATE", "PAGES", "MERGING",
                       "ZERO", "MERGED");
        for (size_t i = 0; i < n; i++) {
                Props p = {};
                char a[64], b[64], c[64], d[64];
                bool first = true;

                r = props_get(bus, vms[i].path, VM_IFACE, &p, e);
                if (r < 0)
                        return r;
                if (arg_json) {
                        printf("%s{", i ? ", " : "");
                        json_field(&first, "Name", vms[i].name);
                        json_field(&first, "Uuid", vms[i].uuid);
                        static const char *const keys[] = { "Pid", "MergeGroup", "State", "Reason", "Pages",
                                                            "MergingPages", "ZeroPages", "MergeAborts", "Unmerges",
                                                            "GeneralProfit", "Vmas" };
                        for (size_t k = 0; k < ELEMENTSOF(keys); k++)
                                json_field(&first, keys[k], props_text(&p, keys[k], a, sizeof(a)));
                        printf("}");
                } else
                        printf("%-20s %8u %5u %-12s %10s %10s %10s %10s\n", vms[i].name, vms[i].pid, vms[i].group,
                               vms[i].state, props_text(&p, "Pages", a, sizeof(a)),
                               props_text(&p, "MergingPages", b, sizeof(b)), props_text(&p, "ZeroPages", c, sizeof(c)),
                               human((props_num(&p, "MergingPages") + props_num(&p, "ZeroPages")) * 4096, d,
                                     sizeof(d)));
                props_done(&p);
        }
        if (arg_json)
                printf("]\n");
        return 0;
}

static int verb_vm(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *path = NULL;
        static const char *const keys[] = { "Name", "Uuid", "Pid", "MergeGroup", "State", "Reason", "Pages",
                                            "MergingPages", "ZeroPages", "MergeAborts", "Unmerges", "GeneralProfit",
                                            "Vmas" };
        const char *memfd, *state, *reason;
        uint64_t gpa, size;
        uint32_t id;
        Props p = {};
        char a[256];
        bool first = true;
        int r;

        r = sd_bus_path_encode(VM_PREFIX, argv[1], &path);
        if (r >= 0)
                r = props_get(bus, path, VM_IFACE, &p, e);
        if (r < 0)
                return r;
        if (arg_json)
                printf("{");
        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                props_text(&p, keys[k], a, sizeof(a));
                if (arg_json)
                        json_field(&first, keys[k], a);
                else
                        printf("%-14s %s\n", keys[k], a);
        }
        printf(arg_json ? ", \"Regions\": [" : "Regions:\n");
        first = true;
        if (props_seek(&p, "Regions", &memfd) > 0 && sd_bus_message_enter_container(p.reply, 'a', "(uttsss)") >= 0)
                while (sd_bus_message_read(p.reply, "(uttsss)", &id, &gpa, &size, &memfd, &state, &reason) > 0) {
                        if (arg_json) {
                                printf("%s{\"Id\": %u, \"GuestPhysical\": %llu, \"Size\": %llu, \"Memfd\": ",
                                       first ? "" : ", ", id, (unsigned long long) gpa, (unsigned long long) size);
                                json_string(memfd);
                                printf(", \"State\": ");
                                json_string(state);
                                printf(", \"Reason\": ");
                                json_string(reason);
                                printf("}");
                        } else
                                printf("  %u: gpa 0x%llx, %s, memfd %s, %s%s%s\n", id, (unsigned long long) gpa,
                                       human((long long) size, a, sizeof(a)), memfd, state, reason[0] ? ": " : "",
                                       reason);
                        first = false;
                }
        printf(arg_json ? "]}\n" : "");
        props_done(&p);
        return 0;
}

/* The D-Bus name of a tunable given as "PagesToScan", "pagestoscan" or
 * "pages-to-scan"; NULL if none. */
static const char *tunable_name(const char *arg) {
        char flat[64];
        size_t n = 0;

        for (const char *s = arg; *s && n < sizeof(flat) - 1; s++)
                if (*s != '-' && *s != '_')
                        flat[n++] = *s;
        flat[n] = 0;
        for (size_t i = 0; i < ELEMENTSOF(tunable_names); i++)
                if (strcasecmp(flat, tunable_names[i]) == 0)
                        return tunable_names[i];
        fprintf(stderr, "dedupctl: no tunable '%s'; 'dedupctl get' lists them\n", arg);
        return NULL;
}

static int verb_get(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        const char *name = NULL;
        Props p = {};
        char a[64];
        bool first = true;
        int r;

        if (argc > 1 && !(name = tunable_name(argv[1])))
                return -ENOENT;
        r = props_get(bus, MANAGER_PATH, MANAGER_IFACE, &p, e);
        if (r < 0)
                return r;
        if (arg_json)
                printf("{");
        for (size_t i = 0; i < ELEMENTSOF(tunable_names); i++) {
                if (name && strcmp(name, tunable_names[i]) != 0)
                        continue;
                props_text(&p, tunable_names[i], a, sizeof(a));
                if (arg_json)
                        json_field(&first, tunable_names[i], a);
                else if (name)
                        printf("%s\n", a);
                else
                        printf("%-31s %s\n", tunable_names[i], a);
        }
        if (arg_json)
                printf("}\n");
        props_done(&p);
        return 0;
}

static int verb_set(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        static const char *const yes[] = { "1", "yes", "true", "on" }, *const no[] = { "0", "no", "false", "off" };
        const char *name = tunable_name(argv[1]), *sig, *v = argv[2];
        Props p = {};
        char *end;
        unsigned long long u;
        int r;

        if (!name)
                return -ENOENT;
        r = props_get(bus, MANAGER_PATH, MANAGER_IFACE, &p, e);
        if (r >= 0)
                r = props_seek(&p, name, &sig) > 0 ? 0 : -ENOENT;
        if (r >= 0 && sig[0] == 'b') {
                for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0)
                                r = sd_bus_set_property(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, name, e, "b",
                                                        strcasecmp(v, yes[i]) == 0) < 0 ? -EIO : 1;
                if (r == 0) {
                        fprintf(stderr, "dedupctl: %s takes yes or no, not '%s'\n", name, v);
                        r = -EDOM;
                }
        } else if (r >= 0 && sig[0] == 's')
                r = sd_bus_set_property(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, name, e, "s", v);
        else if (r >= 0) {
                errno = 0;
                u = strtoull(v, &end, 10);
                if (errno || end == v || *end || v[0] == '-' || u > UINT32_MAX) {
                        fprintf(stderr, "dedupctl: %s takes a number, not '%s'\n", name, v);
                        r = -EDOM;
                } else
                        r = sd_bus_set_property(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, name, e, "u", (uint32_t) u);
        }
        props_done(&p);
        return r < 0 ? r : 0;
}

static int verb_unmerge(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (argc < 2) {
                r = sd_bus_set_property(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Run", e, "u", (uint32_t) 2);
                if (r >= 0)
                        printf("Unmerging everything (Run=2); 'dedupctl set Run 1' merges again.\n");
                return r;
        }
        r = sd_bus_path_encode(VM_PREFIX, argv[1], &path);
        if (r >= 0)
                r = sd_bus_call_method(bus, BUS_NAME, path, VM_IFACE, "Unmerge", e, NULL, NULL);
        if (r >= 0)
                printf("Unmerging VM '%s'; merging it stays off until dedupd restarts or Merge() is called.\n", argv[1]);
        return r;
}

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
        stop = 1;
}

static int verb_watch(sd_bus *bus, int argc, char **argv, sd_bus_error *e) {
        bool tty = isatty(STDOUT_FILENO);
        struct timespec ts = { .tv_sec = (time_t) arg_interval,
                               .tv_nsec = (long) ((arg_interval - (double) (time_t) arg_interval) * 1e9) };
        int r;

        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        while (!stop) {
                if (tty)
                        printf("\033[H\033[2J");
                r = verb_status(bus, argc, argv, e);
                if (r >= 0 && !arg_json)
                        printf("\n");
                if (r >= 0)
                        r = verb_vms(bus, argc, argv, e);
                if (r < 0)
                        return r;
                if (!tty && !arg_json)
                        printf("--\n");
                fflush(stdout);
                nanosleep(&ts, NULL);
        }
        return 0;
}

typedef struct Verb {
        const char *name;
        int min_args, max_args;         /* besides the verb */
        int (*run)(sd_bus *bus, int argc, char **argv, sd_bus_error *e);
        const char *usage;
} Verb;

static const Verb verbs[] = {
        { "status", 0, 0, verb_status, "status                  savings and counters" },
        { "vms", 0, 0, verb_vms, "vms                     one line per VM" },
        { "vm", 1, 1, verb_vm, "vm NAME                 one VM: counters, regions, why not merged" },
        { "get", 0, 1, verb_get, "get [TUNABLE]           one tunable, or all" },
        { "set", 2, 2, verb_set, "set TUNABLE VALUE       change a tunable (root or the admin group)" },
        { "unmerge", 0, 1, verb_unmerge, "unmerge [VM]            unmerge one VM, or everything (Run=2)" },
        { "watch", 0, 0, verb_watch, "watch                   status and vms, refreshed every --interval" },
};

static void help(void) {
        printf("Usage: dedupctl [OPTIONS] VERB [ARGS]\n\n"
               "Look at and tune dedupd over D-Bus.\n\nVerbs:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                printf("  %s\n", verbs[i].usage);
        printf("\nOptions:\n"
               "  -h --help             show this help\n"
               "     --version          show the version\n"
               "     --json             JSON output of read verbs\n"
               "     --address=ADDRESS  D-Bus address (default: the system bus)\n"
               "     --user             the user bus instead of the system bus\n"
               "     --interval=SECONDS refresh period of watch (default 1)\n\n"
               "Exit status: 0 ok, 1 refused or D-Bus error, 2 usage, 3 dedupd not running,\n"
               "4 no such VM or tunable. See dedupctl(8).\n");
}

static int parse_argv(int argc, char **argv) {
        enum { ARG_VERSION = 0x100, ARG_JSON, ARG_ADDRESS, ARG_USER, ARG_INTERVAL };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "json", no_argument, NULL, ARG_JSON },
                { "address", required_argument, NULL, ARG_ADDRESS },
                { "user", no_argument, NULL, ARG_USER },
                { "interval", required_argument, NULL, ARG_INTERVAL },
                {}
        };
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("dedupctl %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_JSON:
                        arg_json = true;
                        break;
                case ARG_ADDRESS:
                        arg_address = optarg;
                        break;
                case ARG_USER:
                        arg_user = true;
                        break;
                case ARG_INTERVAL:
                        arg_interval = strtod(optarg, &end);
                        if (*end || arg_interval < 0.05 || arg_interval > 3600) {
                                fprintf(stderr, "dedupctl: --interval takes 0.05..3600 seconds, not '%s'\n", optarg);
                                return -EINVAL;
                        }
                        break;
                default:
                        return -EINVAL;
                }
        return 1;
}

static int connect_bus(sd_bus **ret) {
        if (arg_address)
                return bus_open_address(arg_address, ret);
        return arg_user ? sd_bus_open_user(ret) : sd_bus_open_system(ret);
}

int main(int argc, char **argv) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        const Verb *verb = NULL;
        int r, nargs;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
        if (optind >= argc) {
                fprintf(stderr, "dedupctl: which verb? See dedupctl --help.\n");
                return EXIT_USAGE;
        }
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (strcmp(argv[optind], verbs[i].name) == 0)
                        verb = &verbs[i];
        nargs = argc - optind - 1;
        if (!verb || nargs < verb->min_args || nargs > verb->max_args) {
                fprintf(stderr, "dedupctl: %s '%s'. See dedupctl --help.\n", verb ? "wrong arguments for" : "unknown verb",
                        argv[optind]);
                return EXIT_USAGE;
        }
        r = connect_bus(&bus);
        if (r < 0) {
                fprintf(stderr, "dedupctl: cannot connect to the bus: %s\n", strerror(-r));
                return EXIT_NOT_RUNNING;
        }
        r = verb->run(bus, argc - optind, argv + optind, &e);
        if (r == -ENOENT && !sd_bus_error_is_set(&e))
                return EXIT_NO_SUCH;
        if (r == -EDOM)
                return EXIT_USAGE;
        return r < 0 ? bus_fail(&e, r) : EXIT_SUCCESS;
}
