"""Write the demo source: synthetic captioned shapes plus rows that every filter must reject.

    python orchestration/demo_source.py --out DIR --base-url http://127.0.0.1:PORT --n 200

What it writes (images, URL lists, expected.json): pipeline/demo/source.py.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.demo.source import write_demo_source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base-url", required=True, help="the demo server, e.g. http://127.0.0.1:8765")
    parser.add_argument("--n", type=int, default=200, help="good (kept) synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=20_000_000, help="download.max_bytes of the build")
    parser.add_argument("--no-hostile", action="store_true", help="good rows only")
    args = parser.parse_args(argv)
    src = write_demo_source(args.out, args.base_url, args.n, args.seed, args.max_bytes, hostile=not args.no_hostile)
    print(json.dumps({"sources": src.sources, "www": src.www_dir, "expected_counts": src.expected_counts}, indent=1))


if __name__ == "__main__":
    main()
