/* A single-threaded counter for the tree dump/restore tests.
 *
 * usage: wl_counter STATE [PAUSEFILE]
 * Every 2 ms: unless PAUSEFILE exists, counter += 1; then STATE is rewritten (write to
 * STATE.tmp, rename) with
 *   boot=<64 random bits drawn once at start>   (a restarted program would draw new ones)
 *   counter=N
 *   paused=0|1
 * stdin/stdout/stderr are not used; no fd stays open between iterations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static void write_state(const char *path, const char *fmt, ...)
{
	char tmp[4096], buf[4096];
	va_list ap;
	int n, fd;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, buf, n) == n && close(fd) == 0)
		rename(tmp, path);
	else
		close(fd);
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0;
	int paused;

	if (argc < 2)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	for (;;) {
		paused = argc > 2 && access(argv[2], F_OK) == 0;
		if (!paused)
			counter++;
		write_state(argv[1], "boot=%016llx\ncounter=%llu\npaused=%d\n",
			    (unsigned long long)boot, (unsigned long long)counter, paused);
		nap_ms(2);
	}
}
