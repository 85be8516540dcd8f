/* Workload of the namespace tests (tests/integration/test_ns_*.py).
 *
 * usage: ns_counter STATE
 * Every 2 ms: counter += 1, then STATE is rewritten (STATE.tmp, rename) with
 *   boot=<64 random bits drawn once at start>   (a restarted program would draw new ones)
 *   counter=N
 *   hostname=<uname nodename>
 * stdio is /dev/null (the launcher's); no fd stays open between iterations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0;
	char tmp[4096], buf[4096];
	struct utsname u;
	int n, fd;

	if (argc < 2)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		counter++;
		uname(&u);
		n = snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\nhostname=%s\n",
			     (unsigned long long)boot, (unsigned long long)counter, u.nodename);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, buf, n) == n && close(fd) == 0)
				rename(tmp, argv[1]);
			else
				close(fd);
		}
		struct timespec ts = { 0, 2000000L };
		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
}
