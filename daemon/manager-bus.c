/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the org.dedupd1 D-Bus API (DESIGN.md §4, man org.dedupd1(5)).
 *
 * /org/dedupd1 carries org.dedupd1.Manager: the tunables of tunables.c as
 * writable properties (the vtable is built from that table, so a tunable
 * exists everywhere or nowhere), KSM's counters, ListVMs and
 * ResetStatistics. Each registered VM is /org/dedupd1/vm/<escaped name>
 * with org.dedupd1.VM, served by a fallback vtable that looks the VM up by
 * name, announced with InterfacesAdded/Removed. LogControl1 lets an
 * operator change the log level without a restart.
 *
 * Reads are open to anyone; writes and methods need root or the admin
 * group: the bus policy (dbus/org.dedupd1.conf) says so first, and the
 * daemon checks again, so a permissive bus configuration is not a hole.
 */

#include <errno.h>
#include <grp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include "bus-util.h"
#include "manager.h"
#include "tunables.h"
#include "util.h"

#define BUS_NAME "org.dedupd1"
#define MANAGER_PATH "/org/dedupd1"
#define MANAGER_IFACE "org.dedupd1.Manager"
#define VM_PREFIX "/org/dedupd1/vm"
#define VM_IFACE "org.dedupd1.VM"
#define ERROR_BUSY "org.dedupd1.Error.Busy"
#define ERROR_NO_SUCH_VM "org.dedupd1.Error.NoSuchVM"


/* ---- who may change things ---- */

static int check_admin(sd_bus_message *msg, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        const gid_t *gids = NULL;
        struct group *g;
        uid_t uid;
        int n, r;

        r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID | SD_BUS_CREDS_UID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS |
                                                   SD_BUS_CREDS_AUGMENT, &creds);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot tell who is calling: %m");
        if (sd_bus_creds_get_euid(creds, &uid) < 0 && sd_bus_creds_get_uid(creds, &uid) < 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Caller's user unknown");
        if (uid == 0)
                return 0;
        g = getgrnam(ADMIN_GROUP);
        n = sd_bus_creds_get_supplementary_gids(creds, &gids);
        for (int i = 0; g && i < n; i++)
                if (gids[i] == g->gr_gid)
                        return 0;
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                 "Only root and members of group '%s' may change dedupd", ADMIN_GROUP);
}

/* ---- org.dedupd1.Manager ---- */

static int get_tunable(sd_bus *bus, const char *path, const char *interface, const char *property,
                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        const Tunable *t = tunable_find(property);
        uint32_t v = t->get(userdata);

        switch (t->type) {
        case 'b':
                return sd_bus_message_append(reply, "b", (int) v);
        case 's':
                return sd_bus_message_append(reply, "s", t->values[v]);
        default:
                return sd_bus_message_append(reply, "u", v);
        }
}

static int set_tunable(sd_bus *bus, const char *path, const char *interface, const char *property,
                       sd_bus_message *value, void *userdata, sd_bus_error *error) {
        const Tunable *t = tunable_find(property);
        Manager *m = userdata;
        char err[512];
        const char *s;
        uint32_t v;
        int b, r;

        r = check_admin(value, error);
        if (r < 0)
                return r;
        switch (t->type) {
        case 'b':
                r = sd_bus_message_read(value, "b", &b);
                v = b;
                break;
        case 's':
                r = sd_bus_message_read(value, "s", &s);
                if (r >= 0 && tunable_parse(t, s, &v, err, sizeof(err)) < 0) {
                        log_warning("Refused D-Bus change: %s", err);
                        return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, err);
                }
                break;
        default:
                r = sd_bus_message_read(value, "u", &v);
        }
        if (r < 0)
                return r;
        r = tunable_set(m, t, v, err, sizeof(err));
        if (r < 0) {
                log_warning("Refused D-Bus change: %s", err);
                return sd_bus_error_set(error, r == -EBUSY ? ERROR_BUSY : SD_BUS_ERROR_INVALID_ARGS, err);
        }
        if (r > 0) {
                manager_bus_property_changed(m, property);
                manager_bus_check_vms(m);
        }
        return 0;
}

