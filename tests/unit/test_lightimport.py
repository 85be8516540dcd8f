"""lightimport.submodule: a dependency's submodule without its package's __init__ (pyroute2's
imports every protocol it has, crc32c's asks importlib.metadata for its version), and the
package still whole for whoever asks for one of its own names afterwards.  Each case runs
in a fresh interpreter: the test process has imported these packages already."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pyroute2_submodule_skips_the_package_init_until_asked():
    out = run("""
import sys
from lxc_cr.lightimport import submodule
IPRoute = submodule("pyroute2", "iproute.linux").IPRoute
print("ndb" if "pyroute2.ndb.main" in sys.modules else "no-ndb")
print("init" if "__version__" in vars(sys.modules["pyroute2"]) else "no-init")
from pyroute2 import config                    # a submodule: imported on its own
print("init" if "__version__" in vars(sys.modules["pyroute2"]) else "no-init")
from pyroute2 import IPRoute as Full, NDB      # a name of the package: its __init__ runs
print(Full is IPRoute, NDB.__name__, "init" if sys.modules["pyroute2"].__version__ else "?")
""").splitlines()
    assert out == ["no-ndb", "no-init", "no-init", "True NDB init"]


def test_crc32c_without_importlib_metadata():
    out = run("""
import sys
from lxc_cr.lightimport import submodule
f = submodule("crc32c", "_crc32c").crc32c
print(hex(f(b"123456789")), "importlib.metadata" in sys.modules)
import crc32c
print(crc32c.crc32c is f, bool(crc32c.__version__))
""").splitlines()
    assert out == ["0xe3069283 False", "True True"]


def test_package_imported_before_is_used_as_is():
    out = run("""
import pyroute2
from lxc_cr.lightimport import submodule
m = submodule("pyroute2", "iproute.linux")
print(m.IPRoute is pyroute2.IPRoute)
""")
    assert out == "True"


def test_missing_package():
    from lxc_cr.lightimport import submodule
    with pytest.raises(ModuleNotFoundError):
        submodule("lxccr_no_such_package", "x")


def test_pdb_inspect_and_traceback_deferred_until_used():
    """Importing lxc-cr's dump and restore paths (pyroute2's messages and logging with
    them) executes neither pdb (construct's debug module imports it), inspect (dataclasses
    too) nor traceback (that module and logging); each works whole once asked for."""
    out = run("""
import sys
import lxc_cr.dump, lxc_cr.restore, lxc_cr.runtime.lxc, lxc_cr.image.reader
from lxc_cr.resources import ns_net
for name in ns_net.MESSAGES:
    ns_net._msg(name)
ran = lambda m: m in sys.modules and "__getattr__" not in vars(sys.modules[m])
print("logging" in sys.modules,
      [m for m in ("pdb", "bdb", "inspect", "ast", "dis", "traceback", "linecache",
                   "tokenize") if ran(m)])
import pdb, inspect, traceback
from inspect import signature
try:
    1 / 0
except ZeroDivisionError:
    tb = traceback.format_exc().splitlines()[-1]
print(pdb.Pdb.__name__, signature(lambda a, b=1: 0), tb, ran("pdb"), ran("inspect"),
      ran("traceback"))
""")
    assert out.splitlines() == [
        "True []", "Pdb (a, b=1) ZeroDivisionError: division by zero True True True"]


def test_deferred_leaves_an_imported_module_alone():
    out = run("""
import sys, json
from lxc_cr.lightimport import deferred
before = sys.modules["json"]
deferred("json")
deferred("no_such_module_here")
print(sys.modules["json"] is before, "no_such_module_here" in sys.modules)
""")
    assert out == "True False"
