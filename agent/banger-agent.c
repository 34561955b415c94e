/*
 * banger-agent: the guest end of banger's agent channel.
 *
 * Protocol: newline-delimited JSON, one object per line, at most MAX_LINE bytes per line (without
 * the newline), in both directions.
 *   request   {"id":<uint>,"method":"health"|"ports"|"stats"|"ping"|"poweroff"}     (other fields ignored)
 *   response  {"id":<same>,"ok":true,"result":{...}}  |  {"id":<same>,"ok":false,"error":"..."}
 * Requests that cannot be trusted (invalid JSON, over-long line, bad id) are answered with id 0.
 *
 * Channels: the QEMU virtio-serial port org.banger.agent, AF_VSOCK (Firecracker), a path given
 * with --device, or stdin/stdout (--stdio, for tests).
 *
 * Statically linked so the same binary runs on glibc and musl distros; it may run under systemd,
 * from banger-init, or as PID 1 itself, and must never exit because of what the host sends.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "agent.h"
#include "common.h"

#define AGENT_VERSION "0.1.0"
#define MAX_PORTS 1024
#define MAX_COMMAND 256 /* bytes of a process command line in `ports` */
#define MAX_CLIENTS 8   /* simultaneous vsock connections */
#define VIRTIO_PORT_NAME "org.banger.agent"
#define DEFAULT_VSOCK_PORT 1024
#define MAX_SAFE_ID 9007199254740991ULL /* 2^53-1: ids must survive a JavaScript number */

const char log_name[] = "banger-agent";

void trim_right(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = 0;
}

/* ---- reply buffer: one line, never longer than MAX_LINE ------------------------------------ */

void out_raw(struct out *o, const char *s, size_t n)
{
    if (o->full || n > MAX_LINE - o->len) {
        o->full = 1;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

void out_fmt(struct out *o, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        o->full = 1;
    else
        out_raw(o, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at p, or 0: the host decodes strictly, so bad bytes become U+FFFD. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0], cp, min;
    size_t k;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        k = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        k = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (k > n) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return k;
}

void out_str(struct out *o, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    out_raw(o, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            out_raw(o, e, 2);
            i++;
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            out_raw(o, e, 6);
            i++;
        } else if (c < 0x80) {
            out_raw(o, (const char *)s + i, 1);
            i++;
        } else {
            size_t k = utf8_len(s + i, n - i);
            if (k)
                out_raw(o, (const char *)s + i, k);
            else
                out_raw(o, "\\ufffd", 6);
            i += k ? k : 1;
        }
    }
    out_raw(o, "\"", 1);
}

void out_cstr(struct out *o, const char *s)
{
    out_str(o, s, strlen(s));
}

/* ---- requests ------------------------------------------------------------------------------ */

struct request {
    unsigned long long id;
    const char *method; /* NULL when missing or not a string */
    size_t method_len;
    const struct jval *params; /* NULL when absent */
};

/* Returns NULL or an error message; rq->id is only meaningful when the JSON was valid. */
static const char *parse_request(struct jdoc *d, struct request *rq)
{
    const struct jval *root = json_root(d), *id, *method;
    memset(rq, 0, sizeof *rq);
    if (root->type != J_OBJ) return "request must be a JSON object";
    id = json_get(root, "id");
    if (id && id->type != J_NULL) {
        if (id->type != J_NUM || !id->is_uint) return "invalid id: must be an integer from 0 to 2^53-1";
        rq->id = id->uint;
    }
    method = json_get(root, "method");
    if (method && method->type == J_STR) rq->method = method->str, rq->method_len = method->len;
    rq->params = json_get(root, "params");
    return NULL;
}

static char errbuf[1024];

const char *fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return errbuf;
}

const char *check_params(const struct jval *params, const char *const *allowed)
{
    if (!params || params->type == J_NULL) return NULL;
    if (params->type != J_OBJ) return "params must be an object";
    for (const struct jval *e = params->first; e; e = e->next) {
        int known = 0;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strlen(*a) == e->key_len && !memcmp(*a, e->key, e->key_len);
        if (!known) return fail("unknown param %.64s", e->key);
    }
    return NULL;
}

