/* A tree with a nested pid namespace (tests/integration/test_ns_nested.py).
 *
 * usage: ns_nested DIR
 *
 *   R  (root, pid 1 of the tree's pid namespace)
 *   +- A  starts a second thread, then unshare(CLONE_NEWPID): its pid_for_children is a
 *   |     nested pid namespace
 *      +- N  the nested namespace's init (pid 1 there)
 *         +- G  N's child (pid 2 there)
 *
 * Every process, every 3 ms, increments its counter and rewrites DIR/state.ROLE (in place,
 * see put_state) with  boot= counter= role= pid= ppid=  as it sees them itself (its own pid
 * namespace).  When DIR/fork exists, A forks one more child into the nested namespace (it
 * must still be A's pid_for_children): F, which writes DIR/state.F the same way.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/random.h>
#include <unistd.h>

#include "wl_state.h"

static const char *dir;

static int exists(const char *name)
{
	char path[4096];

	snprintf(path, sizeof path, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static void __attribute__((noreturn)) loop(const char *role, int forker);

static void child_f(void)
{
	close(state_fd);		/* A's, inherited */
	state_fd = -1;
	loop("F", 0);
}

static void loop(const char *role, int forker)
{
	uint64_t boot = 0, counter = 0;
	char name[4200];
	int forked = 0;
	pid_t f;

	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		_exit(3);
	snprintf(name, sizeof name, "%s/state.%s", dir, role);
	for (;;) {
		counter++;
		if (forker && !forked && exists("fork")) {
			forked = 1;
			f = fork();
			if (f == 0)
				child_f();
		}
		write_state(name, "boot=%016llx\ncounter=%llu\nrole=%s\npid=%d\nppid=%d\nforked=%d\n",
			    (unsigned long long)boot, (unsigned long long)counter, role,
			    (int)getpid(), (int)getppid(), forked);
		nap_ms(3);
	}
}

static void *idle(void *arg)
{
	for (;;)
		nap_ms(50);
	return arg;
}

int main(int argc, char **argv)
{
	pthread_t th;
	pid_t a, n, g;

	if (argc < 2)
		return 2;
	dir = argv[1];
	a = fork();
	if (a == 0) {
		if (pthread_create(&th, NULL, idle, NULL))
			_exit(5);
		if (unshare(CLONE_NEWPID) < 0)
			_exit(4);
		n = fork();
		if (n == 0) {
			g = fork();
			if (g == 0)
				loop("G", 0);
			loop("N", 0);
		}
		loop("A", 1);
	}
	loop("R", 0);
	return 0;
}
