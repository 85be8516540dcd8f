"""The installed entry points answer from the project's venv (no root needed)."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = VENV_BIN / tool
    assert exe.is_file(), f"{exe} missing: run `make test` (installs the venv)"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("tool", ["lxc-cr", "lxc-checkpoint"])
def test_help_exits_zero(tool):
    r = _run(tool, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:"), r.stdout
    assert tool in r.stdout.splitlines()[0]
    assert "Traceback" not in r.stderr


def test_lxc_cr_help_lists_commands():
    out = _run("lxc-cr", "--help").stdout
    for cmd in ("tree", "inspect", "check"):
        assert cmd in out


def test_lxc_checkpoint_help_has_lxc_flags():
    out = _run("lxc-checkpoint", "--help").stdout
    for flag in ("-n", "-D", "-s", "-r", "-v", "-d", "-F", "-P"):
        assert f"{flag} " in out or f"{flag}," in out, flag


def test_bad_pid_is_usage_error():
    r = _run("lxc-cr", "tree", "dump", "notapid", "x")
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [l for l in r.stderr.splitlines() if l.startswith("lxc-cr: error:")]
    assert len(errors) == 1, r.stderr
    assert "notapid" in errors[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
