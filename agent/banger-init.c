/*
 * banger-init: the /init of banger's initramfs for module-based distro kernels.
 *
 * The initramfs is the kernel's base archive (this program, kernel modules and
 * /lib/modules/load-order) followed by a small per-VM archive under /banger/:
 *   /banger/config   key=value lines (work_disk, work_mount, agent, net_dev, net_addr, net_gw)
 *   /banger/root/... files copied into the real root before it starts
 * so the host never has to mount a guest filesystem to inject the agent or per-VM files.
 *
 * Sequence: mount /dev /proc /sys, load modules, configure the NIC, mount the root disk, switch root,
 * mount the work disk, copy the payload, then exec systemd or (no systemd) start the agent
 * itself. Linked statically: no library is available before the switch.
 *
 * Every failure says `banger-init: <what> failed: <errno text>` on the console: this program runs
 * before any logging exists, and the serial log is all a user has to debug a VM that never boots.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <linux/fs.h>
#include <sys/socket.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sendfile.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define NEWROOT "/newroot"
#define LOAD_ORDER "/lib/modules/load-order"
#define PAYLOAD_ROOT "/banger/root"
#define PAYLOAD_CONFIG "/banger/config"
#define ROOT_WAIT_MS 10000
#define WORK_WAIT_MS 3000
#define DEFAULT_AGENT "/usr/local/bin/banger-agent"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

const char log_name[] = "banger-init";

static struct {
    char root[256];
    char rootfstype[64];
    char rootflags[256];
    char work_disk[256];
    char work_mount[256];
    char agent[256];
    char net_dev[IFNAMSIZ];
    char net_addr[64];
    char net_gw[64];
    char first_boot[256];
} cfg = {
    .root = "/dev/vda",
    .rootfstype = "ext4",
    .rootflags = "rw,noatime",
    .work_mount = "/root",
    .agent = DEFAULT_AGENT,
    .net_dev = "eth0",
};

/* Must be called right after the failing call: it reads errno. */
static void failed(const char *what)
{
    say("%s failed: %s", what, strerror(errno));
}

static void failedf(const char *fmt, const char *arg)
{
    int e = errno;
    char what[512];
    snprintf(what, sizeof what, fmt, arg);
    errno = e;
    failed(what);
}

/* PID 1 must never exit on purpose: power off so QEMU/Firecracker exits and the host sees why. */
static void __attribute__((noreturn)) die(const char *why)
{
    say("FATAL: %s; powering off", why);
    power_off();
    for (;;) pause();
}

static void mount_api(const char *src, const char *dir, const char *type, unsigned long flags)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) failedf("mkdir %s", dir);
    if (mount(src, dir, type, flags, NULL) != 0 && errno != EBUSY) failedf("mount %s", dir);
}

static void copy_value(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size) len = size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* root=, rootfstype=, rootflags= as the kernel would read them (no quoting: banger never quotes). */
static void read_cmdline(void)
{
    char buf[4096];
    if (read_file("/proc/cmdline", buf, sizeof buf) < 0) {
        failed("read /proc/cmdline");
        return;
    }
    for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
        const char *v;
        if (strncmp(tok, "root=", 5) == 0) {
            v = tok + 5;
            if (strncmp(v, "/dev/", 5) == 0)
                copy_value(cfg.root, sizeof cfg.root, v, strlen(v));
            else
                say("root=%s is not a /dev path (LABEL=/UUID= are not supported); using %s", v, cfg.root);
        } else if (strncmp(tok, "rootfstype=", 11) == 0) {
            v = tok + 11;
            copy_value(cfg.rootfstype, sizeof cfg.rootfstype, v, strlen(v));
        } else if (strncmp(tok, "rootflags=", 10) == 0) {
            v = tok + 10;
            copy_value(cfg.rootflags, sizeof cfg.rootflags, v, strlen(v));
        }
    }
}

