"""build_dataset: the phases, in order, each resumable and idempotent.

  1 captions     one task per input split (a compressed stream: one reader fanning chunks out) (caption_phase)
  2 url dedup    one task per URL hash partition: duplicate_url, download lists (dedup)
  --captions-only stops here: candidates/ + rejected/ + report/ + captions_manifest.json
  3 download     one task per list: img2dataset download, resize, image checks  (download_phase)
  4 image dedup  one task per sha256 hash partition: duplicate_image            (dedup)
  5 finalize     one task per list: publish shards/<name>.parquet               (download_phase)
  6 report       filter report + manifest.json, logged to one MLflow run        (finish)

Every task skips work whose output already exists, so rerunning the same command resumes; a
finished build (manifest.json present) is a no-op. A different config on the same root is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import config as config_lib
from common import storage, tracking
from common.ray_cluster import init_ray, stop_ray
from pipeline.caption_phase import InputFile, caption_parts, caption_task
from pipeline.config import BuildConfig
from pipeline.dedup import image_dedup_task, plan_ranges, task_memory, url_dedup_task
from pipeline.download_phase import (
    commit_list,
    committed_lists,
    download_task,
    finalize_task,
    give_up_on_list,
    lists_status,
    record_failed_list,
)
from pipeline.finish import report_and_manifest
from pipeline.input_lock import lock_inputs
from pipeline.layout import Layout
from pipeline.readers.errors import InputUnreadable
from pipeline.splits import plan_splits
from pipeline.tasks import add_task_stats, phase_stats, run_tasks

log = logging.getLogger(__name__)

# Fields that change how a build runs but not what it produces; they may differ between resumes.
NON_RESULT_FIELDS = (
    "output",
    "captions_only",
    "run.ray_address",
    "run.num_cpus",
    "run.max_in_flight",
    "run.experiment",
    "run.shard_timeout_s",
    "run.read_backoff_s",
    "run.accept_failed_lists",
    "run.examples_per_reason",
    "download.thread_count",
    "download.max_per_host",
    "download.contact_url",
)


class ConfigMismatch(RuntimeError):
    pass


def config_hash(cfg: BuildConfig) -> str:
    flat = {k: v for k, v in config_lib.flatten(cfg).items() if k not in NON_RESULT_FIELDS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lock_config(layout: Layout, cfg: BuildConfig) -> str:
    """Refuse to mix two configs in one root: the first run records its config hash."""
    digest = config_hash(cfg)
    if storage.exists(layout.config_lock):
        locked = storage.read_json(layout.config_lock)
        if locked["config_hash"] != digest:
            now = config_lib.flatten(cfg)
            diffs = sorted(
                k
                for k, v in locked["config"].items()
                if k not in NON_RESULT_FIELDS and json.dumps(now.get(k), default=str) != json.dumps(v, default=str)
            )
            raise ConfigMismatch(
                f"{layout.root} was built with a different config (changed: {', '.join(diffs)}). "
                "Use a new --output root for the new config, or rerun with the original one."
            )
        return digest
    storage.write_json_atomic(layout.config_lock, {"config_hash": digest, "config": config_lib.flatten(cfg)})
    return digest


def source_names(cfg: BuildConfig) -> list[str]:
    """The name each --source is counted under: its format, or FORMAT:N when a format repeats."""
    formats = [spec.split(":", 1)[0] for spec in cfg.sources]
    names, seen = [], {}
    for fmt in formats:
        names.append(fmt if formats.count(fmt) == 1 else f"{fmt}:{seen.get(fmt, 0)}")
        seen[fmt] = seen.get(fmt, 0) + 1
    return names


def plan_inputs(cfg: BuildConfig) -> list[InputFile]:
    from pipeline.readers import open_source

    files: list[InputFile] = []
    for i, (spec, name) in enumerate(zip(cfg.sources, source_names(cfg), strict=True)):
        fmt, paths, _ = open_source(spec, cfg.reader)
        for j, path in enumerate(paths):
            splits = plan_splits(fmt, path, cfg.reader)
            for k, split in enumerate(splits):
                suffix = f"-s{k:05d}" if len(splits) > 1 else ""
                files.append(InputFile(f"{i:03d}-{j:06d}{suffix}", name, fmt, path, split))
    return files


class _Progress:
    """Throttled MLflow metrics while a phase runs, so the UI shows a live build."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.last, self.step = every_s, 0.0, 0

    def __call__(self, metrics: dict[str, float], force: bool = False) -> None:
        import mlflow

        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.step += 1
            mlflow.log_metrics(metrics, step=self.step)
            self.last = now


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run (or resume) a build. Returns the filter report."""
    if not cfg.sources:
        raise ValueError("no --source given")
    if not cfg.output:
        raise ValueError("no --output given")
    layout = Layout(cfg.output)
    final_manifest = layout.captions_manifest if cfg.captions_only else layout.manifest
    if storage.exists(final_manifest):
        manifest = storage.read_json(final_manifest)
        if manifest["config_hash"] != config_hash(cfg):
            lock_config(layout, cfg)  # raises with the list of changed fields
        print(f"{layout.root} is already complete; nothing to do.")
        return storage.read_json(layout.report("filter_report.json"))
    storage.clean_temp(cfg.output)
    digest = lock_config(layout, cfg)
    files = plan_inputs(cfg)
    inputs = lock_inputs(layout, cfg, files)  # refuses a rerun on a different input set or versions
    run_name = f"build-{digest[:8]}-{cfg.output.rstrip('/').rsplit('/', 1)[-1]}"
    with ThreadPoolExecutor(2, thread_name_prefix="set-up") as pool:
        # MLflow's import, store set-up (seconds; a new sqlite store migrates its schema) and the run's
        # params and inputs overlap Ray's start-up
        found = pool.submit(_open_run, cfg, run_name, digest, inputs["files"])
        pool.submit(_preload_driver_modules)  # the same way: the driver mostly waits for Ray's processes here
        try:
            owns_ray = init_ray(cfg.run.ray_address or None, cfg.run.num_cpus or None, start_attempts=3)
        except BaseException:
            _fail_run(found)  # the run the set-up thread opened must not stay RUNNING forever
            raise
        import mlflow
        import ray

        try:
            experiment_id, run_id = found.result()
        except BaseException:
            if owns_ray:
                stop_ray()
            raise
    mlflow.start_run(run_id=run_id, experiment_id=experiment_id)
    stopping: threading.Thread | None = None
    try:
        results = _run_phases(cfg, layout, digest, files, ray, _Progress())
        if owns_ray:  # the report needs no Ray: its processes wind down (about a second) while it is written
            stopping = threading.Thread(target=stop_ray, name="ray-shutdown")
            stopping.start()
        report = report_and_manifest(cfg, layout, digest, results)
        if not cfg.captions_only:  # the dataset encode_tokens and train_dvae read: same name and digest there
            tracking.log_dataset(
                mlflow.active_run().info.run_id, cfg.output, "output", tracking.dataset_digest(cfg.output)
            )
        mlflow.end_run("FINISHED")
        return report
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    finally:
        if stopping is not None:
            stopping.join()
        elif owns_ray:
            stop_ray()


def _open_run(cfg: BuildConfig, run_name: str, digest: str, described: list[dict[str, Any]]) -> tuple[str, str]:
    """The build's MLflow run (reopened on resume) with its tags, config params and sources logged."""
    tags = {"stage": "build_dataset", "output": cfg.output, "config_hash": digest}
    experiment_id, run_id, _ = tracking.open_run(cfg.run.experiment, run_name, config_lib.flatten(cfg), tags)
    log_sources(run_id, cfg, described)
    return experiment_id, run_id


