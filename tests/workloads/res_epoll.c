/* An epoll loop over a pipe, an eventfd and a timerfd, plus a held eventfd and a signalfd.
 *
 * usage: res_epoll STATE
 * A forked child writes byte k % 256 (k = 0, 1, ...) into a pipe every 3 ms.  The root
 * waits in epoll_wait on: the pipe's read end (data 1), an eventfd it writes 1 to after
 * every wakeup (data 2, EPOLLET), a periodic 4 ms timerfd (data 3).  It checks the pipe
 * bytes are consecutive and counts wakeups per source.  It also holds an eventfd with count
 * 12345 (EFD_NONBLOCK, never read), and a signalfd for SIGUSR1|SIGUSR2 (blocked).
 * STATE: boot= counter= bad= why= pipe= ev= timer= ticks= hold= sfd= epfd=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
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
	uint64_t boot = 0, counter = 0, npipe = 0, nev = 0, ntimer = 0, ticks = 0, v;
	unsigned char expect = 0, b;
	char why[256] = "", out[1024], tmp[4096];
	int p[2], ev, tfd, hold, sfd, ep, bad = 0, n, fd;
	struct epoll_event e, evs[8];
	struct itimerspec its = { { 0, 4000000 }, { 0, 4000000 } };
	sigset_t set;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot || pipe(p))
		return 2;
	if (fork() == 0) {
		close(p[0]);
		for (unsigned k = 0;; k++) {
			b = k & 0xff;
			if (write(p[1], &b, 1) != 1)
				_exit(3);
			nap_ms(3);
		}
	}
	close(p[1]);
	ev = eventfd(0, EFD_NONBLOCK);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	hold = eventfd(12345, EFD_NONBLOCK);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_NONBLOCK);
	ep = epoll_create1(0);
	if (ev < 0 || tfd < 0 || hold < 0 || sfd < 0 || ep < 0 || timerfd_settime(tfd, 0, &its, NULL))
		return 4;
	e.events = EPOLLIN; e.data.u64 = 1;
	epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
	e.events = EPOLLIN | EPOLLET; e.data.u64 = 2;
	epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
	e.events = EPOLLIN; e.data.u64 = 3;
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		n = epoll_wait(ep, evs, 8, 1000);
		if (n == 0 && !bad) {
			bad = 1;
			snprintf(why, sizeof why, "epoll_wait timed out after 1 s");
		}
		for (int i = 0; i < n; i++) {
			switch (evs[i].data.u64) {
			case 1:
				if (read(p[0], &b, 1) == 1) {
					if (b != expect && !bad) {
						bad = 1;
						snprintf(why, sizeof why, "pipe byte %u, expected %u", b, expect);
					}
					expect = b + 1;
					npipe++;
				}
				break;
			case 2:
				if (read(ev, &v, 8) == 8)
					nev++;
				break;
			case 3:
				if (read(tfd, &v, 8) == 8) {
					ntimer++;
					ticks += v;
				}
				break;
			default:
				bad = 1;
				snprintf(why, sizeof why, "unknown epoll data %llu",
					 (unsigned long long)evs[i].data.u64);
			}
		}
		v = 1;
		if (write(ev, &v, 8) != 8 && !bad) {
			bad = 1;
			snprintf(why, sizeof why, "eventfd write errno %d", errno);
		}
		counter++;
		n = snprintf(out, sizeof out,
			     "boot=%016llx\ncounter=%llu\nbad=%d\nwhy=%s\npipe=%llu\nev=%llu\n"
			     "timer=%llu\nticks=%llu\nhold=%d\nsfd=%d\nepfd=%d\n",
			     (unsigned long long)boot, (unsigned long long)counter, bad, why,
			     (unsigned long long)npipe, (unsigned long long)nev,
			     (unsigned long long)ntimer, (unsigned long long)ticks, hold, sfd, ep);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, out, n) == n && close(fd) == 0)
				rename(tmp, argv[1]);
			else
				close(fd);
		}
	}
}
