"""Download, check, resize and encode one shard of candidate rows with img2dataset, in-process.

We use img2dataset's `Downloader` (thread pool, retries, X-Robots-Tag, sha256) and its `Resizer`
(cv2 decode, keep-ratio resize that never upscales, JPEG encode) directly inside the caller's Ray
task, instead of its multiprocessing/Ray distributors: the lead's task owns retries and timeouts,
and the distributors would lose them (the Ray one ignores `retries`). Two pieces are ours:

* `HeaderGate` wraps the Resizer and reads the image *header* with PIL first (no decode), so that a
  decompression bomb, a too-small or wrongly shaped image is refused before cv2 allocates pixels.
* `_Collector` is the img2dataset sample writer: it receives every row, success or not, and keeps
  the outcome, so that every input row ends up either kept or rejected with a reason and detail.

Network safety (schemes, addresses, byte cap, deadline) is enforced by safe_http's opener, which
img2dataset's `urllib.request.urlopen` goes through.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tempfile
import threading

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import otherwise

import pyarrow as pa
from PIL import Image

from common import schemas
from pipeline.config import DownloadConfig
from pipeline.download import cached_transforms, safe_http
from pipeline.download.img2dataset_parts import Downloader, Resizer

ROBOTS_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own message
# Formats whose header PIL reads and which cv2 (the Resizer) decodes. Others are refused unparsed.
DECODABLE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_PREFIXED = re.compile(r"^(?P<reason>[a-z_]+): (?P<detail>.*)$", re.S)
_URLOPEN = re.compile(r"^<urlopen error (?P<inner>.*)>$", re.S)
_HTTP_ERROR = re.compile(r"^HTTP Error (?P<code>\d{3}): ?(?P<text>.*)$", re.S)
_DNS_HINTS = (
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
    "no address associated",
    "getaddrinfo failed",
)


class HeaderGate:
    """img2dataset resizer that checks the header (no decode) before delegating to the real Resizer.

    Returns img2dataset's tuple (img, width, height, original_width, original_height, error); our
    errors start with a reason from schemas.IMAGE_REASONS.
    """

    def __init__(self, cfg: DownloadConfig, min_aspect: float, max_aspect: float, inner=None):
        self.max_pixels = cfg.max_pixels
        self.min_size = cfg.min_image_size
        self.min_aspect, self.max_aspect = min_aspect, max_aspect
        self._verdicts: dict[int, tuple[bytes, str | None]] = {}  # id(body) -> (body, refusal); see precheck
        self._lock = threading.Lock()
        self.inner = inner or Resizer(
            image_size=cfg.image_size,
            resize_mode="keep_ratio",
            resize_only_if_bigger=True,
            encode_format="jpg",
            encode_quality=cfg.encode_quality,
        )

    def refusal(self, data: bytes) -> str | None:
        """Why these bytes are refused before decoding, or None."""
        try:
            with Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS) as im:
                width, height, fmt = im.width, im.height, im.format
        except Image.DecompressionBombError as err:  # PIL refuses > 2x its own cap on its own
            return f"too_many_pixels: {err}"
        except Exception as err:  # noqa: BLE001 - anything PIL cannot identify is not an image for us
            return f"decode_error: not a decodable image ({type(err).__name__}: {str(err)[:200]})"
        if width * height > self.max_pixels:
            return f"too_many_pixels: {width}x{height} = {width * height} pixels > {self.max_pixels}"
        if min(width, height) < self.min_size:
            return f"too_small: {width}x{height}, short side {min(width, height)} < {self.min_size}"
        ratio = width / height
        if not self.min_aspect <= ratio <= self.max_aspect:
            bounds = f"[{self.min_aspect:g}, {self.max_aspect:g}]"
            return f"aspect_ratio: {width}x{height}, width/height {ratio:.3f} outside {bounds}"
        if fmt == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            # No end-of-image marker after the last scan: the file was cut. cv2 would still "decode"
            # it, filling the missing part with grey (PIL refuses it too: "image file is truncated").
            return f"decode_error: truncated JPEG ({len(data)} bytes, no end-of-image marker)"
        return None

    def precheck(self, data: bytes) -> None:
        """Judge a body on the thread that fetched it (safe_http calls this), so that the header parse
        runs on the 32 fetch threads instead of img2dataset's one consumer thread, which bounds a shard's
        rate. The verdict is kept with the very bytes object: img2dataset wraps the body in BytesIO
        objects that share it (CPython), and __call__ looks it up by identity. A body that does not
        arrive by that path is simply judged again in __call__."""
        why = self.refusal(data)
        with self._lock:
            self._verdicts[id(data)] = (data, why)

    def _verdict(self, data: bytes) -> str | None:
        with self._lock:
            entry = self._verdicts.pop(id(data), None)
        if entry is not None and entry[0] is data:
            return entry[1]
        return self.refusal(data)

    def __call__(self, img_stream, blurring_bbox_list=None):
        try:
            img_stream.seek(0)
            why = self._verdict(img_stream.getvalue() if hasattr(img_stream, "getvalue") else img_stream.read())
            if why is not None:
                return None, None, None, None, None, why
            img_stream.seek(0)
            img, width, height, original_width, original_height, err = self.inner(img_stream, blurring_bbox_list)
        except Exception as err:  # noqa: BLE001 - a bad image is a rejected row, never a failed shard
            return None, None, None, None, None, f"decode_error: {type(err).__name__}: {err}"
        if err is not None or img is None:
            return None, None, None, None, None, f"decode_error: {err or 'no image produced'}"
        return img, width, height, original_width, original_height, None


def classify(status: str | None, message: str | None) -> tuple[str, str]:
    """(reason, detail) for a row img2dataset did not deliver, from its status and error text."""
    msg = (message or "").strip()
    wrapped = _URLOPEN.match(msg)
    if wrapped:
        msg = wrapped["inner"].strip()
    prefixed = _PREFIXED.match(msg)
    if prefixed and prefixed["reason"] in schemas.IMAGE_REASONS:
        return prefixed["reason"], prefixed["detail"]
    if msg == ROBOTS_MESSAGE:
        return "robots_disallowed", msg
    if status == "failed_to_resize":
        return "decode_error", msg or "the resizer failed"
    http = _HTTP_ERROR.match(msg)
    if http:
        return "download_error", f"HTTP {http['code']} {http['text']}".strip()
    lower = msg.lower()
    if "timed out" in lower or "timeout" in lower:
        return "download_error", f"timeout: {msg}"
    if any(hint in lower for hint in _DNS_HINTS):
        return "download_error", f"DNS failure: {msg}"
    if "connection refused" in lower:
        return "download_error", f"connection refused: {msg}"
    return "download_error", msg or f"no detail (status {status})"


class _Collector:
    """img2dataset sample writer that keeps each row's outcome in memory (bounded by the shard size).

    Downloader instantiates its writer class with (shard_id, folder, ...): calling the collector
    returns itself, so the outcomes stay reachable after the run.
    """

    def __init__(self) -> None:
        self.kept: dict[int, tuple] = {}
        self.rejected: dict[int, tuple[str, str]] = {}

    def __call__(self, *_args, **_kwargs) -> _Collector:
        return self

    def write(self, img, key, caption, meta) -> None:
        index = int(meta["row_index"])
        if img is not None and meta.get("status") == "success":
            self.kept[index] = (
                img,
                meta["width"],
                meta["height"],
                meta["original_width"],
                meta["original_height"],
                meta.get("sha256"),
            )
        else:
            self.rejected[index] = classify(meta.get("status"), meta.get("error_message"))

    def close(self) -> None:
        pass


def download_shard(
    rows: pa.Table, cfg: DownloadConfig, min_aspect: float, max_aspect: float, work_dir: str
) -> tuple[pa.Table, pa.Table]:
    """Download `rows` (schemas.CANDIDATE); returns (kept: DATASET_SHARD, rejected: REJECTED).

    Every input row lands in exactly one of the two, both sorted by key. Row-level failures are
    rejected rows; only failures of the machinery itself (e.g. an unwritable work_dir) raise, so
    that the calling task can retry the shard.
    """
    rows = rows.select(schemas.CANDIDATE.names)
    if rows.num_rows == 0:
        return schemas.empty(schemas.DATASET_SHARD), schemas.empty(schemas.REJECTED)
    collector = _Collector()
    gate = HeaderGate(cfg, min_aspect, max_aspect)
    policy = dataclasses.replace(safe_http.FetchPolicy.from_download_config(cfg), inspect_body=gate.precheck)
    cached_transforms.install()
    os.makedirs(work_dir, exist_ok=True)
    with safe_http.installed(policy), tempfile.TemporaryDirectory(prefix="download-", dir=work_dir) as tmp:
        shard_file = os.path.join(tmp, "input.arrow")
        table = pa.table({"url": rows["url"], "row_index": pa.array(range(rows.num_rows), pa.int64())})
        with pa.OSFile(shard_file, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        downloader = Downloader(
            sample_writer_class=collector,
            resizer=gate,
            thread_count=cfg.thread_count,
            save_caption=False,
            extract_exif=False,
            output_folder=tmp,
            column_list=["url", "row_index"],
            timeout=cfg.timeout,
            number_sample_per_shard=rows.num_rows + 1,
            oom_shard_count=5,
            compute_hash="sha256",
            verify_hash_type=None,
            encode_format="jpg",
            retries=cfg.retries,
            user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=list(cfg.disallowed_header_directives),
        )
        downloader.download_shard((0, shard_file))  # raises on machinery failure (the task retries)
    return _assemble(rows, collector)


def _assemble(rows: pa.Table, collector: _Collector) -> tuple[pa.Table, pa.Table]:
    cols = {name: rows[name].to_pylist() for name in ("key", "url", "caption", "source")}
    kept = {name: [] for name in schemas.DATASET_SHARD.names}
    rejected = {name: [] for name in schemas.REJECTED.names}
    for i in sorted(range(rows.num_rows), key=lambda j: (cols["key"][j] or "", j)):
        base = {name: cols[name][i] for name in cols}
        if i in collector.kept:
            image, width, height, original_width, original_height, sha256 = collector.kept[i]
            row = {
                **base,
                "image": image,
                "width": width,
                "height": height,
                "original_width": original_width,
                "original_height": original_height,
                "sha256": sha256,
            }
            for name in kept:
                kept[name].append(row[name])
        else:
            reason, detail = collector.rejected.get(
                i, ("download_error", "internal: img2dataset reported no outcome for this row")
            )
            for name, value in (*base.items(), ("reason", reason), ("detail", detail[:1000])):
                rejected[name].append(value)
    return (
        pa.Table.from_pydict(kept, schema=schemas.DATASET_SHARD),
        pa.Table.from_pydict(rejected, schema=schemas.REJECTED),
    )
