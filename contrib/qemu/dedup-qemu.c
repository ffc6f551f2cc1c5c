/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libdedup-qemu.so: the libdedup agent inside an unmodified QEMU, loaded
 * with LD_PRELOAD, for guest RAM from memory-backend-memfd (share=on).
 *
 * QEMU creates that RAM with memfd_create("memory-backend-memfd", ...)
 * (backends/hostmem-memfd.c), reserves address space with an anonymous
 * PROT_NONE mapping and maps the memfd over it with MAP_FIXED|MAP_SHARED
 * (util/mmap-alloc.c), then sets madvise flags on it (HUGEPAGE, DONTDUMP,
 * MERGEABLE). The shim wraps those calls and only watches them:
 *
 *  - memfd_create: remember fds created with QEMU's RAM backend name;
 *  - mmap: a MAP_SHARED mapping of such an fd that overlaps no known
 *    region is a new RAM region (mappings inside a known region are the
 *    agent's own, mapping guest RAM back after a copy-on-write break);
 *  - madvise on a region: QEMU is still setting it up.
 *
 * A region is exported to dedupd once QEMU has left it alone for
 * SETTLE_MSEC, so libdedup reads the madvise flags QEMU set and puts them
 * on every mapping it makes. That happens on a thread of the shim, never in
 * the wrapped call: a wrapper holds the shim's lock only to update its
 * tables and never calls libdedup, which itself calls mmap.
 *
 * Without a dedupd listening, the first export finds no socket, the shim
 * says so once on stderr and does nothing more: QEMU runs as without it.
 * When a running dedupd goes away the shim says so, and again when libdedup
 * has registered the RAM with a new dedupd.
 * munmap of an exported region (memory hot-unplug) stops deduplication of
 * the whole VM first (libdedup cannot drop one region): guest RAM is
 * unprotected, merged pages stay mapped and break copy-on-write as
 * ordinary private pages.
 */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dedup.h"

#define QEMU_MEMFD_NAME "memory-backend-memfd"
#define MAX_MEMFDS 64
#define MAX_REGIONS 64
#define SETTLE_MSEC 1000
#define POLL_MSEC 100

typedef struct Region {
        int memfd;
        uint64_t offset, size;
        uintptr_t hva;
        bool exported;
} Region;

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static int memfds[MAX_MEMFDS];
static unsigned n_memfds;
static Region regions[MAX_REGIONS];
static unsigned n_regions;
static uint64_t last_change_ns;         /* CLOCK_MONOTONIC of QEMU's last setup call */
static bool exporter_started;
static bool disabled;                   /* no daemon, or stopped: watch nothing more */
/* The client, used by the exporter thread and freed by munmap, both under
 * client_lock; never taken inside shim_lock. */
static pthread_mutex_t client_lock = PTHREAD_MUTEX_INITIALIZER;
static dedup_client *client;
static bool client_started;

static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);
static int (*real_madvise)(void *, size_t, int);
static int (*real_memfd_create)(const char *, unsigned);

__attribute__((constructor)) static void shim_init(void) {
        real_mmap = dlsym(RTLD_NEXT, "mmap");
        real_munmap = dlsym(RTLD_NEXT, "munmap");
        real_madvise = dlsym(RTLD_NEXT, "madvise");
        real_memfd_create = dlsym(RTLD_NEXT, "memfd_create");
}

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "dedup-qemu: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Under shim_lock. */
static bool is_ram_memfd(int fd) {
        for (unsigned i = 0; i < n_memfds; i++)
                if (memfds[i] == fd)
                        return true;
        return false;
}

/* Under shim_lock: the region overlapping [a, a + len), or NULL. */
static Region *region_overlapping(uintptr_t a, size_t len) {
        for (unsigned i = 0; i < n_regions; i++)
                if (a < regions[i].hva + regions[i].size && regions[i].hva < a + len)
                        return &regions[i];
        return NULL;
}

