/* A TCP server and its client in one tree (own net namespace; brings lo up itself),
 * exchanging a numbered stream in both directions over one established connection.
 * usage: res_tcp STATE [v6|bulk|lowfd|peer PORT]
 *   The server (pid 1 of the namespace) listens on 127.0.0.1:7070 (or [::1]:7070 with "v6",
 *   SO_REUSEADDR, O_NONBLOCK on the listener), forks the client, which connects, and accepts
 *   it (TCP_NODELAY on the accepted end).  Each end writes one 16-byte record "%015llu\n"
 *   every 10 ms, numbered from 0, and reads only while at least two of the peer's records
 *   are queued (FIONREAD), so once the stream runs each receive queue always holds unread
 *   bytes.  Every record read must carry the next expected number; otherwise the end writes
 *   "error=..." to its state and stops.  "bulk": the client's end is O_NONBLOCK and it writes
 *   up to 512 records per step while the server reads at most 8 per step, so the client's
 *   send queue and the server's receive queue stay full.
 *   "lowfd": the listener has no SO_REUSEADDR and is moved to fd 20, above the accepted
 *   connection (which a restore then creates first, on the listener's port).
 *   "peer PORT": no server, no fork: one client of a peer outside the tree listening on
 *   127.0.0.1:PORT (in the caller's net namespace); it reads the peer's records as above and
 *   answers each one read with its own next record (so it writes only when spoken to).
 *   Later connections to the listener get "counter=N boot=B\n" and are closed (the server's
 *   request counter, as in res_inet.c).
 * STATE (server) and STATE.client (client), rewritten in place (wl_state.h): boot=
 *   counter= sent= got= fd= port= and error= on a gap or duplicate.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wl_state.h"
#include "wl_net.h"

#define REC 16

static uint64_t boot, counter;
static char err[200];

static socklen_t addr_of(int v6, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(7070);
		a->sin6_addr = in6addr_loopback;
		return sizeof *a;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(7070);
	inet_pton(AF_INET, "127.0.0.1", &a->sin_addr);
	return sizeof *a;
}

static int local_port(int s)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	getsockname(s, (struct sockaddr *)&ss, &len);
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					      : ((struct sockaddr_in *)&ss)->sin_port);
}

/* Write up to max records on c (numbered from *sent), going on after a short write. */
static void put_records(int c, unsigned long long *sent, int max)
{
	static char rec[REC + 1];
	static int off = -1;

	for (int i = 0; i < max && !err[0];) {
		int w;
		if (off < 0) {
			snprintf(rec, sizeof rec, "%015llu\n", *sent);
			off = 0;
		}
		w = write(c, rec + off, REC - off);
		if (w <= 0)
			return;
		off += w;
		if (off == REC) {
			(*sent)++;
			off = -1;
			i++;
		}
	}
}

/* Read up to max records while at least two are queued; each must be the next number. */
static void get_records(int c, unsigned long long *got, int max)
{
	char buf[REC + 1];
	int q = 0;

	while (max-- > 0 && !err[0] && ioctl(c, FIONREAD, &q) == 0 && q >= 2 * REC) {
		int n = 0;
		while (n < REC) {
			int r = read(c, buf + n, REC - n);
			if (r <= 0) {
				snprintf(err, sizeof err, "read-returned-%d", r);
				return;
			}
			n += r;
		}
		buf[REC] = 0;
		if (strtoull(buf, NULL, 10) != *got || buf[REC - 1] != '\n') {
			snprintf(err, sizeof err, "expected-%llu-got-%.15s", *got, buf);
			return;
		}
		(*got)++;
	}
}

static void state(const char *path, unsigned long long sent, unsigned long long got, int fd,
		  int port)
{
	write_state(path, "boot=%016llx\ncounter=%llu\nsent=%llu\ngot=%llu\nfd=%d\nport=%d\n%s%s%s",
		    (unsigned long long)boot, (unsigned long long)counter, sent, got, fd, port,
		    err[0] ? "error=" : "", err, err[0] ? "\n" : "");
}

int main(int argc, char **argv)
{
	int v6 = argc > 2 && !strcmp(argv[2], "v6");
	int bulk = argc > 2 && !strcmp(argv[2], "bulk");
	int lowfd = argc > 2 && !strcmp(argv[2], "lowfd");
	int one = 1, l, c;
	unsigned long long sent = 0, got = 0;
	struct sockaddr_storage ss;
	socklen_t len = addr_of(v6, &ss);
	char path[4096];

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	if (argc > 3 && !strcmp(argv[2], "peer")) {     /* a client of a peer outside */
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
		inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
		c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(c, (struct sockaddr *)&a, sizeof a))
			return 5;
		for (;;) {
			unsigned long long before = got;
			get_records(c, &got, 1 << 20);
			put_records(c, &sent, (int)(got - before));
			state(argv[1], sent, got, c, local_port(c));
			nap_ms(10);
		}
	}
	lo_up();
	l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (!lowfd)
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	for (int i = 0; bind(l, (struct sockaddr *)&ss, len); i++)
		if (i > 200)
			return 3;
		else
			nap_ms(10);
	if (listen(l, 8))
		return 4;
	if (fork() == 0) {                      /* the client */
		snprintf(path, sizeof path, "%s.client", argv[1]);
		c = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(c, (struct sockaddr *)&ss, len))
			return 5;
		if (bulk)
			fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
		for (;;) {
			put_records(c, &sent, bulk ? 512 : 1);
			get_records(c, &got, 1 << 20);
			state(path, sent, got, c, local_port(c));
			nap_ms(10);
		}
	}
	while ((c = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
		nap_ms(1);
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (lowfd) {            /* the listener above the connection: restored after it */
		dup3(l, 20, O_CLOEXEC);
		close(l);
		l = 20;
	}
	fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
	for (;;) {
		struct pollfd p = { l, POLLIN };
		put_records(c, &sent, 1);
		get_records(c, &got, bulk ? 8 : 1 << 20);
		state(argv[1], sent, got, c, local_port(c));
		if (poll(&p, 1, 10) == 1) {
			int k = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			if (k >= 0) {
				char buf[128];
				int n;
				counter++;
				n = snprintf(buf, sizeof buf, "counter=%llu boot=%016llx\n",
					     (unsigned long long)counter, (unsigned long long)boot);
				if (write(k, buf, n) != n)
					counter += 0;
				close(k);
			}
		}
	}
}
