/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * guest-sim: command line (see guest-sim.h). Every bad option or value is
 * refused with a message naming it; the caller exits 2.
 */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup.h"
#include "guest-sim.h"

static void help(void) {
        printf("Usage: guest-sim [OPTION...]\n"
               "\n"
               "Behave like a VMM with guest RAM for testing dedupd: fill guest RAM with\n"
               "deterministic content (a shared \"OS image\", zero, unique and volatile pages),\n"
               "rewrite pages from writer threads, and verify every byte of guest memory\n"
               "continuously through the guest mapping.\n"
               "\n"
               "Guest RAM:\n"
               "  --name=NAME               VM name, 1..63 of [A-Za-z0-9_.:-] (default sim-PID)\n"
               "  --uuid=UUID               VM uuid sent in HELLO (default none)\n"
               "  --size=MIB                guest RAM in MiB (default 256)\n"
               "  --backend=memfd|anon-ksm  memfd: memfd_create + MAP_SHARED, registered with\n"
               "                            dedupd; anon-ksm: anonymous MAP_PRIVATE memory with\n"
               "                            MADV_MERGEABLE for kernel KSM (default memfd)\n"
               "  --socket=PATH             dedupd VMM socket (default $DEDUPD_SOCKET, else\n"
               "                            " DEDUP_DEFAULT_SOCKET ")\n"
               "  --require-daemon          fail (exit 4) when no daemon listens, instead of\n"
               "                            running without dedup\n"
               "  --no-dedup                memfd backend without registering with dedupd\n"
               "\n"
               "Content (percentages of pages; what is left over is unique):\n"
               "  --image-seed=N            seed of the shared OS image: sims with the same image\n"
               "                            seed and percentages hold the same image pages at the\n"
               "                            same offsets (default 1)\n"
               "  --image-pct=P             image pages (default 50); 1 in 64 repeats one of 8\n"
               "                            common blocks, 1 in 8 of the rest has a zero tail\n"
               "  --zero-pct=P              zero pages (default 20)\n"
               "  --unique-pct=P            unique pages, never written (default 25)\n"
               "  --volatile-pct=P          pages the writers rewrite all the time (default 5)\n"
               "  --shift=PAGES             shift the whole layout by PAGES (wrapping), so image\n"
               "                            content sits at other offsets than in an unshifted sim\n"
               "  --seed=N                  seed of this sim's unique content (default: random,\n"
               "                            printed at start)\n"
               "  Kinds are laid out in runs of %u pages.\n"
               "\n"
               "Load:\n"
               "  --writers=N               writer threads (default 1, 0 = none)\n"
               "  --write-rate=N            page writes per second per writer (default 1000,\n"
               "                            0 = as fast as possible)\n"
               "  --churn-pct=P             writers also rewrite P%% of the image and zero pages,\n"
               "                            half the time with their original content (a no-op\n"
               "                            write that still breaks a merged page) and half the\n"
               "                            time with new content (default 0)\n"
               "  --churn-after=SECONDS     churn writes begin SECONDS after start, or at\n"
               "                            SIGUSR1 if that comes first (decimals allowed;\n"
               "                            default 0): pages merge first, then the churn\n"
               "                            measures un-merge (COW break) latency. SIGUSR1\n"
               "                            also restarts the fault_write_* statistics\n"
               "  --writes-after=SECONDS    writers write nothing, volatile pages included,\n"
               "                            until SECONDS after start or SIGUSR1 (default 0):\n"
               "                            a guest idle until told\n"
               "  --max-writes=N            each writer stops after N writes (default 0: never)\n"
               "  --duration=SECONDS        run time, decimals allowed (default 0: until\n"
               "                            SIGTERM or SIGINT)\n"
               "  --verify-interval-ms=N    pause between verify passes (default 0: continuous)\n"
               "  --hang-timeout=SECONDS    a single page write taking longer is a HANG: exit 3\n"
               "                            (default 5, 0 = no watchdog)\n"
               "\n"
               "Reporting:\n"
               "  --stats-interval-ms=N     print a stats line every N ms (default 0: only at exit)\n"
               "  --stats-file=PATH         keep PATH atomically rewritten with key=value lines\n"
               "                            (every stats interval, else every %u ms, and at exit)\n"
               "  --ready-file=PATH         create PATH once content is written and registration\n"
               "                            is done (holds pid, memfd_fd, size_mib, seed)\n"
               "  -h, --help                show this help\n"
               "\n"
               "Stats keys: name pid backend pages verified_passes mismatches writes\n"
               "max_write_us fault_writes fault_write_p50_us fault_write_p99_us (writes that\n"
               "found their page write-protected and left it not: they faulted, e.g. broke\n"
               "copy-on-write of a merged page)\n"
               "hangs rss_kib rss_anon_kib memfd_kib (memfd: memory allocated to guest RAM,\n"
               "st_blocks) ksm_merging_pages ksm_zero_pages (anon-ksm)\n"
               "dedup_connected and, when registered, dedup_remapped_pages dedup_aborted_pages\n"
               "dedup_cow_breaks dedup_written_faults dedup_merged_pages dedup_reconnects;\n"
               "also "
               "verify_skipped verify_retries verify_mib_s writes_per_s uptime_ms. The last\n"
               "line at exit starts with \"guest-sim: final\"; the stats file then has state=final.\n"
               "\n"
               "A mismatch prints \"guest-sim: MISMATCH name=.. page=.. offset=.. expected=..\n"
               "got=..\" (the first %u) and the exit status becomes 1. On SIGTERM or SIGINT,\n"
               "writers stop, one last full verify pass runs, final stats are printed.\n"
               "\n"
               "Exit status: 0 clean, 1 mismatch, 2 usage error, 3 hang, 4 setup failure.\n",
               SIM_RUN_PAGES, SIM_STATS_FILE_DEFAULT_MSEC, SIM_MISMATCH_REPORTS);
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "guest-sim: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'guest-sim --help'.\n");
        return -EINVAL;
}

