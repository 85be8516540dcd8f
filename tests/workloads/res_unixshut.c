/* Connections with a closed or shut-down side: a stream socketpair whose other end was
 * closed after writing "last-words"; a client whose server wrote "bye" and closed the
 * accepted connection (listener DIR/shut.sock, closed too); a seqpacket socketpair whose
 * one end sent "m1", "m2" and then shutdown(SHUT_WR).
 *
 * usage: res_unixshut DIR
 * Until DIR/go exists it only counts; then it reads everything once and checks the
 * EOFs, the names and that the half-shut pair still works the other way.
 * State file DIR/state: boot= counter= result=waiting|ok|bad got=...
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include "wl_state.h"
#include "res_unix_rec.h"

static char got[1024];

/* Append what recv gives ("EOF", the bytes, or the errno) to got; its length or -1. */
static ssize_t take(int fd, int flags)
{
	char b[64];
	ssize_t n = recv(fd, b, sizeof b - 1, MSG_DONTWAIT | flags);
	size_t l = strlen(got);

	if (n > 0) {
		b[n] = 0;
		snprintf(got + l, sizeof got - l, "%s,", b);
	} else {
		snprintf(got + l, sizeof got - l, "%s,", n == 0 ? "EOF" : strerror(errno));
	}
	return n;
}

int main(int argc, char **argv)
{
	int s[2], p[2];
	struct sockaddr_un a;
	char path[300], st[300], go[300], peer[110];
	uint64_t boot;
	unsigned long long counter = 0;
	const char *result = "waiting";

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	snprintf(path, sizeof path, "%s/shut.sock", argv[1]);
	snprintf(st, sizeof st, "%s/state", argv[1]);
	snprintf(go, sizeof go, "%s/go", argv[1]);
	socklen_t len = unix_addr(&a, path);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (!len || l < 0 || c < 0 || bind(l, (void *)&a, len) || listen(l, 1) ||
	    connect(c, (void *)&a, len))
		return 2;
	int acc = accept(l, 0, 0);
	if (acc < 0 || write(acc, "bye", 3) != 3)
		return 2;
	close(acc);
	close(l);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || write(s[1], "last-words", 10) != 10)
		return 2;
	close(s[1]);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, p) || send(p[0], "m1", 2, 0) != 2 ||
	    send(p[0], "m2", 2, 0) != 2 || shutdown(p[0], SHUT_WR))
		return 2;
	for (;;) {
		counter++;
		if (!strcmp(result, "waiting") && access(go, F_OK) == 0) {
			take(s[0], 0);
			take(s[0], 0);
			take(c, 0);
			take(c, 0);
			take(p[1], 0);
			take(p[1], 0);
			take(p[1], 0);
			int back = send(p[1], "r1", 2, MSG_NOSIGNAL) == 2;
			take(p[0], 0);
			int shut = send(p[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE;
			size_t n = strlen(got);
			snprintf(got + n, sizeof got - n, "peer=%s", sock_name(c, 1, peer, sizeof peer));
			result = back && shut && !strcmp(peer, path) &&
				!strncmp(got, "last-words,EOF,bye,EOF,m1,m2,EOF,r1,", 36) ? "ok" : "bad";
		}
		write_state(st, "boot=%llu\ncounter=%llu\nresult=%s\ngot=%s\n",
			    (unsigned long long)boot, counter, result, got);
		nap_ms(5);
	}
}
