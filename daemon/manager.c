/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the manager: event loop, registration socket, tunables, status.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "manager.h"
#include "util.h"

int manager_new(Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->listen_fd = -1;
        m->allowed_gid = (gid_t) -1;
        m->zero_pool = -1;
        m->started_us = now_usec(CLOCK_MONOTONIC);
        m->run = 1;
        m->pages_to_scan = 10000;
        m->sleep_ms = 20;
        m->vma_headroom = 4096;
        m->canon_room = UINT64_MAX;
        m->advisor_target_sec = 200;
        m->advisor_max_cpu = 70;
        m->scan_threads = manager_default_scan_threads();
        m->status_interval_ms = 500;
        r = sd_event_default(&m->event);
        if (r >= 0)
                r = dedup_engine_new(&manager_engine_ops, m, &m->engine);
        if (r >= 0) {
                /* flush_run() compares every page with its canonical page
                 * under protection: lookups need not read either. */
                dedup_engine_set_merge_verifies(m->engine, true);
                r = scanner_new_full(manager_scan_config(), &m->scanner);
        }
        if (r >= 0)
                r = vma_budget_read_max_map_count(NULL, &m->max_map_count);
        if (r >= 0 && memcg_open("/sys/fs/cgroup", "/proc/self", &m->memcg) < 0)
                m->memcg = NULL;        /* no memory controller: no limit to keep to */
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        manager_bus_free(m);
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                vm_free(m->vms[i]);
        for (size_t i = 0; i < m->n_holds; i++) {
                sd_event_source_disable_unref(m->holds[i].source);
                safe_close(m->holds[i].pidfd);
                free(m->holds[i].locs);
        }
        free(m->holds);
        free(m->deferred_frees);
        dedup_engine_free(m->engine);
        sd_event_source_disable_unref(m->punch_source);
        free(m->punch);
        free(m->stale);
        undone_sample_free(&m->undone);
        memcg_free(m->memcg);
        for (unsigned i = 0; i < m->n_pools; i++)
                pool_free(m->pools[i]);
        manager_scan_free(m);
        scanner_free(m->scanner);
        numa_topology_free(m->topology);
        sd_event_source_disable_unref(m->listen_source);
        sd_event_source_disable_unref(m->scan_timer);
        sd_event_source_disable_unref(m->status_timer);
        if (m->listen_fd_owned && m->socket_path)
                (void) unlink(m->socket_path);
        safe_close(m->listen_fd);
        sd_event_unref(m->event);
        free(m->socket_path);
        free(m->status_file);
        free(m->status_text);
        free(m->bus_spec);
        config_free(m->config);
        free(m);
        return NULL;
}

static int accept_again(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        return sd_event_source_set_enabled(m->listen_source, SD_EVENT_ON);
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (cfd < 0) {
                if (errno == EMFILE || errno == ENFILE) {
                        /* The connection stays queued and the socket
                         * readable: pause rather than spin. */
                        log_warning_errno(-errno, "Cannot accept VMMs for a second: %m");
                        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
                        (void) sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, 1000 * 1000, 0,
                                                          accept_again, m);
                } else if (errno != EAGAIN && errno != EINTR)
                        log_warning_errno(-errno, "accept() failed: %m");
                return 0;
        }
        if (manager_accept(m, cfd) < 0)
                safe_close(cfd);
        return 0;
}

/* A pool memfd of a previous run, from systemd's fd store: keep it, claiming
 * (pool.h), for the agents to report what they still map of it. The zero
 * pool is not adopted: agents put their zero runs back as holes. */
static void adopt_pool(Manager *m, int fd, const char *name) {
        Pool *p = NULL;
        int r = m->n_pools < MANAGER_MAX_POOLS ? pool_adopt(fd, NULL, &p) : -ENOSPC;

        if (r >= 0 && pool_group(p) != UINT16_MAX) {
                log_info("Pool '%s' of the previous run kept: its pages stay merged as VMMs report them",
                         pool_name(p));
                m->pools[m->n_pools++] = p;
                m->n_claiming++;
                return;
        }
        if (r < 0)
                log_warning_errno(r, "Cannot take back pool memfd '%s' from the fd store, releasing it: %m", name);
        pool_free(p);
        if (r < 0)
                close(fd);
        (void) sd_notifyf(false, "FDSTOREREMOVE=1\nFDNAME=%s", name);
}

