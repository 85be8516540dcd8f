"""lxc-cr: checkpoint/restart for LXC and libvirt-LXC containers."""

__version__ = "0.1.0"