/* Counters: read-only, no change signals. */
typedef struct Counter {
        const char *name;
        size_t offset;          /* in DedupEngineStats */
} Counter;

static const Counter counters[] = {
        { "PagesShared", offsetof(DedupEngineStats, pages_shared) },
        { "PagesSharing", offsetof(DedupEngineStats, pages_sharing) },
        { "PagesUnshared", offsetof(DedupEngineStats, pages_unshared) },
        { "PagesVolatile", offsetof(DedupEngineStats, pages_volatile) },
        { "PagesScanned", offsetof(DedupEngineStats, pages_scanned) },
        { "FullScans", offsetof(DedupEngineStats, full_scans) },
        { "StableNodeChains", offsetof(DedupEngineStats, stable_node_chains) },
        { "StableNodeDups", offsetof(DedupEngineStats, stable_node_dups) },
        { "ZeroPages", offsetof(DedupEngineStats, zero_pages) },
        { "MergeAborts", offsetof(DedupEngineStats, merge_aborts) },
        { "Unmerges", offsetof(DedupEngineStats, unmerges) },
        { "MetadataBytes", offsetof(DedupEngineStats, metadata_bytes) },
        { "PagesTracked", offsetof(DedupEngineStats, pages_tracked) },
};

static int get_counter(sd_bus *bus, const char *path, const char *interface, const char *property,
                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        DedupEngineStats st;

        dedup_engine_stats(m->engine, &st);
        for (size_t i = 0; i < ELEMENTSOF(counters); i++)
                if (strcmp(counters[i].name, property) == 0)
                        return sd_bus_message_append(reply, "t", *(uint64_t *) ((uint8_t *) &st + counters[i].offset));
        return -ENOENT;
}

static int get_general_profit(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "x", manager_general_profit(userdata));
}

static int method_list_vms(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssuqso)");
        for (unsigned i = 0; r >= 0 && i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                _cleanup_free_ char *path = NULL;
                const char *reason;

                if (!vm_live(vm))
                        continue;
                r = sd_bus_path_encode(VM_PREFIX, vm->name, &path);
                if (r >= 0)
                        r = sd_bus_message_append(reply, "(ssuqso)", vm->name, vm->uuid, (uint32_t) vm->pid, vm->group,
                                                  vm_state(vm, &reason), path);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_reset_statistics(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        int r = check_admin(msg, error);

        if (r < 0)
                return r;
        manager_reset_statistics(userdata);
        return sd_bus_reply_method_return(msg, NULL);
}

static int get_idle(sd_bus *bus, const char *path, const char *interface, const char *property,
                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "b", manager_scan_idle(userdata));
}

static int get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", PACKAGE_VERSION);
}

static const sd_bus_vtable manager_fixed_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxMapCount", "t", NULL, offsetof(Manager, max_map_count), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("GeneralProfit", "x", get_general_profit, 0, 0),
        SD_BUS_PROPERTY("Idle", "b", get_idle, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("ListVMs", SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssuqso)", vms), method_list_vms,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("ResetStatistics", NULL, NULL, method_reset_statistics, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

/* The Manager vtable: the fixed part plus one entry per tunable and
 * counter, built once from their tables. */
static const sd_bus_vtable *manager_vtable(void) {
        static sd_bus_vtable v[64];
        size_t n = 0;

        if (v[0].type)
                return v;
        for (size_t i = 0; manager_fixed_vtable[i].type != _SD_BUS_VTABLE_END; i++)
                v[n++] = manager_fixed_vtable[i];
        for (size_t i = 0; i < n_tunables; i++) {
                static const char *const sig[] = { ['u'] = "u", ['b'] = "b", ['s'] = "s" };
                v[n++] = (sd_bus_vtable) SD_BUS_WRITABLE_PROPERTY(tunables[i].name, sig[(int) tunables[i].type],
                                                                  get_tunable, set_tunable, 0,
                                                                  SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE |
                                                                          SD_BUS_VTABLE_UNPRIVILEGED);
        }
        for (size_t i = 0; i < ELEMENTSOF(counters); i++)
                v[n++] = (sd_bus_vtable) SD_BUS_PROPERTY(counters[i].name, "t", get_counter, 0,
                                                         0);
        v[n++] = (sd_bus_vtable) SD_BUS_VTABLE_END;
        return v;
}

/* ---- org.dedupd1.VM ---- */

static int vm_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                   sd_bus_error *error) {
        _cleanup_free_ char *name = NULL;
        Vm *vm;

        if (sd_bus_path_decode(path, VM_PREFIX, &name) <= 0 || !name)
                return 0;
        vm = manager_find_vm(userdata, name);
        if (!vm)
                return 0;
        *found = vm;
        return 1;
}