/* ---- methods --------------------------------------------------------------------------------- */

static const char *m_ping(struct out *o, const struct jval *p)
{
    (void)p; /* these methods take no params; unknown fields are ignored as before */
    out_raw(o, "{}", 2);
    return NULL;
}

static const char *m_health(struct out *o, const struct jval *p)
{
    (void)p; /* these methods take no params; unknown fields are ignored as before */
    struct utsname u;
    char boot[64] = "";
    if (uname(&u) != 0) u.nodename[0] = 0;
    if (read_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot) > 0) trim_right(boot);
    out_fmt(o, "{\"ready\":true,\"uptime_s\":%.2f,\"agent_version\":\"" AGENT_VERSION "\",\"hostname\":", uptime_s());
    out_cstr(o, u.nodename);
    out_raw(o, ",\"boot_id\":", 11);
    out_cstr(o, boot);
    out_raw(o, "}", 1);
    return NULL;
}

static int meminfo_field(const char *text, const char *name, unsigned long long *kib)
{
    size_t n = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (!strncmp(l, name, n) && l[n] == ':') return sscanf(l + n + 1, "%llu", kib) == 1 ? 0 : -1;
    return -1;
}

static const char *m_stats(struct out *o, const struct jval *p)
{
    (void)p; /* these methods take no params; unknown fields are ignored as before */
    char buf[8192];
    unsigned long long total, avail;
    double l1, l5, l15;
    if (read_file("/proc/meminfo", buf, sizeof buf) <= 0 || meminfo_field(buf, "MemTotal", &total))
        return "cannot read /proc/meminfo";
    if (meminfo_field(buf, "MemAvailable", &avail) && meminfo_field(buf, "MemFree", &avail)) avail = 0;
    if (read_file("/proc/loadavg", buf, sizeof buf) <= 0 || sscanf(buf, "%lf %lf %lf", &l1, &l5, &l15) != 3)
        return "cannot read /proc/loadavg";
    out_fmt(o,
            "{\"mem_total_kib\":%llu,\"mem_available_kib\":%llu,\"load1\":%.2f,\"load5\":%.2f,\"load15\":%.2f,\"uptime_"
            "s\":%.2f}",
            total, avail, l1, l5, l15, uptime_s());
    return NULL;
}

struct sock_ent {
    unsigned long inode;
    int pid;
    int proto; /* index into proto_names */
    unsigned port;
    unsigned char addr[16];
};

static const char *const proto_names[] = {"tcp", "tcp6", "udp", "udp6"};
static struct sock_ent ents[MAX_PORTS];
static int nents;

/* /proc prints each 32-bit word of the address in host byte order, so a native copy restores it. */
static int decode_addr(const char *hex, unsigned char *addr, size_t words)
{
    if (strlen(hex) != words * 8) return -1;
    for (size_t w = 0; w < words; w++) {
        char tmp[9];
        memcpy(tmp, hex + w * 8, 8);
        tmp[8] = 0;
        uint32_t v = (uint32_t)strtoul(tmp, NULL, 16);
        memcpy(addr + w * 4, &v, 4);
    }
    return 0;
}

static int scan_net(int proto)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"};
    FILE *f = fopen(files[proto], "re");
    char line[512];
    if (!f) return -1;
    if (!fgets(line, sizeof line, f)) line[0] = 0; /* header */
    while (nents < MAX_PORTS && fgets(line, sizeof line, f)) {
        char la[40], ra[40];
        unsigned lp, rp, st;
        unsigned long inode;
        unsigned char raddr[16] = {0}, zero[16] = {0};
        size_t words = proto & 1 ? 4 : 1;
        struct sock_ent *e = &ents[nents];
        if (sscanf(line, " %*u: %39[0-9A-Fa-f]:%x %39[0-9A-Fa-f]:%x %x %*s %*s %*s %*u %*u %lu", la, &lp, ra, &rp, &st,
                   &inode) != 6)
            continue;
        if (decode_addr(la, e->addr, words) || decode_addr(ra, raddr, words)) continue;
        if (proto < 2 && st != 0x0A) continue; /* TCP_LISTEN */
        /* UDP has no listen state: an unconnected bound socket is TCP_CLOSE with no peer. */
        if (proto >= 2 && (st != 0x07 || rp != 0 || memcmp(raddr, zero, sizeof zero))) continue;
        e->inode = inode;
        e->pid = 0;
        e->proto = proto;
        e->port = lp & 0xffff;
        nents++;
    }
    fclose(f);
    return 0;
}

