/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Check suite for the engine (lib/dedup-engine.h) over the in-memory backend. */

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <xxhash.h>

#include "check-suite.h"
#include "dedup-engine-internal.h"
#include "dedup-table.h"
#include "engine-backend.h"

static Backend B;
static DedupEngineStats S;

/* nvms VMs of per pages each, VM v in group groups[v] (or 0). */
static void setup_vms(uint32_t nvms, uint32_t per, const uint16_t *groups) {
        ck_assert_int_eq(backend_init(&B, nvms * per), 0);
        for (uint32_t v = 0; v < nvms; v++) {
                uint32_t vm;
                dedup_page_t first;
                ck_assert_int_eq(dedup_engine_add_vm(B.e, groups ? groups[v] : 0, &vm), 0);
                ck_assert_int_eq(dedup_engine_add_region(B.e, vm, per, &first), 0);
                ck_assert_uint_eq(first, v * per);
        }
}

static void teardown(void) {
        backend_done(&B);
}

static void verify(void) {
        const char *why = NULL;
        int r = dedup_engine_verify(B.e, &why);

        ck_assert_msg(r == 0, "engine inconsistent: %s", why);
        why = backend_check(&B, NULL);
        ck_assert_msg(!why, "backend: %s", why);
        ck_assert_uint_eq(B.bad_merges, 0);
        dedup_engine_stats(B.e, &S);
}

/* A removed VM's memory is gone with its VMM. */
static void forget_pages(dedup_page_t first, uint32_t n) {
        for (dedup_page_t p = first; p < first + n; p++)
                B.map[p] = BE_OWN;
}

static void scan_all(unsigned times) {
        for (unsigned i = 0; i < times; i++) {
                ck_assert_int_eq(backend_scan(&B, 0, B.npages, 0), 0);
                ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
                verify();
        }
}

/* --- table --- */

static uint32_t keys[4096];
static uint32_t key_of(const void *ctx, uint32_t v) {
        return keys[v];
}

START_TEST(test_table_collisions) {
        Table t = {};
        TableIter it;
        uint32_t v, present[4096] = {};

        /* Few distinct keys: long clusters, many same-key entries. */
        for (uint32_t i = 0; i < 4096; i++)
                keys[i] = (uint32_t) (i % 7) * 0x9e3779b9u;
        for (uint32_t i = 0; i < 4096; i++)
                ck_assert_int_eq(table_insert(&t, keys[i], i, key_of, NULL), 0);
        srand(1);
        for (uint32_t round = 0; round < 3000; round++) {
                uint32_t i = (uint32_t) rand() % 4096;
                bool was = !present[i];
                ck_assert_int_eq(table_remove(&t, keys[i], i, key_of, NULL), was);
                present[i] = 1;
        }
        for (uint32_t k = 0; k < 7; k++) {
                uint32_t seen = 0, want = 0;
                for (uint32_t i = k; i < 4096; i += 7)
                        want += !present[i];
                table_iter_init(&t, k * 0x9e3779b9u, &it);
                while ((v = table_iter_next(&t, &it)) != TABLE_EMPTY)
                        if (keys[v] == k * 0x9e3779b9u) {
                                ck_assert(!present[v]);
                                seen++;
                        }
                ck_assert_uint_eq(seen, want);
        }
        table_clear(&t);
}
END_TEST

/* Entries with one home and different fingerprints (key bits 32-39): a
 * lookup meets only its own, after the table grew around them and after
 * deletions shifted them back. */
START_TEST(test_table_fingerprints) {
        const uint32_t low = 0x12345678u;
        Table t = {};
        TableIter it;
        uint32_t v;

        for (uint32_t i = 0; i < 4096; i++)
                keys[i] = low;
        for (uint32_t i = 0; i < 4096; i++)
                ck_assert_int_eq(table_insert(&t, (uint64_t) (i % 255 + 1) << 32 | low, i, key_of, NULL), 0);
        for (uint32_t i = 0; i < 4096; i += 2)
                ck_assert(table_remove(&t, (uint64_t) (i % 255 + 1) << 32 | low, i, key_of, NULL));
        for (uint64_t fp = 1; fp <= 255; fp++) {
                uint32_t seen = 0, want = 0;

                for (uint32_t i = 1; i < 4096; i += 2)
                        want += i % 255 + 1 == fp;
                table_iter_init(&t, fp << 32 | low, &it);
                while ((v = table_iter_next(&t, &it)) != TABLE_EMPTY) {
                        ck_assert_uint_eq(v % 255 + 1, fp);
                        ck_assert_uint_eq(v % 2, 1);
                        seen++;
                }
                ck_assert_uint_eq(seen, want);
        }
        table_clear(&t);
}
END_TEST

/* --- merging --- */

START_TEST(test_merge_two_vms) {
        setup_vms(2, 64, NULL);
        for (uint32_t p = 0; p < 64; p++)
                B.cid[p] = B.cid[64 + p] = 1000 + p;
        scan_all(1);            /* first sight: nothing known, merged at once */
        ck_assert_uint_eq(S.pages_shared, 64);
        ck_assert_uint_eq(S.pages_sharing, 64);
        ck_assert_uint_eq(S.pages_unshared, 0);
        ck_assert_uint_eq(S.pages_volatile, 0);
        ck_assert_uint_eq(B.live_canon, 64);
        ck_assert_uint_eq(S.full_scans, 1);
        ck_assert_uint_eq(S.pages_scanned, 128);
}
END_TEST

