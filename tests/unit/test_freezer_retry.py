"""Freezer.freeze() retries a freeze that does not complete, thawing in between, and names
what held it off.  The freezer files are a directory the test controls (the retry logic);
real cgroups are frozen by every LXC and libvirt integration test."""

import os

import pytest

from lxc_cr.errors import OperationFailed
from lxc_cr.kernel.cgroup import Freezer

pytestmark = pytest.mark.unit


class Stuck(Freezer):
    """A v1 freezer whose group reaches FROZEN only from try ``ok_at`` on."""

    def __init__(self, d, ok_at):
        self.dir, self.v2, self.timeout, self.ok_at = str(d), False, 1.0, ok_at
        self.writes = []
        (d / "tasks").write_text(f"{os.getpid()}\n")

    def _write(self, value):
        self.writes.append(value)

    def state(self):
        tries = self.writes.count("FROZEN")
        return "FROZEN" if self.ok_at and tries >= self.ok_at and self.writes[-1] == "FROZEN" \
            else "FREEZING"


def test_a_second_try_after_a_thaw(tmp_path):
    f = Stuck(tmp_path, ok_at=2)
    f.ATTEMPT = 0.05
    f.freeze()
    assert f.writes == ["FROZEN", "THAWED", "FROZEN"]


def test_gives_up_thawed_and_names_the_running_task(tmp_path):
    f = Stuck(tmp_path, ok_at=0)
    f.ATTEMPT = 0.05
    with pytest.raises(OperationFailed) as e:
        f.freeze()
    assert f.writes[-1] == "THAWED" and len(f.writes) >= 4
    # this test's own process is running while it reads its stat: named as holding it off
    assert f"did not freeze within 1.0 s (not frozen: {os.getpid()} (" in str(e.value)
    assert "running" in str(e.value)
