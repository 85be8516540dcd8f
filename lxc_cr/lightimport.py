"""Import one submodule of a package without running the package's ``__init__`` first;
defer a module that a dependency imports but lxc-cr never uses.

Two dependencies make every CLI start pay for what it does not use: pyroute2's
``__init__`` imports every protocol the library speaks (NDB, IPDB, conntrack, nl80211, ...:
about 50 ms), and crc32c's asks importlib.metadata for its own version (about 17 ms).  A
busybox container's whole checkpoint is budgeted at 0.2 s (issue #11).

``submodule("pyroute2", "netlink.rtnl.ifinfmsg")`` puts the package in ``sys.modules``
without executing it, then imports the submodule (which imports its own dependencies as
usual).
The package's ``__init__`` still runs, into the same module object, the first time an
attribute it defines is asked for: ``from pyroute2 import IPRoute`` elsewhere (a test, a
plugin) keeps working, it only pays the full import then.

``deferred("pdb")``: construct's package imports its ``debug`` module, which imports pdb
and inspect (and with them bdb, dis, ast, tokenize, code, typing, ...: 5-10 ms) for a
Debugger construct that lxc-cr never uses; dataclasses imports inspect for the signature
it writes as the docstring of a class that has none.  The module is put in
``sys.modules`` unexecuted, and executed (into the same module object) the first time one
of its attributes is asked for.  ``lxc_cr/__init__.py`` defers those two and traceback,
hashlib, bz2 and lzma (the reasons are there).

``sha256()``: hashlib's import loads OpenSSL; small hashes use CPython's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading

_lock = threading.Lock()       # a thread may import ahead (ns_net.preload)


def submodule(package: str, name: str):
    """The module ``package.name``, imported without ``package/__init__.py`` having run
    (unless something imported the package before)."""
    with _lock:
        _stub(package)
    return importlib.import_module(f"{package}.{name}")


def _stub(package: str) -> None:
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__getattr__ = _Completion(pkg, spec, submodules=True)
        sys.modules[package] = pkg


def deferred(name: str) -> None:
    """Make ``import NAME`` bind a module that executes on the first access to an
    attribute it defines (nothing, if it is imported already or cannot be found).
    importlib's LazyLoader would not do: the import statement itself reads the module's
    ``__spec__``, which makes a LazyLoader module execute at once."""
    with _lock:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        module.__getattr__ = _Completion(module, spec)
        sys.modules[name] = module


class _Completion:
    """The PEP 562 ``__getattr__`` that executes ``module`` (once) and then answers from it.

    Python calls it only for an attribute the module does not have yet.  Several threads
    may ask at once (``lxc-cr host`` checkpoints containers side by side): the first
    executes the module while the others wait on the lock, and the hook stays in place
    until the module has run, so no thread is told that a name it has not reached yet does
    not exist.  An attribute asked for again while the module runs (by its own code) is
    answered from what it has defined so far.  ``submodules``: a package's submodule
    (``from pyroute2 import config``) is imported on its own, the package left unexecuted.
    """

    def __init__(self, module, spec, submodules: bool = False):
        self.module, self.spec, self.submodules = module, spec, submodules
        self.done = False
        self.lock = threading.RLock()

    def __call__(self, attr: str):
        module = self.module
        if self.submodules and not self.done and not attr.startswith("__"):
            name = f"{module.__name__}.{attr}"
            if importlib.util.find_spec(name) is not None:
                return importlib.import_module(name)
        with self.lock:
            if not self.done:
                self.done = True
                try:
                    self.spec.loader.exec_module(module)
                except BaseException:
                    self.done = False           # as a failed import: tried again next time
                    raise
                if vars(module).get("__getattr__") is self:
                    del module.__getattr__
        try:
            return vars(module)[attr]
        except KeyError:
            pass
        own = vars(module).get("__getattr__")      # the module's own PEP 562 hook
        if own is not None and own is not self:
            return own(attr)
        raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")


def sha256(data: bytes = b""):
    """A sha256 object, as ``hashlib.sha256(data)``, from CPython's own module when it has
    one (_sha256; _sha2 from 3.12).  Importing hashlib loads OpenSSL's libcrypto (3 ms
    here), which pays for itself only from about 1 MB hashed: OpenSSL hashes 1.3 GB/s on
    this CPU, CPython's own code 0.2 GB/s.  For the vdso (8 KiB) and names."""
    try:
        from _sha256 import sha256 as new
    except ImportError:
        try:
            from _sha2 import sha256 as new
        except ImportError:
            from hashlib import sha256 as new
    return new(data)
