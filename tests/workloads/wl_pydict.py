"""A Python interpreter holding a 1,000,000-entry dict, for the tree dump/restore tests.

usage: python3 wl_pydict.py STATE [N]

Builds {f"k{i}": value(i) for i < N} (string keys: their hashes depend on the interpreter's
randomized hash secret, which lives in its memory).  Then, in a loop: verifies every entry
against value(i) and the dict's length, sums the values, increments a counter and rewrites
STATE (tmp + rename) with  boot= counter= ok=1|0 sum= expected_sum= len= .
No file descriptor stays open between iterations.
"""

import os
import sys
import time

MASK = (1 << 32) - 1


def value(i: int) -> int:
    return (i * 2654435761 + 12345) & MASK


def write_state(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def main() -> None:
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    boot = os.urandom(8).hex()
    d = {f"k{i}": value(i) for i in range(n)}
    expected_sum = sum(value(i) for i in range(n))
    counter = 0
    while True:
        ok = len(d) == n and all(d.get(f"k{i}") == value(i) for i in range(n))
        total = sum(d.values())
        counter += 1
        write_state(path, f"boot={boot}\ncounter={counter}\nok={int(ok)}\nsum={total}\n"
                          f"expected_sum={expected_sum}\nlen={len(d)}\n")
        time.sleep(0.01)


if __name__ == "__main__":
    main()
