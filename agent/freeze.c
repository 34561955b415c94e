/*
 * fs.freeze / fs.thaw (docs/processes.md, "Warm start"): consistent disk layers without a memory
 * snapshot. fs.freeze syncs, then FIFREEZEs each mount point in order; fs.thaw FITHAWs.
 *
 * The thaw-after timer is a forked watchdog, not a timer of the agent's loop: the agent serves its
 * channels with blocking reads in three different loops (stdio, device, vsock) that would all need
 * it, and a timer in the agent dies with the agent, while the point of the timer is that a guest
 * must not stay frozen when the host (or the agent) went away mid-snapshot. The watchdog holds a
 * descriptor of every frozen mount point and the read end of a pipe whose write end only the agent
 * holds: a byte on the pipe cancels it (fs.thaw, or a new freeze that starts a new watchdog); EOF
 * means the agent died, and it still thaws at the deadline. It never writes to a filesystem.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "agent.h"
#include "common.h"

#define MAX_FREEZE_PATHS 8
#define MIN_THAW_AFTER_MS 100
#define MAX_THAW_AFTER_MS 60000

/* What this agent froze and has not thawed yet (paths as the host named them). */
static struct frozen {
    char path[PATH_MAX];
    int fd;
} frozen[MAX_FREEZE_PATHS];
static int nfrozen;

static struct {
    pid_t pid;     /* 0: none */
    int cancel_fd; /* the write end of its pipe */
    long long due; /* CLOCK_MONOTONIC ms */
} watchdog = {0, -1, 0};

static const char *paths_param(const struct jval *p, char ***paths, size_t *n)
{
    const struct jval *v = json_get(p, "paths");
    if (!v) return "invalid paths: required";
    if (v->type != J_ARR) return "invalid paths: must be an array of strings";
    if (!v->len) return "invalid paths: must not be empty";
    if (v->len > MAX_FREEZE_PATHS) return fail("invalid paths: at most %d", MAX_FREEZE_PATHS);
    if (json_strings(v, "paths", paths, 1)) return "invalid paths: must hold strings without NUL bytes";
    *n = v->len;
    for (size_t i = 0; i < *n; i++) {
        const char *err = NULL;
        if (valid_path((*paths)[i])) err = fail("invalid paths: %.200s is not an absolute path", (*paths)[i]);
        for (size_t k = 0; k < i && !err; k++)
            if (!strcmp((*paths)[i], (*paths)[k])) err = fail("invalid paths: %.200s repeats", (*paths)[i]);
        if (err) {
            free(*paths); /* only after fail() read the entry through the vector */
            return err;
        }
    }
    return NULL;
}

static int find_frozen(const char *path)
{
    for (int i = 0; i < nfrozen; i++)
        if (!strcmp(frozen[i].path, path)) return i;
    return -1;
}

/* Opens a mount point (never through a symlink); -1 with errno, ENOTDIR/EINVAL for a directory
 * that is not the root of a mount (its parent is on the same device and is not itself). */
static int open_mount_point(const char *path)
{
    struct stat st, up;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0 || fstatat(fd, "..", &up, 0) != 0) return close_keep_errno(fd), -1;
    if (st.st_dev == up.st_dev && st.st_ino != up.st_ino) return close(fd), errno = EINVAL, -1;
    return fd;
}

static void watchdog_cancel(void)
{
    if (!watchdog.pid) return;
    /* EPIPE: it already thawed at its deadline and exited */
    if (write_all(watchdog.cancel_fd, "x", 1) != 0 && errno != EPIPE)
        say("cannot cancel the thaw watchdog: %s", strerror(errno));
    close(watchdog.cancel_fd);
    watchdog.pid = 0, watchdog.cancel_fd = -1;
}

static int is_kept(int fd, int rfd)
{
    if (fd == rfd) return 1;
    for (int i = 0; i < nfrozen; i++)
        if (frozen[i].fd == fd) return 1;
    return 0;
}

static void __attribute__((noreturn)) watchdog_main(int rfd, long long due)
{
    struct rlimit rl;
    int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
    /* Only the pipe and the mount points: a control or data channel held here would outlive the agent. */
    for (int fd = 3; fd < max; fd++)
        if (!is_kept(fd, rfd)) close(fd);
    prctl(PR_SET_NAME, "banger-thaw", 0, 0, 0);
    signal(SIGTERM, SIG_IGN); /* an agent (or its service) stopped politely must not cancel the thaw */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    int agent_gone = 0;
    for (;;) {
        long long left = due - mono_ms();
        if (left <= 0) break;
        if (agent_gone) {
            sleep_ms((long)left);
            continue;
        }
        struct pollfd pfd = {rfd, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) continue; /* the deadline (or a poll failure: the loop's sleep still bounds it) */
        char b;
        ssize_t r = read(rfd, &b, 1);
        if (r == 1) _exit(0); /* cancelled: fs.thaw came, or a newer watchdog took over */
        if (r == 0) agent_gone = 1;
    }
    for (int i = 0; i < nfrozen; i++) {
        if (ioctl(frozen[i].fd, FITHAW) == 0)
            say("thawed %s: no fs.thaw came within the thaw-after time", frozen[i].path);
        else if (errno != EINVAL)
            say("cannot thaw %s: %s", frozen[i].path, strerror(errno));
    }
    _exit(0);
}

