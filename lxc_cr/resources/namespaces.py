"""Namespaces of the tree: which kinds it owns, and the state of each that lxc-cr restores.

``/proc/PID/ns/KIND`` links (``net:[4026531840]``) tell each namespace; a kind whose inode
differs from the dumper's is the tree's own and is recreated fresh on restore.  Each kind
has its module: UTS here (``struct utsname`` nodename and domainname, uname(2) injected
into the root), net in ns_net, mount in ns_mnt, POSIX message queues in ns_ipc, SysV IPC
objects in sysv_ipc, clock offsets in ns_time, cgroup membership in ns_cgroup.  The pid
namespace is made by the restorer (restore._start_init), nested ones by the tasks that
made them (task.py), the time namespace by the restorer before it forks the init.

Restore: ``setup_in_child()`` runs in the restored init before takeover (restorer code, in
the new pid namespace): it unshares the other kinds and rebuilds each one in place, in the
order uts, ipc, mnt, net.  ``setup_existing()`` does the same inside namespaces a container
manager made, from a helper (``run_in``: a thread for uts, ipc and net) that setns()'s into
them.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket

from lxc_cr.errors import OperationFailed, RestoreFailed, Unsupported
from lxc_cr.kernel import sys as ksys
from lxc_cr.kernel.procfs import parse_ns_link
from lxc_cr.resources.ns_records import NS, UTS

KINDS = ("pid", "uts", "ipc", "net", "mnt", "cgroup", "time", "user")
_UTSNAME = 65


def own_kinds(proc, host_pid: int) -> dict[str, tuple[int, bool]]:
    out = {}
    me = os.getpid()
    for kind in KINDS:
        try:
            ino = proc.ns(host_pid, kind)
            mine = proc.ns(me, kind)
        except Exception:
            continue
        out[kind] = (ino, ino != mine)
    return out


def net_reads(host_pid: int):
    """A context manager giving an ns_net.Reads for a tree in a net namespace of its own,
    and closing it; None when the tree shares ours, or when no helper can be forked (check
    and dump then read the namespace in place)."""
    from contextlib import nullcontext

    from lxc_cr.kernel.procfs import Proc
    from lxc_cr.resources import ns_net
    proc = Proc()
    try:
        if proc.ns(host_pid, "net") != proc.ns(os.getpid(), "net"):
            return ns_net.Reads(host_pid)
    except (OSError, OperationFailed):
        pass
    return nullcontext()


def check(proc, root, managed: bool = False, tasks=(), net=None) -> list[Unsupported]:
    """``managed``: the tree is a manager's container (LXC, libvirt), whose root file
    system and mounts the manager recreates at every start: they are not checked.
    ``tasks``: the whole tree, each of which must share the root's namespaces (nested pid
    namespaces aside, see task.check_pidns).  ``net``: net_reads()'s Reads, or None."""
    from lxc_cr.resources import ns_cgroup, ns_ipc, ns_mnt, ns_net, ns_time, sysv_ipc
    from lxc_cr.resources import task as task_mod
    out = []
    kinds = own_kinds(proc, root.host_pid)
    own = {k for k, (_i, o) in kinds.items() if o}
    if tasks:
        out += task_mod.check_pidns(proc, tasks)
        out += _check_members(proc, tasks, kinds)
        out += ns_cgroup.check(proc, tasks)
    if "user" in own:
        out.append(Unsupported(root.host_pid, root.stat.comm, "user namespace",
                               reason="not supported yet"))
    if "time" in own:
        out += ns_time.check(root, managed)
    if "mnt" in own and not managed:
        out += ns_mnt.check(proc, root)
        out += _check_proc_mounts(proc, root)
    if "net" in own:
        out += ns_net.check(root, run_in, net)
    if "ipc" in own:
        out += ns_ipc.check(root, run_in)
        out += sysv_ipc.check(root, run_in)
    return out


