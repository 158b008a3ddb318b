"""Today's path on the code before the payload mapping, for bench_mapping: run from a checkout
of that code (it is its ``bench.ingest_contenders``), with the CPU time of the drain measured
as ``mapping_contender`` measures it. Prints {"rate", "cpu_rate"}.

    cd <old tree> && PYTHONPATH=. python <this file> --port P --count N --workdir D --cpu 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--subscribe-only", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    import bench.ingest_contenders as before  # the old tree's, by PYTHONPATH

    out: dict[str, float] = {}
    if args.subscribe_only:
        before.run_agent(args.port, 0, 1, args.workdir, True)
    else:
        # Its drain is timed by two perf_counter() calls (first reading, last processed): the
        # process time at each is noted beside, for the CPU-second rate.
        cpu: list[float] = []

        def perf_counter() -> float:
            cpu.append(time.process_time())
            return time.perf_counter()

        before.time = types.SimpleNamespace(perf_counter=perf_counter)  # type: ignore[attr-defined]
        out = {"rate": before.run_agent(args.port, args.count, 1, args.workdir, False)["rate"]}
        out["cpu_rate"] = args.count / (cpu[-1] - cpu[0])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
