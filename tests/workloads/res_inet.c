/* A tiny TCP/UDP server in its own net namespace (brings lo up itself).
 * usage: res_inet STATE [hold]
 *   TCP 127.0.0.1:8080 (SO_REUSEADDR, backlog 17, O_NONBLOCK), TCP [::1]:8086 (IPV6_V6ONLY,
 *   SO_REUSEPORT, backlog 33): each connection gets "counter=N boot=B\n" and is closed.
 *   UDP 127.0.0.1:9090 and [::1]:9096: each datagram is answered the same way.
 *   Also held: an unbound UDP socket, a UDP socket connected to 127.0.0.1:9999 and an
 *   unbound TCP socket.  "hold": also an established connection to itself (client end
 *   and accepted end); "queued": a UDP socket on 127.0.0.1:9191 with a datagram queued
 *   (fd in hc); "closewait": a connection to itself whose accepted end was closed (the
 *   client end, in hc, is in CLOSE_WAIT).
 * STATE (rewritten by rename after every request): boot= counter= and the fd numbers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "wl_net.h"

static uint64_t boot, counter;
static char line[4096];
static const char *state;

static void put_state(void)
{
	char tmp[4096];
	int fd, n = strlen(line);
	snprintf(tmp, sizeof tmp, "%s.tmp", state);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, n) == n && close(fd) == 0)
		rename(tmp, state);
	else
		close(fd);
}

static int xbind(int s, const struct sockaddr *a, socklen_t len)
{
	for (int i = 0; i < 200; i++) {
		if (bind(s, a, len) == 0)
			return 0;
		if (errno != EADDRNOTAVAIL)
			return -1;
		usleep(10000);
	}
	return -1;
}

static int mk4(int type, const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int s = socket(AF_INET, type | SOCK_CLOEXEC, 0);
	inet_pton(AF_INET, ip, &a.sin_addr);
	if (type == SOCK_STREAM) {
		int one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	}
	if (xbind(s, (struct sockaddr *)&a, sizeof a))
		return -1;
	return s;
}

static int mk6(int type, int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	int one = 1, s = socket(AF_INET6, type | SOCK_CLOEXEC, 0);
	a.sin6_addr = in6addr_loopback;
	setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (type == SOCK_STREAM)
		setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (xbind(s, (struct sockaddr *)&a, sizeof a))
		return -1;
	return s;
}

static int reply(char *buf, size_t size)
{
	counter++;
	return snprintf(buf, size, "counter=%llu boot=%016llx\n",
			(unsigned long long)counter, (unsigned long long)boot);
}

int main(int argc, char **argv)
{
	int t4, t6, u4, u6, un, uc, tc, hc = -1, ha = -1, hport = 0;
	struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(9999) };
	char buf[256], fds[512];

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	state = argv[1];
	lo_up();
	t4 = mk4(SOCK_STREAM, "127.0.0.1", 8080);
	t6 = mk6(SOCK_STREAM, 8086);
	u4 = mk4(SOCK_DGRAM, "127.0.0.1", 9090);
	u6 = mk6(SOCK_DGRAM, 9096);
	if (t4 < 0 || t6 < 0 || u4 < 0 || u6 < 0)
		return 3;
	if (listen(t4, 17) || listen(t6, 33))
		return 4;
	fcntl(t4, F_SETFL, fcntl(t4, F_GETFL) | O_NONBLOCK);
	un = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	uc = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
	if (connect(uc, (struct sockaddr *)&peer, sizeof peer))
		return 5;
	tc = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (argc > 2 && !strcmp(argv[2], "queued")) {
		hc = mk4(SOCK_DGRAM, "127.0.0.1", 9191);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(9191) };
		inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
		if (hc < 0 || sendto(un, "ping", 4, 0, (struct sockaddr *)&a, sizeof a) != 4)
			return 7;
		hport = 9191;
	}
	if (argc > 2 && (!strcmp(argv[2], "hold") || !strcmp(argv[2], "closewait"))) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(8080) };
		socklen_t len = sizeof a;
		inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
		hc = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(hc, (struct sockaddr *)&a, sizeof a))
			return 6;
		getsockname(hc, (struct sockaddr *)&a, &len);
		hport = ntohs(a.sin_port);
		while ((ha = accept4(t4, NULL, NULL, SOCK_CLOEXEC)) < 0)
			usleep(1000);
		if (!strcmp(argv[2], "closewait")) {
			struct pollfd w = { hc, POLLIN | POLLRDHUP };
			close(ha);
			ha = -1;
			poll(&w, 1, 10000);
		}
	}
	snprintf(fds, sizeof fds, "t4=%d\nt6=%d\nu4=%d\nu6=%d\nun=%d\nuc=%d\ntc=%d\nhc=%d\n"
		 "ha=%d\nhport=%d\n", t4, t6, u4, u6, un, uc, tc, hc, ha, hport);
	for (;;) {
		struct pollfd p[4] = { { t4, POLLIN }, { t6, POLLIN }, { u4, POLLIN }, { u6, POLLIN } };
		snprintf(line, sizeof line, "boot=%016llx\ncounter=%llu\n%s",
			 (unsigned long long)boot, (unsigned long long)counter, fds);
		put_state();
		if (poll(p, 4, -1) < 0)
			continue;
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			int c = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			int n = reply(buf, sizeof buf);
			if (write(c, buf, n) != n)
				counter += 0;
			close(c);
		}
		for (int i = 2; i < 4; i++) {
			struct sockaddr_storage from;
			socklen_t flen = sizeof from;
			if (!(p[i].revents & POLLIN))
				continue;
			if (recvfrom(p[i].fd, buf, sizeof buf, MSG_DONTWAIT,
				     (struct sockaddr *)&from, &flen) < 0)
				continue;
			int n = reply(buf, sizeof buf);
			sendto(p[i].fd, buf, n, 0, (struct sockaddr *)&from, flen);
		}
	}
}