/* Socket inodes → owning pids, the same walk ss -p does. */
static void map_pids(void)
{
    DIR *proc = opendir("/proc");
    struct dirent *d;
    if (!proc) return;
    while ((d = readdir(proc))) {
        char path[64], target[64];
        if (!isdigit((unsigned char)d->d_name[0])) continue;
        int pid = atoi(d->d_name);
        snprintf(path, sizeof path, "/proc/%d/fd", pid);
        DIR *fds = opendir(path);
        if (!fds) continue; /* gone, or not ours to read */
        struct dirent *e;
        while ((e = readdir(fds))) {
            if (e->d_name[0] == '.') continue;
            ssize_t n = readlinkat(dirfd(fds), e->d_name, target, sizeof target - 1);
            if (n < 9 || memcmp(target, "socket:[", 8)) continue;
            target[n] = 0;
            unsigned long inode = strtoul(target + 8, NULL, 10);
            for (int i = 0; i < nents; i++)
                if (ents[i].inode == inode && !ents[i].pid) ents[i].pid = pid;
        }
        closedir(fds);
    }
    closedir(proc);
}

static void command_of(int pid, char *buf, size_t cap)
{
    char path[64], raw[4096];
    ssize_t n;
    buf[0] = 0;
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    n = read_file(path, raw, sizeof raw);
    for (ssize_t i = 0; i < n; i++)
        if (!raw[i]) raw[i] = ' ';
    if (n > 0) trim_right(raw);
    if (n <= 0 || !raw[0]) { /* kernel threads and zombies have no command line */
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        if (read_file(path, raw, sizeof raw) <= 0) return;
        trim_right(raw);
    }
    size_t len = strlen(raw), cut = len < cap - 1 ? len : cap - 1;
    /* don't cut a UTF-8 character in half (it would turn into U+FFFD) */
    for (int back = 0; cut < len && back < 3 && cut > 0 && ((unsigned char)raw[cut] & 0xc0) == 0x80; back++) cut--;
    memcpy(buf, raw, cut);
    buf[cut] = 0;
}

static const char *m_ports(struct out *o, const struct jval *p)
{
    (void)p; /* these methods take no params; unknown fields are ignored as before */
    int readable = 0, truncated = 0;
    nents = 0;
    for (int p = 0; p < 4; p++) readable += scan_net(p) == 0;
    if (!readable) return "cannot read /proc/net";
    if (nents == MAX_PORTS) truncated = 1;
    map_pids();
    out_raw(o, "{\"ports\":[", 10);
    for (int i = 0; i < nents; i++) {
        struct sock_ent *e = &ents[i];
        char addr[INET6_ADDRSTRLEN], cmd[MAX_COMMAND + 1] = "";
        size_t mark = o->len;
        if (!inet_ntop(e->proto & 1 ? AF_INET6 : AF_INET, e->addr, addr, sizeof addr)) continue;
        if (e->pid > 0) command_of(e->pid, cmd, sizeof cmd);
        out_fmt(o, "%s{\"proto\":\"%s\",\"address\":\"%s\",\"port\":%u,\"pid\":",
                mark > 0 && o->buf[mark - 1] != '[' ? "," : "", proto_names[e->proto], addr, e->port);
        if (e->pid > 0)
            out_fmt(o, "%d", e->pid);
        else
            out_raw(o, "null", 4);
        out_raw(o, ",\"command\":", 11);
        out_cstr(o, cmd);
        out_raw(o, "}", 1);
        /* the reply is one line of at most MAX_LINE bytes: keep room to close it, report the cut */
        if (o->full || o->len > MAX_LINE - 64) {
            o->len = mark;
            o->full = 0;
            truncated = 1;
            break;
        }
    }
    out_raw(o, "]", 1);
    if (truncated) out_raw(o, ",\"truncated\":true", 17);
    out_raw(o, "}", 1);
    return NULL;
}