/* Replaces the watchdog with one that thaws everything in `frozen` at due. -1 with errno. */
static int watchdog_start(long long due)
{
    int p[2];
    watchdog_cancel();
    if (!nfrozen) return 0;
    if (pipe2(p, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]), close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[1]);
        watchdog_main(p[0], due);
    }
    close(p[0]);
    watchdog.pid = pid, watchdog.cancel_fd = p[1], watchdog.due = due;
    return 0;
}

static const char *freeze_errno(const char *method, const char *path)
{
    int e = errno;
    return fail("%s %.300s failed: %s", method, path, strerror(e));
}

/* The answer of both methods: {"<key>":[the paths, in order]}. */
static void out_path_list(struct out *o, const char *key, char **paths, size_t n)
{
    out_raw(o, "{\"", 2);
    out_raw(o, key, strlen(key));
    out_raw(o, "\":[", 3);
    for (size_t i = 0; i < n; i++) {
        if (i) out_raw(o, ",", 1);
        out_cstr(o, paths[i]);
    }
    out_raw(o, "]}", 2);
}

const char *m_fs_freeze(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"paths", "thaw_after_ms", NULL};
    char **paths;
    size_t n;
    int fds[MAX_FREEZE_PATHS], froze_now[MAX_FREEZE_PATHS];
    const char *err;
    if (!p || p->type != J_OBJ) return "invalid params: must be an object with paths and thaw_after_ms";
    if ((err = check_params(p, allowed))) return err;
    const struct jval *t = json_get(p, "thaw_after_ms");
    if (!t || t->type != J_NUM || !t->is_uint || t->uint < MIN_THAW_AFTER_MS || t->uint > MAX_THAW_AFTER_MS)
        return fail("invalid thaw_after_ms: must be an integer from %d to %d", MIN_THAW_AFTER_MS, MAX_THAW_AFTER_MS);
    if ((err = paths_param(p, &paths, &n))) return err;
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) fresh += find_frozen(paths[i]) < 0;
    if (nfrozen + (int)fresh > MAX_FREEZE_PATHS) {
        free(paths);
        return fail("too many frozen filesystems (max %d): thaw some first", MAX_FREEZE_PATHS);
    }
    for (size_t i = 0; i < n; i++) {
        fds[i] = open_mount_point(paths[i]);
        if (fds[i] < 0) {
            err = errno == EINVAL ? fail("invalid paths: %.300s is not a mount point", paths[i])
                  : errno == ENOTDIR || errno == ELOOP
                      ? fail("invalid paths: %.300s is a symlink or not a directory", paths[i])
                      : freeze_errno("fs.freeze", paths[i]);
            for (size_t k = 0; k < i; k++) close(fds[k]);
            free(paths);
            return err;
        }
    }
    sync();
    size_t done = 0;
    for (; done < n; done++) {
        froze_now[done] = ioctl(fds[done], FIFREEZE) == 0;
        if (!froze_now[done] && errno != EBUSY) break; /* EBUSY: frozen already, which is what was asked */
    }
    if (done < n) {
        err = freeze_errno("fs.freeze", paths[done]);
        for (size_t k = 0; k < done; k++)
            if (froze_now[k] && ioctl(fds[k], FITHAW) != 0) say("cannot thaw %s: %s", paths[k], strerror(errno));
        for (size_t k = 0; k < n; k++) close(fds[k]);
        free(paths);
        return err;
    }
    for (size_t i = 0; i < n; i++) {
        if (find_frozen(paths[i]) >= 0) {
            close(fds[i]);
            continue;
        }
        snprintf(frozen[nfrozen].path, sizeof frozen[nfrozen].path, "%s", paths[i]);
        frozen[nfrozen++].fd = fds[i];
    }
    if (watchdog_start(mono_ms() + (long long)t->uint) != 0) {
        /* frozen without a safety net is worse than failing the freeze */
        err = fail("fs.freeze failed: cannot start the thaw watchdog: %s", strerror(errno));
        for (int i = 0; i < nfrozen; i++) ioctl(frozen[i].fd, FITHAW), close(frozen[i].fd);
        nfrozen = 0;
        free(paths);
        return err;
    }
    out_path_list(o, "frozen", paths, n);
    free(paths);
    return NULL;
}

const char *m_fs_thaw(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"paths", NULL};
    char **paths;
    size_t n;
    const char *err = NULL;
    if (!p || p->type != J_OBJ) return "invalid params: must be an object with paths";
    if ((err = check_params(p, allowed)) || (err = paths_param(p, &paths, &n))) return err;
    for (size_t i = 0; i < n; i++) {
        int k = find_frozen(paths[i]);
        int fd = k >= 0 ? frozen[k].fd : open(paths[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || (ioctl(fd, FITHAW) != 0 && errno != EINVAL)) { /* EINVAL: not frozen */
            if (!err) err = freeze_errno("fs.thaw", paths[i]);
        } else if (k >= 0) {
            close(frozen[k].fd);
            frozen[k] = frozen[--nfrozen];
        }
        if (k < 0 && fd >= 0) close(fd);
    }
    /* What is still frozen keeps its deadline; nothing left: the watchdog is cancelled. */
    if (watchdog_start(watchdog.due) != 0) say("cannot restart the thaw watchdog: %s", strerror(errno));
    if (err) {
        static char copy[1024];
        snprintf(copy, sizeof copy, "%s", err);
        free(paths);
        return copy;
    }
    out_path_list(o, "thawed", paths, n);
    free(paths);
    return NULL;
}
