/* clock_gettime (vdso) and sched_getcpu (rseq) in a loop.
 *
 * usage: wl_clock STATE
 * Every 1 ms: clock_gettime(CLOCK_MONOTONIC) and (CLOCK_REALTIME) through glibc (the vdso),
 * sched_getcpu() (glibc reads the cpu_id of the thread's rseq area), and a probe of the
 * thread's rseq registration: rseq(glibc's area, __rseq_size, 0, RSEQ_SIG) fails with EBUSY
 * exactly when that area is registered already (with the length glibc used) (0 would mean it was not: the probe then
 * registers it, and counts a failure).  Rewrites STATE (in place, see put_state) with
 *   boot= counter= mono_ns= real_ns= cpu= nprocs= bad_cpu= mono_back= rseq_errno=
 *   rseq_start_errno= bad_rseq=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "wl_state.h"

static unsigned rseq_len;	/* the length glibc registered: __rseq_size or 32 */

static int rseq_probe(void)
{
	void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
	long r = syscall(SYS_rseq, area, rseq_len, 0, RSEQ_SIG);
	return r == 0 ? 0 : errno;
}

static int64_t ns(clockid_t c)
{
	struct timespec ts;

	if (clock_gettime(c, &ts))
		return -1;
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0, bad_cpu = 0, mono_back = 0, bad_rseq = 0;
	int64_t mono, real, last = 0;
	int cpu, nprocs, e, e0;

	if (argc < 2)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	nprocs = (int)sysconf(_SC_NPROCESSORS_CONF);
	/* glibc may register 32 bytes (sizeof struct rseq) while __rseq_size says less */
	rseq_len = 32;
	e0 = rseq_probe();
	if (e0 == EINVAL && __rseq_size && __rseq_size != 32) {
		rseq_len = __rseq_size;
		e0 = rseq_probe();
	}
	for (;;) {
		counter++;
		mono = ns(CLOCK_MONOTONIC);
		real = ns(CLOCK_REALTIME);
		cpu = sched_getcpu();
		if (cpu < 0 || cpu >= nprocs)
			bad_cpu++;
		if (mono < last)
			mono_back++;
		last = mono;
		e = rseq_probe();
		if (e != EBUSY)
			bad_rseq++;
		write_state(argv[1],
			    "boot=%016llx\ncounter=%llu\nmono_ns=%lld\nreal_ns=%lld\ncpu=%d\n"
			    "nprocs=%d\nbad_cpu=%llu\nmono_back=%llu\nrseq_errno=%d\n"
			    "rseq_start_errno=%d\nbad_rseq=%llu\n",
			    (unsigned long long)boot, (unsigned long long)counter, (long long)mono,
			    (long long)real, cpu, nprocs, (unsigned long long)bad_cpu,
			    (unsigned long long)mono_back, e, e0, (unsigned long long)bad_rseq);
		nap_ms(1);
	}
}
