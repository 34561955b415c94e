/* The helpers both guest binaries use; see common.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>

#include "common.h"

void say(const char *fmt, ...)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s: ", log_name);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(2, buf, (size_t)n) < 0) {
        /* nowhere left to report to */
    }
}

void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

ssize_t read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return close_keep_errno(fd), -1;
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    return (ssize_t)n;
}

void close_keep_errno(int fd)
{
    int e = errno;
    close(fd);
    errno = e;
}

double uptime_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0) return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ensure_std_fds(const char *device)
{
    int fd;
    while ((fd = open(device, O_RDWR | O_NOCTTY | O_CLOEXEC)) >= 0 && fd <= 2) fcntl(fd, F_SETFD, 0);
    if (fd > 2) close(fd);
}

void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    say("reboot(POWER_OFF) failed: %s", strerror(errno));
}

int net_link_up(int fd, const char *ifname)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) return -1;
    if (ifr.ifr_flags & IFF_UP) return 0;
    ifr.ifr_flags |= IFF_UP;
    return ioctl(fd, SIOCSIFFLAGS, &ifr);
}

static void set_inet(struct sockaddr *sa, struct in_addr addr)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr = addr;
    memcpy(sa, &sin, sizeof sin);
}

int net_set_ipv4(int fd, const char *ifname, struct in_addr addr, struct in_addr mask)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    set_inet(&ifr.ifr_addr, addr);
    if (ioctl(fd, SIOCSIFADDR, &ifr) != 0) return -1;
    set_inet(&ifr.ifr_netmask, mask);
    return ioctl(fd, SIOCSIFNETMASK, &ifr);
}

int net_add_default_route(int fd, const char *ifname, struct in_addr gw)
{
    struct rtentry rt;
    char dev[IFNAMSIZ];
    memset(&rt, 0, sizeof rt);
    snprintf(dev, sizeof dev, "%s", ifname);
    set_inet(&rt.rt_dst, (struct in_addr){0});
    set_inet(&rt.rt_genmask, (struct in_addr){0});
    set_inet(&rt.rt_gateway, gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = dev;
    return ioctl(fd, SIOCADDRT, &rt) != 0 && errno != EEXIST ? -1 : 0;
}

unsigned net_prefix_mask(int prefix)
{
    return htonl(prefix >= 32 ? 0xffffffffu : prefix <= 0 ? 0 : 0xffffffffu << (32 - prefix));
}