/* Pages already seen must show the same content in two scans running
 * before they merge (KSM's volatility filter): here VM 1's pages take VM
 * 0's content after the first scan. */
START_TEST(test_filter_after_first_sight) {
        setup_vms(2, 64, NULL);
        for (uint32_t p = 0; p < 64; p++) {
                B.cid[p] = 1000 + p;
                B.cid[64 + p] = 2000 + p;
        }
        scan_all(1);
        ck_assert_uint_eq(S.pages_unshared, 128);
        for (uint32_t p = 0; p < 64; p++)
                backend_write(&B, 64 + p, 1000 + p);
        scan_all(1);            /* VM 1's content changed: checksum only */
        ck_assert_uint_eq(S.pages_volatile, 64);
        ck_assert_uint_eq(S.pages_shared, 0);
        scan_all(1);
        ck_assert_uint_eq(S.pages_shared, 64);
        ck_assert_uint_eq(S.pages_sharing, 64);
        ck_assert_uint_eq(S.pages_volatile, 0);
}
END_TEST

START_TEST(test_stable_hit_first_sight) {
        setup_vms(3, 16, NULL);
        for (uint32_t p = 0; p < 16; p++)
                B.cid[p] = B.cid[16 + p] = 7;
        /* VM 2 shows the content only after it is stable. */
        for (uint32_t p = 0; p < 16; p++)
                B.cid[32 + p] = 100 + p;
        scan_all(2);
        ck_assert_uint_eq(S.pages_shared, 1);
        ck_assert_uint_eq(S.pages_sharing, 31);
        for (uint32_t p = 0; p < 16; p++)
                backend_write(&B, 32 + p, 7);
        scan_all(1);
        /* A stable-tree hit merges at once, no volatility round. */
        ck_assert_uint_eq(S.pages_sharing, 47);
        ck_assert_uint_eq(B.live_canon, 1);
}
END_TEST

START_TEST(test_hash_collisions_never_merge) {
        setup_vms(2, 32, NULL);
        B.force_hash = true;            /* every page hashes alike */
        for (uint32_t p = 0; p < 32; p++) {
                B.cid[p] = 500 + p;
                B.cid[32 + p] = 500 + (p % 4 == 0 ? p : 1000 + p);
        }
        scan_all(3);
        /* Only the 8 truly equal pairs merged, nothing else. */
        ck_assert_uint_eq(S.pages_shared, 8);
        ck_assert_uint_eq(S.pages_sharing, 8);
        ck_assert_uint_eq(S.pages_unshared, 48);
        for (uint32_t p = 0; p < 64; p++)
                ck_assert_uint_eq(backend_visible(&B, p), B.cid[p] ? B.cid[p] : 0);
}
END_TEST

/* dedupd's merge op compares under protection, so lookups may trust the
 * hash: equal pages merge without a single read, and even when every page
 * hashes alike no page ever shows wrong content; collisions only fail. */
START_TEST(test_merge_verifies_trusts_hash) {
        setup_vms(3, 32, NULL);
        dedup_engine_set_merge_verifies(B.e, true);
        for (uint32_t p = 0; p < 32; p++)
                B.cid[p] = B.cid[32 + p] = B.cid[64 + p] = 300 + p;
        scan_all(2);
        ck_assert_uint_eq(S.pages_shared, 32);
        ck_assert_uint_eq(S.pages_sharing, 64);
        ck_assert_uint_eq(B.ops_read, 0);
        backend_done(&B);

        setup_vms(2, 32, NULL);
        dedup_engine_set_merge_verifies(B.e, true);
        B.force_hash = true;
        for (uint32_t p = 0; p < 32; p++) {
                B.cid[p] = 500 + p;
                B.cid[32 + p] = 500 + (p % 4 == 0 ? p : 1000 + p);
        }
        scan_all(3);
        ck_assert_uint_eq(B.ops_read, 0);
        ck_assert_uint_gt(B.ops_merge, S.pages_sharing);        /* collisions failed */
        ck_assert_uint_le(S.pages_sharing, 8);
        for (uint32_t p = 0; p < 64; p++)
                ck_assert_uint_eq(backend_visible(&B, p), B.cid[p] ? B.cid[p] : 0);
}
END_TEST

/* A merged page the guest writes is merged again only after a pause of
 * smart-scan skips, even when its content matches a stable page at once;
 * without smart scan, at the next scan. */
