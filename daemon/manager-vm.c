/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: VMs, as the daemon sees them through their agent's socket.
 *
 * Everything a VMM sends is untrusted: each message is validated in full
 * (dedup_proto_validate, then against this VM's own state) and anything bad
 * gets an ERROR reply naming the problem and closes that VM's connection.
 * Closing never harms the guest: the agent unprotects its RAM on EOF, and
 * canonical pages the VMM may still map are held until its process exits
 * (manager_hold_vm), so no pool page it maps is ever punched.
 */

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "manager.h"
#include "mappers.h"
#include "uffd-ops.h"
#include "util.h"

static int pidfd_open_compat(pid_t pid) {
        return (int) syscall(SYS_pidfd_open, pid, 0);
}

int vm_send(Vm *vm, void *msg, size_t len, const int *fds, size_t nfds) {
        struct dedup_msg_header *h = msg;

        h->seq = ++vm->seq;
        return dedup_proto_send(vm->fd, msg, fds, nfds);
}

static void vm_send_error(Vm *vm, int error, const char *text) {
        struct dedup_msg_error e = {};

        dedup_proto_init_header(&e.hdr, DEDUP_MSG_ERROR, sizeof(e), 0);
        e.error = abs(error);
        snprintf(e.text, sizeof(e.text), "%s", text);
        (void) vm_send(vm, &e, sizeof(e), NULL, 0);
}

Vm *vm_free(Vm *vm) {
        if (!vm)
                return NULL;
        sd_event_source_disable_unref(vm->io_source);
        sd_event_source_disable_unref(vm->pid_source);
        safe_close(vm->fd);
        safe_close(vm->pidfd);
        for (unsigned i = 0; i < vm->n_regions; i++) {
                safe_close(vm->regions[i].memfd);
                safe_close(vm->regions[i].uffd);
        }
        free(vm->merges);
        free(vm->unmerges);
        free(vm->inflight);
        free(vm);
        return NULL;
}

static unsigned vm_slot(Manager *m, Vm *vm) {
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                if (m->vms[i] == vm)
                        return i;
        return MANAGER_MAX_VMS;
}

/* Forget a VM whose agent is gone: its in-flight work fails, its pages
 * leave the engine in bounded steps (a deferred event per step). */
static int vm_teardown_step(sd_event_source *s, void *userdata) {
        Vm *vm = userdata;
        Manager *m = vm->manager;
        int r;

        if (vm->hello_done) {
                r = dedup_engine_remove_vm(m->engine, vm->engine_vm, 65536);
                if (r > 0)
                        return 0;       /* more next iteration; the source stays on */
                if (r < 0)
                        log_error_errno(r, "VM '%s': cannot forget its pages: %m", vm->name);
        }
        sd_event_source_disable_unref(s);
        m->vms[vm_slot(m, vm)] = NULL;
        log_info("VM '%s' (pid %d) gone", vm->name[0] ? vm->name : "?", (int) vm->pid);
        vm_free(vm);
        manager_write_status(m);
        return 0;
}

void vm_disconnect(Vm *vm, int error, const char *why) {
        Manager *m = vm->manager;
        sd_event_source *s = NULL;
        int r;

        if (vm->disconnected)
                return;
        if (vm->hello_done)
                manager_bus_vm_removed(m, vm);
        vm->disconnected = true;
        if (why) {
                log_warning("VM '%s' (pid %d): %s; closing its connection", vm->name[0] ? vm->name : "?",
                            (int) vm->pid, why);
                vm_send_error(vm, error, why);
        }
        sd_event_source_disable_unref(vm->io_source);
        vm->io_source = NULL;
        vm->fd = safe_close(vm->fd);
        /* Its VMM may live on with pool pages mapped, in-flight remaps
         * included (the agent may have mapped them before it went): keep
         * them, then fail what was in flight. */
        if (vm->hello_done)
                manager_hold_vm(m, vm);
        vm_fail_inflight(vm);
        r = sd_event_add_defer(m->event, &s, vm_teardown_step, vm);
        if (r < 0) {
                log_error_errno(r, "Cannot schedule teardown of VM '%s': %m", vm->name);
                return;
        }
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
}

/* The VM's merge group: the domain file the libvirt hook wrote for its
 * uuid (DomainDirectory=/UUID.conf) wins over dedupd.conf's rules. A
 * domain file that cannot be read or parsed is an error, not group 0: the
 * group is a trust boundary. */
static int vm_find_group(Manager *m, const Vm *vm, uint16_t *ret) {
        _cleanup_(config_freep) Config *domain = NULL;
        char path[PATH_MAX];
        int r;

        if (vm->uuid[0]) {
                snprintf(path, sizeof(path), "%s/%s.conf", config_domain_dir(m->config), vm->uuid);
                r = config_load(path, false, &domain);
                if (r < 0)
                        return r;
                if (config_has_rules(domain)) {
                        *ret = config_merge_group(domain, vm->name, vm->uuid);
                        return 0;
                }
        }
        *ret = config_merge_group(m->config, vm->name, vm->uuid);
        return 0;
}

static void vm_handle_hello(Vm *vm, const struct dedup_msg_hello *h) {
        Manager *m = vm->manager;
        struct dedup_msg_welcome w = {};
        uint64_t vmas = 0;
        int r;

        if (vm->hello_done)
                return vm_disconnect(vm, EPROTO, "second HELLO");
        if (vm->refusal) {
                memcpy(vm->name, h->name, sizeof(vm->name));
                return vm_disconnect(vm, EAGAIN, vm->refusal);
        }
        if ((pid_t) h->pid != vm->pid)
                return vm_disconnect(vm, EPERM, "HELLO pid differs from the socket peer's");
        if (manager_find_vm(m, h->name))
                return vm_disconnect(vm, EEXIST, "a VM of that name is already registered");
        memcpy(vm->name, h->name, sizeof(vm->name));
        memcpy(vm->uuid, h->uuid, sizeof(vm->uuid));
        r = vm_find_group(m, vm, &vm->group);
        if (r < 0)
                return vm_disconnect(vm, r, "its domain file in DomainDirectory= is invalid");
        r = dedup_engine_add_vm(m->engine, vm->group, &vm->engine_vm);
        if (r < 0)
                return vm_disconnect(vm, r, "cannot register the VM");
        vm->hello_done = true;
        r = vma_count_pid(NULL, vm->pid, &vmas);
        if (r < 0)
                log_warning_errno(r, "VM '%s': cannot count its VMAs: %m", vm->name);
        vma_budget_init(&vm->vma, m->max_map_count, m->vma_headroom, vmas);
        vm->vmas_at_hello = vmas;

        dedup_proto_init_header(&w.hdr, DEDUP_MSG_WELCOME, sizeof(w), 0);
        w.vm_id = vm->engine_vm;
        r = vm_send(vm, &w, sizeof(w), NULL, 0);
        if (r < 0)
                return vm_disconnect(vm, r, NULL);
        log_info("VM '%s' (pid %d, uuid %s, merge group %u) registered", vm->name, (int) vm->pid,
                 vm->uuid[0] ? vm->uuid : "-", vm->group);
        manager_bus_vm_added(m, vm);
}

/* Other processes mapping a region's memfd would read merged pages as
 * zeros (they map the memfd, not our pools): never merge such a region. */
void vm_region_set_mappers(VmRegion *reg, int error, pid_t first, size_t n) {
        if (error < 0)
                snprintf(reg->reason, sizeof(reg->reason), "cannot check for other mappers: %s", strerror(-error));
        else if (n > 0)
                snprintf(reg->reason, sizeof(reg->reason), "memfd also mapped by pid %d%s", (int) first,
                         n > 1 ? " and others" : "");
        else
                reg->reason[0] = 0;
}

bool vm_region_mergeable(Vm *vm, VmRegion *reg) {
        pid_t pids[1] = {};
        size_t n = 0;
        int r;

        r = mappers_find(NULL, reg->dev, reg->ino, vm->pid, getpid(), pids, ELEMENTSOF(pids), &n);
        vm_region_set_mappers(reg, r, pids[0], n);
        return !reg->reason[0];
}

static void vm_handle_region(Vm *vm, const struct dedup_msg_region *msg, int *fds) {
        Manager *m = vm->manager;
        VmRegion *reg;
        const char *why = NULL;
        struct stat st;
        int r;

        if (!vm->hello_done)
                return vm_disconnect(vm, EPROTO, "REGION before HELLO");
        if (vm->n_regions >= MANAGER_MAX_REGIONS)
                return vm_disconnect(vm, E2BIG, "too many regions");
        r = dedup_proto_check_region_fds(fds[0], fds[1], msg->memfd_offset, msg->size, &why);
        if (r < 0)
                return vm_disconnect(vm, r, why ? why : "bad region fds");
        if (msg->size / DEDUP_PAGE_SIZE > UINT32_MAX)
                return vm_disconnect(vm, E2BIG, "region too large");
        if (fstat(fds[0], &st) < 0)
                return vm_disconnect(vm, errno, "cannot stat the region's memfd");
        /* The agent writes guest pages back on copy-on-write breaks. */
        if ((fcntl(fds[0], F_GETFL) & O_ACCMODE) != O_RDWR)
                return vm_disconnect(vm, EBADF, "region memfd not opened read-write");
        for (unsigned i = 0; i < m->n_pools; i++) {
                struct stat ps;
                if (fstat(pool_fd(m->pools[i]), &ps) == 0 && ps.st_dev == st.st_dev && ps.st_ino == st.st_ino)
                        return vm_disconnect(vm, EPERM, "region memfd is a dedupd pool");
        }
        for (unsigned i = 0; i < vm->n_regions; i++) {
                VmRegion *o = &vm->regions[i];
                if (o->id == msg->region_id)
                        return vm_disconnect(vm, EEXIST, "region id used twice");
                if (msg->hva < o->hva + o->size && o->hva < msg->hva + msg->size)
                        return vm_disconnect(vm, EINVAL, "region overlaps another in host addresses");
                if (o->dev == st.st_dev && o->ino == st.st_ino && msg->memfd_offset < o->memfd_offset + o->size &&
                    o->memfd_offset < msg->memfd_offset + msg->size)
                        return vm_disconnect(vm, EINVAL, "region overlaps another in its memfd");
        }
        /* A memfd registered by another VM would let this one merge or
         * unmerge pages of that guest. */
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *o = m->vms[i];
                if (!o || o == vm)
                        continue;
                for (unsigned j = 0; j < o->n_regions; j++)
                        if (o->regions[j].dev == st.st_dev && o->regions[j].ino == st.st_ino)
                                return vm_disconnect(vm, EPERM, "memfd belongs to another VM");
        }

        reg = &vm->regions[vm->n_regions];
        *reg = (VmRegion) {
                .id = msg->region_id, .gpa = msg->gpa, .size = msg->size, .memfd_offset = msg->memfd_offset,
                .hva = msg->hva, .memfd = fds[0], .uffd = fds[1], .dev = st.st_dev, .ino = st.st_ino,
                .npages = (uint32_t) (msg->size / DEDUP_PAGE_SIZE),
        };
        r = dedup_engine_add_region(m->engine, vm->engine_vm, reg->npages, &reg->first);
        if (r < 0)
                return vm_disconnect(vm, r, "cannot track the region");
        fds[0] = fds[1] = -1;
        vm->n_regions++;
        (void) vm_region_mergeable(vm, reg);
        log_info("VM '%s': region %u, %llu MiB at gpa 0x%llx%s%s", vm->name, reg->id,
                 (unsigned long long) (reg->size >> 20), (unsigned long long) reg->gpa,
                 reg->reason[0] ? ", not merged: " : "", reg->reason);
        manager_write_status(m);
}

