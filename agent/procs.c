/*
 * Supervised processes (docs/processes.md, "Process supervisor" and "Layout"): the proc.* methods
 * of the control channel and the per-process supervisor they fork.
 *
 * Every process has a directory <procs_dir>/<id>/ that is the whole truth about it: a restarted
 * agent knows its processes from these directories alone. The supervisor (double fork + setsid,
 * named "banger-sup") outlives the agent; it owns the child, its output files, its stdin and its
 * cgroup, and writes `status` (temp + rename) when the child is gone.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#include "agent.h"
#include "common.h"

const char *procs_dir = "/var/lib/banger/procs";
const char *cgroup_root = "/sys/fs/cgroup/banger";

#define MAX_PROCS 256
#define DEFAULT_OUTPUT_LIMIT (64ULL << 20)
#define MAX_OUTPUT_LIMIT (1ULL << 30)
#define MAX_STDIN_CHUNK (48 * 1024)
#define MAX_GROUPS 64
#define SUPERVISOR_NAME "banger-sup"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct user_info {
    uid_t uid;
    gid_t gid;
    char name[64];
    char home[256];
    char shell[256];
    gid_t groups[MAX_GROUPS];
    int ngroups;
};

struct spec {
    const char *id, *name, *shell, *cwd, *user;
    char **argv; /* NULL-terminated, or NULL with shell */
    char **env;  /* NULL-terminated K=V entries */
    int stdin_pipe, pty;
    unsigned rows, cols;
    unsigned long long timeout_ms, output_limit;
    struct user_info who;
};

/* ---- paths and small files ---------------------------------------------------------------- */

static int proc_path(char *buf, size_t cap, const char *id, const char *file)
{
    int n = file ? snprintf(buf, cap, "%s/%s/%s", procs_dir, id, file) : snprintf(buf, cap, "%s/%s", procs_dir, id);
    return n < 0 || (size_t)n >= cap ? (errno = ENAMETOOLONG, -1) : 0;
}

int valid_proc_id(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 40) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(islower(c) || isdigit(c) || (i > 0 && c == '-'))) return -1;
    }
    return 0;
}

/* Writes a small file atomically: a temp file beside it, then rename. No fsync: these files matter
 * only within one boot (a new boot wipes them), and a rename is atomic for every reader of this boot. */
static int write_atomic(const char *path, const char *data, size_t n)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid()) >= (int)sizeof tmp) return errno = ENAMETOOLONG, -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (write_all(fd, data, n)) {
        close_keep_errno(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return errno = e, -1;
    }
    return 0;
}

static long long file_size(const char *id, const char *file)
{
    char path[PATH_MAX];
    struct stat st;
    if (proc_path(path, sizeof path, id, file) || lstat(path, &st)) return -1;
    return (long long)st.st_size;
}

static int read_proc_file(const char *id, const char *file, char *buf, size_t cap)
{
    char path[PATH_MAX];
    if (proc_path(path, sizeof path, id, file)) return -1;
    return read_file(path, buf, cap) < 0 ? -1 : 0;
}

/* Tells the supervisor something (a line shorter than PIPE_BUF: one atomic write). A supervisor that is
 * gone (ENXIO: no reader) or busy (EAGAIN: FIFO full) misses nothing: it rereads the files. */
static void notify(const char *id, const char *msg)
{
    char path[PATH_MAX];
    if (proc_path(path, sizeof path, id, "ctl")) return;
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return;
    if (write(fd, msg, strlen(msg)) < 0) {
        /* see above */
    }
    close(fd);
}

/* ---- state --------------------------------------------------------------------------------- */

struct sup_info {
    int sup_pid, child_pid;
    long long started_ms;
};

static int read_sup(const char *id, struct sup_info *s)
{
    char buf[128];
    if (read_proc_file(id, "sup", buf, sizeof buf)) return -1;
    return sscanf(buf, "%d %d %lld", &s->sup_pid, &s->child_pid, &s->started_ms) == 3 ? 0 : -1;
}

static int supervisor_alive(int pid)
{
    char path[64], comm[32];
    if (pid <= 1 || kill(pid, 0) != 0) return 0;
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    if (read_file(path, comm, sizeof comm) <= 0) return 0;
    trim_right(comm);
    if (strcmp(comm, SUPERVISOR_NAME)) return 0; /* a recycled pid */
    /* a zombie nobody reaped yet is gone too: the state follows the ")" that ends the comm */
    char stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_file(path, stat, sizeof stat) <= 0) return 0;
    const char *paren = strrchr(stat, ')');
    return paren && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
}

int proc_running(const char *id)
{
    struct sup_info s;
    if (file_size(id, "status") >= 0) return 0;
    return read_sup(id, &s) == 0 && supervisor_alive(s.sup_pid);
}

static void out_opt_str(struct out *o, const struct jval *v)
{
    if (v && v->type == J_STR)
        out_str(o, v->str, v->len);
    else
        out_raw(o, "null", 4);
}