START_TEST(test_thrash_avoidance) {
        for (int smart = 1; smart >= 0; smart--) {
                unsigned scans = 0;

                setup_vms(2, 8, NULL);
                dedup_engine_set_smart_scan(B.e, smart);
                for (uint32_t p = 0; p < 8; p++)
                        B.cid[p] = B.cid[8 + p] = 70 + p;
                scan_all(2);
                ck_assert_uint_eq(S.pages_sharing, 8);
                backend_write(&B, 0, 999);              /* COW break ... */
                backend_write(&B, 0, 70);               /* ... back to the shared content */
                ck_assert_uint_ne(dedup_engine_page_state(B.e, 0), DEDUP_PAGE_MERGED);
                while (dedup_engine_page_state(B.e, 0) != DEDUP_PAGE_MERGED && scans < 20) {
                        scan_all(1);
                        scans++;
                }
                ck_assert_uint_eq(dedup_engine_page_state(B.e, 0), DEDUP_PAGE_MERGED);
                if (smart)      /* 8 skips, then the next scan of its period */
                        ck_assert(scans >= 9 && scans <= 16);
                else
                        ck_assert_uint_eq(scans, 1);
                backend_done(&B);
        }
        setup_vms(1, 1, NULL);  /* for the teardown */
}
END_TEST

/* A guest whose pages smart scan already looks at only every 8th scan,
 * and a guest started later with the same content: they merge, whatever
 * the full scan the second one starts at. */
START_TEST(test_smart_scan_late_guest) {
        for (unsigned late = 0; late < 9; late++) {
                unsigned scans = 0;
                uint32_t vm;
                dedup_page_t first;

                ck_assert_int_eq(backend_init(&B, 32), 0);
                for (uint32_t p = 0; p < 16; p++)
                        B.cid[p] = B.cid[16 + p] = 300 + p;
                ck_assert_int_eq(dedup_engine_add_vm(B.e, 0, &vm), 0);
                ck_assert_int_eq(dedup_engine_add_region(B.e, vm, 16, &first), 0);
                for (unsigned i = 0; i < 20 + late; i++) {
                        ck_assert_int_eq(backend_scan(&B, 0, 16, 0), 0);
                        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
                }
                ck_assert_int_eq(dedup_engine_add_vm(B.e, 0, &vm), 0);
                ck_assert_int_eq(dedup_engine_add_region(B.e, vm, 16, &first), 0);
                ck_assert_uint_eq(first, 16);
                do {
                        scan_all(1);
                        scans++;
                } while (S.pages_sharing < 16 && scans < 100);
                ck_assert_msg(S.pages_sharing == 16, "started after %u scans: %llu pages sharing after %u scans",
                              20 + late, (unsigned long long) S.pages_sharing, scans);
                ck_assert_uint_le(scans, 20);
                backend_done(&B);
        }
        setup_vms(1, 1, NULL);  /* for the teardown */
}
END_TEST

START_TEST(test_volatility_filter) {
        setup_vms(2, 8, NULL);
        dedup_engine_set_smart_scan(B.e, false);
        for (uint32_t p = 0; p < 8; p++)
                B.cid[p] = B.cid[8 + p] = 50 + p;
        for (unsigned round = 0; round < 5; round++) {
                /* Pages 0..3 of VM 0 change every scan: never in a tree. */
                for (uint32_t p = 0; p < 4; p++)
                        backend_write(&B, p, 9000 + round * 10 + p);
                scan_all(1);
        }
        ck_assert_uint_eq(S.pages_volatile, 4);
        ck_assert_uint_eq(S.pages_shared, 4);           /* pages 4..7 merged */
        ck_assert_uint_eq(S.pages_unshared, 4);         /* VM 1's 0..3 wait unshared */
}
END_TEST

/* The scan after a guest's first one puts all its unchanged pages in the
 * unstable tree: the tree is allocated for them at once, not grown step by
 * step (each step re-reads the slot of every entry so far). */
START_TEST(test_unstable_sized_from_first_scan) {
        const uint32_t n = 4096;
        DedupEngineStats before;
        Table want = {};

        setup_vms(1, n, NULL);
        for (uint32_t p = 0; p < n; p++)
                B.cid[p] = 1000 + p;
        scan_all(1); /* first sight: into a tree grown as they come */
        dedup_engine_stats(B.e, &before);
        ck_assert_int_eq(backend_scan(&B, 0, B.npages, 0), 0);
        dedup_engine_stats(B.e, &S);
        ck_assert_uint_eq(S.pages_unshared, n);
        ck_assert_int_eq(table_reserve(&want, n, key_of, NULL), 0);
        ck_assert_uint_eq(S.metadata_bytes - before.metadata_bytes, table_bytes(&want));
        table_clear(&want);
        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
        verify();
}
END_TEST

/* Scanning by hash (pages hashed first, on dedupd's scan threads) decides
 * exactly as scanning the pages, whether merges verify or not, and counts
 * pages_changed until nothing changes any more. */
