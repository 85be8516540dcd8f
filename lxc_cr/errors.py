"""Error classes of lxc-cr.

Every error carries fields (pid, comm, fd, resource, section, offset, errno), not only
text.  The CLI maps each class to an exit code (contract: 1 = the operation failed and the
target was left as it was; 2 = bad usage or bad input) and prints ``str(err)`` on one line
after ``lxc-cr: error:``.  Never raise a bare Exception.
"""

from __future__ import annotations

import errno as _errno
import os


class LxcCrError(Exception):
    """Base class.  ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


# --- exit code 1: the operation failed, the target is as it was ---------------------------

class OperationFailed(LxcCrError):
    exit_code = 1


class Unsupported(OperationFailed):
    """One resource that cannot be checkpointed.

    Formats as the contract's line: ``pid 42 (nginx) fd 7: io_uring instance: not supported``.
    ``fd`` is None for task-wide resources, ``where`` replaces ``fd N`` (e.g. ``mount /mnt``).
    """

    def __init__(self, pid: int, comm: str, kind: str, fd: int | None = None,
                 where: str | None = None, reason: str = "not supported"):
        loc = f"pid {pid} ({comm})"
        if fd is not None:
            loc += f" fd {fd}"
        if where:
            loc += f" {where}"
        super().__init__(f"{loc}: {kind}: {reason}", pid=pid, comm=comm, fd=fd,
                         kind=kind, where=where, reason=reason)


class Refused(OperationFailed):
    """A dump or restore refused before touching anything; carries every Unsupported."""

    def __init__(self, problems: list[Unsupported]):
        self.problems = problems
        first = str(problems[0]) if problems else "refused"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more, problems=problems)


class KernelError(OperationFailed):
    """A syscall failed.  Names the operation, the pid and the arguments."""

    def __init__(self, op: str, err: int, pid: int | None = None, args: tuple = (),
                 detail: str = ""):
        name = _errno.errorcode.get(err, str(err))
        where = f" pid {pid}" if pid is not None else ""
        argtxt = ", ".join(_fmt_arg(a) for a in args)
        msg = f"{op}({argtxt}){where}: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg, op=op, errno=err, pid=pid, args=args)


def _fmt_arg(a) -> str:
    if isinstance(a, int) and (a > 4096 or a < -4096):
        return hex(a)
    return repr(a) if isinstance(a, (str, bytes)) else str(a)


class TaskGone(OperationFailed):
    """A task exited (or became a zombie) while we were looking at it."""

    def __init__(self, pid: int, what: str = "process gone"):
        super().__init__(f"pid {pid}: {what}", pid=pid)


class RestoreFailed(OperationFailed):
    """A restore step failed; every process created so far has been killed."""


class Busy(OperationFailed):
    """Another lxc-cr operation holds the lock on this target."""


# --- exit code 2: bad usage or bad input ----------------------------------------------------

class BadInput(LxcCrError):
    exit_code = 2


class UsageError(BadInput):
    pass


class UnknownTarget(BadInput):
    pass


class ImageError(BadInput):
    """A corrupt, truncated, unreadable or incompatible image.

    Formats as ``IMAGE: <what is wrong> at offset N`` (offset omitted when unknown).
    """

    def __init__(self, path: str, what: str, offset: int | None = None,
                 section: str | None = None):
        msg = f"{path}: {what}"
        if offset is not None:
            msg += f" at offset {offset}"
        super().__init__(msg, path=path, what=what, offset=offset, section=section)


class IncompatibleImage(ImageError):
    """The image cannot be restored on this host (CPU features, vdso, kernel)."""
