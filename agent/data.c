/*
 * The agent's data channels (docs/processes.md, "Data channels"): bulk bytes — process output,
 * stdin attach, file contents, tar streams — travel here in frames, never on the control channel,
 * so `health` is never queued behind them. Each port is served by its own forked worker with
 * blocking I/O; a host that stops reading stalls only that worker.
 *
 * Ports: the virtio-serial ports org.banger.data.0..3 (QEMU), vsock port 1023 (a worker per host
 * connection, at most 4), or, for tests, Unix sockets the agent connects to (--data PATH).
 *
 * Frames: magic 0xBA 0x6E, type, stream, u32 LE length (at most MAX_FRAME), payload. A session
 * starts with the host's S {nonce, op, ...}; the worker answers A {nonce} first and R last. An S in
 * the middle of a session abandons it (its temp files and children are cleaned up); bytes without
 * the magic are skipped up to the next one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/vm_sockets.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "agent.h"
#include "common.h"

#define MAX_FRAME (256 * 1024)
#define HEADER 8
#define DATA_PORTS 4
#define DATA_VSOCK_PORT 1023 /* privileged: an unprivileged guest user cannot bind it while the agent restarts */
#define MAX_VSOCK_SESSIONS 4
#define MAX_TAR_STDERR 4096
#define TAR_FAILED ",\"error\":\"tar failed\",\"code\":\"tar_failed\""
/* no "error": the host reports the command's stderr */
#define COMMAND_FAILED ",\"code\":\"command_failed\""
#define MAX_PIPE_ARGS 64
#define TOOL_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct frame {
    int type, stream;
    size_t len;
    unsigned char *payload; /* valid until the next read */
};

struct port {
    int fd;
    int is_chr; /* a virtio char device: a read of 0 means no host, not the end */
    int gone;   /* the host went away (the current session is abandoned) */
    int have_pending;
    struct frame pending; /* an S that arrived mid-session: the next session */
    size_t len;
    unsigned char in[2 * (HEADER + MAX_FRAME)];
};

static unsigned char payload_buf[MAX_FRAME + 1], pending_buf[MAX_FRAME + 1];
static unsigned char chunk[MAX_FRAME];
static struct out rout; /* R and A payloads */

/* ---- frames ---------------------------------------------------------------------------------- */

static int valid_host_type(int t)
{
    return t == 'S' || t == 'D' || t == 'E' || t == 'C';
}

/* One whole frame from the buffer, skipping garbage; 0 when more bytes are needed. */
static int take_frame(struct port *p, struct frame *f)
{
    for (;;) {
        size_t skip = 0;
        while (skip < p->len && !(p->in[skip] == 0xBA && (skip + 1 == p->len || p->in[skip + 1] == 0x6E))) skip++;
        if (skip) memmove(p->in, p->in + skip, p->len - skip), p->len -= skip;
        if (p->len < HEADER) return 0;
        uint32_t n = (uint32_t)p->in[4] | (uint32_t)p->in[5] << 8 | (uint32_t)p->in[6] << 16 | (uint32_t)p->in[7] << 24;
        if (!valid_host_type(p->in[2]) || p->in[3] > 2 || n > MAX_FRAME) { /* not a frame: resynchronise */
            memmove(p->in, p->in + 1, p->len - 1), p->len--;
            continue;
        }
        if (p->len < HEADER + n) return 0;
        f->type = p->in[2], f->stream = p->in[3], f->len = n;
        memcpy(payload_buf, p->in + HEADER, n);
        payload_buf[n] = 0;
        f->payload = payload_buf;
        memmove(p->in, p->in + HEADER + n, p->len - HEADER - n);
        p->len -= HEADER + n;
        return 1;
    }
}