START_TEST(test_hashed_same_as_pages) {
        enum dedup_page_state states[2][3 * 64];
        DedupEngineStats st[2];

        for (int verifies = 0; verifies <= 1; verifies++) {
                for (int hashed = 0; hashed <= 1; hashed++) {
                        setup_vms(3, 64, NULL);
                        B.hashed = hashed;
                        dedup_engine_set_merge_verifies(B.e, verifies);
                        for (uint32_t p = 0; p < 3 * 64; p++)
                                B.cid[p] = p % 5 == 0 ? 0 : p % 3 == 0 ? 5000 + p : 100 + p % 64;
                        scan_all(3);
                        ck_assert_uint_gt(S.pages_changed, 0);
                        scan_all(1);
                        st[hashed] = S;
                        scan_all(1);
                        ck_assert_uint_eq(S.pages_changed, st[hashed].pages_changed);   /* settled */
                        for (uint32_t p = 0; p < 3 * 64; p++)
                                states[hashed][p] = dedup_engine_page_state(B.e, p);
                        backend_done(&B);
                }
                ck_assert_uint_gt(st[1].pages_sharing, 0);
                ck_assert_uint_gt(st[1].zero_pages, 0);
                ck_assert_uint_eq(st[0].pages_shared, st[1].pages_shared);
                ck_assert_uint_eq(st[0].pages_sharing, st[1].pages_sharing);
                ck_assert_uint_eq(st[0].pages_unshared, st[1].pages_unshared);
                ck_assert_uint_eq(st[0].zero_pages, st[1].zero_pages);
                ck_assert_uint_eq(st[0].pages_changed, st[1].pages_changed);
                ck_assert_mem_eq(states[0], states[1], sizeof(states[0]));
        }
        setup_vms(1, 1, NULL);  /* for the teardown */
}
END_TEST

static void write_page_1(void *userdata) {
        backend_write(&B, 1, *(uint64_t *) userdata);
}

/* A page that changes between its hashing and the engine's turn is not
 * merged on its stale hash: the backend reads it to write the canonical
 * page, sees it changed and fails every merge onto that page, which the
 * engine then frees. */
START_TEST(test_hashed_stale) {
        uint64_t cid = 200;

        setup_vms(2, 1, NULL);
        B.hashed = true;
        dedup_engine_set_merge_verifies(B.e, true);
        dedup_engine_set_smart_scan(B.e, false);        /* page 0 is looked at every scan */
        B.cid[0] = B.cid[1] = 100;
        B.between = write_page_1;
        B.between_userdata = &cid;
        scan_all(1);            /* page 1 is fed 100's hash, but holds 200 */
        ck_assert_uint_eq(S.pages_sharing, 0);
        ck_assert_uint_eq(S.merge_aborts, 2);
        ck_assert_uint_eq(B.live_canon, 0);
        ck_assert_uint_eq(dedup_engine_page_state(B.e, 1), DEDUP_PAGE_NEW);
        B.between = NULL;
        backend_write(&B, 1, 100);      /* and back: merges once steady again */
        scan_all(2);
        ck_assert_uint_eq(S.pages_sharing, 1);
        ck_assert_uint_eq(B.live_canon, 1);
}
END_TEST

typedef struct CidHash {
        uint64_t hash, cid;
} CidHash;

static int by_low_hash(const void *a, const void *b) {
        uint32_t x = (uint32_t) ((const CidHash *) a)->hash, y = (uint32_t) ((const CidHash *) b)->hash;

        return x < y ? -1 : x > y;
}

/* Two contents whose hashes agree in their low 32 bits (the checksum a
 * page's slot keeps) and differ in bits 32-39: a birthday search. */
static void checksum_twins(uint64_t ret_cid[2]) {
        const uint32_t n = 1u << 18;    /* 8 such pairs expected */
        uint8_t buf[DEDUP_PAGE_SIZE] __attribute__((aligned(8)));
        CidHash *h = malloc(n * sizeof(CidHash));
        bool zero;

        ck_assert_ptr_nonnull(h);
        for (uint32_t i = 0; i < n; i++) {
                content_fill(1000 + i, buf);
                h[i] = (CidHash) { .hash = dedup_engine_hash(B.e, buf, &zero), .cid = 1000 + i };
        }
        qsort(h, n, sizeof(CidHash), by_low_hash);
        for (uint32_t i = 1; i < n; i++)
                if ((uint32_t) h[i].hash == (uint32_t) h[i - 1].hash &&
                    (uint8_t) (h[i].hash >> 32) != (uint8_t) (h[i - 1].hash >> 32)) {
                        ret_cid[0] = h[i - 1].cid, ret_cid[1] = h[i].cid;
                        free(h);
                        return;
                }
        free(h);
        ck_abort_msg("no checksum twins among %u contents", n);
}

/* Scanning by hash, the unstable tree matches pages on 40 bits of their
 * hash, not on the 32-bit checksum alone: a checksum collision costs no
 * merge (it would merge one page alone and abort the other). */
START_TEST(test_checksum_collision) {
        uint64_t cid[2];

        setup_vms(2, 1, NULL);
        B.hashed = true;
        dedup_engine_set_merge_verifies(B.e, true);
        checksum_twins(cid);
        B.cid[0] = cid[0], B.cid[1] = cid[1];
        scan_all(3);
        ck_assert_uint_eq(S.merge_aborts, 0);
        ck_assert_uint_eq(S.pages_shared, 0);
        ck_assert_uint_eq(B.ops_merge, 0);
        ck_assert_uint_eq(B.live_canon, 0);
        ck_assert_uint_eq(S.pages_unshared, 2);
}
END_TEST

