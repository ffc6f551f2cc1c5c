/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Randomized model test of the engine: random sequences of scans, guest
 * writes, completions of in-flight merges, unmerges, VM exits and tunable
 * changes, checked after every step against a reference model (what every
 * page must show, what the backend maps) and the engine's own self-check.
 * DEDUP_MODEL_SEED and DEDUP_MODEL_STEPS reproduce or extend a run.
 *
 * The hashed variants scan as dedupd does: pages hashed first (by scan
 * threads), fed by hash later, merges verified by the backend only, and
 * guest writes landing between hashing and feeding.
 */

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "check-suite.h"
#include "engine-backend.h"

#define NVMS 4
#define PER 48

static Backend B;
static uint64_t expected[NVMS * PER];
static uint32_t vm_id[NVMS];
static dedup_page_t base[NVMS];         /* first page id of VM slot v */
static bool alive[NVMS];
static unsigned rnd_state;

static unsigned rnd(unsigned n) {
        return (unsigned) rand_r(&rnd_state) % n;
}

static uint64_t random_cid(void) {
        /* A small alphabet: lots of duplicates, some zero pages. */
        return rnd(12);
}

static void add_vm(unsigned v) {
        dedup_page_t first;

        ck_assert_int_eq(dedup_engine_add_vm(B.e, (uint16_t) rnd(2), &vm_id[v]), 0);
        ck_assert_int_eq(dedup_engine_add_region(B.e, vm_id[v], PER, &first), 0);
        /* Freed ids are reused first-fit, so all fit in NVMS * PER. */
        ck_assert_uint_le(first + PER, NVMS * PER);
        base[v] = first;
        for (uint32_t p = first; p < first + PER; p++) {
                B.map[p] = BE_OWN;
                B.cid[p] = expected[p] = random_cid();
        }
        alive[v] = true;
}

/* A guest write between a scan's hashing and its feeding, now and then. */
static void write_in_gap(void *userdata) {
        unsigned v = rnd(NVMS);
        dedup_page_t p = base[v] + rnd(PER);

        if (!alive[v] || rnd(2))
                return;
        expected[p] = random_cid();
        backend_write(&B, p, expected[p]);
}

static void check_model(unsigned step, const char *op) {
        DedupEngineStats st;
        const char *why = NULL;
        uint64_t mapped = 0, zero = 0, distinct = 0;
        static uint8_t seen[1 << 16];

        ck_assert_msg(dedup_engine_verify(B.e, &why) == 0, "step %u (%s): %s", step, op, why);
        for (unsigned v = 0; v < NVMS; v++)
                for (uint32_t p = base[v]; p < base[v] + PER; p++) {
                        if (!alive[v])
                                continue;
                        ck_assert_msg(backend_visible(&B, p) == expected[p],
                                      "step %u (%s): page %u shows %llu, want %llu", step, op, p,
                                      (unsigned long long) backend_visible(&B, p),
                                      (unsigned long long) expected[p]);
                        if (B.map[p] == BE_CANON) {
                                mapped++;
                                ck_assert_uint_lt(B.mapped_loc[p], sizeof(seen));
                                if (!seen[B.mapped_loc[p]]++)
                                        distinct++;
                        }
                        zero += B.map[p] == BE_ZERO;
                }
        for (uint32_t l = 0; l < B.ncanon && l < sizeof(seen); l++)
                seen[l] = 0;
        why = backend_check(&B, NULL);
        ck_assert_msg(!why, "step %u (%s): %s", step, op, why);
        dedup_engine_stats(B.e, &st);
        /* The reference: what the backend maps is what the counters say. */
        ck_assert_msg(st.pages_shared == distinct, "step %u (%s): pages_shared %llu, %llu canonical pages mapped",
                      step, op, (unsigned long long) st.pages_shared, (unsigned long long) distinct);
        ck_assert_msg(st.pages_shared + st.pages_sharing == mapped, "step %u (%s): shared+sharing != mapped",
                      step, op);
        ck_assert_msg(zero >= st.zero_pages, "step %u (%s): zero_pages above zero-mapped pages", step, op);
        ck_assert_msg(B.live_canon >= st.pages_shared, "step %u (%s): canonical pages leaked or lost", step, op);
}

static void complete_all(void) {
        for (unsigned v = 0; v < NVMS; v++)
                for (dedup_page_t p = base[v]; alive[v] && p < base[v] + PER; p++)
                        backend_complete(&B, p);
}

