/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * svc-manager: a stand-in for systemd's service manager, for tests on
 * machines where PID 1 is not systemd. It runs one service the way
 * dedupd.socket and dedupd.service run dedupd, with only what dedupd uses:
 *
 *  - socket activation: a listening SOCK_SEQPACKET socket passed as fd 3,
 *    named "dedupd.socket" (a socket unit without FileDescriptorName= names
 *    its fds after the unit), with LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES;
 *  - sd_notify() on NOTIFY_SOCKET, from the main process only
 *    (NotifyAccess=main, checked by SCM_CREDENTIALS): READY=1 and STATUS=
 *    are logged; FDSTORE=1 [FDNAME=] keeps the fds sent along, FDSTOREREMOVE=1
 *    FDNAME= drops every stored fd of that name (and wins over FDSTORE=1 in
 *    the same message, as in systemd);
 *  - the fd store (FileDescriptorStoreMax=): passed after the socket, fds
 *    4, 5, ..., on every start; kept across restarts, closed on stop;
 *  - Restart=always after RestartSec=.
 *
 * Every event is one line on stderr, written at once so that the lines do
 * not mix with the service's own on a shared log. SIGUSR1 lists the store.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/close_range.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dedup-util.h"

#define SOCKET_FDNAME "dedupd.socket"
#define FDNAME_MAX 255
#define NOTIFY_BUFFER_MAX 4096  /* systemd's: PIPE_BUF; longer messages are dropped */
#define NOTIFY_FD_MAX 768       /* systemd's limit of fds per message */
#define STOP_TIMEOUT_MS 10000   /* then SIGKILL, as TimeoutStopSec= */

typedef struct StoredFd {
        int fd;
        char name[FDNAME_MAX + 1];
} StoredFd;

typedef struct Shim {
        char **argv;                    /* the service's command line */
        const char *socket_path;
        const char *pidfile;            /* NULL: none */
        int listen_fd;
        int notify_fd;                  /* SO_PASSCRED: every message carries its sender's pid */
        int signal_fd;                  /* SIGCHLD, SIGTERM, SIGINT, SIGUSR1 */
        StoredFd *store;                /* n_store entries in the order stored, store_max allocated */
        unsigned n_store, store_max;
        unsigned restart_ms;
        pid_t child;                    /* the main process; 0 while none runs */
        char *status;                   /* its last STATUS=, logged when it changes */
        uint64_t deadline;              /* CLOCK_MONOTONIC ms: restart (no child) or SIGKILL (stopping) */
        bool stopping;
} Shim;

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...) {
        char buf[1024];
        va_list ap;
        int n;

        n = snprintf(buf, sizeof(buf), "svc-manager: ");
        va_start(ap, fmt);
        n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
        va_end(ap);
        n = MIN(n, (int) sizeof(buf) - 2);
        buf[n++] = '\n';
        (void) !write(STDERR_FILENO, buf, n);
}

static uint64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* systemd's fdname_is_valid(): printable ASCII without ':', the separator
 * of LISTEN_FDNAMES. */
static bool fdname_is_valid(const char *s) {
        size_t n = 0;

        for (; s[n]; n++)
                if (s[n] < ' ' || s[n] > '~' || s[n] == ':')
                        return false;
        return n <= FDNAME_MAX;
}

/* systemd's same_fd(): the same open file by kcmp() where the kernel has
 * it (so a dup of a stored fd, or one passed back and sent again, is not
 * stored twice), else the same inode opened with the same flags. */
static bool same_file(int a, int b) {
        pid_t self = getpid();
        struct stat sa, sb;
        long r = syscall(SYS_kcmp, self, self, KCMP_FILE, a, b);

        if (r >= 0)
                return r == 0;
        if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
                return false;
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino && fcntl(a, F_GETFL) == fcntl(b, F_GETFL);
}

