/* A single-threaded counter for the tree dump/restore tests.
 *
 * usage: wl_counter STATE [PAUSEFILE]
 * Every 2 ms: unless PAUSEFILE exists, counter += 1; then STATE is rewritten (in place, see
 * put_state) with
 *   boot=<64 random bits drawn once at start>   (a restarted program would draw new ones)
 *   counter=N
 *   paused=0|1
 * stdin/stdout/stderr are not used; STATE stays open (fd 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* The state file is opened once and rewritten in place with pwrite: 4096 bytes, "seq=K" first
 * and "end=K" last, padded with newlines; a reader that sees seq != end caught it mid-write and
 * reads again.  It is never renamed or removed, so an image holding it open restores even
 * after the program ran on (a tmp+rename scheme would leave the image a vanished path). */
static int state_fd = -1;
static unsigned long long state_seq;

static void put_state(const char *path, const char *body)
{
	char buf[4096];
	int n;

	if (state_fd < 0)
		state_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (state_fd < 0)
		return;
	state_seq++;
	memset(buf, '\n', sizeof buf);
	n = snprintf(buf, sizeof buf, "seq=%llu\n%send=%llu\n", state_seq, body, state_seq);
	if (n <= 0 || n >= (int)sizeof buf)
		return;
	buf[n] = '\n';
	if (pwrite(state_fd, buf, sizeof buf, 0) < 0)
		return;			/* nothing better to do: the reader waits for the next */
}

static void write_state(const char *path, const char *fmt, ...)
{
	char body[3800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(body, sizeof body, fmt, ap);
	va_end(ap);
	put_state(path, body);
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
