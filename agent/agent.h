/*
 * What banger-agent's files share (banger-agent.c: control channel; json.c: the bounded JSON
 * parser; procs.c: the process supervisor and proc.* methods; files.c: fs.* methods; data.c: the
 * data-channel workers and their sessions; identity.c: identity.set; freeze.c: fs.freeze/fs.thaw). Contract:
 * docs/processes.md.
 */
#ifndef BANGER_AGENT_H
#define BANGER_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MAX_LINE 65536 /* bytes per control line, newline excluded; the host enforces the same */

/* ---- configuration (set once by main, inherited by every forked worker) ---------------------- */

extern const char *procs_dir;   /* --procs-dir, default /var/lib/banger/procs */
extern const char *cgroup_root; /* --cgroup-root, default /sys/fs/cgroup/banger; NULL = no cgroups */

/* ---- reply buffer: one line, never longer than MAX_LINE ----------------------------------- */

struct out {
    size_t len;
    int full; /* something did not fit: the reply must not be sent as is */
    char buf[MAX_LINE + 1];
};

void out_raw(struct out *o, const char *s, size_t n);
void out_fmt(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void out_str(struct out *o, const char *s, size_t n); /* a JSON string; bad UTF-8 becomes U+FFFD */
void out_cstr(struct out *o, const char *s);

/* ---- bounded JSON (json.c) ------------------------------------------------------------------ */

#define JSON_MAX_DEPTH 9      /* the request object plus 8 levels of params */
#define JSON_MAX_STRING 65536 /* decoded bytes per string */
#define JSON_MAX_ARRAY 4096   /* entries per array (and members per object) */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype type;
    int boolean;
    int is_uint; /* J_NUM: an integer in 0..2^53-1 (then uint holds it) */
    unsigned long long uint;
    char *str;  /* J_STR: decoded, NUL-terminated (may hold NULs: see len) */
    size_t len; /* J_STR: bytes; J_ARR/J_OBJ: entries */
    char *key;  /* a member of an object: its name (NUL-terminated) */
    size_t key_len;
    struct jval *first; /* J_ARR/J_OBJ: first entry */
    struct jval *next;  /* the next entry of the parent */
};

struct jdoc; /* owns every jval of one parse */

/* Parses a whole text; NULL with *err set ("invalid JSON" ...) when it is not JSON. */
struct jdoc *json_parse(const char *text, size_t n, const char **err);
struct jval *json_root(struct jdoc *d);
/* Set when the text was valid JSON but broke a bound (depth, entries, string length): the caller
 * refuses the request, answering with its id. */
const char *json_limit_error(struct jdoc *d);
void json_free(struct jdoc *d);

struct jval *json_get(const struct jval *obj, const char *key); /* NULL when missing (or obj not an object) */
/* A C string without NULs (NULL when v is not such a string). */
const char *json_cstr(const struct jval *v);
const char *json_strings(const struct jval *v, const char *what, char ***out, int need_one);

/* ---- methods: fill o with a result, or return an error message ------------------------------ */

/* A formatted error message in a static buffer (the control loop is single-threaded). */
const char *fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "unknown param X" for the first member of params not in allowed (NULL-terminated); params may be NULL. */
const char *check_params(const struct jval *params, const char *const *allowed);

const char *m_proc_start(struct out *o, const struct jval *p);
const char *m_proc_list(struct out *o, const struct jval *p);
const char *m_proc_show(struct out *o, const struct jval *p);
const char *m_proc_signal(struct out *o, const struct jval *p);
const char *m_proc_resize(struct out *o, const struct jval *p);
const char *m_proc_stdin(struct out *o, const struct jval *p);
const char *m_proc_eof(struct out *o, const struct jval *p);
const char *m_proc_forget(struct out *o, const struct jval *p);

const char *m_fs_stat(struct out *o, const struct jval *p);
const char *m_fs_list(struct out *o, const struct jval *p);
const char *m_fs_mkdir(struct out *o, const struct jval *p);
const char *m_fs_move(struct out *o, const struct jval *p);
const char *m_fs_remove(struct out *o, const struct jval *p);

/* warm start (identity.c, freeze.c) */
const char *m_identity_set(struct out *o, const struct jval *p);
const char *m_fs_freeze(struct out *o, const struct jval *p);
const char *m_fs_thaw(struct out *o, const struct jval *p);

/* ---- shared process helpers (procs.c) ------------------------------------------------------- */

/* Prepares the procs directory at start: wipes the process dirs of an earlier boot. */
void procs_init(void);
/* 0 when id matches [a-z0-9][a-z0-9-]{0,39}. */
int valid_proc_id(const char *id);
/* Writes the proc info object of id into o; -1 (errno) when there is no such process. */
int proc_info(struct out *o, const char *id);
/* 1 while the process's supervisor runs (and no status was written). */
int proc_running(const char *id);
/* Appends data to the process's stdin from offset (idempotent); the new total or NULL + error. */
const char *proc_stdin_append(const char *id, unsigned long long offset, const char *data, size_t n,
                              unsigned long long *total);
const char *proc_stdin_eof(const char *id, unsigned long long *total);

/* ---- files (files.c) ------------------------------------------------------------------------ */

/* "ENOENT: No such file or directory: PATH" (errno's name first, so the host can map it). */
const char *fail_errno(int err, const char *path);
/* Removes a tree without following any symlink (dirfd-relative walk). 0 or -1 with errno. */
int remove_tree_at(int dirfd, const char *name, int depth);
/* mkdir -p; existing directories are fine. 0 or -1 with errno. */
int mkdir_parents(const char *path, mode_t mode);
/* 0 when path is absolute, without NULs and at most PATH_MAX. */
int valid_path(const char *path);

/* ---- data channels (data.c) ----------------------------------------------------------------- */

/* Forks the data-channel workers: one per --data path, else a manager for the virtio ports
 * org.banger.data.0..3 and vsock port 1023. Each dies with the agent (PR_SET_PDEATHSIG). */
void data_start(const char *const *paths, int npaths);

/* helpers from banger-agent.c */
int write_all(int fd, const char *p, size_t n);
int find_virtio_port_named(const char *name, char *dev, size_t cap);
int open_channel(const char *path);
void trim_right(char *s);
long long now_ms(void);  /* wall clock, ms since the epoch */
long long mono_ms(void); /* CLOCK_MONOTONIC, ms */
void close_fds_from(int lowest, int keep1, int keep2);

#endif
