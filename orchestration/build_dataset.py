"""Stage 1 entry point: scrape and filter image-text pairs on Ray.

    ray job submit --working-dir . -- python orchestration/build_dataset.py --config configs/demo.toml
    python orchestration/build_dataset.py --source laion:'s3://bucket/laion/*.parquet' --output s3://bucket/ds

Connects to the cluster in RAY_ADDRESS (set by `ray job submit`) or --run.ray_address; otherwise it
starts a private local Ray. All logic lives in pipeline.build; see --help for every config field.
"""

import gc
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import Flag, parse_cli
from common.tracking import ui_command
from pipeline.build import build
from pipeline.config import BuildConfig

FLAGS = [
    Flag("--source", "sources", "FORMAT:PATH_OR_GLOB input (repeatable)", kind="append"),
    Flag("--output", "output", "dataset root, local or s3://"),
    Flag("--captions-only", "captions_only", "run only the caption filters; write kept and rejected rows", kind="true"),
    Flag(
        "--allow-private-networks",
        "download.allow_private_networks",
        "allow URLs resolving to loopback/private/link-local addresses (demo, tests)",
        kind="true",
    ),
]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cfg = parse_cli(BuildConfig, argv, description=__doc__, flags=FLAGS)
    build(cfg)
    print(f"\nFilter report: {cfg.output}/report/filter_report.json\nOpen MLflow: {ui_command()}")
    gc.freeze()  # the heap is garbage-collected once more at exit: ~1 s with MLflow and Ray loaded, for nothing


if __name__ == "__main__":
    main()
