/* A process tree with a zombie, a process group leader and a session leader.
 *
 * usage: wl_tree DIR [setsid-root]
 *
 *   R  (root; with "setsid-root" it calls setsid() first)
 *   +- Z  exits at once with status 7; R does not reap it until DIR/trigger exists
 *   +- A  setpgid(0, 0): its own process group, R's session
 *      +- G  setsid(): a new session
 *         +- H  setpgid(0, 0): its own group inside G's session
 *         +- J  setpgid(0, H): joins H's group (neither its own nor its parent's)
 *
 * Every live process, every 3 ms, increments its counter and rewrites DIR/state.ROLE
 * (in place, see put_state) with  boot= counter= role= pid= ppid= pgid= sid=  as it sees them itself
 * (inside the pid namespace).  R also writes zpid= and reaped=0|1.  When DIR/trigger exists,
 * R calls waitpid(zpid) once and writes DIR/reaped:  ret= status= exited= code= .
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static void write_file(const char *name, const char *buf, int n)
{
	char path[4096], tmp[4200];
	int fd;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, buf, n) == n && close(fd) == 0)
		rename(tmp, path);
	else
		close(fd);
}

#include "wl_state.h"

static int exists(const char *name)
{
	char path[4096];

	snprintf(path, sizeof path, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static void loop(const char *role, pid_t zpid)
{
	uint64_t boot = 0, counter = 0;
	char name[4200], buf[1024];
	int n, reaped = 0, st = 0;
	pid_t ret;

	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		_exit(3);
	snprintf(name, sizeof name, "%s/state.%s", dir, role);
	for (;;) {
		counter++;
		if (zpid > 0 && !reaped && exists("trigger")) {
			ret = waitpid(zpid, &st, 0);
			n = snprintf(buf, sizeof buf, "ret=%d\nstatus=%d\nexited=%d\ncode=%d\n",
				     (int)ret, st, WIFEXITED(st) ? 1 : 0,
				     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
			write_file("reaped", buf, n);
			reaped = 1;
		}
		n = snprintf(buf, sizeof buf,
			     "boot=%016llx\ncounter=%llu\nrole=%s\npid=%d\nppid=%d\npgid=%d\nsid=%d\n",
			     (unsigned long long)boot, (unsigned long long)counter, role,
			     (int)getpid(), (int)getppid(), (int)getpgrp(), (int)getsid(0));
		if (zpid > 0)
			n += snprintf(buf + n, sizeof buf - n, "zpid=%d\nreaped=%d\n", (int)zpid,
				      reaped);
		put_state(name, buf);
		nap_ms(3);
	}
}

int main(int argc, char **argv)
{
	pid_t z, a, g, h, j;

	if (argc < 2)
		return 2;
	dir = argv[1];
	if (argc > 2 && strcmp(argv[2], "setsid-root") == 0 && setsid() < 0)
		return 3;
	z = fork();
	if (z == 0)
		_exit(7);
	a = fork();
	if (a == 0) {
		setpgid(0, 0);
		g = fork();
		if (g == 0) {
			if (setsid() < 0)
				_exit(4);
			h = fork();
			if (h == 0) {
				setpgid(0, 0);
				loop("H", 0);
			}
			setpgid(h, h);
			j = fork();
			if (j == 0) {
				if (setpgid(0, h) < 0)
					_exit(5);
				loop("J", 0);
			}
			setpgid(j, h);
			loop("G", 0);
		}
		loop("A", 0);
	}
	setpgid(a, a);
	loop("R", z);
	return 0;
}