START_TEST(test_zero_pages) {
        setup_vms(2, 32, NULL);
        for (uint32_t p = 0; p < 16; p++)
                B.cid[p] = 60 + p;
        scan_all(1);
        /* Zero pages merge at first sight, counted apart from sharing. */
        ck_assert_uint_eq(S.zero_pages, 48);
        ck_assert_uint_eq(S.pages_shared, 0);
        ck_assert_uint_eq(B.live_canon, 0);
        backend_write(&B, 40, 77);
        verify();
        ck_assert_uint_eq(S.zero_pages, 47);
        ck_assert_uint_eq(S.unmerges, 1);
        dedup_engine_set_use_zero_pages(B.e, false);
        ck_assert_int_eq(dedup_engine_unmerge_all(B.e, 1000), 0);
        verify();
        scan_all(2);
        /* Without UseZeroPages, zero pages merge like any content. */
        ck_assert_uint_eq(S.zero_pages, 0);
        ck_assert_uint_eq(S.pages_shared, 1);
        ck_assert_uint_eq(S.pages_sharing, 46);
}
END_TEST

START_TEST(test_groups_isolated) {
        static const uint16_t groups[] = { 1, 2, 1 };

        setup_vms(3, 16, groups);
        for (uint32_t p = 0; p < 48; p++)
                B.cid[p] = 300 + p % 16;
        scan_all(3);
        /* VMs 0 and 2 share; VM 1 (group 2) has no partner. */
        ck_assert_uint_eq(S.pages_shared, 16);
        ck_assert_uint_eq(S.pages_sharing, 16);
        ck_assert_uint_eq(S.pages_unshared, 16);
        for (uint32_t p = 16; p < 32; p++)
                ck_assert_int_eq(dedup_engine_page_state(B.e, p), DEDUP_PAGE_UNSTABLE);
        /* Moving a VM with merged pages between groups is refused. */
        ck_assert_int_eq(dedup_engine_set_vm_group(B.e, 0, 2), -EBUSY);
        ck_assert_int_eq(dedup_engine_set_vm_group(B.e, 1, 1), 0);
        scan_all(2);
        ck_assert_uint_eq(S.pages_sharing, 32);
}
END_TEST

/* --- chains and dups --- */

START_TEST(test_chain_at_limit) {
        setup_vms(8, 1, NULL);
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 2), 0);
        for (uint32_t p = 0; p < 8; p++)
                B.cid[p] = 4242;
        scan_all(3);
        /* 8 sharers, at most 2 per canonical page: one chain of 4 dups. */
        ck_assert_uint_eq(S.pages_shared, 4);
        ck_assert_uint_eq(S.pages_sharing, 4);
        ck_assert_uint_eq(S.stable_node_chains, 1);
        ck_assert_uint_eq(S.stable_node_dups, 4);
        ck_assert_uint_eq(B.live_canon, 4);

        /* Empty two dups: their pages are freed at once, the dups go stale. */
        for (uint32_t p = 0; p < 4; p++)
                backend_write(&B, p, 10 + p);
        verify();
        ck_assert_uint_eq(B.live_canon, 2);
        ck_assert_uint_eq(S.stable_node_dups, 4);
        /* Pruned only when StableNodeChainsPruneMillisecs have passed. */
        B.now += 1000;
        scan_all(1);
        ck_assert_uint_eq(S.stable_node_dups, 4);
        B.now += 1000;
        scan_all(1);
        ck_assert_uint_eq(S.stable_node_dups, 2);
        ck_assert_uint_eq(S.stable_node_chains, 1);

        /* One more dup empty: the chain collapses into a plain node. */
        backend_write(&B, 4, 99);
        backend_write(&B, 5, 98);
        B.now += 2000;
        scan_all(1);
        ck_assert_uint_eq(S.stable_node_chains, 0);
        ck_assert_uint_eq(S.stable_node_dups, 0);
        ck_assert_uint_eq(S.pages_shared, 1);
        ck_assert_uint_eq(S.pages_sharing, 1);
}
END_TEST

/* A restarted daemon rebuilds its trees from what the VMMs report they map:
 * same counters, chains and dups as before, and the adopted canonical pages
 * are freed when their last sharer leaves. */
