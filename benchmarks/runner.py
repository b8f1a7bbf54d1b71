"""The benchmarks' job runner: each run in its own spawned process, a few at a time, results appended as they finish.

A run that crashes puts nothing on the queue; the runner then stops, naming it, instead of
waiting forever.  Finished runs are in the JSON file already, so an interrupted benchmark
resumes where it stopped (the caller skips the jobs whose key the file holds).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from queue import Empty


def run_jobs(todo: list[dict], one_run: Callable, key: Callable[[dict], str], path: Path, done: list[dict],
             jobs: int, describe: Callable[[dict], str]) -> None:
    """Run ``one_run(job, queue)`` for every job of ``todo``, ``jobs`` at once; append each result to ``path``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    running: dict = {}  # job key -> its process
    todo = list(todo)
    while todo or running:
        while todo and len(running) < jobs:
            job = todo.pop(0)
            running[key(job)] = ctx.Process(target=one_run, args=(job, queue))
            running[key(job)].start()
        result = None
        while result is None:
            try:
                result = queue.get(timeout=5)
            except Empty:
                failed = [k for k, p in running.items() if p.exitcode not in (None, 0)]
                if failed:
                    raise SystemExit(f"run {failed[0]} failed (exit code {running[failed[0]].exitcode})") from None
        running.pop(key(result)).join()
        done.append(result)
        path.write_text(json.dumps(done, indent=1) + "\n")
        print(f"{key(result)}: {describe(result)}", flush=True)