static void read_config(void)
{
    FILE *f = fopen(PAYLOAD_CONFIG, "re");
    if (!f) {
        if (errno != ENOENT) failed("open " PAYLOAD_CONFIG);
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq) continue;
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(line, "work_disk") == 0)
            copy_value(cfg.work_disk, sizeof cfg.work_disk, v, strlen(v));
        else if (strcmp(line, "work_mount") == 0)
            copy_value(cfg.work_mount, sizeof cfg.work_mount, v, strlen(v));
        else if (strcmp(line, "agent") == 0)
            copy_value(cfg.agent, sizeof cfg.agent, v, strlen(v));
        else if (strcmp(line, "net_dev") == 0)
            copy_value(cfg.net_dev, sizeof cfg.net_dev, v, strlen(v));
        else if (strcmp(line, "net_addr") == 0)
            copy_value(cfg.net_addr, sizeof cfg.net_addr, v, strlen(v));
        else if (strcmp(line, "net_gw") == 0)
            copy_value(cfg.net_gw, sizeof cfg.net_gw, v, strlen(v));
        else if (strcmp(line, "first_boot") == 0)
            copy_value(cfg.first_boot, sizeof cfg.first_boot, v, strlen(v));
    }
    fclose(f);
}

/* Only the generic options are flags; passed as data, ext4 would reject "noatime". */
static unsigned long mount_options(const char *opts, char *data, size_t size)
{
    static const struct {
        const char *name;
        unsigned long set, clear;
    } known[] = {
        {"ro", MS_RDONLY, 0},
        {"rw", 0, MS_RDONLY},
        {"noatime", MS_NOATIME, 0},
        {"atime", 0, MS_NOATIME},
        {"relatime", MS_RELATIME, 0},
        {"norelatime", 0, MS_RELATIME},
        {"strictatime", MS_STRICTATIME, 0},
        {"nodiratime", MS_NODIRATIME, 0},
        {"nosuid", MS_NOSUID, 0},
        {"suid", 0, MS_NOSUID},
        {"nodev", MS_NODEV, 0},
        {"dev", 0, MS_NODEV},
        {"noexec", MS_NOEXEC, 0},
        {"exec", 0, MS_NOEXEC},
        {"sync", MS_SYNCHRONOUS, 0},
        {"async", 0, MS_SYNCHRONOUS},
        {"dirsync", MS_DIRSYNC, 0},
        {"lazytime", MS_LAZYTIME, 0},
        {"defaults", 0, 0},
    };
    char copy[256];
    unsigned long flags = 0;
    size_t used = 0;
    data[0] = '\0';
    copy_value(copy, sizeof copy, opts, strlen(opts));
    for (char *o = strtok(copy, ","); o; o = strtok(NULL, ",")) {
        size_t i;
        for (i = 0; i < sizeof known / sizeof known[0]; i++) {
            if (strcmp(o, known[i].name) == 0) {
                flags = (flags | known[i].set) & ~known[i].clear;
                break;
            }
        }
        if (i == sizeof known / sizeof known[0]) {
            int n = snprintf(data + used, size - used, "%s%s", used ? "," : "", o);
            if (n > 0 && (size_t)n < size - used) used += (size_t)n;
        }
    }
    return flags;
}

static int load_module(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        failedf("open module %s", path);
        return -1;
    }
    int rc = (int)syscall(SYS_finit_module, fd, "", 0);
    if (rc != 0 && errno == ENOSYS) {
        /* Kernels without finit_module: hand the image over in memory. */
        struct stat st;
        void *image = NULL;
        rc = -1;
        if (fstat(fd, &st) == 0 && (image = malloc((size_t)st.st_size)) != NULL &&
            read(fd, image, (size_t)st.st_size) == st.st_size)
            rc = (int)syscall(SYS_init_module, image, (unsigned long)st.st_size, "");
        free(image);
    }
    close_keep_errno(fd);
    if (rc != 0 && errno != EEXIST) {
        failedf("load module %s", path);
        return -1;
    }
    return rc == 0 ? 1 : 0;
}

/* Paths in load-order are relative to /lib/modules and already in dependency order. */
static void load_modules(void)
{
    FILE *f = fopen(LOAD_ORDER, "re");
    if (!f) {
        if (errno != ENOENT) failed("open " LOAD_ORDER);
        return;
    }
    char line[512], path[600];
    int loaded = 0, errors = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#') continue;
        snprintf(path, sizeof path, "%s%s", line[0] == '/' ? "" : "/lib/modules/", line);
        int r = load_module(path);
        if (r > 0)
            loaded++;
        else if (r < 0)
            errors++;
    }
    fclose(f);
    say("loaded %d modules%s at %.2f s", loaded, errors ? " (with errors)" : "", uptime_s());
}

