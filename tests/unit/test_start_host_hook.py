"""hooks/lxc/start-host, case 1 (a restore waits): it hands LXC_PID to the restore's socket
and exits with its answer.  LXC waits for it with the container set up, so that path
imports nothing beyond os, _socket and builtins: socket.py, shutil (with re and fnmatch),
select and signal took 15-20 ms more of a busybox restore."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from lxc_cr.runtime import lxc as lxc_runtime

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("answer,code", [(b"ok\n", 0), (b"no\n", 1)])
def test_hand_over_imports_little_and_returns_the_answer(test_name, answer, code):
    name = test_name("hook")
    os.makedirs(lxc_runtime.RUN_DIR, mode=0o700, exist_ok=True)
    path = lxc_runtime.socket_path(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    got = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            got.append(conn.recv(64))
            conn.sendall(answer)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        r = subprocess.run(["/usr/bin/python3", "-IS", "-X", "importtime", lxc_runtime.HOOK],
                           env={"LXC_NAME": name, "LXC_PID": "4242", "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=60)
        th.join(10)
    finally:
        listener.close()
        os.unlink(path)
    assert got == [b"4242\n"]
    assert r.returncode == code, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "_socket" in imported, r.stderr
    heavy = {"socket", "shutil", "re", "fnmatch", "select", "signal", "enum", "lxc_cr"}
    assert not imported & heavy, sorted(imported & heavy)