int proc_info(struct out *o, const char *id)
{
    char path[PATH_MAX], status[256], spec_text[MAX_LINE + 1], code[64] = "-";
    struct sup_info s = {0, 0, 0};
    struct stat st;
    const char *err;
    int have_sup, have_status, exit_code = -1, sig = -1, timed_out = 0;
    long long ended_ms = -1, eof_at = -1;

    if (valid_proc_id(id) || proc_path(path, sizeof path, id, "spec") || lstat(path, &st)) return errno = ENOENT, -1;
    if (read_file(path, spec_text, sizeof spec_text) < 0) return -1;
    struct jdoc *doc = json_parse(spec_text, strlen(spec_text), &err);
    const struct jval *spec = doc ? json_root(doc) : NULL;
    have_sup = read_sup(id, &s) == 0;
    have_status = read_proc_file(id, "status", status, sizeof status) == 0 &&
                  sscanf(status, "%d %d %d %63s %lld", &exit_code, &sig, &timed_out, code, &ended_ms) == 5;
    const char *state = have_status ? "exited" : have_sup && supervisor_alive(s.sup_pid) ? "running" : "lost";
    if (read_proc_file(id, "stdin.eof", status, sizeof status) == 0) eof_at = atoll(status);
    const struct jval *stdin_mode = json_get(spec, "stdin");
    int pipe_in = stdin_mode && stdin_mode->type == J_STR && !strcmp(stdin_mode->str, "pipe");
    const struct jval *argv = json_get(spec, "argv"), *pty = json_get(spec, "pty");

    out_raw(o, "{\"id\":", 6);
    out_cstr(o, id);
    out_raw(o, ",\"name\":", 8);
    out_opt_str(o, json_get(spec, "name"));
    out_raw(o, ",\"argv\":", 8);
    if (argv && argv->type == J_ARR) {
        out_raw(o, "[", 1);
        for (const struct jval *a = argv->first; a; a = a->next) {
            if (a != argv->first) out_raw(o, ",", 1);
            out_opt_str(o, a);
        }
        out_raw(o, "]", 1);
    } else {
        out_raw(o, "null", 4);
    }
    out_raw(o, ",\"shell\":", 9);
    out_opt_str(o, json_get(spec, "shell"));
    if (have_sup && s.child_pid > 0)
        out_fmt(o, ",\"pid\":%d", s.child_pid);
    else
        out_raw(o, ",\"pid\":null", 11);
    out_fmt(o, ",\"pty\":%s,\"state\":\"%s\"", pty && pty->type == J_OBJ ? "true" : "false", state);
    if (have_status && exit_code >= 0)
        out_fmt(o, ",\"exit_code\":%d", exit_code);
    else
        out_raw(o, ",\"exit_code\":null", 17);
    if (have_status && sig > 0)
        out_fmt(o, ",\"signal\":%d", sig);
    else
        out_raw(o, ",\"signal\":null", 14);
    out_fmt(o, ",\"timed_out\":%s,\"code\":", have_status && timed_out ? "true" : "false");
    if (have_status && strcmp(code, "-"))
        out_cstr(o, code);
    else
        out_raw(o, "null", 4);
    out_fmt(o, ",\"started_ms\":%lld",
            have_sup ? s.started_ms : (long long)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000);
    if (have_status && ended_ms >= 0)
        out_fmt(o, ",\"ended_ms\":%lld", ended_ms);
    else
        out_raw(o, ",\"ended_ms\":null", 16);
    long long out_b = file_size(id, "stdout"), err_b = file_size(id, "stderr"), in_b = file_size(id, "stdin");
    out_fmt(o, ",\"stdout_bytes\":%lld,\"stderr_bytes\":%lld,\"truncated\":%s", out_b < 0 ? 0 : out_b,
            err_b < 0 ? 0 : err_b, file_size(id, "truncated") >= 0 ? "true" : "false");
    out_fmt(o, ",\"stdin\":\"%s\",\"stdin_bytes\":%lld}",
            !pipe_in                                    ? "null"
            : (eof_at >= 0 || strcmp(state, "running")) ? "closed"
                                                        : "open",
            in_b < 0 ? 0 : in_b);
    json_free(doc);
    return 0;
}

/* ---- users: /etc/passwd and /etc/group read directly (a static binary has no NSS) ---------- */

static int lookup_user(const char *who, struct user_info *u)
{
    char line[1024];
    char *end;
    unsigned long want_uid = strtoul(who, &end, 10);
    int numeric = *who && !*end && isdigit((unsigned char)*who);
    int found = 0;
    FILE *f = fopen("/etc/passwd", "re");
    memset(u, 0, sizeof *u);
    while (f && !found && fgets(line, sizeof line, f)) {
        char *field[7];
        char *p = line;
        int n = 0;
        if (!strchr(line, '\n') && !feof(f)) { /* an over-long line: skip the rest of it */
            int c;
            while ((c = fgetc(f)) != EOF && c != '\n') {
            }
            continue;
        }
        trim_right(line);
        for (; n < 7 && p; n++) field[n] = strsep(&p, ":");
        if (n < 7) continue;
        unsigned long uid = strtoul(field[2], &end, 10);
        if (*end || !*field[2]) continue;
        if (numeric ? uid != want_uid : strcmp(field[0], who)) continue;
        u->uid = (uid_t)uid;
        u->gid = (gid_t)strtoul(field[3], NULL, 10);
        snprintf(u->name, sizeof u->name, "%s", field[0]);
        snprintf(u->home, sizeof u->home, "%s", *field[5] ? field[5] : "/");
        snprintf(u->shell, sizeof u->shell, "%s", *field[6] ? field[6] : "/bin/sh");
        found = 1;
    }
    if (f) fclose(f);
    if (!found) {
        if (!numeric && strcmp(who, "root")) return -1;
        u->uid = numeric ? (uid_t)want_uid : 0;
        u->gid = u->uid;
        snprintf(u->name, sizeof u->name, "%s", numeric ? who : "root");
        snprintf(u->home, sizeof u->home, "%s", u->uid == 0 ? "/root" : "/");
        snprintf(u->shell, sizeof u->shell, "/bin/sh");
    }
    u->groups[u->ngroups++] = u->gid;
    if (!found) return 0;
    if (!(f = fopen("/etc/group", "re"))) return 0;
    while (u->ngroups < MAX_GROUPS && fgets(line, sizeof line, f)) {
        char *field[4], *p = line, *member;
        int n = 0;
        trim_right(line);
        for (; n < 4 && p; n++) field[n] = strsep(&p, ":");
        if (n < 4) continue;
        for (p = field[3]; (member = strsep(&p, ","));)
            if (!strcmp(member, u->name)) {
                u->groups[u->ngroups++] = (gid_t)strtoul(field[2], NULL, 10);
                break;
            }
    }
    fclose(f);
    return 0;
}

/* ---- proc.start ---------------------------------------------------------------------------- */

static const char *uint_param(const struct jval *p, const char *key, unsigned long long min, unsigned long long max,
                              unsigned long long *v)
{
    const struct jval *j = json_get(p, key);
    if (!j) return NULL;
    if (j->type != J_NUM || !j->is_uint || j->uint < min || j->uint > max)
        return fail("%s must be an integer from %llu to %llu", key, min, max);
    *v = j->uint;
    return NULL;
}

