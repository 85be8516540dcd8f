"""LXC networking: a busybox container (template config unchanged: veth on lxcbr0) with a
static address and a TCP listener; after checkpoint --stop and restore, twice, the same
address answers from another namespace on the bridge, the listener's state continued, and
eth0 has one link-local address."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from test_lxc_checkpoint import VENV_BIN, rootfs, run, wait_for

SERVER = r"""
#include <stdio.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
int main(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080)};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 16)) return 1;
    for (unsigned long n = 1;; n++) {          /* answers each connection with its number */
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        char b[32]; int k = snprintf(b, sizeof b, "%lu\n", n);
        write(c, b, k); close(c);
    }
}
"""
ADDR, CLIENT_ADDR = "10.0.3.2", "10.0.3.9"      # private, on a bridge with no uplink


@pytest.fixture
def client_ns(env_ready):
    """A network namespace plugged into lxcbr0 through a veth pair, removed afterwards."""
    tag = f"{os.getpid() % 100000}"
    ns, inner, outer = f"lxccr-test-{tag}-cl", f"lxc{tag}c", f"lxc{tag}h"

    def ip(*args):
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        ip("link", "set", outer, "master", "lxcbr0", "up")
        ip("link", "set", inner, "netns", ns)
        ip("-n", ns, "addr", "add", f"{CLIENT_ADDR}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def ask(ns: str) -> int | None:
    """Connect from the client namespace to ADDR:8080 and read the server's number."""
    code = ("import socket,sys\n"
            f"s=socket.create_connection(('{ADDR}',8080),timeout=2)\n"
            "print(s.recv(32).decode().strip())")
    r = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", code],
                       capture_output=True, text=True, timeout=30)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def test_address_and_listener_survive(lxc_container, cc, client_ns, tmp_path):
    ct = lxc_container("net")
    binary = Path(cc(SERVER, name="srv"))
    target = rootfs(ct) / "bin" / "srv"
    target.write_bytes(binary.read_bytes())
    target.chmod(0o755)
    (rootfs(ct) / "etc" / "init.d" / "rcS").write_text(
        "#!/bin/sh\n/bin/syslogd\n"
        f"ip addr add {ADDR}/24 dev eth0\n"
        "/bin/srv </dev/null >/dev/null 2>&1 &\n")
    ct.start()
    first = wait_for(lambda: ask(client_ns), what="the server from the bridge")
    second = ask(client_ns)
    assert second == first + 1
    for cycle in (1, 2):
        d = tmp_path / f"ckpt{cycle}"
        r = run(VENV_BIN / "lxc-cr", "lxc", "checkpoint", ct.name, d, "--stop", "-P",
                ct.lxcpath)
        assert r.returncode == 0, r.stderr
        assert ask(client_ns) is None, "the server still answers after --stop"
        r = run(VENV_BIN / "lxc-cr", "lxc", "restore", ct.name, d, "-P", ct.lxcpath)
        assert r.returncode == 0, r.stderr
        after = wait_for(lambda: ask(client_ns), what="the restored server")
        assert after == second + 1, "the listener's counter did not continue"
        second = ask(client_ns)
        out = ct.attach("ip", "addr", "show", "eth0").stdout
        assert f"inet {ADDR}/24" in out, out
        # LXC gives the veth a new MAC at each start, and its link-local address with it;
        # the one of an earlier start must not be carried along as an address of its own
        assert out.count("inet6 fe80:") == 1, (cycle, out)
    ct.stop()
