/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Per-VMM accounting of VMAs, the scarce resource of merging (DESIGN.md §2):
 * each VMM process may hold at most vm.max_map_count mappings, and at the
 * limit the VMM itself fails to mmap or start threads. The daemon keeps its
 * own estimate of each VMM's count, refuses merges that would eat into a
 * headroom left to the VMM, and cross-checks the estimate against
 * /proc/PID/maps from time to time (vma_budget_resync()).
 *
 * Cost model (conservative): mapping a run of merged pages into the middle
 * of a guest RAM VMA splits it into three, +2 (VMA_RUN_COST); taking a run
 * back out (un-merge, remapping the memfd) lets the kernel merge the pieces
 * again, -2. A run at a region edge or next to another run costs less in
 * reality; the resync corrects that drift.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define VMA_RUN_COST 2
#define VMA_DEFAULT_MAX_MAP_COUNT_PATH "/proc/sys/vm/max_map_count"

typedef struct VmaBudget {
        uint64_t max;           /* vm.max_map_count (per process) */
        uint64_t headroom;      /* VMAs never used by merges: left to the VMM */
        uint64_t current;       /* estimated VMAs of the VMM now */
        int64_t last_drift;     /* actual - estimate at the last resync */
        uint64_t resyncs;
} VmaBudget;

/* Read vm.max_map_count; path NULL = VMA_DEFAULT_MAX_MAP_COUNT_PATH.
 * -EINVAL if the file does not hold one positive number. */
int vma_budget_read_max_map_count(const char *path, uint64_t *ret);
/* Count the VMAs of pid: lines of <proc_root>/<pid>/maps (proc_root NULL =
 * "/proc"). -ENOENT/-ESRCH when the process is gone. Costs the kernel's
 * formatting of the file: measured ≈2 ms per 10k VMAs. */
int vma_count_pid(const char *proc_root, pid_t pid, uint64_t *ret);

void vma_budget_init(VmaBudget *b, uint64_t max, uint64_t headroom, uint64_t current);
/* True if n more VMAs keep the VMM below max - headroom. */
bool vma_budget_can_add(const VmaBudget *b, uint64_t n);
/* VMAs that may still be added (0 if already over). */
uint64_t vma_budget_available(const VmaBudget *b);
/* Account VMAs created (> 0) or removed (< 0) by our remaps; the estimate
 * never goes below 0. */
void vma_budget_add(VmaBudget *b, int64_t delta);
/* Take the real count; returns actual - estimate (how far off we were). */
int64_t vma_budget_resync(VmaBudget *b, uint64_t actual);
/* max_map_count or headroom changed (sysctl, tunable). */
void vma_budget_set_limits(VmaBudget *b, uint64_t max, uint64_t headroom);
