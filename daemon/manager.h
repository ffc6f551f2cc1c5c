/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The manager owns the sd-event loop and all daemon state: the engine, the
 * pools, the registered VMs and the scan cursor. manager-vm.c speaks the
 * wire protocol with each VMM's agent, manager-merge.c carries out the
 * engine's decisions (DESIGN.md §2), manager-scan.c paces the scanning.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "memcg.h"
#include "undone-sample.h"
#include "dedup-engine.h"
#include "dedup-proto.h"
#include "numa-topology.h"
#include "pool.h"
#include "scanner.h"
#include "vma-budget.h"

#define MANAGER_MAX_VMS 1024
#define MANAGER_MAX_REGIONS 64          /* per VM */
#define MANAGER_MAX_POOLS 256
/* Canonical pages written with one pwrite(), at most. */
#define MANAGER_STAGE_PAGES 64

typedef struct Manager Manager;
typedef struct Vm Vm;
typedef struct ScanJob ScanJob;

/* One guest RAM region of a VM. */
typedef struct VmRegion {
        uint32_t id;                    /* the agent's region id */
        uint64_t gpa, size, memfd_offset, hva;
        int memfd;
        int uffd;
        dev_t dev;
        ino_t ino;
        dedup_page_t first;             /* engine page id of its first page */
        uint32_t npages;
        char reason[128];               /* why it is not merged, "" when it is */
} VmRegion;

/* A merge or unmerge queued for the next flush. */
typedef struct PendingOp {
        dedup_page_t page;
        uint64_t loc;                   /* canonical location, DEDUP_LOC_ZERO for zero memory */
} PendingOp;

/* A remap entry sent to the agent and not answered yet. */
typedef struct InFlight {
        bool used;
        VmRegion *region;
        uint64_t offset;                /* in the region */
        uint32_t npages;
        uint32_t pool_id;
        uint64_t pool_offset;
} InFlight;

struct Vm {
        Manager *manager;
        uint32_t engine_vm;
        char name[64];
        char uuid[37];
        pid_t pid;
        uid_t uid;
        int fd;
        int pidfd;
        sd_event_source *io_source;
        sd_event_source *pid_source;
        bool hello_done;
        const char *refusal;            /* refuse at HELLO with this (EAGAIN) */
        bool disconnected;              /* the agent is gone; state being torn down */
        bool paused;                    /* Unmerge() asked: unmerge it, merge nothing until Merge() */
        uint16_t group;                 /* merge group */
        uint64_t vmas_at_hello;         /* the VMM's own VMAs, before any merge */
        uint64_t vma_counted_us;        /* last count of /proc/PID/maps */
        char bus_state[16];             /* State and Reason last announced on D-Bus */
        char bus_reason[128];
        uint32_t seq;

        VmRegion regions[MANAGER_MAX_REGIONS];
        unsigned n_regions;

        VmaBudget vma;
        uint8_t pools_sent[MANAGER_MAX_POOLS / 8];

        PendingOp *merges;              /* queued by the engine, flushed per batch */
        size_t n_merges, cap_merges;
        PendingOp *unmerges;
        size_t n_unmerges, cap_unmerges;
        InFlight *inflight;             /* indexed by remap cookie */
        size_t cap_inflight;
        uint64_t remaps_sent, remaps_done, remaps_aborted;
        char reason[128];               /* VM-wide reason merging stopped, "" if none */
        /* Restart (manager-restart.c): the agent sent its last MERGED_KEPT;
         * seq of our last UNMERGE of pages we did not take, and of the last
         * one it answered. */
        bool kept_done;
        uint32_t kept_refused_seq, kept_replied_seq;
};

/* Registered (HELLO done) and still talking to us. */
static inline bool vm_live(const Vm *vm) {
        return vm && vm->hello_done && !vm->disconnected;
}

/* Idle mode (manager-scan.c): scanning sleeps once a full scan of guest
 * RAM, write-protected while it ran, changed nothing; it resumes when a
 * guest writes or anything else in a ScanMark changes. */
typedef enum ScanPhase {
        SCAN_ACTIVE,                    /* scanning */
        SCAN_SETTLING,                  /* a full scan of protected RAM, no page skipped:
                                         * if it changes nothing, idle */
        SCAN_IDLE,                      /* not scanning while the mark stays the same */
} ScanPhase;

/* What changes when there may be something new to merge. */
typedef struct ScanMark {
        uint64_t changed;               /* engine counters: pages_changed, */
        uint64_t written;               /* pages_written, */
        uint64_t unmerges;              /* unmerges, */
        uint64_t aborts;                /* merge_aborts */
        uint64_t pending;               /* merges and unmerges in flight */
        uint64_t regions;               /* a hash of the regions to scan, their memfds'
                                         * allocated blocks and the memory limit */
} ScanMark;

/* Canonical pages still mapped by a VMM that the daemon no longer talks to
 * (its agent said BYE or broke the protocol but the process lives on): they
 * must not be punched until that process exits. */
typedef struct Hold {
        pid_t pid;
        int pidfd;
        sd_event_source *source;
        uint64_t *locs;
        size_t n_locs;
} Hold;