static const char *parse_spec(const struct jval *p, struct spec *s)
{
    static const char *const allowed[] = {"id",   "name",  "argv", "shell",      "cwd",          "env",
                                          "user", "stdin", "pty",  "timeout_ms", "output_limit", NULL};
    const char *err;
    const struct jval *v;
    unsigned long long rows = 0, cols = 0;
    memset(s, 0, sizeof *s);
    if ((err = check_params(p, allowed))) return err;
    if (!(s->id = json_cstr(json_get(p, "id"))) || valid_proc_id(s->id)) return "id must match [a-z0-9][a-z0-9-]{0,39}";
    if ((v = json_get(p, "name")) && v->type != J_NULL && (!(s->name = json_cstr(v)) || v->len > 128))
        return "name must be a string of at most 128 bytes";
    if ((v = json_get(p, "shell")) && v->type != J_NULL && !(s->shell = json_cstr(v)))
        return "shell must be a string without NUL bytes";
    if ((v = json_get(p, "argv")) && v->type != J_NULL && (err = json_strings(v, "argv", &s->argv, 1))) return err;
    if (!s->argv == !s->shell) return "exactly one of argv and shell";
    if ((v = json_get(p, "cwd")) && v->type != J_NULL && (!(s->cwd = json_cstr(v)) || valid_path(s->cwd)))
        return "cwd must be an absolute path";
    if ((v = json_get(p, "env")) && v->type != J_NULL) {
        if ((err = json_strings(v, "env", &s->env, 0))) return err;
        for (char **e = s->env; *e; e++)
            if (!strchr(*e, '=') || **e == '=') return fail("env entry without K=: %.64s", *e);
    }
    if ((v = json_get(p, "user")) && v->type != J_NULL && (!(s->user = json_cstr(v)) || !*s->user || v->len > 64))
        return "user must be a user name or uid";
    if ((v = json_get(p, "stdin")) && v->type != J_NULL) {
        if (v->type != J_STR || (strcmp(v->str, "null") && strcmp(v->str, "pipe"))) return "stdin must be null or pipe";
        s->stdin_pipe = !strcmp(v->str, "pipe");
    }
    if ((v = json_get(p, "pty")) && v->type != J_NULL) {
        static const char *const pty_allowed[] = {"rows", "cols", NULL};
        if (v->type != J_OBJ) return "pty must be {rows, cols}";
        if ((err = check_params(v, pty_allowed)) || (err = uint_param(v, "rows", 1, 65535, &rows)) ||
            (err = uint_param(v, "cols", 1, 65535, &cols)))
            return err;
        s->pty = 1;
        s->rows = rows ? (unsigned)rows : 24, s->cols = cols ? (unsigned)cols : 80;
        s->stdin_pipe = 1; /* a terminal always takes input: the attach writes to it */
    }
    s->output_limit = DEFAULT_OUTPUT_LIMIT;
    if ((err = uint_param(p, "timeout_ms", 0, 1ULL << 40, &s->timeout_ms)) ||
        (err = uint_param(p, "output_limit", 0, MAX_OUTPUT_LIMIT, &s->output_limit)))
        return err;
    if (lookup_user(s->user ? s->user : "root", &s->who)) return fail("unknown user %s", s->user);
    return NULL;
}

static void free_spec(struct spec *s)
{
    free(s->argv);
    free(s->env);
}

/* The spec as the agent re-renders it: what a repeated start is compared with, and what info shows. */
static void render_spec(struct out *o, const struct spec *s)
{
    out_raw(o, "{\"id\":", 6);
    out_cstr(o, s->id);
    out_raw(o, ",\"name\":", 8);
    s->name ? out_cstr(o, s->name) : out_raw(o, "null", 4);
    out_raw(o, ",\"argv\":", 8);
    if (s->argv) {
        out_raw(o, "[", 1);
        for (char **a = s->argv; *a; a++) {
            if (a != s->argv) out_raw(o, ",", 1);
            out_cstr(o, *a);
        }
        out_raw(o, "]", 1);
    } else {
        out_raw(o, "null", 4);
    }
    out_raw(o, ",\"shell\":", 9);
    s->shell ? out_cstr(o, s->shell) : out_raw(o, "null", 4);
    out_raw(o, ",\"cwd\":", 7);
    s->cwd ? out_cstr(o, s->cwd) : out_raw(o, "null", 4);
    out_raw(o, ",\"env\":[", 8);
    for (char **e = s->env; e && *e; e++) {
        if (e != s->env) out_raw(o, ",", 1);
        out_cstr(o, *e);
    }
    out_raw(o, "],\"user\":", 9);
    out_cstr(o, s->who.name);
    out_fmt(o, ",\"stdin\":\"%s\",\"pty\":", s->stdin_pipe ? "pipe" : "null");
    if (s->pty)
        out_fmt(o, "{\"rows\":%u,\"cols\":%u}", s->rows, s->cols);
    else
        out_raw(o, "null", 4);
    out_fmt(o, ",\"timeout_ms\":%llu,\"output_limit\":%llu}", s->timeout_ms, s->output_limit);
}

static int procs_dir_ready(void);

static int count_procs(void)
{
    DIR *d = opendir(procs_dir);
    struct dirent *e;
    int n = 0;
    if (!d) return 0;
    while ((e = readdir(d))) n += valid_proc_id(e->d_name) == 0;
    closedir(d);
    return n;
}

static void supervise(const struct spec *s, int ready_fd) __attribute__((noreturn));

static struct out spec_out;

