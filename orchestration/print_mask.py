"""Print a DALL-E prior attention mask as rows of 0/1 (one row per query, one column per key).

    python orchestration/print_mask.py --kind row --text-len 6 --grid 4
    python orchestration/print_mask.py --kind conv --text-len 6 --grid 4 --kernel 3

The masks themselves (paper Fig. 11): training/masks.py.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.masks import KINDS, dense_mask, format_mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--text-len", type=int, default=6)
    parser.add_argument("--grid", type=str, default="4", help="G for a G×G grid, or HxW")
    parser.add_argument("--kernel", type=int, default=11, help="conv window size K (odd)")
    args = parser.parse_args(argv)
    h, _, w = args.grid.lower().partition("x")
    grid_h, grid_w = int(h), int(w or h)
    print(format_mask(dense_mask(args.kind, args.text_len, grid_h, grid_w, args.kernel)))


if __name__ == "__main__":
    main()
