/* Shared anonymous memory and a FIFO between a parent and its child.
 *
 * usage: res_shared STATE FIFO
 * A MAP_SHARED|MAP_ANONYMOUS region (1 MiB) is mapped before the fork.  Ping-pong on it: the
 * parent writes token n into ping, the child copies it into pong, the parent sees pong == n
 * and goes on with n + 1.  So the counter grows only while each side sees the other's
 * writes.  The rest of the region holds a pattern (word i = i * GAMMA) that both check.
 * The FIFO (made by the parent, opened O_RDWR for reading and O_WRONLY for writing before
 * the fork) carries a numbered stream of 32-bit integers from the child (non-blocking
 * writes) to the parent, which reads 8 every round and checks the sequence (bad, why).
 * The parent writes STATE: boot=<random, drawn once> counter= expect= bad= why= region=<address>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wl_state.h"

#define GAMMA 0x9E3779B97F4A7C15ULL
#define REGION (1 << 20)

struct shared {
	volatile uint64_t ping, pong;
	uint64_t pattern[];
};

static unsigned long pattern_bad(const struct shared *s)
{
	unsigned long bad = 0;
	for (size_t i = 0; i < (REGION - sizeof *s) / 8; i++)
		bad += s->pattern[i] != i * GAMMA;
	return bad;
}

int main(int argc, char **argv)
{
	struct shared *s;
	int rfd, wfd;
	pid_t child;
	uint32_t expect = 0, next = 0;
	unsigned long long counter = 0, bad = 0, boot = 0;
	char why[200] = "";

	if (argc < 3)
		return 2;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 7;
	s = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s == MAP_FAILED)
		return 3;
	for (size_t i = 0; i < (REGION - sizeof *s) / 8; i++)
		s->pattern[i] = i * GAMMA;
	if (mkfifo(argv[2], 0600) && errno != EEXIST)
		return 4;
	rfd = open(argv[2], O_RDWR | O_NONBLOCK);
	wfd = open(argv[2], O_WRONLY | O_NONBLOCK);
	if (rfd < 0 || wfd < 0)
		return 5;
	child = fork();
	if (child < 0)
		return 6;
	if (child == 0) {
		close(rfd);
		for (;;) {
			if (s->pong != s->ping)
				s->pong = s->ping;
			while (write(wfd, &next, sizeof next) == sizeof next)
				next++;
			nap_ms(2);
		}
	}
	close(wfd);
	for (;;) {
		uint32_t v[8];
		ssize_t n;

		if (s->pong == s->ping) {
			counter++;
			s->ping = counter;
		}
		n = read(rfd, v, sizeof v);
		for (ssize_t i = 0; i < n / 4; i++, expect++)
			if (v[i] != expect && !bad++)
				snprintf(why, sizeof why, "got %u, expected %u", v[i], expect);
		if (n > 0 && n % 4 && !bad++)
			snprintf(why, sizeof why, "partial integer read (%zd bytes)", n);
		if (counter % 64 == 0 && pattern_bad(s) && !bad++)
			snprintf(why, sizeof why, "pattern damaged");
		write_state(argv[1], "boot=%llu\ncounter=%llu\nexpect=%u\nbad=%llu\nwhy=%s\nregion=%lx\n",
			    boot, counter, expect, bad, why, (unsigned long)s);
		nap_ms(3);
	}
}
