/* 64 MiB (by default) of heap filled from a seeded PRNG, re-verified in a loop.
 *
 * usage: wl_heap STATE SEED [MIB]
 * The heap holds the splitmix64 stream of SEED: word i = mix(SEED + (i + 1) * GAMMA), so the
 * test can check any word from Python without generating the whole stream.  At start the
 * program computes checksum0 (FNV-1a over the 64-bit words); then, about every 10 ms, it
 * recomputes the checksum, counts the words that differ from the stream (bad), increments
 * counter and rewrites STATE (in place, see put_state) with
 *   boot=<64 random bits drawn at start> counter= checksum0= checksum= bad= heap=<address>
 *   words=<number of 64-bit words>
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

#define GAMMA 0x9E3779B97F4A7C15ULL

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

#include "wl_state.h"

static uint64_t checksum(const uint64_t *w, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0, seed, sum0, sum, bad, state;
	size_t mib, words, i;
	uint64_t *heap;

	if (argc < 3)
		return 2;
	seed = strtoull(argv[2], NULL, 0);
	mib = argc > 3 ? strtoul(argv[3], NULL, 0) : 64;
	words = mib * 1024 * 1024 / 8;
	if (getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 3;
	heap = malloc(words * 8);
	if (!heap)
		return 4;
	for (i = 0, state = seed; i < words; i++) {
		state += GAMMA;
		heap[i] = mix(state);
	}
	sum0 = checksum(heap, words);
	for (;;) {
		sum = checksum(heap, words);
		bad = 0;
		for (i = 0, state = seed; i < words; i++) {
			state += GAMMA;
			bad += heap[i] != mix(state);
		}
		counter++;
		write_state(argv[1],
			    "boot=%016llx\ncounter=%llu\nchecksum0=%016llx\nchecksum=%016llx\n"
			    "bad=%llu\nheap=%#llx\nwords=%llu\n",
			    (unsigned long long)boot, (unsigned long long)counter,
			    (unsigned long long)sum0, (unsigned long long)sum,
			    (unsigned long long)bad, (unsigned long long)(uintptr_t)heap,
			    (unsigned long long)words);
		nap_ms(10);
	}
}
