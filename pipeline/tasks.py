"""Run many Ray tasks with a bounded window, a deadline per task, and retries.

Why not plain `ray.get([f.remote(x) for x in items])`: at 250M pairs there are tens of thousands of
shards. Submitting them all at once grows the driver and object store without bound, one stuck shard
(a server dripping bytes) would hang the whole job, and Ray's own `max_retries` does not retry a
task that is merely slow. Here at most `max_in_flight` tasks run, each has a wall-clock deadline
after which it is force-cancelled and resubmitted, and a task that fails `retries + 1` times is
handed to `on_give_up` (which records its rows as rejected) instead of failing the build.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


@dataclass
class TaskFailure:
    item: Any
    attempts: int
    error: str


def default_in_flight() -> int:
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(
    remote_fn: Any,
    items: Iterable[Any],
    *,
    args: tuple = (),
    max_in_flight: int = 0,
    timeout_s: float | None = None,
    retries: int = 0,
    on_result: Callable[[Any, Any], None] | None = None,
    on_give_up: Callable[[TaskFailure], Any] | None = None,
    desc: str = "tasks",
    total: int | None = None,
) -> list[TaskFailure]:
    """Call `remote_fn.remote(item, *args)` for every item; return the items that were given up on.

    `on_result(item, result)` runs in the driver for each success, in completion order.
    Without `on_give_up`, a task that exhausts its retries raises RuntimeError (a bug, not bad input).
    """
    import ray
    from tqdm import tqdm

    window = max_in_flight or default_in_flight()
    pending = iter(items)
    running: dict[Any, tuple[Any, int, float]] = {}  # ref -> (item, attempt, started)
    failures: list[TaskFailure] = []
    bar = tqdm(total=total, desc=desc, unit="task", mininterval=2.0, dynamic_ncols=True)

    def submit(item: Any, attempt: int) -> None:
        running[remote_fn.remote(item, *args)] = (item, attempt, time.monotonic())

    def retry_or_give_up(item: Any, attempt: int, error: str) -> None:
        if attempt < retries:
            log.warning("%s: retrying %r (attempt %d/%d): %s", desc, item, attempt + 2, retries + 1, error)
            submit(item, attempt + 1)
            return
        failure = TaskFailure(item, attempt + 1, error)
        if on_give_up is None:
            bar.close()
            raise RuntimeError(f"{desc}: {item!r} failed after {attempt + 1} attempts: {error}")
        failures.append(failure)
        on_give_up(failure)
        bar.update(1)

    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < window:
            try:
                submit(next(pending), 0)
            except StopIteration:
                exhausted = True
        if not running:
            break
        wait_s = 1.0 if timeout_s else None
        done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
        for ref in done:
            item, attempt, _ = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # task raised, worker died, or was cancelled
                retry_or_give_up(item, attempt, f"{type(exc).__name__}: {exc}"[:2000])
                continue
            if on_result is not None:
                on_result(item, result)
            bar.update(1)
        if timeout_s:
            now = time.monotonic()
            for ref, (item, attempt, started) in list(running.items()):
                if now - started > timeout_s:
                    running.pop(ref)
                    ray.cancel(ref, force=True)
                    retry_or_give_up(item, attempt, f"timeout after {timeout_s:.0f}s")
    bar.close()
    return failures
