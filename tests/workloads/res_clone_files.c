/* Two processes sharing one fd table (clone(CLONE_FILES) without CLONE_THREAD).
 * usage: res_clone_files STATE      STATE: counter= (rewritten every 2 ms by the root)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static int child(void *arg)
{
	(void)arg;
	for (;;)
		nap_ms(100);
	return 0;
}

int main(int argc, char **argv)
{
	static char stack[65536];
	unsigned long counter = 0;
	char tmp[4096], buf[64];

	if (argc < 2)
		return 2;
	if (clone(child, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL) < 0)
		return 3;
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		int n = snprintf(buf, sizeof buf, "counter=%lu\n", ++counter);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, buf, n) == n && close(fd) == 0)
				rename(tmp, argv[1]);
			else
				close(fd);
		}
		nap_ms(2);
	}
}
