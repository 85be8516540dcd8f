/* The workloads' state file: opened once and rewritten in place with pwrite, 4096 bytes,
 * "seq=K" first and "end=K" last (see read_state in tests/integration/treeutil.py).  It is
 * never renamed, so an image holding it open restores even after the program ran on. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	(void)pwrite(state_fd, buf, sizeof buf, 0);
}

/* put_state with a printf format. */
static void __attribute__((unused)) write_state(const char *path, const char *fmt, ...)
{
	char body[3800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(body, sizeof body, fmt, ap);
	va_end(ap);
	put_state(path, body);
}

/* Sleep ms milliseconds, going on after signals. */
static void __attribute__((unused)) nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}