def _check_proc_mounts(proc, root) -> list[Unsupported]:
    """A proc mount is recreated for the tree's own pid namespace: one mounted for a nested
    pid namespace (its pid 1 is in another namespace than the root's) is refused."""
    out = []
    mine = proc.ns(root.host_pid, "pid")
    for m in proc.mountinfo(root.host_pid):
        if m.fstype != "proc":
            continue
        try:
            _k, ino = parse_ns_link(os.readlink(
                f"/proc/{root.host_pid}/root{m.mount_point.rstrip('/')}/1/ns/pid"))
        except OSError:
            continue
        if ino != mine:
            out.append(Unsupported(root.host_pid, root.stat.comm, "proc mount",
                                   where=f"mount {m.mount_point}",
                                   reason="of a nested pid namespace: not supported"))
    return out


def _check_members(proc, tasks, kinds: dict) -> list[Unsupported]:
    """Every process in the root's namespaces of each kind but pid, and no
    time_for_children differing from its time namespace (unshare(CLONE_NEWTIME), no fork)."""
    from lxc_cr.errors import TaskGone
    out = []
    for t in tasks:
        if t.zombie:
            continue
        try:
            for kind, (ino, _own) in kinds.items():
                if kind != "pid" and t is not tasks[0] and proc.ns(t.host_pid, kind) != ino:
                    out.append(Unsupported(t.host_pid, t.stat.comm, f"{kind} namespace",
                                           reason="differs from the root's: not supported"))
            if "time" in kinds and proc.ns(t.host_pid, "time_for_children") != \
                    proc.ns(t.host_pid, "time"):
                out.append(Unsupported(t.host_pid, t.stat.comm, "time namespace for children",
                                       reason="differs from its own (unshare(CLONE_NEWTIME) "
                                              "before a fork): not supported"))
        except (TaskGone, OSError):
            continue
    return out


def dump(ctx, root, remote, managed: bool = False, tasks=(), net=None) -> None:
    """``tasks``: the whole tree, for the cgroups each process is in.  ``net``: the Reads
    of check(), told the tree is frozen; its state is taken last, after the other kinds."""
    from lxc_cr.resources import ns_cgroup, ns_ipc, ns_mnt, ns_net, ns_time, sysv_ipc
    kinds = own_kinds(ctx.proc, root.host_pid)
    for kind, (ino, own) in kinds.items():
        ctx.writer.add(NS, dict(kind=kind, ino=ino, own=own or kind == "pid"))
    buf = ctx.scratch_for(root)
    remote.call("uname", buf)
    raw = remote.read(buf, _UTSNAME * 6)
    field = lambda i: raw[i * _UTSNAME:(i + 1) * _UTSNAME].split(b"\0", 1)[0].decode()
    ctx.writer.add(UTS, dict(hostname=field(1), domainname=field(5)))
    own = {k for k, (_i, o) in kinds.items() if o}
    if "mnt" in own and not managed:
        ns_mnt.dump(ctx, root)
    if "ipc" in own:
        ns_ipc.dump(ctx, root, run_in)
        sysv_ipc.dump(ctx, root, run_in)
    if "time" in own:
        ns_time.dump(ctx, root)
    if tasks:
        ns_cgroup.dump(ctx, tasks)
    if "net" in own:
        ns_net.dump(ctx, root, run_in, net)


def unshare_flags(ns_recs) -> int:
    """CLONE_NEW* flags for the kinds the tree owned, except pid (done by the restorer)."""
    flags = 0
    for r in ns_recs:
        if r.own and str(r.kind) not in ("pid", "user", "time"):
            flags |= ksys.NS_FLAGS[str(r.kind)]
    return flags


def own_set(records) -> set[str]:
    return {str(r.kind) for r in records.get("ns", ()) if r.own}


def setup_in_child(records, reader) -> None:
    """Run in the restored init before takeover (still restorer code, in the new pid ns):
    unshare the other kinds the tree owned and rebuild each in place."""
    ksys.unshare(unshare_flags(records.get("ns", ())))
    rebuild(records, reader, own_set(records), fresh_proc=True)