def _fail_run(found: Any) -> None:
    """Mark the run opened by the set-up thread FAILED (best effort: the caller is already failing)."""
    with contextlib.suppress(Exception):
        _, run_id = found.result()
        tracking.end_run(run_id, "FAILED")


def _preload_driver_modules() -> None:
    """Imports the driver needs later, done while Ray starts: Ray Data, which init_ray configures (0.35 s;
    the build runs no datasets, but trainers in the same process may), and the report's pyplot (0.4 s)."""
    import ray.data  # noqa: F401

    from pipeline.report import pyplot

    pyplot()


def log_sources(run_id: str, cfg: BuildConfig, described: list[dict[str, Any]]) -> None:
    """Each --source as an MLflow dataset input ("source"), its digest from its files' paths, sizes and
    modification times (what the input lock records)."""
    for spec, name in zip(cfg.sources, source_names(cfg), strict=True):
        entries = sorted(json.dumps(f, sort_keys=True) for f in described if f["source"] == name)
        digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
        pattern = spec.partition(":")[2]
        tracking.log_dataset(run_id, pattern, "source", digest, name=f"{name}:{pattern.rstrip('/').rsplit('/', 1)[-1]}")


class FailedLists(RuntimeError):
    """Download lists failed every retry: nothing was published, and a rerun retries them."""


