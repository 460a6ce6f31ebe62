"""Run many Ray tasks with a bounded window, a deadline per task, and retries.

Why not plain `ray.get([f.remote(x) for x in items])`: at 250M pairs there are tens of thousands of
shards. Submitting them all at once grows the driver and object store without bound, one stuck shard
(a server dripping bytes) would hang the whole job, and Ray's own `max_retries` does not retry a
task that is merely slow. Here at most `max_in_flight` tasks run, each has a wall-clock deadline
after which it is force-cancelled and resubmitted, and a task that fails `retries + 1` times is
handed to `on_give_up` instead of failing the build.

The deadline counts from when the task STARTS running, not from submission: a list that waited in
the queue for half its window must not be killed while healthy. Each attempt reports its start to
a tiny actor (`_StartClock`, one per call, 0 CPUs) that the driver polls once a second.

Each attempt has its own token (`current_attempt()` inside the task). `ray.cancel(force=True)` is
asynchronous, so a cancelled attempt may still be writing while its retry runs: a task that writes
must write under attempt-scoped names and let the driver accept exactly one attempt's result.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


@dataclass
class TaskFailure:
    item: Any
    attempts: int
    error: str


_CURRENT_ATTEMPT = ""
PEAK_RSS_ENV = "DALLE_TASK_PEAK_RSS"  # 1: each task resets and reports its own peak RSS


def current_attempt() -> str:
    """The token of the attempt running in this worker ('' outside run_tasks)."""
    return _CURRENT_ATTEMPT


def _attempt(fn: Callable[..., Any], clock: Any, token: str, item: Any, *args: Any) -> Any:
    """Runs inside the Ray task: report the start, expose the token, run the work."""
    global _CURRENT_ATTEMPT
    if clock is not None:
        clock.start.remote(token)  # fire and forget: the driver's deadline starts now
    _CURRENT_ATTEMPT = token
    start_rss = _reset_peak_rss()
    cpu = time.process_time()
    try:
        result = fn(item, *args)
    finally:
        _CURRENT_ATTEMPT = ""
    if isinstance(result, dict):  # per-phase telemetry: where it ran, its CPU seconds, its peak RSS (KiB on Linux)
        import resource

        import ray

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            **result,
            "node": ray.get_runtime_context().get_node_id(),
            "cpu_s": round(time.process_time() - cpu, 3),  # the worker process's CPU time: immune to a busy box
            "rss_mb": round(peak, 1),
            "rss_start_mb": round(start_rss, 1),  # what the reused worker held when the task started
        }
    return result


def _reset_peak_rss() -> float:
    """Start the worker's peak-RSS counter afresh, so that rss_mb is the peak of THIS task (the worker's
    resident baseline included), not the largest task the reused worker ever ran. Linux resets the
    high-water mark (VmHWM, which ru_maxrss reports) on writing 5 to /proc/self/clear_refs; elsewhere
    the value stays the worker's lifetime peak, an upper bound. Returns the RSS now, in MiB (0 if unknown).

    Opt-in (DALLE_TASK_PEAK_RSS=1 in the workers' environment, as bench/bench_scale.py sets it): with it
    on, tests/test_build_recovery.py's rerun saw its download attempts die, for a reason not yet found,
    so a build does not pay for a measurement only the scale bench needs."""
    if os.environ.get(PEAK_RSS_ENV) != "1":
        return 0.0
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def phase_stats(tasks: int) -> dict[str, Any]:
    """A phase's telemetry, summed by add_task_stats over its task results (report["phases"])."""
    return {"seconds": 0.0, "tasks": tasks, "files_read": 0, "cpu_s": 0.0, "peak_task_rss_mb": 0.0,
            "peak_task_growth_mb": 0.0}  # fmt: skip


def add_task_stats(seen: dict[str, Any], result: dict[str, Any]) -> None:
    """Add one task's result: files it read, CPU seconds, peak RSS, and growth (the peak less the RSS the
    reused worker held when the task started). A skipped task (its output existed) adds nothing."""
    if result.get("skipped"):
        return
    seen["files_read"] += int(result.get("files_read", 0))
    seen["cpu_s"] += float(result.get("cpu_s", 0.0))
    rss = float(result.get("rss_mb", 0.0))
    seen["peak_task_rss_mb"] = max(seen["peak_task_rss_mb"], rss)
    seen["peak_task_growth_mb"] = max(seen["peak_task_growth_mb"], rss - float(result.get("rss_start_mb", rss)))


class _StartClock:
    """Start times of running attempts, on one clock (the actor's), so node clock skew cannot matter."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def start(self, token: str) -> None:
        self.started[token] = time.monotonic()

    def ages(self, running: list[str]) -> dict[str, float]:
        """Seconds since each running attempt started (absent: not started yet); forgets the others."""
        now = time.monotonic()
        self.started = {t: s for t, s in self.started.items() if t in set(running)}
        return {t: now - s for t, s in self.started.items()}


def default_in_flight() -> int:
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    args: tuple = (),
    options: dict[str, Any] | None = None,
    max_in_flight: int = 0,
    timeout_s: float | None = None,
    retries: int = 0,
    fatal: tuple[type[BaseException], ...] = (),
    on_result: Callable[[Any, Any], None] | None = None,
    on_give_up: Callable[[TaskFailure], Any] | None = None,
    desc: str = "tasks",
    total: int | None = None,
) -> list[TaskFailure]:
    """Call `fn(item, *args)` in a Ray task (`options` for ray.remote) for every item; return the
    items that were given up on.

    `on_result(item, result)` runs in the driver for each success, in completion order; a result of
    a superseded attempt (cancelled, then retried) never reaches it.
    An exception of a `fatal` type is not retried: it raises at once (e.g. an unreadable input file).
    Without `on_give_up`, a task that exhausts its retries raises RuntimeError (a bug, not bad input).
    """
    import ray
    from tqdm import tqdm

    remote = ray.remote(**{"num_cpus": 1, "max_retries": 0, **(options or {})})(_attempt)
    clock = ray.remote(num_cpus=0)(_StartClock).remote() if timeout_s else None
    window = max_in_flight or default_in_flight()
    pending = iter(items)
    running: dict[Any, tuple[Any, int, str]] = {}  # ref -> (item, attempt, token)
    failures: list[TaskFailure] = []
    bar = tqdm(total=total, desc=desc, unit="task", mininterval=2.0, dynamic_ncols=True)

    def submit(item: Any, attempt: int) -> None:
        token = f"a{attempt}-{uuid.uuid4().hex[:12]}"
        running[remote.remote(fn, clock, token, item, *args)] = (item, attempt, token)

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
            except fatal as exc:
                bar.close()
                raise RuntimeError(f"{desc}: {item!r} failed: {exc}") from exc
            except Exception as exc:  # task raised, worker died, or was cancelled
                retry_or_give_up(item, attempt, f"{type(exc).__name__}: {exc}"[:2000])
                continue
            if on_result is not None:
                on_result(item, result)
            bar.update(1)
        if timeout_s and running:
            ages = ray.get(clock.ages.remote([token for _, _, token in running.values()]))
            for ref, (item, attempt, token) in list(running.items()):
                if ages.get(token, 0.0) > timeout_s:
                    running.pop(ref)
                    ray.cancel(ref, force=True)
                    retry_or_give_up(item, attempt, f"timeout after {timeout_s:.0f}s of running")
    bar.close()
    if clock is not None:
        ray.kill(clock)
    return failures