/* Against the clock, not a count of sleeps: under TCG a 5 ms sleep can take far longer. */
static int wait_for_block(const char *path, long timeout_ms)
{
    struct stat st;
    double deadline = uptime_s() + (double)timeout_ms / 1000.0;
    for (;;) {
        if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) return 0;
        if (uptime_s() >= deadline) return -1;
        sleep_ms(5);
    }
}

static void mount_root(void)
{
    char data[256];
    unsigned long flags = mount_options(cfg.rootflags, data, sizeof data);
    if (wait_for_block(cfg.root, ROOT_WAIT_MS) != 0) {
        say("root device %s did not appear within %d s (disk not attached, or its virtio driver "
            "is neither built in nor in the initramfs)",
            cfg.root, ROOT_WAIT_MS / 1000);
        die("no root device");
    }
    if (mkdir(NEWROOT, 0755) != 0 && errno != EEXIST) failed("mkdir " NEWROOT);
    if (mount(cfg.root, NEWROOT, cfg.rootfstype, flags, data[0] ? data : NULL) != 0) {
        failedf("mount root %s", cfg.root);
        die("cannot mount the root filesystem");
    }
    say("mounted %s (%s) at %.2f s", cfg.root, cfg.rootfstype, uptime_s());
}

/* Moves the API filesystems into the new root and makes it "/", as switch_root does. */
static void switch_root(void)
{
    static const char *const api[] = {"/dev", "/proc", "/sys"};
    char target[64];
    if (chdir(NEWROOT) != 0) {
        failed("chdir " NEWROOT);
        die("cannot switch root");
    }
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
        snprintf(target, sizeof target, "%s%s", NEWROOT, api[i]);
        if (mkdir(target, 0755) != 0 && errno != EEXIST) failedf("mkdir %s", target);
        if (mount(api[i], target, NULL, MS_MOVE, NULL) != 0) {
            failedf("move mount %s", api[i]);
            /* systemd mounts /proc and /sys itself; a stale mount here would only leak. */
            umount2(api[i], MNT_DETACH);
        }
    }
    if (mount(".", "/", NULL, MS_MOVE, NULL) != 0) {
        failed("move mount " NEWROOT " to /");
        die("cannot switch root");
    }
    if (chroot(".") != 0) {
        failed("chroot");
        die("cannot switch root");
    }
    if (chdir("/") != 0) failed("chdir /");
}

/*
 * The work disk arrives from the host as an empty ext4 (the host never copies a tree out of a
 * filesystem someone else wrote). On its first boot it is seeded here, inside the guest, from the
 * image's own /root; an xattr on its root directory records that, so a seed interrupted by a crash
 * is redone and a seeded disk is never touched again. When the host has grown the disk file, the
 * filesystem is grown online to fill it.
 */
#define SEED_XATTR "trusted.banger.seeded"
/* Must match WORK_LABEL_UNSEEDED in src/guest/vm-boot.ts. */
#define WORK_LABEL_UNSEEDED "banger-unseeded"
#define SEED_MAX_DEPTH 128
#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, unsigned long long)
#endif

static int seed_entry(int sdir, int ddir, const char *name, const struct stat *st, int depth, long *count);

static void seed_attrs(int ddir, const char *name, const struct stat *st)
{
    /* chown clears set-id bits, so the mode comes after it; symlinks have no mode of their own. */
    if (fchownat(ddir, name, st->st_uid, st->st_gid, AT_SYMLINK_NOFOLLOW) != 0) failedf("seed: chown %s", name);
    if (!S_ISLNK(st->st_mode) && fchmodat(ddir, name, st->st_mode & 07777, 0) != 0) failedf("seed: chmod %s", name);
    struct timespec times[2] = {st->st_atim, st->st_mtim};
    utimensat(ddir, name, times, AT_SYMLINK_NOFOLLOW);
}

static int seed_dir(int sdir, int ddir, int depth, long *count)
{
    if (depth > SEED_MAX_DEPTH) {
        say("seed: directories nested deeper than %d levels; the rest is not copied", SEED_MAX_DEPTH);
        return -1;
    }
    int dup_fd = dup(sdir);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        failed("seed: open directory");
        if (dup_fd >= 0) close(dup_fd);
        return -1;
    }
    int errors = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (fstatat(sdir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            failedf("seed: stat %s", e->d_name);
            errors++;
            continue;
        }
        errors += seed_entry(sdir, ddir, e->d_name, &st, depth, count) != 0;
    }
    closedir(d);
    return errors ? -1 : 0;
}

