/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Foreign mappers of a VM's memfd (DESIGN.md §2, "No foreign mappers"): a
 * process other than the VMM that maps guest RAM (vhost-user backend,
 * virtiofsd) would read a merged page as zeros after the daemon punches it,
 * so the daemon refuses to merge such a region. Found by scanning
 * <proc_root>/<pid>/maps for lines whose "major:minor inode" fields name the
 * memfd's inode (a memfd line reads "... 00:01 1234 /memfd:name (deleted)").
 *
 * Only mappings count: a process holding the fd without mapping it cannot
 * see a punched page wrongly (read() of a hole is zeros, as it should be),
 * but may map it later, so the daemon rescans periodically.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One mapping of the inode by a foreign process: file range [offset,
 * offset + length). Return 0 to go on, < 0 to stop the scan with that error. */
typedef int (*mappers_fn)(void *userdata, pid_t pid, uint64_t offset, uint64_t length);

/* Call cb for every mapping of (dev, ino) in every process except
 * self_vmm_pid and daemon_pid (either may be 0). proc_root NULL = "/proc".
 * Processes that vanish or cannot be read during the scan are skipped. */
int mappers_scan(const char *proc_root, dev_t dev, ino_t ino, pid_t self_vmm_pid, pid_t daemon_pid, mappers_fn cb,
                 void *userdata);

/* The distinct pids mapping (dev, ino), except self_vmm_pid and daemon_pid:
 * up to max of them in ret_pids (ascending /proc order); *ret_n is how many
 * there are, which may exceed max. */
int mappers_find(const char *proc_root, dev_t dev, ino_t ino, pid_t self_vmm_pid, pid_t daemon_pid,
                 pid_t *ret_pids, size_t max, size_t *ret_n);

/* The same for the file behind fd (fstat). */
int mappers_find_fd(const char *proc_root, int fd, pid_t self_vmm_pid, pid_t daemon_pid, pid_t *ret_pids,
                    size_t max, size_t *ret_n);

/* A file looked for by mappers_scan_files(): the VMM that owns it, and
 * what the scan found (the first foreign pid, how many there are). */
typedef struct MappedFile {
        dev_t dev;
        ino_t ino;
        pid_t owner;
        pid_t foreign;
        size_t n_foreign;
        pid_t last;             /* scan state */
} MappedFile;

/* Called once per process read that has VMAs, with their number (maps lines). */
typedef void (*mappers_count_fn)(void *userdata, pid_t pid, uint64_t vmas);

/* All of files at once, in one pass over every process's maps but
 * daemon_pid's: what mappers_find() tells for each, its owner excluded, at
 * the cost of one. count (if not NULL) gets each process's VMA count, so a
 * caller counting VMMs' VMAs needs no pass of its own. */
int mappers_scan_files(const char *proc_root, MappedFile *files, size_t n, pid_t daemon_pid, mappers_count_fn count,
                       void *userdata);
