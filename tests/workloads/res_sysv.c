/* SysV IPC objects in the process's own IPC namespace: an attached shm segment holding a
 * pattern, a message queue with 5 pending messages, a semaphore set with values 3,1,4.
 *
 * usage: res_sysv STATE [rmid|lowmnb]
 * rmid: the segment is marked IPC_RMID while attached; lowmnb: kernel.msgmnb of the
 * namespace is lowered to 4096 below the queue's qbytes (both refused by a dump).
 * The root unshares its IPC namespace (it runs as pid 1 of its own pid namespace), creates
 * the objects after dummies it removes again (so their ids are not a fresh namespace's
 * first ids; the queue with qbytes 8192, below msgmnb) and keeps checking, every 5 ms,
 * that the segment still holds the pattern (byte i = (i * 7 + 3) & 0xff over 64 KiB), then
 * bumps a counter word in its last page.  The queue and the semaphores are only inspected
 * (MSG_COPY, GETALL), never consumed.
 * STATE: seq= boot= counter= bad= why= shmid= msqid= semid= addr= qnum= sems= shmword= end=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/random.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define SEG (64 * 1024)
#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

struct msgb { long mtype; char mtext[64]; };

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0, seq = 0;
	char why[256] = "", out[1024], tmp[4096];
	int shmid, msqid, semid, bad = 0, n, fd, qnum = 0;
	unsigned char *p;
	unsigned short vals[3] = { 3, 1, 4 }, cur[3];
	struct msqid_ds mds;
	struct msgb m;
	volatile uint64_t *word;

	if (argc < 2 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	if (unshare(CLONE_NEWIPC))
		return 3;
	/* dummies, removed afterwards: the real objects get ids a fresh namespace would not */
	int d1 = shmget(IPC_PRIVATE, 4096, 0600), d2 = msgget(IPC_PRIVATE, 0600);
	int d3 = semget(IPC_PRIVATE, 1, 0600);
	shmid = shmget(0x5eed0001, SEG, IPC_CREAT | IPC_EXCL | 0640);
	msqid = msgget(0x5eed0002, IPC_CREAT | IPC_EXCL | 0620);
	semid = semget(0x5eed0003, 3, IPC_CREAT | IPC_EXCL | 0600);
	if (shmid < 0 || msqid < 0 || semid < 0)
		return 4;
	if (shmctl(d1, IPC_RMID, NULL) || msgctl(d2, IPC_RMID, NULL) || semctl(d3, 0, IPC_RMID))
		return 10;
	p = shmat(shmid, NULL, 0);
	if (p == (void *)-1)
		return 5;
	for (int i = 0; i < SEG; i++)
		p[i] = (i * 7 + 3) & 0xff;
	word = (volatile uint64_t *)(p + SEG - 4096);
	*word = 0;
	if (msgctl(msqid, IPC_STAT, &mds))
		return 6;
	mds.msg_qbytes = 8192;
	if (msgctl(msqid, IPC_SET, &mds))
		return 7;
	for (int i = 0; i < 5; i++) {
		m.mtype = 10 + i;
		n = snprintf(m.mtext, sizeof m.mtext, "message %d of five", i);
		if (msgsnd(msqid, &m, n + 1, 0))
			return 8;
	}
	if (semctl(semid, 0, SETALL, vals))
		return 9;
	if (argc > 2 && !strcmp(argv[2], "rmid") && shmctl(shmid, IPC_RMID, NULL))
		return 11;
	if (argc > 2 && !strcmp(argv[2], "lowmnb")) {	/* qbytes 8192 > msgmnb 4096 */
		fd = open("/proc/sys/kernel/msgmnb", O_WRONLY);
		if (fd < 0 || write(fd, "4096", 4) != 4 || close(fd))
			return 12;
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	for (;;) {
		for (int i = 0; i < SEG - 4096 && !bad; i++)
			if (p[i] != ((i * 7 + 3) & 0xff)) {
				bad = 1;
				snprintf(why, sizeof why, "shm byte %d is %u", i, p[i]);
			}
		if (*word != counter && !bad) {
			bad = 1;
			snprintf(why, sizeof why, "shm word %llu, expected %llu",
				 (unsigned long long)*word, (unsigned long long)counter);
		}
		qnum = 0;
		for (int i = 0; i < 5; i++) {
			n = msgrcv(msqid, &m, sizeof m.mtext, i, IPC_NOWAIT | MSG_COPY);
			char want[64];
			snprintf(want, sizeof want, "message %d of five", i);
			if (n < 0 || m.mtype != 10 + i || strcmp(m.mtext, want)) {
				if (!bad) {
					bad = 1;
					snprintf(why, sizeof why, "message %d: n=%d errno=%d", i, n, errno);
				}
			} else {
				qnum++;
			}
		}
		if (msgctl(msqid, IPC_STAT, &mds) || mds.msg_qnum != 5 || mds.msg_qbytes != 8192) {
			if (!bad) {
				bad = 1;
				snprintf(why, sizeof why, "queue stat: qnum %lu qbytes %lu",
					 (unsigned long)mds.msg_qnum, (unsigned long)mds.msg_qbytes);
			}
		}
		if (semctl(semid, 0, GETALL, cur) || cur[0] != 3 || cur[1] != 1 || cur[2] != 4) {
			if (!bad) {
				bad = 1;
				snprintf(why, sizeof why, "semaphores %u,%u,%u", cur[0], cur[1], cur[2]);
			}
		}
		counter++;
		*word = counter;
		seq++;
		n = snprintf(out, sizeof out,
			     "seq=%llu\nboot=%016llx\ncounter=%llu\nbad=%d\nwhy=%s\nshmid=%d\n"
			     "msqid=%d\nsemid=%d\naddr=%lx\nqnum=%d\nsems=%u,%u,%u\nend=%llu\n",
			     (unsigned long long)seq, (unsigned long long)boot,
			     (unsigned long long)counter, bad, why, shmid, msqid, semid,
			     (unsigned long)p, qnum, cur[0], cur[1], cur[2], (unsigned long long)seq);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, out, n) == n && close(fd) == 0)
				rename(tmp, argv[1]);
			else
				close(fd);
		}
		nap_ms(5);
	}
}