/* Read and handle one message: false when there is none to read. */
static bool vm_read_message(Vm *vm, int fd) {
        _Alignas(8) uint8_t buf[DEDUP_PROTO_MAX_MSG];
        int fds[2] = { -1, -1 };
        const struct dedup_msg_header *h = (const void *) buf;
        const char *why = NULL;
        size_t nfds = 0;
        ssize_t n;
        int r;

        /* The socket blocks for sends (see manager_accept()); reads must not. */
        n = dedup_proto_recv(fd, buf, sizeof(buf), fds, ELEMENTSOF(fds), &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN || n == -EINTR)
                return false;
        if (n == 0) {
                vm_disconnect(vm, 0, NULL);
                goto out;
        }
        if (n < 0) {
                char text[96];
                snprintf(text, sizeof(text), "unreadable message: %s", strerror((int) -n));
                vm_disconnect(vm, (int) n, text);
                goto out;
        }
        r = dedup_proto_validate(buf, (size_t) n, nfds, &why);
        if (r < 0) {
                vm_disconnect(vm, r, why ? why : "malformed message");
                goto out;
        }
        switch (h->type) {
        case DEDUP_MSG_HELLO:
                vm_handle_hello(vm, (const void *) buf);
                break;
        case DEDUP_MSG_REGION:
                vm_handle_region(vm, (const void *) buf, fds);
                break;
        case DEDUP_MSG_REMAP_REPLY:
                vm_handle_remap_reply(vm, (const void *) buf);
                break;
        case DEDUP_MSG_UNMERGED:
        case DEDUP_MSG_WRITTEN:
                vm_handle_ranges(vm, (const void *) buf);
                break;
        case DEDUP_MSG_ZERO_KEPT:
                vm_handle_zero_kept(vm, (const void *) buf);
                break;
        case DEDUP_MSG_MERGED_KEPT:
                vm_handle_merged_kept(vm, (const void *) buf);
                break;
        case DEDUP_MSG_BYE:
                log_info("VM '%s' said goodbye", vm->name);
                vm_disconnect(vm, 0, NULL);
                break;
        default:
                vm_disconnect(vm, EPROTO, "message type not accepted from an agent");
        }
out:
        safe_close(fds[0]);
        safe_close(fds[1]);
        return true;
}

