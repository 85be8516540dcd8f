/* A parent that runs `sleep 0.3` through vfork() again and again, as a shell such as dash
 * does.  Each child waits argv[2] ms in its parent's memory before it execs, so the parent
 * is found in vfork(), waiting for the child to exec; then it waits for the sleep.
 * argv[1]: a file where the parent writes how many sleeps have ended with status 0.
 * argv[3] "novm": clone(CLONE_VFORK) without CLONE_VM: the parent waits in the same way,
 * but the child has a memory of its own. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return 2;
    long pause_ms = atol(argv[2]);
    int novm = argc == 4 && strcmp(argv[3], "novm") == 0;
    for (long n = 1;; n++) {
        pid_t pid = novm ? syscall(SYS_clone, CLONE_VFORK | SIGCHLD, 0, 0, 0, 0) : vfork();
        if (pid == 0) {
            /* only system calls between vfork() and exec: the memory is the parent's */
            struct timespec ts = { pause_ms / 1000, (pause_ms % 1000) * 1000000L };
            while (syscall(SYS_nanosleep, &ts, &ts) != 0)
                ;
            char *args[] = { "sleep", "0.3", NULL };
            syscall(SYS_execve, "/bin/sleep", args, NULL);
            syscall(SYS_exit, 127);
        }
        if (pid < 0)
            return 1;
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 3;
        FILE *f = fopen(argv[1], "w");
        if (!f)
            return 4;
        fprintf(f, "%ld\n", n);
        fclose(f);
    }
}