/* Idempotent: an entry already on the work disk (from a seed cut short) is replaced or merged. */
static int seed_entry(int sdir, int ddir, const char *name, const struct stat *st, int depth, long *count)
{
    int rc = 0;
    if (S_ISDIR(st->st_mode)) {
        if (mkdirat(ddir, name, 0700) != 0 && errno != EEXIST) {
            failedf("seed: mkdir %s", name);
            return -1;
        }
        int ns = openat(sdir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int nd = openat(ddir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (ns < 0 || nd < 0) {
            failedf("seed: open directory %s", name);
            rc = -1;
        } else {
            rc = seed_dir(ns, nd, depth + 1, count);
        }
        if (ns >= 0) close(ns);
        if (nd >= 0) close(nd);
    } else if (S_ISREG(st->st_mode)) {
        int in = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        unlinkat(ddir, name, 0);
        int out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (in < 0 || out < 0) {
            failedf("seed: copy %s", name);
            rc = -1;
        }
        for (off_t left = st->st_size; rc == 0 && left > 0;) {
            ssize_t n = sendfile(out, in, NULL, (size_t)(left > (1 << 30) ? (1 << 30) : left));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                failedf("seed: copy %s", name);
                rc = -1;
                break;
            }
            left -= n;
        }
        if (in >= 0) close(in);
        if (out >= 0 && close(out) != 0 && rc == 0) {
            failedf("seed: write %s", name);
            rc = -1;
        }
    } else if (S_ISLNK(st->st_mode)) {
        char target[4096];
        ssize_t n = readlinkat(sdir, name, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = '\0';
            unlinkat(ddir, name, 0);
        }
        if (n < 0 || symlinkat(target, ddir, name) != 0) {
            failedf("seed: symlink %s", name);
            rc = -1;
        }
    } else if (S_ISFIFO(st->st_mode) || S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) || S_ISSOCK(st->st_mode)) {
        unlinkat(ddir, name, 0);
        if (mknodat(ddir, name, st->st_mode, st->st_rdev) != 0) {
            failedf("seed: mknod %s", name);
            rc = -1;
        }
    }
    if (rc == 0) {
        seed_attrs(ddir, name, st);
        (*count)++;
    }
    return rc;
}

/* The image's /root, opened before the work disk hides it; -1 when it is absent or not a directory. */
static int open_seed_dir(void)
{
    int fd = open(cfg.work_mount, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT)
        failedf("open the image's %s to seed the work disk (a symlink is not followed)", cfg.work_mount);
    return fd;
}

/*
 * Only a work disk the host made empty for this purpose is seeded: its ext4 label says so. A disk
 * from before guest-side seeding (label banger-work) already holds the user's files and is left
 * alone, whatever it lacks.
 */
static int work_disk_wants_seed(void)
{
    char label[17] = {0};
    int fd = open(cfg.work_disk, O_RDONLY | O_CLOEXEC);
    /* The ext4 superblock starts at byte 1024; s_volume_name is 16 bytes at offset 120 in it. */
    ssize_t n = fd >= 0 ? pread(fd, label, 16, 1024 + 120) : -1;
    if (fd >= 0) close(fd);
    return n == 16 && strcmp(label, WORK_LABEL_UNSEEDED) == 0;
}

static void seed_work_disk(int seed)
{
    char flag = 0;
    if (getxattr(cfg.work_mount, SEED_XATTR, &flag, 1) == 1 || !work_disk_wants_seed()) return;
    int dest = open(cfg.work_mount, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dest < 0) {
        failedf("open work disk %s", cfg.work_mount);
        return;
    }
    long count = 0;
    int rc = 0;
    if (seed >= 0) {
        struct stat st;
        rc = seed_dir(seed, dest, 0, &count);
        if (fstat(seed, &st) == 0) {
            if (fchown(dest, st.st_uid, st.st_gid) != 0 || fchmod(dest, st.st_mode & 07777) != 0)
                failed("seed: set owner/mode of the work disk's root");
        }
    }
    if (rc == 0 && setxattr(cfg.work_mount, SEED_XATTR, "1", 1, 0) != 0) failed("seed: mark the work disk seeded");
    close(dest);
    say("seeded the work disk from the image's %s: %ld entries%s", cfg.work_mount, count,
        rc ? " (with errors; retried next boot)" : "");
}

