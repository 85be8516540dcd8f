"""A Python interpreter holding a 1,000,000-entry dict, for the tree dump/restore tests.

usage: python3 wl_pydict.py STATE [N]

Builds {f"k{i}": value(i) for i < N} (string keys: their hashes depend on the interpreter's
randomized hash secret, which lives in its memory).  Then, in a loop: verifies every entry
against value(i) and the dict's length, sums the values, increments a counter and rewrites
STATE with  boot= counter= ok=1|0 sum= expected_sum= len= .  STATE is kept open and
rewritten in place (4096 bytes, "seq=K" first, "end=K" last), like the C workloads' put_state.
"""

import os
import sys
import time

MASK = (1 << 32) - 1


def value(i: int) -> int:
    return (i * 2654435761 + 12345) & MASK


class StateFile:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.seq = 0

    def write(self, text: str) -> None:
        self.seq += 1
        data = f"seq={self.seq}\n{text}end={self.seq}\n".encode()
        os.pwrite(self.fd, data.ljust(4096, b"\n"), 0)


def main() -> None:
    state = StateFile(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    boot = os.urandom(8).hex()
    d = {f"k{i}": value(i) for i in range(n)}
    expected_sum = sum(value(i) for i in range(n))
    counter = 0
    while True:
        ok = len(d) == n and all(d.get(f"k{i}") == value(i) for i in range(n))
        total = sum(d.values())
        counter += 1
        state.write(f"boot={boot}\ncounter={counter}\nok={int(ok)}\nsum={total}\n"
                          f"expected_sum={expected_sum}\nlen={len(d)}\n")
        time.sleep(0.01)


if __name__ == "__main__":
    main()