/* Strict unsigned integer in [min, max]; the whole string must be the number. */
static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (!*s || *s == '-' || *s == '+' || *s == ' ')
                goto invalid;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || *end || v < min || v > max)
                goto invalid;
        *ret = v;
        return 0;
invalid:
        fprintf(stderr, "guest-sim: invalid value '%s' for --%s: expected an integer in [%" PRIu64 ", %" PRIu64 "]\n"
                "Try 'guest-sim --help'.\n", s, opt, min, max);
        return -EINVAL;
}

/* Seconds with up to 3 decimals ("5", "0.25") into milliseconds. */
static int parse_seconds_ms(const char *opt, const char *s, uint64_t *ret) {
        uint64_t sec = 0, ms = 0, scale = 100;
        const char *p = s;

        if (*p < '0' || *p > '9')
                goto invalid;
        for (; *p >= '0' && *p <= '9'; p++) {
                sec = sec * 10 + (uint64_t) (*p - '0');
                if (sec > 100000000)
                        goto invalid;
        }
        if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                        goto invalid;
                for (; *p >= '0' && *p <= '9'; p++) {
                        if (scale == 0)
                                goto invalid;
                        ms += (uint64_t) (*p - '0') * scale;
                        scale /= 10;
                }
        }
        if (*p)
                goto invalid;
        *ret = sec * 1000 + ms;
        return 0;
invalid:
        return usage_error("invalid value '%s' for --%s: expected seconds, like 5 or 0.25", s, opt);
}

static bool name_valid(const char *n) {
        size_t l = strlen(n);

        if (l < 1 || l > 63)
                return false;
        for (const char *p = n; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                      strchr("_.:-", *p)))
                        return false;
        return true;
}

enum {
        ARG_NAME = 0x100,
        ARG_UUID,
        ARG_SIZE,
        ARG_BACKEND,
        ARG_SOCKET,
        ARG_REQUIRE_DAEMON,
        ARG_NO_DEDUP,
        ARG_IMAGE_SEED,
        ARG_IMAGE_PCT,
        ARG_ZERO_PCT,
        ARG_UNIQUE_PCT,
        ARG_VOLATILE_PCT,
        ARG_SHIFT,
        ARG_SEED,
        ARG_WRITERS,
        ARG_WRITE_RATE,
        ARG_CHURN_PCT,
        ARG_CHURN_AFTER,
        ARG_WRITES_AFTER,
        ARG_MAX_WRITES,
        ARG_DURATION,
        ARG_VERIFY_INTERVAL,
        ARG_STATS_INTERVAL,
        ARG_STATS_FILE,
        ARG_READY_FILE,
        ARG_HANG_TIMEOUT,
        ARG_SELF_TEST_CORRUPT,
        ARG_SELF_TEST_STALL,
};

