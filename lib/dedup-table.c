/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>

#include "dedup-table.h"

/* Grow when more than 3/4 full: expected probes stay under 3 on a miss
 * with fingerprints filtering almost all key_fn calls. */
#define TABLE_LOAD_NUM 3
#define TABLE_LOAD_DEN 4
#define FP_EMPTY 0

static uint32_t home(uint32_t key, uint32_t cap) {
        return (uint32_t) (((uint64_t) key * cap) >> 32);
}

static uint8_t fingerprint(uint64_t key) {
        /* Bits the home (the low 32) does not use. 0 marks an empty slot. */
        uint8_t fp = (uint8_t) (key >> 32);

        return fp ? fp : 1;
}

static void place(Table *t, uint32_t key, uint8_t fp, uint32_t value) {
        uint32_t i = home(key, t->cap);

        while (t->fps[i] != FP_EMPTY)
                i = i + 1 == t->cap ? 0 : i + 1;
        t->values[i] = value;
        t->fps[i] = fp;
}

int table_reserve(Table *t, uint32_t n, table_key_fn keyfn, const void *ctx) {
        uint64_t want = (uint64_t) n * TABLE_LOAD_DEN / TABLE_LOAD_NUM + 1;
        uint32_t *values, *old = t->values, oldcap = t->cap;
        uint8_t *fps, *oldfps = t->fps;

        if (want <= t->cap)
                return 0;
        if (want < 16)
                want = 16;
        if (want >= UINT32_MAX)
                return -ENOMEM;

        values = malloc(want * sizeof(uint32_t));
        fps = calloc(want, 1);  /* FP_EMPTY */
        if (!values || !fps) {
                free(values);
                free(fps);
                return -ENOMEM;
        }
        for (uint64_t i = 0; i < want; i++)
                values[i] = TABLE_EMPTY;

        t->values = values;
        t->fps = fps;
        t->cap = (uint32_t) want;
        for (uint32_t i = 0; i < oldcap; i++)
                if (oldfps[i] != FP_EMPTY)
                        place(t, keyfn(ctx, old[i]), oldfps[i], old[i]);
        free(old);
        free(oldfps);
        return 0;
}

int table_insert(Table *t, uint64_t key, uint32_t value, table_key_fn keyfn, const void *ctx) {
        if ((uint64_t) (t->n + 1) * TABLE_LOAD_DEN > (uint64_t) t->cap * TABLE_LOAD_NUM) {
                /* Grow by half: the unstable tree is sized from the last scan,
                 * so growth is rare and doubling would waste the budget. */
                uint64_t n = (uint64_t) t->n + t->n / 2 + 16;
                int r = table_reserve(t, n > UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t) n, keyfn, ctx);
                if (r < 0)
                        return r;
        }
        place(t, (uint32_t) key, fingerprint(key), value);
        t->n++;
        return 0;
}

bool table_remove(Table *t, uint64_t key, uint32_t value, table_key_fn keyfn, const void *ctx) {
        uint32_t i, j;

        if (t->cap == 0)
                return false;
        for (i = home((uint32_t) key, t->cap); t->values[i] != value; i = i + 1 == t->cap ? 0 : i + 1)
                if (t->values[i] == TABLE_EMPTY)
                        return false;

        /* Backward-shift deletion: move up any later entry of the cluster
         * whose home does not lie cyclically in (i, j]. */
        for (j = i;;) {
                uint32_t h;

                t->values[i] = TABLE_EMPTY;
                t->fps[i] = FP_EMPTY;
                for (;;) {
                        j = j + 1 == t->cap ? 0 : j + 1;
                        if (t->fps[j] == FP_EMPTY) {
                                t->n--;
                                return true;
                        }
                        h = home(keyfn(ctx, t->values[j]), t->cap);
                        if (i <= j ? (i < h && h <= j) : (i < h || h <= j))
                                continue;
                        break;
                }
                t->values[i] = t->values[j];
                t->fps[i] = t->fps[j];
                i = j;
        }
}

void table_clear(Table *t) {
        free(t->values);
        free(t->fps);
        *t = (Table) {};
}

size_t table_bytes(const Table *t) {
        return (size_t) t->cap * (sizeof(uint32_t) + 1);
}

void table_iter_init(const Table *t, uint64_t key, TableIter *it) {
        *it = (TableIter) {
                .pos = t->cap ? home((uint32_t) key, t->cap) : 0,
                .fp = fingerprint(key),
        };
}

uint32_t table_iter_next(const Table *t, TableIter *it) {
        if (t->cap == 0)
                return TABLE_EMPTY;
        /* A probe reads only the fingerprints (64 slots a cache line) until
         * one matches: a key that is not there, as for most pages of a
         * scan, never touches the values. */
        for (;;) {
                uint32_t i = it->pos;
                uint8_t fp = t->fps[i];

                if (fp == FP_EMPTY)
                        return TABLE_EMPTY;
                it->pos = i + 1 == t->cap ? 0 : i + 1;
                if (fp == it->fp)
                        return t->values[i];
        }
}

void table_prefetch(const Table *t, uint64_t key) {
        uint32_t i;

        if (t->cap == 0)
                return;
        i = home((uint32_t) key, t->cap);
        __builtin_prefetch(&t->values[i]);
        __builtin_prefetch(&t->fps[i]);
}