struct Manager {
        sd_event *event;
        DedupEngine *engine;
        Scanner *scanner;
        NumaTopology *topology;

        char *socket_path;
        int listen_fd;
        bool listen_fd_owned;           /* we created the socket file */
        sd_event_source *listen_source;
        gid_t allowed_gid;              /* besides root; (gid_t) -1: root only */

        Vm *vms[MANAGER_MAX_VMS];
        Pool *pools[MANAGER_MAX_POOLS];
        unsigned n_pools;
        /* Without a kernel zero page (e.g. pvm_no_zero_page=1) reading an
         * anonymous zero overlay allocates memory; zero runs then map this
         * pool's all-zero area instead (DEDUP_PROTO_MAX_RUN pages): reads
         * share its page cache. -1 when the kernel zero page works. */
        int zero_pool;
        Hold *holds;
        size_t n_holds;
        uint64_t *deferred_frees;       /* freed while held */
        size_t n_deferred, cap_deferred;
        /* dedupd's memory cgroup: canonical pages are charged to us. At each
         * scan batch canon_room becomes the pages we may still allocate
         * (manager_check_memory()); memory_limited while it is 0. */
        MemCg *memcg;
        uint64_t canon_room;
        bool memory_limited;
        uint64_t *punch;                /* freed, punched by punch_source in runs */
        size_t n_punch, cap_punch;
        sd_event_source *punch_source;
        /* New canonical pages not written yet: stage_n pages of pool
         * stage_pool from stage_off on (manager-canon.c); the content of
         * each is in stage_buf, or still to be read from guest page
         * stage_src (DEDUP_PAGE_NONE: in stage_buf), which must hash to
         * stage_hash. */
        uint16_t stage_pool;
        uint32_t stage_n;
        uint64_t stage_off;
        dedup_page_t stage_src[MANAGER_STAGE_PAGES];
        uint64_t stage_hash[MANAGER_STAGE_PAGES];
        uint8_t stage_buf[MANAGER_STAGE_PAGES * DEDUP_PAGE_SIZE] __attribute__((aligned(64)));
        /* Canonical pages whose guest page had changed when read: every
         * merge onto them fails, until the engine frees them. */
        uint64_t *stale;
        size_t n_stale, cap_stale;

        /* tunables (KSM's names) */
        unsigned run;                   /* 0 stop, 1 run, 2 unmerge all */
        unsigned pages_to_scan;
        unsigned sleep_ms;
        unsigned advisor_mode;          /* 0 none, 1 scan-time */
        unsigned advisor_target_sec;
        unsigned advisor_max_cpu;       /* percent */
        uint64_t vma_headroom;
        uint64_t max_map_count;

        /* scan cursor */
        unsigned cursor_vm;
        unsigned cursor_region;
        uint64_t cursor_page;
        bool scanned_any;
        sd_event_source *scan_timer;
        uint64_t full_scan_started_us;  /* for the advisor: wall and CPU time */
        uint64_t full_scan_cpu_us;
        uint64_t full_scan_us;          /* how long the last full scan took */

        /* scan threads and idle mode (manager-scan.c) */
        unsigned scan_threads;          /* ScanThreads: readers, the event loop's thread included */
        ScannerTeam *scan_team;         /* the other scan_threads - 1, NULL for none */
        unsigned scan_team_failed;      /* a ScanThreads that could not start: not retried */
        ScannerStats scan_stats_gone;   /* of scan threads stopped since */
        ScanJob *scan_job;              /* one round of reads and hashes */
        ScanPhase scan_phase;
        ScanMark scan_mark;             /* at the start of this full scan; while idle, since */
        uint64_t vms_checked_us;        /* foreign mappers and VMA counts last checked */
        sd_event_source *watch_post;    /* settling or idle: checks the mark after every event */
        unsigned quiet_scans;           /* full scans in a row that changed nothing */
        unsigned settle_after;          /* quiet full scans wanted before settling */
        uint64_t idle_entries;          /* times scanning went idle */

        Config *config;                 /* merge group rules */
        char *bus_spec;                 /* --bus: "system", "session", an address or "none" */
        sd_bus *bus;
        char *status_file;
        char *status_text;              /* as last written, cpu_us aside */
        uint32_t status_interval_ms;
        sd_event_source *status_timer;
        uint64_t punched_pages;
        uint64_t canon_stale;           /* canonical pages marked stale, ever */
        UndoneSample undone;            /* merges guests undo, sampled (undone-sample.h) */
        unsigned n_claiming;            /* pools of the previous run not settled (manager-restart.c) */
        uint64_t started_us;            /* CLOCK_MONOTONIC */
        uint64_t settle_checked_us;
        uint64_t kept_pages;            /* merged pages taken over from the previous run */
        uint8_t buf_a[512 * DEDUP_PAGE_SIZE] __attribute__((aligned(64)));
        uint8_t buf_b[512 * DEDUP_PAGE_SIZE] __attribute__((aligned(64)));
};

