/* The musl client of tests/tests/dns_resolvers.rs: getaddrinfo(NAME, PORT)
 * with AF_UNSPEC (musl asks A and AAAA at once), then a TCP connect to the
 * first address. Built with `musl-gcc -static` at test time.
 *
 *   lookup NAME PORT
 *
 * Prints one result line, `ok ADDR`, `connect ERRNO ADDR` or `gai EAI_...`
 * (`gai EAI_SYSTEM ERRNO`), and on success a second line `addresses A B ...`
 * with every address getaddrinfo returned. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *errno_name(int e)
{
	static char other[32];
	switch (e) {
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ENETUNREACH: return "ENETUNREACH";
	case ETIMEDOUT: return "ETIMEDOUT";
	case EINPROGRESS: return "EINPROGRESS";
	}
	snprintf(other, sizeof other, "errno%d", e);
	return other;
}

static const char *gai_name(int r)
{
	static char other[32];
	switch (r) {
	case EAI_NONAME: return "EAI_NONAME";
	case EAI_AGAIN: return "EAI_AGAIN";
	case EAI_FAIL: return "EAI_FAIL";
	case EAI_NODATA: return "EAI_NODATA";
	case EAI_FAMILY: return "EAI_FAMILY";
	case EAI_SERVICE: return "EAI_SERVICE";
	case EAI_MEMORY: return "EAI_MEMORY";
	case EAI_SYSTEM: return "EAI_SYSTEM";
	}
	snprintf(other, sizeof other, "EAI%d", r);
	return other;
}

static void text(const struct addrinfo *a, char *out, size_t n)
{
	const void *ip = a->ai_family == AF_INET6
		? (const void *)&((const struct sockaddr_in6 *)a->ai_addr)->sin6_addr
		: (const void *)&((const struct sockaddr_in *)a->ai_addr)->sin_addr;
	if (!inet_ntop(a->ai_family, ip, out, n))
		snprintf(out, n, "?");
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: lookup NAME PORT\n");
		return 64;
	}
	struct addrinfo hints, *res, *a;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(argv[1], argv[2], &hints, &res);
	if (r == EAI_SYSTEM) {
		printf("gai EAI_SYSTEM %s\n", errno_name(errno));
		return 0;
	}
	if (r) {
		printf("gai %s\n", gai_name(r));
		return 0;
	}
	char first[INET6_ADDRSTRLEN], addr[INET6_ADDRSTRLEN];
	text(res, first, sizeof first);
	/* A connect the kernel lets through meets the namespace's echo server
	 * (or a closed port) at once; never wait long for a lost SYN. */
	struct timeval tv = { .tv_sec = 3 };
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0
	    || connect(fd, res->ai_addr, res->ai_addrlen) != 0)
		printf("connect %s %s\n", errno_name(errno), first);
	else
		printf("ok %s\n", first);
	printf("addresses");
	for (a = res; a; a = a->ai_next) {
		text(a, addr, sizeof addr);
		printf(" %s", addr);
	}
	printf("\n");
	freeaddrinfo(res);
	return 0;
}
