/* A tree whose processes changed credentials after they started.
 *
 * usage: wl_creds DIR
 *
 *   R  stays root with its full capability sets
 *   +- U  setrlimit(RLIMIT_NOFILE, 512/768), setgroups({1001, 1002}),
 *   |     setresgid(1000, 1000, 1000), setresuid(1000, 1000, 1000): unprivileged, no caps
 *   +- C  stays uid 0 but capset() empties its effective, permitted and inheritable sets
 *   +- K  keeps some capabilities as a non-root user: PR_SET_KEEPCAPS, drops CAP_SYS_BOOT and
 *         CAP_MKNOD from its bounding set, setgroups({}), setresgid(2000, 2001, 2002),
 *         setresuid(1000, 1001, 1002), then capset E={NET_BIND_SERVICE, KILL},
 *         P={NET_BIND_SERVICE, KILL, NET_RAW}, I={NET_BIND_SERVICE}, and raises
 *         NET_BIND_SERVICE in its ambient set
 *
 * Every process, every 3 ms, increments its counter and rewrites DIR/state.ROLE (in place,
 * see put_state) with  boot= counter= role= ok=  (ok=0 and error= if a credential change failed).
 * DIR must be writable by uid 1000/1001.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

#include "wl_state.h"
#include "wl_caps.h"

static void loop(const char *role, const char *error)
{
	uint64_t boot = 0, counter = 0;
	char name[4200], buf[1024];
	int n, err = errno;

	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		_exit(3);
	snprintf(name, sizeof name, "%s/state.%s", dir, role);
	for (;;) {
		counter++;
		n = snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\nrole=%s\nok=%d\n",
			     (unsigned long long)boot, (unsigned long long)counter, role,
			     error ? 0 : 1);
		if (error)
			n += snprintf(buf + n, sizeof buf - n, "error=%s: %s\n", error,
				      strerror(err));
		put_state(name, buf);
		nap_ms(3);
	}
}

#define BIT(c) (1ULL << (c))

static void become_u(void)
{
	struct rlimit rl = { 512, 768 };
	gid_t groups[] = { 1001, 1002 };

	if (setrlimit(RLIMIT_NOFILE, &rl))
		loop("U", "setrlimit");
	if (setgroups(2, groups))
		loop("U", "setgroups");
	if (setresgid(1000, 1000, 1000))
		loop("U", "setresgid");
	if (setresuid(1000, 1000, 1000))
		loop("U", "setresuid");
	loop("U", NULL);
}

static void become_c(void)
{
	if (set_caps(0, 0, 0))
		loop("C", "capset");
	loop("C", NULL);
}

static void become_k(void)
{
	uint64_t e = BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_KILL);

	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		loop("K", "PR_SET_KEEPCAPS");
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) ||
	    prctl(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0))
		loop("K", "PR_CAPBSET_DROP");
	if (setgroups(0, NULL))
		loop("K", "setgroups");
	if (setresgid(2000, 2001, 2002))
		loop("K", "setresgid");
	if (setresuid(1000, 1001, 1002))
		loop("K", "setresuid");
	if (set_caps(e, e | BIT(CAP_NET_RAW), BIT(CAP_NET_BIND_SERVICE)))
		loop("K", "capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		loop("K", "PR_CAP_AMBIENT_RAISE");
	loop("K", NULL);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	dir = argv[1];
	if (fork() == 0)
		become_u();
	if (fork() == 0)
		become_c();
	if (fork() == 0)
		become_k();
	loop("R", NULL);
	return 0;
}