/* Takes fd in any case. */
static void store_add(Shim *s, int fd, const char *name) {
        for (unsigned i = 0; i < s->n_store; i++)
                if (same_file(s->store[i].fd, fd)) {
                        log_line("fd %s is already stored as %s, ignored", name, s->store[i].name);
                        safe_close(fd);
                        return;
                }
        if (s->n_store >= s->store_max) {
                log_line("fd store full (--fdstore-max=%u): fd %s closed", s->store_max, name);
                safe_close(fd);
                return;
        }
        s->store[s->n_store].fd = fd;
        strcpy(s->store[s->n_store++].name, name);      /* fdname_is_valid(): it fits */
        log_line("stored fd %s (now %u)", name, s->n_store);
}

static void store_remove(Shim *s, const char *name) {
        unsigned kept = 0, n = s->n_store;

        for (unsigned i = 0; i < n; i++)
                if (strcmp(s->store[i].name, name) == 0)
                        safe_close(s->store[i].fd);
                else
                        s->store[kept++] = s->store[i];
        s->n_store = kept;
        if (kept == n)
                log_line("FDSTOREREMOVE of %s: no such fd stored", name);
        else
                log_line("removed %s (%u fds, now %u)", name, n - kept, kept);
}

static void store_list(const Shim *s) {
        struct stat st;

        for (unsigned i = 0; i < s->n_store; i++)
                log_line("fd store: %s inode %llu", s->store[i].name,
                         fstat(s->store[i].fd, &st) < 0 ? 0ull : (unsigned long long) st.st_ino);
        log_line("fd store holds %u fds", s->n_store);
}

/* One message of the main process; fds[] not taken are closed by the caller. */
static void handle_message(Shim *s, char *msg, int *fds, size_t n_fds) {
        const char *name = NULL;
        bool store = false, remove = false;

        for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n")) {
                if (strcmp(line, "FDSTORE=1") == 0)
                        store = true;
                else if (strcmp(line, "FDSTOREREMOVE=1") == 0)
                        remove = true;
                else if (strncmp(line, "FDNAME=", 7) == 0 && !name)
                        name = line + 7;
                else if (strcmp(line, "READY=1") == 0)
                        log_line("%d ready", (int) s->child);
                else if (strcmp(line, "STOPPING=1") == 0)
                        log_line("%d stopping", (int) s->child);
                else if (strncmp(line, "STATUS=", 7) == 0 && (!s->status || strcmp(s->status, line + 7) != 0)) {
                        free(s->status);
                        s->status = strdup(line + 7);
                        log_line("%d status: %s", (int) s->child, line + 7);
                }
        }
        if (name && !fdname_is_valid(name)) {
                log_line("invalid FDNAME='%s' ignored", name);
                name = NULL;
        }
        if (remove) {
                if (name)
                        store_remove(s, name);
                else
                        log_line("FDSTOREREMOVE=1 without a valid FDNAME= ignored");
        } else if (store)
                for (size_t i = 0; i < n_fds; i++)
                        store_add(s, TAKE_FD(fds[i]), name ?: "stored");
}

/* Reads every queued notification. Messages of a child that has just died
 * were queued before it died: read them before the child is forgotten. */
static void read_notifications(Shim *s) {
        for (;;) {
                char buf[NOTIFY_BUFFER_MAX + 1];
                _Alignas(struct cmsghdr) uint8_t control[CMSG_SPACE(sizeof(struct ucred)) +
                                                         CMSG_SPACE(sizeof(int) * NOTIFY_FD_MAX)];
                struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                                     .msg_controllen = sizeof(control) };
                struct ucred *cred = NULL;
                int *fds = NULL;
                size_t n_fds = 0;
                ssize_t n;

                n = recvmsg(s->notify_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
                if (n < 0) {
                        if (errno != EAGAIN && errno != EINTR)
                                log_line("reading notifications: %m");
                        return;
                }
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
                                cred = (struct ucred *) CMSG_DATA(c);
                        else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                                fds = (int *) CMSG_DATA(c);
                                n_fds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                        }
                if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
                        log_line("notification too long, ignored");
                else if (!cred || s->child == 0 || cred->pid != s->child)
                        log_line("notification from pid %d ignored: only the main process %d may notify",
                                 cred ? (int) cred->pid : -1, (int) s->child);
                else {
                        buf[n] = 0;
                        handle_message(s, buf, fds, n_fds);
                }
                for (size_t i = 0; i < n_fds; i++)
                        safe_close(fds[i]);
        }
}