const char *m_proc_start(struct out *o, const struct jval *p)
{
    struct spec s;
    char dir[PATH_MAX], staging[PATH_MAX], path[PATH_MAX + 16], existing[MAX_LINE + 1];
    const char *err = parse_spec(p, &s);
    if (err) return free_spec(&s), err;
    spec_out.len = 0, spec_out.full = 0;
    render_spec(&spec_out, &s);
    if (spec_out.full) return free_spec(&s), "spec too large";
    spec_out.buf[spec_out.len] = 0;
    if (proc_path(dir, sizeof dir, s.id, NULL) || proc_path(path, sizeof path, s.id, "spec"))
        return free_spec(&s), "path too long";
    if (access(dir, F_OK) == 0) {
        free_spec(&s);
        if (read_file(path, existing, sizeof existing) < 0 || strcmp(existing, spec_out.buf))
            return fail("already exists: %s (with another spec)", s.id);
        proc_info(o, s.id); /* a retried start: the same process */
        return NULL;
    }
    if (count_procs() >= MAX_PROCS) return free_spec(&s), "too many processes (max 256): forget some";
    if (procs_dir_ready()) return free_spec(&s), fail_errno(errno, procs_dir);

    /* Staged, then renamed into place: a directory named <id> is always complete. */
    snprintf(staging, sizeof staging, "%s/.%s.new", procs_dir, s.id);
    remove_tree_at(AT_FDCWD, staging, 0);
    if (mkdir(staging, 0700)) return free_spec(&s), fail_errno(errno, staging);
    int ok = 1;
    static const char *const empty[] = {"stdout", "stderr", "stdin"};
    for (int i = 0; i < 3 && ok; i++) {
        snprintf(path, sizeof path, "%s/%s", staging, empty[i]);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ok = fd >= 0;
        if (ok) close(fd);
    }
    snprintf(path, sizeof path, "%s/spec", staging);
    ok = ok && write_atomic(path, spec_out.buf, spec_out.len) == 0;
    snprintf(path, sizeof path, "%s/ctl", staging);
    ok = ok && mkfifo(path, 0600) == 0;
    ok = ok && rename(staging, dir) == 0;
    if (!ok) {
        int e = errno;
        remove_tree_at(AT_FDCWD, staging, 0);
        free_spec(&s);
        return fail_errno(e, dir);
    }

    int ready[2];
    if (pipe2(ready, O_CLOEXEC)) return free_spec(&s), fail_errno(errno, "pipe");
    pid_t first = fork();
    if (first == 0) {
        close(ready[0]);
        setsid();
        if (fork() != 0) _exit(0);
        supervise(&s, ready[1]);
    }
    close(ready[1]);
    free_spec(&s);
    if (first < 0) {
        close(ready[0]);
        return fail_errno(errno, "fork");
    }
    waitpid(first, NULL, 0); /* or the SIGCHLD handler got it first */
    /* The supervisor closes its end once `sup` (and, when exec failed, `status`) is written. */
    struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
    long long deadline = mono_ms() + 30000; /* a slow (TCG) guest still answers with the started process */
    char junk[16];
    while (mono_ms() < deadline) {
        int rc = poll(&pfd, 1, (int)(deadline - mono_ms()));
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) break;
        ssize_t r = read(ready[0], junk, sizeof junk);
        if (r == 0 || (r < 0 && errno != EINTR)) break;
    }
    close(ready[0]);
    proc_info(o, p ? json_cstr(json_get(p, "id")) : "");
    return NULL;
}

/* ---- the supervisor -------------------------------------------------------------------------- */

struct sup {
    const struct spec *s;
    int dirfd;
    char cgroup[PATH_MAX]; /* empty: no cgroup */
    pid_t child;
    int child_done, wstatus, timed_out, truncated;
    unsigned long long written[3];
};

static void cgroup_write(struct sup *x, const char *file, const char *text)
{
    char path[PATH_MAX + 32];
    if (!x->cgroup[0]) return;
    snprintf(path, sizeof path, "%s/%s", x->cgroup, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, text, strlen(text)) < 0) {
        /* an old kernel without cgroup.kill: the process group below still gets the signal */
    }
    close(fd);
}

/* Signals everything the process started: the cgroup (even descendants that called setsid) and the group. */
static void kill_all(struct sup *x, int sig)
{
    if (x->cgroup[0]) {
        if (sig == SIGKILL) {
            cgroup_write(x, "cgroup.kill", "1");
        } else {
            char path[PATH_MAX + 32], line[32];
            snprintf(path, sizeof path, "%s/cgroup.procs", x->cgroup);
            FILE *f = fopen(path, "re");
            for (int n = 0; f && n < 65536 && fgets(line, sizeof line, f); n++) {
                int pid = atoi(line);
                if (pid > 1) kill(pid, sig);
            }
            if (f) fclose(f);
        }
    }
    if (x->child > 0) killpg(x->child, sig);
}

static void build_env(const struct spec *s, char **envp, size_t cap, char *store, size_t store_cap)
{
    size_t n = 0, used = 0;
#define ADD(...)                                                                                                       \
    do {                                                                                                               \
        int k = snprintf(store + used, store_cap - used, __VA_ARGS__);                                                 \
        if (k > 0 && (size_t)k < store_cap - used && n + 1 < cap) envp[n++] = store + used, used += (size_t)k + 1;     \
    } while (0)
    ADD("PATH=%s", DEFAULT_PATH);
    ADD("HOME=%s", s->who.home);
    ADD("USER=%s", s->who.name);
    ADD("LOGNAME=%s", s->who.name);
    ADD("SHELL=%s", s->who.shell);
    ADD("LANG=C.UTF-8");
    if (s->pty) ADD("TERM=xterm-256color");
#undef ADD
    for (char **e = s->env; e && *e; e++) {
        size_t klen = (size_t)(strchr(*e, '=') - *e) + 1;
        size_t i = 0;
        while (i < n && strncmp(envp[i], *e, klen)) i++;
        if (i < n)
            envp[i] = *e;
        else if (n + 1 < cap)
            envp[n++] = *e;
    }
    envp[n] = NULL;
}

