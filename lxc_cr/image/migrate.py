"""Migrations between image format versions: one function per version step.

The reader loads any version from 1 to CURRENT_VERSION and hands out data in the current
shape; ``convert`` then writes it out as the current version.

Format steps (see format.py for the layouts):

* v1 -> v2: the header gains xcr0, vdso_size and vdso_hash (a v1 image says nothing about
  the dumping CPU or vdso: 0 / zero hash mean "unknown", and restore must then skip those
  compatibility checks); index entries gain the record length, which for v1 is read from
  each record frame's own length field.
* v2 -> v3: the header fields move from the file's start into the record pack, and its
  ``index_offset`` goes (v3 has no index); flags stay (0 in a v3 footer).  Records and
  blocks mean the same: only where they lie changed.

Record steps: a RecordKind whose layout changes bumps ``RecordKind.version`` and registers
``RECORD_MIGRATIONS[(tag, old_version)] = fn(obj) -> obj``.  Every current record kind is
at version 1, so the table is empty for now.  Until images record per-kind versions, a
record layout change must come with a format version step.
"""

from __future__ import annotations

from typing import Callable

import construct as cs

from lxc_cr.image import format as F


def header_v1_to_v2(h: cs.Container) -> cs.Container:
    out = cs.Container(h)
    out.version = 2
    out.xcr0 = 0
    out.vdso_size = 0
    out.vdso_hash = b"\0" * 32
    return out


def header_v2_to_v3(h: cs.Container) -> cs.Container:
    out = cs.Container((k, v) for k, v in h.items() if k != "index_offset")
    out.version = 3
    return out


# from-version -> function producing the next version's header fields
HEADER_STEPS: dict[int, Callable[[cs.Container], cs.Container]] = {
    1: header_v1_to_v2,
    2: header_v2_to_v3,
}


def header_to_current(h: cs.Container) -> cs.Container:
    """Header fields of any supported version, as the current version's fields.

    ``version`` stays the version the file was written in (``format_version`` in inspect).
    """
    version = h.version
    out = cs.Container((k, v) for k, v in h.items() if not k.startswith("_") and k != "magic")
    while out.version < F.CURRENT_VERSION:
        out = HEADER_STEPS[out.version](out)
    out.version = version
    return out


def index_entries_v1_to_v2(entries, frame_length: Callable[[int, int], int], limit: int):
    """v1 index entries (tag, offset) -> v2 (tag, offset, length).

    ``frame_length(offset, limit)`` reads the record frame's length field; ``limit`` is the
    end of the records area (the next entry's offset is not used: blocks may lie between).
    """
    out = []
    for e in entries:
        length = frame_length(e.offset, limit)
        out.append(cs.Container(tag=e.tag, offset=e.offset, length=length))
    return out


# (tag, record version it was written in) -> fn(obj) -> obj of the next record version
RECORD_MIGRATIONS: dict[tuple[int, int], Callable] = {}


def record_to_current(kind, obj, format_version: int, record_version: int = 1):
    """A parsed record in the current shape of its kind."""
    v = record_version
    while v < kind.version:
        obj = RECORD_MIGRATIONS[(kind.tag, v)](obj)
        v += 1
    return obj
