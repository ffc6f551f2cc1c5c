/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * engine-demo: the engine alone over generated guests, printing what it
 * would save. Four VMs share an "OS image" (50% of their pages), have 20%
 * zero pages, 25% unique and 5% volatile pages that change every scan.
 * Usage: engine-demo [MiB per VM]
 */

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "engine-backend.h"

#define NVMS 4

static uint64_t content(uint32_t vm, uint32_t i, uint32_t per, unsigned round) {
        uint32_t pct = (uint32_t) ((uint64_t) i * 100 / per);

        if (pct < 50)
                return 1 + i;                                   /* OS image */
        if (pct < 70)
                return 0;                                       /* zero */
        if (pct < 95)
                return ((uint64_t) (vm + 1) << 40) + i;         /* unique */
        return ((uint64_t) (vm + 1) << 40) + ((uint64_t) round << 32) + i;     /* volatile */
}

int main(int argc, char **argv) {
        uint32_t mib = argc > 1 ? (uint32_t) atoi(argv[1]) : 256, per = mib * 256;
        Backend b;
        DedupEngineStats st;
        struct timespec t0, t1;

        if (mib == 0 || backend_init(&b, NVMS * per) < 0) {
                fprintf(stderr, "usage: engine-demo [MiB per VM]\n");
                return 2;
        }
        for (uint32_t v = 0; v < NVMS; v++) {
                uint32_t vm;
                dedup_page_t first;
                if (dedup_engine_add_vm(b.e, 0, &vm) < 0 || dedup_engine_add_region(b.e, vm, per, &first) < 0)
                        return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned round = 0; round < 3; round++) {
                /* The guests boot, then only their volatile pages change. */
                for (uint32_t v = 0; v < NVMS; v++)
                        for (uint32_t i = round ? per * 95 / 100 : 0; i < per; i++)
                                backend_write(&b, v * per + i, content(v, i, per, round));
                if (backend_scan(&b, 0, NVMS * per, 0) < 0 || dedup_engine_full_scan_done(b.e) < 0)
                        return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        dedup_engine_stats(b.e, &st);
        printf("engine-demo: %u VMs x %u MiB, 3 full scans in %.2f s\n", NVMS, mib,
               (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
        for (uint32_t v = 0; v < NVMS; v++) {
                DedupVmStats vs;
                dedup_engine_vm_stats(b.e, v, &vs);
                printf("  vm%u: merged %6.1f MiB, zero %6.1f MiB\n", v, vs.merging_pages / 256.0,
                       vs.zero_pages / 256.0);
        }
        printf("  saved: %.1f MiB of %u MiB (pages_shared=%llu pages_sharing=%llu zero_pages=%llu "
               "unshared=%llu volatile=%llu), engine metadata %.1f B/page\n",
               (st.pages_sharing + st.zero_pages) / 256.0, NVMS * mib, (unsigned long long) st.pages_shared,
               (unsigned long long) st.pages_sharing, (unsigned long long) st.zero_pages,
               (unsigned long long) st.pages_unshared, (unsigned long long) st.pages_volatile,
               (double) st.metadata_bytes / (NVMS * per));
        backend_done(&b);
        return 0;
}
