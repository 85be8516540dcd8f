"""Resources: SysV IPC objects of the tree's own IPC namespace survive ``tree dump`` +
``tree restore`` with the same ids: an attached shm segment with its contents, a message
queue with 5 pending messages and its qbytes, a semaphore set with values 3,1,4.  A segment
removed while attached and a queue whose qbytes exceed msgmnb are refused by name."""

from __future__ import annotations

import subprocess

import pytest

from treeutil import (assert_continued, assert_one_error_line,
                      assert_running_untraced, build, dump_kill, harness_fixture, read_state,
                      state_int, wait_state)

pytestmark = pytest.mark.integration

tree = harness_fixture()


def ipcs(pid) -> dict[str, list[list[str]]]:
    """``ipcs`` inside pid's IPC namespace: {"msg"|"shm"|"sem": [row fields]} by key."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-i", "ipcs"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    res: dict[str, list[list[str]]] = {"msg": [], "shm": [], "sem": []}
    cur = None
    for line in out.splitlines():
        if "Message Queues" in line:
            cur = "msg"
        elif "Shared Memory" in line:
            cur = "shm"
        elif "Semaphore Arrays" in line:
            cur = "sem"
        elif cur and line.startswith("0x"):
            res[cur].append(line.split())
    return res


def sysv_maps(pid) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [" ".join(ln.split()[:2] + ln.split()[5:6]) for ln in f if "/SYSV" in ln]


def test_sysv_shm_msg_sem_same_ids(tree):
    binary = build("res_sysv")
    d = tree.dir("sysv")
    st = d / "state"
    wl = tree.launch([binary, st], ready=lambda: state_int(st, "counter") >= 5)
    s0 = read_state(st)
    assert s0["bad"] == "0", s0
    ipc0 = ipcs(wl.root)
    maps0 = sysv_maps(wl.root)
    assert len(maps0) == 1 and s0["addr"] in maps0[0], maps0
    assert [r[1] for r in ipc0["shm"]] == [s0["shmid"]]
    assert [r[1] for r in ipc0["msg"]] == [s0["msqid"]]
    assert [r[1] for r in ipc0["sem"]] == [s0["semid"]]
    assert s0["shmid"] != "0" and s0["msqid"] != "0" and s0["semid"] != "0"

    dump_kill(tree, wl.root, d / "img")
    before = read_state(st)
    root = tree.restore(d / "img")
    after = wait_state(st, lambda s: s["bad"] != "0"
                       or int(s["counter"]) >= int(before["counter"]) + 20,
                       "the workload to check its objects again")
    assert after["bad"] == "0", f"after restore: {after['why']}"
    assert_continued(before, after)
    for k in ("shmid", "msqid", "semid", "addr"):
        assert after[k] == before[k], k
    assert after["qnum"] == "5" and after["sems"] == "3,1,4", after
    ipc1 = ipcs(root)
    # key, id, owner, perms, size/used-bytes, messages/nattch, nsems: all as before
    for kind in ("msg", "shm", "sem"):
        assert [r[:6] for r in ipc1[kind]] == [r[:6] for r in ipc0[kind]], (kind, ipc1, ipc0)
    assert sysv_maps(root) == maps0
    assert_running_untraced(root)


@pytest.mark.parametrize("mode,kind", [
    ("rmid", "SysV shm segment removed (IPC_RMID) but still attached by 1"),
    ("lowmnb", "SysV message queue"),
])
def test_sysv_refused(tree, mode, kind):
    binary = build("res_sysv")
    d = tree.dir(f"sysv-{mode}")
    st = d / "state"
    wl = tree.launch([binary, st, mode], ready=lambda: state_int(st, "counter") >= 3)
    s0 = read_state(st)
    res = tree.cli("tree", "dump", wl.root, d / "img")
    assert res.rc == 1, res.describe()
    line = assert_one_error_line(res)
    print(line)
    assert f"{kind}:" in line, line
    if mode == "rmid":
        assert f"shmid {s0['shmid']}" in line, line
    else:
        assert f"msqid {s0['msqid']}" in line and "CAP_SYS_RESOURCE" in line, line
    assert not (d / "img").exists()
    after = wait_state(st, lambda s: int(s["counter"]) > int(s0["counter"]) + 3,
                       "the refused tree to keep running")
    assert after["bad"] == "0", after