/* execvp with the process's own PATH; returns the errno that explains the failure best. */
static int exec_search(char **argv, char **envp)
{
    const char *path = DEFAULT_PATH;
    int saw_eacces = 0;
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        return errno;
    }
    for (const char *p = path;; p++) {
        const char *colon = strchrnul(p, ':');
        char full[PATH_MAX];
        int dlen = (int)(colon - p);
        if (snprintf(full, sizeof full, "%.*s%s%s", dlen, p, dlen ? "/" : "", argv[0]) < (int)sizeof full) {
            execve(full, argv, envp);
            if (errno == EACCES)
                saw_eacces = 1;
            else if (errno != ENOENT && errno != ENOTDIR)
                return errno;
        }
        if (!*colon) break;
        p = colon;
    }
    return saw_eacces ? EACCES : ENOENT;
}

struct exec_report {
    int stage; /* 1 cwd, 2 user, 3 exec */
    int err;
};

static void child_main(struct sup *x, int in_fd, int out_fd, int err_fd, int slave, int report_fd)
{
    const struct spec *s = x->s;
    struct exec_report rep = {0, 0};
    char *envp[4200], store[8192], *sh_argv[4];
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    setsid();
    cgroup_write(x, "cgroup.procs", "0"); /* in before exec: every descendant inherits it */
    if (s->pty) {
        ioctl(slave, TIOCSCTTY, 0);
        in_fd = out_fd = err_fd = slave;
    }
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) _exit(126);
    close_fds_from(3, report_fd, -1);
    build_env(s, envp, sizeof envp / sizeof envp[0], store, sizeof store);
    const char *cwd = s->cwd ? s->cwd : s->who.home;
    if (s->who.uid != 0 || s->who.gid != 0 || s->who.ngroups > 1) {
        if (setgroups((size_t)s->who.ngroups, s->who.groups) || setgid(s->who.gid) || setuid(s->who.uid))
            rep.stage = 2, rep.err = errno;
    }
    if (!rep.stage && chdir(cwd) != 0) {
        if (s->cwd) {
            rep.stage = 1, rep.err = errno;
        } else if (chdir("/") != 0) {
            rep.stage = 1, rep.err = errno;
        }
    }
    if (!rep.stage) {
        char **argv = s->argv;
        if (!argv) {
            sh_argv[0] = "sh", sh_argv[1] = "-c", sh_argv[2] = (char *)s->shell, sh_argv[3] = NULL;
            argv = sh_argv;
            execve("/bin/sh", argv, envp);
            rep.err = errno;
        } else {
            rep.err = exec_search(argv, envp);
        }
        rep.stage = 3;
    }
    if (rep.stage == 1)
        dprintf(2, "banger: cannot change directory to %s: %s\n", cwd, strerror(rep.err));
    else if (rep.stage == 2)
        dprintf(2, "banger: cannot become user %s: %s\n", s->who.name, strerror(rep.err));
    else
        dprintf(2, "banger: %s: %s\n", s->argv ? s->argv[0] : "/bin/sh",
                rep.err == ENOENT || rep.err == ENOTDIR ? "command not found" : strerror(rep.err));
    if (write(report_fd, &rep, sizeof rep) < 0) {
        /* the supervisor sees an exit without a report: exec_failed */
    }
    _exit(rep.stage == 3 && (rep.err == ENOENT || rep.err == ENOTDIR) ? 127 : 126);
}

static void write_status(struct sup *x, const char *code)
{
    char text[160];
    int exit_code = -1, sig = -1;
    if (WIFEXITED(x->wstatus)) exit_code = WEXITSTATUS(x->wstatus);
    if (WIFSIGNALED(x->wstatus)) sig = WTERMSIG(x->wstatus);
    int n =
        snprintf(text, sizeof text, "%d %d %d %s %lld\n", exit_code, sig, x->timed_out, code ? code : "-", now_ms());
    char path[PATH_MAX];
    proc_path(path, sizeof path, x->s->id, "status");
    write_atomic(path, text, (size_t)n);
}

static void finish(struct sup *x, const char *code)
{
    kill_all(x, SIGKILL); /* what is left of the cgroup/group */
    /* the cgroup is removable once empty: then nothing of the process is left when status appears */
    if (x->cgroup[0])
        for (int i = 0; i < 300 && rmdir(x->cgroup) != 0 && errno == EBUSY; i++) sleep_ms(i < 50 ? 1 : 20);
    write_status(x, code);
    _exit(0);
}

/* Copies a chunk of output into its file, up to the limit; the rest is read and dropped. */
static void keep_output(struct sup *x, int which, const char *buf, size_t n)
{
    static const char *const names[] = {"", "stdout", "stderr"};
    unsigned long long room =
        x->s->output_limit - (x->written[which] < x->s->output_limit ? x->written[which] : x->s->output_limit);
    size_t keep = n < room ? n : (size_t)room;
    if (keep) {
        int fd = openat(x->dirfd, names[which], O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            write_all(fd, buf, keep);
            close(fd);
        }
        x->written[which] += keep;
    }
    if (keep < n && !x->truncated) {
        x->truncated = 1;
        int fd = openat(x->dirfd, "truncated", O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) close(fd);
    }
}

