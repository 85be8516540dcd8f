/* A server accepting two clients over a path socket (stream or seqpacket), numbered
 * records flowing both ways on each connection with a backlog of unread ones on every end
 * (each end sends BACKLOG records first, then one per round, and reads only while more
 * than KEEP records are queued, at most two per round); with
 * "pending", a third client stays in the listener's accept queue until DIR/more exists.
 *
 * usage: res_unixconn DIR stream|seqpacket [pending]
 * The listener is DIR/srv.sock.  State files (see wl_state.h): DIR/server with
 * boot= counter= listener= extra= and sentI= rcvdI= badI= nameI= peerI= for its two
 * accepted ends (I = 0, 1); DIR/client1, DIR/client2 with the same keys for I = 0;
 * DIR/client3 with connected=1 got= peer=.  badI is 0 or the first out-of-order number read.
 * After DIR/more exists the server accepts every new connection, sends it "hi" and closes it.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include "wl_state.h"
#include "res_unix_rec.h"

#define BACKLOG 8
#define KEEP 4

static char dir[256];
static uint64_t boot;

struct end {
	int fd;
	unsigned long long sent;
	struct rx rx;
	char name[110], peer[110];
};

static void in_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

static int connect_to(int type, const char *path)
{
	struct sockaddr_un a;
	socklen_t len = unix_addr(&a, path);
	int fd = socket(AF_UNIX, type, 0);

	if (fd < 0 || !len || connect(fd, (void *)&a, len))
		exit(3);
	return fd;
}

static void end_start(struct end *e, int fd)
{
	memset(e, 0, sizeof *e);
	e->fd = fd;
	e->rx.next = 1;
	for (int i = 0; i < BACKLOG; i++)
		e->sent += rec_send(fd, e->sent + 1);
}

static void end_round(struct end *e)
{
	e->sent += rec_send(e->fd, e->sent + 1);
	for (int i = 0; i < 2 && rec_queued(e->fd) > KEEP; i++)
		rec_recv(e->fd, &e->rx);
	sock_name(e->fd, 0, e->name, sizeof e->name);
	sock_name(e->fd, 1, e->peer, sizeof e->peer);
}

static int end_fmt(char *b, size_t len, int i, const struct end *e)
{
	return snprintf(b, len, "sent%d=%llu\nrcvd%d=%llu\nbad%d=%llu\nname%d=%s\npeer%d=%s\n",
			i, e->sent, i, e->rx.next - 1, i, e->rx.bad, i, e->name, i, e->peer);
}

static void client(int type, const char *srv, const char *state)
{
	struct end e;
	unsigned long long counter = 0;
	char body[1024];

	end_start(&e, connect_to(type, srv));
	for (;;) {
		end_round(&e);
		int n = snprintf(body, sizeof body, "boot=%llu\ncounter=%llu\n",
				 (unsigned long long)boot, ++counter);
		end_fmt(body + n, sizeof body - n, 0, &e);
		put_state(state, body);
		nap_ms(5);
	}
}

static void waiting_client(int type, const char *srv, const char *state)
{
	int fd = connect_to(type, srv);
	char got[16] = "", peer[110];
	int have = 0;

	for (;;) {
		ssize_t n = recv(fd, got + have, sizeof got - 1 - have, MSG_DONTWAIT);
		if (n > 0)
			have += n;
		got[have] = 0;
		write_state(state, "boot=%llu\nconnected=1\ngot=%s\npeer=%s\n",
			    (unsigned long long)boot, got, sock_name(fd, 1, peer, sizeof peer));
		nap_ms(5);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_un a;
	char srv[300], st[300], more[300], body[2048], lname[110];
	struct end e[2];
	unsigned long long counter = 0, extra = 0;

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	snprintf(dir, sizeof dir, "%s", argv[1]);
	int type = strcmp(argv[2], "seqpacket") ? SOCK_STREAM : SOCK_SEQPACKET;
	int pending = argc > 3 && !strcmp(argv[3], "pending");
	in_dir(srv, sizeof srv, "srv.sock");
	in_dir(more, sizeof more, "more");
	socklen_t alen = unix_addr(&a, srv);
	int l = socket(AF_UNIX, type, 0);
	if (l < 0 || !alen || bind(l, (void *)&a, alen) || listen(l, 8))
		return 2;
	for (int i = 1; i <= 2; i++) {
		if (fork() == 0) {
			close(l);
			snprintf(st, sizeof st, "%s/client%d", dir, i);
			client(type, srv, st);
		}
		end_start(&e[i - 1], accept(l, 0, 0));
	}
	if (pending && fork() == 0) {
		close(l);
		in_dir(st, sizeof st, "client3");
		waiting_client(type, srv, st);
	}
	in_dir(st, sizeof st, "server");
	for (;;) {
		for (int i = 0; i < 2; i++)
			end_round(&e[i]);
		if (access(more, F_OK) == 0) {
			int c = accept4(l, 0, 0, SOCK_NONBLOCK);
			if (c >= 0) {
				extra++;
				(void)send(c, "hi", 2, MSG_NOSIGNAL);
				close(c);
			}
		}
		int n = snprintf(body, sizeof body, "boot=%llu\ncounter=%llu\nlistener=%s\nextra=%llu\n",
				 (unsigned long long)boot, ++counter,
				 sock_name(l, 0, lname, sizeof lname), extra);
		for (int i = 0; i < 2; i++)
			n += end_fmt(body + n, sizeof body - n, i, &e[i]);
		put_state(st, body);
		nap_ms(5);
	}
}
