/* A client in the tree of a listener outside it: connects to PATH and, one round at a
 * time, sends numbered 16-byte records and waits for each to come back; while DIR/hold
 * exists it only counts (nothing in flight, so it can be checkpointed).
 *
 * usage: res_unixout PATH DIR      (PATH "@name": an abstract name)
 * State file DIR/state: boot= counter= rounds= held=0|1 bad= peer= (bad: 0, or the first
 * reply out of sequence).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include "wl_state.h"
#include "res_unix_rec.h"

int main(int argc, char **argv)
{
	struct sockaddr_un a;
	char st[300], hold[300], peer[110];
	unsigned long long counter = 0, rounds = 0;
	struct rx rx = { .next = 1 };
	uint64_t boot;

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	socklen_t len = unix_addr(&a, argv[1]);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || !len || connect(fd, (void *)&a, len))
		return 2;
	snprintf(st, sizeof st, "%s/state", argv[2]);
	snprintf(hold, sizeof hold, "%s/hold", argv[2]);
	for (;;) {
		int held = access(hold, F_OK) == 0;
		if (!held && rec_send(fd, rounds + 1)) {
			while (!rec_recv(fd, &rx))
				nap_ms(1);
			rounds++;
		}
		write_state(st, "boot=%llu\ncounter=%llu\nrounds=%llu\nheld=%d\nbad=%llu\npeer=%s\n",
			    (unsigned long long)boot, ++counter, rounds, held, rx.bad,
			    sock_name(fd, 1, peer, sizeof peer));
		nap_ms(5);
	}
}
