/* Regular files, an O_APPEND log, a deleted-but-open file, a memfd and cwd in a subdir.
 *
 * usage: res_files STATE DIR        (DIR contains sub/, made by the test, and data: 4096
 *                                     bytes, byte i == i % 251)
 * Setup: chdir(DIR/sub); fd "data" O_RDONLY; fd "log" O_WRONLY|O_APPEND (log.txt in cwd);
 * fd "ghost" /tmp file created, 8-byte counter written, unlinked; memfd "res-memfd" with
 * 8192 bytes of pattern, sealed F_SEAL_SHRINK|F_SEAL_GROW.
 * Every 2 ms the program checks and advances each of them:
 *   data: lseek(SEEK_CUR) == n % 4096 expected, read 1 byte == that offset % 251
 *   log: appends "n\n" (the test checks the lines are 1..N without gap or duplicate)
 *   ghost: fstat nlink == 0, pread counter == n, pwrite n+1
 *   memfd: F_GET_SEALS unchanged, pattern byte at n % 8192, size 8192
 *   cwd: getcwd() == DIR/sub
 * STATE: boot= counter= bad= why= and the fd numbers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static char why[512];
static int bad;

static void fail(const char *fmt, long long a, long long b)
{
	if (bad)
		return;
	bad = 1;
	snprintf(why, sizeof why, fmt, a, b);
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, n = 0, c;
	char path[PATH_MAX], sub[PATH_MAX], cwd[PATH_MAX], tmp[PATH_MAX], out[2048], line[32];
	unsigned char b, pat[8192];
	int data, logfd, ghost, mfd, seals, len, fd;
	struct stat st;

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	snprintf(sub, sizeof sub, "%s/sub", argv[2]);
	if (chdir(sub))
		return 3;
	snprintf(path, sizeof path, "%s/data", argv[2]);
	data = open(path, O_RDONLY);
	logfd = open("log.txt", O_WRONLY | O_APPEND | O_CREAT, 0644);
	snprintf(tmp, sizeof tmp, "/tmp/res-ghost-%d-%llx", getpid(), (unsigned long long)boot);
	ghost = open(tmp, O_RDWR | O_CREAT | O_EXCL, 0640);
	c = 0;
	if (data < 0 || logfd < 0 || ghost < 0 || pwrite(ghost, &c, 8, 0) != 8 || unlink(tmp))
		return 4;
	mfd = memfd_create("res-memfd", MFD_ALLOW_SEALING);
	for (int i = 0; i < 8192; i++)
		pat[i] = (unsigned char)(i * 7 + 3);
	if (mfd < 0 || write(mfd, pat, sizeof pat) != sizeof pat ||
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		return 5;
	for (;;) {
		off_t pos = lseek(data, 0, SEEK_CUR);
		if (pos != (off_t)(n % 4096))
			fail("data offset %lld, expected %lld", pos, n % 4096);
		if (read(data, &b, 1) != 1 || b != pos % 251)
			fail("data byte at %lld is %lld", pos, b);
		if (pos == 4095)
			lseek(data, 0, SEEK_SET);
		len = snprintf(line, sizeof line, "%llu\n", (unsigned long long)n + 1);
		if (write(logfd, line, len) != len)
			fail("log write failed errno %lld %lld", errno, 0);
		if (fstat(ghost, &st) || st.st_nlink != 0)
			fail("ghost nlink %lld %lld", st.st_nlink, 0);
		if (pread(ghost, &c, 8, 0) != 8 || c != n)
			fail("ghost counter %lld, expected %lld", c, n);
		c = n + 1;
		if (pwrite(ghost, &c, 8, 0) != 8)
			fail("ghost write %lld %lld", errno, 0);
		seals = fcntl(mfd, F_GET_SEALS);
		if (seals != (F_SEAL_SHRINK | F_SEAL_GROW))
			fail("memfd seals %#llx %lld", seals, 0);
		if (pread(mfd, &b, 1, n % 8192) != 1 || b != pat[n % 8192])
			fail("memfd byte %lld is %lld", n % 8192, b);
		if (fstat(mfd, &st) || st.st_size != 8192)
			fail("memfd size %lld %lld", st.st_size, 0);
		if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, sub))
			fail("cwd changed %lld %lld", 0, 0);
		n++;
		len = snprintf(out, sizeof out,
			       "boot=%016llx\ncounter=%llu\nbad=%d\nwhy=%s\ndata=%d\nlog=%d\n"
			       "ghost=%d\nmemfd=%d\nghostpath=%s\n",
			       (unsigned long long)boot, (unsigned long long)n, bad, why, data,
			       logfd, ghost, mfd, tmp);
		snprintf(path, sizeof path, "%s.tmp", argv[1]);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, out, len) == len && close(fd) == 0)
				rename(path, argv[1]);
			else
				close(fd);
		}
		nap_ms(2);
	}
}
