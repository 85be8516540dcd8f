"""The registry of pending images: a checkpoint taken with ``--stop`` (or a host shutdown)
that the next start of its container should resume.

One JSON file per target under ``/var/lib/lxc-cr/pending/`` (directory 0700, files 0600,
written to a temporary file, fsync'ed and renamed into place), so a crash never leaves a
half-written record.  The root is ``$LXC_CR_STATE_DIR/pending`` when that variable is set
(tests point it at a temporary directory).  A record reads::

    {"kind": "lxc", "name": "web", "lxcpath": "/var/lib/lxc",
     "image": "/var/lib/lxc-cr/images/web", "created": 1764586000.5,
     "size": 1234567, "sha256": "9f86d0..."}

``image`` is what the restore takes: for ``lxc`` the checkpoint directory (the image file is
``lxc-cr.img`` inside it), for ``libvirt`` the save file.  ``sha256`` is that file's digest,
or None when the file is larger than ``HASH_LIMIT`` (hashing it would slow every
checkpoint down).

Standard library only: the LXC start-host hook imports this module without lxc-cr's venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse

from lxc_cr import atomicfile
from lxc_cr.lightimport import sha256

KINDS = ("lxc", "libvirt")
DEFAULT_STATE_DIR = "/var/lib/lxc-cr"
DEFAULT_LXCPATH = "/var/lib/lxc"
LXC_IMAGE_FILE = "lxc-cr.img"
HASH_LIMIT = 256 << 20


def state_dir() -> str:
    return os.environ.get("LXC_CR_STATE_DIR") or DEFAULT_STATE_DIR


def pending_dir() -> str:
    return os.path.join(state_dir(), "pending")


def _lxcpath(kind: str, lxcpath: str | None) -> str | None:
    if kind != "lxc":
        return None
    return os.path.realpath(lxcpath or DEFAULT_LXCPATH)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"pending image kind must be one of {KINDS}, not {kind!r}")


def _path(kind: str, name: str, lxcpath: str | None) -> str:
    """``lxc-NAME.json`` for the default lxcpath, ``lxc-NAME@HASH.json`` for another one
    (HASH: 12 hex digits of the lxcpath's sha256), ``libvirt-NAME.json``."""
    _check_kind(kind)
    if not name:
        raise ValueError("pending image: empty target name")
    base = f"{kind}-{urllib.parse.quote(name, safe='')}"
    lp = _lxcpath(kind, lxcpath)
    if lp is not None and lp != os.path.realpath(DEFAULT_LXCPATH):
        base += "@" + sha256(lp.encode()).hexdigest()[:12]
    return os.path.join(pending_dir(), base + ".json")


def _image_file(image: str) -> str:
    return os.path.join(image, LXC_IMAGE_FILE) if os.path.isdir(image) else image


def _digest(path: str) -> tuple[int | None, str | None]:
    try:
        size = os.stat(path).st_size
    except OSError:
        return None, None
    if size > HASH_LIMIT:
        return size, None
    h = sha256() if size <= 1 << 20 else hashlib.sha256()    # see lightimport.sha256
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return size, h.hexdigest()


def mark(kind: str, name: str, image: str, lxcpath: str | None = None) -> None:
    """Record IMAGE as the pending image of the target (replacing an older record)."""
    path = _path(kind, name, lxcpath)
    image = os.path.abspath(image)
    size, sha = _digest(_image_file(image))
    record = {"kind": kind, "name": name, "lxcpath": _lxcpath(kind, lxcpath),
              "image": image, "created": time.time(), "size": size, "sha256": sha}
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    atomicfile.write_json(path, record, indent=1, sort_keys=True)


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None          # unreadable or corrupt: treated as no pending image
    return record if isinstance(record, dict) and "image" in record else None


def lookup(kind: str, name: str, lxcpath: str | None = None) -> dict | None:
    """The pending record of the target, or None."""
    return _read(_path(kind, name, lxcpath))


def consume(kind: str, name: str, lxcpath: str | None = None) -> None:
    """Forget the target's pending image (the image itself is kept).  Idempotent."""
    try:
        os.unlink(_path(kind, name, lxcpath))
    except FileNotFoundError:
        pass


def all(kind: str | None = None) -> list[dict]:
    """Every pending record (of one kind, if given), sorted by kind and name."""
    if kind is not None:
        _check_kind(kind)
    try:
        names = os.listdir(pending_dir())
    except FileNotFoundError:
        return []
    out = []
    for fn in names:
        if fn.startswith(".") or not fn.endswith(".json"):
            continue
        if kind is not None and not fn.startswith(kind + "-"):
            continue
        record = _read(os.path.join(pending_dir(), fn))
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: (r.get("kind", ""), r.get("name", ""),
                                      r.get("lxcpath") or ""))
