"""Convert OpenAI's published dVAE pickles into this project's checkpoint (the ONE trusted-pickle load).

    # download once: https://cdn.openai.com/dall-e/encoder.pkl and https://cdn.openai.com/dall-e/decoder.pkl
    python orchestration/import_openai_dvae.py --encoder encoder.pkl --decoder decoder.pkl --output dvae_openai.pt

The pickles are unpickled with torch.load(weights_only=False), which executes code they contain: only
run this on files you downloaded from OpenAI yourself. It needs the `dall_e` package
(pip install --no-deps DALL-E==0.1, plus attrs). The output is a plain tensor checkpoint that
encode_tokens loads with weights_only=True.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenize_images.import_openai import import_openai_pickles


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="encoder.pkl from OpenAI (trusted)")
    parser.add_argument("--decoder", required=True, help="decoder.pkl from OpenAI (trusted)")
    parser.add_argument("--output", required=True, help="checkpoint to write (local or s3://)")
    parser.add_argument("--image_size", type=int, default=256, help="image size the dVAE is used at (256)")
    args = parser.parse_args(argv)
    sha = import_openai_pickles(args.encoder, args.decoder, args.output, args.image_size)
    print(f"wrote {args.output} (dVAE id sha256 {sha})")


if __name__ == "__main__":
    main()
