"""Every comparison table of the README's "How depprune compares", one command: the benchmarks below in turn.

    python benchmarks/reproduce.py             # all of them (see each script's docstring for its share)
    python benchmarks/reproduce.py --only compare_torch_pruning prune_cost

Each benchmark runs as its own process, one after the other (they time things: nothing else
should run beside them), and measures every row again, writing its JSON and markdown to
``benchmarks/results/`` (``pruned_speed`` keeps rows of other devices, e.g. GPU rows from another
machine).  The time each took is printed at the end: about 33 minutes in all on the 2-core CPU
machine of the committed tables (10.7 + 6.0 + 9.8 + 2.9 + 3.7).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {  # script -> its arguments for the committed tables
    "compare_torch_pruning": ["--fresh"],
    "prune_cost": [],
    "pruned_speed": [],
    "trace_meta": ["--repeat", "1"],
    "taylor_memory": [],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = ap.parse_args()
    took = {}
    for name in args.only:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *BENCHMARKS[name]], cwd=HERE)
        took[name] = (time.perf_counter() - start, done.returncode)
    for name, (seconds, code) in took.items():
        print(f"{name}: {seconds / 60:.1f} min{'' if code == 0 else f' (exit code {code})'}")
    if any(code for _, code in took.values() if code):
        sys.exit(1)


if __name__ == "__main__":
    main()
