"""Record declarations of namespaces (see namespaces.py)."""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

NsKind = cs.Enum(cs.Int8ul, pid=0, uts=1, ipc=2, net=3, mnt=4, cgroup=5, time=6, user=7)

NS = record_kind(0x0400, "ns", cs.Struct(
    "kind" / NsKind,
    "ino" / cs.Int64ul,          # /proc/PID/ns/KIND inode at dump time
    "own" / cs.Flag,             # the tree has its own (differs from the dumper's)
), doc="one per namespace kind of the tree's root")

UTS = record_kind(0x0401, "uts", cs.Struct(
    "hostname" / Str,
    "domainname" / Str,
))

NETLINK = record_kind(0x0410, "net_link", cs.Struct(
    "index" / cs.Int32ul,
    "name" / Str,
    "kind" / Str,                # "loopback", "veth", "bridge", ...
    "flags" / cs.Int32ul,        # IFF_* (IFF_UP = 1)
    "mtu" / cs.Int32ul,
    "address" / Str,             # MAC, "" if none
), doc="network devices of the tree's own net namespace")
