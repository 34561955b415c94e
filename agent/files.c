/*
 * fs.* methods of the control channel (docs/processes.md): small metadata operations on the
 * guest's files. Bulk content goes over the data channels (data.c). A symlink is never followed
 * where the contract says so: stat is lstat, remove unlinks the link, a recursive remove walks
 * with directory fds and O_NOFOLLOW.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>
#include <sys/syscall.h>

#include "agent.h"
#include "common.h"

#define MAX_LIST 10000
#define MAX_REMOVE_DEPTH 256

static const struct {
    int err;
    const char *name;
} errno_names[] = {
    {ENOENT, "ENOENT"},       {EEXIST, "EEXIST"}, {ENOTDIR, "ENOTDIR"},
    {EISDIR, "EISDIR"},       {EACCES, "EACCES"}, {EPERM, "EPERM"},
    {ENOTEMPTY, "ENOTEMPTY"}, {EINVAL, "EINVAL"}, {ELOOP, "ELOOP"},
    {EXDEV, "EXDEV"},         {ENOSPC, "ENOSPC"}, {EROFS, "EROFS"},
    {EBUSY, "EBUSY"},         {EIO, "EIO"},       {ENAMETOOLONG, "ENAMETOOLONG"},
};

const char *fail_errno(int err, const char *path)
{
    const char *name = "EIO";
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (errno_names[i].err == err) name = errno_names[i].name;
    return fail("%s: %s: %.900s", name, strerror(err), path);
}

int valid_path(const char *path)
{
    return path && path[0] == '/' && strlen(path) < PATH_MAX ? 0 : -1;
}

static const char *path_param(const struct jval *p, const char *key, const char **path)
{
    if (!(*path = json_cstr(json_get(p, key))) || valid_path(*path))
        return fail("%s must be an absolute path without NUL bytes", key);
    return NULL;
}

static const char *bool_param(const struct jval *p, const char *key, int *v)
{
    const struct jval *j = json_get(p, key);
    *v = 0;
    if (!j || j->type == J_NULL) return NULL;
    if (j->type != J_BOOL) return fail("%s must be true or false", key);
    *v = j->boolean;
    return NULL;
}

int mkdir_parents(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    struct stat st;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return errno = ENAMETOOLONG, -1;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, mode) != 0 && errno != EEXIST) return -1;
        if (stat(buf, &st) != 0) return -1;
        if (!S_ISDIR(st.st_mode)) return errno = ENOTDIR, -1;
        if (!c) return 0;
        *p = '/';
        while (p[1] == '/') p++;
        if (!p[1]) return 0;
    }
}

int remove_tree_at(int dirfd, const char *name, int depth)
{
    struct stat st;
    if (depth > MAX_REMOVE_DEPTH) return errno = ELOOP, -1;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) return errno == ENOENT && depth == 0 ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlinkat(dirfd, name, 0);
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *d = fdopendir(fd);
    if (!d) return close_keep_errno(fd), -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && remove_tree_at(fd, e->d_name, depth + 1)) rc = -1;
    int saved = errno;
    closedir(d);
    if (rc) return errno = saved, -1;
    return unlinkat(dirfd, name, AT_REMOVEDIR);
}

static const char *type_of(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

static long long mtime_ms(const struct stat *st)
{
    return (long long)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

const char *m_fs_stat(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"path", NULL};
    const char *path, *err;
    struct stat st;
    if ((err = check_params(p, allowed)) || (err = path_param(p, "path", &path))) return err;
    if (lstat(path, &st)) return fail_errno(errno, path);
    out_fmt(o, "{\"type\":\"%s\",\"mode\":%u,\"size\":%lld,\"mtime_ms\":%lld,\"uid\":%u,\"gid\":%u",
            type_of(st.st_mode), (unsigned)(st.st_mode & 07777), (long long)st.st_size, mtime_ms(&st),
            (unsigned)st.st_uid, (unsigned)st.st_gid);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n >= 0) {
            out_raw(o, ",\"link_target\":", 15);
            out_str(o, target, (size_t)n);
        }
    }
    out_raw(o, "}", 1);
    return NULL;
}

const char *m_fs_list(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"path", NULL};
    const char *path, *err;
    int truncated = 0, count = 0;
    if ((err = check_params(p, allowed)) || (err = path_param(p, "path", &path))) return err;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_errno(errno, path);
    DIR *d = fdopendir(fd);
    if (!d) return close(fd), fail_errno(errno, path);
    struct dirent *e;
    out_raw(o, "{\"entries\":[", 12);
    while ((e = readdir(d))) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue; /* gone meanwhile */
        size_t mark = o->len;
        if (count == MAX_LIST) {
            truncated = 1;
            break;
        }
        if (count) out_raw(o, ",", 1);
        out_raw(o, "{\"name\":", 8);
        out_cstr(o, e->d_name);
        out_fmt(o, ",\"type\":\"%s\",\"mode\":%u,\"size\":%lld,\"mtime_ms\":%lld}", type_of(st.st_mode),
                (unsigned)(st.st_mode & 07777), (long long)st.st_size, mtime_ms(&st));
        if (o->full || o->len > MAX_LINE - 64) { /* one line: keep room to close it */
            o->len = mark, o->full = 0, truncated = 1;
            break;
        }
        count++;
    }
    closedir(d);
    out_fmt(o, "],\"truncated\":%s}", truncated ? "true" : "false");
    return NULL;
}