int sim_options_parse(struct sim_options *o, struct sim_layout *l, int argc, char *argv[]) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "name", required_argument, NULL, ARG_NAME },
                { "uuid", required_argument, NULL, ARG_UUID },
                { "size", required_argument, NULL, ARG_SIZE },
                { "backend", required_argument, NULL, ARG_BACKEND },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "require-daemon", no_argument, NULL, ARG_REQUIRE_DAEMON },
                { "no-dedup", no_argument, NULL, ARG_NO_DEDUP },
                { "image-seed", required_argument, NULL, ARG_IMAGE_SEED },
                { "image-pct", required_argument, NULL, ARG_IMAGE_PCT },
                { "zero-pct", required_argument, NULL, ARG_ZERO_PCT },
                { "unique-pct", required_argument, NULL, ARG_UNIQUE_PCT },
                { "volatile-pct", required_argument, NULL, ARG_VOLATILE_PCT },
                { "shift", required_argument, NULL, ARG_SHIFT },
                { "seed", required_argument, NULL, ARG_SEED },
                { "writers", required_argument, NULL, ARG_WRITERS },
                { "write-rate", required_argument, NULL, ARG_WRITE_RATE },
                { "churn-pct", required_argument, NULL, ARG_CHURN_PCT },
                { "churn-after", required_argument, NULL, ARG_CHURN_AFTER },
                { "writes-after", required_argument, NULL, ARG_WRITES_AFTER },
                { "max-writes", required_argument, NULL, ARG_MAX_WRITES },
                { "duration", required_argument, NULL, ARG_DURATION },
                { "verify-interval-ms", required_argument, NULL, ARG_VERIFY_INTERVAL },
                { "stats-interval-ms", required_argument, NULL, ARG_STATS_INTERVAL },
                { "stats-file", required_argument, NULL, ARG_STATS_FILE },
                { "ready-file", required_argument, NULL, ARG_READY_FILE },
                { "hang-timeout", required_argument, NULL, ARG_HANG_TIMEOUT },
                /* Hidden, for tests/test-guest-sim.sh: prove that the
                 * verifier and the watchdog can fail. After MS ms, flip one
                 * byte of a page no writer owns / make writer 0 stall
                 * forever inside a page write. */
                { "self-test-corrupt", required_argument, NULL, ARG_SELF_TEST_CORRUPT },
                { "self-test-stall", required_argument, NULL, ARG_SELF_TEST_STALL },
                {}
        };
        uint64_t v;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                unsigned kind = _SIM_KIND_MAX;

                r = 0;
                switch (c) {
                case 'h':
                        help();
                        return 1;
                case ARG_NAME:
                        if (!name_valid(optarg))
                                return usage_error("invalid value '%s' for --name: expected 1..63 characters of [A-Za-z0-9_.:-]",
                                                   optarg);
                        snprintf(o->name, sizeof(o->name), "%s", optarg);
                        break;
                case ARG_UUID:
                        o->uuid = optarg; /* libdedup checks it */
                        break;
                case ARG_SIZE:
                        r = parse_u64("size", optarg, 1, UINT64_C(1) << 20, &o->size_mib);
                        break;
                case ARG_BACKEND:
                        if (strcmp(optarg, "memfd") == 0)
                                o->backend = SIM_BACKEND_MEMFD;
                        else if (strcmp(optarg, "anon-ksm") == 0)
                                o->backend = SIM_BACKEND_ANON_KSM;
                        else
                                return usage_error("invalid value '%s' for --backend: expected 'memfd' or 'anon-ksm'", optarg);
                        break;
                case ARG_SOCKET:
                        if (!*optarg || strlen(optarg) >= 108)
                                return usage_error("invalid value '%s' for --socket: expected a socket path of 1..107 bytes",
                                                   optarg);
                        o->socket_path = optarg;
                        break;
                case ARG_REQUIRE_DAEMON:
                        o->require_daemon = true;
                        break;
                case ARG_NO_DEDUP:
                        o->no_dedup = true;
                        break;
                case ARG_IMAGE_SEED:
                        r = parse_u64("image-seed", optarg, 0, UINT64_MAX, &l->image_seed);
                        break;
                case ARG_IMAGE_PCT:
                        kind = SIM_KIND_IMAGE;
                        break;
                case ARG_ZERO_PCT:
                        kind = SIM_KIND_ZERO;
                        break;
                case ARG_UNIQUE_PCT:
                        kind = SIM_KIND_UNIQUE;
                        break;
                case ARG_VOLATILE_PCT:
                        kind = SIM_KIND_VOLATILE;
                        break;
                case ARG_SHIFT:
                        r = parse_u64("shift", optarg, 0, UINT64_MAX, &l->shift);
                        break;
                case ARG_SEED:
                        r = parse_u64("seed", optarg, 0, UINT64_MAX, &l->seed);
                        o->seed_set = true;
                        break;
                case ARG_WRITERS:
                        r = parse_u64("writers", optarg, 0, 256, &v);
                        o->n_writers = (unsigned) v;
                        break;
                case ARG_WRITE_RATE:
                        r = parse_u64("write-rate", optarg, 0, 100000000, &o->write_rate);
                        break;
                case ARG_CHURN_PCT:
                        r = parse_u64("churn-pct", optarg, 0, 100, &v);
                        l->churn_pct = (unsigned) v;
                        break;
                case ARG_CHURN_AFTER:
                        r = parse_seconds_ms("churn-after", optarg, &o->churn_after_ms);
                        break;
                case ARG_WRITES_AFTER:
                        r = parse_seconds_ms("writes-after", optarg, &o->writes_after_ms);
                        break;
                case ARG_MAX_WRITES:
                        r = parse_u64("max-writes", optarg, 0, UINT64_MAX, &o->max_writes);
                        break;
                case ARG_DURATION:
                        r = parse_seconds_ms("duration", optarg, &o->duration_ms);
                        break;
                case ARG_VERIFY_INTERVAL:
                        r = parse_u64("verify-interval-ms", optarg, 0, UINT64_C(86400000), &o->verify_interval_ms);
                        break;
                case ARG_STATS_INTERVAL:
                        r = parse_u64("stats-interval-ms", optarg, 0, UINT64_C(86400000), &o->stats_interval_ms);
                        break;
                case ARG_STATS_FILE:
                        o->stats_file = optarg;
                        break;
                case ARG_READY_FILE:
                        o->ready_file = optarg;
                        break;
                case ARG_HANG_TIMEOUT:
                        r = parse_seconds_ms("hang-timeout", optarg, &o->hang_timeout_ms);
                        break;
                case ARG_SELF_TEST_CORRUPT:
                        r = parse_u64("self-test-corrupt", optarg, 0, UINT64_C(86400000), &v);
                        o->corrupt_after_ms = (int64_t) v;
                        break;
                case ARG_SELF_TEST_STALL:
                        r = parse_u64("self-test-stall", optarg, 0, UINT64_C(86400000), &v);
                        o->stall_after_ms = (int64_t) v;
                        break;
                case '?':
                        fprintf(stderr, "Try 'guest-sim --help'.\n");
                        return -EINVAL;
                default:
                        abort();
                }
                if (r < 0)
                        return r;
                if (kind != _SIM_KIND_MAX) {
                        static const char *const names[_SIM_KIND_MAX] = {
                                [SIM_KIND_IMAGE] = "image-pct",
                                [SIM_KIND_ZERO] = "zero-pct",
                                [SIM_KIND_UNIQUE] = "unique-pct",
                                [SIM_KIND_VOLATILE] = "volatile-pct",
                        };

                        r = parse_u64(names[kind], optarg, 0, 100, &v);
                        if (r < 0)
                                return r;
                        l->pct[kind] = (unsigned) v;
                }
        }
        if (optind < argc)
                return usage_error("unexpected argument '%s'", argv[optind]);

        unsigned sum = l->pct[SIM_KIND_IMAGE] + l->pct[SIM_KIND_ZERO] + l->pct[SIM_KIND_UNIQUE] +
                       l->pct[SIM_KIND_VOLATILE];
        if (sum > 100) {
                fprintf(stderr,
                        "guest-sim: page percentages add up to %u%% (--image-pct=%u --zero-pct=%u --unique-pct=%u "
                        "--volatile-pct=%u): at most 100\nTry 'guest-sim --help'.\n",
                        sum, l->pct[SIM_KIND_IMAGE], l->pct[SIM_KIND_ZERO], l->pct[SIM_KIND_UNIQUE],
                        l->pct[SIM_KIND_VOLATILE]);
                return -EINVAL;
        }

        l->n_pages = o->size_mib * (1024 * 1024 / SIM_PAGE_SIZE);
        if (l->shift >= l->n_pages) {
                fprintf(stderr, "guest-sim: invalid value '%" PRIu64 "' for --shift: guest RAM has only %" PRIu64
                        " pages\nTry 'guest-sim --help'.\n", l->shift, l->n_pages);
                return -EINVAL;
        }
        if (o->backend != SIM_BACKEND_MEMFD && (o->require_daemon || o->socket_path || o->no_dedup)) {
                fprintf(stderr, "guest-sim: --require-daemon, --socket and --no-dedup need --backend=memfd\n"
                        "Try 'guest-sim --help'.\n");
                return -EINVAL;
        }
        if (o->require_daemon && o->no_dedup) {
                fprintf(stderr, "guest-sim: --require-daemon and --no-dedup exclude each other\n"
                        "Try 'guest-sim --help'.\n");
                return -EINVAL;
        }
        return 0;
}
