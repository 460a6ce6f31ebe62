"""Local and remote paths alike (`/data/x`, `s3://bucket/x`, `gs://…`), through pyarrow.fs.

The one rule every stage relies on: a file becomes visible only when complete. Writers serialise
into memory (a shard is bounded by the configured shard size) and then publish in one step:
locally a temp file in the same directory plus os.replace; on object stores an upload to a hidden temp
key plus a server-side copy (a failed upload is never published). A crash therefore leaves either
nothing or a hidden `.tmp-*` file that readers never list and that `clean_temp()` removes on the next run.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import posixpath
import uuid
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Plain paths are local; URIs go through pyarrow, then fsspec."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec  # other schemes (http, gcs without arrow support, memory, ...)

        fs, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def join(root: str, *parts: str) -> str:
    if is_remote(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def _rebuild(original: str, inner: str) -> str:
    """Turn a filesystem-internal path back into the user-facing URI form."""
    if not is_remote(original):
        return inner
    scheme = original.split("://", 1)[0]
    return f"{scheme}://{inner}"


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (`*`, `?`, `[..]`, and `**` for any depth). A plain path matches itself."""
    fs, inner = resolve(pattern)
    if not any(c in inner for c in "*?["):
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.Directory:
            return sorted(
                _rebuild(pattern, i.path)
                for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True))
                if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith((".", "_"))
            )
        return [pattern] if info.type == pafs.FileType.File else []
    parts = inner.split("/")
    base_parts = []
    for p in parts:
        if any(c in p for c in "*?["):
            break
        base_parts.append(p)
    base = "/".join(base_parts) or "/"
    recursive = "**" in inner or len(base_parts) < len(parts) - 1
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    regex_pattern = inner.replace("**/", "*")  # fnmatch's * already spans "/"
    return sorted(
        _rebuild(pattern, i.path)
        for i in infos
        if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, regex_pattern)
    )


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def listdir(path: str, suffix: str = "") -> list[str]:
    """Sorted visible files directly under `path` (temp and hidden files excluded)."""
    fs, inner = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(
        _rebuild(path, i.path)
        for i in infos
        if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith(".") and i.path.endswith(suffix)
    )


def list_files(path: str, suffix: str = "") -> dict[str, tuple[int, int]]:
    """One listing: basename -> (size, mtime_ns) of the visible files directly under `path`.
    On an object store that is one LIST request per 1,000 files, instead of one HEAD per file."""
    fs, inner = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return {
        posixpath.basename(i.path): (int(i.size), int(i.mtime_ns or 0))
        for i in infos
        if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith(".") and i.path.endswith(suffix)
    }


def remove(path: str) -> None:
    """Delete a file if it exists."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.File:
        fs.delete_file(inner)


def makedirs(path: str) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def open_input(path: str) -> Any:
    """A binary input stream, transparently decompressing `.gz`, `.bz2`, `.zst` by extension."""
    fs, inner = resolve(path)
    return fs.open_input_stream(inner, compression="detect")


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as fh:
        return fh.read()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Publish `data` at `path` in one step (see module docstring)."""
    fs, inner = resolve(path)
    parent = posixpath.dirname(inner) if is_remote(path) else os.path.dirname(inner)
    fs.create_dir(parent, recursive=True)
    if is_remote(path):
        # pyarrow's output stream has no abort: leaving its `with` on an exception still calls close(), which
        # completes the upload with whatever was written. So the upload goes to a hidden temp key, and only a
        # complete one is published, by a server-side copy (atomic: the key appears whole or not at all).
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{posixpath.basename(inner)}.{uuid.uuid4().hex}")
        try:
            with fs.open_output_stream(tmp) as out:
                out.write(data)
            fs.copy_file(tmp, inner)
        finally:
            try:
                fs.delete_file(tmp)
            except OSError:
                pass  # never created, or already gone; clean_temp() sweeps what a crash leaves
        return
    tmp = os.path.join(parent, f"{TMP_PREFIX}{os.path.basename(inner)}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, inner)


def parquet_bytes(
    table: pa.Table,
    metadata: dict[str, str] | None = None,
    compression: str = "zstd",
    row_group_size: int | None = None,
) -> bytes:
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression, row_group_size=row_group_size)
    return sink.getvalue()


def grouped_parquet_bytes(table: pa.Table, group_column: str, compression: str = "zstd") -> bytes:
    """Parquet with one row group per run of equal `group_column` values (sort the table first).

    A reader filtering on that column then skips every other group through row-group statistics:
    how one hash partition is read out of thousands of files without reading them whole.
    """
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression=compression) as writer:
        values = table.column(group_column).to_pylist()
        start = 0
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i] != values[start]:
                writer.write_table(table.slice(start, i - start))
                start = i
        if not values:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_parquet_atomic(
    path: str,
    table: pa.Table,
    metadata: dict[str, str] | None = None,
    compression: str = "zstd",
    row_group_size: int | None = None,
) -> None:
    write_bytes_atomic(path, parquet_bytes(table, metadata, compression, row_group_size))


def read_parquet(path: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    fs, inner = resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=columns, filters=filters)


def iter_parquet_batches(
    path: str, columns: list[str] | None = None, batch_size: int = 8192
) -> Iterator[pa.RecordBatch]:
    """Stream a parquet file batch by batch: memory stays bounded by the batch, not the file."""
    fs, inner = resolve(path)
    with fs.open_input_file(inner) as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)


def parquet_num_rows(path: str) -> int:
    fs, inner = resolve(path)
    with fs.open_input_file(inner) as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def parquet_metadata(path: str) -> dict[str, str]:
    fs, inner = resolve(path)
    with fs.open_input_file(inner) as fh:
        meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def clean_temp(root: str) -> int:
    """Remove leftovers of crashed writers under `root` (remote: one recursive listing). Returns how many."""
    if is_remote(root):
        fs, inner = resolve(root)
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
        stale = [
            i.path for i in infos if i.type == pafs.FileType.File and posixpath.basename(i.path).startswith(TMP_PREFIX)
        ]
        for p in stale:
            fs.delete_file(p)
        return len(stale)
    if not os.path.isdir(root):
        return 0
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                os.remove(os.path.join(dirpath, name))
                removed += 1
    return removed