/*
 * The host's graceful stop. The ACPI power button needs logind (and so dbus), which minimal images
 * lack; asking init directly works everywhere. The reply goes out first, then the request is acted on.
 */
static int poweroff_requested;

static const char *m_poweroff(struct out *o, const struct jval *p)
{
    (void)p; /* these methods take no params; unknown fields are ignored as before */
    poweroff_requested = 1;
    out_raw(o, "{}", 2);
    return NULL;
}

static void do_poweroff(void)
{
    char comm[32] = "";
    if (getpid() == 1) {
        power_off();
        return;
    }
    read_file("/proc/1/comm", comm, sizeof comm);
    /* systemd starts poweroff.target on SIGRTMIN+4; banger-init powers off on SIGPWR. */
    kill(1, strncmp(comm, "systemd", 7) == 0 ? SIGRTMIN + 4 : SIGPWR);
}

static const struct {
    const char *name;
    const char *(*fn)(struct out *, const struct jval *params);
} methods[] = {
    {"health", m_health},
    {"ports", m_ports},
    {"stats", m_stats},
    {"ping", m_ping},
    {"poweroff", m_poweroff},
    {"proc.start", m_proc_start},
    {"proc.list", m_proc_list},
    {"proc.show", m_proc_show},
    {"proc.signal", m_proc_signal},
    {"proc.resize", m_proc_resize},
    {"proc.stdin", m_proc_stdin},
    {"proc.eof", m_proc_eof},
    {"proc.forget", m_proc_forget},
    {"fs.stat", m_fs_stat},
    {"fs.list", m_fs_list},
    {"fs.mkdir", m_fs_mkdir},
    {"fs.move", m_fs_move},
    {"fs.remove", m_fs_remove},
    {"fs.freeze", m_fs_freeze},
    {"fs.thaw", m_fs_thaw},
    {"identity.set", m_identity_set},
};

/* ---- framing ------------------------------------------------------------------------------- */

int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1; /* EAGAIN included: vsock clients have a send timeout */
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int reply(int fd, struct out *o)
{
    o->buf[o->len++] = '\n';
    return write_all(fd, o->buf, o->len);
}

static int reply_error(int fd, unsigned long long id, const char *msg)
{
    static struct out o;
    o.len = 0, o.full = 0;
    out_fmt(&o, "{\"id\":%llu,\"ok\":false,\"error\":", id);
    out_cstr(&o, msg);
    out_raw(&o, "}", 1);
    return reply(fd, &o);
}