static void supervise(const struct spec *s, int ready_fd)
{
    struct sup x = {.s = s, .child = -1};
    char path[PATH_MAX], buf[65536], slave_name[128];
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, inp[2] = {-1, -1}, rep[2], master = -1, slave = -1;
    int in_child = -1, stdin_w = -1, stdin_closed = 0;
    unsigned long long stdin_sent = 0;

    prctl(PR_SET_NAME, SUPERVISOR_NAME);
    close_fds_from(3, ready_fd, -1);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, 0), dup2(devnull, 1);
    signal(SIGPIPE, SIG_IGN);
    if (chdir("/")) {
        /* nothing holds a directory busy either way */
    }
    proc_path(path, sizeof path, s->id, NULL);
    x.dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    proc_path(path, sizeof path, s->id, "ctl");
    int ctl = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW); /* read-write: never sees EOF */
    if (cgroup_root) {
        snprintf(x.cgroup, sizeof x.cgroup, "%s/%s", cgroup_root, s->id);
        if (mkdir(cgroup_root, 0755) && errno != EEXIST) x.cgroup[0] = 0;
        if (x.cgroup[0] && mkdir(x.cgroup, 0755) && errno != EEXIST) x.cgroup[0] = 0;
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

    if (s->pty) {
        struct winsize ws = {.ws_row = (unsigned short)s->rows, .ws_col = (unsigned short)s->cols};
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) || unlockpt(master) || ptsname_r(master, slave_name, sizeof slave_name))
            finish(&x, "exec_failed");
        ioctl(master, TIOCSWINSZ, &ws);
        /* held until the child has it: a master without any slave open reads EIO */
        slave = open(slave_name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0) finish(&x, "exec_failed");
        stdin_w = s->stdin_pipe ? master : -1;
        in_child = slave;
    } else {
        if (pipe2(outp, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) finish(&x, "exec_failed");
        if (s->stdin_pipe) {
            if (pipe2(inp, O_CLOEXEC)) finish(&x, "exec_failed");
            in_child = inp[0], stdin_w = inp[1];
        } else {
            in_child = devnull;
        }
    }
    if (pipe2(rep, O_CLOEXEC)) finish(&x, "exec_failed");
    x.child = fork();
    if (x.child == 0) {
        close(rep[0]);
        child_main(&x, in_child, outp[1], errp[1], slave, rep[1]);
    }
    close(rep[1]);
    if (outp[1] >= 0) close(outp[1]), close(errp[1]);
    if (inp[0] >= 0) close(inp[0]);
    struct exec_report report = {0, 0};
    ssize_t got;
    while ((got = read(rep[0], &report, sizeof report)) < 0 && errno == EINTR) {
    }
    close(rep[0]);
    if (slave >= 0) close(slave); /* the child has its own now (or is gone) */
    long long started = now_ms();
    int n = snprintf(buf, sizeof buf, "%d %d %lld\n", (int)getpid(), (int)x.child, started);
    proc_path(path, sizeof path, s->id, "sup");
    write_atomic(path, buf, (size_t)n);
    if (x.child < 0 || got > 0) {
        if (x.child > 0) waitpid(x.child, &x.wstatus, 0);
        if (x.child < 0) x.wstatus = 126 << 8;
        /* the child's message is in its stderr pipe: keep it */
        if (errp[0] >= 0)
            while ((got = read(errp[0], buf, sizeof buf)) > 0) keep_output(&x, 2, buf, (size_t)got);
        if (master >= 0) {
            fcntl(master, F_SETFL, O_NONBLOCK);
            while ((got = read(master, buf, sizeof buf)) > 0) keep_output(&x, 1, buf, (size_t)got);
        }
        int notfound = report.stage == 3 && (report.err == ENOENT || report.err == ENOTDIR);
        int denied = report.stage == 3 && report.err == EACCES;
        finish(&x, notfound ? "command_not_found" : denied ? "permission_denied" : "exec_failed");
        /* ready_fd closes as we exit: proc.start answers with the status already written */
    }
    close(ready_fd);

    long long deadline = s->timeout_ms ? mono_ms() + (long long)s->timeout_ms : 0;
    int out_open = master >= 0 ? 1 : 2; /* output fds still open */
    int fds_out[2] = {master >= 0 ? master : outp[0], master >= 0 ? -1 : errp[0]};
    if (stdin_w >= 0) fcntl(stdin_w, F_SETFL, fcntl(stdin_w, F_GETFL) | O_NONBLOCK);
    char ctlbuf[512];
    size_t ctl_len = 0;
    for (;;) {
        /* stdin: new bytes in the file, and EOF once every byte before it was delivered */
        long long in_size = stdin_w >= 0 && !stdin_closed ? file_size(s->id, "stdin") : -1;
        if (stdin_w >= 0 && !stdin_closed && (unsigned long long)in_size == stdin_sent) {
            char eofbuf[32];
            if (read_proc_file(s->id, "stdin.eof", eofbuf, sizeof eofbuf) == 0 &&
                (unsigned long long)atoll(eofbuf) <= stdin_sent) {
                if (master >= 0) {
                    struct termios t;
                    char eof_char = tcgetattr(master, &t) == 0 ? (char)t.c_cc[VEOF] : 4;
                    if (write(master, &eof_char, 1) < 0) {
                        /* the process is gone */
                    }
                } else {
                    close(stdin_w);
                }
                stdin_closed = 1;
            }
        }
        if (x.child_done && (out_open == 0 || master >= 0)) {
            if (master >= 0) { /* drain what the child wrote; a leftover holding the slave must not keep us */
                fcntl(master, F_SETFL, O_NONBLOCK);
                while ((got = read(master, buf, sizeof buf)) > 0) keep_output(&x, 1, buf, (size_t)got);
            }
            finish(&x, NULL);
        }
        struct pollfd pfd[5];
        int np = 0, i_sig = -1, i_ctl = -1, i_out[2] = {-1, -1}, i_in = -1;
        if (sfd >= 0) i_sig = np, pfd[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        if (ctl >= 0) i_ctl = np, pfd[np++] = (struct pollfd){.fd = ctl, .events = POLLIN};
        for (int k = 0; k < 2; k++)
            if (fds_out[k] >= 0) i_out[k] = np, pfd[np++] = (struct pollfd){.fd = fds_out[k], .events = POLLIN};
        int want_in = stdin_w >= 0 && !stdin_closed && in_size > (long long)stdin_sent;
        if (want_in && master < 0) i_in = np, pfd[np++] = (struct pollfd){.fd = stdin_w, .events = POLLOUT};
        if (want_in && master >= 0) pfd[i_out[0]].events |= POLLOUT;
        int timeout = -1;
        if (deadline && !x.timed_out) timeout = (int)(deadline - mono_ms() > 0 ? deadline - mono_ms() : 0);
        if (sfd < 0 && !x.child_done && (timeout < 0 || timeout > 200)) timeout = 200; /* no signalfd: poll waitpid */
        int rc = poll(pfd, (nfds_t)np, timeout);
        if (rc < 0 && errno != EINTR) sleep_ms(10);
        if (deadline && !x.timed_out && mono_ms() >= deadline) {
            x.timed_out = 1;
            kill_all(&x, SIGKILL);
        }
        if (rc <= 0 && sfd >= 0) continue;
        if (i_sig >= 0 && pfd[i_sig].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
        }
        if (!x.child_done && waitpid(x.child, &x.wstatus, WNOHANG) == x.child) x.child_done = 1;
        for (int k = 0; k < 2; k++) {
            if (i_out[k] < 0 || !(pfd[i_out[k]].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            got = read(fds_out[k], buf, sizeof buf);
            if (got > 0) {
                keep_output(&x, k + 1, buf, (size_t)got);
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                /* a PTY master reads EIO once every slave closed: its output is over, the exit follows */
                close(fds_out[k]);
                if (fds_out[k] == master) master = -1, stdin_w = -1;
                fds_out[k] = -1;
                out_open--;
            }
        }
        int can_write = (i_in >= 0 && (pfd[i_in].revents & POLLOUT)) ||
                        (master >= 0 && i_out[0] >= 0 && (pfd[i_out[0]].revents & POLLOUT));
        if (want_in && can_write) {
            int fd = openat(x.dirfd, "stdin", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            if (fd >= 0) {
                got = pread(fd, buf, sizeof buf, (off_t)stdin_sent);
                close(fd);
                if (got > 0) {
                    ssize_t w = write(stdin_w, buf, (size_t)got);
                    if (w > 0) stdin_sent += (unsigned long long)w;
                    if (w < 0 && errno == EPIPE) {
                        /* the process closed its stdin: drop what it will never read */
                        stdin_sent = (unsigned long long)in_size;
                    }
                }
            }
        }
        if (i_ctl >= 0 && (pfd[i_ctl].revents & POLLIN)) {
            got = read(ctl, ctlbuf + ctl_len, sizeof ctlbuf - 1 - ctl_len);
            if (got > 0) ctl_len += (size_t)got;
            ctlbuf[ctl_len] = 0;
            char *line = ctlbuf, *nl;
            while ((nl = strchr(line, '\n'))) {
                unsigned a = 0, b = 0;
                *nl = 0;
                if (line[0] == 'k' && sscanf(line + 1, "%u", &a) == 1 && a >= 1 && a <= 64) {
                    kill_all(&x, (int)a);
                } else if (line[0] == 'r' && sscanf(line + 1, "%u %u", &a, &b) == 2 && master >= 0) {
                    struct winsize ws = {.ws_row = (unsigned short)a, .ws_col = (unsigned short)b};
                    ioctl(master, TIOCSWINSZ, &ws);
                }
                line = nl + 1; /* 'w' and 'e': the loop rereads stdin and stdin.eof anyway */
            }
            ctl_len = strlen(line);
            memmove(ctlbuf, line, ctl_len);
            if (ctl_len == sizeof ctlbuf - 1) ctl_len = 0; /* a line that long is not ours */
        }
    }
}

/* ---- the other proc.* methods --------------------------------------------------------------- */

static const char *id_param(const struct jval *p, const char *const *allowed, const char **id)
{
    const char *err = check_params(p, allowed);
    if (err) return err;
    if (!(*id = json_cstr(json_get(p, "id"))) || valid_proc_id(*id)) return "id must match [a-z0-9][a-z0-9-]{0,39}";
    if (file_size(*id, "spec") < 0) return fail("no such process: %s", *id);
    return NULL;
}

const char *m_proc_show(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", NULL};
    const char *id, *err = id_param(p, allowed, &id);
    if (err) return err;
    if (proc_info(o, id)) return fail("no such process: %s", id);
    return NULL;
}

const char *m_proc_list(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {NULL};
    const char *err = check_params(p, allowed);
    int truncated = 0;
    if (err) return err;
    DIR *d = opendir(procs_dir);
    struct dirent *e;
    out_raw(o, "{\"procs\":[", 10);
    int first = 1;
    while (d && (e = readdir(d))) {
        if (valid_proc_id(e->d_name)) continue;
        size_t mark = o->len;
        if (!first) out_raw(o, ",", 1);
        if (proc_info(o, e->d_name) || o->full || o->len > MAX_LINE - 64) {
            truncated |= o->full || o->len > MAX_LINE - 64;
            o->len = mark, o->full = 0;
            if (truncated) break;
            continue;
        }
        first = 0;
    }
    if (d) closedir(d);
    out_raw(o, "]", 1);
    if (truncated) out_raw(o, ",\"truncated\":true", 17);
    out_raw(o, "}", 1);
    return NULL;
}

const char *m_proc_signal(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", "signal", NULL};
    const char *id, *err = id_param(p, allowed, &id);
    unsigned long long sig = 0;
    char msg[32];
    if (err || (err = uint_param(p, "signal", 1, 64, &sig))) return err;
    if (!sig) return "signal must be an integer from 1 to 64";
    if (!proc_running(id)) return fail("process has ended: %s", id);
    snprintf(msg, sizeof msg, "k %llu\n", sig);
    notify(id, msg);
    proc_info(o, id);
    return NULL;
}

const char *m_proc_resize(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", "rows", "cols", NULL};
    const char *id, *err = id_param(p, allowed, &id);
    unsigned long long rows = 0, cols = 0;
    char msg[48];
    if (err || (err = uint_param(p, "rows", 1, 65535, &rows)) || (err = uint_param(p, "cols", 1, 65535, &cols)))
        return err;
    if (!rows || !cols) return "rows and cols are required (1-65535)";
    if (!proc_running(id)) return fail("process has ended: %s", id);
    snprintf(msg, sizeof msg, "r %llu %llu\n", rows, cols);
    notify(id, msg);
    out_raw(o, "{}", 2);
    return NULL;
}

static int stdin_is_pipe(const char *id)
{
    char spec[MAX_LINE + 1];
    const char *err;
    if (read_proc_file(id, "spec", spec, sizeof spec)) return 0;
    struct jdoc *d = json_parse(spec, strlen(spec), &err);
    const char *mode = d ? json_cstr(json_get(json_root(d), "stdin")) : NULL;
    int pipe_in = mode && !strcmp(mode, "pipe");
    json_free(d);
    return pipe_in;
}

const char *proc_stdin_append(const char *id, unsigned long long offset, const char *data, size_t n,
                              unsigned long long *total)
{
    char path[PATH_MAX];
    struct stat st;
    if (!stdin_is_pipe(id)) return fail("stdin of %s is not a pipe (start it with stdin: \"pipe\")", id);
    if (file_size(id, "stdin.eof") >= 0) return fail("stdin of %s is closed", id);
    if (!proc_running(id)) return fail("process has ended: %s", id);
    if (proc_path(path, sizeof path, id, "stdin")) return "path too long";
    int fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st)) {
        if (fd >= 0) close(fd);
        return fail_errno(errno, path);
    }
    unsigned long long have = (unsigned long long)st.st_size;
    if (offset > have) {
        close(fd);
        return fail("stdin gap: have %llu", have);
    }
    unsigned long long skip = have - offset; /* already accepted: a retried write */
    if (skip < n) {
        if (write_all(fd, data + skip, n - (size_t)skip)) {
            int e = errno;
            close(fd);
            return fail_errno(e, path);
        }
        have += n - skip;
    }
    close(fd);
    *total = have;
    notify(id, "w\n");
    return NULL;
}

const char *proc_stdin_eof(const char *id, unsigned long long *total)
{
    char path[PATH_MAX], text[32];
    if (!stdin_is_pipe(id)) return fail("stdin of %s is not a pipe (start it with stdin: \"pipe\")", id);
    long long size = file_size(id, "stdin");
    if (read_proc_file(id, "stdin.eof", text, sizeof text) == 0) {
        *total = (unsigned long long)atoll(text);
        return NULL; /* idempotent */
    }
    if (size < 0) return fail("no such process: %s", id);
    int n = snprintf(text, sizeof text, "%lld\n", size);
    if (proc_path(path, sizeof path, id, "stdin.eof") || write_atomic(path, text, (size_t)n))
        return fail_errno(errno, path);
    *total = (unsigned long long)size;
    notify(id, "e\n");
    return NULL;
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict base64 (padding optional); -1 when malformed or longer than cap. */
static long b64decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    while (n > 0 && in[n - 1] == '=') n--;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap) return -1;
            out[o++] = (char)(acc >> bits & 0xff);
        }
    }
    return (long)o;
}

