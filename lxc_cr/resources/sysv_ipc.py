"""IPC namespace: SysV shared memory segments, message queues and semaphore sets.

Dump (kernel-facts "Processes and namespaces"), from a helper that setns()'s into the tree's
IPC namespace (``namespaces.run_in``): ``/proc/sysvipc/{shm,msg,sem}`` list the objects of
the reader's IPC namespace (``key id perms ...`` with a header line naming the columns);
a segment's contents are read through a temporary ``shmat(id, NULL, SHM_RDONLY)``, a
queue's messages with ``msgrcv(MSG_COPY|IPC_NOWAIT, index)`` (nothing is consumed), a
set's values with ``semctl(GETALL)``.  The namespace's kernel/ IPC sysctls (msgmnb, ...)
are recorded as ``ipc_sysctl`` records (ns_ipc restores them before the objects).

Restore runs inside the fresh IPC namespace (``namespaces.rebuild``): for every object,
``/proc/sys/kernel/{shm,msg,sem}_next_id`` is written with the recorded id just before the
get call, so the object gets the same id; then contents, messages or values, and owner and
mode with IPC_SET.  The tasks' attachments are mappings of kind ``sysv_shm`` restored by
memory.py with an injected shmat() at the recorded address.

Refused: a segment marked for deletion (IPC_RMID) but still attached (recreating it would
need a second attach phase), and a queue whose qbytes exceed the namespace's msgmnb
(raising it takes CAP_SYS_RESOURCE, which root lacks here).  Pending SEM_UNDO adjustments
are not visible and not restored.

glibc x86_64 layouts used (raw buffers): ``struct ipc_perm`` key@0 uid@4 gid@8 cuid@12
cgid@16 mode@20 (48 bytes); ``struct msqid_ds`` qbytes@88; ``struct shmid_ds`` segsz@48.
"""

from __future__ import annotations

import ctypes
import errno
import struct

import construct as cs

from lxc_cr.errors import KernelError, RestoreFailed, Unsupported
from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Blob, BlockRef, PackedPrefixedArray

IPC_CREAT, IPC_EXCL, IPC_NOWAIT = 0o1000, 0o2000, 0o4000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
GETALL, SETALL = 13, 17
SHM_LOCK = 11
SHM_RDONLY = 0o10000
MSG_COPY = 0o40000
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000
KERNEL_SYSCTLS = ("msgmax", "msgmnb", "msgmni", "shmmax", "shmall", "shmmni", "sem",
                  "shm_rmid_forced")
PERM_FMT = "<iIIIIH"          # key uid gid cuid cgid mode, the start of struct ipc_perm
MSQ_QBYTES = 88
ZERO_REF = dict(offset=0, length=0, stored=0, codec=0, crc32=0)

SYSV_SHM = record_kind(0x0440, "sysv_shm", cs.Struct(
    "key" / cs.Int32sl,
    "id" / cs.Int32sl,
    "mode" / cs.Int32ul,         # perms incl. SHM_LOCKED
    "uid" / cs.Int32ul,
    "gid" / cs.Int32ul,
    "size" / cs.Int64ul,         # shm_segsz
    "block" / BlockRef,          # the contents (all-zero reference: all zero bytes)
), doc="a SysV shared memory segment of the tree's IPC namespace, with its contents")

SYSV_MSG = record_kind(0x0441, "sysv_msg", cs.Struct(
    "key" / cs.Int32sl,
    "id" / cs.Int32sl,
    "mode" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "gid" / cs.Int32ul,
    "qbytes" / cs.Int64ul,
    "messages" / cs.PrefixedArray(cs.VarInt, cs.Struct(
        "mtype" / cs.Int64sl,
        "text" / Blob,
    )),                          # in queue order
), doc="a SysV message queue of the tree's IPC namespace, with its pending messages")

SYSV_SEM = record_kind(0x0442, "sysv_sem", cs.Struct(
    "key" / cs.Int32sl,
    "id" / cs.Int32sl,
    "mode" / cs.Int32ul,
    "uid" / cs.Int32ul,
    "gid" / cs.Int32ul,
    "semvals" / PackedPrefixedArray(cs.VarInt, cs.Int16ul),
), doc="a SysV semaphore set of the tree's IPC namespace, with its values")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_libc.msgget.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.msgctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                         ctypes.c_int)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.semget.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)


def _ok(op: str, r: int, what) -> int:
    if r == -1 or r is None:
        raise KernelError(op, ctypes.get_errno(), args=(what,))
    return r


# --- listing ------------------------------------------------------------------------------

def parse_sysvipc(text: str) -> list[dict[str, int]]:
    """Rows of a /proc/sysvipc file as {column: int}; ``perms`` is octal."""
    lines = text.splitlines()
    if not lines:
        return []
    cols = lines[0].split()
    out = []
    for ln in lines[1:]:
        vals = ln.split()
        if len(vals) < len(cols):
            continue
        row = {}
        for c, v in zip(cols, vals):
            row[c] = int(v, 8) if c == "perms" else int(v)
        out.append(row)
    return out