START_TEST(test_adopt_merged) {
        const uint16_t groups[6] = { 0, 0, 0, 0, 0, 1 };
        DedupEngineStats before;
        uint8_t data[DEDUP_PAGE_SIZE];
        uint64_t loc;
        bool known;

        setup_vms(6, 4, groups);
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 3), 0);
        for (uint32_t p = 0; p < 24; p++)
                B.cid[p] = p % 4 == 3 ? 0 : p % 4 == 2 ? 500 + p : 77 + p % 4;
        scan_all(3);
        before = S;
        ck_assert_uint_gt(before.stable_node_chains, 0);
        ck_assert_uint_gt(before.zero_pages, 0);

        ck_assert_int_eq(backend_restart(&B), 0);
        for (uint32_t v = 0; v < 6; v++) {
                uint32_t vm;
                dedup_page_t first;
                ck_assert_int_eq(dedup_engine_add_vm(B.e, groups[v], &vm), 0);
                ck_assert_int_eq(dedup_engine_add_region(B.e, vm, 4, &first), 0);
        }
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 3), 0);
        for (dedup_page_t p = 0; p < 24; p++) {
                if (B.map[p] == BE_ZERO)
                        ck_assert_int_eq(dedup_engine_adopt_zero(B.e, p), 0);
                if (B.map[p] != BE_CANON)
                        continue;
                content_fill(backend_visible(&B, p), data);
                known = false;
                for (dedup_page_t q = 0; q < p; q++)
                        known |= B.map[q] == BE_CANON && B.mapped_loc[q] == B.mapped_loc[p];
                /* The daemon creates a loc with its first sharer only. */
                if (!known)
                        ck_assert_int_eq(dedup_engine_adopt_merged(B.e, p, B.mapped_loc[p], data, 0, false), -ESTALE);
                ck_assert_int_eq(dedup_engine_adopt_merged(B.e, p, B.mapped_loc[p], data, 0, !known), 0);
                /* A page is adopted once. */
                ck_assert_int_eq(dedup_engine_adopt_merged(B.e, p, B.mapped_loc[p], data, 0, false), -EBUSY);
        }
        verify();
        ck_assert_uint_eq(S.pages_shared, before.pages_shared);
        ck_assert_uint_eq(S.pages_sharing, before.pages_sharing);
        ck_assert_uint_eq(S.stable_node_chains, before.stable_node_chains);
        ck_assert_uint_eq(S.stable_node_dups, before.stable_node_dups);
        ck_assert_uint_eq(S.zero_pages, before.zero_pages);

        /* A full canonical page takes no more sharers (page 2 is unique,
         * refusing it leaves it to the scanner), zero memory is no loc. */
        loc = UINT64_MAX;
        for (dedup_page_t p = 0, n; p < 20 && loc == UINT64_MAX; p++) {
                n = 0;
                for (dedup_page_t q = 0; q < 20; q++)
                        n += B.map[q] == BE_CANON && B.mapped_loc[q] == B.mapped_loc[p];
                if (B.map[p] == BE_CANON && n == 3) {
                        loc = B.mapped_loc[p];
                        content_fill(backend_visible(&B, p), data);
                }
        }
        ck_assert(loc != UINT64_MAX);
        ck_assert_int_eq(dedup_engine_adopt_merged(B.e, 2, loc, data, 0, false), -ENOSPC);
        ck_assert_int_eq(dedup_engine_adopt_merged(B.e, 2, DEDUP_LOC_ZERO, data, 0, true), -EINVAL);
        verify();

        /* The trees work as before: a new VM-0 twin merges at once, writes
         * free the adopted pages, and everything unmerges. */
        scan_all(2);
        ck_assert_uint_eq(S.pages_sharing, before.pages_sharing);
        for (dedup_page_t p = 0; p < 24; p += 4)
                backend_write(&B, p, 9000 + p);
        verify();
        while (dedup_engine_unmerge_all(B.e, 5) > 0)
                ;
        verify();
        ck_assert_uint_eq(S.pages_shared, 0);
        ck_assert_uint_eq(B.live_canon, 0);
}
END_TEST

START_TEST(test_ebusy_rules) {
        setup_vms(2, 4, NULL);
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 1), -EINVAL);
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, DEDUP_MAX_PAGE_SHARING_MAX + 1), -EINVAL);
        for (uint32_t p = 0; p < 8; p++)
                B.cid[p] = 5 + p % 4;
        scan_all(2);
        ck_assert_uint_eq(S.pages_shared, 4);
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 8), -EBUSY);
        ck_assert_int_eq(dedup_engine_set_merge_across_nodes(B.e, false), -EBUSY);
        ck_assert_uint_eq(dedup_engine_get_max_page_sharing(B.e), 256);
        ck_assert(dedup_engine_get_merge_across_nodes(B.e));
        /* Same value is not a change. */
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 256), 0);
        while (dedup_engine_unmerge_all(B.e, 3) > 0)
                ;
        verify();
        ck_assert_int_eq(dedup_engine_set_max_page_sharing(B.e, 8), 0);
        ck_assert_int_eq(dedup_engine_set_merge_across_nodes(B.e, false), 0);
}
END_TEST

/* --- NUMA --- */