const char *m_proc_stdin(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", "offset", "data", NULL};
    static char data[MAX_STDIN_CHUNK];
    const char *id, *err = id_param(p, allowed, &id);
    unsigned long long offset = ~0ULL, total;
    const struct jval *d = json_get(p, "data");
    if (err || (err = uint_param(p, "offset", 0, 1ULL << 53, &offset))) return err;
    if (offset == ~0ULL) return "offset is required";
    if (!d || d->type != J_STR) return "data must be a base64 string";
    long n = b64decode(d->str, d->len, data, sizeof data);
    if (n < 0) return "data must be base64 of at most 48 KiB";
    if ((err = proc_stdin_append(id, offset, data, (size_t)n, &total))) return err;
    out_fmt(o, "{\"offset\":%llu}", total);
    return NULL;
}

const char *m_proc_eof(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", NULL};
    const char *id, *err = id_param(p, allowed, &id);
    unsigned long long total;
    if (err || (err = proc_stdin_eof(id, &total))) return err;
    out_fmt(o, "{\"offset\":%llu}", total);
    return NULL;
}

const char *m_proc_forget(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"id", NULL};
    const char *id, *err = id_param(p, allowed, &id);
    if (err) return err;
    if (proc_running(id)) return fail("process is running: %s (signal it first)", id);
    int dfd = open(procs_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return fail_errno(errno, procs_dir);
    int rc = remove_tree_at(dfd, id, 0);
    int e = errno;
    close(dfd);
    if (rc) return fail_errno(e, id);
    out_raw(o, "{}", 2);
    return NULL;
}

