"""IPC namespace: POSIX message queues (mqueue) with their contents, and fs/mqueue sysctls.

SysV IPC objects of the namespace belong to sysv_ipc.py.  A queue is read by a helper that
setns()'s into the tree's IPC namespace, mounts that namespace's mqueue filesystem
privately (mqueue_get_tree takes the mounter's ipc namespace) to list the queues and stat
them (mode, owner; the file reads ``QSIZE:%-10lu NOTIFY:%-5d SIGNO:%-5d NOTIFY_PID:%-6d``),
then mq_receive()s every message and mq_send()s them back in the same order with the same
priorities: the queue is as it was (the tree is frozen meanwhile).  A queue with an
mq_notify() registration is refused: re-sending into it would fire the notification.

    struct mq_attr { long mq_flags, mq_maxmsg, mq_msgsize, mq_curmsgs; long __pad[4]; };
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile

import construct as cs

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.kernel import sys as ksys
from lxc_cr.resources.records_common import Blob, Str

MS_REC, MS_PRIVATE = 0x4000, 0x40000
MQ_SYSCTLS = ("msg_max", "msgsize_max", "queues_max", "msg_default", "msgsize_default")

MQUEUE = record_kind(0x0430, "mqueue", cs.Struct(
    "name" / Str,                # without the leading "/"
    "mode" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "gid" / cs.Int32ul,
    "maxmsg" / cs.Int64sl,
    "msgsize" / cs.Int64sl,
    "messages" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "prio" / cs.Int32ul,
        "data" / Blob,
    )),                          # in receive order (priority, then FIFO)
), doc="a POSIX message queue of the tree's IPC namespace, with its messages")

IPC_SYSCTL = record_kind(0x0431, "ipc_sysctl", cs.Struct(
    "key" / Str,                 # path under /proc/sys, e.g. "fs/mqueue/msg_max"
    "value" / Str,
), doc="an IPC namespace sysctl restored before the queues")


class MqAttr(ctypes.Structure):
    _fields_ = [("mq_flags", ctypes.c_long), ("mq_maxmsg", ctypes.c_long),
                ("mq_msgsize", ctypes.c_long), ("mq_curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mq_open.restype = ctypes.c_int
_libc.mq_receive.restype = ctypes.c_ssize_t
_libc.mq_receive.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_uint))
_libc.mq_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint)
_libc.mq_getattr.argtypes = (ctypes.c_int, ctypes.POINTER(MqAttr))


def _check(op: str, r: int, name: str) -> int:
    if r < 0:
        raise KernelError(op, ctypes.get_errno(), args=(name,))
    return r


def mq_open(name: str, flags: int, mode: int = 0, attr: MqAttr | None = None) -> int:
    ctypes.set_errno(0)
    a = ctypes.byref(attr) if attr is not None else None
    return _check("mq_open", _libc.mq_open(("/" + name).encode(), flags, ctypes.c_uint(mode), a),
                  name)


def parse_status(text: str) -> dict[str, int]:
    """``QSIZE:129        NOTIFY:0     SIGNO:0     NOTIFY_PID:0`` -> {"QSIZE": 129, ...}"""
    out = {}
    for tok in text.split():
        k, _, v = tok.partition(":")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _private_mqueue(fn):
    """Run fn(dir) with this namespace's mqueue fs mounted privately on a temporary dir."""
    ksys.unshare(ksys.CLONE_NEWNS)
    ksys.syscall("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    d = tempfile.mkdtemp(prefix="lxc-cr-mq-")
    try:
        ksys.syscall("mount", b"mqueue", d.encode(), b"mqueue", 0, None)
        try:
            return fn(d)
        finally:
            ksys.syscall("umount2", d.encode(), 2)
    finally:
        os.rmdir(d)


def list_queues() -> list[dict]:
    """Every queue of the calling process's IPC namespace: name, mode, owner, status."""
    def scan(d):
        out = []
        for name in sorted(os.listdir(d)):
            st = os.stat(os.path.join(d, name))
            with open(os.path.join(d, name)) as f:
                status = parse_status(f.read())
            out.append(dict(name=name, mode=st.st_mode & 0o7777, uid=st.st_uid,
                            gid=st.st_gid, status=status))
        return out
    return _private_mqueue(scan)


def read_queues() -> tuple[list[dict], list[dict]]:
    """(queue records with their messages, fs/mqueue sysctls); every queue is left with
    the same messages in the same order."""
    queues = []
    for q in list_queues():
        mqd = mq_open(q["name"], os.O_RDWR | os.O_NONBLOCK)
        try:
            attr = MqAttr()
            _check("mq_getattr", _libc.mq_getattr(mqd, ctypes.byref(attr)), q["name"])
            msgs = []
            buf = ctypes.create_string_buffer(max(attr.mq_msgsize, 1))
            prio = ctypes.c_uint()
            while True:
                ctypes.set_errno(0)
                n = _libc.mq_receive(mqd, buf, len(buf), ctypes.byref(prio))
                if n < 0:
                    if ctypes.get_errno() == errno.EAGAIN:
                        break
                    _check("mq_receive", n, q["name"])
                msgs.append(dict(prio=prio.value, data=buf.raw[:n]))
            for m in msgs:
                _check("mq_send", _libc.mq_send(mqd, m["data"], len(m["data"]), m["prio"]),
                       q["name"])
        finally:
            os.close(mqd)
        queues.append(dict(name=q["name"], mode=q["mode"], uid=q["uid"], gid=q["gid"],
                           maxmsg=attr.mq_maxmsg, msgsize=attr.mq_msgsize, messages=msgs))
    sysctls = []
    for k in MQ_SYSCTLS:
        try:
            with open(f"/proc/sys/fs/mqueue/{k}") as f:
                sysctls.append(dict(key=f"fs/mqueue/{k}", value=f.read().strip()))
        except OSError:
            pass
    return queues, sysctls


def check(root, run_in) -> list[Unsupported]:
    out = []
    for q in run_in(root.host_pid, ("ipc",), list_queues):
        if q["status"].get("NOTIFY_PID", 0):
            out.append(Unsupported(root.host_pid, root.stat.comm, "mq_notify registration",
                                   where=f"mqueue /{q['name']}"))
    return out


def dump(ctx, root, run_in) -> None:
    queues, sysctls = run_in(root.host_pid, ("ipc",), read_queues)
    for s in sysctls:
        ctx.writer.add(IPC_SYSCTL, s)
    for q in queues:
        ctx.writer.add(MQUEUE, q)


def restore(records) -> None:
    """Recreate the queues in the calling process's (fresh) IPC namespace."""
    for s in records.get("ipc_sysctl", ()):
        try:
            with open(f"/proc/sys/{s.key}") as f:
                if f.read().strip() == s.value:
                    continue
            with open(f"/proc/sys/{s.key}", "w") as f:
                f.write(s.value)
        except OSError as e:
            raise RestoreFailed(f"ipc sysctl {s.key} = {s.value}: {e.strerror}") from None
    for q in records.get("mqueue", ()):
        attr = MqAttr(0, q.maxmsg, q.msgsize, 0)
        try:
            mqd = mq_open(q.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK,
                          0o600, attr)
        except KernelError as e:
            raise RestoreFailed(f"mqueue /{q.name}: {e}") from None
        try:
            for m in q.messages:
                data = bytes(m.data)
                _check("mq_send", _libc.mq_send(mqd, data, len(data), m.prio), q.name)
            os.fchown(mqd, q.uid, q.gid)
            os.fchmod(mqd, q.mode)
        except (OSError, KernelError) as e:
            raise RestoreFailed(f"mqueue /{q.name}: {e}") from None
        finally:
            os.close(mqd)
