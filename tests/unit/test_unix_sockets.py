"""unix_sockets: the pure decoders of sock_diag attributes and socket addresses."""

import struct

import pytest

from lxc_cr.resources.unix_sockets import _addr, _icons, _name

pytestmark = pytest.mark.unit


def test_icons_from_pyroute2_hex_and_bytes():
    raw = struct.pack("<3I", 36287, 36288, 4000000000)
    as_hex = ":".join(f"{b:02x}" for b in raw)          # pyroute2's 'hex' nla form
    assert _icons(as_hex) == [36287, 36288, 4000000000]
    assert _icons(raw) == [36287, 36288, 4000000000]
    assert _icons(None) == [] and _icons("") == []


@pytest.mark.parametrize("raw,name", [
    ("/dev/log", "/dev/log"),                  # a path, as Python's getsockname gives it
    (b"\0app.sock", "@app.sock"),              # an abstract name
    ("", ""),                                  # unbound
    (b"", ""),
])
def test_names_and_their_inverse(raw, name):
    assert _name(raw) == name
    if name:
        back = _addr(name)
        assert (back if isinstance(back, bytes) else back.encode()) == \
            (raw if isinstance(raw, bytes) else raw.encode())