static void grow_work_fs(void)
{
    int dev = open(cfg.work_disk, O_RDONLY | O_CLOEXEC);
    unsigned long long bytes = 0;
    if (dev < 0 || ioctl(dev, BLKGETSIZE64, &bytes) != 0) {
        failedf("size of %s", cfg.work_disk);
        if (dev >= 0) close(dev);
        return;
    }
    close(dev);
    struct statfs sf;
    int dir = open(cfg.work_mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0 || fstatfs(dir, &sf) != 0 || sf.f_bsize <= 0) {
        failedf("statfs %s", cfg.work_mount);
        if (dir >= 0) close(dir);
        return;
    }
    unsigned long long blocks = bytes / (unsigned long long)sf.f_bsize;
    /* The kernel answers "nothing to do" at once when the filesystem already fills the disk. */
    if (ioctl(dir, EXT4_IOC_RESIZE_FS, &blocks) != 0) failedf("grow the work filesystem on %s", cfg.work_disk);
    close(dir);
}

static void mount_work_disk(void)
{
    if (!cfg.work_disk[0]) return;
    if (wait_for_block(cfg.work_disk, WORK_WAIT_MS) != 0) {
        say("work disk %s did not appear within %d s; continuing without it", cfg.work_disk, WORK_WAIT_MS / 1000);
        return;
    }
    if (mkdir(cfg.work_mount, 0700) != 0 && errno != EEXIST) failedf("mkdir %s", cfg.work_mount);
    int seed = open_seed_dir();
    if (mount(cfg.work_disk, cfg.work_mount, "ext4", MS_NOATIME, NULL) != 0) {
        failedf("mount work disk %s", cfg.work_disk);
        if (seed >= 0) close(seed);
        return;
    }
    say("mounted work disk %s on %s", cfg.work_disk, cfg.work_mount);
    grow_work_fs();
    seed_work_disk(seed);
    if (seed >= 0) close(seed);
}

static int copy_file(int sdir, int ddir, const char *name, const struct stat *st)
{
    static const char tmp[] = ".banger-init.tmp";
    int in = openat(sdir, name, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        failedf("open payload file %s", name);
        return -1;
    }
    unlinkat(ddir, tmp, 0);
    int out = openat(ddir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        failedf("create %s", name);
        close(in);
        return -1;
    }
    int rc = 0;
    off_t left = st->st_size;
    while (left > 0) {
        ssize_t n = sendfile(out, in, NULL, (size_t)left);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            failedf("copy %s", name);
            rc = -1;
            break;
        }
        left -= n;
    }
    /* chown clears set-id bits, so the mode comes after it. */
    if (rc == 0 && fchown(out, 0, 0) != 0) {
        failedf("chown %s", name);
        rc = -1;
    }
    if (rc == 0 && fchmod(out, st->st_mode & 07777) != 0) {
        failedf("chmod %s", name);
        rc = -1;
    }
    close(in);
    if (close(out) != 0 && rc == 0) {
        failedf("write %s", name);
        rc = -1;
    }
    /* Rename over the old file: replaces a symlink or a busy executable as a whole. */
    if (rc == 0 && renameat(ddir, tmp, ddir, name) != 0) {
        failedf("install %s", name);
        rc = -1;
    }
    if (rc != 0) unlinkat(ddir, tmp, 0);
    return rc;
}

static int copy_symlink(int sdir, int ddir, const char *name)
{
    char target[4096];
    ssize_t n = readlinkat(sdir, name, target, sizeof target - 1);
    if (n < 0) {
        failedf("readlink payload %s", name);
        return -1;
    }
    target[n] = '\0';
    if (unlinkat(ddir, name, 0) != 0 && errno != ENOENT) {
        failedf("replace %s", name);
        return -1;
    }
    if (symlinkat(target, ddir, name) != 0) {
        failedf("symlink %s", name);
        return -1;
    }
    if (fchownat(ddir, name, 0, 0, AT_SYMLINK_NOFOLLOW) != 0) failedf("chown %s", name);
    return 0;
}

/*
 * Runs inside the new root, so destination paths resolve there, including absolute symlinks such
 * as merged-/usr links. Existing directories keep their mode; new ones get the payload's.
 */
