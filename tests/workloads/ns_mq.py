"""Helpers of the namespace tests (run with /usr/bin/python3 inside the mini-container).

    ns_mq.py create NAME       create POSIX queue /NAME (mode 0640) holding two messages
    ns_mq.py read NAME         print the queue's messages (prio, text) as JSON, and consume them
    ns_mq.py attrs NAME        print maxmsg, msgsize, curmsgs as JSON, consuming nothing
    ns_mq.py fuse DIR          mount a "fuse" filesystem on DIR (an fd of /dev/fuse with no
                               server: the mount exists, its connection is aborted)
"""
import ctypes
import json
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)


class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]


def ok(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return r


def main():
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == "fuse":
        fd = os.open("/dev/fuse", os.O_RDWR)
        opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
        ok(libc.mount(b"nstest", arg.encode(), b"fuse", 0, opts), "mount fuse")
        os.close(fd)
        return
    name = ("/" + arg).encode()
    if cmd == "create":
        a = Attr(0, 8, 256, 0)
        old = os.umask(0)
        q = ok(libc.mq_open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640, ctypes.byref(a)),
               "mq_open")
        os.umask(old)
        for prio, text in ((1, b"first message"), (5, b"second, higher priority")):
            ok(libc.mq_send(q, text, len(text), prio), "mq_send")
        os.close(q)
    elif cmd in ("read", "attrs"):
        q = ok(libc.mq_open(name, os.O_RDONLY | os.O_NONBLOCK), "mq_open")
        a = Attr()
        ok(libc.mq_getattr(q, ctypes.byref(a)), "mq_getattr")
        if cmd == "attrs":
            print(json.dumps(dict(maxmsg=a.maxmsg, msgsize=a.msgsize, curmsgs=a.curmsgs)))
            return
        out = []
        buf = ctypes.create_string_buffer(a.msgsize)
        prio = ctypes.c_uint()
        libc.mq_receive.restype = ctypes.c_ssize_t
        while True:
            n = libc.mq_receive(q, buf, a.msgsize, ctypes.byref(prio))
            if n < 0:
                break
            out.append([prio.value, buf.raw[:n].decode()])
        print(json.dumps(out))


main()