/* In the child: the socket and the store at 3, 4, ... without O_CLOEXEC,
 * the environment of sd_listen_fds_with_names(), then the command. Errors
 * go to the parent through errpipe as an errno. */
static _Noreturn void child_exec(Shim *s, int errpipe) {
        unsigned n = 1 + s->n_store;
        size_t len = strlen(SOCKET_FDNAME) + 1;
        char num[32], *names;
        int *tmp = calloc(n, sizeof(int));
        sigset_t none;
        int e = ENOMEM, fd;

        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);
        for (unsigned i = 0; i < s->n_store; i++)
                len += strlen(s->store[i].name) + 1;
        names = malloc(len);
        if (!tmp || !names)
                goto fail;
        /* Out of 3 .. 3+n first: a stored fd or errpipe may sit there. */
        if ((fd = fcntl(errpipe, F_DUPFD_CLOEXEC, 3 + n)) < 0)
                goto fail_errno;
        errpipe = fd;
        for (unsigned i = 0; i < n; i++)
                if ((tmp[i] = fcntl(i == 0 ? s->listen_fd : s->store[i - 1].fd, F_DUPFD_CLOEXEC, 3 + n)) < 0)
                        goto fail_errno;
        strcpy(names, SOCKET_FDNAME);
        for (unsigned i = 0; i < n; i++) {
                if (dup2(tmp[i], 3 + (int) i) < 0)     /* the copy has no O_CLOEXEC */
                        goto fail_errno;
                if (i > 0)
                        strcat(strcat(names, ":"), s->store[i - 1].name);
        }
        /* Nothing else of ours or of whoever started us, as under systemd. */
        (void) close_range(3 + n, ~0u, CLOSE_RANGE_CLOEXEC);
        snprintf(num, sizeof(num), "%d", (int) getpid());
        if (setenv("LISTEN_PID", num, 1) < 0 || setenv("LISTEN_FDNAMES", names, 1) < 0)
                goto fail_errno;
        snprintf(num, sizeof(num), "%u", n);
        if (setenv("LISTEN_FDS", num, 1) < 0)
                goto fail_errno;
        (void) unsetenv("WATCHDOG_PID");
        (void) unsetenv("WATCHDOG_USEC");
        execvp(s->argv[0], s->argv);
fail_errno:
        e = errno;
fail:
        (void) !write(errpipe, &e, sizeof(e));
        _exit(127);
}

static void write_pidfile(const Shim *s) {
        char tmp[PATH_MAX];
        FILE *f;

        if (!s->pidfile)
                return;
        /* A reader sees the old pid or the new one, never a partial one. */
        snprintf(tmp, sizeof(tmp), "%s.tmp", s->pidfile);
        f = fopen(tmp, "we");
        if (!f || fprintf(f, "%d\n", (int) s->child) < 0 || fclose(f) != 0 || rename(tmp, s->pidfile) < 0)
                log_line("cannot write '%s': %m", s->pidfile);
}

static int start_child(Shim *s) {
        char names[1024] = "";
        int pipefd[2], e = 0;
        ssize_t n;
        pid_t pid;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return -errno;
        pid = fork();
        if (pid < 0) {
                e = errno;
                safe_close(pipefd[0]);
                safe_close(pipefd[1]);
                return -e;
        }
        if (pid == 0)
                child_exec(s, pipefd[1]);
        safe_close(pipefd[1]);
        /* EOF: the exec closed the pipe. */
        do
                n = read(pipefd[0], &e, sizeof(e));
        while (n < 0 && errno == EINTR);
        safe_close(pipefd[0]);
        if (n > 0) {
                (void) waitpid(pid, NULL, 0);
                errno = e;
                log_line("cannot run '%s': %m", s->argv[0]);
                return -e;
        }
        s->child = pid;
        free(s->status);
        s->status = NULL;
        write_pidfile(s);
        for (unsigned i = 0; i < s->n_store && strlen(names) + FDNAME_MAX + 2 < sizeof(names); i++)
                strcat(strcat(names, " "), s->store[i].name);
        log_line("started %d with %u stored fds%s%s", (int) pid, s->n_store, s->n_store ? ":" : "", names);
        return 0;
}