/* The next frame from the host: 1, 0 when none came within timeout_ms (-1: wait), -1 when the host went away. */
static int next_frame(struct port *p, struct frame *f, int timeout_ms)
{
    for (;;) {
        if (take_frame(p, f)) return 1;
        struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
        int rc = poll(&pfd, 1, timeout_ms);
        if (rc < 0 && errno == EINTR) continue;
        if (rc == 0) return 0;
        ssize_t r = read(p->fd, p->in + p->len, sizeof p->in - p->len);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) {
            p->gone = 1, p->len = 0;
            return -1;
        }
        p->len += (size_t)r;
    }
}

static int send_frame(struct port *p, int type, int stream, const void *data, size_t n)
{
    unsigned char h[HEADER] = {0xBA,
                               0x6E,
                               (unsigned char)type,
                               (unsigned char)stream,
                               (unsigned char)(n & 0xff),
                               (unsigned char)(n >> 8 & 0xff),
                               (unsigned char)(n >> 16 & 0xff),
                               (unsigned char)(n >> 24)};
    if (p->gone) return -1;
    if (write_all(p->fd, (const char *)h, HEADER) || (n && write_all(p->fd, data, n))) {
        p->gone = 1;
        return -1;
    }
    return 0;
}

static void send_result(struct port *p)
{
    send_frame(p, 'R', 0, rout.buf, rout.len);
}

static void result_error(struct port *p, const char *code, const char *msg)
{
    rout.len = 0, rout.full = 0;
    out_raw(&rout, "{\"ok\":false,\"error\":", 20);
    out_cstr(&rout, msg);
    out_raw(&rout, ",\"code\":", 8);
    out_cstr(&rout, code);
    out_raw(&rout, "}", 1);
    send_result(p);
}

static const char *errno_code(int e)
{
    return e == ENOENT                 ? "not_found"
           : e == ELOOP                ? "symlink"
           : e == EACCES || e == EPERM ? "permission_denied"
                                       : "io_error";
}

enum host_ev { EV_NONE, EV_DATA, EV_END, EV_CANCEL, EV_ABANDON };

/* What the host sent during a session. An S is kept for the next session (this one is abandoned). */
static enum host_ev host_event(struct port *p, struct frame *f, int timeout_ms)
{
    for (;;) {
        int rc = next_frame(p, f, timeout_ms);
        if (rc < 0) return EV_ABANDON;
        if (rc == 0) return EV_NONE;
        switch (f->type) {
        case 'S':
            memcpy(pending_buf, f->payload, f->len + 1);
            p->pending = *f;
            p->pending.payload = pending_buf;
            p->have_pending = 1;
            return EV_ABANDON;
        case 'D':
            return EV_DATA;
        case 'E':
            return EV_END;
        case 'C':
            return EV_CANCEL;
        }
    }
}

/* ---- ops ------------------------------------------------------------------------------------- */

static const char *str_field(const struct jval *req, const char *key)
{
    return json_cstr(json_get(req, key));
}

static int bool_field(const struct jval *req, const char *key)
{
    const struct jval *v = json_get(req, key);
    return v && v->type == J_BOOL && v->boolean;
}

static unsigned long long uint_field(const struct jval *req, const char *key)
{
    const struct jval *v = json_get(req, key);
    return v && v->type == J_NUM && v->is_uint ? v->uint : 0;
}

static void result_proc(struct port *p, const char *id)
{
    rout.len = 0, rout.full = 0;
    out_raw(&rout, "{\"ok\":true,\"proc\":", 18);
    proc_info(&rout, id);
    out_raw(&rout, "}", 1);
    send_result(p);
}

/* Handles a host frame of an output session; 1 when the session is over (R sent or abandoned). */
static int output_host_frame(struct port *p, const char *id, int attach, enum host_ev ev, struct frame *f)
{
    unsigned long long total;
    long long size;
    char path[PATH_MAX];
    struct stat st;
    switch (ev) {
    case EV_DATA:
        if (!attach || f->stream != 0) return 0;
        snprintf(path, sizeof path, "%s/%s/stdin", procs_dir, id);
        size = stat(path, &st) == 0 ? (long long)st.st_size : 0;
        proc_stdin_append(id, (unsigned long long)size, (const char *)f->payload, f->len, &total);
        return 0;
    case EV_END:
        if (attach) proc_stdin_eof(id, &total);
        return 0;
    case EV_CANCEL:
        result_proc(p, id);
        return 1;
    case EV_ABANDON:
        return 1;
    default:
        return 0;
    }
}