/* The registration socket among the fds systemd passed: dedupd.socket's,
 * next to pool memfds of a previous run from the fd store; -ENOENT if none. */
static int passed_socket(Manager *m) {
        char **names = NULL;
        int n, fd = -ENOENT;

        n = sd_listen_fds_with_names(true, &names);
        for (int i = 0; i < n; i++) {
                int f = SD_LISTEN_FDS_START + i;
                if (names && names[i] && strncmp(names[i], "pool-", 5) == 0)
                        adopt_pool(m, f, names[i]);
                else if (fd < 0 && sd_is_socket_unix(f, SOCK_SEQPACKET, 1, NULL, 0) > 0)
                        fd = f;
                else {
                        log_warning("Ignoring fd %d ('%s') passed by systemd", f, names && names[i] ? names[i] : "?");
                        close(f);
                }
        }
        for (int i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        return fd;
}

/* Use the socket systemd passed (dedupd.socket) or bind our own. */
int manager_listen(Manager *m, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, r;

        fd = passed_socket(m);
        m->socket_path = strdup(fd >= 0 ? "the socket passed by systemd" : path);
        if (!m->socket_path)
                return -ENOMEM;
        if (fd >= 0) {
                (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        } else {
                if (strlen(path) >= sizeof(sa.sun_path))
                        return log_error_errno(-ENAMETOOLONG, "Socket path '%s' too long", path);
                strcpy(sa.sun_path, path);
                fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (fd < 0)
                        return log_error_errno(-errno, "socket(): %m");
                (void) unlink(path);
                if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
                        r = -errno;
                        close(fd);
                        return log_error_errno(r, "Cannot listen on '%s': %m", path);
                }
                /* The kernel checks SO_PEERCRED-independent write access on
                 * connect: let the allowed group in, we check creds anyway. */
                (void) chmod(path, m->allowed_gid == (gid_t) -1 ? 0600 : 0660);
                if (m->allowed_gid != (gid_t) -1)
                        (void) chown(path, 0, m->allowed_gid);
                m->listen_fd_owned = true;
        }
        m->listen_fd = fd;
        return sd_event_add_io(m->event, &m->listen_source, fd, EPOLLIN, on_accept, m);
}

static long rss_anon_kib(void) {
        char line[128];
        long kib = -1;
        FILE *f = fopen("/proc/self/status", "re");

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
                        break;
        fclose(f);
        return kib;
}

/* Kernel memory of one VMA: the vm_area_struct slab's object size (its
 * maple tree share is small and left out); 200 bytes if unreadable. */
static uint64_t vma_kernel_bytes(void) {
        static uint64_t cached;
        char line[256];
        unsigned long active, total, size;
        FILE *f;

        if (cached)
                return cached;
        cached = 200;
        f = fopen("/proc/slabinfo", "re");
        if (!f)
                return cached;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "vm_area_struct %lu %lu %lu", &active, &total, &size) == 3) {
                        cached = size;
                        break;
                }
        fclose(f);
        return cached;
}

int64_t manager_general_profit(Manager *m) {
        DedupEngineStats st;
        uint64_t vmas = 0;
        long anon = rss_anon_kib();

        dedup_engine_stats(m->engine, &st);
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                if (vm && vm->hello_done && vm->vma.current > vm->vmas_at_hello)
                        vmas += vm->vma.current - vm->vmas_at_hello;
        }
        return (int64_t) ((st.pages_sharing + st.zero_pages) * DEDUP_PAGE_SIZE) -
               (int64_t) (anon > 0 ? (uint64_t) anon * 1024 : st.metadata_bytes) -
               (int64_t) (m->zero_pool >= 0 ? DEDUP_PROTO_MAX_RUN * DEDUP_PAGE_SIZE : 0) -
               (int64_t) (vmas * vma_kernel_bytes());
}

