/* Socketpairs with unread data: a stream pair with bytes queued on both ends and a
 * datagram pair with three datagrams queued on one end.
 *
 * usage: res_unixpair STATE GO [fds]
 * Until the file GO exists it only counts; then it reads every queued item once and
 * reports what it got.  STATE: boot= counter= result=waiting|ok|bad got=... fd=
 * With "fds", one more datagram carrying an fd (SCM_RIGHTS) is queued on the datagram
 * pair's receiving end, whose number is reported as fd=.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include "wl_state.h"

int main(int argc, char **argv)
{
	int s[2], d[2];
	uint64_t boot = 0, counter = 0;
	char body[1024], got[512] = "", r1[64] = "", r2[64] = "", dg[3][16];
	const char *result = "waiting";

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d))
		return 2;
	if (write(s[0], "hello-stream", 12) != 12 || write(s[1], "back", 4) != 4)
		return 2;
	if (argc > 3 && !strcmp(argv[3], "fds")) {
		char cbuf[CMSG_SPACE(sizeof(int))];
		struct iovec iov = { "f", 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof cbuf };
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &s[0], sizeof(int));
		if (sendmsg(d[0], &mh, 0) != 1)
			return 2;
	}
	for (int i = 0; i < 3; i++) {
		char m[8];
		int n = snprintf(m, sizeof m, "d%d", i + 1);
		if (send(d[0], m, n, 0) != n)
			return 2;
	}
	for (;;) {
		counter++;
		if (access(argv[2], F_OK) == 0 && !strcmp(result, "waiting")) {
			ssize_t a = recv(s[1], r1, sizeof r1 - 1, MSG_DONTWAIT);
			ssize_t b = recv(s[0], r2, sizeof r2 - 1, MSG_DONTWAIT);
			int ok = a == 12 && b == 4 && !memcmp(r1, "hello-stream", 12) && !memcmp(r2, "back", 4);
			for (int i = 0; i < 3; i++) {
				ssize_t n = recv(d[1], dg[i], sizeof dg[i] - 1, MSG_DONTWAIT);
				dg[i][n > 0 ? n : 0] = 0;
				char want[8];
				snprintf(want, sizeof want, "d%d", i + 1);
				ok = ok && n > 0 && !strcmp(dg[i], want);
			}
			snprintf(got, sizeof got, "%s|%s|%s,%s,%s", r1, r2, dg[0], dg[1], dg[2]);
			result = ok ? "ok" : "bad";
		}
		snprintf(body, sizeof body, "boot=%llu\ncounter=%llu\nresult=%s\ngot=%s\nfd=%d\n",
			 (unsigned long long)boot, (unsigned long long)counter, result, got, d[1]);
		put_state(argv[1], body);
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, 0);
	}
}