static void op_output(struct port *p, const struct jval *req)
{
    const char *id = str_field(req, "id");
    char path[PATH_MAX];
    struct frame f;
    if (!id || valid_proc_id(id)) return result_error(p, "invalid", "id must match [a-z0-9][a-z0-9-]{0,39}");
    snprintf(path, sizeof path, "%s/%s", procs_dir, id);
    int follow = bool_field(req, "follow"), attach = bool_field(req, "stdin");
    unsigned long long pos[3] = {0, uint_field(req, "stdout_from"), uint_field(req, "stderr_from")};
    int fds[3] = {-1, -1, -1};
    int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd < 0) return result_error(p, "not_found", "no such process");
    fds[1] = openat(dirfd, "stdout", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    fds[2] = openat(dirfd, "stderr", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dirfd);
    int ino = follow ? inotify_init1(IN_CLOEXEC | IN_NONBLOCK) : -1;
    if (ino >= 0) inotify_add_watch(ino, path, IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_ATTRIB);
    for (;;) {
        int ended = !proc_running(id); /* checked before the last read: nothing written after it is missed */
        for (int s = 1; s <= 2; s++) {
            while (fds[s] >= 0) {
                ssize_t n = pread(fds[s], chunk, sizeof chunk, (off_t)pos[s]);
                if (n <= 0) break;
                if (send_frame(p, 'D', s, chunk, (size_t)n)) goto done;
                pos[s] += (unsigned long long)n;
                enum host_ev ev; /* between chunks: a cancel or a new session must not wait for the end */
                while ((ev = host_event(p, &f, 0)) != EV_NONE)
                    if (output_host_frame(p, id, attach, ev, &f)) goto done;
            }
        }
        if (!follow || ended) {
            result_proc(p, id);
            goto done;
        }
        struct pollfd pfd[2] = {{.fd = p->fd, .events = POLLIN}, {.fd = ino, .events = POLLIN}};
        /* inotify wakes us on every write; the timeout only notices a supervisor killed without a status */
        int rc = poll(pfd, ino >= 0 ? 2 : 1, ino >= 0 ? 1000 : 100);
        if (rc > 0 && pfd[1].revents) {
            char evbuf[4096];
            while (read(ino, evbuf, sizeof evbuf) > 0) {
            }
        }
        if (rc > 0 && pfd[0].revents) {
            enum host_ev ev;
            while ((ev = host_event(p, &f, 0)) != EV_NONE)
                if (output_host_frame(p, id, attach, ev, &f)) goto done;
        }
    }
done:
    for (int s = 1; s <= 2; s++)
        if (fds[s] >= 0) close(fds[s]);
    if (ino >= 0) close(ino);
}

static void op_read(struct port *p, const struct jval *req)
{
    const char *path = str_field(req, "path");
    struct stat st;
    struct frame f;
    unsigned long long size = 0;
    if (valid_path(path)) return result_error(p, "invalid", "path must be absolute");
    /* O_NOFOLLOW: a symlink in the last component is refused, never read through; O_NONBLOCK: a FIFO must not hang us
     */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return result_error(p, errno_code(errno), fail_errno(errno, path));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return result_error(p, "not_a_file", fail("not a regular file: %.900s", path));
    }
    fcntl(fd, F_SETFL, 0);
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            close(fd);
            return result_error(p, "io_error", fail_errno(errno, path));
        }
        if (n == 0) break;
        if (send_frame(p, 'D', 0, chunk, (size_t)n)) break;
        size += (unsigned long long)n;
        enum host_ev ev;
        while ((ev = host_event(p, &f, 0)) != EV_NONE) {
            if (ev == EV_CANCEL) result_error(p, "cancelled", "cancelled");
            if (ev == EV_CANCEL || ev == EV_ABANDON) return (void)close(fd);
        }
    }
    close(fd);
    rout.len = 0, rout.full = 0;
    out_fmt(&rout, "{\"ok\":true,\"size\":%llu,\"mode\":%u}", size, (unsigned)(st.st_mode & 07777));
    send_result(p);
}

