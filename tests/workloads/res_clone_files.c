/* Processes sharing one fd table (clone(CLONE_FILES) without CLONE_THREAD or CLONE_VM).
 *
 * usage: res_clone_files STATE DIR            a parent and its child share the table
 *        res_clone_files STATE DIR siblings   two children share one table; the parent
 *                                             unshared its own (unshare(CLONE_FILES))
 * Pair mode: both poll DIR/ctl (a round number K).  On a new round the child opens
 * DIR/child-K as fd 100 and the parent opens DIR/parent-K as fd 101, each in its own
 * process; each reports the inode it sees behind fds 100 and 101, so an fd one of them
 * opened is seen by the other only if the table is still shared.
 * STATE (parent) and STATE.child: boot= counter= round= ino100= ino101= pid=
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "wl_state.h"

static uint64_t boot;
static const char *state_path, *dir;
static int is_child;

static long read_round(void)
{
	char path[4096], buf[32] = "";
	int fd;
	ssize_t n;

	snprintf(path, sizeof path, "%s/ctl", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	return n > 0 ? strtol(buf, NULL, 10) : 0;
}

static long long ino_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) ? -1 : (long long)st.st_ino;
}

static int loop(void *arg)
{
	char path[4096], st[4096];
	long round = 0, r;
	uint64_t counter = 0;

	(void)arg;
	snprintf(st, sizeof st, is_child ? "%s.child" : "%s", state_path);
	for (;;) {
		r = read_round();
		if (r != round) {
			snprintf(path, sizeof path, "%s/%s-%ld", dir, is_child ? "child" : "parent", r);
			int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
			if (fd >= 0) {
				dup3(fd, is_child ? 100 : 101, O_CLOEXEC);
				close(fd);
				round = r;
			}
		}
		counter++;
		write_state(st, "boot=%016llx\ncounter=%llu\nround=%ld\nino100=%lld\nino101=%lld\n"
			    "pid=%d\n", (unsigned long long)boot, (unsigned long long)counter, round,
			    ino_of(100), ino_of(101), (int)getpid());
		nap_ms(5);
	}
	return 0;
}

static int idle(void *arg)
{
	(void)arg;
	for (;;)
		nap_ms(100);
	return 0;
}

int main(int argc, char **argv)
{
	static char stack1[65536], stack2[65536];

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	state_path = argv[1];
	dir = argv[2];
	if (argc > 3 && !strcmp(argv[3], "siblings")) {
		if (clone(idle, stack1 + sizeof stack1, CLONE_FILES | SIGCHLD, NULL) < 0 ||
		    clone(idle, stack2 + sizeof stack2, CLONE_FILES | SIGCHLD, NULL) < 0 ||
		    unshare(CLONE_FILES))
			return 3;
		return loop(NULL);
	}
	/* before any state file is open: each process opens its own into the shared table */
	is_child = 1;
	if (clone(loop, stack1 + sizeof stack1, CLONE_FILES | SIGCHLD, NULL) < 0)
		return 3;
	is_child = 0;
	return loop(NULL);
}
