/*
 * Helpers shared by banger-agent and banger-init (agent/common.c, compiled into each binary).
 * One name and one behaviour each; a binary keeps only the ones it calls (--gc-sections).
 */
#ifndef BANGER_COMMON_H
#define BANGER_COMMON_H

#include <stddef.h>
#include <sys/types.h>
#include <netinet/in.h>

/* The program's name, the prefix of its log lines; each program defines it ("banger-agent"). */
extern const char log_name[];

/* Logs "<log_name>: <message>\n" on stderr in one write (cut at 1 KiB), so lines from the kernel,
 * children and this program never interleave mid-line on a shared console. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sleeps the whole time, signals or not. */
void sleep_ms(long ms);

/* Reads a small file whole (up to cap-1 bytes), NUL-terminated; /proc files need read(), not stat
 * sizes. -1 (errno set) when it cannot be opened or read. */
ssize_t read_file(const char *path, char *buf, size_t cap);

/* close() for an error path: errno stays what the failure before it set. */
void close_keep_errno(int fd);

/* Seconds since boot, suspend included (what /proc/uptime says). */
double uptime_s(void);

/* Opens `device` on whichever of fds 0-2 are closed: started with them closed, the first file this
 * program opens would become stdout or stderr and log lines would land in it. */
void ensure_std_fds(const char *device);

/* ---- IPv4 configuration with plain ioctls (no netlink, no iproute2) ---------------------------
 * fd is an AF_INET datagram socket; each returns 0 or -1 with errno set. */
/* IFF_UP on the interface (already up is fine). */
int net_link_up(int fd, const char *ifname);
/* The interface's address and netmask (SIOCSIFADDR replaces the interface's primary address). */
int net_set_ipv4(int fd, const char *ifname, struct in_addr addr, struct in_addr mask);
/* A default route via gw on ifname; one that already exists is fine. */
int net_add_default_route(int fd, const char *ifname, struct in_addr gw);
/* The netmask of a prefix length 1..32, in network byte order. */
unsigned net_prefix_mask(int prefix);

/* Syncs and powers the machine off; returns (having said why) only if the kernel refused. */
void power_off(void);

#endif
