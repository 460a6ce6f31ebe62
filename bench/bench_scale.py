"""How build_dataset grows with the input: 1M, 2M and 4M rows, every phase but the network download,
and an extrapolation to 250M pairs from the measured growth (not from assumptions).

    python bench/bench_scale.py                     # 1M, 2M, 4M rows (tens of minutes on 2 CPUs)
    python bench/bench_scale.py --sizes 100000 200000 400000   # a quick look
    nice -n 15 python bench/bench_scale.py          # on a shared machine

Input: real LAION captions (shared/data/laion_sample_1000.parquet) repeated with distinct URLs
(2% repeat an earlier URL, so duplicate_url has work), in a realistic layout: FILES large parquet
files of 10k-row groups, which the caption phase cuts into splits (reader.split_rows).

The caption filters run the default language rule (lexicon, with fastText where it can change the
outcome) unless --band picks the langdetect rule: ~20x slower (docs/filters.md), 4M rows take hours.

Phases measured: captions and URL dedup run through build_dataset itself (--captions-only, a
private Ray instance of --cpus CPUs); then image dedup and finalize run the real pipeline tasks on
the download lists, fed by a LOCAL FAKE DOWNLOADER (no network): each candidate becomes a 64x64
JPEG with its real sha256, its own image for ~98% of rows (the URL in a JPEG comment) and one of 256
shared images for ~2% (so duplicate_image has work, at about a web crawl's rate), written as the
download attempt files and committed exactly as download_task's results are.

One private Ray instance (its own temp dir, started with retries: Ray gives its raylet a fixed 30 s
to register, which a loaded machine can miss) serves every size; each size's files are deleted once
measured. Per phase it prints wall time, tasks, files written, files opened (summed over tasks) and
the peak RSS of a task (the largest over the phase's tasks; pipeline.tasks resets the worker's
high-water mark at each task's start, so this is the task's own peak, the worker's baseline
included), its tasks' CPU seconds, and the load average of the machine while the size ran. The
extrapolation (see `extrapolate`) reports, for 250M rows: tasks, files written and opened, memory
per task, and core- and node-hours at 32 cores per node from the CPU seconds the tasks measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "laion_sample_1000.parquet"
TARGET = 250_000_000


def synthesise(out_dir: str, rows: int, files: int) -> str:
    captions = pq.read_table(SAMPLE, columns=["TEXT"]).column("TEXT").to_pylist()
    os.makedirs(out_dir, exist_ok=True)
    per = -(-rows // files)
    for f in range(files):
        lo, hi = f * per, min(rows, (f + 1) * per)
        idx = range(lo, hi)
        urls = [f"http://img.example/{(i - 1000) if i % 50 == 49 else i}.jpg" for i in idx]  # 2% repeats
        table = pa.table({"URL": urls, "TEXT": [captions[i % len(captions)] for i in idx]})
        pq.write_table(table, os.path.join(out_dir, f"part-{f:03d}.parquet"), row_group_size=10_000)
    return f"laion:{out_dir}/*.parquet"


def fake_download_task(name: str, cfg) -> dict:
    """The local fake downloader: a tiny real JPEG per candidate, written and summarised as the real
    download_task writes its attempt files (pipeline.download_phase)."""
    import hashlib

    from PIL import Image

    from common import schemas, storage
    from pipeline.download_phase import _write_attempt
    from pipeline.layout import Layout
    from pipeline.report import summarize
    from pipeline.tasks import current_attempt

    layout = Layout(cfg.output)
    rows = storage.read_parquet(layout.candidates(name))
    images = []
    for i in range(256):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (i, 255 - i, 128)).save(buf, "JPEG", quality=80)
        images.append(buf.getvalue())
    urls = rows.column("url").to_pylist()
    # ~2% of the images repeat one of 256 (duplicate_image has work, at the rate of a web crawl); every other
    # row gets its own image: the base JPEG with the URL in a COM segment, so its sha256 is its own
    digests = [hashlib.blake2b(u.encode(), digest_size=4).digest() for u in urls]
    data = [
        images[d[1]] if d[0] < 5 else images[d[1]][:2] + b"\xff\xfe" + (len(u) + 2).to_bytes(2, "big") + u.encode()
        + images[d[1]][2:]
        for u, d in zip(urls, digests, strict=True)
    ]  # fmt: skip
    n = rows.num_rows
    kept = (
        pa.table(
            {
                **{c: rows.column(c) for c in ("key", "url", "caption", "source")},
                "image": pa.array(data, pa.binary()),
                "width": pa.array([64] * n, pa.int32()),
                "height": pa.array([64] * n, pa.int32()),
                "original_width": pa.array([640] * n, pa.int32()),
                "original_height": pa.array([480] * n, pa.int32()),
                "sha256": pa.array([hashlib.sha256(d).hexdigest() for d in data], pa.string()),
            }
        )
        .select(schemas.DATASET_SHARD.names)
        .cast(schemas.DATASET_SHARD)
    )
    token = current_attempt()
    _write_attempt(layout, cfg, name, token, kept, schemas.empty(schemas.REJECTED))
    return {"name": name, "attempt": token, "input": n, "kept": n, "bytes": sum(map(len, data)),
            "summary": summarize(None, None, 0, ("width", "height"))}  # fmt: skip


def run_size(rows: int, files: int, cpus: int, work: str, band: bool) -> dict:
    """One size, on the Ray instance main() started (build() finds it running and leaves it up)."""
    import shutil

    from common import storage
    from common.config import from_dict
    from pipeline.build import build
    from pipeline.config import BuildConfig
    from pipeline.dedup import image_dedup_task, plan_ranges, task_memory
    from pipeline.download_phase import commit_list, finalize_task
    from pipeline.layout import Layout
    from pipeline.tasks import add_task_stats, phase_stats, run_tasks

    load_before = os.getloadavg()[0]
    t = time.monotonic()
    source = synthesise(os.path.join(work, f"in-{rows}"), rows, files)
    synth_s = time.monotonic() - t
    out = os.path.join(work, f"out-{rows}")
    captions = {"language_id": "langdetect"} if band else {}  # default: the lexicon rule (docs/filters.md)
    cfg = from_dict(BuildConfig, {"sources": [source], "output": out, "captions_only": True, "captions": captions,
                                  "run": {"num_cpus": cpus, "dedup_partitions": 1024}})  # fmt: skip
    t0 = time.monotonic()
    report = build(cfg)  # captions + URL dedup + report, through build_dataset itself
    wall = time.monotonic() - t0
    layout = Layout(out)
    phases = {name: dict(p) for name, p in report["phases"].items()}
    phases["captions"]["files_written"] = len(storage.listdir(layout.path("_work", "captions"), ".parquet")) + sum(
        1 for p in storage.listdir(layout.path("rejected")) if "/captions-" in p
    )
    lists = [p.rsplit("/", 1)[-1][: -len(".parquet")] for p in storage.listdir(layout.path("candidates"), ".parquet")]
    phases["url dedup"]["files_written"] = len(lists) + phases["url dedup"]["tasks"] * 2

    # image side: fake downloads, then the real image dedup and finalize tasks
    full = from_dict(BuildConfig, {**json.loads(json.dumps(_plain(cfg))), "captions_only": False})
    committed = {}
    t = time.monotonic()
    run_tasks(fake_download_task, lists, args=(full,), on_result=lambda _, s: committed.__setitem__(s["name"], s))
    for s in committed.values():
        commit_list(layout, s)
    fake_s = time.monotonic() - t
    hashes = [layout.attempt(n, committed[n]["attempt"], "hashes") for n in lists]
    images = sum(s["kept"] for s in committed.values())
    ranges = plan_ranges(images, full.run.dedup_partitions, full.run.dedup_rows_per_task)
    for name, fn, items, args, opts in (
        ("image dedup", image_dedup_task, ranges, (full, hashes), {"memory": task_memory(images, len(ranges))}),
        ("finalize", finalize_task, lists, (full, [lo for lo, _ in ranges]), {}),
    ):
        seen = phases[name] = phase_stats(len(items))  # what build() records for its own phases
        t = time.monotonic()
        run_tasks(fn, items, args=args, options=opts, on_result=lambda _, r, seen=seen: add_task_stats(seen, r))
        seen["seconds"] = time.monotonic() - t
    phases["image dedup"]["files_written"] = len(ranges)
    phases["finalize"]["files_written"] = len(storage.listdir(layout.path("shards"), ".parquet")) + 2 * len(lists)
    shutil.rmtree(os.path.join(work, f"in-{rows}"), ignore_errors=True)  # GBs at 4M rows: keep the disk free
    shutil.rmtree(out, ignore_errors=True)
    return {"rows": rows, "kept_captions": report["kept"], "wall_captions_only_s": wall, "fake_download_s": fake_s,
            "synthesise_s": synth_s, "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "phases": phases}  # fmt: skip


def _plain(cfg):
    from common import config as config_lib

    return config_lib.to_dict(cfg)


# What bounds one task's work and memory, per phase (how each is carried to 250M rows):
#   "split":  a fixed input (one caption split, one download list): per row constant
#   "range":  a dedup range, at most run.dedup_rows_per_task rows: per row constant, memory bounded
#   "list+N": one list plus what every task of the phase reads whatever its list (finalize: the footers
#             of the image-dedup range files, which grow with the duplicates of the whole build)
DRIVERS = {"captions": "split", "url dedup": "range", "image dedup": "range", "finalize": "list+N"}


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x through the measured points."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if n > 1 and sxx else 0.0
    return my - b * mx, b


def extrapolate(results: list[dict], split_rows: int, rows_per_task: int, partitions: int) -> dict:
    """250M rows from the measured sizes.

    CPU: each task reports its worker's CPU seconds (pipeline.tasks), which a busy shared machine does
    not inflate as it does wall time. Per input row, a phase's CPU seconds are fitted as a line in the
    build size N (least squares over every size): `flat` carries the largest size's CPU per row to
    250M rows; `fit` carries the line, so a per-task cost that grows with N (finalize) shows there.
    Memory per task: the worker's baseline at the largest size plus the task's own growth, carried
    as is for a split, scaled to dedup_rows_per_task rows for a dedup range, and along its line in N
    (least squares, never below the measured) for finalize.
    Counts (tasks, files written and opened): the plan formulas the build itself uses, with the kept
    fraction measured here (files opened by a dedup phase are reducers x mapper files: no line)."""
    b = results[-1]
    keep_captions = b["kept_captions"] / b["rows"]
    captions_tasks = -(-TARGET // split_rows)
    kept = int(TARGET * keep_captions)
    lists = -(-kept // 10_000)
    url_tasks = min(partitions, -(-kept // rows_per_task))
    image_tasks = min(partitions, -(-kept // rows_per_task))  # ~all images kept by the fake downloader
    plan = {
        "captions": {"tasks": captions_tasks, "files_written": 3 * captions_tasks, "files_read": captions_tasks},
        "url dedup": {"tasks": url_tasks, "files_written": lists + 2 * url_tasks,
                      "files_read": url_tasks * captions_tasks},
        "image dedup": {"tasks": image_tasks, "files_written": image_tasks, "files_read": image_tasks * lists},
        "finalize": {"tasks": lists, "files_written": 4 * lists, "files_read": lists * (3 + image_tasks)},
    }  # fmt: skip
    out = {}
    sizes = [r["rows"] for r in results]
    for name in b["phases"]:
        per_row = [r["phases"][name]["cpu_s"] / r["rows"] for r in results]
        a0, slope = _fit(sizes, per_row)
        fitted = per_row[-1] if slope <= 0 else max(per_row[-1], a0 + slope * TARGET)
        # only finalize has a cost that grows with N by design; elsewhere a slope is the machine's noise,
        # which 60x extrapolation would blow up: the largest size's CPU per row carries to 250M
        hours = (fitted if DRIVERS[name] == "list+N" else per_row[-1]) * TARGET / 3600
        # memory: the worker's baseline (what it held when the task started) plus the task's own growth,
        # carried to 250M by what bounds the task
        peak, growth = b["phases"][name]["peak_task_rss_mb"], b["phases"][name]["peak_task_growth_mb"]
        if DRIVERS[name] == "range":  # rows per task at 250M: the cap; measured: the largest size's
            measured_rows = b["kept_captions"] / b["phases"][name]["tasks"]
            grown = growth * max(1.0, min(rows_per_task, kept / plan[name]["tasks"]) / measured_rows)
        elif DRIVERS[name] == "list+N":
            g0, g1 = _fit(sizes, [r["phases"][name]["peak_task_growth_mb"] for r in results])
            grown = max(growth, g0 + max(0.0, g1) * TARGET)
        else:
            grown = growth
        rss = peak - growth + grown
        out[name] = {
            **plan[name],
            "driver": DRIVERS[name],
            "cpu_per_row_us": [round(x * 1e6, 2) for x in per_row],
            "core_hours_flat": per_row[-1] * TARGET / 3600,
            "core_hours_fit": fitted * TARGET / 3600,
            "core_hours": hours,
            "peak_task_rss_mb": peak,
            "rss_250m_mb": rss,
        }
    return out


def _print_size(r: dict) -> None:
    print(f"\n== {r['rows']:,} rows (captions-only build {r['wall_captions_only_s']:.0f} s, fake downloads "
          f"{r['fake_download_s']:.0f} s, synthesis {r['synthesise_s']:.0f} s; load average "
          f"{r['load'][0]} -> {r['load'][1]}) ==")  # fmt: skip
    print(f"{'phase':<12}{'wall s':>9}{'CPU s':>9}{'tasks':>8}{'written':>9}{'opened':>9}{'peak RSS/task MB':>18}"
          f"{'of which the task':>19}")  # fmt: skip
    for name, p in r["phases"].items():
        print(f"{name:<12}{p['seconds']:>9.1f}{p['cpu_s']:>9.1f}{p['tasks']:>8}{p.get('files_written', 0):>9}"
              f"{p.get('files_read', 0):>9}{p['peak_task_rss_mb']:>18.0f}{p['peak_task_growth_mb']:>19.0f}",
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    ap.add_argument("--files", type=int, default=4, help="input parquet files (a few large ones)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20_000, help="rows of an unmeasured first build (0: none)")
    ap.add_argument(
        "--band", action="store_true", help="the langdetect rule instead of the default lexicon rule (~20x slower)"
    )
    args = ap.parse_args()
    if not SAMPLE.exists():
        sys.exit(f"missing {SAMPLE}: the real LAION caption sample")
    import ray

    from common.ray_cluster import init_ray
    from pipeline.tasks import PEAK_RSS_ENV

    os.environ.pop("RAY_ADDRESS", None)  # a private instance, never someone else's cluster
    with tempfile.TemporaryDirectory(
        prefix="bscale-", ignore_cleanup_errors=True
    ) as work:  # short: Ray's socket paths live under it
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
        env = {PEAK_RSS_ENV: "1"}  # every task reports its own peak RSS (pipeline.tasks)
        init_ray(num_cpus=args.cpus, env=env, temp_dir=os.path.join(work, "ray"), start_attempts=3)
        results = []
        try:
            if args.warmup:  # workers start and load the language model here, not inside the first size
                run_size(args.warmup, args.files, args.cpus, work, args.band)
            for rows in args.sizes:
                r = run_size(rows, args.files, args.cpus, work, args.band)
                results.append(r)
                _print_size(r)
        finally:
            ray.shutdown()
    ext = extrapolate(results, 50_000, 2_000_000, 1024)
    sizes = " / ".join(f"{r['rows']:,}" for r in results)
    print(f"\n== extrapolated to {TARGET:,} rows from {sizes} rows (CPU seconds the tasks measured) ==")
    print(f"{'phase':<12}{'CPU us/row':>22}{'core-h':>8}{'node-h @32':>11}{'(fit)':>7}{'tasks':>8}{'written':>9}"
          f"{'opened':>11}{'RSS/task MB':>12}{'at 250M':>9}")  # fmt: skip
    total = 0.0
    for name, e in ext.items():
        total += e["core_hours"]
        print(f"{name:<12}{' / '.join(f'{x:.1f}' for x in e['cpu_per_row_us']):>22}{e['core_hours']:>8.1f}"
              f"{e['core_hours'] / 32:>11.2f}{e['core_hours_fit']:>7.1f}{e['tasks']:>8.0f}{e['files_written']:>9.0f}"
              f"{e['files_read']:>11.0f}{e['peak_task_rss_mb']:>12.0f}{e['rss_250m_mb']:>9.0f}")  # fmt: skip
    print(
        f"all (no download): {total:.1f} core-hours = {total / 32:.2f} node-hours at 32 cores per node "
        "(core-h: the largest size's CPU per row, finalize along its fitted growth; (fit): every phase along "
        "its least-squares line in N)"
    )
    print(f"(language rule: {'langdetect' if args.band else 'lexicon, the default'}; fake downloads keep every image)")
    print(json.dumps({"results": results, "extrapolated": ext}, default=float))


if __name__ == "__main__":
    main()
