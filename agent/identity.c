/*
 * identity.set (docs/processes.md, "Warm start"): re-identifies a guest restored from a snapshot
 * or cloned from one. Every param is checked before the first step runs; the steps then run in
 * the contract's order (clock, entropy, hostname, machine-id, net, generation), each idempotent,
 * and the first failure is answered naming its step: what was done before it stays done and the
 * host retries the whole call.
 *
 * Files in /etc and /run/banger are replaced atomically: a temp file created O_EXCL|O_NOFOLLOW in
 * the same directory, fsynced, renamed over the target. rename() replaces a symlink planted at the
 * target with the new file (it never writes through it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include "agent.h"
#include "common.h"

#define MIN_CLOCK_MS 1577836800000ULL /* 2020-01-01: a clock before it is a bug, not a restore */
#define MAX_CLOCK_MS 4102444800000ULL /* 2100-01-01 */
#define MIN_SEED_BYTES 32
#define MAX_SEED_BYTES 256
#define MAX_HOSTS_BYTES 65536
#define MAX_DEFAULT_ROUTES 16

struct identity {
    unsigned long long clock_ms;
    const char *hostname;   /* NULL: unchanged */
    const char *machine_id; /* NULL: unchanged */
    int has_net, has_mac, has_gateway;
    const char *iface;
    unsigned char mac[6];
    struct in_addr addr, gateway;
    int prefix;
    unsigned char seed[MAX_SEED_BYTES];
    size_t seed_len; /* 0: no seed */
    int has_generation;
    unsigned long long generation;
};

/* ---- validation -------------------------------------------------------------------------- */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static const char *opt_string(const struct jval *p, const char *key, const char **out)
{
    const struct jval *j = json_get(p, key);
    *out = NULL;
    if (!j) return NULL;
    if (!(*out = json_cstr(j))) return fail("invalid %s: must be a string", key);
    return NULL;
}

/* A banger VM name (src/api/schemas.ts ResourceName), which is what the daemon names a guest: a DNS
 * label plus '.' and '_'; nothing that could split an /etc/hosts line or a path. */
static const char *check_hostname(const char *h)
{
    size_t n = strlen(h);
    if (n < 1 || n > 63) return "invalid hostname: must be 1 to 63 characters";
    if (!((h[0] >= 'a' && h[0] <= 'z') || (h[0] >= '0' && h[0] <= '9')))
        return "invalid hostname: must start with a lowercase letter or digit";
    for (size_t i = 0; i < n; i++)
        if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= '0' && h[i] <= '9') || h[i] == '-' || h[i] == '.' ||
              h[i] == '_'))
            return "invalid hostname: only a-z, 0-9, '-', '.' and '_' are allowed";
    return NULL;
}

static const char *check_machine_id(const char *m)
{
    int nonzero = 0;
    if (strlen(m) != 32) return "invalid machine_id: must be 32 lowercase hex digits";
    for (int i = 0; i < 32; i++) {
        if (hexval(m[i]) < 0) return "invalid machine_id: must be 32 lowercase hex digits";
        nonzero |= m[i] != '0';
    }
    return nonzero ? NULL : "invalid machine_id: must not be all zeros";
}

static const char *parse_mac(const char *s, unsigned char mac[6])
{
    if (strlen(s) != 17) return "invalid net.mac: must be six lowercase hex pairs like 52:54:00:ab:cd:ef";
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[i * 3]), lo = hexval(s[i * 3 + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[i * 3 + 2] != ':'))
            return "invalid net.mac: must be six lowercase hex pairs like 52:54:00:ab:cd:ef";
        mac[i] = (unsigned char)(hi << 4 | lo);
    }
    if (mac[0] & 1) return "invalid net.mac: must be a unicast address (first octet even)";
    if (!(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5])) return "invalid net.mac: must not be all zeros";
    return NULL;
}

/* Dotted-quad IPv4 only, no leading zeros (inet_pton's strictness differs between libcs). */
static int parse_ipv4(const char *s, struct in_addr *out)
{
    size_t n = strlen(s);
    if (n < 7 || n > 15) return -1;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '.')) return -1;
    for (const char *p = s; *p;) {
        if (p[0] == '0' && p[1] >= '0' && p[1] <= '9') return -1;
        while (*p && *p != '.') p++;
        if (*p) p++;
    }
    return inet_pton(AF_INET, s, out) == 1 ? 0 : -1;
}

