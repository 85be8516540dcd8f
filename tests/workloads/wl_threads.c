/* NTHREADS (default 4) pthreads, each with a __thread counter, plus a mutex-protected
 * shared counter.
 *
 * usage: wl_threads STATE [NTHREADS]
 * Worker i, every 1 ms: tls_count += 1 (its own __thread variable), and under the mutex
 * shared += 1 and slot[i] = tls_count, so  shared == sum(slot)  whenever the mutex is held.
 * A __thread canary (set once per thread) is checked every iteration (badN counts misses).
 * The main thread, every 5 ms, copies everything under the mutex and rewrites STATE
 * (in place, see put_state):
 *   boot= main= shared= sum= nthreads= countI= tidI= badI=  (I = 0..NTHREADS-1; tid: gettid())
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define MAXT 16

static __thread uint64_t tls_count;
static __thread uint64_t tls_canary;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t shared;
static struct { uint64_t count, bad; int tid; } slot[MAXT];

#include "wl_state.h"

static uint64_t canary_of(int i) { return 0xC0FFEE0000000000ULL + (uint64_t)i * 0x1111; }

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;

	tls_canary = canary_of(i);
	pthread_mutex_lock(&mu);
	slot[i].tid = gettid();
	pthread_mutex_unlock(&mu);
	for (;;) {
		tls_count++;
		pthread_mutex_lock(&mu);
		shared++;
		slot[i].count = tls_count;
		if (tls_canary != canary_of(i))
			slot[i].bad++;
		pthread_mutex_unlock(&mu);
		nap_ms(1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, main_count = 0, sum;
	int nthreads, i, n;
	pthread_t th;
	char buf[4096];

	if (argc < 2)
		return 2;
	nthreads = argc > 2 ? atoi(argv[2]) : 4;
	if (nthreads < 1 || nthreads > MAXT)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	for (i = 0; i < nthreads; i++)
		if (pthread_create(&th, NULL, worker, (void *)(intptr_t)i))
			return 4;
	for (;;) {
		main_count++;
		pthread_mutex_lock(&mu);
		sum = 0;
		for (i = 0; i < nthreads; i++)
			sum += slot[i].count;
		n = snprintf(buf, sizeof buf, "boot=%016llx\nmain=%llu\nshared=%llu\nsum=%llu\n"
			     "nthreads=%d\n", (unsigned long long)boot,
			     (unsigned long long)main_count, (unsigned long long)shared,
			     (unsigned long long)sum, nthreads);
		for (i = 0; i < nthreads; i++)
			n += snprintf(buf + n, sizeof buf - n, "count%d=%llu\ntid%d=%d\nbad%d=%llu\n",
				      i, (unsigned long long)slot[i].count, i, slot[i].tid, i,
				      (unsigned long long)slot[i].bad);
		pthread_mutex_unlock(&mu);
		put_state(argv[1], buf);
		nap_ms(5);
	}
}
