"""The demo's stage 2 in one job: train the small dVAE (or reuse WORK/dvae_demo.pt), train the BPE
tokenizer, encode the tokens.

    ray job submit --working-dir . -- python orchestration/demo_stage2.py --dataset DATASET --work WORK

Extra `--field value` arguments override the dVAE training config (configs/dvae_demo.toml).
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenize_images.stage2_demo import run_stage2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument(
        "--dvae", default="", help="dVAE checkpoint path; reused when it exists (default WORK/dvae_demo.pt)"
    )
    args, rest = ap.parse_known_args(argv)
    out = run_stage2(args.dataset, args.work, args.dvae, overrides=rest)
    run = out["manifest"]["run"]
    print(f"dVAE {'reused' if out['dvae']['reused'] else 'trained'}: {out['dvae']['checkpoint']}")
    print(
        f"tokenizer: {out['tokenizer']['vocab_size']} tokens; encoded {run['encoded']} images "
        f"({run['rejected']} rejected) at {run['images_per_s']:.1f} images/s -> {out['tokens']}"
    )


if __name__ == "__main__":
    main()
