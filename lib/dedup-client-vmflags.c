/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Reading a region's VMAs from /proc/self/smaps at export time.
 *
 * Two jobs: prove that the hva range really is a MAP_SHARED, writable
 * mapping of the exported memfd at the exported offset (the agent later
 * pwrite()s what it reads at hva into the memfd at that offset, so a wrong
 * hva would copy one part of guest RAM over another), and remember the
 * madvise() flags the VMM set so that every mapping the agent creates over
 * guest RAM gets them again (MADV_DONTDUMP keeps guest RAM out of core
 * dumps, MADV_DONTFORK out of forked children, and so on).
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>

#include "dedup-client-internal.h"
#include "dedup-util.h"

static void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

static unsigned parse_vmflags(const char *s) {
        static const struct {
                char name[3];
                unsigned flag;
        } table[] = {
                { "dd", DEDUP_VMF_DONTDUMP },  { "hg", DEDUP_VMF_HUGEPAGE }, { "nh", DEDUP_VMF_NOHUGEPAGE },
                { "dc", DEDUP_VMF_DONTFORK },  { "mg", DEDUP_VMF_MERGEABLE },
        };
        unsigned flags = 0;

        /* Two-letter mnemonics separated by spaces. */
        while (*s) {
                while (*s == ' ' || *s == '\t')
                        s++;
                if (!s[0] || !s[1])
                        break;
                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (s[0] == table[i].name[0] && s[1] == table[i].name[1] &&
                            (s[2] == ' ' || s[2] == '\n' || s[2] == 0))
                                flags |= table[i].flag;
                while (*s && *s != ' ')
                        s++;
        }
        return flags;
}

typedef struct Vma {
        uint64_t start, end, pgoff;
        unsigned major, minor;
        uint64_t ino;
        char perms[5];
        bool overlaps;
} Vma;

/* "start-end perms offset major:minor inode [path]" */
static bool parse_header(const char *line, Vma *v) {
        int n = 0;

        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64 "%n", &v->start, &v->end,
                   v->perms, &v->pgoff, &v->major, &v->minor, &v->ino, &n) != 7)
                return false;
        return v->start < v->end;
}

int dedup_vma_scan(const char *smaps_path, uint64_t start, uint64_t end, uint64_t file_offset, dev_t dev,
                   ino_t ino, DedupVmaFlags **ret, size_t *ret_n) {
        _cleanup_(fclosep) FILE *f = NULL;
        _cleanup_free_ DedupVmaFlags *out = NULL;
        _cleanup_free_ char *line = NULL;
        size_t n_out = 0, cap = 0, linesz = 0;
        uint64_t covered = start;       /* [start, covered) proven so far */
        bool have = false;
        Vma v = {};

        if (start >= end)
                return -EINVAL;
        f = fopen(smaps_path, "re");
        if (!f)
                return -errno;

        while (getline(&line, &linesz, f) > 0) {
                Vma nv = {};

                if (parse_header(line, &nv)) {
                        v = nv;
                        have = true;
                        v.overlaps = v.end > start && v.start < end;
                        if (!v.overlaps)
                                continue;
                        /* VMAs come sorted: a gap shows as a start beyond what is covered. */
                        if (v.start > covered)
                                return -EFAULT;
                        if (strcmp(v.perms, "rw-s") != 0 || makedev(v.major, v.minor) != dev ||
                            v.ino != (uint64_t) ino)
                                return -EINVAL;
                        /* The file offset of the VMA must line up with the export. */
                        if (v.pgoff + (MAX(v.start, start) - v.start) != file_offset + (MAX(v.start, start) - start))
                                return -EINVAL;
                        continue;
                }
                if (!have || !v.overlaps || strncmp(line, "VmFlags:", 8) != 0)
                        continue;

                if (n_out == cap) {
                        size_t ncap = cap ? cap * 2 : 4;
                        DedupVmaFlags *p = realloc(out, ncap * sizeof *p);
                        if (!p)
                                return -ENOMEM;
                        out = p;
                        cap = ncap;
                }
                out[n_out++] = (DedupVmaFlags) {
                        .start = MAX(v.start, start),
                        .end = MIN(v.end, end),
                        .flags = parse_vmflags(line + 8),
                };
                covered = MIN(v.end, end);
                v.overlaps = false;
        }
        if (ferror(f))
                return -EIO;
        if (covered < end)
                return -EFAULT;

        *ret = TAKE_PTR(out);
        *ret_n = n_out;
        return 0;
}

void dedup_vma_apply(void *addr, size_t len, unsigned flags) {
        /* Errors are ignored: these only restore what the VMM asked for
         * (and VMA merging), never correctness. */
        if (flags & DEDUP_VMF_DONTDUMP)
                (void) madvise(addr, len, MADV_DONTDUMP);
        if (flags & DEDUP_VMF_HUGEPAGE)
                (void) madvise(addr, len, MADV_HUGEPAGE);
        if (flags & DEDUP_VMF_NOHUGEPAGE)
                (void) madvise(addr, len, MADV_NOHUGEPAGE);
        if (flags & DEDUP_VMF_DONTFORK)
                (void) madvise(addr, len, MADV_DONTFORK);
        if (flags & DEDUP_VMF_MERGEABLE)
                (void) madvise(addr, len, MADV_MERGEABLE);
}
