/* A counter holding a socketpair, which lxc-cr does not support.
 *
 * usage: wl_sockpair STATE [child]
 * Creates socketpair(AF_UNIX, SOCK_STREAM) and keeps both ends open (with "child", a forked
 * child creates and holds it and the root holds none).  The holder, every 2 ms, increments
 * its counter and rewrites STATE (tmp + rename) with  boot= counter= fd0= fd1= .
 * With "child" the root just sleeps in a loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void hold(const char *path)
{
	uint64_t boot = 0, counter = 0;
	char tmp[4096], buf[512];
	int sv[2], n, fd;

	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		_exit(3);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		_exit(4);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	for (;;) {
		counter++;
		n = snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\nfd0=%d\nfd1=%d\n",
			     (unsigned long long)boot, (unsigned long long)counter, sv[0], sv[1]);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, buf, n) == n && close(fd) == 0)
				rename(tmp, path);
			else
				close(fd);
		}
		nap_ms(2);
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	if (argc > 2 && strcmp(argv[2], "child") == 0) {
		if (fork() == 0)
			hold(argv[1]);
		for (;;)
			nap_ms(100);
	}
	hold(argv[1]);
	return 0;
}
