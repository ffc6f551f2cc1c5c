/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: NUMA topology
 *
 * Invariants:
 * - Every node id handed out is < numa_topology_nodes(): the file's ranges
 *   and default are checked against its nodes= line, the kernel's answers
 *   are ids of existing nodes.
 * - A topology object is never half-updated: a reload parses into a fresh
 *   object and swaps contents only on success, so a bad edit of the file
 *   keeps the previous, valid topology.
 * - Lookups of an injected topology are O(log keys + log ranges): keys are
 *   sorted, and each key's ranges sorted by first page without overlaps.
 */

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numa-topology.h"
#include "util.h"

typedef struct Range {
        char *key;              /* owned by the Key entry after building */
        uint64_t first;
        uint64_t npages;
        int nid;
        unsigned line;
} Range;

typedef struct Key {
        char *key;
        size_t first_range;     /* index into ranges */
        size_t nranges;
} Key;

struct NumaTopology {
        bool injected;
        int nodes;
        int default_nid;        /* -1: none */
        char *path;             /* injected: the file, for reload */
        Range *ranges;          /* sorted by (key, first) */
        size_t nranges;
        Key *keys;              /* sorted by key */
        size_t nkeys;
        uint64_t generation;
};

static void topology_clear(NumaTopology *t) {
        for (size_t i = 0; i < t->nkeys; i++)
                free(t->keys[i].key);
        free(t->keys);
        free(t->ranges);
        free(t->path);
}

NumaTopology *numa_topology_free(NumaTopology *t) {
        if (!t)
                return NULL;
        topology_clear(t);
        free(t);
        return NULL;
}

int numa_topology_new_real(NumaTopology **ret) {
        NumaTopology *t = calloc(1, sizeof *t);

        if (!t)
                return -ENOMEM;
        t->nodes = numa_available() < 0 ? 1 : MIN(numa_max_node() + 1, NUMA_TOPOLOGY_MAX_NODES);
        t->default_nid = -1;
        *ret = t;
        return 0;
}

