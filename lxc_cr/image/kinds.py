"""The record-kind table: the one place that maps each record tag to its declaration.

Each resource module declares its own construct Struct and registers it here with
``record_kind(tag, name, struct)``.  The image writer builds records with that struct, the
reader parses them with it, and ``inspect`` names them by it.  A tag that is not in the
table decodes to raw bytes, so inspect and re-encoding keep it.

Tag ranges (keep them grouped by resource):
    0x00xx image-level (stats, source config, ...)
    0x01xx task identity, creds, rlimits, mm, signals
    0x011x threads and registers
    0x02xx memory
    0x03xx file descriptors and file-like objects
    0x04xx namespaces
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import construct as cs


@dataclass(frozen=True)
class RecordKind:
    """A record tag with its name and construct declaration."""

    tag: int
    name: str
    struct: cs.Construct
    doc: str = ""
    # version of this record's layout; bump and add a migration in image/migrate.py
    version: int = 1
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def build(self, obj) -> bytes:
        """The payload of ``obj`` (compiled once this kind is hot: ``hot_call``)."""
        return hot_call(("build", self.tag), self.struct, "build", obj)

    def parse(self, data: bytes):
        return self.struct.parse(data)


# construct's compile() turns a declaration into generated Python that builds and parses
# about 4x faster, at 1-2 ms a declaration: worth it for the kinds a dump writes by the
# hundred (a 100-process tree: 4600 records, half of its time in construct), not for a
# busybox container's few dozen.  So a declaration is compiled once this process has spent
# COMPILE_AFTER interpreting it: what compiling may waste stays below that.
#
# Only trusted input goes through compiled code: objects this process builds, and the
# records it has just written (ImageReader.verify(own=True)).  A compiled parser trusts
# counts and lengths: a PrefixedArray whose count was edited to 2**60 allocates for it
# before it reads one byte, where the declaration itself stops at the end of the data.
# So images read from disk are parsed by the declaration.
COMPILE_AFTER = 0.005        # seconds spent interpreting one declaration
_HOT: dict = {}              # key -> _Hot


class _Hot:
    __slots__ = ("struct", "compiled", "spent", "tried")

    def __init__(self, struct):
        self.struct, self.compiled, self.spent, self.tried = struct, None, 0.0, False


def hot_call(key, struct: cs.Construct, method: str, arg):
    """``struct.build(arg)`` or ``struct.parse(arg)`` (``method``), by the compiled form
    once the declaration is hot under ``key`` (one that construct cannot compile stays
    interpreted)."""
    e = _HOT.get(key)
    if e is None or e.struct is not struct:
        e = _HOT[key] = _Hot(struct)
    if e.compiled is not None:
        return getattr(e.compiled, method)(arg)
    t = time.perf_counter()
    try:
        return getattr(struct, method)(arg)
    finally:
        e.spent += time.perf_counter() - t
        if e.spent >= COMPILE_AFTER and not e.tried:
            e.tried = True
            try:
                e.compiled = struct.compile()
            except Exception:        # noqa: BLE001 - not compilable: keep interpreting it
                pass


_BY_TAG: dict[int, RecordKind] = {}
_BY_NAME: dict[str, RecordKind] = {}


def record_kind(tag: int, name: str, struct: cs.Construct, doc: str = "") -> RecordKind:
    """Register a record kind; a tag or a name may be registered only once."""
    if not 0 < tag < 0x10000:
        raise ValueError(f"record tag {tag:#x} out of range")
    old = _BY_TAG.get(tag)
    if old is not None and old.name != name:
        raise ValueError(f"record tag {tag:#x} already used by {old.name}")
    if name in _BY_NAME and _BY_NAME[name].tag != tag:
        raise ValueError(f"record name {name} already used by tag {_BY_NAME[name].tag:#x}")
    kind = RecordKind(tag, name, struct, doc)
    _BY_TAG[tag] = kind
    _BY_NAME[name] = kind
    return kind


def by_tag(tag: int) -> RecordKind | None:
    load_all()
    return _BY_TAG.get(tag)


def by_name(name: str) -> RecordKind | None:
    load_all()
    return _BY_NAME.get(name)


def all_kinds() -> list[RecordKind]:
    load_all()
    return sorted(_BY_TAG.values(), key=lambda k: k.tag)


# Modules that declare record kinds.  Importing them registers their records.
RECORD_MODULES = (
    "lxc_cr.resources.task",
    "lxc_cr.resources.creds",
    "lxc_cr.resources.signals",
    "lxc_cr.resources.threads",
    "lxc_cr.resources.memory_records",
    "lxc_cr.resources.files_records",
    "lxc_cr.resources.ns_records",
    "lxc_cr.resources.ns_net",
    "lxc_cr.resources.ns_mnt",
    "lxc_cr.resources.ns_ipc",
    "lxc_cr.resources.ns_time", "lxc_cr.resources.ns_cgroup",
    "lxc_cr.resources.pipes", "lxc_cr.resources.ghost_files", "lxc_cr.resources.memfd",
    "lxc_cr.resources.eventfds", "lxc_cr.resources.epoll", "lxc_cr.resources.unix_sockets",
    "lxc_cr.resources.inet_sockets", "lxc_cr.resources.tcp_established",
    "lxc_cr.resources.sysv_ipc", "lxc_cr.resources.inotify", "lxc_cr.resources.packet_sockets",
    "lxc_cr.runtime.records", "lxc_cr.stats",
    "lxc_cr.resources.ttys",
)

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    for mod in RECORD_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet
            if e.name != mod:
                raise