static int vm_enumerate(sd_bus *bus, const char *prefix, void *userdata, char ***ret, sd_bus_error *error) {
        Manager *m = userdata;
        char **paths = calloc(MANAGER_MAX_VMS + 1, sizeof(char *));
        size_t n = 0;

        if (!paths)
                return -ENOMEM;
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                if (!vm_live(vm))
                        continue;
                if (sd_bus_path_encode(VM_PREFIX, vm->name, &paths[n]) < 0) {
                        for (size_t j = 0; j < n; j++)
                                free(paths[j]);
                        free(paths);
                        return -ENOMEM;
                }
                n++;
        }
        *ret = paths;
        return 0;
}

static int vm_get_string(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Vm *vm = userdata;
        const char *reason, *state = vm_state(vm, &reason);

        if (strcmp(property, "State") == 0)
                return sd_bus_message_append(reply, "s", state);
        if (strcmp(property, "Reason") == 0)
                return sd_bus_message_append(reply, "s", reason);
        return sd_bus_message_append(reply, "s", strcmp(property, "Name") == 0 ? vm->name : vm->uuid);
}

static int vm_get_pid(sd_bus *bus, const char *path, const char *interface, const char *property,
                      sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", (uint32_t) ((Vm *) userdata)->pid);
}

static int vm_get_group(sd_bus *bus, const char *path, const char *interface, const char *property,
                        sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "q", ((Vm *) userdata)->group);
}

static int vm_set_group_property(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *value, void *userdata, sd_bus_error *error) {
        Vm *vm = userdata;
        uint16_t group;
        int r;

        r = check_admin(value, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(value, "q", &group);
        if (r < 0)
                return r;
        if (group >= DEDUP_MAX_GROUPS)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid value %u for MergeGroup: allowed 0..%u", group, DEDUP_MAX_GROUPS - 1);
        r = vm_set_group(vm, group);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, ERROR_BUSY,
                                         "Cannot change MergeGroup of VM '%s' to %u while it has merged pages "
                                         "or merges in flight; "
                                         "call Unmerge() first", vm->name, group);
        if (r >= 0)
                (void) sd_bus_emit_properties_changed(bus, path, VM_IFACE, "MergeGroup", NULL);
        return r;
}