int manager_new(Manager **ret);
Manager *manager_free(Manager *m);
static inline void manager_freep(Manager **m) {
        manager_free(*m);
}
int manager_listen(Manager *m, const char *path);
int manager_start(Manager *m);
int manager_setup_zero_pool(Manager *m);
int manager_set_run(Manager *m, unsigned run);
void manager_store_pool(Manager *m, unsigned id);
void manager_set_vma_headroom(Manager *m, uint64_t headroom);
void manager_write_status(Manager *m);
/* DESIGN.md §4: bytes saved minus what saving them costs: the daemon's own
 * anonymous memory (engine metadata included), the zero area, the kernel's
 * memory for the VMAs merging added to VMMs. */
int64_t manager_general_profit(Manager *m);
void manager_reset_statistics(Manager *m);

/* manager-vm.c */
int manager_accept(Manager *m, int fd);
void vm_disconnect(Vm *vm, int error, const char *why);
Vm *vm_free(Vm *vm);
VmRegion *vm_page_region(Manager *m, dedup_page_t page, Vm **ret_vm);
/* Read up to n guest pages from page on, stopping at the end of its
 * region: the number read, or -errno. */
int manager_read_pages(Manager *m, dedup_page_t page, uint32_t n, void *buf);
Vm *manager_find_vm(Manager *m, const char *name);
/* "merging", "not-merging" or "unmerging", and why when not merging. */
const char *vm_state(Vm *vm, const char **ret_reason);
int vm_set_group(Vm *vm, uint16_t group);
bool vm_region_mergeable(Vm *vm, VmRegion *reg);
/* reg's reason from a foreign-mapper check: error (< 0), or the first of
 * the n processes other than the VMM that map its memfd. */
void vm_region_set_mappers(VmRegion *reg, int error, pid_t first, size_t n);
int vm_send(Vm *vm, void *msg, size_t len, const int *fds, size_t nfds);

/* manager-merge.c */
extern const DedupEngineOps manager_engine_ops;
/* manager-canon.c: the engine's canon_* ops */
Pool *manager_loc_pool(Manager *m, uint64_t loc, uint64_t *ret_off);
bool manager_loc_held(Manager *m, uint64_t loc);
int manager_canon_sync(Manager *m);
/* Punch the pages canon_free() queued, now. */
void manager_canon_punch(Manager *m);
bool manager_canon_is_stale(const Manager *m, uint64_t loc);
int manager_canon_read(void *ud, uint64_t loc, void *buf);
int manager_canon_alloc(void *ud, const struct dedup_canon_req *req, uint64_t *ret_loc);
void manager_canon_free(void *ud, uint64_t loc);
int manager_canon_nid(void *ud, uint64_t loc);
void manager_check_memory(Manager *m);
int manager_flush(Manager *m);
void vm_handle_remap_reply(Vm *vm, const struct dedup_msg_remap *msg);
void vm_handle_ranges(Vm *vm, const struct dedup_msg_ranges *msg);
/* The region a range the agent sent lies in, or NULL. */
VmRegion *vm_range_region(Vm *vm, const struct dedup_range *rg);
void vm_fail_inflight(Vm *vm);
/* Count the VMM's VMAs (at most every 100 ms, else -EAGAIN), in-flight
 * remaps included, and take that as the budget's estimate. */
int vm_resync_vmas(Vm *vm);
/* The VMM has vmas VMAs now (a count of its /proc/PID/maps). */
void vm_set_vmas(Vm *vm, uint64_t vmas);
void manager_hold_vm(Manager *m, Vm *vm);
void manager_release_hold(Manager *m, Hold *h);

/* manager-bus.c: the org.dedupd1 D-Bus API */
int manager_connect_bus(Manager *m);
int manager_bus_introspect(const char *path);
void manager_bus_vm_added(Manager *m, Vm *vm);
void manager_bus_vm_removed(Manager *m, Vm *vm);
/* Announce State/Reason of VMs whose ones changed since last said. */
void manager_bus_check_vms(Manager *m);
void manager_bus_property_changed(Manager *m, const char *property);
void manager_bus_free(Manager *m);

/* manager-restart.c: what agents keep merged across a restart */
void vm_handle_zero_kept(Vm *vm, const struct dedup_msg_ranges *msg);
void vm_handle_merged_kept(Vm *vm, const struct dedup_msg_remap *msg);
/* Trim the pools of the previous run that every mapper has reported
 * (checked at most once a second). */
void manager_settle_pools(Manager *m);

/* manager-scan.c */
int manager_schedule_scan(Manager *m);
/* How scan threads read, m->scanner included. */
const ScannerConfig *manager_scan_config(void);
/* ScanThreads' default: half the online CPUs, at least 1. */
unsigned manager_default_scan_threads(void);
/* Something changed that may make pages mergeable (a tunable): leave idle
 * mode now. */
void manager_scan_wake(Manager *m, const char *why);
bool manager_scan_idle(const Manager *m);
/* Status file lines of the scanner. */
void manager_scan_write_status(Manager *m, FILE *f);
/* Stop the scan threads (before m->scanner is freed). */
void manager_scan_free(Manager *m);
