/* Benchmark workloads: resident memory of a known size, then sleep until killed.
 *
 * usage: bench_mem READY dense MIB          MIB of anonymous memory, every byte written
 *        bench_mem READY reserve MIB        MIB mapped, nothing touched (raw restore target)
 *        bench_mem READY sparse GIB PCT     GIB mapped MAP_NORESERVE; PCT % of it written,
 *                                           in 2 MiB pieces spread evenly over the mapping
 *        bench_mem READY tree N MIB         N processes (this one and N-1 children), each
 *                                           with MIB written
 * The memory holds a xorshift stream (incompressible).  When it is ready the root writes
 * "addr=<hex> bytes=<n>\n" into READY (the first mapping it wrote), then every process sleeps.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void fill(uint64_t *p, size_t words, uint64_t seed)
{
	uint64_t x = seed | 1;
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = x;
	}
}

static void *map(size_t bytes, int extra)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(4);
	}
	return p;
}

static void ready(const char *path, void *addr, size_t bytes)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "addr=%lx bytes=%zu\n", (unsigned long)addr, bytes) < 0 ||
	    fclose(f) != 0 || rename(tmp, path) != 0)
		exit(5);
}

int main(int argc, char **argv)
{
	const char *path;
	size_t bytes;
	char *p;

	if (argc < 4)
		return 2;
	path = argv[1];
	if (!strcmp(argv[2], "dense") || !strcmp(argv[2], "reserve")) {
		bytes = strtoull(argv[3], NULL, 0) << 20;
		p = map(bytes, 0);
		if (!strcmp(argv[2], "dense"))
			fill((uint64_t *)p, bytes / 8, 0x9E3779B97F4A7C15ULL);
		ready(path, p, bytes);
	} else if (!strcmp(argv[2], "sparse") && argc > 4) {
		size_t piece = 2 << 20, n, stride;
		bytes = strtoull(argv[3], NULL, 0) << 30;
		n = bytes / 100 * strtoull(argv[4], NULL, 0) / piece;
		stride = bytes / (n ? n : 1);
		p = map(bytes, MAP_NORESERVE);
		for (size_t i = 0; i < n; i++)
			fill((uint64_t *)(p + i * stride), piece / 8, i + 1);
		ready(path, p, bytes);
	} else if (!strcmp(argv[2], "tree") && argc > 4) {
		int n = atoi(argv[3]), done[2];
		char c1;
		bytes = strtoull(argv[4], NULL, 0) << 20;
		if (pipe(done) != 0)
			return 6;
		for (int i = 1; i < n; i++) {
			pid_t c = fork();
			if (c < 0)
				return 6;
			if (c == 0) {
				p = map(bytes, 0);
				fill((uint64_t *)p, bytes / 8, (uint64_t)i * 7919);
				close(done[0]);
				if (write(done[1], "x", 1) != 1)
					_exit(7);
				close(done[1]);
				for (;;)
					pause();
			}
		}
		close(done[1]);
		for (int i = 1; i < n; i++)
			if (read(done[0], &c1, 1) != 1)
				return 7;
		close(done[0]);
		p = map(bytes, 0);
		fill((uint64_t *)p, bytes / 8, 1);
		ready(path, p, bytes);
	} else {
		return 2;
	}
	for (;;)
		pause();
}