static const char *check_iface(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n >= IFNAMSIZ) return "invalid net.iface: must be 1 to 15 characters";
    if (!strcmp(s, ".") || !strcmp(s, "..")) return "invalid net.iface: not an interface name";
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '-' || s[i] == '_' || s[i] == '.'))
            return "invalid net.iface: only letters, digits, '-', '_' and '.' are allowed";
    return NULL;
}

static const char *parse_net(const struct jval *net, struct identity *id)
{
    static const char *const allowed[] = {"iface", "mac", "addr", "prefix", "gateway", NULL};
    const char *err, *s;
    if (net->type != J_OBJ) return "invalid net: must be an object";
    if ((err = check_params(net, allowed))) {
        char why[128]; /* err is fail()'s buffer, which the next fail() overwrites */
        snprintf(why, sizeof why, "%s", err);
        return fail("invalid net: %s", why);
    }
    if (!json_get(net, "iface")) return "invalid net.iface: required";
    if ((err = opt_string(net, "iface", &id->iface))) return "invalid net.iface: must be a string";
    if ((err = check_iface(id->iface))) return err;
    if (json_get(net, "mac")) {
        if (opt_string(net, "mac", &s)) return "invalid net.mac: must be a string";
        if ((err = parse_mac(s, id->mac))) return err;
        id->has_mac = 1;
    }
    if (!json_get(net, "addr")) return "invalid net.addr: required";
    if (opt_string(net, "addr", &s) || parse_ipv4(s, &id->addr))
        return "invalid net.addr: must be a dotted-quad IPv4 address";
    const struct jval *pj = json_get(net, "prefix");
    if (!pj || pj->type != J_NUM || !pj->is_uint || pj->uint < 1 || pj->uint > 32)
        return "invalid net.prefix: must be an integer from 1 to 32";
    id->prefix = (int)pj->uint;
    unsigned mask = net_prefix_mask(id->prefix);
    if (id->prefix <= 30 && ((id->addr.s_addr & ~mask) == 0 || (id->addr.s_addr | mask) == 0xffffffffu))
        return "invalid net.addr: is the network or broadcast address of its prefix";
    if (json_get(net, "gateway")) {
        if (opt_string(net, "gateway", &s) || parse_ipv4(s, &id->gateway))
            return "invalid net.gateway: must be a dotted-quad IPv4 address";
        if ((id->gateway.s_addr & mask) != (id->addr.s_addr & mask))
            return "invalid net.gateway: not in net.addr's subnet";
        if (id->gateway.s_addr == id->addr.s_addr) return "invalid net.gateway: equals net.addr";
        id->has_gateway = 1;
    }
    id->has_net = 1;
    return NULL;
}

static const char *parse_identity(const struct jval *p, struct identity *id)
{
    static const char *const allowed[] = {"clock_unix_ms", "hostname",   "machine_id", "net",
                                          "seed_hex",      "generation", NULL};
    const struct jval *j;
    const char *err, *s;
    memset(id, 0, sizeof *id);
    if (!p || p->type != J_OBJ) return "invalid params: must be an object with clock_unix_ms";
    if ((err = check_params(p, allowed))) return err;
    j = json_get(p, "clock_unix_ms");
    if (!j) return "invalid clock_unix_ms: required";
    if (j->type != J_NUM || !j->is_uint || j->uint < MIN_CLOCK_MS || j->uint > MAX_CLOCK_MS)
        return fail("invalid clock_unix_ms: must be an integer from %llu to %llu (ms since 1970)", MIN_CLOCK_MS,
                    MAX_CLOCK_MS);
    id->clock_ms = j->uint;
    if ((err = opt_string(p, "hostname", &id->hostname))) return err;
    if (id->hostname && (err = check_hostname(id->hostname))) return err;
    if ((err = opt_string(p, "machine_id", &id->machine_id))) return err;
    if (id->machine_id && (err = check_machine_id(id->machine_id))) return err;
    if ((j = json_get(p, "net")) && (err = parse_net(j, id))) return err;
    if ((err = opt_string(p, "seed_hex", &s))) return err;
    if (s) {
        size_t n = strlen(s);
        if (n % 2 || n < MIN_SEED_BYTES * 2 || n > MAX_SEED_BYTES * 2)
            return fail("invalid seed_hex: must be %d to %d lowercase hex digits, an even count", MIN_SEED_BYTES * 2,
                        MAX_SEED_BYTES * 2);
        for (size_t i = 0; i < n; i += 2) {
            int hi = hexval(s[i]), lo = hexval(s[i + 1]);
            if (hi < 0 || lo < 0) return "invalid seed_hex: only lowercase hex digits are allowed";
            id->seed[i / 2] = (unsigned char)(hi << 4 | lo);
        }
        id->seed_len = n / 2;
    }
    if ((j = json_get(p, "generation"))) {
        if (j->type != J_NUM || !j->is_uint) return "invalid generation: must be an integer from 0 to 2^53-1";
        id->generation = j->uint;
        id->has_generation = 1;
    }
    return NULL;
}