/* Splits an absolute path into its directory and last component (which must be a real name). */
static int split_path(const char *path, char *dir, size_t dcap, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash + 1;
    if (!**name || !strcmp(*name, ".") || !strcmp(*name, "..")) return -1;
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= dcap) return -1;
    memcpy(dir, path, n);
    dir[n] = 0;
    return 0;
}

static void op_write(struct port *p, const struct jval *req)
{
    const char *path = str_field(req, "path"), *name;
    const struct jval *m = json_get(req, "mode");
    char dir[PATH_MAX], tmp[NAME_MAX + 1];
    struct frame f;
    unsigned long long size = 0;
    mode_t mode = m && m->type == J_NUM && m->is_uint && m->uint <= 07777 ? (mode_t)m->uint : 0644;
    if (valid_path(path) || split_path(path, dir, sizeof dir, &name))
        return result_error(p, "invalid", "path must be an absolute path naming a file");
    if (bool_field(req, "mkdirs") && mkdir_parents(dir, 0755))
        return result_error(p, errno_code(errno), fail_errno(errno, dir));
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return result_error(p, errno_code(errno), fail_errno(errno, dir));
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 16; attempt++) {
        unsigned char rnd[6];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, attempt, sizeof rnd);
        snprintf(tmp, sizeof tmp, ".%.200s.banger-%02x%02x%02x%02x%02x%02x", name, rnd[0], rnd[1], rnd[2], rnd[3],
                 rnd[4], rnd[5]);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        int e = errno;
        close(dfd);
        return result_error(p, errno_code(e), fail_errno(e, dir));
    }
    const char *err = NULL;
    for (;;) {
        enum host_ev ev = host_event(p, &f, -1);
        if (ev == EV_DATA) {
            if (!err && write_all(fd, (const char *)f.payload, f.len)) err = fail_errno(errno, path);
            size += f.len;
            continue;
        }
        if (ev == EV_END && !err) {
            if (fchmod(fd, mode) || fsync(fd) || renameat(dfd, tmp, dfd, name)) err = fail_errno(errno, path);
            if (!err) {
                fsync(dfd);
                close(fd);
                close(dfd);
                rout.len = 0, rout.full = 0;
                out_fmt(&rout, "{\"ok\":true,\"size\":%llu}", size);
                return send_result(p);
            }
        }
        /* cancelled, abandoned, or failed: the temp file goes, the target stays as it was */
        unlinkat(dfd, tmp, 0);
        close(fd);
        close(dfd);
        if (ev == EV_CANCEL) result_error(p, "cancelled", "cancelled");
        if (ev == EV_END) result_error(p, errno_code(errno), err);
        return;
    }
}

/* Runs a tool (tar, or a pipe-in command) in cwd (NULL: ours) with stdin/stdout as given (-1: a pipe back
 * to us, NULL: /dev/null) and stderr into a pipe, in its own process group. A child that cannot chdir or
 * exec says why on stderr and exits 127. */
static pid_t spawn_tool(char *const argv[], const char *cwd, int *to_stdin, int *from_stdout, int *from_stderr)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    pid_t pid = -1;
    if ((!to_stdin || !pipe2(in, O_CLOEXEC)) && (!from_stdout || !pipe2(out, O_CLOEXEC)) && !pipe2(err, O_CLOEXEC))
        pid = fork();
    if (pid < 0) { /* no pipes or no child: nothing is left open */
        int *fds[] = {in, out, err};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++)
                if (fds[i][j] >= 0) close(fds[i][j]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        setpgid(0, 0);
        signal(SIGPIPE, SIG_DFL);
        dup2(to_stdin ? in[0] : devnull, 0);
        dup2(from_stdout ? out[1] : devnull, 1);
        dup2(err[1], 2);
        setenv("PATH", TOOL_PATH, 1);
        if (cwd && chdir(cwd)) {
            dprintf(2, "cannot enter %s: %s\n", cwd, strerror(errno));
            _exit(127);
        }
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (to_stdin) close(in[0]), *to_stdin = in[1];
    if (from_stdout) close(out[1]), *from_stdout = out[0];
    close(err[1]);
    *from_stderr = err[0];
    return pid;
}