/* Several messages a wakeup: an agent's news arrive as fast as its guest
 * writes, and one message per pass of the event loop let them pile up in
 * the agent until it gave up on the connection. */
#define VM_MSGS_PER_WAKEUP 32

static int vm_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Vm *vm = userdata;

        for (unsigned k = 0; k < VM_MSGS_PER_WAKEUP && !vm->disconnected; k++)
                if (!vm_read_message(vm, fd))
                        break;
        return 0;
}

static int vm_pid_exited(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Vm *vm = userdata;

        sd_event_source_disable_unref(vm->pid_source);
        vm->pid_source = NULL;
        vm->pidfd = safe_close(vm->pidfd); /* nothing left to hold pages for */
        vm_disconnect(vm, 0, NULL);
        return 0;
}

/* A VM costs its socket and pidfd, and a memfd and a uffd per region; keep
 * room for those, new pools, /proc reads and D-Bus. */
#define FD_SPARE 64u

static bool fds_to_spare(void) {
        struct rlimit rl;
        unsigned used = 0;
        DIR *d;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return true;
        d = opendir("/proc/self/fd");
        if (!d)
                return errno != EMFILE && errno != ENFILE;
        while (readdir(d))
                used++;
        closedir(d);
        return used + FD_SPARE <= rl.rlim_cur;
}

