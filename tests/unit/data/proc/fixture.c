/* The process whose /proc files capture.py stores here.  Built and run by capture.py as
 * root: fixture DIR.  It sets up one of every resource test_procfs.py looks at, prints
 * "ready PID TID ZOMBIE CHILD THREADCHILD" and waits to be killed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x) do { if ((x) < 0) { perror(#x); exit(1); } } while (0)

static volatile pid_t thread_tid, thread_child;

static void *thread_main(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "thr x)");
	thread_tid = syscall(SYS_gettid);
	pid_t c = fork();
	if (c == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		prctl(PR_SET_NAME, "thread child");
		for (;;) pause();
	}
	thread_child = c;
	for (;;) pause();
	return NULL;
}

int main(int argc, char **argv)
{
	char path[4096], mnt[2048];
	if (argc != 2) return 2;
	umask(027);
	struct rlimit r = {1000, 4096};
	CHECK(setrlimit(RLIMIT_NOFILE, &r));
	r.rlim_cur = r.rlim_max = RLIM_INFINITY;
	CHECK(setrlimit(RLIMIT_CORE, &r));
	CHECK(personality(PER_LINUX | ADDR_NO_RANDOMIZE));

	/* a private mount with a space in its mount point and its source */
	CHECK(unshare(CLONE_NEWNS));
	CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
	snprintf(mnt, sizeof mnt, "%s/a b", argv[1]);
	CHECK(mount("my src", mnt, "tmpfs", 0, "size=1m"));

	/* a shared mapping of a file whose name has spaces, deleted; and a kept one */
	snprintf(path, sizeof path, "%s/my file (1)", mnt);
	int fd = open(path, O_RDWR | O_CREAT, 0600);
	CHECK(fd); CHECK(ftruncate(fd, 8192));
	if (mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED) return 1;
	close(fd); unlink(path);
	snprintf(path, sizeof path, "%s/kept file", mnt);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	CHECK(fd); CHECK(ftruncate(fd, 4096));
	if (mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) == MAP_FAILED) return 1;
	CHECK(lseek(fd, 100, SEEK_SET));        /* fd 3: pos 100 */

	int efd = eventfd(5, EFD_CLOEXEC | EFD_NONBLOCK);   /* 4 */
	int p[2]; CHECK(pipe2(p, O_CLOEXEC));                 /* 5, 6 */
	int ep = epoll_create1(0);                             /* 7 */
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1234};
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev));
	ev.events = EPOLLIN | EPOLLET; ev.data.u64 = 5;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
	int in = inotify_init1(IN_NONBLOCK);                   /* 8 */
	CHECK(inotify_add_watch(in, argv[1], IN_CREATE | IN_DELETE));
	CHECK(inotify_add_watch(in, mnt, IN_MODIFY));
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);  /* 9 */
	struct itimerspec its = {{1, 0}, {100, 0}};
	CHECK(timerfd_settime(tfd, 0, &its, NULL));
	sigset_t set; sigemptyset(&set); sigaddset(&set, SIGUSR1); sigaddset(&set, SIGUSR2);
	CHECK(sigprocmask(SIG_BLOCK, &set, NULL));
	CHECK(signalfd(-1, &set, SFD_NONBLOCK));               /* 10 */
	int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));  /* 11, 12 */
	CHECK(memfd_create("my memfd", 0));                    /* 13 */

	timer_t t;
	struct sigevent se = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1,
			      .sigev_value.sival_int = 42};
	CHECK(timer_create(CLOCK_MONOTONIC, &se, &t));
	se.sigev_notify = SIGEV_NONE;
	CHECK(timer_create(CLOCK_REALTIME, &se, &t));

	prctl(PR_SET_NAME, "a) (b c)");
	pid_t zombie = fork();
	if (zombie == 0) _exit(7);
	pid_t child = fork();
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		prctl(PR_SET_NAME, "child");
		for (;;) pause();
	}
	pthread_t th;
	pthread_create(&th, NULL, thread_main, NULL);
	while (!thread_child) usleep(1000);
	se.sigev_notify = SIGEV_THREAD_ID; se.sigev_signo = SIGUSR1;
	se._sigev_un._tid = thread_tid;
	CHECK(timer_create(CLOCK_BOOTTIME, &se, &t));
	usleep(100000);
	printf("ready %d %d %d %d %d\n", getpid(), thread_tid, zombie, child, thread_child);
	fflush(stdout);
	for (;;) pause();
}
