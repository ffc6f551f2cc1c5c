/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A compact open-addressing set of uint32 values (page ids or stable node
 * indexes) keyed by a 64-bit page hash. This is what the engine's stable and
 * unstable "trees" are: KSM orders its trees by memcmp, we look up by hash
 * equality and confirm with memcmp, so ordering buys nothing and an entry
 * costs 5 bytes, not 24.
 *
 * The key's low 32 bits place an entry (home = fastrange of them over a
 * non-power-of-two capacity, linear probing); the owner can recompute them
 * from a value (key_fn), all that moving an entry needs. Bits 32-39 are the
 * entry's 8-bit fingerprint (0: empty slot), stored with it and moved with
 * it. A probe walks the fingerprints only, and touches the values and the
 * owner's memory only on a fingerprint hit; an owner that keeps only the
 * low 32 bits of a page's hash (the unstable tree: a slot's checksum) so
 * still matches on 40. Deletion shifts later entries back, so there are no
 * tombstones and a probe stops at the first empty slot.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TABLE_EMPTY UINT32_MAX

/* The low 32 bits of value's key. */
typedef uint32_t (*table_key_fn)(const void *ctx, uint32_t value);

typedef struct Table {
        uint32_t *values;
        uint8_t *fps;
        uint32_t cap;
        uint32_t n;
} Table;

typedef struct TableIter {
        uint32_t pos;
        uint8_t fp;
} TableIter;

/* Make room for at least n entries without growing. -ENOMEM. */
int table_reserve(Table *t, uint32_t n, table_key_fn key, const void *ctx);
int table_insert(Table *t, uint64_t key, uint32_t value, table_key_fn keyfn, const void *ctx);
/* Remove value (stored under key); returns true if it was present. */
bool table_remove(Table *t, uint64_t key, uint32_t value, table_key_fn keyfn, const void *ctx);
void table_clear(Table *t);
size_t table_bytes(const Table *t);

/* Candidates for key: values whose fingerprint matches (the caller checks
 * the rest of the key). Returns TABLE_EMPTY when done. */
void table_iter_init(const Table *t, uint64_t key, TableIter *it);
uint32_t table_iter_next(const Table *t, TableIter *it);
/* Start loading the cache lines a lookup of key probes first. */
void table_prefetch(const Table *t, uint64_t key);