/* Is the peer in group gid, as its primary group (SO_PEERCRED) or a
 * supplementary one (SO_PEERGROUPS, as they were at connect())? */
static bool peer_in_group(int fd, gid_t primary, gid_t gid) {
        gid_t groups[256];
        socklen_t len = sizeof(groups);

        if (gid == (gid_t) -1)
                return false;
        if (primary == gid)
                return true;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
                return false;   /* ERANGE: more than 256 groups; refuse */
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == gid)
                        return true;
        return false;
}

int manager_accept(Manager *m, int fd) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        unsigned slot;
        Vm *vm;
        int r;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return log_warning_errno(-errno, "Cannot read peer credentials: %m");
        if (cred.uid != 0 && !peer_in_group(fd, cred.gid, m->allowed_gid)) {
                log_warning("Refusing VMM registration from pid %d (uid %u gid %u): only root%s may register",
                            (int) cred.pid, cred.uid, cred.gid, m->allowed_gid == (gid_t) -1 ? "" : " and the allowed group");
                return -EPERM;
        }
        for (slot = 0; slot < MANAGER_MAX_VMS && m->vms[slot]; slot++)
                ;
        if (slot == MANAGER_MAX_VMS)
                return log_warning_errno(-EMFILE, "Refusing VMM pid %d: too many VMs", (int) cred.pid);
        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        vm->manager = m;
        vm->fd = -1;
        vm->pidfd = -1;
        vm->pid = cred.pid;
        vm->uid = cred.uid;
        /* Refused at HELLO, once it has been read: closing a socket with
         * unread data would reset it before the VMM reads why. */
        if (!fds_to_spare()) {
                log_warning("Not taking VMM pid %d: fewer than %u file descriptors left below RLIMIT_NOFILE; "
                            "it runs unmerged and retries", (int) cred.pid, FD_SPARE);
                vm->refusal = "dedupd is out of file descriptors: not merging this VM for now";
        }
        r = sd_event_add_io(m->event, &vm->io_source, fd, EPOLLIN, vm_io, vm);
        if (r < 0) {
                vm_free(vm);
                return r;
        }
        /* Sends block, boundedly: a batch must not fail because the agent
         * is a moment behind, and a stuck agent must not stall the daemon. */
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &(struct timeval) { .tv_sec = 2 }, sizeof(struct timeval));
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int) { 4 << 20 }, sizeof(int));
        vm->fd = fd;
        vm->pidfd = pidfd_open_compat(cred.pid);
        if (vm->pidfd >= 0)
                (void) sd_event_add_io(m->event, &vm->pid_source, vm->pidfd, EPOLLIN, vm_pid_exited, vm);
        m->vms[slot] = vm;
        return 0;
}