/* SIGCHLD: reap; the main process is restarted unless we are stopping. */
static void reap(Shim *s) {
        int status;
        pid_t pid;

        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                if (pid != s->child)
                        continue;
                read_notifications(s);
                s->child = 0;
                if (WIFSIGNALED(status))
                        log_line("%d killed by signal %d%s", (int) pid, WTERMSIG(status), s->stopping ? "" : ", restarting");
                else
                        log_line("%d exited with status %d%s", (int) pid, WEXITSTATUS(status),
                                 s->stopping ? "" : ", restarting");
                s->deadline = now_ms() + s->restart_ms;
        }
}

static void stop(Shim *s) {
        if (s->stopping)
                return;
        s->stopping = true;
        if (s->child > 0) {
                log_line("stopping %d", (int) s->child);
                (void) kill(s->child, SIGTERM);
                s->deadline = now_ms() + STOP_TIMEOUT_MS;
        }
}

/* Milliseconds poll() may sleep: until the restart or the SIGKILL is due. */
static int poll_timeout(const Shim *s) {
        uint64_t now = now_ms();

        if ((s->child > 0 && !s->stopping) || s->deadline == UINT64_MAX)
                return -1;
        return s->deadline > now ? (int) MIN(s->deadline - now, (uint64_t) INT32_MAX) : 0;
}

/* Returns 0 when stopped, < 0 on error; runs otherwise. */
static int run(Shim *s) {
        for (;;) {
                struct pollfd p[2] = { { .fd = s->notify_fd, .events = POLLIN }, { .fd = s->signal_fd, .events = POLLIN } };
                struct signalfd_siginfo si;
                int r;

                if (poll(p, 2, poll_timeout(s)) < 0 && errno != EINTR)
                        return -errno;
                read_notifications(s);
                while (read(s->signal_fd, &si, sizeof(si)) == sizeof(si))
                        if (si.ssi_signo == SIGCHLD)
                                reap(s);
                        else if (si.ssi_signo == SIGUSR1)
                                store_list(s);
                        else
                                stop(s);
                if (s->stopping && s->child == 0)
                        return 0;
                if (poll_timeout(s) != 0)
                        continue;
                if (s->stopping) {
                        log_line("%d did not stop in %d s, killing it", (int) s->child, STOP_TIMEOUT_MS / 1000);
                        (void) kill(s->child, SIGKILL);
                        s->deadline = UINT64_MAX;
                } else if ((r = start_child(s)) < 0)
                        return r;
        }
}

/* Logs what failed and returns -errno. */
static int log_errno(const char *what, const char *arg) {
        int e = errno;

        log_line("%s '%s': %s", what, arg, strerror(e));
        return -e;
}

static int setup_listen(Shim *s) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (strlen(s->socket_path) >= sizeof(sa.sun_path)) {
                errno = ENAMETOOLONG;
                return log_errno("cannot listen on", s->socket_path);
        }
        strcpy(sa.sun_path, s->socket_path);
        s->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        (void) unlink(s->socket_path);
        if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
            chmod(s->socket_path, 0666) < 0 || listen(s->listen_fd, SOMAXCONN) < 0)
                return log_errno("cannot listen on", s->socket_path);
        return 0;
}

/* An autobound abstract address: nothing to clean up after a crash. */
static int setup_notify(Shim *s) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        socklen_t len = sizeof(sa);
        char env[sizeof(sa.sun_path) + 1] = "@";
        int one = 1;

        s->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (s->notify_fd < 0 || setsockopt(s->notify_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0 ||
            bind(s->notify_fd, (struct sockaddr *) &sa, sizeof(sa_family_t)) < 0 ||
            getsockname(s->notify_fd, (struct sockaddr *) &sa, &len) < 0)
                return log_errno("cannot set up", "NOTIFY_SOCKET");
        memcpy(env + 1, sa.sun_path + 1, len - offsetof(struct sockaddr_un, sun_path) - 1);
        return setenv("NOTIFY_SOCKET", env, 1) < 0 ? -errno : 0;
}

