"""Running a function in fresh processes released at once (tests and the stress harness)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def _released(
    barrier: Any, results: Any, target: Callable[..., object], args: tuple[Any, ...]
) -> None:
    try:
        barrier.wait()
        results.put(target(*args))
    except BaseException as error:  # handed to the parent
        results.put(error)


def run_in_processes(target: Callable[..., Any], count: int, *args: Any) -> list[Any]:
    """Run `target(*args)` in `count` fresh processes released at once; return their results.

    `target` must be a module-level function. The first error any process raised is re-raised.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count, timeout=120)
    results = context.Queue()
    processes = [
        context.Process(target=_released, args=(barrier, results, target, args))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    for result in collected:
        if isinstance(result, BaseException):
            raise result
    return collected