static int copy_tree(int sdir, int ddir, int *count)
{
    int dup_fd = dup(sdir);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        failed("open payload directory");
        if (dup_fd >= 0) close(dup_fd);
        return -1;
    }
    int errors = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        struct stat st;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        if (fstatat(sdir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            failedf("stat payload %s", name);
            errors++;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (mkdirat(ddir, name, 0700) == 0) {
                if (fchownat(ddir, name, 0, 0, 0) != 0 || fchmodat(ddir, name, st.st_mode & 07777, 0) != 0)
                    failedf("set owner/mode of %s", name);
            } else if (errno != EEXIST) {
                failedf("mkdir %s", name);
                errors++;
                continue;
            }
            int ns = openat(sdir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int nd = openat(ddir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (ns < 0 || nd < 0) {
                failedf("open directory %s", name);
                errors++;
            } else {
                (*count)++;
                errors += copy_tree(ns, nd, count) != 0;
            }
            if (ns >= 0) close(ns);
            if (nd >= 0) close(nd);
        } else if (S_ISREG(st.st_mode)) {
            if (copy_file(sdir, ddir, name, &st) == 0)
                (*count)++;
            else
                errors++;
        } else if (S_ISLNK(st.st_mode)) {
            if (copy_symlink(sdir, ddir, name) == 0)
                (*count)++;
            else
                errors++;
        } else {
            say("payload entry %s is not a file, directory or symlink; skipped", name);
        }
    }
    closedir(d);
    return errors ? -1 : 0;
}

/* Frees the initramfs' RAM: everything on the old root's filesystem, never crossing into mounts. */
static void delete_contents(int dir, dev_t dev)
{
    int dup_fd = dup(dir);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (fstatat(dir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dev) continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dir, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) {
                delete_contents(sub, dev);
                close(sub);
            }
            unlinkat(dir, e->d_name, AT_REMOVEDIR);
        } else {
            unlinkat(dir, e->d_name, 0);
        }
    }
    closedir(d);
}

static int is_executable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static void set_hostname(void)
{
    char name[256];
    FILE *f = fopen("/etc/hostname", "re");
    if (!f) return;
    if (fgets(name, sizeof name, f)) {
        name[strcspn(name, " \t\r\n")] = '\0';
        if (name[0] && sethostname(name, strlen(name)) != 0) failed("sethostname");
    }
    fclose(f);
}

static pid_t start_agent(void)
{
    if (!is_executable(cfg.agent)) {
        say("agent %s is missing or not executable; not starting it", cfg.agent);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        failed("fork agent");
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        char *const args[] = {cfg.agent, NULL};
        execv(cfg.agent, args);
        failedf("exec agent %s", cfg.agent);
        _exit(127);
    }
    say("started agent %s (pid %d)", cfg.agent, (int)pid);
    return pid;
}

/*
 * Images without systemd: run the first-boot script (e.g. install sshd) in the background with
 * /bin/sh, output to the console. With systemd, a unit in the payload runs it instead.
 */
static void start_first_boot(void)
{
    if (!cfg.first_boot[0]) return;
    if (access(cfg.first_boot, R_OK) != 0 || !is_executable("/bin/sh")) {
        say("first-boot script %s or /bin/sh missing; skipped", cfg.first_boot);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        failed("fork first-boot");
        return;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        int fd = open("/dev/console", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char *const args[] = {(char *)"/bin/sh", cfg.first_boot, NULL};
        execv("/bin/sh", args);
        _exit(127);
    }
    say("started first-boot script %s (pid %d)", cfg.first_boot, (int)pid);
}

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* No init in the image: stay PID 1, reap orphans, keep the agent alive, power off on request. */
static void __attribute__((noreturn)) supervise(pid_t agent)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGPWR, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* Ctrl-Alt-Del then arrives as SIGINT instead of an immediate reboot. */
    reboot(RB_DISABLE_CAD);
    for (;;) {
        if (stop_requested) {
            say("stop requested; powering off");
            kill(-1, SIGTERM);
            sleep_ms(1000);
            kill(-1, SIGKILL);
            power_off();
            stop_requested = 0;
        }
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == ECHILD) pause();
            continue;
        }
        if (pid == agent) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (code == 127) {
                say("agent could not be executed; not restarting it");
                agent = -1;
                continue;
            }
            say("agent exited with status %d; restarting it in 1 s", code);
            sleep_ms(1000);
            agent = start_agent();
        }
    }
}

