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


def check(proc, root, managed: bool = False, tasks=()) -> list[Unsupported]:
    """``managed``: the tree is a manager's container (LXC, libvirt), whose root file
    system and mounts the manager recreates at every start: they are not checked.
    ``tasks``: the whole tree, each of which must share the root's namespaces (nested pid
    namespaces aside, see task.check_pidns)."""
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
        out += ns_net.check(root, run_in)
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


def dump(ctx, root, remote, managed: bool = False, tasks=()) -> None:
    """``tasks``: the whole tree, for the cgroups each process is in."""
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
    if "net" in own:
        ns_net.dump(ctx, root, run_in)
    if "mnt" in own and not managed:
        ns_mnt.dump(ctx, root)
    if "ipc" in own:
        ns_ipc.dump(ctx, root, run_in)
        sysv_ipc.dump(ctx, root, run_in)
    if "time" in own:
        ns_time.dump(ctx, root)
    if tasks:
        ns_cgroup.dump(ctx, tasks)


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
    fds = []
    try:
        for k in kinds:
            fds.append((k, os.open(f"/proc/{pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as e:
        for _k, fd in fds:
            os.close(fd)
        raise OperationFailed(f"pid {pid}: cannot open its namespace: {e.strerror}") from None
    what = f"{getattr(fn, '__name__', 'helper')} in the {'/'.join(kinds) or 'new'} " \
           f"namespace of pid {pid}"
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


__all__ = ["check", "dump", "setup_in_child", "setup_existing", "rebuild", "run_in",
           "own_kinds", "unshare_flags", "RestoreFailed"]