const char *m_fs_mkdir(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"path", "mode", "parents", NULL};
    const char *path, *err;
    const struct jval *m = json_get(p, "mode");
    int parents;
    mode_t mode = 0755;
    if ((err = check_params(p, allowed)) || (err = path_param(p, "path", &path)) ||
        (err = bool_param(p, "parents", &parents)))
        return err;
    if (m && m->type != J_NULL) {
        if (m->type != J_NUM || !m->is_uint || m->uint > 07777) return "mode must be an integer from 0 to 4095";
        mode = (mode_t)m->uint;
    }
    if (parents ? mkdir_parents(path, mode) : mkdir(path, mode)) return fail_errno(errno, path);
    if (m && m->type != J_NULL) chmod(path, mode); /* exactly the mode asked for, whatever the umask */
    out_raw(o, "{}", 2);
    return NULL;
}

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif

const char *m_fs_move(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"from", "to", "overwrite", NULL};
    const char *from, *to, *err;
    int overwrite;
    struct stat st;
    if ((err = check_params(p, allowed)) || (err = path_param(p, "from", &from)) || (err = path_param(p, "to", &to)) ||
        (err = bool_param(p, "overwrite", &overwrite)))
        return err;
    if (overwrite) {
        if (rename(from, to)) return fail_errno(errno, from);
    } else if (syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE)) {
        if (errno != EINVAL && errno != ENOSYS) return fail_errno(errno, errno == EEXIST ? to : from);
        /* a filesystem without RENAME_NOREPLACE: check, then rename (not atomic, the best it offers) */
        if (lstat(to, &st) == 0) return fail_errno(EEXIST, to);
        if (rename(from, to)) return fail_errno(errno, from);
    }
    out_raw(o, "{}", 2);
    return NULL;
}

const char *m_fs_remove(struct out *o, const struct jval *p)
{
    static const char *const allowed[] = {"path", "recursive", NULL};
    const char *path, *err;
    int recursive;
    struct stat st;
    if ((err = check_params(p, allowed)) || (err = path_param(p, "path", &path)) ||
        (err = bool_param(p, "recursive", &recursive)))
        return err;
    if (!strcmp(path, "/")) return "refusing to remove /";
    if (lstat(path, &st)) return fail_errno(errno, path);
    if (S_ISDIR(st.st_mode) && recursive) {
        if (remove_tree_at(AT_FDCWD, path, 1)) return fail_errno(errno, path);
    } else if (S_ISDIR(st.st_mode) ? rmdir(path) : unlink(path)) {
        return fail_errno(errno, path);
    }
    out_raw(o, "{}", 2);
    return NULL;
}
