"""Record declarations of file descriptors (see files.py)."""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

FD = record_kind(0x0300, "fd", cs.Struct(
    "pid" / cs.Int32ul,
    "fd" / cs.Int32ul,
    "kind" / Str,                # "null", "reg", "dir", "pipe", "external-pipe", "chr", ...
    "flags" / cs.Int32ul,        # open flags from fdinfo
    "cloexec" / cs.Flag,
    "pos" / cs.Int64sl,
    "target" / Str,              # path or description (e.g. pipe:[1234])
    "file_id" / cs.Int32ul,      # same id = same open file description (shared-with)
), doc="one per open fd of each process")

FD_TABLE = record_kind(0x0301, "fd_table", cs.Struct(
    "pid" / cs.Int32ul,
    "shared_with" / cs.Int32ul,  # its parent, whose fd table it uses (clone CLONE_FILES)
), doc="a process sharing its parent's fd table: it has no fd records of its own")
