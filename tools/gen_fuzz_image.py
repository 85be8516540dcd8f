#!/usr/bin/env python3
"""Regenerate tests/unit/data/real-sleep-vN.img (N: the current format version), an
engine-made image the reader fuzz mutates (tests/unit/test_image_fuzz.py, which keeps the
images of older versions too): a running ``sleep`` in its own session, dumped by
``lxc-cr tree dump --leave-running --compress zstd``, then checked with ``lxc-cr inspect``.

Run as root from the repository: ``.venv/bin/python tools/gen_fuzz_image.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lxc_cr.image.format import CURRENT_VERSION  # noqa: E402

OUT = REPO / "tests" / "unit" / "data" / f"real-sleep-v{CURRENT_VERSION}.img"
LXC_CR = [sys.executable, "-m", "lxc_cr.cli"]


def main() -> int:
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.unlink(missing_ok=True)
        subprocess.run(LXC_CR + ["tree", "dump", str(proc.pid), str(OUT), "--leave-running",
                                 "--compress", "zstd"], check=True, cwd=REPO)
        subprocess.run(LXC_CR + ["inspect", str(OUT)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    finally:
        proc.kill()
        proc.wait()
    OUT.chmod(0o644)                    # a test fixture, not a checkpoint: readable by all
    print(f"{OUT}: {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