static void stop_tool(pid_t pid)
{
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Waits for the tool and answers {ok, exit_code, stderr} (plus error and code when it failed). */
static void result_tool(struct port *p, pid_t pid, int errfd, char *errtext, size_t errlen, const char *failed)
{
    int st = 0;
    ssize_t n;
    char sink[4096];
    while ((n = read(errfd, sink, sizeof sink)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0 && errlen < MAX_TAR_STDERR) {
            size_t k = (size_t)n < MAX_TAR_STDERR - errlen ? (size_t)n : MAX_TAR_STDERR - errlen;
            memcpy(errtext + errlen, sink, k), errlen += k;
        }
    close(errfd);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    rout.len = 0, rout.full = 0;
    out_fmt(&rout, "{\"ok\":%s,\"exit_code\":%d,\"stderr\":", code == 0 ? "true" : "false", code);
    out_str(&rout, errtext, errlen);
    if (code) out_raw(&rout, failed, strlen(failed));
    out_raw(&rout, "}", 1);
    send_result(p);
}

static void keep_stderr(int fd, char *errtext, size_t *errlen, int *open_flag)
{
    char sink[4096];
    ssize_t n = read(fd, sink, sizeof sink);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        *open_flag = 0;
        return;
    }
    if (n > 0 && *errlen < MAX_TAR_STDERR) {
        size_t k = (size_t)n < MAX_TAR_STDERR - *errlen ? (size_t)n : MAX_TAR_STDERR - *errlen;
        memcpy(errtext + *errlen, sink, k), *errlen += k;
    }
}

static void op_tar_out(struct port *p, const struct jval *req)
{
    const char *path = str_field(req, "path"), *name;
    char dir[PATH_MAX], member[NAME_MAX + 3], errtext[MAX_TAR_STDERR];
    size_t errlen = 0;
    struct frame f;
    if (valid_path(path)) return result_error(p, "invalid", "path must be absolute");
    if (!strcmp(path, "/")) {
        strcpy(dir, "/"), name = ".";
    } else if (split_path(path, dir, sizeof dir, &name)) {
        return result_error(p, "invalid", "path must name a file or directory");
    }
    /* a name starting with '-' must not become an option */
    snprintf(member, sizeof member, "%s%.*s", name[0] == '-' ? "./" : "", NAME_MAX, name);
    char *argv[] = {"tar", "-c", "-f", "-", "-C", dir, member, NULL};
    int out = -1, err = -1, out_open = 1, err_open = 1;
    pid_t pid = spawn_tool(argv, NULL, NULL, &out, &err);
    if (pid < 0) return result_error(p, "io_error", "cannot start tar");
    while (out_open || err_open) {
        struct pollfd pfd[3] = {{.fd = out_open ? out : -1, .events = POLLIN},
                                {.fd = err_open ? err : -1, .events = POLLIN},
                                {.fd = p->fd, .events = POLLIN}};
        if (poll(pfd, 3, -1) < 0) continue;
        if (pfd[0].revents) {
            ssize_t n = read(out, chunk, sizeof chunk);
            if (n > 0 && send_frame(p, 'D', 0, chunk, (size_t)n) == 0) continue;
            if (n < 0 && errno == EINTR) continue;
            if (n > 0) break; /* the host is gone */
            out_open = 0;
        }
        if (pfd[1].revents) keep_stderr(err, errtext, &errlen, &err_open);
        if (pfd[2].revents) {
            enum host_ev ev;
            while ((ev = host_event(p, &f, 0)) != EV_NONE) {
                if (ev == EV_CANCEL || ev == EV_ABANDON) {
                    stop_tool(pid);
                    close(out), close(err);
                    if (ev == EV_CANCEL) result_error(p, "cancelled", "cancelled");
                    return;
                }
            }
        }
    }
    close(out);
    if (p->gone) {
        stop_tool(pid);
        close(err);
        return;
    }
    result_tool(p, pid, err, errtext, errlen, TAR_FAILED);
}

/* Writes to tar's stdin while draining its stderr (tar blocked on a full stderr pipe must not deadlock us). */
static int feed_tool(int in, const unsigned char *data, size_t n, int err, char *errtext, size_t *errlen, int *err_open)
{
    while (n > 0) {
        struct pollfd pfd[2] = {{.fd = in, .events = POLLOUT}, {.fd = *err_open ? err : -1, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) continue;
        if (pfd[1].revents) keep_stderr(err, errtext, errlen, err_open);
        if (pfd[0].revents & (POLLERR | POLLHUP)) return -1;
        if (!pfd[0].revents) continue;
        ssize_t w = write(in, data, n);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w < 0) return -1;
        data += w, n -= (size_t)w;
    }
    return 0;
}

/* Feeds the session's D frames to a spawned tool's stdin until E, then answers its result. */
static void feed_session(struct port *p, pid_t pid, int in, int err, const char *failed)
{
    char errtext[MAX_TAR_STDERR];
    size_t errlen = 0;
    int err_open = 1, in_ok = 1;
    struct frame f;
    fcntl(in, F_SETFL, O_NONBLOCK);
    fcntl(err, F_SETFL, O_NONBLOCK);
    for (;;) {
        enum host_ev ev = host_event(p, &f, -1);
        if (ev == EV_DATA) {
            /* a tool that stopped reading (it failed): keep consuming the host's frames until E */
            if (in_ok && feed_tool(in, f.payload, f.len, err, errtext, &errlen, &err_open)) in_ok = 0;
            continue;
        }
        close(in);
        if (ev == EV_END) {
            fcntl(err, F_SETFL, 0);
            return result_tool(p, pid, err, errtext, errlen, failed);
        }
        stop_tool(pid);
        close(err);
        if (ev == EV_CANCEL) result_error(p, "cancelled", "cancelled");
        return;
    }
}

static void op_tar_in(struct port *p, const struct jval *req)
{
    const char *path = str_field(req, "path");
    if (valid_path(path)) return result_error(p, "invalid", "path must be absolute");
    if (mkdir_parents(path, 0755)) return result_error(p, errno_code(errno), fail_errno(errno, path));
    char *argv[] = {"tar", "-x", "-f", "-", "-C", (char *)path, "--no-same-owner", NULL};
    if (bool_field(req, "same_owner")) argv[6] = NULL;
    int in = -1, err = -1;
    pid_t pid = spawn_tool(argv, NULL, &in, NULL, &err);
    if (pid < 0) return result_error(p, "io_error", "cannot start tar");
    feed_session(p, pid, in, err, TAR_FAILED);
}

/* {argv, cwd}: runs argv (PATH search) in cwd as root with the session's bytes as its stdin, stdout
 * discarded; answers its exit code and stderr. Streams into a command what would otherwise be a file
 * first (a workspace's pack into git index-pack). */
static void op_pipe_in(struct port *p, const struct jval *req)
{
    const char *cwd = str_field(req, "cwd"), *err_msg;
    char **argv = NULL;
    if (valid_path(cwd)) return result_error(p, "invalid", "cwd must be absolute");
    if ((err_msg = json_strings(json_get(req, "argv"), "argv", &argv, 1))) return result_error(p, "invalid", err_msg);
    size_t n = 0;
    while (argv[n]) n++;
    if (n > MAX_PIPE_ARGS) return free(argv), result_error(p, "invalid", "argv has more than 64 entries");
    int in = -1, err = -1;
    pid_t pid = spawn_tool(argv, cwd, &in, NULL, &err);
    free(argv);
    if (pid < 0) return result_error(p, "io_error", "cannot start the command");
    feed_session(p, pid, in, err, COMMAND_FAILED);
}

static void run_session(struct port *p, const struct frame *s)
{
    const char *err = NULL;
    struct jdoc *doc = json_parse((const char *)s->payload, s->len, &err);
    const struct jval *req = doc ? json_root(doc) : NULL;
    const char *nonce = json_cstr(json_get(req, "nonce")), *op = json_cstr(json_get(req, "op"));
    rout.len = 0, rout.full = 0;
    out_raw(&rout, "{\"nonce\":", 9);
    out_cstr(&rout, nonce && strlen(nonce) <= 128 ? nonce : "");
    out_raw(&rout, "}", 1);
    if (send_frame(p, 'A', 0, rout.buf, rout.len) == 0) {
        if (!req || req->type != J_OBJ)
            result_error(p, "invalid", err ? err : "the request must be a JSON object");
        else if (json_limit_error(doc))
            result_error(p, "invalid", json_limit_error(doc));
        else if (!op)
            result_error(p, "invalid", "missing op");
        else if (!strcmp(op, "output"))
            op_output(p, req);
        else if (!strcmp(op, "read"))
            op_read(p, req);
        else if (!strcmp(op, "write"))
            op_write(p, req);
        else if (!strcmp(op, "tar-out"))
            op_tar_out(p, req);
        else if (!strcmp(op, "tar-in"))
            op_tar_in(p, req);
        else if (!strcmp(op, "pipe-in"))
            op_pipe_in(p, req);
        else
            result_error(p, "invalid", fail("unknown op %.64s", op));
    }
    json_free(doc);
}

/* Serves sessions on one port until the host is gone (a socket or vsock), or forever (virtio). */
static void serve_port(struct port *p)
{
    struct frame f;
    for (;;) {
        if (p->gone) {
            if (!p->is_chr) return;
            p->gone = 0;
            sleep_ms(100); /* virtio: no host yet; the port stays ours */
        }
        if (p->have_pending) {
            struct frame s = p->pending;
            p->have_pending = 0;
            run_session(p, &s);
            continue;
        }
        if (next_frame(p, &f, -1) > 0 && f.type == 'S') run_session(p, &f);
        /* anything else outside a session is a leftover of an abandoned one: skipped */
    }
}

static struct port the_port;

/* A virtio-serial host cannot see the guest side reopen its port: a host mid-session would wait forever
 * for the R of a worker that died with a restarted agent. Every (re)opened port says so first; a host
 * without a session, or before its A, drops it (docs/processes.md). */
static void announce_reopen(struct port *p)
{
    static const char msg[] = "{\"ok\":false,\"code\":\"unavailable\",\"error\":\"agent restarted\"}";
    send_frame(p, 'R', 0, msg, sizeof msg - 1);
    p->gone = 0; /* a virtio port with no host yet: the sessions start when one comes */
}

static void serve_fd(int fd, int is_chr)
{
    memset(&the_port, 0, sizeof the_port);
    the_port.fd = fd, the_port.is_chr = is_chr;
    announce_reopen(&the_port);
    serve_port(&the_port);
}

/* ---- workers --------------------------------------------------------------------------------- */

/* A child that dies with its parent (an agent restarted must find the ports free). */
static pid_t fork_worker(void)
{
    pid_t parent = getpid(), pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    signal(SIGCHLD, SIG_DFL); /* this worker waits for its own children (tar) */
    return 0;
}

static void worker_path(const char *path)
{
    int failing = 0;
    close_fds_from(3, -1, -1);
    for (;;) {
        int fd = open_channel(path);
        if (fd < 0) {
            if (!failing++) say("cannot open data channel %s: %s (retrying)", path, strerror(errno));
            sleep_ms(failing < 50 ? 100 : 1000);
            continue;
        }
        failing = 0;
        struct stat st;
        int is_chr = fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
        serve_fd(fd, is_chr); /* returns when a socket's host hung up: connect again */
        close(fd);
        sleep_ms(100);
    }
}

static int data_vsock_listen(void)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = DATA_VSOCK_PORT, .svm_cid = VMADDR_CID_ANY};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, MAX_VSOCK_SESSIONS) != 0)
        return close_keep_errno(fd), -1;
    return fd;
}