static int setup(Shim *s) {
        sigset_t ss;
        int r;

        r = setup_listen(s);
        if (r >= 0)
                r = setup_notify(s);
        if (r < 0)
                return r;
        sigemptyset(&ss);
        sigaddset(&ss, SIGCHLD);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGUSR1);
        (void) sigprocmask(SIG_BLOCK, &ss, NULL);
        s->signal_fd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
        if (s->signal_fd < 0)
                return log_errno("cannot set up", "signalfd");
        s->store = calloc(s->store_max, sizeof(StoredFd));
        return s->store || s->store_max == 0 ? 0 : -ENOMEM;
}

static void help(void) {
        printf("Usage: svc-manager --socket=PATH [--pidfile=FILE] [--fdstore-max=N] [--restart-sec=MS] -- COMMAND [ARGS...]\n\n"
               "Run COMMAND as systemd runs dedupd.service with dedupd.socket: socket activation on PATH,\n"
               "NOTIFY_SOCKET with an fd store passed back on every start, restart on exit.\n"
               "SIGUSR1 lists the stored fds; SIGTERM or SIGINT stops COMMAND and exits.\n\n"
               "  --socket=PATH       listening SOCK_SEQPACKET socket passed as fd 3 (required)\n"
               "  --pidfile=FILE      the running COMMAND's pid, rewritten on each start\n"
               "  --fdstore-max=N     FileDescriptorStoreMax= (default 64)\n"
               "  --restart-sec=MS    RestartSec= in milliseconds (default 100)\n");
}

static int parse_unsigned(const char *arg, const char *opt, unsigned max, unsigned *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(arg, &end, 10);
        if (errno || end == arg || *end || arg[0] == '-' || v > max) {
                fprintf(stderr, "svc-manager: %s: '%s' is not a number from 0 to %u\n", opt, arg, max);
                return -EINVAL;
        }
        *ret = (unsigned) v;
        return 0;
}

static int parse_argv(Shim *s, int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "socket", required_argument, NULL, 's' },
                { "pidfile", required_argument, NULL, 'p' },
                { "fdstore-max", required_argument, NULL, 'm' },
                { "restart-sec", required_argument, NULL, 'r' },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case 's':
                        s->socket_path = optarg;
                        break;
                case 'p':
                        s->pidfile = optarg;
                        break;
                case 'm':
                        if (parse_unsigned(optarg, "--fdstore-max", 4096, &s->store_max) < 0)
                                return -EINVAL;
                        break;
                case 'r':
                        if (parse_unsigned(optarg, "--restart-sec", 3600 * 1000, &s->restart_ms) < 0)
                                return -EINVAL;
                        break;
                default:
                        return -EINVAL;
                }
        if (!s->socket_path || optind >= argc) {
                fprintf(stderr, "svc-manager: %s required; see --help\n", !s->socket_path ? "--socket=PATH" : "a COMMAND");
                return -EINVAL;
        }
        s->argv = argv + optind;
        return 1;
}

int main(int argc, char **argv) {
        Shim s = { .listen_fd = -EBADF, .notify_fd = -EBADF, .signal_fd = -EBADF, .store_max = 64, .restart_ms = 100 };
        int r;

        r = parse_argv(&s, argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        r = setup(&s);
        if (r >= 0)
                r = start_child(&s);
        if (r >= 0)
                r = run(&s);
        if (r < 0 && s.child > 0) {
                /* Do not leave the service running without its manager. */
                (void) kill(s.child, SIGKILL);
                (void) waitpid(s.child, NULL, 0);
        }
        for (unsigned i = 0; i < s.n_store; i++)
                safe_close(s.store[i].fd);
        free(s.store);
        free(s.status);
        if (s.listen_fd >= 0)
                (void) unlink(s.socket_path);
        if (s.pidfile)
                (void) unlink(s.pidfile);
        if (r < 0) {
                errno = -r;
                log_line("failed: %m");
                return 1;
        }
        log_line("stopped");
        return 0;
}