START_TEST(test_model) {
        const char *seed_env = getenv("DEDUP_MODEL_SEED"), *steps_env = getenv("DEDUP_MODEL_STEPS");
        unsigned seed = seed_env ? (unsigned) atoi(seed_env) : 20261123u + (unsigned) _i;
        unsigned steps = steps_env ? (unsigned) atoi(steps_env) : 20000;

        rnd_state = seed;
        ck_assert_int_eq(backend_init(&B, NVMS * PER), 0);
        B.async = _i % 2;
        if (_i & 2)
                ck_assert_int_eq(dedup_engine_set_merge_across_nodes(B.e, false), 0);
        if (_i & 4) {
                B.hashed = true;
                B.between = write_in_gap;
                dedup_engine_set_merge_verifies(B.e, true);
        }
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 2 + _i), 0);
        for (unsigned v = 0; v < NVMS; v++)
                add_vm(v);

        for (unsigned step = 0; step < steps; step++) {
                unsigned v = rnd(NVMS), op = rnd(100);
                dedup_page_t p = base[v] + rnd(PER);
                const char *name;
                int r;

                if (op < 30) {
                        name = "write";
                        if (!alive[v])
                                continue;
                        expected[p] = random_cid();
                        backend_write(&B, p, expected[p]);
                } else if (op < 55) {
                        name = "scan";
                        if (!alive[v])
                                continue;
                        ck_assert_int_eq(backend_scan(&B, base[v], PER, rnd(2)), 0);
                } else if (op < 62) {
                        name = "full_scan_done";
                        B.now += rnd(3000);
                        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
                } else if (op < 80) {
                        name = "complete";
                        for (unsigned i = 0; i < 8 && alive[v]; i++)
                                backend_complete(&B, base[v] + rnd(PER));
                } else if (op < 85) {
                        name = "unmerge_vm";
                        if (!alive[v])
                                continue;
                        r = dedup_engine_unmerge_vm(B.e, vm_id[v], 1 + rnd(20));
                        ck_assert_int_ge(r, 0);
                } else if (op < 88) {
                        name = "unmerge_all";
                        ck_assert_int_ge(dedup_engine_unmerge_all(B.e, 1 + rnd(40)), 0);
                } else if (op < 91) {
                        name = "vm_exit";
                        if (!alive[v])
                                continue;
                        r = dedup_engine_remove_vm(B.e, vm_id[v], 1 + rnd(60));
                        if (r == -EBUSY) {
                                /* Its VMM died: the daemon fails what was in flight. */
                                for (dedup_page_t q = base[v]; q < base[v] + PER; q++) {
                                        if (dedup_engine_page_state(B.e, q) == DEDUP_PAGE_MERGING)
                                                dedup_engine_merge_done(B.e, q, -EPIPE);
                                        else if (dedup_engine_page_state(B.e, q) == DEDUP_PAGE_UNMERGING)
                                                dedup_engine_unmerge_done(B.e, q, -EPIPE);
                                }
                                r = dedup_engine_remove_vm(B.e, vm_id[v], 1 + rnd(60));
                        }
                        ck_assert_int_ge(r, 0);
                        while (r == 1)
                                r = dedup_engine_remove_vm(B.e, vm_id[v], 1 + rnd(60));
                        ck_assert_int_eq(r, 0);
                        alive[v] = false;
                        for (dedup_page_t q = base[v]; q < base[v] + PER; q++)
                                B.map[q] = BE_OWN;
                } else if (op < 94) {
                        name = "vm_start";
                        if (alive[v])
                                continue;
                        add_vm(v);
                } else if (op < 96) {
                        name = "migrate";
                        if (B.ncanon > 0) {
                                uint32_t l = rnd(B.ncanon);
                                if (B.canon_cid[l] != UINT64_MAX)
                                        B.canon_nid[l] = (int8_t) rnd(2);
                        }
                } else if (op < 98) {
                        name = "max_page_sharing";
                        DedupEngineStats st;
                        unsigned want = 2 + rnd(4);
                        dedup_engine_stats(B.e, &st);
                        r = dedup_engine_set_max_page_sharing(B.e, want);
                        ck_assert(r == 0 || r == -EBUSY);
                        ck_assert(r == -EBUSY || dedup_engine_get_max_page_sharing(B.e) == want);
                        ck_assert(r == 0 || st.pages_shared > 0 || st.pages_pending > 0 ||
                                  st.stable_node_dups > 0);
                } else {
                        name = "written_unmerged";
                        /* A COW break reported while an unmerge is in flight. */
                        if (alive[v] && dedup_engine_page_state(B.e, p) == DEDUP_PAGE_UNMERGING) {
                                B.cid[p] = backend_visible(&B, p);
                                B.map[p] = BE_OWN;
                                dedup_engine_page_written(B.e, p);
                        }
                }
                check_model(step, name);
        }
        /* Settle: everything completes, then Run=2 leaves nothing merged. */
        complete_all();
        while (dedup_engine_unmerge_all(B.e, 16) == 1)
                complete_all();
        check_model(steps, "final");
        B.now += 10000;
        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
        DedupEngineStats st;
        dedup_engine_stats(B.e, &st);
        ck_assert_uint_eq(st.pages_shared + st.pages_sharing + st.zero_pages + st.stable_node_dups, 0);
        ck_assert_uint_eq(B.live_canon, 0);
        printf("model: seed=%u steps=%u async=%d numa=%d hashed=%d: ok\n", seed, steps, B.async, !!(_i & 2),
               B.hashed);
        backend_done(&B);
}
END_TEST

int main(void) {
        /* bit 0: async, bit 1: per-node trees, bit 2: hashed scans */
        const CheckCase cases[] = {
                { "random_operations", test_model, 300, 8 },
        };

        return check_run(check_suite("engine-model", cases, ELEMENTSOF(cases), 0, NULL));
}