def rebuild(records, reader, own: set[str], fresh_proc: bool) -> None:
    """Rebuild the recorded state of the kinds in ``own`` in the calling process's
    namespaces (each freshly created, or a manager's)."""
    from lxc_cr.resources import ns_ipc, ns_mnt, ns_net, sysv_ipc
    uts = (records.get("uts") or [None])[0]
    if uts is not None and "uts" in own:
        socket.sethostname(uts.hostname)
        name = uts.domainname.encode()
        ksys.syscall("setdomainname", name, len(name))
    if "ipc" in own:
        ns_ipc.restore(records)
        sysv_ipc.restore(records, reader)
    if "mnt" in own:
        ns_mnt.restore(records, reader, fresh_proc=fresh_proc)
    if "net" in own:
        ns_net.restore(records)


def setup_existing(pid: int, records, reader, kinds: set[str]) -> None:
    """Rebuild the recorded state inside the namespaces of ``pid`` (a manager's container
    init): a helper setns()'s into them and runs ``rebuild``; existing net devices are
    reconciled, not recreated."""
    order = [k for k in ("ipc", "uts", "net", "mnt") if k in kinds]
    run_in(pid, tuple(order), rebuild, records, reader, set(kinds), False)


# --- a helper inside a tree's namespaces ----------------------------------------------------

# setns() into these kinds moves only the calling thread (nsproxy is per task), so a thread
# is enough and this interpreter, large by then, is not forked (3-13 ms a fork).  A mount
# namespace needs the caller's fs_struct unshared and a user namespace a single-threaded
# process: those, and a function that must not share this process's memory, get a forked
# helper.  A function run in a thread may itself unshare these kinds, or CLONE_NEWNS (the
# kernel then gives the thread its own fs_struct): only the thread is moved.
THREAD_KINDS = frozenset({"net", "ipc", "uts"})


def run_in(pid: int, kinds: tuple, fn, *args):
    """Run ``fn(*args)`` inside ``kinds`` of pid's namespaces (mnt last) and return its
    result: in a thread when every kind is in THREAD_KINDS, else in a forked helper whose
    (picklable) result is sent back.  Its exceptions come back as OperationFailed naming
    the namespace."""
    fds = _open_ns(pid, kinds)
    what = _what(fn, kinds, pid)
    try:
        if THREAD_KINDS.issuperset(kinds):
            ok, val = _in_thread(fds, fn, args)
        else:
            ok, val = _in_child(fds, fn, args, what)
    finally:
        for _k, fd in fds:
            os.close(fd)
    if not ok:
        raise OperationFailed(f"{what}: {val}")
    return val


