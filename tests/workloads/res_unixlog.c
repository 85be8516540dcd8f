/* A syslog client (glibc openlog/syslog, connected to /dev/log at once with LOG_NDELAY, as
 * busybox's and glibc's syslog() do): logs "unixlog n=K" every 20 ms, K = 1, 2, 3...
 * Meant to run inside a busybox container whose syslogd owns /dev/log.
 *
 * usage: res_unixlog STATE
 * STATE: boot= counter= peer= (getpeername of the syslog socket, found as the lowest fd
 * that is a socket).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <syslog.h>
#include "wl_state.h"
#include "res_unix_rec.h"

static int syslog_fd(void)
{
	struct stat st;
	for (int fd = 0; fd < 64; fd++)
		if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
			return fd;
	return -1;
}

int main(int argc, char **argv)
{
	uint64_t boot;
	unsigned long long counter = 0;
	char peer[110];

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	openlog("unixlog", LOG_NDELAY, LOG_USER);
	for (;;) {
		syslog(LOG_INFO, "n=%llu", ++counter);
		int fd = syslog_fd();	/* (re)connected by syslog() if syslogd came late */
		write_state(argv[1], "boot=%llu\ncounter=%llu\npeer=%s\n", (unsigned long long)boot,
			    counter, fd < 0 ? "none" : sock_name(fd, 1, peer, sizeof peer));
		nap_ms(20);
	}
}
