/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the tunables table (see tunables.h). Getters and setters are tiny
 * adapters onto the manager's fields and the engine's setters, which own
 * the real rules (KSM's EBUSY cases).
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "manager.h"
#include "tunables.h"
#include "util.h"

static const char *const advisor_modes[] = { "none", "scan-time", NULL };

#define FIELD_GETTER(field)                                      \
        static uint32_t get_##field(const Manager *m) {          \
                return (uint32_t) m->field;                      \
        }                                                        \
        static int set_##field(Manager *m, uint32_t v, char *err, size_t errlen) { \
                m->field = v;                                    \
                return 0;                                        \
        }

FIELD_GETTER(pages_to_scan)
FIELD_GETTER(sleep_ms)
FIELD_GETTER(advisor_mode)
FIELD_GETTER(advisor_target_sec)
FIELD_GETTER(advisor_max_cpu)
FIELD_GETTER(scan_threads)

static uint32_t get_run(const Manager *m) {
        return m->run;
}
static int set_run(Manager *m, uint32_t v, char *err, size_t errlen) {
        return manager_set_run(m, v);
}

static uint32_t get_vma_headroom(const Manager *m) {
        return (uint32_t) m->vma_headroom;
}
static int set_vma_headroom(Manager *m, uint32_t v, char *err, size_t errlen) {
        manager_set_vma_headroom(m, v);
        return 0;
}

static int busy(const Manager *m, const char *what, char *err, size_t errlen) {
        DedupEngineStats s;

        dedup_engine_stats(m->engine, &s);
        snprintf(err, errlen, "%s (PagesShared=%llu, ZeroPages=%llu); set Run=2 and wait for them to be unmerged first",
                 what, (unsigned long long) s.pages_shared, (unsigned long long) s.zero_pages);
        return -EBUSY;
}

static uint32_t get_max_page_sharing(const Manager *m) {
        return dedup_engine_get_max_page_sharing(m->engine);
}
static int set_max_page_sharing(Manager *m, uint32_t v, char *err, size_t errlen) {
        int r = dedup_engine_set_max_page_sharing(m->engine, v);
        return r == -EBUSY ? busy(m, "pages are shared", err, errlen) : r;
}

static uint32_t get_merge_across_nodes(const Manager *m) {
        return dedup_engine_get_merge_across_nodes(m->engine);
}
static int set_merge_across_nodes(Manager *m, uint32_t v, char *err, size_t errlen) {
        int r = dedup_engine_set_merge_across_nodes(m->engine, v);
        return r == -EBUSY ? busy(m, "pages are merged", err, errlen) : r;
}

#define ENGINE_FLAG(name)                                                        \
        static uint32_t get_##name(const Manager *m) {                           \
                return dedup_engine_get_##name(m->engine);                       \
        }                                                                        \
        static int set_##name(Manager *m, uint32_t v, char *err, size_t errlen) { \
                dedup_engine_set_##name(m->engine, v);                           \
                return 0;                                                        \
        }

ENGINE_FLAG(use_zero_pages)
ENGINE_FLAG(smart_scan)
ENGINE_FLAG(chain_prune_ms)

const Tunable tunables[] = {
        { "Run", "run", 'u', 0, 2, NULL,
          "0 stop, 1 merge, 2 unmerge everything", get_run, set_run },
        { "PagesToScan", "pages-to-scan", 'u', 1, 1000000, NULL,
          "pages looked at per batch", get_pages_to_scan, set_pages_to_scan },
        { "SleepMillisecs", "sleep-millisecs", 'u', 0, 60000, NULL,
          "pause between batches", get_sleep_ms, set_sleep_ms },
        { "MergeAcrossNodes", "merge-across-nodes", 'b', 0, 1, NULL,
          "merge pages of different NUMA nodes", get_merge_across_nodes, set_merge_across_nodes },
        { "UseZeroPages", "use-zero-pages", 'b', 0, 1, NULL,
          "map zero pages to zero memory", get_use_zero_pages, set_use_zero_pages },
        { "MaxPageSharing", "max-page-sharing", 'u', DEDUP_MAX_PAGE_SHARING_MIN, DEDUP_MAX_PAGE_SHARING_MAX, NULL,
          "sharers per canonical page", get_max_page_sharing, set_max_page_sharing },
        { "StableNodeChainsPruneMillisecs", "stable-node-chains-prune-millisecs", 'u', 0, 86400000, NULL,
          "how often stale dups are pruned", get_chain_prune_ms, set_chain_prune_ms },
        { "SmartScan", "smart-scan", 'b', 0, 1, NULL,
          "skip pages that keep failing to merge or being rewritten", get_smart_scan, set_smart_scan },
        { "AdvisorMode", "advisor-mode", 's', 0, 1, advisor_modes,
          "tune PagesToScan to reach a full-scan time", get_advisor_mode, set_advisor_mode },
        { "AdvisorTargetScanTimeSec", "advisor-target-scan-time-sec", 'u', 1, 86400, NULL,
          "full-scan time the advisor aims at", get_advisor_target_sec, set_advisor_target_sec },
        { "AdvisorMaxCpuPercent", "advisor-max-cpu-percent", 'u', 1, 100, NULL,
          "CPU the advisor may let scanning use", get_advisor_max_cpu, set_advisor_max_cpu },
        { "VmaHeadroom", "vma-headroom", 'u', 0, 1000000, NULL,
          "VMAs kept free below vm.max_map_count", get_vma_headroom, set_vma_headroom },
        { "ScanThreads", "scan-threads", 'u', 1, SCANNER_TEAM_MAX, NULL,
          "threads reading and hashing pages", get_scan_threads, set_scan_threads },
};
const size_t n_tunables = ELEMENTSOF(tunables);

