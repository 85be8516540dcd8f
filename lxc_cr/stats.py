"""Dump and restore statistics (``--print-stats``), named as CRIU's and Podman's are.

Dump: freezing_time, frozen_time, memdump_time, memwrite_time, pages_scanned,
pages_written; restore: forking_time, restore_time, pages_restored.  Times are in
microseconds.  A dump also stores its statistics in the image (record ``dump_stats``,
written last, just before the image is committed), and ``lxc-cr inspect`` shows them:
frozen_time there is the time frozen until the image was complete (the final figure also
counts verifying it and killing or resuming the tree).
"""

import construct as cs

from lxc_cr.image.kinds import record_kind

DUMP_STATS = record_kind(0x0020, "dump_stats", cs.Struct(
    "freezing_time" / cs.Int64ul,     # from the start until every task was stopped
    "frozen_time" / cs.Int64ul,       # stopped until the image was complete
    "memdump_time" / cs.Int64ul,      # selecting and reading pages, and writing them
    "memwrite_time" / cs.Int64ul,     # of which writing page blocks into the image
    "pages_scanned" / cs.Int64ul,     # pages of the mappings looked at
    "pages_written" / cs.Int64ul,     # pages stored in the image
    "tasks" / cs.Int32ul,
), doc="what the dump measured (microseconds, pages), as `--print-stats` prints it")

DUMP_FIELDS = ("freezing_time", "frozen_time", "memdump_time", "memwrite_time",
               "pages_scanned", "pages_written")
RESTORE_FIELDS = ("forking_time", "restore_time", "pages_restored")


def us(seconds: float) -> int:
    return max(0, int(seconds * 1e6))
