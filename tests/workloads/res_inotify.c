/* An inotify instance watching a directory and a file, reporting every event by wd.
 *
 * usage: res_inotify STATE DIR [EXTRA]
 * One instance (IN_NONBLOCK|IN_CLOEXEC) watches DIR/w (IN_CREATE|IN_DELETE|IN_MOVED_TO),
 * then DIR/gap (added and removed again, so the wds are not contiguous: the idr cursor moved
 * past it), then the file DIR/f (IN_MODIFY|IN_ATTRIB|IN_CLOSE_WRITE), and EXTRA if given.
 * The loop polls the instance every 5 ms and counts events per wd; an event for a wd it
 * does not hold sets bad=1.
 * STATE: boot= counter= bad= why= ifd= wd_dir= wd_gap= wd_file= wd_extra= dir_events=
 *        file_events= created= (the last names created in DIR/w, comma-separated)
 */
#define _GNU_SOURCE
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "wl_state.h"

int main(int argc, char **argv)
{
	uint64_t boot = 0, counter = 0, ndir = 0, nfile = 0;
	char path[PATH_MAX], why[256] = "", created[1024] = "";
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int ifd, wd_dir, wd_gap, wd_file, wd_extra = -1, bad = 0;

	if (argc < 3 || getrandom(&boot, sizeof boot, 0) != sizeof boot)
		return 2;
	ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	snprintf(path, sizeof path, "%s/w", argv[2]);
	wd_dir = inotify_add_watch(ifd, path, IN_CREATE | IN_DELETE | IN_MOVED_TO);
	snprintf(path, sizeof path, "%s/gap", argv[2]);
	mkdir(path, 0755);
	wd_gap = inotify_add_watch(ifd, path, IN_CREATE);
	if (ifd < 0 || wd_dir < 0 || wd_gap < 0 || inotify_rm_watch(ifd, wd_gap))
		return 3;
	snprintf(path, sizeof path, "%s/f", argv[2]);
	wd_file = inotify_add_watch(ifd, path, IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE);
	if (wd_file < 0)
		return 4;
	if (argc > 3 && (wd_extra = inotify_add_watch(ifd, argv[3], IN_ALL_EVENTS)) < 0)
		return 5;
	for (;;) {
		struct pollfd p = { ifd, POLLIN, 0 };
		ssize_t n;

		if (poll(&p, 1, 5) > 0 && (n = read(ifd, buf, sizeof buf)) > 0) {
			for (char *q = buf; q < buf + n;) {
				const struct inotify_event *e = (const struct inotify_event *)q;

				if (e->wd == wd_dir) {
					ndir++;
					if (e->mask & IN_CREATE && e->len &&
					    strlen(created) + e->len + 2 < sizeof created) {
						strcat(created, e->name);
						strcat(created, ",");
					}
				} else if (e->wd == wd_file) {
					nfile++;
				} else if (!(e->wd == wd_gap && e->mask & IN_IGNORED) &&
					   e->wd != wd_extra && !bad) {
					bad = 1;
					snprintf(why, sizeof why, "event %#x for unknown wd %d",
						 e->mask, e->wd);
				}
				q += sizeof *e + e->len;
			}
		}
		counter++;
		write_state(argv[1], "boot=%016llx\ncounter=%llu\nbad=%d\nwhy=%s\nifd=%d\n"
			    "wd_dir=%d\nwd_gap=%d\nwd_file=%d\nwd_extra=%d\ndir_events=%llu\n"
			    "file_events=%llu\ncreated=%s\n",
			    (unsigned long long)boot, (unsigned long long)counter, bad, why, ifd,
			    wd_dir, wd_gap, wd_file, wd_extra, (unsigned long long)ndir,
			    (unsigned long long)nfile, created);
	}
}
