/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A compact open-addressing set of uint32 values (page ids or stable node
 * indexes) keyed by a 32-bit hash that the owner can recompute from a value
 * (key_fn). This is what the engine's stable and unstable "trees" are: KSM
 * orders its trees by memcmp, we look up by hash equality and confirm with
 * memcmp, so ordering buys nothing and an entry costs 5 bytes, not 24.
 *
 * Each slot holds the value and an 8-bit fingerprint of its key (0: empty),
 * so a probe walks the fingerprints only, and touches the values and the
 * owner's memory (key_fn) only on a fingerprint hit. Linear
 * probing over a non-power-of-two capacity (home = fastrange of the key);
 * deletion shifts later entries back, so there are no tombstones and a probe
 * stops at the first empty slot.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TABLE_EMPTY UINT32_MAX

typedef uint32_t (*table_key_fn)(const void *ctx, uint32_t value);

typedef struct Table {
        uint32_t *values;
        uint8_t *fps;
        uint32_t cap;
        uint32_t n;
} Table;

typedef struct TableIter {
        uint32_t pos;
        uint32_t key;
        uint8_t fp;
} TableIter;

/* Make room for at least n entries without growing. -ENOMEM. */
int table_reserve(Table *t, uint32_t n, table_key_fn key, const void *ctx);
int table_insert(Table *t, uint32_t key, uint32_t value, table_key_fn keyfn, const void *ctx);
/* Remove value (stored under key); returns true if it was present. */
bool table_remove(Table *t, uint32_t key, uint32_t value, table_key_fn keyfn, const void *ctx);
void table_clear(Table *t);
size_t table_bytes(const Table *t);

/* Candidates for key: values whose fingerprint matches (the caller checks
 * the full key). Returns TABLE_EMPTY when done. */
void table_iter_init(const Table *t, uint32_t key, TableIter *it);
uint32_t table_iter_next(const Table *t, TableIter *it);
/* Start loading the cache lines a lookup of key probes first. */
void table_prefetch(const Table *t, uint32_t key);
