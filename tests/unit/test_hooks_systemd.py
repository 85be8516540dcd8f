"""``lxc-cr hooks install|uninstall|status`` for the systemd files (lxc_cr/commands_hooks.py),
with the destinations moved to a temporary directory."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from lxc_cr import commands_hooks

pytestmark = pytest.mark.unit


@pytest.fixture
def installs(tmp_path, monkeypatch):
    moved = [(what, src, str(tmp_path / dst.lstrip("/")))
             for what, src, dst in commands_hooks.INSTALLS if "systemd" in what]
    assert len(moved) == 2
    monkeypatch.setattr(commands_hooks, "INSTALLS", moved)
    monkeypatch.setattr(commands_hooks, "register_lxc", lambda *a: [])
    monkeypatch.setattr(commands_hooks, "unregister_lxc", lambda *a: [])
    monkeypatch.setattr(commands_hooks, "status_lxc", lambda *a: [])
    monkeypatch.setattr(commands_hooks, "_systemd_running", lambda: False)
    return moved


def test_install_renders_the_lxc_cr_path(installs):
    lxc_cr = commands_hooks.lxc_cr_path()
    assert lxc_cr == str(Path(sys.executable).parent / "lxc-cr")
    out = commands_hooks.install()
    assert any("systemctl daemon-reload && systemctl enable --now lxc-cr-host.service" in x
               for x in out)
    unit, dropin = (Path(dst) for _, _, dst in installs)
    text = unit.read_text()
    assert f"ExecStart={lxc_cr} host boot\n" in text and "@LXC_CR@" not in text
    assert f"ExecStartPre=-{lxc_cr} host boot --kind lxc\n" in dropin.read_text()
    for p in (unit, dropin):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert all(line.endswith(f"installed ({dst})")
               for line, (_, _, dst) in zip(commands_hooks.status(), installs))
    dropin.write_text(dropin.read_text().replace(lxc_cr, "/elsewhere/lxc-cr"))
    assert "installed (differs)" in commands_hooks.status()[1]
    out = commands_hooks.uninstall()
    assert not unit.exists() and not dropin.exists()
    assert all("not installed" in x for x in commands_hooks.status())
