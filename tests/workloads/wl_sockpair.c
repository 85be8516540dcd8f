/* A counter holding two sockets of a kind lxc-cr does not support (netlink; this was a
 * socketpair until socketpairs became supported, hence the name).
 *
 * usage: wl_sockpair STATE [child]
 * Creates two AF_NETLINK/NETLINK_ROUTE sockets and keeps them open (with "child", a forked
 * child creates and holds it and the root holds none).  The holder, every 2 ms, increments
 * its counter and rewrites STATE (in place, see put_state) with  boot= counter= fd0= fd1= .
 * With "child" the root just sleeps in a loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "wl_state.h"

static void hold(const char *path)
{
	uint64_t boot = 0, counter = 0;
	char buf[512];
	int sv[2];

	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		_exit(3);
	sv[0] = socket(AF_NETLINK, SOCK_RAW, 0 /* NETLINK_ROUTE */);
	sv[1] = socket(AF_NETLINK, SOCK_RAW, 0);
	if (sv[0] < 0 || sv[1] < 0)
		_exit(4);
	for (;;) {
		counter++;
		snprintf(buf, sizeof buf, "boot=%016llx\ncounter=%llu\nfd0=%d\nfd1=%d\n",
			 (unsigned long long)boot, (unsigned long long)counter, sv[0], sv[1]);
		put_state(path, buf);
		nap_ms(2);
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	if (argc > 2 && strcmp(argv[2], "child") == 0) {
		if (fork() == 0)
			hold(argv[1]);
		for (;;)
			nap_ms(100);
	}
	hold(argv[1]);
	return 0;
}
