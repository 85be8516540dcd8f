"""lxc-cr: checkpoint/restart for LXC and libvirt-LXC containers."""

__version__ = "0.1.0"

from lxc_cr import lightimport as _lightimport  # noqa: E402

# imported by construct's debug module for a debugger lxc-cr never uses, and inspect by
# dataclasses too (for a class without a docstring: every lxc-cr dataclass has one);
# traceback by that module and by logging (pyroute2's), which use it only to format an
# exception (with linecache, tokenize and textwrap: 3-4 ms)
_lightimport.deferred("pdb")
_lightimport.deferred("inspect")
_lightimport.deferred("traceback")