/* ---- files ----------------------------------------------------------------------------------- */

/*
 * Replaces dir/name with data: a temp file beside it (O_EXCL|O_NOFOLLOW, so nothing planted is
 * opened), fsync, rename, fsync of the directory. dir itself is opened O_NOFOLLOW.
 * 0, or -1 with errno.
 */
static int write_file_atomic(const char *dir, const char *name, const char *data, size_t n, mode_t mode)
{
    static unsigned counter;
    char tmp[NAME_MAX + 1];
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), fd = -1;
    if (dfd < 0) return -1;
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        snprintf(tmp, sizeof tmp, ".%.64s.banger-%d-%u", name, (int)getpid(), counter++);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) return close_keep_errno(dfd), -1;
    if (write_all(fd, data, n) != 0 || fchmod(fd, mode) != 0 || fsync(fd) != 0) goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (renameat(dfd, tmp, dfd, name) != 0) goto fail;
    fsync(dfd); /* the rename is durable once the directory is */
    close(dfd);
    return 0;
fail:;
    int e = errno;
    if (fd >= 0) close(fd);
    unlinkat(dfd, tmp, 0);
    close(dfd);
    errno = e;
    return -1;
}

static const char *step_errno(const char *step, const char *what)
{
    int e = errno;
    return fail("identity step %s failed: %s: %s", step, what, strerror(e));
}

/* Is word (n bytes) one of the names? */
static int is_old_name(const char *word, size_t n, char olds[][HOST_NAME_MAX + 1], int nold)
{
    for (int i = 0; i < nold; i++)
        if (strlen(olds[i]) == n && !memcmp(olds[i], word, n)) return 1;
    return 0;
}

/*
 * /etc/hosts: in lines that name an old hostname, that name becomes the new one (addresses,
 * comments and other names stay). Missing, a symlink or not a regular file: left alone (a
 * distro that links /etc/hosts elsewhere manages it itself; reading through a planted link
 * could copy any file into a world-readable one).
 */
