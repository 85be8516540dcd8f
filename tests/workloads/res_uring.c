/* Holds an io_uring instance (io_uring_setup, syscall 425, no liburing) and counts.
 * usage: res_uring STATE        STATE: boot= counter= ringfd=   (every 2 ms)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	unsigned char params[120];     /* struct io_uring_params */
	uint64_t boot = 0, counter = 0;
	char tmp[4096], buf[256];
	int ring, n, fd;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	memset(params, 0, sizeof params);
	ring = syscall(425, 4, params);
	if (ring < 0)
		return 3;
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		counter++;
		n = snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\nringfd=%d\n",
			     (unsigned long long)boot, (unsigned long long)counter, ring);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, buf, n) == n && close(fd) == 0)
				rename(tmp, argv[1]);
			else
				close(fd);
		}
		nap_ms(2);
	}
}
