/* A single-threaded counter for the tree dump/restore tests.
 *
 * usage: wl_counter STATE [PAUSEFILE]
 * Every 2 ms: unless PAUSEFILE exists, counter += 1; then STATE is rewritten (in place, see
 * put_state) with
 *   boot=<64 random bits drawn once at start>   (a restarted program would draw new ones)
 *   counter=N
 *   paused=0|1
 * stdin/stdout/stderr are not used; STATE stays open (fd 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "wl_state.h"

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0;
	int paused;

	if (argc < 2)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	for (;;) {
		paused = argc > 2 && access(argv[2], F_OK) == 0;
		if (!paused)
			counter++;
		write_state(argv[1], "boot=%016llx\ncounter=%llu\npaused=%d\n",
			    (unsigned long long)boot, (unsigned long long)counter, paused);
		nap_ms(2);
	}
}
