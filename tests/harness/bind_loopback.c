/* LD_PRELOAD for test servers that cannot be told where to listen (NSS's selfserv, gnutls-serv):
   a bind() to the wildcard address binds the loopback address instead, so nothing a test starts
   listens beyond this machine. Build: cc -shared -fPIC -o bind_loopback.so bind_loopback.c -ldl */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (real_bind == NULL)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr != NULL && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof(a));
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&a, sizeof(a));
        }
    } else if (addr != NULL && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        int v6only = 0;
        socklen_t n = sizeof(v6only);
        memcpy(&a, addr, sizeof(a));
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            /* A dual-stack socket keeps taking IPv4 clients, on 127.0.0.1 only. */
            (void)getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &n);
            inet_pton(AF_INET6, v6only ? "::1" : "::ffff:127.0.0.1", &a.sin6_addr);
            return real_bind(fd, (const struct sockaddr *)&a, sizeof(a));
        }
    }
    return real_bind(fd, addr, len);
}
