/* A syslog-like pair: a receiver bound at DIR/log.sock (as syslogd's /dev/log) and two
 * sender processes that connect() to it (as logger) and send numbered datagrams
 * ("S<id> <n> <ms>", ms: CLOCK_MONOTONIC when sent); the receiver reads a datagram only
 * once it is LAG_MS old, so datagrams are always queued on it.
 *
 * usage: res_unixdgram DIR
 * State files: DIR/receiver with boot= counter= name= rcvd1= rcvd2= bad= (bad: 0, or the
 * first datagram out of sequence), DIR/sender1, DIR/sender2 with boot= counter= sent=
 * peer= name=.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include "wl_state.h"
#include "res_unix_rec.h"

#define LAG_MS 60

static uint64_t boot;

static unsigned long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

static void sender(int id, const char *path, const char *state)
{
	struct sockaddr_un a;
	socklen_t len = unix_addr(&a, path);
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	unsigned long long sent = 0, counter = 0;
	char m[64], peer[110], name[110];

	if (fd < 0 || !len || connect(fd, (void *)&a, len))
		exit(3);
	for (;;) {
		int n = snprintf(m, sizeof m, "S%d %llu %llu", id, sent + 1, now_ms());
		if (send(fd, m, n, MSG_DONTWAIT) == n)
			sent++;
		write_state(state, "boot=%llu\ncounter=%llu\nsent=%llu\npeer=%s\nname=%s\n",
			    (unsigned long long)boot, ++counter, sent,
			    sock_name(fd, 1, peer, sizeof peer), sock_name(fd, 0, name, sizeof name));
		nap_ms(5);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_un a;
	char path[300], st[300], name[110], bad[128] = "0";
	unsigned long long rcvd[3] = { 0, 0, 0 }, counter = 0;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	snprintf(path, sizeof path, "%s/log.sock", argv[1]);
	socklen_t len = unix_addr(&a, path);
	int r = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (r < 0 || !len || bind(r, (void *)&a, len))
		return 2;
	for (int i = 1; i <= 2; i++) {
		if (fork() == 0) {
			close(r);
			snprintf(st, sizeof st, "%s/sender%d", argv[1], i);
			sender(i, path, st);
		}
	}
	snprintf(st, sizeof st, "%s/receiver", argv[1]);
	for (;;) {
		counter++;
		for (int k = 0; k < 4; k++) {
			char m[64];
			int id = 0;
			unsigned long long got = 0, ms = 0;
			ssize_t n = recv(r, m, sizeof m - 1, MSG_DONTWAIT | MSG_PEEK);
			if (n <= 0)
				break;
			m[n] = 0;
			if (sscanf(m, "S%d %llu %llu", &id, &got, &ms) == 3 && now_ms() < ms + LAG_MS)
				break;			/* the oldest is still young: keep it queued */
			(void)recv(r, m, sizeof m - 1, MSG_DONTWAIT);
			if (id < 1 || id > 2 || got != rcvd[id] + 1) {
				if (!strcmp(bad, "0"))
					snprintf(bad, sizeof bad, "%.40s (after %llu)", m,
						 id >= 1 && id <= 2 ? rcvd[id] : 0);
			} else {
				rcvd[id] = got;
			}
		}
		write_state(st, "boot=%llu\ncounter=%llu\nname=%s\nrcvd1=%llu\nrcvd2=%llu\nbad=%s\n",
			    (unsigned long long)boot, counter, sock_name(r, 0, name, sizeof name),
			    rcvd[1], rcvd[2], bad);
		nap_ms(5);
	}
}