def _run_phases(
    cfg: BuildConfig, layout: Layout, digest: str, files: list[InputFile], ray: Any, progress: _Progress
) -> dict[str, Any]:
    """Phases 1-5 on Ray. Returns what the report needs, as plain data: no object reference outlives it,
    so Ray can be shut down (in another thread) as soon as it returns."""
    P = cfg.run.dedup_partitions
    window = cfg.run.max_in_flight
    timings: dict[str, float] = {}

    phases: dict[str, dict[str, Any]] = {}

    def phase(task: Any, items: Any, args: tuple, desc: str, on_result: Any = None, **kwargs: Any) -> list[Any]:
        """One phase: a task per item, at most `window` in flight, each retried on failure. Records the
        phase's wall time, tasks, files its tasks read, their CPU seconds and the peak RSS of a task
        (report["phases"])."""
        seen = phases[desc] = phase_stats(len(items))

        def record(item: Any, result: Any) -> None:
            add_task_stats(seen, result)
            if on_result is not None:
                on_result(item, result)

        t0 = time.monotonic()
        try:
            return run_tasks(
                task,
                items,
                args=args,
                max_in_flight=window,
                retries=cfg.run.shard_retries,
                desc=desc,
                total=len(items),
                on_result=record,
                **kwargs,
            )
        finally:
            seen["seconds"] = time.monotonic() - t0

    # 1. captions
    caption_stats: list[dict[str, Any]] = []
    fresh_rows = 0
    t0 = time.monotonic()

    def on_caption(_: Any, stats: dict[str, Any]) -> None:
        nonlocal fresh_rows
        caption_stats.append(stats)
        fresh_rows += 0 if stats.get("skipped") else stats["input"]
        progress(
            {
                "progress.caption_files_done": len(caption_stats),
                "progress.input_rows": sum(s["input"] for s in caption_stats),
            }
        )

    phase(caption_task, files, (cfg,), "captions", on_result=on_caption, fatal=(InputUnreadable,))
    timings["captions"] = time.monotonic() - t0
    caption_stats.sort(key=lambda s: s["file_id"])
    input_by_source: dict[str, int] = {}
    for s in caption_stats:
        input_by_source[s["source"]] = input_by_source.get(s["source"], 0) + s["input"]

    # 2. URL dedup -> download lists: one task per range of URL partitions (pipeline.dedup)
    parts_ref = ray.put(caption_parts(layout, caption_stats))
    kept_rows = sum(s["kept"] for s in caption_stats)
    url_ranges = plan_ranges(kept_rows, P, cfg.run.dedup_rows_per_task)
    url_stats: list[dict[str, Any]] = []
    phase(
        url_dedup_task,
        url_ranges,
        (cfg, parts_ref),
        "url dedup",
        options={"memory": task_memory(kept_rows, len(url_ranges))},
        on_result=lambda _, s: url_stats.append(s),
    )
    url_stats.sort(key=lambda s: s["partition"])
    list_rows = {x["name"]: x["rows"] for s in url_stats for x in s["lists"]}
    lists = sorted(list_rows)
    # the report, from task results: what each task wrote, merged in a fixed order (pipeline.report)
    summaries = [s["summary"] for s in caption_stats] + [s["summary"] for s in url_stats]
    metrics: dict[str, float] = {"captions_per_s": fresh_rows / timings["captions"] if fresh_rows else 0.0}

    if not cfg.captions_only:
        # 3. download: lists committed by an earlier run are done; lists that failed are retried
        t0 = time.monotonic()
        committed = committed_lists(layout)
        downloaded = {"rows": 0, "kept": 0, "bytes": 0}

        def on_download(_: Any, stats: dict[str, Any]) -> None:
            commit_list(layout, stats)  # the fence: only this attempt's files will ever be read
            committed[stats["name"]] = stats
            downloaded["rows"] += stats["input"]
            downloaded["kept"] += stats["kept"]
            downloaded["bytes"] += stats["bytes"]
            progress({"progress.images_attempted": downloaded["rows"], "progress.images_kept": downloaded["kept"]})

        todo = [n for n in lists if n not in committed]
        failures = phase(
            download_task,
            todo,
            (cfg,),
            "download",
            options={"scheduling_strategy": "SPREAD"},  # network-bound: spread the bandwidth over nodes
            timeout_s=cfg.run.shard_timeout_s,
            on_result=on_download,
            on_give_up=lambda f: record_failed_list(layout, f.item, f.attempts, f.error),
        )
        if failures and not cfg.run.accept_failed_lists:
            raise FailedLists(
                f"{len(failures)} of {len(lists)} download lists failed after {cfg.run.shard_retries + 1} attempts "
                f"each (first: {failures[0].item}: {failures[0].error[:300]}). Nothing was published. Rerun the same "
                "command to retry them; add --run.accept_failed_lists true to publish without them "
                "(their rows become shard_failed)."
            )
        for failure in failures:
            committed[failure.item] = give_up_on_list(layout, cfg, failure.item, failure.error)
        timings["download"] = time.monotonic() - t0
        metrics["images_per_s"] = downloaded["rows"] / timings["download"] if downloaded["rows"] else 0.0
        metrics["downloaded_bytes_kept"] = downloaded["bytes"]
        # 4. duplicate_image, 5. publish shards
        hashes_ref = ray.put([layout.attempt(n, committed[n]["attempt"], "hashes") for n in lists])
        images = sum(committed[n]["kept"] for n in lists)
        image_ranges = plan_ranges(images, P, cfg.run.dedup_rows_per_task)
        memory = task_memory(images, len(image_ranges))
        phase(image_dedup_task, image_ranges, (cfg, hashes_ref), "image dedup", options={"memory": memory})
        finals: dict[str, dict[str, Any]] = {}
        phase(
            finalize_task,
            lists,
            (cfg, [lo for lo, _ in image_ranges]),
            "finalize",
            on_result=lambda name, s: finals.__setitem__(name, s),
        )
        lists_report = lists_status(layout, committed)
        summaries += [committed[n]["summary"] for n in lists] + [finals[n]["summary"] for n in lists]
        shards = [{"path": f"{n}.parquet", "rows": finals[n]["rows"]} for n in lists if finals[n]["rows"]]
    else:
        summaries += [s["kept_summary"] for s in url_stats]
        shards = [{"path": f"{n}.parquet", "rows": list_rows[n]} for n in lists]

    results: dict[str, Any] = {"summaries": summaries, "input_by_source": input_by_source, "shards": shards}
    results.update(timings=timings, phases=phases, rates=metrics)
    if not cfg.captions_only:
        results["download_lists"] = {"total": len(lists), **lists_report}
    return results