/* ---- start-up -------------------------------------------------------------------------------- */

/* The procs directory and its boot_id, made on the first proc.start (not at start: an agent that never
 * starts a process, e.g. under test, leaves no trace). */
static int procs_dir_ready(void)
{
    char boot[64] = "", path[PATH_MAX];
    if (mkdir_parents(procs_dir, 0700)) return -1;
    snprintf(path, sizeof path, "%s/boot_id", procs_dir);
    if (access(path, F_OK) == 0) return 0;
    if (read_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot) > 0) trim_right(boot);
    size_t n = strlen(boot);
    boot[n] = '\n';
    return write_atomic(path, boot, n + 1);
}

void procs_init(void)
{
    char boot[64] = "", seen[64] = "", path[PATH_MAX];
    struct statfs fs;
    if (strlen(procs_dir) > 1024) {
        say("--procs-dir is too long (max 1024 bytes)");
        exit(2);
    }
    if (read_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot) > 0) trim_right(boot);
    snprintf(path, sizeof path, "%s/boot_id", procs_dir);
    if (read_file(path, seen, sizeof seen) >= 0) trim_right(seen);
    int dfd = open(procs_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dfd >= 0 && strcmp(boot, seen)) { /* another boot's processes: their supervisors are long gone */
        DIR *d = fdopendir(dup(dfd));
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) remove_tree_at(dfd, e->d_name, 0);
        if (d) closedir(d);
        procs_dir_ready();
    }
    if (dfd >= 0) close(dfd);
    if (!cgroup_root) return;
    /* only under a cgroup v2 hierarchy (not v1, not a plain directory); the supervisor makes the root */
    snprintf(path, sizeof path, "%s", cgroup_root);
    char *slash = strrchr(path, '/');
    if (slash && slash != path) *slash = 0;
    if (strlen(cgroup_root) > 1024 || statfs(path, &fs) || fs.f_type != CGROUP2_SUPER_MAGIC) {
        say("no cgroup v2 at %s: processes are killed by process group only", path);
        cgroup_root = NULL;
    }
}
