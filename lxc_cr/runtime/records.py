"""Image records of the runtime adapters: the manager's own description of the source."""

import construct as cs

from lxc_cr.image.kinds import record_kind
from lxc_cr.resources.records_common import Str

SOURCE_CONFIG = record_kind(0x0010, "source_config", cs.Struct(
    "kind" / Str,          # "lxc" or "libvirt"
    "name" / Str,          # container or domain name
    "lxcpath" / Str,       # LXC: the lxcpath; libvirt: the connection URI
    "config" / Str,        # LXC: the config file text; libvirt: the domain XML
), doc="the container's configuration as its manager had it at checkpoint time")

RESTORE_STATE = record_kind(0x0011, "restore_state", cs.Struct(
    "state" / Str,         # "running" or "paused": what a restore leaves the domain in
), doc="virsh save --running/--paused: the state a later restore leaves the domain in")