const Tunable *tunable_find(const char *name) {
        for (size_t i = 0; i < n_tunables; i++)
                if (strcmp(tunables[i].name, name) == 0 || strcmp(tunables[i].option, name) == 0)
                        return &tunables[i];
        return NULL;
}

static void allowed(const Tunable *t, char *buf, size_t len) {
        size_t n = 0;

        if (t->type == 'u')
                snprintf(buf, len, "%u..%u", t->min, t->max);
        else if (t->type == 'b')
                snprintf(buf, len, "yes, no");
        else
                for (size_t i = 0; t->values[i] && n < len; i++)
                        n += (size_t) snprintf(buf + n, len - n, "%s%s", i ? ", " : "", t->values[i]);
}

static int invalid(const Tunable *t, const char *text, char *err, size_t errlen) {
        char range[128];

        allowed(t, range, sizeof(range));
        snprintf(err, errlen, "Invalid value '%s' for %s: allowed %s", text, t->name, range);
        return -EINVAL;
}

int tunable_parse(const Tunable *t, const char *text, uint32_t *ret, char *err, size_t errlen) {
        static const char *const yes[] = { "1", "yes", "true", "on" }, *const no[] = { "0", "no", "false", "off" };
        unsigned long long v;
        char *end;

        switch (t->type) {
        case 'b':
                for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                        if (strcasecmp(text, yes[i]) == 0)
                                return *ret = 1, 0;
                        if (strcasecmp(text, no[i]) == 0)
                                return *ret = 0, 0;
                }
                return invalid(t, text, err, errlen);
        case 's':
                for (uint32_t i = 0; t->values[i]; i++)
                        if (strcmp(text, t->values[i]) == 0)
                                return *ret = i, 0;
                return invalid(t, text, err, errlen);
        default:
                errno = 0;
                v = strtoull(text, &end, 10);
                if (errno || end == text || *end || text[0] == '-' || v < t->min || v > t->max)
                        return invalid(t, text, err, errlen);
                *ret = (uint32_t) v;
                return 0;
        }
}

const char *tunable_format(const Tunable *t, uint32_t v, char *buf, size_t len) {
        if (t->type == 'b')
                snprintf(buf, len, "%s", v ? "yes" : "no");
        else if (t->type == 's' && v <= t->max)
                snprintf(buf, len, "%s", t->values[v]);
        else
                snprintf(buf, len, "%u", v);
        return buf;
}

int tunable_set(Manager *m, const Tunable *t, uint32_t v, char *err, size_t errlen) {
        char old[32], new[32];
        uint32_t cur = t->get(m);
        int r;

        if (v < t->min || v > t->max)
                return invalid(t, tunable_format(t, v, new, sizeof(new)), err, errlen);
        if (v == cur)
                return 0;
        r = t->set(m, v, err, errlen);
        if (r < 0) {
                if (r == -EBUSY) {
                        char why[256];
                        snprintf(why, sizeof(why), "%s", err);
                        snprintf(err, errlen, "Cannot change %s to %s while %s", t->name,
                                 tunable_format(t, v, new, sizeof(new)), why);
                } else
                        invalid(t, tunable_format(t, v, new, sizeof(new)), err, errlen);
                return r;
        }
        log_info("%s changed from %s to %s", t->name, tunable_format(t, cur, old, sizeof(old)),
                 tunable_format(t, v, new, sizeof(new)));
        /* What a full scan found may not hold under the new value. */
        manager_scan_wake(m, "a tunable changed");
        return 1;
}

void tunables_print_help(const Manager *defaults) {
        for (size_t i = 0; i < n_tunables; i++) {
                const Tunable *t = &tunables[i];
                char opt[64], range[128], def[32];

                allowed(t, range, sizeof(range));
                if (t->type == 'u')
                        snprintf(opt, sizeof(opt), "--%s=N", t->option);
                else
                        snprintf(opt, sizeof(opt), "--%s=%s", t->option, t->type == 'b' ? "BOOL" : "MODE");
                printf("  %-44s %s (%s; default %s)\n", opt, t->help, range,
                       tunable_format(t, t->get(defaults), def, sizeof(def)));
        }
}