START_TEST(test_numa_trees_and_migration) {
        setup_vms(4, 4, NULL);
        ck_assert_int_eq(dedup_engine_set_merge_across_nodes(B.e, false), 0);
        for (uint32_t p = 0; p < 16; p++)
                B.cid[p] = 777;
        /* VMs 0,1 on node 0; VMs 2,3 on node 1: one canonical page each. */
        for (unsigned i = 0; i < 2; i++) {
                ck_assert_int_eq(backend_scan(&B, 0, 8, 0), 0);
                ck_assert_int_eq(backend_scan(&B, 8, 8, 1), 0);
                ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
                verify();
        }
        ck_assert_uint_eq(S.pages_shared, 2);
        ck_assert_uint_eq(S.pages_sharing, 14);
        ck_assert_uint_eq(S.stable_node_chains, 0);
        for (uint32_t l = 0; l < B.ncanon; l++)
                if (B.canon_cid[l] != UINT64_MAX)
                        ck_assert_int_eq(B.canon_nid[l], l == B.mapped_loc[0] ? 0 : 1);

        /* The kernel migrates node 0's canonical page to node 1: it moves
         * to node 1's tree and collides there with the other as a dup. */
        B.canon_nid[B.mapped_loc[0]] = 1;
        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
        verify();
        ck_assert_uint_eq(S.stable_node_chains, 1);
        ck_assert_uint_eq(S.stable_node_dups, 2);
        ck_assert_uint_eq(S.pages_shared, 2);

        /* A new page on node 1 now finds the content in node 1's tree
         * (smart scan off: no thrash-avoidance pause after the write). */
        dedup_engine_set_smart_scan(B.e, false);
        backend_write(&B, 9, 1);
        scan_all(1);
        backend_write(&B, 9, 777);
        ck_assert_int_eq(backend_scan(&B, 8, 8, 1), 0);
        verify();
        ck_assert_uint_eq(S.pages_sharing, 14);
}
END_TEST

/* --- async completion, aborts, unmerge --- */

START_TEST(test_async_abort) {
        setup_vms(2, 8, NULL);
        B.async = true;
        for (uint32_t p = 0; p < 16; p++)
                B.cid[p] = 800 + p % 8;
        scan_all(2);
        ck_assert_uint_eq(S.pages_pending, 16);
        ck_assert_uint_eq(S.pages_shared, 0);
        /* Guest writes page 3 while its merge is in flight. */
        backend_write(&B, 3, 12345);
        for (uint32_t p = 0; p < 16; p++)
                backend_complete(&B, p);
        verify();
        ck_assert_uint_eq(S.merge_aborts, 1);
        ck_assert_uint_eq(S.pages_shared, 8);           /* page 11 alone on its canonical page */
        ck_assert_uint_eq(S.pages_sharing, 7);
        ck_assert_uint_eq(backend_visible(&B, 3), 12345);
        ck_assert_int_eq(dedup_engine_remove_vm(B.e, 0, 100), 0);
        forget_pages(0, 8);
        verify();
        ck_assert_uint_eq(S.pages_sharing, 0);
        ck_assert_uint_eq(S.pages_shared, 8);
}
END_TEST

START_TEST(test_remove_vm_busy_and_incremental) {
        setup_vms(2, 1000, NULL);
        for (uint32_t p = 0; p < 2000; p++)
                B.cid[p] = 1 + p % 1000;
        scan_all(2);
        ck_assert_uint_eq(S.pages_sharing, 1000);
        B.async = true;
        ck_assert_int_eq(dedup_engine_unmerge_vm(B.e, 1, 1), 1);
        ck_assert_int_eq(dedup_engine_remove_vm(B.e, 1, 100), -EBUSY);
        backend_complete(&B, 1000);
        unsigned calls = 0;
        int r;
        while ((r = dedup_engine_remove_vm(B.e, 1, 100)) == 1)
                calls++;
        ck_assert_int_eq(r, 0);
        ck_assert_uint_ge(calls, 9);
        forget_pages(1000, 1000);
        verify();
        ck_assert_uint_eq(S.pages_sharing, 0);
        ck_assert_uint_eq(S.pages_shared, 1000);  /* VM 0's pages keep theirs */
        ck_assert_uint_eq(S.pages_tracked, 1000);
        /* The freed ids are reused by the next region. */
        uint32_t vm;
        dedup_page_t first;
        ck_assert_int_eq(dedup_engine_add_vm(B.e, 0, &vm), 0);
        ck_assert_int_eq(dedup_engine_add_region(B.e, vm, 500, &first), 0);
        ck_assert_uint_eq(first, 1000);
}
END_TEST

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

START_TEST(test_unmerge_all_bounded) {
        const uint32_t n = 1u << 20;
        uint64_t before;
        double worst = 0;
        unsigned calls = 0;
        int r;

        setup_vms(4, n / 4, NULL);
        for (uint32_t p = 0; p < n; p++)
                B.cid[p] = 1 + (p % (n / 4)) / 2;       /* 8 sharers per content */
        scan_all(2);
        ck_assert_uint_eq(S.pages_shared + S.pages_sharing, n);
        do {
                double t0 = now_s(), dt;
                before = B.ops_unmerge;
                r = dedup_engine_unmerge_all(B.e, 4096);
                dt = now_s() - t0;
                if (dt > worst)
                        worst = dt;
                ck_assert_uint_le(B.ops_unmerge - before, 4096);
                calls++;
        } while (r == 1);
        verify();
        ck_assert_uint_eq(S.pages_shared + S.pages_sharing + S.zero_pages, 0);
        ck_assert_uint_eq(B.live_canon, 0);
        ck_assert_uint_ge(calls, n / 4096);
        printf("unmerge-all: %u pages in %u calls of <= 4096, slowest call %.2f ms\n", n, calls, worst * 1e3);
        /* Bounded work per call: far below anything a D-Bus caller notices. */
        ck_assert(worst < 0.1);
}
END_TEST

