/* Runs under a seccomp filter of its own (allow everything: NO_NEW_PRIVS, then
 * SECCOMP_SET_MODE_FILTER) and counts; lxc-cr must refuse it, not restore it without.
 * usage: res_seccomp STATE      STATE (wl_state.h): boot= counter= (every 2 ms)
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>

#include "wl_state.h"

int main(int argc, char **argv)
{
	struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
	struct sock_fprog prog = { 1, allow };
	uint64_t boot = 0, counter = 0;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		return 3;
	for (;;) {
		write_state(argv[1], "boot=%016llx\ncounter=%llu\n", (unsigned long long)boot,
			    (unsigned long long)++counter);
		nap_ms(2);
	}
}