void manager_reset_statistics(Manager *m) {
        dedup_engine_reset_stats(m->engine);
        log_info("Statistics reset");
}

/* Does reading untouched private anonymous memory allocate it? */
static bool kernel_has_zero_page(void) {
        const size_t len = 1 << 20;
        volatile uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        long before, after;
        unsigned sum = 0;

        if (p == MAP_FAILED)
                return true;
        before = rss_anon_kib();
        for (size_t i = 0; i < len; i += DEDUP_PAGE_SIZE)
                sum += p[i];
        after = rss_anon_kib();
        munmap((void *) p, len);
        return sum != 0 || before < 0 || after - before < (long) (len / 2048);
}

int manager_setup_zero_pool(Manager *m) {
        uint64_t off;
        int r;

        if (kernel_has_zero_page())
                return 0;
        /* Group 0xffff is never a merge group (DEDUP_MAX_GROUPS). */
        r = pool_new(UINT16_MAX, -1, &m->pools[m->n_pools]);
        if (r < 0)
                return r;
        manager_store_pool(m, m->n_pools);
        m->zero_pool = (int) m->n_pools++;
        r = pool_alloc_run(m->pools[m->zero_pool], DEDUP_PROTO_MAX_RUN, &off);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < DEDUP_PROTO_MAX_RUN; i++) {
                static const uint8_t zero[DEDUP_PAGE_SIZE];
                r = pool_write(m->pools[m->zero_pool], off + (uint64_t) i * DEDUP_PAGE_SIZE, zero);
                if (r < 0)
                        return r;
        }
        log_info("No kernel zero page: zero runs map a %u KiB all-zero pool area, not anonymous memory",
                 DEDUP_PROTO_MAX_RUN * DEDUP_PAGE_SIZE / 1024);
        return 0;
}

int manager_set_run(Manager *m, unsigned run) {
        if (run > 2)
                return -EINVAL;
        m->run = run;
        return 0;
}

void manager_set_vma_headroom(Manager *m, uint64_t headroom) {
        m->vma_headroom = headroom;
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                if (m->vms[i])
                        vma_budget_set_limits(&m->vms[i]->vma, m->max_map_count, headroom);
}

static int status_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_write_status(m);
        /* Idle, dedupd wakes for it no more than twice a second. */
        (void) sd_event_source_set_time_relative(s, (uint64_t) (m->scan_phase == SCAN_IDLE ?
                                                                  MAX(m->status_interval_ms, 500u) :
                                                                  m->status_interval_ms) * 1000);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

/* Hand a new pool's memfd to systemd's fd store (FileDescriptorStoreMax=
 * in dedupd.service), so a restarted dedupd can get its pools back. Named
 * by inode: unique across runs, whatever ids later runs give the pool. */
void manager_store_pool(Manager *m, unsigned id) {
        char msg[64];
        int fd = pool_fd(m->pools[id]), r;

        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=pool-%llu", (unsigned long long) pool_ino(m->pools[id]));
        r = sd_pid_notify_with_fds(0, false, msg, &fd, 1);
        if (r < 0)
                log_debug_errno(r, "Cannot store pool %u with systemd: %m", id);
}

