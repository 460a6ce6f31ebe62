"""Every data contract between stages, declared once.

Stage 1 (build_dataset) writes DATASET_SHARD and REJECTED files plus a dataset manifest.json;
stage 2 (encode_tokens) reads dataset shards and writes token_shard_schema() files plus its own
manifest.json; stage 3 (train_prior) reads token shards. Change a contract here, nowhere else.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# --- Stage 1: what a reader yields for each input row -------------------------------------------
# `malformed` is null for a usable row, otherwise the rejection detail, "PATH:LINE: detail" (the row
# is rejected as `malformed`, or as the reader reason its detail starts with, see reader_reason();
# it is still counted as input).
SOURCE_ROW = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),  # original width from source metadata, null if unknown
        ("height", pa.int64()),  # original height from source metadata, null if unknown
        ("malformed", pa.string()),
    ]
)

# --- Stage 1: a row that passed the caption filters and waits for download ----------------------
CANDIDATE = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)

# --- Stage 1 output: one dataset shard ----------------------------------------------------------
DATASET_SHARD = pa.schema(
    [
        ("key", pa.string()),  # stable: hash of (source, url), see row_key()
        ("url", pa.string()),
        ("caption", pa.string()),  # normalised caption
        ("image", pa.binary()),  # JPEG bytes, short side resized to download.image_size
        ("width", pa.int32()),  # of `image`
        ("height", pa.int32()),
        ("original_width", pa.int32()),  # as downloaded, before resizing
        ("original_height", pa.int32()),
        ("sha256", pa.string()),  # of the downloaded bytes (exact-duplicate detection)
        ("source", pa.string()),  # source spec name, e.g. "laion" or "cc3m:0"
    ]
)

# --- Stage 1 output: rejected rows, one file per task, for auditing every filter ----------------
REJECTED = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),  # one of REASONS
        ("detail", pa.string()),  # free text: HTTP status, language and score, matched pattern...
    ]
)

# Reason codes, in the order rows meet them. Caption-side reasons cost no bandwidth.
CAPTION_REASONS = (
    "malformed",
    "video",  # a reader skips a row that is well-formed but not an image (YFCC100M marker = 1)
    "invalid_url",
    "too_short",
    "boilerplate",
    "non_english",
    "aspect_ratio",
    "duplicate_url",
)
IMAGE_REASONS = (
    "download_error",
    "blocked_address",
    "robots_disallowed",
    "too_large",
    "decode_error",
    "too_many_pixels",
    "too_small",
    "aspect_ratio",
    "duplicate_image",
    "shard_failed",
)
REASONS = tuple(dict.fromkeys(CAPTION_REASONS + IMAGE_REASONS))
# Reasons a READER gives besides `malformed`: its SOURCE_ROW detail starts with "<reason>: ".
READER_SKIP_REASONS = ("video",)


def reader_reason(detail: str) -> str:
    """The reason code of a reader-rejected row from its `malformed` detail."""
    head = detail.partition(": ")[0]
    return head if head in READER_SKIP_REASONS else "malformed"


def row_key(source: str, url: str | None, position: str) -> str:
    """Stable key of an input row: 16 hex chars of sha1(source, url).

    Rows without a usable URL (malformed) are keyed by their position ("file:row") instead, so
    the key is still unique and stable across reruns.
    """
    material = f"{source}\x00{url}" if url else f"{source}\x00#{position}"
    return hashlib.sha1(material.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def stable_partition(value: str, partitions: int) -> int:
    """Hash partition of a string, identical on every machine and Python process (unlike hash())."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def rejected_from(rows: pa.Table, reason: str, details: list[str] | str) -> pa.Table:
    """REJECTED rows for `rows` (which carry key, url, caption, source), all with one reason."""
    if isinstance(details, str):
        details = [details] * rows.num_rows
    return pa.table(
        {
            "key": rows.column("key"),
            "url": rows.column("url"),
            "caption": rows.column("caption"),
            "source": rows.column("source"),
            "reason": pa.array([reason] * rows.num_rows, pa.string()),
            "detail": pa.array(details, pa.string()),
        },
        schema=REJECTED,
    )


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


# --- Stage 2 output: token shards --------------------------------------------------------------
TOKEN_META_DVAE_SHA256 = "dvae_sha256"
TOKEN_META_GRID = "grid"  # "HxW", e.g. "32x32"
TOKEN_META_VOCAB = "image_vocab_size"
TOKEN_META_IMAGE_SIZE = "image_size"
# What the shard was encoded from, for resume checks: input rows = token rows + rejected rows, and the input
# file's size and modification time (a changed input shard is refused rather than silently kept).
TOKEN_META_INPUT_ROWS = "input_rows"
TOKEN_META_REJECTED = "rejected_rows"
TOKEN_META_INPUT_SIZE = "input_size"
TOKEN_META_INPUT_MTIME = "input_mtime_ns"


def token_shard_schema(grid_h: int, grid_w: int) -> pa.Schema:
    return pa.schema(
        [
            ("key", pa.string()),
            ("caption", pa.string()),
            ("image_tokens", pa.list_(pa.uint16(), grid_h * grid_w)),  # row-major argmax codes
        ]
    )


def token_shard_metadata(
    dvae_sha256: str, grid_h: int, grid_w: int, vocab_size: int, image_size: int, **input_facts: int
) -> dict[str, str]:
    """input_facts: input_rows, rejected_rows, input_size, input_mtime_ns (the TOKEN_META_INPUT_* keys)."""
    unknown = set(input_facts) - {
        TOKEN_META_INPUT_ROWS,
        TOKEN_META_REJECTED,
        TOKEN_META_INPUT_SIZE,
        TOKEN_META_INPUT_MTIME,
    }
    if unknown:
        raise ValueError(f"unknown token shard metadata {sorted(unknown)}")
    return {
        TOKEN_META_DVAE_SHA256: dvae_sha256,
        TOKEN_META_GRID: f"{grid_h}x{grid_w}",
        TOKEN_META_VOCAB: str(vocab_size),
        TOKEN_META_IMAGE_SIZE: str(image_size),
        **{k: str(int(v)) for k, v in input_facts.items()},
    }


def parse_grid(value: str) -> tuple[int, int]:
    h, w = value.lower().split("x")
    return int(h), int(w)


# --- Manifests -----------------------------------------------------------------------------------
# Dataset root layout (stage 1):
#   manifest.json            written last; its presence means the build is complete
#   shards/NNNNN.parquet     DATASET_SHARD
#   rejected/*.parquet       REJECTED
#   report/filter_report.json, report/*.png
#   _work/...                intermediate, resumable state
# Dataset manifest.json keys:
DATASET_MANIFEST_KEYS = ("format", "config", "config_hash", "versions", "shards", "counts", "created")
DATASET_FORMAT = "dalle-dataset/1"
# Token root layout (stage 2):
#   manifest.json, tokenizer.json, shards/NNNNN.parquet (token_shard_schema), rejected/*.parquet
TOKENS_FORMAT = "dalle-tokens/1"