/* QEMU's -name (NAME, or guest=NAME,...) and -uuid from our command line;
 * characters dedupd does not take in a name become '_'. */
static void vm_identity(char name[64], char uuid[37]) {
        char buf[8192], *p, *end;
        FILE *f = fopen("/proc/self/cmdline", "re");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

        if (f)
                fclose(f);
        buf[n] = 0;
        snprintf(name, 64, "qemu-%d", (int) getpid());
        uuid[0] = 0;
        for (p = buf, end = buf + n; p < end; p += strlen(p) + 1) {
                char *v = p + strlen(p) + 1;

                if (v >= end)
                        break;
                if (strcmp(p, "-name") == 0 || strcmp(p, "--name") == 0) {
                        size_t k;

                        if (strncmp(v, "guest=", 6) == 0)
                                v += 6;
                        k = strcspn(v, ",");
                        if (k == 0)
                                continue;
                        if (k > 63)
                                k = 63;
                        for (size_t i = 0; i < k; i++)
                                name[i] = strchr("_.:-", v[i]) || (v[i] >= 'a' && v[i] <= 'z') ||
                                          (v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= '0' && v[i] <= '9') ? v[i] : '_';
                        name[k] = 0;
                } else if ((strcmp(p, "-uuid") == 0 || strcmp(p, "--uuid") == 0) && strlen(v) == 36)
                        memcpy(uuid, v, 37);
        }
}

/* Under client_lock. */
static int export_and_start(const Region *todo, unsigned n) {
        int r;

        for (unsigned i = 0; i < n; i++) {
                r = dedup_client_export_region(client, todo[i].memfd, todo[i].offset, todo[i].size,
                                               (void *) todo[i].hva, todo[i].offset);
                if (r < 0)
                        say("guest RAM at %p (%llu MiB) not deduplicated: %s", (void *) todo[i].hva,
                            (unsigned long long) (todo[i].size >> 20), strerror(-r));
        }
        if (client_started)
                return 0; /* later regions (hotplug) join the running agent */
        r = dedup_client_start(client);
        client_started = r == 0;
        if (r == 0)
                say("guest RAM registered with dedupd");
        else if (r == -ENOENT || r == -ECONNREFUSED)
                say("no dedupd listening: guest RAM is not deduplicated");
        else
                say("cannot register guest RAM with dedupd: %s", strerror(-r));
        return r;
}

/* Export what has settled. false once there is nothing more to do. */
static bool export_settled(void) {
        Region todo[MAX_REGIONS];
        unsigned n = 0;
        int r;

        pthread_mutex_lock(&shim_lock);
        if (disabled) {
                pthread_mutex_unlock(&shim_lock);
                return false;
        }
        if (now_ns() - last_change_ns >= (uint64_t) SETTLE_MSEC * 1000000u)
                for (unsigned i = 0; i < n_regions; i++)
                        if (!regions[i].exported) {
                                regions[i].exported = true;
                                todo[n++] = regions[i];
                        }
        pthread_mutex_unlock(&shim_lock);

        if (n == 0)
                return true;
        pthread_mutex_lock(&client_lock);
        r = client ? export_and_start(todo, n) : -ESHUTDOWN;
        pthread_mutex_unlock(&client_lock);
        if (r == 0)
                return true;
        pthread_mutex_lock(&client_lock);
        dedup_client_free(client); /* leaves guest RAM as it found it */
        client = NULL;
        pthread_mutex_unlock(&client_lock);
        pthread_mutex_lock(&shim_lock);
        disabled = true;
        pthread_mutex_unlock(&shim_lock);
        return false;
}

/* One line when the agent loses dedupd (fail-safe) and one when it is
 * registered again (libdedup reconnects by itself unless refused). */