int manager_start(Manager *m) {
        int r;

        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                return r;

        r = manager_schedule_scan(m);
        if (r < 0)
                return r;
        if (m->status_file) {
                /* Accuracy 0 would be sd-event's default, 250 ms. */
                r = sd_event_add_time_relative(m->event, &m->status_timer, CLOCK_MONOTONIC, 0,
                                               (uint64_t) m->status_interval_ms * 100, status_tick, m);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The status file: counters as key=value lines, rewritten atomically, for
 * tests and scripts until they use D-Bus; only when they changed (or the
 * file is gone), so that an idle dedupd writes nothing however short the
 * interval. cpu_us, last, is dedupd's CPU time when they took these
 * values. */
void manager_write_status(Manager *m) {
        _cleanup_free_ char *text = NULL;
        DedupEngineStats st;
        char tmp[4096];
        unsigned nvms = 0;
        size_t len = 0;
        FILE *f;

        dedup_engine_stats(m->engine, &st);
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                nvms += vm_live(m->vms[i]);
        (void) sd_notifyf(false, "STATUS=Merging: %u VMs, %llu MiB saved", nvms,
                          (unsigned long long) ((st.pages_sharing + st.zero_pages) * DEDUP_PAGE_SIZE >> 20));
        if (!m->status_file)
                return;
        f = open_memstream(&text, &len);
        if (!f)
                return;
        fprintf(f,
                "run=%u\nvms=%u\npages_shared=%llu\npages_sharing=%llu\npages_unshared=%llu\npages_volatile=%llu\n"
                "pages_scanned=%llu\nfull_scans=%llu\nstable_node_chains=%llu\nstable_node_dups=%llu\n"
                "zero_pages=%llu\nmerge_aborts=%llu\nunmerges=%llu\npages_pending=%llu\nmetadata_bytes=%llu\n"
                "saved_bytes=%llu\npunched_pages=%llu\npools=%u\nholds=%zu\nmemory_limited=%d\n"
                "pools_claiming=%u\nkept_pages=%llu\nsampled_merges=%llu\nsampled_undone=%llu\n"
                "sampled_undone_in_scan=%llu\ncanon_stale=%llu\n",
                m->run, nvms, (unsigned long long) st.pages_shared, (unsigned long long) st.pages_sharing,
                (unsigned long long) st.pages_unshared, (unsigned long long) st.pages_volatile,
                (unsigned long long) st.pages_scanned, (unsigned long long) st.full_scans,
                (unsigned long long) st.stable_node_chains, (unsigned long long) st.stable_node_dups,
                (unsigned long long) st.zero_pages, (unsigned long long) st.merge_aborts,
                (unsigned long long) st.unmerges, (unsigned long long) st.pages_pending,
                (unsigned long long) st.metadata_bytes,
                (unsigned long long) ((st.pages_sharing + st.zero_pages) * DEDUP_PAGE_SIZE),
                (unsigned long long) m->punched_pages, m->n_pools, m->n_holds, m->memory_limited,
                m->n_claiming, (unsigned long long) m->kept_pages, (unsigned long long) m->undone.merges,
                (unsigned long long) m->undone.undone, (unsigned long long) m->undone.undone_in_scan,
                (unsigned long long) m->canon_stale);
        manager_scan_write_status(m, f);
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                DedupVmStats vs;

                if (!vm_live(vm) || dedup_engine_vm_stats(m->engine, vm->engine_vm, &vs) < 0)
                        continue;
                fprintf(f, "vm.%s.pid=%d\nvm.%s.group=%u\nvm.%s.merging_pages=%llu\nvm.%s.zero_pages=%llu\n"
                        "vm.%s.vmas=%llu\n",
                        vm->name, (int) vm->pid, vm->name, vm->group, vm->name, (unsigned long long) vs.merging_pages,
                        vm->name, (unsigned long long) vs.zero_pages, vm->name, (unsigned long long) vm->vma.current);
                if (vm->reason[0])
                        fprintf(f, "vm.%s.reason=%s\n", vm->name, vm->reason);
                for (unsigned j = 0; j < vm->n_regions; j++)
                        if (vm->regions[j].reason[0])
                                fprintf(f, "vm.%s.region.%u.reason=%s\n", vm->name, vm->regions[j].id,
                                        vm->regions[j].reason);
        }
        if (fclose(f) != 0 || !text)
                return;
        if (m->status_text && strcmp(text, m->status_text) == 0 && access(m->status_file, F_OK) == 0)
                return;

        snprintf(tmp, sizeof(tmp), "%s.tmp", m->status_file);
        f = fopen(tmp, "we");
        if (!f)
                return;
        fprintf(f, "%scpu_us=%llu\n", text, (unsigned long long) now_usec(CLOCK_PROCESS_CPUTIME_ID));
        if (fclose(f) == 0 && rename(tmp, m->status_file) == 0) {
                free(m->status_text);
                m->status_text = TAKE_PTR(text);
        }
}
