"""lxc_cr/host.py and host_worker.py pieces that need no container: the manifest, the log
line, the transient-error rule and the bounded retry."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from lxc_cr import host, host_worker
from lxc_cr.errors import BadInput, Busy, KernelError, OperationFailed, Unsupported
from lxc_cr.policy import Settings

pytestmark = pytest.mark.unit


def entry(name, **kw):
    return dict({"kind": "lxc", "name": name, "lxcpath": "/var/lib/lxc", "state": "pending"}, **kw)


def test_manifest_replaces_entries_atomically_0600(tmp_path):
    d = tmp_path / "host"
    with host.Manifest(str(d)) as m:
        assert m.entries == []
        m.put(entry("a", order=1))
        m.put(entry("b"))
        m.put(entry("a", order=2))                  # same target: replaced
        m.put(dict(entry("a"), lxcpath="/srv/lxc"))  # same name, other lxcpath: another target
    path = d / "manifest.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["format"] == host.FORMAT
    assert [(e["name"], e.get("order"), e["lxcpath"]) for e in data["entries"]] == \
        [("b", None, "/var/lib/lxc"), ("a", 2, "/var/lib/lxc"), ("a", None, "/srv/lxc")]
    assert sorted(os.listdir(d)) == ["manifest.json", "manifest.lock"]   # no temp file left
    with host.Manifest(str(d)) as m:
        assert len(m.entries) == 3


@pytest.mark.parametrize("text", ["{not json", "[]", '{"entries": 3}'])
def test_a_bad_manifest_is_bad_input(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(BadInput) as ei, host.Manifest(str(tmp_path)):
        pass
    assert str(tmp_path / "manifest.json") in str(ei.value)


def test_log_line_is_greppable(capsys, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    host.log("lxc", "web", "checkpointed in 0.42 s (/x/lxc-cr.img)")
    host.log("", "", "boot: nothing to restore")
    assert capsys.readouterr().err.splitlines() == [
        "lxc-cr host: lxc web: checkpointed in 0.42 s (/x/lxc-cr.img)",
        "lxc-cr host: boot: nothing to restore"]


def test_journal_stream_detection(monkeypatch):
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert host._journal_is_stderr()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not host._journal_is_stderr()


@pytest.mark.parametrize("err,transient", [
    (Busy("web: another lxc-cr operation is in progress on this container (pid 1: dump)"), True),
    (host_worker.InTransition("web: container is STOPPING"), True),
    (KernelError("write", errno.EBUSY), True),
    (KernelError("open", errno.ENOENT), False),
    (OperationFailed("/sys/fs/cgroup/x: did not freeze within 10.0 s"), True),
    (OperationFailed("/srv/x/lxc-cr.img: write: No space left on device"), False),
    (Unsupported(42, "nginx", "io_uring instance", fd=7), False),
])
def test_transient_errors(err, transient):
    assert host_worker._transient(err) is transient


def test_attempt_retries_transient_errors_within_a_bound(monkeypatch):
    calls = []

    def worker(op, t, image, timeout):
        calls.append((op, image, timeout))
        return {"ok": False, "message": "busy", "transient": True}

    monkeypatch.setattr(host_worker, "_run_worker", worker)
    monkeypatch.setattr(host_worker, "RETRY_BUDGET", 5.0)
    t = host.Target("lxc", "web", "/var/lib/lxc", Settings(timeout=7))
    res = host_worker.attempt("checkpoint", t, "/img")
    assert not res["ok"] and "still after" in res["message"]
    assert len(calls) == host_worker.RETRY_ATTEMPTS
    assert calls[0] == ("checkpoint", "/img", 7)

    answers = iter([{"ok": False, "transient": True, "message": "busy"}, {"ok": True}])
    calls.clear()
    monkeypatch.setattr(host_worker, "_run_worker",
                        lambda *a: calls.append(a) or next(answers))
    assert host_worker.attempt("restore", t, "/img") == {"ok": True}
    assert len(calls) == 2

    calls.clear()
    monkeypatch.setattr(host_worker, "_run_worker",
                        lambda *a: calls.append(a) or {"ok": False, "message": "refused"})
    assert host_worker.attempt("checkpoint", t, "/img")["message"] == "refused"
    assert len(calls) == 1                     # not transient: no retry


def test_lxc_image_dir_per_lxcpath(tmp_path):
    s = Settings(image_dir="/srv/img")
    default = host._default_lxcpath()
    assert host.Target("lxc", "web", default, s).image(None) == "/srv/img/lxc/web"
    assert host.Target("lxc", "web", default, s).image("/x") == "/x/lxc/web"
    other = host.Target("lxc", "web", str(tmp_path), s).image(None)
    assert other.startswith("/srv/img/lxc/web@") and len(other) == len("/srv/img/lxc/web@") + 12
