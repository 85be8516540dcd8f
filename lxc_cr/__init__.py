"""lxc-cr: checkpoint/restart for LXC and libvirt-LXC containers."""

__version__ = "0.1.0"

from lxc_cr import lightimport as _lightimport  # noqa: E402

# imported by construct's debug module for a debugger lxc-cr never uses, and inspect by
# dataclasses too (for a class without a docstring: every lxc-cr dataclass has one);
# traceback by that module and by logging (pyroute2's), which use it only to format an
# exception (with linecache, tokenize and textwrap: 3-4 ms); hashlib by construct, for
# checksums lxc-cr does not declare (it loads OpenSSL: 3 ms; see lightimport.sha256);
# bz2 and lzma by shutil (argparse's help formatter and tempfile import it), only to know
# whether it could make such archives (2 ms)
for _name in ("pdb", "inspect", "traceback", "hashlib", "bz2", "lzma"):
    _lightimport.deferred(_name)
del _name