/* --- metadata budget --- */

static void metadata_case(const char *name, uint32_t n, uint64_t (*cid)(uint32_t p, uint32_t n)) {
        setup_vms(4, n / 4, NULL);
        for (uint32_t p = 0; p < n; p++)
                B.cid[p] = cid(p, n);
        scan_all(2);
        /* Measured at the peak: a full scan's unstable tree still built. */
        ck_assert_int_eq(backend_scan(&B, 0, B.npages, 0), 0);
        dedup_engine_stats(B.e, &S);
        double per = (double) S.metadata_bytes / n;
        printf("metadata: workload=%s pages=%u bytes=%llu bytes_per_page=%.2f shared=%llu sharing=%llu zero=%llu unshared=%llu\n",
               name, n, (unsigned long long) S.metadata_bytes, per, (unsigned long long) S.pages_shared,
               (unsigned long long) S.pages_sharing, (unsigned long long) S.zero_pages,
               (unsigned long long) S.pages_unshared);
        ck_assert_msg(per <= 16.0, "%s: %.2f bytes per page > 16", name, per);
        ck_assert_int_eq(dedup_engine_full_scan_done(B.e), 0);
        verify();
        backend_done(&B);
}

static uint64_t cid_image(uint32_t p, uint32_t n) {
        /* Per VM: 50% OS image shared by all, 20% zero, 30% unique. */
        uint32_t q = n / 4, i = p % q, pct = (uint32_t) ((uint64_t) i * 100 / q);
        if (pct < 50)
                return 1 + i;
        if (pct < 70)
                return 0;
        return (uint64_t) n + p;
}

static uint64_t cid_unique(uint32_t p, uint32_t n) {
        return 1 + (uint64_t) p;
}

START_TEST(test_metadata_budget) {
        metadata_case("image", 1u << 20, cid_image);
        metadata_case("unique", 1u << 20, cid_unique);
        /* setup for teardown */
        ck_assert_int_eq(backend_init(&B, 1), 0);
}
END_TEST

/* The AVX2 build of the page hash gives XXH3's values, bit for bit: pages
 * hashed on either path must find each other in the trees. */
START_TEST(test_hash_avx2_matches) {
        ck_assert_int_eq(backend_init(&B, 1), 0); /* for teardown */
#ifdef HAVE_HASH_AVX2
        if (!__builtin_cpu_supports("avx2"))
                return;
        uint8_t *buf = malloc(DEDUP_PAGE_SIZE * 2);
        uint64_t x = 0x9e3779b97f4a7c15;

        ck_assert_ptr_nonnull(buf);
        for (unsigned i = 0; i < 2000; i++) {
                uint8_t *page = buf + (i % 64); /* aligned and not */

                for (unsigned j = 0; j < DEDUP_PAGE_SIZE; j++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        page[j] = i % 3 == 0 ? 0 : (uint8_t) x;
                }
                ck_assert_uint_eq(engine_hash_avx2(page), XXH3_64bits(page, DEDUP_PAGE_SIZE));
        }
        free(buf);
#endif
}
END_TEST

int main(void) {
        const CheckCase cases[] = {
                { "hash_avx2_matches", test_hash_avx2_matches, 10 },
                { "table_collisions", test_table_collisions, 10 },
                { "table_fingerprints", test_table_fingerprints, 10 },
                { "merge_two_vms", test_merge_two_vms, 10 },
                { "filter_after_first_sight", test_filter_after_first_sight, 10 },
                { "stable_hit_first_sight", test_stable_hit_first_sight, 10 },
                { "hash_collisions_never_merge", test_hash_collisions_never_merge, 10 },
                { "merge_verifies_trusts_hash", test_merge_verifies_trusts_hash, 10 },
                { "thrash_avoidance", test_thrash_avoidance, 10 },
                { "smart_scan_late_guest", test_smart_scan_late_guest, 10 },
                { "volatility_filter", test_volatility_filter, 10 },
                { "unstable_sized_from_first_scan", test_unstable_sized_from_first_scan, 10 },
                { "hashed_same_as_pages", test_hashed_same_as_pages, 10 },
                { "hashed_stale", test_hashed_stale, 10 },
                { "checksum_collision", test_checksum_collision, 10 },
                { "zero_pages", test_zero_pages, 10 },
                { "groups_isolated", test_groups_isolated, 10 },
                { "chain_at_limit", test_chain_at_limit, 10 },
                { "adopt_merged", test_adopt_merged, 10 },
                { "ebusy_rules", test_ebusy_rules, 10 },
                { "numa_trees_and_migration", test_numa_trees_and_migration, 10 },
                { "async_abort", test_async_abort, 10 },
                { "remove_vm_busy_and_incremental", test_remove_vm_busy_and_incremental, 10 },
                { "unmerge_all_bounded", test_unmerge_all_bounded, 120 },
                { "metadata_budget", test_metadata_budget, 120 },
        };

        return check_run(check_suite("engine", cases, ELEMENTSOF(cases), 0, teardown));
}