static int handle_line(int fd, const char *line, size_t n)
{
    static struct out o;
    struct request rq;
    size_t i;
    const char *err = NULL;
    const unsigned char *q = (const unsigned char *)line, *end = q + n;
    while (q < end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n')) q++;
    if (q == end) return 0; /* blank lines let the host resynchronise; no reply */
    struct jdoc *doc = json_parse(line, n, &err);
    if (!doc) return reply_error(fd, 0, err);
    if ((err = parse_request(doc, &rq))) {
        json_free(doc);
        return reply_error(fd, 0, err);
    }
    if ((err = json_limit_error(doc)) || !rq.method) {
        int rc = reply_error(fd, rq.id, err ? err : "missing method");
        json_free(doc);
        return rc;
    }
    for (i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (rq.method_len == strlen(methods[i].name) && !memcmp(rq.method, methods[i].name, rq.method_len)) break;
    if (i == sizeof methods / sizeof methods[0]) {
        json_free(doc);
        return reply_error(fd, rq.id, "unknown method");
    }
    o.len = 0, o.full = 0;
    out_fmt(&o, "{\"id\":%llu,\"ok\":true,\"result\":", rq.id);
    err = methods[i].fn(&o, rq.params);
    json_free(doc);
    if (err) return reply_error(fd, rq.id, err);
    out_raw(&o, "}", 1);
    if (o.full) return reply_error(fd, rq.id, "reply too large");
    int rc = reply(fd, &o);
    if (poweroff_requested) {
        poweroff_requested = 0;
        do_poweroff();
    }
    return rc;
}

struct conn {
    int fd;
    int overflow; /* discarding an over-long line up to its newline */
    unsigned long long seq;
    size_t len;
    char buf[MAX_LINE];
};

static void conn_reset(struct conn *c)
{
    c->len = 0, c->overflow = 0;
}

/* Splits input into lines and answers each; -1 when the reply could not be written. */
static int conn_feed(struct conn *c, const char *data, size_t n, int out_fd)
{
    while (n > 0) {
        const char *nl = memchr(data, '\n', n);
        size_t chunk = nl ? (size_t)(nl - data) : n;
        if (!c->overflow && chunk > MAX_LINE - c->len) c->overflow = 1, c->len = 0;
        if (!c->overflow) memcpy(c->buf + c->len, data, chunk), c->len += chunk;
        if (!nl) break;
        int rc = c->overflow ? reply_error(out_fd, 0, "line too long (max 65536 bytes)")
                             : handle_line(out_fd, c->buf, c->len);
        conn_reset(c);
        if (rc) return -1;
        data = nl + 1;
        n -= chunk + 1;
    }
    return 0;
}

/* ---- channels ------------------------------------------------------------------------------ */

static struct conn one; /* the single connection of stdio and device modes */

static void serve_stdio(void)
{
    char chunk[16384];
    conn_reset(&one);
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) exit(r == 0 ? 0 : 1);
        if (conn_feed(&one, chunk, (size_t)r, 1)) exit(1);
    }
}

int open_channel(const char *path)
{
    struct stat st;
    int fd;
    if (stat(path, &st) != 0) return -1;
    if (S_ISSOCK(st.st_mode)) { /* a Unix socket stands in for the port in tests */
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof a.sun_path) return errno = ENAMETOOLONG, -1;
        strcpy(a.sun_path, path);
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) return -1;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return close_keep_errno(fd), -1;
        return fd;
    }
    if ((fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) return -1;
    struct termios t;
    if (tcgetattr(fd, &t) == 0) { /* a tty would echo and mangle newlines */
        cfmakeraw(&t);
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

static void serve_device(const char *path)
{
    char chunk[16384];
    int failing = 0;
    for (;;) {
        int fd = open_channel(path);
        struct stat st;
        if (fd < 0) {
            if (!failing++) say("cannot open %s: %s (retrying)", path, strerror(errno));
            sleep_ms(failing < 50 ? 100 : 1000);
            continue;
        }
        say("serving on %s", path);
        failing = 0;
        int is_chr = fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
        conn_reset(&one);
        for (;;) {
            ssize_t r = read(fd, chunk, sizeof chunk);
            if (r > 0) {
                if (conn_feed(&one, chunk, (size_t)r, fd)) break;
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            /* virtio-serial reads return 0 while no host is connected: wait for one, keep the port */
            if (r == 0 && is_chr) {
                conn_reset(&one);
                sleep_ms(100);
                continue;
            }
            break; /* an error, or EOF of a socket or file: reopen */
        }
        close(fd);
        sleep_ms(100);
    }
}

/* The port's /dev/virtio-ports symlink needs udev; /sys names the raw /dev/vportNpM node without it. */
int find_virtio_port_named(const char *port, char *dev, size_t cap)
{
    char link[128];
    DIR *d;
    struct dirent *e;
    snprintf(link, sizeof link, "/dev/virtio-ports/%s", port);
    if (access(link, F_OK) == 0) return snprintf(dev, cap, "%s", link), 0;
    if (!(d = opendir("/sys/class/virtio-ports"))) return -1;
    while ((e = readdir(d))) {
        char path[300], name[128];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        if (read_file(path, name, sizeof name) <= 0) continue;
        trim_right(name);
        snprintf(dev, cap, "/dev/%s", e->d_name);
        if (!strcmp(name, port) && access(dev, F_OK) == 0) return closedir(d), 0;
    }
    closedir(d);
    return -1;
}

static int find_virtio_port(char *dev, size_t cap)
{
    return find_virtio_port_named(VIRTIO_PORT_NAME, dev, cap);
}

static int vsock_listen(unsigned port)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, MAX_CLIENTS) != 0) return close_keep_errno(fd), -1;
    return fd;
}

