/* Signal dispositions: handlers, flags and masks, ignored and default signals.
 *
 * usage: res_signals STATE
 * Installs: SIGUSR1 a counting handler (SA_SIGINFO|SA_RESTART, mask {SIGUSR2, SIGWINCH});
 * SIGUSR2 ignored; SIGTERM default but with SA_RESTART set (as glibc's signal() leaves it);
 * SIGCHLD default with SA_NOCLDSTOP|SA_NOCLDWAIT; SIGHUP a second handler with SA_ONSTACK
 * and SA_NODEFER.  SIGWINCH and SIGURG are blocked.  Every 50 ms it queries all 64 actions with sigaction() and writes a
 * digest of them (handler kind, flags without SA_RESTORER, mask), plus how many SIGUSR1
 * and SIGHUP its handlers have seen.
 * STATE: boot= (random, drawn once) counter= usr1= hup= digest=
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include "wl_state.h"

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

static volatile sig_atomic_t usr1, hup;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)si; (void)uc;
	usr1++;
}

static void on_hup(int sig)
{
	(void)sig;
	hup++;
}

static uint64_t digest(void)
{
	uint64_t h = 1469598103934665603ULL;      /* FNV-1a over (sig, kind, flags, mask) */
	for (int sig = 1; sig < 65; sig++) {
		struct sigaction sa;
		uint64_t v[4];
		if (sigaction(sig, NULL, &sa) != 0)
			continue;
		v[0] = sig;
		v[1] = sa.sa_handler == SIG_DFL ? 0 : sa.sa_handler == SIG_IGN ? 1 :
		       (sa.sa_flags & SA_SIGINFO) ? (uint64_t)(uintptr_t)sa.sa_sigaction :
		       (uint64_t)(uintptr_t)sa.sa_handler;
		v[2] = sa.sa_flags & ~SA_RESTORER;
		memcpy(&v[3], &sa.sa_mask, sizeof v[3]);
		for (unsigned i = 0; i < sizeof v; i++) {
			h ^= ((unsigned char *)v)[i];
			h *= 1099511628211ULL;
		}
	}
	return h;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	unsigned long long counter = 0, boot = 0;

	if (argc != 2)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaddset(&sa.sa_mask, SIGWINCH);
	sigaction(SIGUSR1, &sa, NULL);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGUSR2, &sa, NULL);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGTERM, &sa, NULL);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sa.sa_flags = SA_NOCLDSTOP | SA_NOCLDWAIT;
	sigaction(SIGCHLD, &sa, NULL);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_hup;
	sa.sa_flags = SA_ONSTACK | SA_NODEFER;
	sigaction(SIGHUP, &sa, NULL);

	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGWINCH);
	sigaddset(&sa.sa_mask, SIGURG);
	sigprocmask(SIG_BLOCK, &sa.sa_mask, NULL);

	for (;;) {
		counter++;
		write_state(argv[1], "boot=%016llx\ncounter=%llu\nusr1=%d\nhup=%d\ndigest=%016llx\n",
			    boot, counter, (int)usr1, (int)hup, (unsigned long long)digest());
		nap_ms(50);
	}
}
