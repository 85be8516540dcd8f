/* A numbered byte stream through a pipe to a slow reader, plus fd-table sharing.
 *
 * usage: res_pipe STATE FILE
 * The root makes a pipe (F_SETPIPE_SZ 128 KiB), forks a writer that writes 32-bit sequence
 * numbers 0,1,2,... as fast as the pipe takes them, and reads them slowly (64 bytes every
 * 2 ms), so the pipe is full whenever it is checkpointed.  Any gap or duplicate sets bad=1.
 * It also opens FILE, dup()s it (shared offset) with the dup close-on-exec, and the forked
 * writer inherits both: the writer appends 8 bytes per iteration through its inherited fd,
 * the root checks that lseek(fd, 0, SEEK_CUR) on its own dup follows (one offset for all).
 * STATE (tmp + rename): boot= counter= bad= why= pipefd= filefd= dupfd= pipesz=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void state(const char *path, const char *buf, int n)
{
	char tmp[4096];
	int fd;

	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, buf, n) == n && close(fd) == 0)
		rename(tmp, path);
	else
		close(fd);
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0;
	uint32_t expect = 0, buf[16];
	char out[1024], why[256] = "";
	int p[2], ffd, dfd, bad = 0, sz, n;

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	if (pipe(p))
		return 3;
	fcntl(p[1], F_SETPIPE_SZ, 128 << 10);
	sz = fcntl(p[0], F_GETPIPE_SZ);
	ffd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
	dfd = fcntl(ffd, F_DUPFD_CLOEXEC, 20);
	if (ffd < 0 || dfd < 0)
		return 4;
	if (fork() == 0) {
		uint32_t seq = 0, chunk[256];
		uint64_t w = 0;
		close(p[0]);
		for (;;) {
			for (int i = 0; i < 256; i++)
				chunk[i] = seq + i;
			if (write(p[1], chunk, sizeof chunk) != sizeof chunk)
				_exit(5);   /* writes up to PIPE_BUF... 1 KiB is atomic */
			seq += 256;
			if (write(ffd, &w, 8) == 8)
				w++;
		}
	}
	close(p[1]);
	for (;;) {
		off_t before, after;
		n = read(p[0], buf, sizeof buf);
		if (n != sizeof buf) {
			bad = 1;
			snprintf(why, sizeof why, "read returned %d errno %d", n, errno);
		}
		for (int i = 0; !bad && i < 16; i++) {
			if (buf[i] != expect) {
				bad = 1;
				snprintf(why, sizeof why, "got %u expected %u", buf[i], expect);
			}
			expect++;
		}
		/* the writer only appends: the shared offset never goes back */
		before = lseek(dfd, 0, SEEK_CUR);
		after = lseek(ffd, 0, SEEK_CUR);
		if (!bad && after < before) {
			bad = 1;
			snprintf(why, sizeof why, "offset went back %lld -> %lld",
				 (long long)before, (long long)after);
		}
		counter++;
		n = snprintf(out, sizeof out,
			     "boot=%016llx\ncounter=%llu\nbad=%d\nwhy=%s\nexpect=%u\npipefd=%d\n"
			     "filefd=%d\ndupfd=%d\npipesz=%d\noffset=%lld\n",
			     (unsigned long long)boot, (unsigned long long)counter, bad, why,
			     expect, p[0], ffd, dfd, sz, (long long)after);
		state(argv[1], out, n);
		nap_ms(2);
	}
}