/*
 * The guest's static address, set here with plain ioctls so every image gets a working network
 * with no DHCP client, no iproute2 and no network manager. Network namespaces survive
 * switch_root, so what is configured here is what the real init finds.
 */
static void configure_network(void)
{
    if (!cfg.net_addr[0]) return;
    char addr[64];
    snprintf(addr, sizeof addr, "%s", cfg.net_addr);
    char *slash = strchr(addr, '/');
    int prefix = slash ? atoi(slash + 1) : 24;
    if (slash) *slash = '\0';
    struct in_addr ip, mask, gw;
    if (inet_pton(AF_INET, addr, &ip) != 1 || prefix < 1 || prefix > 32) {
        say("ignoring malformed net_addr \"%s\"", cfg.net_addr);
        return;
    }
    mask.s_addr = net_prefix_mask(prefix);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        failed("socket(AF_INET)");
        return;
    }
    net_link_up(fd, "lo");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", cfg.net_dev);
    /* virtio_net registers its device asynchronously after insmod returns. */
    for (int i = 0; i < 50 && ioctl(fd, SIOCGIFINDEX, &ifr) != 0; i++) sleep_ms(20);
    if (net_set_ipv4(fd, cfg.net_dev, ip, mask) != 0) {
        failedf("set address and netmask on %s", cfg.net_dev);
        close(fd);
        return;
    }
    if (net_link_up(fd, cfg.net_dev) != 0) failedf("bring up %s", cfg.net_dev);
    if (cfg.net_gw[0] && inet_pton(AF_INET, cfg.net_gw, &gw) == 1 && net_add_default_route(fd, cfg.net_dev, gw) != 0)
        failedf("add default route via %s", cfg.net_gw);
    close(fd);
    say("network %s %s via %s", cfg.net_dev, cfg.net_addr, cfg.net_gw[0] ? cfg.net_gw : "-");
}

int main(int argc, char **argv)
{
    (void)argc;
    /* The kernel opens /dev/console for fds 0-2 only if the node exists in the archive; make sure. */
    ensure_std_fds("/dev/console");
    mount_api("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
    ensure_std_fds("/dev/console");
    mount_api("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    mount_api("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    say("started at %.2f s", uptime_s());

    read_cmdline();
    read_config();
    load_modules();
    configure_network();
    mount_root();

    /* Opened before the switch: afterwards the initramfs is reachable only through these. */
    int payload = open(PAYLOAD_ROOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (payload < 0 && errno != ENOENT) failed("open " PAYLOAD_ROOT);
    int oldroot = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat oldst;
    if (oldroot >= 0 && fstat(oldroot, &oldst) != 0) {
        close(oldroot);
        oldroot = -1;
    }

    say("switching root");
    switch_root();
    mount_work_disk();
    if (payload >= 0) {
        int count = 0;
        int dest = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dest < 0)
            failed("open new root");
        else if (copy_tree(payload, dest, &count) == 0)
            say("installed %d payload entries", count);
        else
            say("installed %d payload entries; some failed (see above)", count);
        if (dest >= 0) close(dest);
        close(payload);
    }
    if (oldroot >= 0) {
        delete_contents(oldroot, oldst.st_dev);
        close(oldroot);
    }
    if (!getenv("PATH")) setenv("PATH", DEFAULT_PATH, 1);

    static const char *const systemd[] = {"/lib/systemd/systemd", "/usr/lib/systemd/systemd"};
    for (size_t i = 0; i < sizeof systemd / sizeof systemd[0]; i++) {
        if (!is_executable(systemd[i])) continue;
        say("starting systemd at %.2f s", uptime_s());
        argv[0] = (char *)"/sbin/init";
        execve(systemd[i], argv, environ);
        failedf("exec %s", systemd[i]);
    }

    /* No systemd: its unit cannot start the agent, and nothing else sets the hostname. */
    set_hostname();
    pid_t agent = start_agent();
    start_first_boot();
    if (is_executable("/sbin/init")) {
        say("starting /sbin/init");
        argv[0] = (char *)"/sbin/init";
        execve("/sbin/init", argv, environ);
        failed("exec /sbin/init");
    }
    say("no init in the image; supervising the agent as PID 1");
    supervise(agent);
}