_printf_(4, 5) static int parse_error(char *errbuf, size_t errlen, unsigned line, const char *fmt, ...) {
        va_list ap;
        size_t n;

        if (!errbuf || errlen == 0)
                return -EINVAL;
        n = (size_t) snprintf(errbuf, errlen, "%u: ", line);
        if (n < errlen) {
                va_start(ap, fmt);
                (void) vsnprintf(errbuf + n, errlen - n, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* Decimal or 0x-hex, no sign, no overflow, nothing after. */
static int parse_u64(const char *s, uint64_t *ret) {
        int base = 10;
        uint64_t v = 0;

        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
                base = 16;
                s += 2;
        }
        if (!*s)
                return -EINVAL;
        for (; *s; s++) {
                unsigned d;
                if (*s >= '0' && *s <= '9')
                        d = (unsigned) (*s - '0');
                else if (base == 16 && ((*s | 0x20) >= 'a' && (*s | 0x20) <= 'f'))
                        d = (unsigned) ((*s | 0x20) - 'a' + 10);
                else
                        return -EINVAL;
                if (v > (UINT64_MAX - d) / (unsigned) base)
                        return -ERANGE;
                v = v * (unsigned) base + d;
        }
        *ret = v;
        return 0;
}

static int range_cmp(const void *a, const void *b) {
        const Range *x = a, *y = b;
        int c = strcmp(x->key, y->key);
        if (c != 0)
                return c;
        return x->first < y->first ? -1 : x->first > y->first;
}

/* Sort ranges, reject overlaps, build the key index (taking over the key
 * strings: one per key, the duplicates freed). */
static int topology_build(NumaTopology *t, char *errbuf, size_t errlen) {
        size_t k = 0;

        if (t->nranges > 0)
                qsort(t->ranges, t->nranges, sizeof(Range), range_cmp);
        for (size_t i = 1; i < t->nranges; i++) {
                Range *a = &t->ranges[i - 1], *b = &t->ranges[i];
                if (strcmp(a->key, b->key) == 0 && a->first + a->npages > b->first)
                        return parse_error(errbuf, errlen, MAX(a->line, b->line),
                                           "range of '%s' overlaps the range on line %u", b->key,
                                           MIN(a->line, b->line));
        }

        t->keys = calloc(MAX(t->nranges, (size_t) 1), sizeof(Key));
        if (!t->keys)
                return -ENOMEM;
        for (size_t i = 0; i < t->nranges; i++) {
                if (k > 0 && strcmp(t->keys[k - 1].key, t->ranges[i].key) == 0) {
                        free(t->ranges[i].key);
                        t->ranges[i].key = t->keys[k - 1].key;
                        t->keys[k - 1].nranges++;
                        continue;
                }
                t->keys[k++] = (Key) { .key = t->ranges[i].key, .first_range = i, .nranges = 1 };
        }
        t->nkeys = k;
        return 0;
}

/* Parse one line (comment stripped, NUL-terminated). */
static int parse_line(NumaTopology *t, char *line, unsigned lineno, size_t *cap, char *errbuf, size_t errlen) {
        char *save = NULL, *w[6];
        size_t n = 0;
        uint64_t v;

        for (char *tok = strtok_r(line, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save)) {
                if (n == ELEMENTSOF(w))
                        return parse_error(errbuf, errlen, lineno, "too many words");
                w[n++] = tok;
        }
        if (n == 0)
                return 0;

        if (strncmp(w[0], "nodes=", 6) == 0) {
                if (n != 1)
                        return parse_error(errbuf, errlen, lineno, "'nodes=' takes no further words");
                if (t->nodes > 0)
                        return parse_error(errbuf, errlen, lineno, "'nodes=' given twice");
                if (parse_u64(w[0] + 6, &v) < 0 || v == 0 || v > NUMA_TOPOLOGY_MAX_NODES)
                        return parse_error(errbuf, errlen, lineno, "invalid node count '%s' (1..%d)", w[0] + 6,
                                           NUMA_TOPOLOGY_MAX_NODES);
                t->nodes = (int) v;
                return 0;
        }
        if (t->nodes == 0)
                return parse_error(errbuf, errlen, lineno, "'%s' before 'nodes='", w[0]);

        if (strncmp(w[0], "default=", 8) == 0) {
                if (n != 1)
                        return parse_error(errbuf, errlen, lineno, "'default=' takes no further words");
                if (t->default_nid >= 0)
                        return parse_error(errbuf, errlen, lineno, "'default=' given twice");
                if (parse_u64(w[0] + 8, &v) < 0 || v >= (uint64_t) t->nodes)
                        return parse_error(errbuf, errlen, lineno, "invalid default node '%s' (0..%d)", w[0] + 8,
                                           t->nodes - 1);
                t->default_nid = (int) v;
                return 0;
        }

        if (strcmp(w[0], "range") == 0) {
                uint64_t first, npages, nid;

                if (n != 5)
                        return parse_error(errbuf, errlen, lineno, "expected 'range KEY FIRST NPAGES NID'");
                if (strlen(w[1]) > 255)
                        return parse_error(errbuf, errlen, lineno, "key longer than 255 bytes");
                if (parse_u64(w[2], &first) < 0)
                        return parse_error(errbuf, errlen, lineno, "invalid first page '%s'", w[2]);
                if (parse_u64(w[3], &npages) < 0 || npages == 0 || first + npages < first)
                        return parse_error(errbuf, errlen, lineno, "invalid page count '%s'", w[3]);
                if (parse_u64(w[4], &nid) < 0 || nid >= (uint64_t) t->nodes)
                        return parse_error(errbuf, errlen, lineno, "invalid node '%s' (0..%d)", w[4], t->nodes - 1);

                if (t->nranges == *cap) {
                        size_t c = MAX(*cap * 2, (size_t) 16);
                        Range *r = realloc(t->ranges, c * sizeof(Range));
                        if (!r)
                                return -ENOMEM;
                        t->ranges = r;
                        *cap = c;
                }
                char *key = strdup(w[1]);
                if (!key)
                        return -ENOMEM;
                t->ranges[t->nranges++] = (Range) {
                        .key = key, .first = first, .npages = npages, .nid = (int) nid, .line = lineno,
                };
                return 0;
        }

        return parse_error(errbuf, errlen, lineno, "unknown directive '%s'", w[0]);
}

/* Free a half-built topology: before topology_build() the ranges own keys. */
static void topology_free_unbuilt(NumaTopology *t) {
        if (!t->keys)
                for (size_t i = 0; i < t->nranges; i++)
                        free(t->ranges[i].key);
        numa_topology_free(t);
}

static int prefix_path(char *errbuf, size_t errlen, const char *path) {
        /* errbuf holds "LINE: msg"; make it "PATH:LINE: msg". */
        _cleanup_free_ char *msg = NULL;

        if (!errbuf || errlen == 0)
                return 0;
        msg = strdup(errbuf);
        if (!msg)
                return -ENOMEM;
        snprintf(errbuf, errlen, "%s:%s", path, msg);
        return 0;
}

int numa_topology_parse(const char *path, char *errbuf, size_t errlen, NumaTopology **ret) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        NumaTopology *t;
        size_t linecap = 0, cap = 0;
        unsigned lineno = 0;
        ssize_t l;
        int r = 0;

        f = fopen(path, "re");
        if (!f) {
                r = negative_errno();
                if (errbuf && errlen)
                        snprintf(errbuf, errlen, "%s: %s", path, strerror(-r));
                return r;
        }
        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        t->injected = true;
        t->default_nid = -1;

        while ((l = getline(&line, &linecap, f)) >= 0) {
                char *hash;

                lineno++;
                if ((size_t) l != strlen(line)) {
                        r = parse_error(errbuf, errlen, lineno, "NUL byte in line");
                        break;
                }
                hash = strchr(line, '#');
                if (hash)
                        *hash = 0;
                line[strcspn(line, "\n")] = 0;
                r = parse_line(t, line, lineno, &cap, errbuf, errlen);
                if (r < 0)
                        break;
        }
        if (r == 0 && ferror(f))
                r = -EIO;
        if (r == 0 && t->nodes == 0)
                r = parse_error(errbuf, errlen, lineno, "no 'nodes=' line");
        if (r == 0)
                r = topology_build(t, errbuf, errlen);
        if (r == 0) {
                t->path = strdup(path);
                if (!t->path)
                        r = -ENOMEM;
        }
        if (r < 0) {
                if (r == -EINVAL)
                        (void) prefix_path(errbuf, errlen, path);
                topology_free_unbuilt(t);
                return r;
        }
        *ret = t;
        return 0;
}

int numa_topology_load(const char *path, NumaTopology **ret) {
        char err[512] = "";
        int r = numa_topology_parse(path, err, sizeof err, ret);

        if (r < 0)
                return log_error_errno(r, "Failed to load NUMA topology: %s", err[0] ? err : strerror(-r));
        return 0;
}

int numa_topology_reload(NumaTopology *t) {
        NumaTopology *n;
        uint64_t gen;
        int r;

        if (!t->injected)
                return 0;
        r = numa_topology_load(t->path, &n);
        if (r < 0)
                return log_warning_errno(r, "Keeping the previous NUMA topology of '%s'.", t->path);
        gen = t->generation;
        topology_clear(t);
        *t = *n;
        free(n);
        t->generation = gen + 1;
        return 0;
}

bool numa_topology_is_injected(const NumaTopology *t) {
        return t->injected;
}

int numa_topology_nodes(const NumaTopology *t) {
        return t->nodes;
}

uint64_t numa_topology_generation(const NumaTopology *t) {
        return t->generation;
}

static int key_cmp(const void *k, const void *e) {
        return strcmp(k, ((const Key *) e)->key);
}

int numa_topology_page_nid(const NumaTopology *t, const char *key, uint64_t page_index) {
        const Key *k;

        if (!t->injected)
                return -EOPNOTSUPP;
        k = bsearch(key, t->keys, t->nkeys, sizeof(Key), key_cmp);
        if (k) {
                /* Last range with first <= page_index. */
                const Range *r = t->ranges + k->first_range;
                size_t lo = 0, hi = k->nranges;
                while (lo < hi) {
                        size_t mid = (lo + hi) / 2;
                        if (r[mid].first <= page_index)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                if (lo > 0 && page_index - r[lo - 1].first < r[lo - 1].npages)
                        return r[lo - 1].nid;
        }
        return t->default_nid >= 0 ? t->default_nid : -ENOENT;
}

int numa_topology_pages_nid(const NumaTopology *t, pid_t pid, void *const *addrs, size_t n, int *ret_nids) {
        if (t->injected)
                return -EOPNOTSUPP;
        if (numa_available() < 0)
                return -ENODEV;
        if (n == 0)
                return 0;
        /* nodes == NULL: query only, nothing moves. */
        if (numa_move_pages(pid, (unsigned long) n, (void **) addrs, NULL, ret_nids, 0) < 0)
                return negative_errno();
        return 0;
}

int numa_topology_guest_page_nid(const NumaTopology *t, const char *key, uint64_t page_index, pid_t pid,
                                 uint64_t addr) {
        void *a = (void *) (uintptr_t) addr;
        int nid, r;

        if (t->injected)
                return numa_topology_page_nid(t, key, page_index);
        r = numa_topology_pages_nid(t, pid, &a, 1, &nid);
        return r < 0 ? r : nid;
}