static int vm_get_regions(sd_bus *bus, const char *path, const char *interface, const char *property,
                          sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Vm *vm = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(uttsss)");
        for (unsigned i = 0; r >= 0 && i < vm->n_regions; i++) {
                VmRegion *reg = &vm->regions[i];
                char memfd[48];

                snprintf(memfd, sizeof(memfd), "%u:%u:%llu", major(reg->dev), minor(reg->dev),
                         (unsigned long long) reg->ino);
                r = sd_bus_message_append(reply, "(uttsss)", reg->id, reg->gpa, reg->size, memfd,
                                          reg->reason[0] ? "not-merging" : "merging", reg->reason);
        }
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static int vm_get_counter(sd_bus *bus, const char *path, const char *interface, const char *property,
                          sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Vm *vm = userdata;
        DedupVmStats s = {};

        (void) dedup_engine_vm_stats(vm->manager->engine, vm->engine_vm, &s);
        if (strcmp(property, "GeneralProfit") == 0)
                return sd_bus_message_append(reply, "x", s.profit_bytes);
        return sd_bus_message_append(reply, "t",
                                     strcmp(property, "Pages") == 0          ? s.pages :
                                     strcmp(property, "MergingPages") == 0   ? s.merging_pages :
                                     strcmp(property, "ZeroPages") == 0      ? s.zero_pages :
                                     strcmp(property, "MergeAborts") == 0    ? s.merge_aborts :
                                     strcmp(property, "Unmerges") == 0       ? s.unmerges :
                                                                               vm->vma.current);
}

static int vm_method_pause(sd_bus_message *msg, void *userdata, sd_bus_error *error, bool pause) {
        Vm *vm = userdata;
        int r = check_admin(msg, error);

        if (r < 0)
                return r;
        if (vm->paused != pause)
                log_info("VM '%s': %s on request", vm->name, pause ? "unmerging, merging stopped" : "merging resumed");
        vm->paused = pause;
        manager_bus_check_vms(vm->manager);
        return sd_bus_reply_method_return(msg, NULL);
}

static int vm_method_unmerge(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return vm_method_pause(msg, userdata, error, true);
}

static int vm_method_merge(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return vm_method_pause(msg, userdata, error, false);
}

#define VM_COUNTER(name, sig) SD_BUS_PROPERTY(name, sig, vm_get_counter, 0, 0)

static const sd_bus_vtable vm_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", vm_get_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Uuid", "s", vm_get_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Pid", "u", vm_get_pid, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_WRITABLE_PROPERTY("MergeGroup", "q", vm_get_group, vm_set_group_property, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("State", "s", vm_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Reason", "s", vm_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Regions", "a(uttsss)", vm_get_regions, 0, 0),
        VM_COUNTER("Pages", "t"),
        VM_COUNTER("MergingPages", "t"),
        VM_COUNTER("ZeroPages", "t"),
        VM_COUNTER("MergeAborts", "t"),
        VM_COUNTER("Unmerges", "t"),
        VM_COUNTER("GeneralProfit", "x"),
        VM_COUNTER("Vmas", "t"),
        SD_BUS_METHOD("Unmerge", NULL, NULL, vm_method_unmerge, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Merge", NULL, NULL, vm_method_merge, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

/* ---- org.freedesktop.LogControl1 ---- */

static int get_log(sd_bus *bus, const char *path, const char *interface, const char *property,
                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s",
                                     strcmp(property, "LogLevel") == 0  ? log_level_to_string(log_get_max_level()) :
                                     strcmp(property, "LogTarget") == 0 ? log_get_target() :
                                                                          "dedupd");
}

static int set_log(sd_bus *bus, const char *path, const char *interface, const char *property,
                   sd_bus_message *value, void *userdata, sd_bus_error *error) {
        const char *s;
        int r;

        r = check_admin(value, error);
        if (r >= 0)
                r = sd_bus_message_read(value, "s", &s);
        if (r < 0)
                return r;
        if (strcmp(property, "LogLevel") == 0) {
                int l = log_level_from_string(s);
                if (l < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Invalid value '%s' for LogLevel: allowed emerg, alert, crit, "
                                                 "err, warning, notice, info, debug", s);
                log_set_max_level(l);
        } else if (log_set_target(s) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid value '%s' for LogTarget: allowed console, journal, null", s);
        log_info("%s set to %s", property, s);
        return sd_bus_emit_properties_changed(bus, path, interface, property, NULL);
}

static const sd_bus_vtable log_control_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_WRITABLE_PROPERTY("LogLevel", "s", get_log, set_log, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("LogTarget", "s", get_log, set_log, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("SyslogIdentifier", "s", get_log, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_VTABLE_END
};

/* ---- connecting ---- */

static int add_objects(sd_bus *bus, Manager *m) {
        int r;

        r = sd_bus_add_object_vtable(bus, NULL, MANAGER_PATH, MANAGER_IFACE, manager_vtable(), m);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(bus, NULL, VM_PREFIX, VM_IFACE, vm_vtable, vm_find, m);
        if (r >= 0)
                r = sd_bus_add_node_enumerator(bus, NULL, VM_PREFIX, vm_enumerate, m);
        if (r >= 0)
                r = sd_bus_add_object_manager(bus, NULL, MANAGER_PATH);
        if (r >= 0)
                r = sd_bus_add_object_vtable(bus, NULL, "/org/freedesktop/LogControl1",
                                             "org.freedesktop.LogControl1", log_control_vtable, m);
        return r;
}

static int open_bus(const char *spec, sd_bus **ret) {
        if (strcmp(spec, "system") == 0)
                return sd_bus_open_system_with_description(ret, "dedupd");
        if (strcmp(spec, "session") == 0)
                return sd_bus_open_user_with_description(ret, "dedupd");
        return bus_open_address(spec, ret);
}

int manager_connect_bus(Manager *m) {
        const char *spec = m->bus_spec ?: "system";
        int r;

        if (strcmp(spec, "none") == 0)
                return 0;
        r = open_bus(spec, &m->bus);
        if (r < 0)
                return log_error_errno(r, "Cannot connect to the D-Bus %s bus: %m (--bus=none runs without D-Bus)",
                                       spec);
        r = add_objects(m->bus, m);
        if (r < 0)
                return log_error_errno(r, "Cannot publish D-Bus objects: %m");
        r = sd_bus_request_name(m->bus, BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Cannot own D-Bus name %s on the %s bus: %m (another dedupd running, "
                                          "or the bus policy dbus/org.dedupd1.conf not installed?)",
                                       BUS_NAME, spec);
        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Cannot attach D-Bus to the event loop: %m");
        log_info("Serving %s on the %s bus", BUS_NAME, spec);
        return 0;
}

void manager_bus_free(Manager *m) {
        m->bus = sd_bus_flush_close_unref(m->bus);
}

static void vm_path(Vm *vm, char **ret) {
        if (sd_bus_path_encode(VM_PREFIX, vm->name, ret) < 0)
                *ret = NULL;
}

void manager_bus_vm_added(Manager *m, Vm *vm) {
        _cleanup_free_ char *path = NULL;
        const char *reason;

        snprintf(vm->bus_state, sizeof(vm->bus_state), "%s", vm_state(vm, &reason));
        snprintf(vm->bus_reason, sizeof(vm->bus_reason), "%s", reason);
        if (!m->bus)
                return;
        vm_path(vm, &path);
        if (path)
                (void) sd_bus_emit_object_added(m->bus, path);
}

void manager_bus_vm_removed(Manager *m, Vm *vm) {
        _cleanup_free_ char *path = NULL;

        if (!m->bus)
                return;
        vm_path(vm, &path);
        if (path)
                (void) sd_bus_emit_object_removed(m->bus, path);
}

void manager_bus_check_vms(Manager *m) {
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                _cleanup_free_ char *path = NULL;
                const char *reason, *state;

                if (!vm_live(vm))
                        continue;
                state = vm_state(vm, &reason);
                if (strcmp(state, vm->bus_state) == 0 && strcmp(reason, vm->bus_reason) == 0)
                        continue;
                snprintf(vm->bus_state, sizeof(vm->bus_state), "%s", state);
                snprintf(vm->bus_reason, sizeof(vm->bus_reason), "%s", reason);
                if (!m->bus)
                        continue;
                vm_path(vm, &path);
                if (path)
                        (void) sd_bus_emit_properties_changed(m->bus, path, VM_IFACE, "State", "Reason", NULL);
        }
}

void manager_bus_property_changed(Manager *m, const char *property) {
        if (m->bus)
                (void) sd_bus_emit_properties_changed(m->bus, MANAGER_PATH, MANAGER_IFACE, property, NULL);
}

/* ---- --bus-introspect ---- */

/* The <interface> element of iface in an Introspect reply. */
static int extract_interface(const char *xml, const char *iface, FILE *out) {
        char open[128];
        const char *a, *b;

        snprintf(open, sizeof(open), " <interface name=\"%s\">", iface);
        a = strstr(xml, open);
        b = a ? strstr(a, " </interface>") : NULL;
        if (!b)
                return -ENOENT;
        fprintf(out, "%.*s </interface>\n", (int) (b - a), a);
        return 0;
}

static int introspect(sd_bus *bus, const char *path, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *xml;
        int r;

        r = sd_bus_call_method(bus, BUS_NAME, path, "org.freedesktop.DBus.Introspectable", "Introspect", NULL,
                               &reply, NULL);
        if (r >= 0)
                r = sd_bus_message_read(reply, "s", &xml);
        if (r >= 0)
                *ret = strdup(xml);
        return r < 0 ? r : *ret ? 0 : -ENOMEM;
}

/* Serve the objects on one end of a socket pair from a child and
 * introspect them from the other: sd-bus writes the XML it really serves. */
int manager_bus_introspect(const char *out_path) {
        _cleanup_(sd_bus_unrefp) sd_bus *client = NULL;
        _cleanup_free_ char *manager_xml = NULL, *vm_xml = NULL;
        _cleanup_fclose_ FILE *out = NULL;
        int pair[2], r;
        pid_t pid;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
                return log_error_errno(-errno, "socketpair(): %m");
        pid = fork();
        if (pid < 0)
                return log_error_errno(-errno, "fork(): %m");
        if (pid == 0) {
                sd_bus *server = NULL;
                sd_id128_t id = {};
                close(pair[1]);
                r = sd_bus_new(&server);
                if (r >= 0)
                        r = sd_bus_set_fd(server, pair[0], pair[0]);
                if (r >= 0)
                        r = sd_bus_set_server(server, true, id);
                if (r >= 0)
                        r = sd_bus_set_anonymous(server, true);
                if (r >= 0)
                        r = sd_bus_add_object_vtable(server, NULL, MANAGER_PATH, MANAGER_IFACE, manager_vtable(), NULL);
                if (r >= 0)
                        r = sd_bus_add_object_vtable(server, NULL, VM_PREFIX "/example", VM_IFACE, vm_vtable, NULL);
                if (r >= 0)
                        r = sd_bus_start(server);
                while (r >= 0) {
                        r = sd_bus_process(server, NULL);
                        if (r == 0)
                                r = sd_bus_wait(server, UINT64_MAX);
                }
                _exit(0);
        }
        close(pair[0]);
        r = sd_bus_new(&client);
        if (r >= 0)
                r = sd_bus_set_fd(client, pair[1], pair[1]);
        if (r >= 0)
                r = sd_bus_set_anonymous(client, true);
        if (r >= 0)
                r = sd_bus_start(client);
        if (r >= 0)
                r = introspect(client, MANAGER_PATH, &manager_xml);
        if (r >= 0)
                r = introspect(client, VM_PREFIX "/example", &vm_xml);
        client = sd_bus_flush_close_unref(client);
        (void) waitpid(pid, NULL, 0);
        if (r < 0)
                return log_error_errno(r, "Cannot introspect our own objects: %m");

        out = fopen(out_path, "we");
        if (!out)
                return log_error_errno(-errno, "Cannot write '%s': %m", out_path);
        fputs("<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n"
              "\"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n"
              "<!-- org.dedupd1: written by dedupd --bus-introspect; see org.dedupd1(5) -->\n<node>\n",
              out);
        r = extract_interface(manager_xml, MANAGER_IFACE, out);
        if (r >= 0)
                r = extract_interface(vm_xml, VM_IFACE, out);
        if (r < 0)
                return log_error_errno(r, "Introspection data lacks our interfaces");
        fputs("</node>\n", out);
        if (fflush(out) != 0 || ferror(out))
                return log_error_errno(-EIO, "Cannot write '%s'", out_path);
        return 0;
}