static struct conn clients[MAX_CLIENTS];

static void drop_client(struct conn *c)
{
    close(c->fd);
    c->fd = -1;
}

/* Serves vsock connections; with watch_virtio it switches to the virtio port if one shows up
 * before any host connected (its driver may bind after we started). */
static void serve_vsock(int lfd, unsigned port, int watch_virtio)
{
    unsigned long long seq = 0;
    char chunk[16384], dev[PATH_MAX];
    say("listening on vsock port %u", port);
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i].fd = -1;
    for (;;) {
        struct pollfd pfd[MAX_CLIENTS + 1];
        int slot[MAX_CLIENTS + 1], n = 1;
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i].fd >= 0) slot[n] = i, pfd[n++] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
        int rc = poll(pfd, (nfds_t)n, watch_virtio && !seq ? 500 : -1);
        if (rc < 0) {
            if (errno != EINTR) sleep_ms(100);
            continue;
        }
        if (rc == 0 && find_virtio_port(dev, sizeof dev) == 0) {
            close(lfd);
            serve_device(dev); /* never returns */
        }
        for (int k = 1; k < n; k++) {
            struct conn *c = &clients[slot[k]];
            if (!pfd[k].revents) continue;
            ssize_t r = read(c->fd, chunk, sizeof chunk);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0 || conn_feed(c, chunk, (size_t)r, c->fd)) drop_client(c);
        }
        if (pfd[0].revents & POLLIN) {
            struct sockaddr_vm peer;
            socklen_t plen = sizeof peer;
            int cfd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
            if (cfd < 0) continue;
            /* Only the host may drive the agent: not another VM, not a process in this guest. */
            if (plen < sizeof peer || peer.svm_family != AF_VSOCK || peer.svm_cid != VMADDR_CID_HOST) {
                say("refused a vsock connection from cid %u (only the host, cid %u, is served)", (unsigned)peer.svm_cid,
                    (unsigned)VMADDR_CID_HOST);
                close(cfd);
                continue;
            }
            struct conn *victim = NULL;
            for (int i = 0; i < MAX_CLIENTS; i++) {
                if (clients[i].fd < 0) {
                    victim = &clients[i];
                    break;
                }
                if (!victim || clients[i].seq < victim->seq) victim = &clients[i];
            }
            /* all slots taken: the oldest connection is most likely a host that went away */
            if (victim->fd >= 0) drop_client(victim);
            struct timeval tv = {5, 0}; /* a host that stops reading must not stall the others */
            setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            victim->fd = cfd;
            victim->seq = ++seq;
            conn_reset(victim);
        }
    }
}

static void serve_default(void)
{
    char dev[PATH_MAX];
    int warned = 0;
    for (;;) {
        if (find_virtio_port(dev, sizeof dev) == 0) serve_device(dev);
        int lfd = vsock_listen(DEFAULT_VSOCK_PORT);
        if (lfd >= 0) serve_vsock(lfd, DEFAULT_VSOCK_PORT, 1);
        if (!warned++) say("no virtio port %s and no vsock (%s) yet; retrying", VIRTIO_PORT_NAME, strerror(errno));
        sleep_ms(500);
    }
}

/* ---- small shared helpers ----------------------------------------------------------------- */

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* close_range(2) (Linux 5.9+) closes a range in one call; older kernels get the loop below. */
static int close_span(unsigned lo, unsigned hi)
{
#ifdef SYS_close_range
    if (lo > hi) return 0;
    return (int)syscall(SYS_close_range, lo, hi, 0);
#else
    (void)lo, (void)hi;
    return -1;
#endif
}