static const char *update_hosts(const char *newname, char olds[][HOST_NAME_MAX + 1], int nold)
{
    static char in[MAX_HOSTS_BYTES + 1], out[MAX_HOSTS_BYTES + 1];
    struct stat st;
    size_t n = 0, o = 0;
    int changed = 0, fd = open("/etc/hosts", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT || errno == ELOOP ? NULL : step_errno("hostname", "open /etc/hosts");
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return close(fd), NULL;
    for (;;) {
        ssize_t r = read(fd, in + n, MAX_HOSTS_BYTES + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return close_keep_errno(fd), step_errno("hostname", "read /etc/hosts");
        if (r == 0) break;
        n += (size_t)r;
        if (n > MAX_HOSTS_BYTES) return close(fd), fail("identity step hostname failed: /etc/hosts is over 64 KiB");
    }
    close(fd);
    /* Words are split on blanks; the first word of a line is its address; a comment runs to the
     * end of its line and is copied as is. */
    int word = 0;
    for (size_t i = 0; i < n;) {
        char c = in[i];
        if (c == '#') {
            while (i < n && in[i] != '\n') out[o++] = in[i++];
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            if (c == '\n') word = 0;
            out[o++] = in[i++];
            continue;
        }
        size_t start = i, k = strlen(newname);
        while (i < n && !strchr(" \t\r\n#", in[i])) i++;
        const char *w = in + start;
        size_t wn = i - start;
        if (word++ > 0 && is_old_name(w, wn, olds, nold)) w = newname, wn = k, changed = 1;
        /* out holds MAX_HOSTS_BYTES; everything but the replacements is copied, so only they can overflow it */
        if (o + wn + (n - i) > MAX_HOSTS_BYTES)
            return fail("identity step hostname failed: the new /etc/hosts would be over 64 KiB");
        memcpy(out + o, w, wn);
        o += wn;
    }
    if (!changed) return NULL;
    if (write_file_atomic("/etc", "hosts", out, o, st.st_mode & 07777))
        return step_errno("hostname", "replace /etc/hosts");
    return NULL;
}

/* ---- steps ----------------------------------------------------------------------------------- */

/* A test-only escape (docs/processes.md): BANGER_AGENT_TEST_SKIP=clock,entropy skips those steps,
 * which need privileges of the host's init namespaces and change host-global state (CLOCK_REALTIME
 * and the entropy pool are not namespaced). Nothing in a guest sets it. */
static int test_skips(const char *step)
{
    const char *v = getenv("BANGER_AGENT_TEST_SKIP");
    size_t n = strlen(step);
    for (const char *p = v; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && !memcmp(p, step, n)) return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

static const char *step_clock(const struct identity *id)
{
    struct timespec ts = {(time_t)(id->clock_ms / 1000), (long)(id->clock_ms % 1000) * 1000000L};
    if (test_skips("clock")) return NULL;
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) return step_errno("clock", "clock_settime");
    return NULL;
}

static const char *step_entropy(const struct identity *id)
{
    struct {
        int entropy_count;
        int buf_size;
        unsigned char buf[MAX_SEED_BYTES];
    } req;
    if (!id->seed_len) return NULL;
    if (!test_skips("entropy")) {
        int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
        if (fd < 0) return step_errno("entropy", "open /dev/random");
        req.entropy_count = (int)id->seed_len * 8; /* credited: the host's seed is fresh randomness */
        req.buf_size = (int)id->seed_len;
        memcpy(req.buf, id->seed, id->seed_len);
        int rc = ioctl(fd, RNDADDENTROPY, &req);
        close_keep_errno(fd);
        explicit_bzero(&req, sizeof req);
        if (rc != 0) return step_errno("entropy", "RNDADDENTROPY");
    }
    /* Mixed in (uncredited) once more through /dev/urandom, which needs no privilege. */
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return step_errno("entropy", "open /dev/urandom");
    int rc = write_all(fd, (const char *)id->seed, id->seed_len);
    close_keep_errno(fd);
    if (rc != 0) return step_errno("entropy", "write /dev/urandom");
    return NULL;
}

/* /etc/hosts first, then /etc/hostname, then the kernel's name last: a retry after a failure
 * still finds the old name in the kernel and finishes the files. */
static const char *step_hostname(const struct identity *id)
{
    char olds[2][HOST_NAME_MAX + 1], line[HOST_NAME_MAX + 2];
    int nold = 0;
    const char *err;
    struct utsname u;
    if (!id->hostname) return NULL;
    if (uname(&u) == 0 && strcmp(u.nodename, id->hostname)) snprintf(olds[nold++], sizeof olds[0], "%s", u.nodename);
    int fd = open("/etc/hostname", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        struct stat st;
        ssize_t r = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, line, sizeof line - 1) : -1;
        close(fd);
        if (r > 0) {
            line[r] = 0;
            line[strcspn(line, " \t\r\n")] = 0;
            if (line[0] && strcmp(line, id->hostname) && (!nold || strcmp(line, olds[0])))
                snprintf(olds[nold++], sizeof olds[0], "%.*s", HOST_NAME_MAX, line);
        }
    }
    if ((err = update_hosts(id->hostname, olds, nold))) return err;
    snprintf(line, sizeof line, "%s\n", id->hostname);
    if (write_file_atomic("/etc", "hostname", line, strlen(line), 0644))
        return step_errno("hostname", "replace /etc/hostname");
    if (sethostname(id->hostname, strlen(id->hostname)) != 0) return step_errno("hostname", "sethostname");
    return NULL;
}

static const char *step_machine_id(const struct identity *id)
{
    char line[34];
    if (!id->machine_id) return NULL;
    snprintf(line, sizeof line, "%s\n", id->machine_id);
    if (write_file_atomic("/etc", "machine-id", line, 33, 0444))
        return step_errno("machine_id", "replace /etc/machine-id");
    return NULL;
}

/* Removes the default routes (each one SIOCDELRT finds), so the new gateway is the only one. */
static void drop_default_routes(int fd)
{
    for (int i = 0; i < MAX_DEFAULT_ROUTES; i++) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        if (ioctl(fd, SIOCDELRT, &rt) != 0) return;
    }
}