static void watch_connection(void) {
        static bool was_connected = true;
        dedup_client_stats st;
        int r;

        pthread_mutex_lock(&client_lock);
        r = client && client_started ? dedup_client_get_stats(client, &st) : -ENOENT;
        pthread_mutex_unlock(&client_lock);
        if (r < 0 || !!st.connected == was_connected)
                return;
        was_connected = st.connected;
        if (st.connected)
                say("guest RAM registered with dedupd again (reconnect %llu)", (unsigned long long) st.reconnects);
        else
                say("lost dedupd: guest RAM is no longer deduplicated, merged pages stay mapped; "
                    "trying to register again");
}

static void *exporter_main(void *arg) {
        char name[64], uuid[37];
        int r;

        vm_identity(name, uuid);
        pthread_mutex_lock(&client_lock);
        r = dedup_client_new(NULL, name, uuid[0] ? uuid : NULL, &client);
        pthread_mutex_unlock(&client_lock);
        if (r < 0) {
                say("dedup_client_new: %s", strerror(-r));
                pthread_mutex_lock(&shim_lock);
                disabled = true;
                pthread_mutex_unlock(&shim_lock);
                return NULL;
        }
        while (export_settled()) {
                watch_connection();
                nanosleep(&(struct timespec) { .tv_nsec = POLL_MSEC * 1000000L }, NULL);
        }
        return NULL;
}

/* Under shim_lock: the first region starts the exporter, with every signal
 * blocked (QEMU's signals are for its own threads). */
static void start_exporter(void) {
        sigset_t all, old;
        pthread_t t;

        if (exporter_started)
                return;
        exporter_started = true;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (pthread_create(&t, NULL, exporter_main, NULL) == 0)
                pthread_detach(t);
        else
                disabled = true;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int memfd_create(const char *name, unsigned flags) {
        int fd = real_memfd_create(name, flags);

        if (fd >= 0 && name && strcmp(name, QEMU_MEMFD_NAME) == 0) {
                pthread_mutex_lock(&shim_lock);
                if (n_memfds < MAX_MEMFDS)
                        memfds[n_memfds++] = fd;
                pthread_mutex_unlock(&shim_lock);
        }
        return fd;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
        void *p = real_mmap(addr, len, prot, flags, fd, offset);
        int type = flags & MAP_TYPE;

        if (p == MAP_FAILED || fd < 0 || (type != MAP_SHARED && type != MAP_SHARED_VALIDATE) ||
            !(prot & PROT_WRITE))
                return p;
        pthread_mutex_lock(&shim_lock);
        if (!disabled && is_ram_memfd(fd) && !region_overlapping((uintptr_t) p, len) && n_regions < MAX_REGIONS) {
                regions[n_regions++] = (Region) {
                        .memfd = fd, .offset = (uint64_t) offset, .size = len, .hva = (uintptr_t) p,
                };
                last_change_ns = now_ns();
                start_exporter();
        }
        pthread_mutex_unlock(&shim_lock);
        return p;
}

/* QEMU calls mmap64 (the same call on 64-bit). */
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t offset) __attribute__((alias("mmap")));

int madvise(void *addr, size_t len, int advice) {
        int r = real_madvise(addr, len, advice);

        pthread_mutex_lock(&shim_lock);
        if (region_overlapping((uintptr_t) addr, len))
                last_change_ns = now_ns();
        pthread_mutex_unlock(&shim_lock);
        return r;
}

int munmap(void *addr, size_t len) {
        bool stop = false;
        Region *reg;

        pthread_mutex_lock(&shim_lock);
        while ((reg = region_overlapping((uintptr_t) addr, len))) {
                stop |= reg->exported;
                *reg = regions[--n_regions];
        }
        if (stop)
                disabled = true;
        pthread_mutex_unlock(&shim_lock);
        if (stop) {
                /* Before the range is gone: the agent must not map into
                 * address space QEMU may reuse. */
                pthread_mutex_lock(&client_lock);
                if (client)
                        say("guest RAM at %p unmapped: deduplication of this VM stops", addr);
                dedup_client_free(client);
                client = NULL;
                pthread_mutex_unlock(&client_lock);
        }
        return real_munmap(addr, len);
}