def list_objects() -> dict[str, list[dict[str, int]]]:
    """The SysV objects of the calling process's IPC namespace, plus its msgmnb."""
    out = {}
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            out[kind] = parse_sysvipc(f.read())
    with open("/proc/sys/kernel/msgmnb") as f:
        msgmnb = int(f.read())
    for q in out["msg"]:
        q["qbytes"] = _msq_qbytes(q["msqid"])
    out["msgmnb"] = msgmnb
    return out


def _stat(ctl, ident: int, what: str) -> bytearray:
    buf = (ctypes.c_char * 256)()
    ctypes.set_errno(0)
    _ok(ctl.__name__, ctl(ident, IPC_STAT, ctypes.addressof(buf)), what)
    return bytearray(buf.raw)


def _msq_qbytes(msqid: int) -> int:
    raw = _stat(_libc.msgctl, msqid, f"msqid {msqid}")
    return struct.unpack_from("<Q", raw, MSQ_QBYTES)[0]


# --- dump (in the helper) -----------------------------------------------------------------

def read_objects() -> dict:
    """Every object with its contents, messages or values, and the kernel/ IPC sysctls."""
    objs = list_objects()
    shms = []
    for s in objs["shm"]:
        sid, size = s["shmid"], s["size"]
        ctypes.set_errno(0)
        addr = _libc.shmat(sid, None, SHM_RDONLY)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise KernelError("shmat", ctypes.get_errno(), args=(f"shmid {sid}",))
        try:
            data = ctypes.string_at(addr, size)
        finally:
            _libc.shmdt(addr)
        shms.append(dict(key=s["key"], id=sid, mode=s["perms"], uid=s["uid"], gid=s["gid"],
                         size=size, data=data))
    msgs = []
    for q in objs["msg"]:
        qid = q["msqid"]
        bufsz = max(q["cbytes"], 1) + 8
        buf = ctypes.create_string_buffer(8 + bufsz)
        messages = []
        for i in range(q["qnum"]):
            ctypes.set_errno(0)
            n = _libc.msgrcv(qid, buf, bufsz, i, IPC_NOWAIT | MSG_COPY)
            if n < 0:
                if ctypes.get_errno() == errno.ENOMSG:
                    break
                raise KernelError("msgrcv(MSG_COPY)", ctypes.get_errno(), args=(f"msqid {qid}",))
            mtype = struct.unpack_from("<q", buf.raw, 0)[0]
            messages.append(dict(mtype=mtype, text=buf.raw[8:8 + n]))
        msgs.append(dict(key=q["key"], id=qid, mode=q["perms"], uid=q["uid"], gid=q["gid"],
                         qbytes=q["qbytes"], messages=messages))
    sems = []
    for s in objs["sem"]:
        sid, n = s["semid"], s["nsems"]
        arr = (ctypes.c_ushort * max(n, 1))()
        ctypes.set_errno(0)
        _ok("semctl(GETALL)", _libc.semctl(sid, 0, GETALL, ctypes.byref(arr)), f"semid {sid}")
        sems.append(dict(key=s["key"], id=sid, mode=s["perms"], uid=s["uid"], gid=s["gid"],
                         semvals=list(arr)[:n]))
    sysctls = []
    for k in KERNEL_SYSCTLS:
        try:
            with open(f"/proc/sys/kernel/{k}") as f:
                sysctls.append(dict(key=f"kernel/{k}", value=f.read().strip()))
        except OSError:
            pass
    return dict(shm=shms, msg=msgs, sem=sems, sysctls=sysctls)


def check(root, run_in) -> list[Unsupported]:
    out = []
    objs = run_in(root.host_pid, ("ipc",), list_objects)
    pid, comm = root.host_pid, root.stat.comm
    for s in objs["shm"]:
        if s["perms"] & SHM_DEST and s["nattch"]:
            out.append(Unsupported(pid, comm, "SysV shm segment removed (IPC_RMID) but still "
                                   f"attached by {s['nattch']}", where=f"shmid {s['shmid']}"))
    for q in objs["msg"]:
        if q["qbytes"] > objs["msgmnb"]:
            out.append(Unsupported(pid, comm, "SysV message queue", where=f"msqid {q['msqid']}",
                                   reason=f"qbytes {q['qbytes']} above msgmnb "
                                   f"{objs['msgmnb']} needs CAP_SYS_RESOURCE to restore"))
    return out


def dump(ctx, root, run_in) -> None:
    from lxc_cr.resources.ns_ipc import IPC_SYSCTL
    objs = run_in(root.host_pid, ("ipc",), read_objects)
    for s in objs["sysctls"]:
        ctx.writer.add(IPC_SYSCTL, s)
    for s in objs["shm"]:
        data = s.pop("data")
        s["block"] = ctx.writer.write_block(data) if data.strip(b"\0") else dict(ZERO_REF)
        ctx.writer.add(SYSV_SHM, s)
    for q in objs["msg"]:
        ctx.writer.add(SYSV_MSG, q)
    for s in objs["sem"]:
        ctx.writer.add(SYSV_SEM, s)


