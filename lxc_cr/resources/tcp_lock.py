"""The network lock and the crash watchdog of ``tcp_established`` (no records of its own).

Network lock: an nft table (family inet) in a connection's net namespace, whose input and
output chains drop that connection's packets both ways while it is dumped (and, for a peer
outside the tree, until the restore), run by ``nft -f -`` under ``nsenter`` on a namespace
fd held open, so it outlives the tree's tasks.

Watchdog: connections in repair mode and lock tables must not outlive a dumper that dies
(SIGKILL, OOM) with the tree left running: the kernel detaches the tree, but its sockets
would stay in repair mode (send/recv fail) and its packets dropped.  So the first connection
of a dump starts ``python -m lxc_cr.resources.tcp_lock`` in its own session, told on a pipe
(``sock PID FD REUSEADDR``, ``lock PID TABLE``) about each socket before it enters repair
mode and each table before it is made; it takes a fd of every lock's namespace at once.  A
dump that ends writes ``done`` and closes the pipe: the watchdog exits.  EOF without ``done``
means the dumper died: the watchdog switches repair off on every socket still there (a
pidfd_getfd copy, SO_REUSEADDR back), deletes every table, and exits.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

from lxc_cr.errors import OperationFailed

TCP_REPAIR, TCP_REPAIR_OFF, SOL_SOCKET, SO_REUSEADDR = 19, 0, 1, 2


def nft(ns_fd: int, script: str) -> None:
    """Run an nft script in the net namespace held by ``ns_fd``."""
    try:
        r = subprocess.run(["nsenter", f"--net=/proc/self/fd/{ns_fd}", "nft", "-f", "-"],
                           input=script, capture_output=True, text=True, pass_fds=(ns_fd,),
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OperationFailed(f"network lock: nft: {e}") from None
    if r.returncode:
        raise OperationFailed(f"network lock: nft: {r.stderr.strip() or r.returncode}")


class NetLock:
    """The network lock of one net namespace: an nft table (family inet) whose input and
    output chains (priority -300) drop the packets of each connection being dumped, so
    neither end changes between the snapshots of both, and a peer outside the tree gets
    no reset while the tree is down.  Run by ``nft`` inside the namespace (nsenter on a
    namespace fd we hold, so it outlives the tree's tasks)."""

    def __init__(self, host_pid: int, table: str):
        self.table = table
        self.ns_fd = os.open(f"/proc/{host_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.ends: dict[frozenset, int] = {}     # connection -> ends of it dumped here
        self.socks: set[int] = set()             # socket inodes counted in ends
        self.pending: list[str] = []
        self.made = False

    def nft(self, script: str) -> None:
        nft(self.ns_fd, script)

    def add(self, sock_ino: int, laddr: str, lport: int, raddr: str, rport: int) -> None:
        """Plan the rules of a connection (once per connection, its ends counted once
        per socket); ``flush`` makes them."""
        if sock_ino in self.socks:
            return
        self.socks.add(sock_ino)
        key = frozenset(((laddr, lport), (raddr, rport)))
        self.ends[key] = self.ends.get(key, 0) + 1
        if self.ends[key] > 1:
            return                       # the other end of a connection already locked
        t = f"inet {self.table}"
        if not self.made and not self.pending:
            self.pending += [
                f"add table {t}",
                f"add chain {t} input {{ type filter hook input priority -300 ; }}",
                f"add chain {t} output {{ type filter hook output priority -300 ; }}"]
        ip = "ip6" if ":" in laddr.removeprefix("::ffff:") else "ip"
        la, ra = (a.removeprefix("::ffff:") if ip == "ip" else a for a in (laddr, raddr))
        self.pending += [f"add rule {t} input {ip} saddr {ra} {ip} daddr {la} "
                         f"tcp sport {rport} tcp dport {lport} drop",
                         f"add rule {t} output {ip} saddr {la} {ip} daddr {ra} "
                         f"tcp sport {lport} tcp dport {rport} drop"]

    def flush(self) -> None:
        """Make the planned rules, in one nft transaction."""
        if self.pending:
            script, self.pending = "\n".join(self.pending) + "\n", []
            self.made = True             # (partly) made: delete it on the way out
            self.nft(script)

    @property
    def external(self) -> bool:
        """A connection of which only one end was dumped here (its peer is elsewhere)."""
        return any(n == 1 for n in self.ends.values())

    def close(self, keep: bool) -> None:
        try:
            if self.made and not keep:
                self.nft(f"delete table inet {self.table}\n")
        except OperationFailed:
            pass                         # e.g. the namespace's last process is gone
        finally:
            os.close(self.ns_fd)


def lock_available() -> bool:
    return shutil.which("nft") is not None and shutil.which("nsenter") is not None


def lock(ctx, host_pid: int) -> NetLock:
    """The network lock of the task's net namespace (one table per namespace and dump),
    announced to the watchdog before it exists."""
    locks = ctx.__dict__.setdefault("tcp_locks", {})
    ino = os.stat(f"/proc/{host_pid}/ns/net").st_ino
    if ino not in locks:
        table = f"lxc_cr_tcp_{os.getpid()}_{time.time_ns() // 1000}"
        watchdog(ctx).tell(f"lock {host_pid} {table}")
        locks[ino] = NetLock(host_pid, table)
    return locks[ino]


def lock_tree(ctx) -> None:
    """Once per dump, before the first snapshot: lock every established connection of the
    frozen tree (``ctx.descs``, host pid -> fds) in one nft transaction per namespace, so
    none can move while the others are snapshotted."""
    if ctx.__dict__.get("tcp_tree_locked"):
        return
    ctx.tcp_tree_locked = True
    from lxc_cr.resources.files import getfd
    for host_pid, descs in (getattr(ctx, "descs", None) or {}).items():
        for d in descs:
            if d.kind != "tcp socket":
                continue
            try:
                with socket.socket(fileno=getfd(host_pid, d.fd)) as s:
                    if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:
                        continue                     # not ESTABLISHED
                    here, there = s.getsockname(), s.getpeername()
            except (OSError, OperationFailed):
                continue                             # dump() finds out, socket by socket
            lock(ctx, host_pid).add(d.ino, here[0], here[1], there[0], there[1])
    for lk in ctx.__dict__.get("tcp_locks", {}).values():
        lk.flush()


def cover(ctx, host_pid: int, sock_ino: int, laddr: str, lport: int, raddr: str,
          rport: int) -> NetLock:
    """The lock holding this connection (made now if ``lock_tree`` missed it)."""
    lock_tree(ctx)
    lk = lock(ctx, host_pid)
    lk.add(sock_ino, laddr, lport, raddr, rport)
    lk.flush()
    return lk


def unlock(ctx, killed: bool) -> None:
    """The dump ends: lift every lock (after the kill, not one guarding a peer outside the
    tree), then let the watchdog go."""
    for lk in ctx.__dict__.get("tcp_locks", {}).values():
        lk.close(keep=killed and lk.external)
    ctx.tcp_locks = {}
    wd = ctx.__dict__.pop("tcp_watchdog", None)
    if wd is not None:
        wd.end()


class Watchdog:
    """The dumper's side of the watchdog process (see the module docstring)."""

    def __init__(self):
        try:
            self.p = subprocess.Popen([sys.executable, "-m", "lxc_cr.resources.tcp_lock"],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, text=True, close_fds=True,
                                      start_new_session=True)
        except OSError as e:
            raise OperationFailed(f"cannot start the tcp watchdog: {e.strerror or e}") from None

    def tell(self, line: str) -> None:
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except OSError as e:
            raise OperationFailed(f"tcp watchdog: {e.strerror or e}") from None

    def end(self) -> None:
        try:
            self.p.stdin.write("done\n")
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def watchdog(ctx) -> Watchdog:
    if "tcp_watchdog" not in ctx.__dict__:
        ctx.tcp_watchdog = Watchdog()
    return ctx.tcp_watchdog


def _watch(lines) -> None:
    """The watchdog process: collect what the dumper announces; act if it dies."""
    from lxc_cr.resources.files import getfd
    socks, locks = [], []
    for line in lines:
        w = line.split()
        if w == ["done"]:
            return
        if len(w) == 4 and w[0] == "sock":
            socks.append((int(w[1]), int(w[2]), w[3] == "1"))
        elif len(w) == 3 and w[0] == "lock":
            try:
                locks.append((os.open(f"/proc/{w[1]}/ns/net", os.O_RDONLY), w[2]))
            except OSError:
                pass
    for pid, fd, reuseaddr in socks:          # EOF without "done": the dumper died
        try:
            with socket.socket(fileno=getfd(pid, fd)) as s:
                s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
                if reuseaddr:
                    s.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        except Exception:                     # noqa: BLE001 - gone, killed: nothing to do
            pass
    for ns_fd, table in locks:
        try:
            nft(ns_fd, f"delete table inet {table}\n")
        except OperationFailed:
            pass


if __name__ == "__main__":
    _watch(sys.stdin)
