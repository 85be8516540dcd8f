"""Terminals: /dev/console, /dev/ttyN and /dev/pts/N slaves, as reconnectable terminals.

A container's console and ttys are ptys its manager creates at every start and binds to
the same paths (LXC: /dev/console, /dev/tty1..N).  A terminal fd is therefore recorded by
path with its line settings (``struct termios``: c_iflag c_oflag c_cflag c_lflag c_line
c_cc[19], TCGETS), window size (TIOCGWINSZ) and, for the session that owns it, whether it
is the controlling terminal and its foreground process group; on restore it is reopened by
path in the new container, the settings are applied, and the session leader takes it as
its controlling terminal again (TIOCSCTTY).  Pty masters are not supported.
"""

from __future__ import annotations

import os
import re
import struct

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

TTY = record_kind(0x0320, "tty", cs.Struct(
    "pid" / cs.Int32ul,
    "fd" / cs.Int32ul,
    "path" / Str,
    "termios" / cs.Bytes(36),
    "winsize" / cs.Bytes(8),
    "ctty" / cs.Flag,            # the controlling terminal of this process's session
    "fg_pgrp" / cs.Int32sl,      # foreground process group (tree pid ns), -1 if unknown
), doc="one per terminal fd")

TCGETS, TCSETS, TIOCGWINSZ, TIOCSWINSZ = 0x5401, 0x5402, 0x5413, 0x5414
TIOCSCTTY, TIOCGPGRP, TIOCSPGRP = 0x540E, 0x540F, 0x5410
O_NOCTTY, AT_FDCWD = 0o400, -100
TTY_PATH = re.compile(r"^/dev/(console|tty\d+|pts/\d+)$")
TTY_MAJORS = set(range(136, 144)) | {4, 5}


def classify(desc) -> None:
    """Mark a character-device fd that is a reconnectable terminal as kind ``tty``."""
    if not desc.kind.startswith("character device"):
        return
    if os.major(desc.rdev) in TTY_MAJORS and TTY_PATH.match(desc.target):
        desc.kind = "tty"


def dump(ctx, task, d, file_id) -> None:
    """The fd-kind handler's dump: settings read by ioctls injected into the task."""
    remote = task.leader.remote
    buf = ctx.scratch_for(task)
    remote.call("ioctl", d.fd, TCGETS, buf)
    termios = remote.read(buf, 36)
    remote.call("ioctl", d.fd, TIOCGWINSZ, buf)
    winsize = remote.read(buf, 8)
    ctty = task.stat.tty_nr == d.rdev
    fg = -1
    if ctty:
        try:
            remote.call("ioctl", d.fd, TIOCGPGRP, buf)
            fg = struct.unpack("<i", remote.read(buf, 4))[0]
        except Exception:
            fg = -1
    ctx.writer.add(TTY, dict(pid=task.pid, fd=d.fd, path=d.target, termios=termios,
                             winsize=winsize, ctty=ctty, fg_pgrp=fg))


KINDS = ("tty",)


def restore(ctx, task, rec, remote) -> int:
    """The fd-kind handler (files.HANDLERS) for ``tty``: reopen by path, reapply settings."""
    t = next((x for x in ctx.by_pid("tty", task.pid) if x.fd == rec.fd), None)
    buf = ctx.scratch + 2048
    path = t.path if t is not None else rec.target
    remote.write(buf, path.encode() + b"\0")
    fd = remote.call("openat", AT_FDCWD, buf, rec.flags | O_NOCTTY, 0)
    if t is None:
        return fd
    remote.write(buf, bytes(t.termios))
    remote.call("ioctl", fd, TCSETS, buf)
    remote.write(buf, bytes(t.winsize))
    remote.call("ioctl", fd, TIOCSWINSZ, buf)
    if t.ctty and task.rec.sid == task.pid and task.pid not in ctx.ctty_done:
        remote.call("ioctl", fd, TIOCSCTTY, 0)
        ctx.ctty_done.add(task.pid)
        if t.fg_pgrp > 0:
            ctx.tty_fg.append((task, fd if fd == rec.fd else rec.fd, t.fg_pgrp))
    return fd


def restore_foreground(ctx, lives_by_pid) -> None:
    """Set foreground process groups once every process exists (from the session leader)."""
    for task, fd, pgrp in ctx.tty_fg:
        _, remote = task.threads[task.pid]
        remote.write(ctx.scratch + 256, struct.pack("<i", pgrp))
        try:
            remote.call("ioctl", fd, TIOCSPGRP, ctx.scratch + 256)
        except Exception:
            pass


def _register() -> None:
    import sys
    from lxc_cr.resources import files
    files.HANDLERS.setdefault("tty", sys.modules[__name__])


_register()
