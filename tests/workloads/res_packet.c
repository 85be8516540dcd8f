/* AF_PACKET sockets in their own net namespace (brings lo up itself).
 * usage: res_packet STATE [ring|fanout|member|queued]
 *   pd: SOCK_DGRAM, htons(ETH_P_IP), bound to lo, SOCK_NONBLOCK, PACKET_AUXDATA, SO_PRIORITY 3,
 *       a classic BPF filter passing only UDP to port 6767 (udhcpc's kind of filter);
 *       every frame it receives counts in matched=.
 *   pr: SOCK_RAW, protocol 0, then bound to lo with htons(ETH_P_ALL): counts every frame
 *       in raw=.
 *   "ring": also a SOCK_RAW socket with a PACKET_RX_RING (in hc); "fanout": one in a
 *   PACKET_FANOUT group (hc); "member": one with a PACKET_ADD_MEMBERSHIP (hc); "queued":
 *   pd is never read and one matching datagram is sent at start (its frame stays queued).
 * STATE (wl_state.h): boot= matched= raw= pd= pr= hc=.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wl_state.h"
#include "wl_net.h"

static const char *state;
static unsigned long long boot, matched, raw;
static int pd, pr, hc = -1;

static void put(void)
{
	write_state(state, "boot=%llu\nmatched=%llu\nraw=%llu\npd=%d\npr=%d\nhc=%d\n",
		    boot, matched, raw, pd, pr, hc);
}

static void bind_ll(int s, int ifindex, int proto)
{
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(proto),
				 .sll_ifindex = ifindex };
	if (bind(s, (void *)&a, sizeof a))
		exit(2);
}

static void send_to(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	sendto(u, "hello", 5, 0, (void *)&a, sizeof a);
	close(u);
}

int main(int argc, char **argv)
{
	/* IP header at offset 0 (SOCK_DGRAM): protocol UDP, no fragment, dport 6767 */
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 6),
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 4, 0),
		BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
		BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6767, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
	const char *mode = argc > 2 ? argv[2] : "";
	int lo, one = 1, three = 3;
	char buf[2048];

	if (argc < 2)
		return 1;
	state = argv[1];
	getrandom(&boot, sizeof boot, 0);
	boot >>= 1;
	lo = lo_up();

	pd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_IP));
	if (pd < 0 || setsockopt(pd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) ||
	    setsockopt(pd, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one) ||
	    setsockopt(pd, SOL_SOCKET, SO_PRIORITY, &three, sizeof three))
		return 2;
	bind_ll(pd, lo, ETH_P_IP);
	if (!strcmp(mode, "queued")) {
		/* before pr exists, so only pd holds a frame when the state is written */
		struct pollfd q = { pd, POLLIN, 0 };
		hc = pd;
		send_to(6767);
		if (poll(&q, 1, 10000) != 1)
			return 3;
	}
	pr = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (pr < 0)
		return 2;
	bind_ll(pr, lo, ETH_P_ALL);

	if (!strcmp(mode, "ring")) {
		struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 2,
					   .tp_frame_size = 2048, .tp_frame_nr = 4 };
		hc = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
		if (setsockopt(hc, SOL_PACKET, PACKET_RX_RING, &req, sizeof req))
			return 3;
	} else if (!strcmp(mode, "fanout")) {
		int arg = 77 | (PACKET_FANOUT_HASH << 16);
		hc = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP));
		bind_ll(hc, lo, ETH_P_IP);
		if (setsockopt(hc, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg))
			return 3;
	} else if (!strcmp(mode, "member")) {
		struct packet_mreq mr = { .mr_ifindex = lo, .mr_type = PACKET_MR_ALLMULTI };
		hc = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
		if (setsockopt(hc, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr))
			return 3;
	}
	put();
	for (;;) {
		struct pollfd p[2] = { { pr, POLLIN, 0 }, { pd, POLLIN, 0 } };
		int n = strcmp(mode, "queued") ? 2 : 1;
		if (poll(p, n, 1000) <= 0)
			continue;
		if (p[0].revents & POLLIN)
			while (recv(pr, buf, sizeof buf, MSG_DONTWAIT) > 0)
				raw++;
		if (n == 2 && (p[1].revents & POLLIN))
			while (recv(pd, buf, sizeof buf, 0) > 0)
				matched++;
		put();
	}
}