/* Forgets the workers that exited. */
static void reap_workers(pid_t *port_pid, pid_t *vsock_pid)
{
    pid_t dead;
    while ((dead = waitpid(-1, NULL, WNOHANG)) > 0) {
        for (int k = 0; k < DATA_PORTS; k++)
            if (port_pid[k] == dead) port_pid[k] = 0;
        for (int k = 0; k < MAX_VSOCK_SESSIONS; k++)
            if (vsock_pid[k] == dead) vsock_pid[k] = 0;
    }
}

static int free_vsock_slot(const pid_t *vsock_pid)
{
    for (int k = 0; k < MAX_VSOCK_SESSIONS; k++)
        if (!vsock_pid[k]) return k;
    return -1;
}

/* Keeps one worker per data port: the --data paths when given, else the virtio ports
 * org.banger.data.0..3 (their driver may bind late) and vsock sessions on port 1023. A worker that
 * dies (whatever the host sent) is started again. */
static void manager(const char *const *paths, int npaths)
{
    pid_t port_pid[DATA_PORTS] = {0};
    pid_t vsock_pid[MAX_VSOCK_SESSIONS] = {0};
    int lfd = -1, nports = npaths ? npaths : DATA_PORTS;
    long long next_try = 0;
    close_fds_from(3, -1, -1);
    for (;;) {
        reap_workers(port_pid, vsock_pid);
        if (mono_ms() >= next_try) {
            next_try = mono_ms() + (npaths ? 100 : 1000);
            for (int k = 0; k < nports; k++) {
                char name[64], dev[PATH_MAX];
                if (port_pid[k]) continue;
                if (npaths) {
                    snprintf(dev, sizeof dev, "%s", paths[k]);
                } else {
                    snprintf(name, sizeof name, "org.banger.data.%d", k);
                    if (find_virtio_port_named(name, dev, sizeof dev)) continue;
                }
                if ((port_pid[k] = fork_worker()) == 0) worker_path(dev);
                if (port_pid[k] < 0) port_pid[k] = 0;
            }
            if (lfd < 0 && !npaths) lfd = data_vsock_listen();
        }
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        if (poll(&pfd, 1, npaths ? 100 : 1000) <= 0 || lfd < 0) continue;
        struct sockaddr_vm peer;
        socklen_t plen = sizeof peer;
        int cfd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
        if (cfd < 0) continue;
        int from_host = plen >= sizeof peer && peer.svm_cid == VMADDR_CID_HOST;
        int slot = free_vsock_slot(vsock_pid);
        /* The host (which runs at most 4 at once) starts a queued session as soon as it has the
         * last one's R, maybe before that session's worker saw the hang-up and exited: wait a
         * moment for it rather than refuse. */
        for (int tries = 0; from_host && slot < 0 && tries < 50; tries++) {
            sleep_ms(10);
            reap_workers(port_pid, vsock_pid);
            slot = free_vsock_slot(vsock_pid);
        }
        /* only the host (not another VM, not a guest process), and at most 4 sessions at once */
        if (!from_host || slot < 0) {
            close(cfd);
            continue;
        }
        if ((vsock_pid[slot] = fork_worker()) == 0) {
            close(lfd);
            serve_fd(cfd, 0);
            _exit(0);
        }
        if (vsock_pid[slot] < 0) vsock_pid[slot] = 0;
        close(cfd);
    }
}

void data_start(const char *const *paths, int npaths)
{
    if (npaths > DATA_PORTS) npaths = DATA_PORTS;
    if (fork_worker() == 0) manager(paths, npaths);
}