VmRegion *vm_page_region(Manager *m, dedup_page_t page, Vm **ret_vm) {
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                if (!vm)
                        continue;
                for (unsigned j = 0; j < vm->n_regions; j++) {
                        VmRegion *r = &vm->regions[j];
                        if (page >= r->first && page - r->first < r->npages) {
                                if (ret_vm)
                                        *ret_vm = vm;
                                return r;
                        }
                }
        }
        return NULL;
}

Vm *manager_find_vm(Manager *m, const char *name) {
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                if (vm_live(m->vms[i]) && strcmp(m->vms[i]->name, name) == 0)
                        return m->vms[i];
        return NULL;
}

const char *vm_state(Vm *vm, const char **ret_reason) {
        Manager *m = vm->manager;
        DedupVmStats s = {};
        const char *reason = "";
        unsigned unmergeable = 0;

        (void) dedup_engine_vm_stats(m->engine, vm->engine_vm, &s);
        for (unsigned i = 0; i < vm->n_regions; i++)
                unmergeable += vm->regions[i].reason[0] != 0;
        if (m->run != 1)
                reason = m->run == 0 ? "Run=0: merging stopped" : "Run=2: unmerging everything";
        else if (vm->paused)
                reason = "unmerged on request (Unmerge()); Merge() resumes";
        else if (vm->reason[0])
                reason = vm->reason;
        else if (vm->n_regions > 0 && unmergeable == vm->n_regions)
                reason = "no region can be merged (see Regions)";
        *ret_reason = reason;
        if (!reason[0])
                return "merging";
        /* Merges still in flight land and are then unmerged: not done yet. */
        return s.merging_pages + s.zero_pages + s.pending > 0 && (m->run == 2 || vm->paused) ? "unmerging"
                                                                                            : "not-merging";
}

int vm_set_group(Vm *vm, uint16_t group) {
        int r = dedup_engine_set_vm_group(vm->manager->engine, vm->engine_vm, group);

        if (r < 0)
                return r;
        if (group != vm->group)
                log_info("VM '%s': merge group %u -> %u", vm->name, vm->group, group);
        vm->group = group;
        return 0;
}
