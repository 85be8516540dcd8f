/* Numbered 16-byte records ("%015llu\n") over unix sockets, for the res_unix* workloads:
 * each side checks that the numbers it reads go 1, 2, 3... with no gap and no duplicate.
 * Stream sockets may deliver part of a record: struct rx keeps the partial one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#define REC 16

struct rx {
	char buf[REC];
	int have;
	unsigned long long next;	/* the number expected next */
	unsigned long long bad;		/* 0, or the wrong number that came */
};

/* Send record n without blocking; 1 if sent, 0 if the socket is full. */
static int __attribute__((unused)) rec_send(int fd, unsigned long long n)
{
	char b[REC + 1];
	snprintf(b, sizeof b, "%015llu\n", n);
	return send(fd, b, REC, MSG_DONTWAIT | MSG_NOSIGNAL) == REC;
}

/* Read at most one record without blocking and check its number; 1 if one was read. */
static int __attribute__((unused)) rec_recv(int fd, struct rx *r)
{
	ssize_t n = recv(fd, r->buf + r->have, REC - r->have, MSG_DONTWAIT);
	if (n <= 0)
		return 0;
	r->have += n;
	if (r->have < REC)
		return 0;
	r->have = 0;
	unsigned long long got = strtoull(r->buf, 0, 10);
	if (got != r->next && !r->bad)
		r->bad = got ? got : ~0ULL;
	r->next = got + 1;
	return 1;
}

/* Whole records queued unread on a stream or seqpacket socket (FIONREAD counts every
 * queued byte for both). */
static int __attribute__((unused)) rec_queued(int fd)
{
	int n = 0;
	return ioctl(fd, FIONREAD, &n) ? 0 : n / REC;
}

/* A sockaddr_un for path ("@name": the abstract name); its length, or 0 if it does not
 * fit. */
static socklen_t __attribute__((unused)) unix_addr(struct sockaddr_un *a, const char *path)
{
	size_t n = strlen(path);
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (n >= sizeof a->sun_path)
		return 0;
	memcpy(a->sun_path, path, n);
	if (path[0] != '@')
		return sizeof *a;
	a->sun_path[0] = 0;
	return sizeof(sa_family_t) + n;
}

/* getsockname (self) or getpeername of fd as a string ("" unnamed, "@x" abstract). */
static const char * __attribute__((unused)) sock_name(int fd, int peer, char *out, size_t len)
{
	struct sockaddr_un a;
	socklen_t l = sizeof a;
	memset(&a, 0, sizeof a);
	if ((peer ? getpeername(fd, (void *)&a, &l) : getsockname(fd, (void *)&a, &l)) < 0)
		snprintf(out, len, "error");
	else if (l <= sizeof(sa_family_t))
		snprintf(out, len, "%s", "");
	else if (a.sun_path[0] == 0)
		snprintf(out, len, "@%.*s", (int)(l - sizeof(sa_family_t) - 1), a.sun_path + 1);
	else
		snprintf(out, len, "%s", a.sun_path);
	return out;
}
