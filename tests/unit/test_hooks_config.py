"""lxc-cr hooks install/uninstall on LXC container configs in a temporary lxcpath: the
start-host hook block is appended once and removed byte for byte."""

import pytest

from lxc_cr import commands_hooks as hooks
from lxc_cr.errors import UnknownTarget


@pytest.mark.parametrize("original", ["", "lxc.uts.name = a\n", "lxc.uts.name = a",
                                      "# only a comment\n\n"])
def test_register_unregister_is_byte_exact(tmp_path, original):
    cfg = tmp_path / "ct" / "config"
    cfg.parent.mkdir()
    cfg.write_text(original)
    cfg.chmod(0o640)
    assert hooks.register_lxc(["ct"], str(tmp_path)) == [
        f"lxc start-host hook: ct: registered ({cfg})"]
    text = cfg.read_text()
    assert text.startswith(original)
    assert f"\nlxc.hook.start-host = {hooks.LXC_HOOK}\n" in text
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert "already registered" in hooks.register_lxc(["ct"], str(tmp_path))[0]
    assert cfg.read_text() == text
    assert hooks.status_lxc(str(tmp_path))[0] == "lxc start-host hook: ct: registered"
    assert "removed" in hooks.unregister_lxc(None, str(tmp_path))[0]
    assert cfg.read_text() == original
    assert hooks.unregister_lxc(["ct"], str(tmp_path)) == [
        "lxc start-host hook: ct: not registered"]


def test_unknown_container(tmp_path):
    with pytest.raises(UnknownTarget):
        hooks.register_lxc(["nope"], str(tmp_path))
