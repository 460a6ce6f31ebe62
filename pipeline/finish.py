"""Phase 6 of build_dataset: the filter report, the manifest and the build's MLflow metrics.

Everything comes from what the tasks of phases 1-5 returned (pipeline.build._run_phases): no Ray and
no read of the output files, so that Ray can be shutting down meanwhile, and so that the end of a
250M-row build is not tens of thousands of serial object-store reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from common import config as config_lib
from common import storage
from pipeline.config import BuildConfig
from pipeline.input_lock import package_versions
from pipeline.layout import Layout
from pipeline.report import merge, report_from_summary, summary_text, write_report_files


def report_and_manifest(cfg: BuildConfig, layout: Layout, digest: str, results: dict[str, Any]) -> dict[str, Any]:
    """6. The filter report and manifest, from what the tasks returned (no Ray, no output file read)."""
    import mlflow

    kept_dir = "candidates" if cfg.captions_only else "shards"
    report = report_from_summary(merge(results["summaries"], cfg.run.examples_per_reason), results["input_by_source"])
    timings, metrics, shards = results["timings"], results["rates"], results["shards"]
    report["timings_s"] = timings
    report["phases"] = results["phases"]
    if not cfg.captions_only:
        report["download_lists"] = results["download_lists"]
    report["rates"] = metrics
    artifacts = write_report_files(layout, report)
    manifest = {
        "format": "dalle-dataset/1",
        "mode": "captions_only" if cfg.captions_only else "full",
        "config": config_lib.to_dict(cfg),
        "config_hash": digest,
        "versions": package_versions(),
        "shards_dir": kept_dir,
        "shards": shards,
        "counts": {k: report[k] for k in ("input", "kept", "rejected", "rejected_by_reason", "by_source")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    mlflow.log_metrics(
        {
            "input": report["input"],
            "kept": report["kept"],
            "rejected": report["rejected"],
            "kept_fraction": report["kept_fraction"],
            **metrics,
            **{f"rejected.{r}": n for r, n in report["rejected_by_reason"].items()},
            **{f"phase_seconds.{k}": v for k, v in timings.items()},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:  # MLflow logs local files; the root may be s3://
        for path in artifacts:
            local = os.path.join(tmp, path.rsplit("/", 1)[-1])
            with open(local, "wb") as fh:
                fh.write(storage.read_bytes(path))
            mlflow.log_artifact(local, artifact_path="report")
    if not report["accounted"]:
        raise RuntimeError("kept + rejected != input: " + json.dumps(report["by_source"]))
    storage.write_json_atomic(layout.captions_manifest if cfg.captions_only else layout.manifest, manifest)
    print(summary_text(report))
    return report
