/* Runs under a seccomp filter of its own (allow everything: NO_NEW_PRIVS, then
 * SECCOMP_SET_MODE_FILTER) and counts; lxc-cr must refuse it, not restore it without.
 * usage: res_seccomp STATE      STATE: boot= counter= (every 2 ms)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
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
	struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
	struct sock_fprog prog = { 1, allow };
	uint64_t boot = 0, counter = 0;
	char tmp[4096], buf[256];
	int n, fd;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		return 3;
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		counter++;
		n = snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\n",
			     (unsigned long long)boot, (unsigned long long)counter);
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
