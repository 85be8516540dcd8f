"""Small state files written atomically: a temporary file in the same directory (0600,
mkstemp), fsynced, renamed over the target, the directory fsynced (the rename survives a
host reboot: the manifest and pending records must).  A reader sees the old file or the new one,
never a part; a failure leaves no temporary file.  Standard library only: the LXC start-host
hook imports lxc_cr.pending without lxc-cr's venv."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def write_json(path: str, data, **dump_args) -> None:
    """Write ``data`` as JSON (``json.dump`` keyword arguments as given) to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, **dump_args)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