def _open_ns(pid: int, kinds: tuple) -> list[tuple[str, int]]:
    fds = []
    try:
        for k in kinds:
            fds.append((k, os.open(f"/proc/{pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as e:
        for _k, fd in fds:
            os.close(fd)
        raise OperationFailed(f"pid {pid}: cannot open its namespace: {e.strerror}") from None
    return fds


def _what(fn, kinds: tuple, pid: int | None) -> str:
    name = getattr(fn, '__name__', 'helper')
    if pid is None:
        return f"{name} in a helper"
    return f"{name} in the {'/'.join(kinds) or 'new'} namespace of pid {pid}"


def _enter_and_run(fds, fn, args) -> tuple[bool, object]:
    try:
        for k, fd in fds:
            ksys.setns(fd, ksys.NS_FLAGS[k])
        return True, fn(*args)
    except BaseException as e:                     # noqa: BLE001 - sent to the caller
        return False, f"{type(e).__name__}: {e}"


def _in_thread(fds, fn, args) -> tuple[bool, object]:
    import threading
    out = []
    # daemon: a signal that ends the main thread while it waits must not wait for this one
    th = threading.Thread(target=lambda: out.append(_enter_and_run(fds, fn, args)),
                          name="lxc-cr-ns", daemon=True)
    th.start()
    th.join()
    return out[0] if out else (False, "the helper thread died")


def _in_child(fds, fn, args, what) -> tuple[bool, object]:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                     # the helper
        os.close(r)
        res = _enter_and_run(fds, fn, args)
        try:
            data = pickle.dumps(res)
        except Exception as e:                         # noqa: BLE001
            data = pickle.dumps((False, f"result not picklable: {e}"))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    ksys.waitpid(child)
    if not chunks:
        raise OperationFailed(f"{what}: the helper died")
    return pickle.loads(b"".join(chunks))


class Beside:
    """A forked helper in ``kinds`` of pid's namespaces that runs functions while this
    process goes on: the dump of a container asks it for the network state before its
    checks and again once the tree is frozen, and takes each answer where it is needed
    (ns_net.Reads); a restore has one rebuild the network state (ns_net.Rebuild).  The helper's Python work (pyroute2's import and its decoding of the
    replies, 30-40 ms for a busybox container) then runs on the other CPU instead of
    taking turns with the dump's under one GIL.

    ``send(fn, *args)`` queues a call; calls run one after another, in the order sent,
    each in the namespaces (a call may unshare one: the next enters them again).  With
    ``pid`` None the helper stays in this process's namespaces (a call may setns: the next
    runs there too).
    ``take()`` returns the result of the oldest call not yet taken, or raises
    OperationFailed naming the call and the namespace, as run_in does (``send``'s ``what``
    names it otherwise).  ``done()`` sends
    the end of the calls, ``close()`` also reaps the helper; it ends by itself when this
    process dies (end of file on its requests).

    Forked early (before the tree is seized; about a millisecond, the interpreter being
    still small), the helper keeps no descriptor but its two pipes and the namespaces it
    enters, so it holds no lock, image or intent file of the dump, and takes the default
    action of the signals this process handles."""

    def __init__(self, pid: int | None, kinds: tuple = ()):
        self.pid, self.kinds = pid, kinds
        self._asked: list[str] = []
        fds = _open_ns(pid, kinds) if pid is not None else []
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self.child = os.fork()
        except OSError:
            for fd in (req_r, req_w, res_r, res_w, *(fd for _k, fd in fds)):
                os.close(fd)
            raise
        if self.child == 0:
            _serve(fds, req_r, res_w)                        # never returns
        for fd in (req_r, res_w, *(fd for _k, fd in fds)):
            os.close(fd)
        self._req = os.fdopen(req_w, "wb")
        self._res = os.fdopen(res_r, "rb")

    def send(self, fn, *args, what: str | None = None) -> None:
        self._asked.append(what or _what(fn, self.kinds, self.pid))
        try:
            pickle.dump((fn, args), self._req)
            self._req.flush()
        except OSError:
            pass                    # the helper is gone: take() says so

    def take(self):
        what = self._asked.pop(0)
        try:
            ok, val = pickle.load(self._res)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise OperationFailed(f"{what}: the helper died") from None
        if not ok:
            raise OperationFailed(f"{what}: {val}")
        return val

    def done(self) -> None:
        """No more calls: the helper exits once it has answered those sent, while this
        process goes on (close() then only reaps it)."""
        try:
            self._req.close()
        except OSError:
            pass

    def close(self) -> None:
        if self.child <= 0:
            return
        self.done()
        try:
            self._res.close()
        except OSError:
            pass
        if self._asked:             # a call still running: its answer is not wanted
            os.kill(self.child, signal.SIGKILL)
        try:
            ksys.waitpid(self.child)
        except ChildProcessError:
            pass                    # collected by someone else
        self.child = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(fds, req: int, res: int) -> None:
    """The helper of Beside: answer each call, run in the namespaces, until the end of
    file.  Never returns."""
    try:
        import gc
        # the forking process's uncollected garbage stays so: a file object among it,
        # finalized here, would close a descriptor number that a call has reused
        gc.freeze()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        keep = {req, res, *(fd for _k, fd in fds)}
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2 and int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass                # the listing's own descriptor, closed by now
        with os.fdopen(req, "rb") as rf, os.fdopen(res, "wb") as wf:
            while True:
                try:
                    fn, args = pickle.load(rf)
                except EOFError:
                    break
                out = _enter_and_run(fds, fn, args)
                try:
                    data = pickle.dumps(out)
                except Exception as e:                     # noqa: BLE001
                    data = pickle.dumps((False, f"result not picklable: {e}"))
                wf.write(data)
                wf.flush()
    finally:
        os._exit(0)


__all__ = ["check", "dump", "setup_in_child", "setup_existing", "rebuild", "run_in",
           "own_kinds", "unshare_flags", "Beside", "RestoreFailed"]
