/*
 * banger-peercred: prints the credentials of the peer of the Unix socket on fd 3, as the kernel
 * recorded them when the peer connected (SO_PEERCRED): "<pid> <uid> <gid>\n".
 *
 * bangerd-root (the root helper) authenticates each caller with it: Node cannot read SO_PEERCRED,
 * so the helper passes the accepted connection to this tool as fd 3. It reads nothing from the
 * socket and writes nothing to it. Exit 0 with one line on stdout, or 1 with a message on stderr.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/socket.h>

int main(void)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(3, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        perror("banger-peercred: getsockopt(3, SO_PEERCRED)");
        return 1;
    }
    if (len != sizeof(cred)) {
        fprintf(stderr, "banger-peercred: short SO_PEERCRED answer (%u bytes)\n", (unsigned)len);
        return 1;
    }
    if (printf("%ld %lu %lu\n", (long)cred.pid, (unsigned long)cred.uid, (unsigned long)cred.gid) < 0 ||
        fflush(stdout) != 0) {
        perror("banger-peercred: stdout");
        return 1;
    }
    return 0;
}
