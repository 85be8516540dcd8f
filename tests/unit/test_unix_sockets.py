"""unix_sockets: the pure decoders of sock_diag attributes and socket addresses."""

import socket
import struct

import pytest

from lxc_cr.kernel import netlink
from lxc_cr.resources.unix_sockets import _addr, _diag_entry, _name

pytestmark = pytest.mark.unit


def _attr(typ: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), typ) + payload + b"\0" * (-len(payload) % 4)


def test_diag_entry_decodes_a_unix_diag_msg():
    body = struct.pack("=BBBBIQ", socket.AF_UNIX, socket.SOCK_STREAM, 10, 0, 36280, 0)
    body += _attr(0, b"/run/app.sock\0")                           # UNIX_DIAG_NAME
    body += _attr(1, struct.pack("=II", 4242, (8 << 20) | 3))       # UNIX_DIAG_VFS
    body += _attr(3, struct.pack("=3I", 36287, 36288, 4000000000))  # UNIX_DIAG_ICONS
    body += _attr(6, b"\x02")                                       # UNIX_DIAG_SHUTDOWN
    msg = struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body
    ino, e = _diag_entry(msg, netlink.attrs(msg, 32))
    assert ino == 36280
    assert e == dict(type=socket.SOCK_STREAM, state=10, name="/run/app.sock",
                     vfs=(4242, 8, 3), peer=0, icons=[36287, 36288, 4000000000], shutdown=2)


def test_diag_entry_abstract_name_and_peer():
    body = struct.pack("=BBBBIQ", socket.AF_UNIX, socket.SOCK_DGRAM, 7, 0, 9, 0)
    body += _attr(0, b"\0app") + _attr(2, struct.pack("=I", 77))   # NAME, PEER
    msg = struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body
    assert _diag_entry(msg, netlink.attrs(msg, 32)) == (9, dict(
        type=socket.SOCK_DGRAM, state=7, name="@app", vfs=None, peer=77, icons=[],
        shutdown=0))


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