# --- restore (in the fresh IPC namespace) -------------------------------------------------

def _next_id(kind: str, ident: int) -> None:
    with open(f"/proc/sys/kernel/{kind}_next_id", "w") as f:
        f.write(str(ident))


def _set_owner(ctl, ident: int, uid: int, gid: int, mode: int, what: str,
               qbytes: int | None = None) -> None:
    raw = _stat(ctl, ident, what)
    key, _u, _g, cuid, cgid, _m = struct.unpack_from(PERM_FMT, raw, 0)
    struct.pack_into(PERM_FMT, raw, 0, key, uid, gid, cuid, cgid, mode & 0o777)
    if qbytes is not None:
        struct.pack_into("<Q", raw, MSQ_QBYTES, qbytes)
    buf = (ctypes.c_char * 256).from_buffer(raw)
    ctypes.set_errno(0)
    _ok(f"{ctl.__name__}(IPC_SET)", ctl(ident, IPC_SET, ctypes.addressof(buf)), what)


def _get(kind: str, ident: int, getter, what: str, *args) -> int:
    _next_id(kind, ident)
    ctypes.set_errno(0)
    got = getter(*args)
    if got < 0:
        err = ctypes.get_errno()
        _next_id(kind, -1)
        raise KernelError(f"{kind}get", err, args=(what,))
    if got != ident:
        raise RestoreFailed(f"{what}: got id {got} instead of {ident}")
    return got


def restore(records, reader) -> None:
    """Recreate every recorded object with its id in the calling process's IPC namespace."""
    try:
        _restore(records, reader)
    except KernelError as e:
        raise RestoreFailed(f"SysV IPC: {e}") from None
    except OSError as e:
        raise RestoreFailed(f"SysV IPC: {e.filename or ''}: {e.strerror}") from None


def _restore(records, reader) -> None:
    for s in sorted(records.get("sysv_shm", ()), key=lambda r: r.id):
        what = f"SysV shm segment {s.id} (key {s.key:#x})"
        sid = _get("shm", s.id, _libc.shmget, what, s.key, s.size,
                   IPC_CREAT | IPC_EXCL | (s.mode & 0o777))
        if s.block.length:
            data = reader.read_block(s.block)
            ctypes.set_errno(0)
            addr = _libc.shmat(sid, None, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise KernelError("shmat", ctypes.get_errno(), args=(what,))
            try:
                ctypes.memmove(addr, data, len(data))
            finally:
                _libc.shmdt(addr)
        if s.mode & SHM_LOCKED:
            ctypes.set_errno(0)
            _ok("shmctl(SHM_LOCK)", _libc.shmctl(sid, SHM_LOCK, None), what)
        _set_owner(_libc.shmctl, sid, s.uid, s.gid, s.mode, what)
    for q in sorted(records.get("sysv_msg", ()), key=lambda r: r.id):
        what = f"SysV message queue {q.id} (key {q.key:#x})"
        qid = _get("msg", q.id, _libc.msgget, what, q.key, IPC_CREAT | IPC_EXCL | (q.mode & 0o777))
        _set_owner(_libc.msgctl, qid, q.uid, q.gid, q.mode, what, qbytes=q.qbytes)
        for m in q.messages:
            text = bytes(m.text)
            buf = ctypes.create_string_buffer(struct.pack("<q", m.mtype) + text, 8 + len(text))
            ctypes.set_errno(0)
            _ok("msgsnd", _libc.msgsnd(qid, buf, len(text), IPC_NOWAIT), what)
    for s in sorted(records.get("sysv_sem", ()), key=lambda r: r.id):
        what = f"SysV semaphore set {s.id} (key {s.key:#x})"
        n = len(s.semvals)
        sid = _get("sem", s.id, _libc.semget, what, s.key, n,
                   IPC_CREAT | IPC_EXCL | (s.mode & 0o777))
        arr = (ctypes.c_ushort * max(n, 1))(*s.semvals)
        ctypes.set_errno(0)
        _ok("semctl(SETALL)", _libc.semctl(sid, 0, SETALL, ctypes.byref(arr)), what)
        _set_semowner(sid, s.uid, s.gid, s.mode, what)


def _set_semowner(semid: int, uid: int, gid: int, mode: int, what: str) -> None:
    buf = (ctypes.c_char * 256)()
    ctypes.set_errno(0)
    _ok("semctl(IPC_STAT)", _libc.semctl(semid, 0, IPC_STAT, ctypes.byref(buf)), what)
    raw = bytearray(buf.raw)
    key, _u, _g, cuid, cgid, _m = struct.unpack_from(PERM_FMT, raw, 0)
    struct.pack_into(PERM_FMT, raw, 0, key, uid, gid, cuid, cgid, mode & 0o777)
    buf2 = (ctypes.c_char * 256).from_buffer(raw)
    ctypes.set_errno(0)
    _ok("semctl(IPC_SET)", _libc.semctl(semid, 0, IPC_SET, ctypes.byref(buf2)), what)