/* A forked helper keeps only the descriptors it needs (the agent's channels stay the agent's). */
void close_fds_from(int lowest, int keep1, int keep2)
{
    int a = keep1 < keep2 ? keep1 : keep2, b = keep1 < keep2 ? keep2 : keep1;
    unsigned lo = (unsigned)lowest;
    int ok = 1;
    if (a >= lowest) ok &= close_span(lo, (unsigned)a - 1) == 0, lo = (unsigned)a + 1;
    if (b >= lowest && b != a) ok &= close_span(lo, (unsigned)b - 1) == 0, lo = (unsigned)b + 1;
    if (ok && close_span(lo, ~0U) == 0) return;
    struct rlimit rl;
    int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
    for (int fd = lowest; fd < max; fd++)
        if (fd != keep1 && fd != keep2) close(fd);
}

/* ---- process --------------------------------------------------------------------------------- */

/* As PID 1 (an image without an init) every orphan becomes our child: reap them. */
static void reap(int sig)
{
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static void usage(FILE *f)
{
    fputs("usage: banger-agent [--device PATH | --vsock-port N | --stdio | --version] [--data PATH]...\n"
          "                    [--procs-dir DIR] [--cgroup-root DIR|none]\n"
          "  default: the virtio-serial port " VIRTIO_PORT_NAME ", else vsock port 1024; data channels on\n"
          "  the virtio-serial ports org.banger.data.0..3 and vsock port 1023 (--data: a Unix socket to\n"
          "  connect to instead, repeatable)\n",
          f);
}

int main(int argc, char **argv)
{
    const char *device = NULL;
    long vsock_port = -1;
    int stdio_mode = 0, ndata = 0;
    const char *data_paths[4];

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--version")) {
            puts("banger-agent " AGENT_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--stdio")) {
            stdio_mode = 1;
        } else if (!strcmp(argv[i], "--data") && i + 1 < argc) {
            if (ndata == (int)(sizeof data_paths / sizeof data_paths[0])) {
                say("at most %d --data paths", ndata);
                return 2;
            }
            data_paths[ndata++] = argv[++i];
        } else if (!strcmp(argv[i], "--procs-dir") && i + 1 < argc) {
            procs_dir = argv[++i];
        } else if (!strcmp(argv[i], "--cgroup-root") && i + 1 < argc) {
            cgroup_root = strcmp(argv[i + 1], "none") ? argv[i + 1] : NULL;
            i++;
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = argv[++i];
        } else if (!strcmp(argv[i], "--vsock-port") && i + 1 < argc) {
            char *end;
            vsock_port = strtol(argv[++i], &end, 10);
            if (*end || vsock_port < 0 || vsock_port > 0xffffffffL) {
                say("bad vsock port %s", argv[i]);
                return 2;
            }
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (stdio_mode + (device != NULL) + (vsock_port >= 0) > 1) {
        say("--stdio, --device and --vsock-port exclude each other");
        return 2;
    }

    /* Started by an init with 0-2 closed, the channel would get fd 2 and our log lines would land in
     * the protocol stream. */
    ensure_std_fds("/dev/null");
    signal(SIGPIPE, SIG_IGN); /* a host hanging up must be a write error, not our death */
    /* As PID 1 orphans are ours; otherwise the children are the data-channel workers and the short-lived
     * first fork of a process supervisor: reap them all as they end. */
    struct sigaction sa = {0};
    sa.sa_handler = reap;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    reap(0); /* orphans that exited before the handler was in place */

    procs_init();
    if (!stdio_mode) data_start(data_paths, ndata);
    if (stdio_mode) serve_stdio();
    if (device) serve_device(device);
    if (vsock_port >= 0) {
        int lfd, warned = 0;
        while ((lfd = vsock_listen((unsigned)vsock_port)) < 0) {
            if (!warned++) say("cannot listen on vsock port %ld: %s (retrying)", vsock_port, strerror(errno));
            sleep_ms(500);
        }
        serve_vsock(lfd, (unsigned)vsock_port, 0);
    }
    serve_default();
    return 0;
}
