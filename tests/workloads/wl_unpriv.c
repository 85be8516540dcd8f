/* An unprivileged program that keeps checking it is still unprivileged.
 *
 * usage: wl_unpriv DIR SECRET
 *
 * Started as root, it drops every privilege once: setgroups({}), setresgid(1000, 1000, 1000),
 * setresuid(1000, 1000, 1000), then capset() with empty effective, permitted and inheritable
 * sets and no ambient capability.  Then, every 3 ms, it increments its counter and tries to
 * get privileges back, reporting each result by errno name (or "ok" if it worked):
 *   setuid0=  setuid(0)
 *   open=     open(SECRET, O_RDONLY), a root-only file (mode 0600, owned by root)
 *   capset=   capset() raising CAP_SYS_ADMIN in its effective and permitted sets
 * and rewrites DIR/state (see wl_state.h) with  boot= counter= uid= gid= setuid0= open=
 * capset= ok=  (ok=0 and error= if dropping privileges failed).  DIR must be writable by
 * uid 1000.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "wl_state.h"
#include "wl_caps.h"

static const char *result(int rc)
{
	return rc == 0 ? "ok" : strerrorname_np(errno);
}

int main(int argc, char **argv)
{
	const char *error = NULL;
	uint64_t boot = 0, counter = 0;
	char name[4200], body[1024];
	int err = 0;

	if (argc < 3)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	snprintf(name, sizeof name, "%s/state", argv[1]);
	if (setgroups(0, NULL))
		error = "setgroups";
	else if (setresgid(1000, 1000, 1000))
		error = "setresgid";
	else if (setresuid(1000, 1000, 1000))
		error = "setresuid";
	else if (set_caps(0, 0, 0))
		error = "capset";
	else if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
		error = "PR_CAP_AMBIENT_CLEAR_ALL";
	if (error)
		err = errno;
	for (;;) {
		const char *su, *op, *cs;
		int fd;

		counter++;
		su = result(setuid(0));
		fd = open(argv[2], O_RDONLY | O_CLOEXEC);
		op = result(fd < 0 ? -1 : 0);
		if (fd >= 0)
			close(fd);
		cs = result(set_caps(1ULL << CAP_SYS_ADMIN, 1ULL << CAP_SYS_ADMIN, 0));
		snprintf(body, sizeof body,
			 "boot=%016llx\ncounter=%llu\nuid=%d\ngid=%d\nsetuid0=%s\nopen=%s\n"
			 "capset=%s\nok=%d\nerror=%s: %s\n",
			 (unsigned long long)boot, (unsigned long long)counter, (int)getuid(),
			 (int)getgid(), su, op, cs, error ? 0 : 1, error ? error : "none",
			 error ? strerror(err) : "");
		put_state(name, body);
		nap_ms(3);
	}
	return 0;
}
