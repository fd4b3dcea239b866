"""A busy neighbour for the load test: burn CPU on this box until stopped.

`python -m bench.neighbour 1.2` burns 1.2 cores at nice 0 (one process per whole core, plus one duty-cycled in
10 ms slices for the fraction) until Ctrl-C or SIGTERM. Run it beside `make bench` to see what the stack does when
other work takes part of the machine; the results show it as "other work on the machine".
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

SLICE = 0.01


def burn(share: float) -> None:
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < SLICE * share:
            pass
        if share < 1:
            time.sleep(SLICE * (1 - share))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cores", type=float, help="how many cores to keep busy, e.g. 0.8 or 1.2")
    cores = parser.parse_args(argv).cores
    if cores <= 0:
        parser.error("cores must be > 0")
    shares = [1.0] * int(cores) + ([cores - int(cores)] if cores % 1 else [])
    children = []
    for share in shares[1:]:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole group: end quietly
            burn(share)
        children.append(pid)

    def stop(*_: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    burn(shares[0])


if __name__ == "__main__":
    main()
