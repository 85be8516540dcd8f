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


def test_unused_modules_deferred_until_used():
    """Importing lxc-cr's dump and restore paths (pyroute2's messages and logging with
    them, argparse's help formatter, tempfile) and hashing the vdso executes none of pdb
    (construct's debug module imports it), inspect (dataclasses too), traceback (that
    module and logging), hashlib (construct: OpenSSL with it), bz2 and lzma (shutil);
    each works whole once asked for."""
    out = run("""
import sys
import lxc_cr.dump, lxc_cr.restore, lxc_cr.runtime.lxc, lxc_cr.image.reader, lxc_cr.pending
import argparse, tempfile
from lxc_cr import hostcompat
from lxc_cr.resources import ns_net
for name in ns_net.MESSAGES:
    ns_net._msg(name)
argparse.ArgumentParser().add_argument("-x")
vdso = hostcompat.host_vdso()
ran = lambda m: m in sys.modules and "__getattr__" not in vars(sys.modules[m])
names = ("pdb", "bdb", "inspect", "ast", "dis", "traceback", "linecache", "tokenize",
         "hashlib", "_hashlib", "bz2", "lzma")
print("logging" in sys.modules, [m for m in names if ran(m)])
import pdb, inspect, traceback, hashlib, bz2, lzma
from inspect import signature
try:
    1 / 0
except ZeroDivisionError:
    tb = traceback.format_exc().splitlines()[-1]
with open("/proc/self/maps") as f:
    lo, hi = (int(x, 16) for x in next(ln for ln in f if "[vdso]" in ln).split()[0].split("-"))
with open("/proc/self/mem", "rb") as f:
    f.seek(lo)
    same = vdso == (hi - lo, hashlib.sha256(f.read(hi - lo)).digest())
print(pdb.Pdb.__name__, signature(lambda a, b=1: 0), tb, same,
      len(bz2.compress(b"x")) > 0, len(lzma.compress(b"x")) > 0)
""")
    assert out.splitlines() == [
        "True []", "Pdb (a, b=1) ZeroDivisionError: division by zero True True True"]


def test_sha256_is_hashlibs():
    import hashlib

    from lxc_cr.lightimport import sha256
    for data in (b"", b"abc", bytes(range(256)) * 1000):
        h = sha256(data)
        h.update(b"more")
        assert h.hexdigest() == hashlib.sha256(data + b"more").hexdigest()


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


SLOW_MODULE = '''
import pathlib, time
early = "early"
pathlib.Path(__file__).with_suffix(".runs").open("a").write("run\\n")
time.sleep(0.3)             # other threads ask for "late" meanwhile
late = "late"
'''


@pytest.mark.parametrize("how", ["deferred", "submodule"])
def test_threads_asking_at_once_wait_for_the_one_execution(tmp_path, how):
    """``lxc-cr host`` checkpoints containers in threads: the first thread to touch a
    deferred module executes it; a thread that asks for a name the module has not reached
    yet waits for it instead of getting an AttributeError (the hook used to be removed
    before the module ran).  The module runs once."""
    if how == "deferred":
        (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
        setup = "from lxc_cr.lightimport import deferred; deferred('slowmod')"
    else:
        (tmp_path / "slowmod").mkdir()
        (tmp_path / "slowmod" / "__init__.py").write_text(SLOW_MODULE)
        (tmp_path / "slowmod" / "sub.py").write_text("x = 1\n")
        setup = "from lxc_cr.lightimport import submodule; submodule('slowmod', 'sub')"
    out = run(f"""
import sys, threading
sys.path.insert(0, {str(tmp_path)!r})
{setup}
import slowmod
got, errors = [], []
def ask():
    try:
        got.append(slowmod.late)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=ask) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(got.count("late"), errors, slowmod.early, "__getattr__" in vars(slowmod))
try:
    slowmod.missing
except AttributeError as e:
    print(e)
""")
    runs = (tmp_path / ("slowmod.runs" if how == "deferred" else "slowmod/__init__.runs"))
    assert out.splitlines() == ["8 [] early False",
                                "module 'slowmod' has no attribute 'missing'"]
    assert runs.read_text() == "run\n"


def test_a_failed_execution_is_tried_again(tmp_path):
    (tmp_path / "flaky.py").write_text(
        "import os\nif not os.path.exists(__file__ + '.ok'):\n    raise ImportError('not yet')\n"
        "value = 42\n")
    out = run(f"""
import sys, pathlib
sys.path.insert(0, {str(tmp_path)!r})
from lxc_cr.lightimport import deferred
deferred("flaky")
import flaky
try:
    flaky.value
except ImportError as e:
    print("first:", e)
pathlib.Path(flaky.__file__ + ".ok").touch()
print("second:", flaky.value)
""")
    assert out.splitlines() == ["first: not yet", "second: 42"]
