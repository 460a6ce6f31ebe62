"""The demo's local HTTP server (127.0.0.1 only), in the foreground until Ctrl-C or SIGTERM.

    python orchestration/demo_server.py --root DIR --port 0 --port-file F

Routes and why it is not `python -m http.server`: pipeline/demo/server.py.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.demo.server import serve_until_stopped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="directory to serve")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--port-file", default="", help="write the bound port here (atomically) once listening")
    args = parser.parse_args(argv)
    serve_until_stopped(args.root, args.port, args.port_file)


if __name__ == "__main__":
    main()