static const char *step_net(const struct identity *id)
{
    struct ifreq ifr;
    struct in_addr mask = {net_prefix_mask(id->prefix)};
    const char *err = NULL;
    if (!id->has_net) return NULL;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return step_errno("net", "socket(AF_INET)");
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", id->iface);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) != 0) {
        err = step_errno("net", id->iface);
    } else if (id->has_mac && (ioctl(fd, SIOCGIFHWADDR, &ifr) != 0 || memcmp(ifr.ifr_hwaddr.sa_data, id->mac, 6))) {
        /* virtio-net takes a new MAC while up; set only when it differs (idempotent, no link flap) */
        memset(&ifr, 0, sizeof ifr);
        snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", id->iface);
        ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
        memcpy(ifr.ifr_hwaddr.sa_data, id->mac, 6);
        if (ioctl(fd, SIOCSIFHWADDR, &ifr) != 0) err = step_errno("net", "set the MAC address (SIOCSIFHWADDR)");
    }
    if (!err && net_set_ipv4(fd, id->iface, id->addr, mask) != 0)
        err = step_errno("net", "set the address and netmask (SIOCSIFADDR/SIOCSIFNETMASK)");
    if (!err && net_link_up(fd, id->iface) != 0) err = step_errno("net", "bring the link up");
    if (!err && id->has_gateway) {
        drop_default_routes(fd);
        if (net_add_default_route(fd, id->iface, id->gateway) != 0) err = step_errno("net", "add the default route");
    }
    close(fd);
    return err;
}

static const char *step_generation(const struct identity *id)
{
    char text[32];
    if (!id->has_generation) return NULL;
    if (mkdir("/run/banger", 0755) != 0 && errno != EEXIST) return step_errno("generation", "mkdir /run/banger");
    int n = snprintf(text, sizeof text, "%llu\n", id->generation);
    if (write_file_atomic("/run/banger", "generation", text, (size_t)n, 0644))
        return step_errno("generation", "replace /run/banger/generation");
    return NULL;
}

const char *m_identity_set(struct out *o, const struct jval *p)
{
    static struct identity id;
    const char *err;
    char boot[64] = "";
    struct utsname u;
    if ((err = parse_identity(p, &id))) return err;
    if (!(err = step_clock(&id)) && !(err = step_entropy(&id)) && !(err = step_hostname(&id)) &&
        !(err = step_machine_id(&id)) && !(err = step_net(&id)))
        err = step_generation(&id);
    explicit_bzero(id.seed, sizeof id.seed);
    if (err) return err;
    if (uname(&u) != 0) u.nodename[0] = 0;
    if (read_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot) > 0) trim_right(boot);
    out_raw(o, "{\"hostname\":", 12);
    out_cstr(o, u.nodename);
    if (id.has_generation)
        out_fmt(o, ",\"generation\":%llu", id.generation);
    else
        out_raw(o, ",\"generation\":null", 18);
    out_raw(o, ",\"boot_id\":", 11);
    out_cstr(o, boot);
    out_raw(o, "}", 1);
    return NULL;
}
