"""Caption work split for every line format: row-for-row the same output as an unsplit read.

* csv, tsv and wit, uncompressed, are cut into newline-aligned byte ranges; every split past the
  first reads the file's header line first. Exact for csv too: a reader never merges lines (a quoted
  field left open at the end of its line is one malformed row), and the files below hold such
  fields, CRLF lines, blank lines, wrong field counts and bytes that are not UTF-8, with split
  boundaries falling among them.
* a compressed stream is read by one task that fans chunks of reader.split_rows rows out to filter
  tasks (pipeline.caption_fanout): the output equals the whole-file read exactly (keys, details, row
  numbers), in-process and on Ray; a rerun filters only the chunks that are missing.

The real caption pipeline (lexicon + fastText) runs in-process; the Ray test is marked slow.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re

import pyarrow.parquet as pq
import pytest

from pipeline.build import plan_inputs
from pipeline.caption_fanout import chunk_marker
from pipeline.caption_phase import _filter_file, caption_task
from pipeline.config import BuildConfig
from pipeline.layout import Layout

N = 1_500


def caption(i: int) -> str:
    return "ok" if i % 11 == 0 else f"a photo of a red sports car number {i} parked by the sea"


def csv_bytes(n: int = N) -> bytes:
    lines = [b"url,caption,width,height"]
    for i in range(n):
        url = f"http://img.example/{i % 1_200}.jpg"  # repeats: duplicate URLs share a key
        if i % 13 == 0:  # a quoted field across two lines: two rows, never one
            lines.append(f'{url},"a caption that runs\nonto the next line {i}",640,480'.encode())
        elif i % 17 == 0:
            lines.append(b"")
        elif i % 19 == 0:
            lines.append(f"{url},only two fields".encode())
        elif i % 23 == 0:
            lines.append(f'{url},"{caption(i)}, with a comma",640,480\r'.encode())  # CRLF
        elif i % 29 == 0:
            lines.append(f"{url},caption with a bad byte ".encode() + b"\xff number 29,640,480")
        else:
            lines.append(f'{url},"{caption(i)}",640,480'.encode())
    return b"\n".join(lines) + b"\n"


def tsv_bytes(n: int = N) -> bytes:
    lines = [b"caption\turl"]
    for i in range(n):
        url = f"http://img.example/{i % 1_200}.jpg"
        if i % 13 == 0:
            lines.append(f'"quotes are text" {caption(i)}\t{url}'.encode())
        elif i % 17 == 0:
            lines.append(b"\t")
        elif i % 19 == 0:
            lines.append(f"{caption(i)}\t{url}\textra".encode())
        elif i % 29 == 0:
            lines.append(f"{caption(i)} \xfe\t{url}".encode("latin-1"))
        else:
            lines.append(f"{caption(i)}\t{url}".encode())
    return b"\n".join(lines) + b"\n"


def wit_bytes(n: int = N) -> bytes:
    header = "language\timage_url\tcaption_reference_description\tcaption_attribution_description"
    lines = [(header + "\tcaption_alt_text_description\toriginal_width\toriginal_height").encode()]
    for i in range(n):
        url = f"https://upload.wikimedia.org/{i % 1_200}.jpg"
        if i % 13 == 0:  # pandas quotes a field with a tab; one with a newline spans two lines
            lines.append(f'en\t{url}\t"{caption(i)}\twith a tab"\t\t\t640\t480'.encode())
            lines.append(f'en\t{url}\t"starts here\nends here {i}"\t\t\t640\t480'.encode())
        elif i % 17 == 0:
            lines.append(f"de\t{url}\tEin rotes Auto {i}\tEnglish: a red car {i} by the sea\t\t640\t480".encode())
        elif i % 19 == 0:
            lines.append(f"en\t{url}\ttoo few".encode())
        else:
            lines.append(f"en\t{url}\t{caption(i)}\t\t\t640\t480".encode())
    return b"\n".join(lines) + b"\n"


FORMATS = {"csv": csv_bytes, "tsv": tsv_bytes, "wit": wit_bytes}


def config(root, spec: str) -> BuildConfig:
    cfg = BuildConfig(sources=[spec], output=str(root))
    cfg.reader.url_column, cfg.reader.caption_column = "url", "caption"
    cfg.reader.batch_size = 97  # batches that never line up with splits or chunks
    return cfg


def outputs(cfg: BuildConfig) -> tuple[list[tuple], list[tuple]]:
    """(kept rows in input order, rejected rows sorted) of everything the caption tasks wrote."""
    layout = Layout(cfg.output)
    kept, rejected = [], []
    for name in sorted(os.listdir(layout.path("_work", "captions"))):
        if name.endswith(".parquet"):
            kept += pq.read_table(layout.path("_work", "captions", name)).to_pylist()
    for name in sorted(os.listdir(layout.path("rejected"))):
        rejected += pq.read_table(layout.path("rejected", name)).to_pylist()
    kept.sort(key=lambda r: (r["file_id"][:10], r["row"]))  # "000-000000" without a split suffix
    keep = [(r["key"], r["url"], r["caption"], r["width"], r["height"], r["row"]) for r in kept]
    drop = [(r["key"], r["url"], r["caption"], r["reason"], r["detail"]) for r in rejected]
    return keep, sorted(drop, key=repr)


def unlocated(rows: list[tuple], path: str) -> list[tuple]:
    """Rejected rows without what depends on where a split starts: the line location in a detail
    (PATH:LINE or PATH@byteN:LINE) and the position key of a row that has no URL."""
    where = re.compile(re.escape(path) + r"(@byte\d+)?:\d+: ")
    return sorted(
        (
            ((key if url else None), url, text, reason, where.sub("", detail or ""))
            for key, url, text, reason, detail in rows
        ),
        key=repr,
    )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_header_formats_split_by_bytes_give_the_rows_of_a_whole_read(tmp_path, fmt):
    data = FORMATS[fmt]()
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(data)
    results = {}
    for split_bytes in (1 << 30, 4_000):
        cfg = config(tmp_path / f"out-{split_bytes}", f"{fmt}:{path}")
        cfg.reader.split_bytes = split_bytes
        files = plan_inputs(cfg)
        if split_bytes == 4_000:
            assert len(files) == -(-len(data) // 4_000) and all(f.split.kind == "bytes" for f in files)
        else:
            assert [f.split for f in files] == [None]
        inputs = sum(caption_task(f, cfg)["input"] for f in files)
        assert inputs == data.count(b"\n") - 1  # every data line is one row, in either reading
        results[split_bytes] = outputs(cfg)
    (kept_whole, rejected_whole), (kept_split, rejected_split) = results[1 << 30], results[4_000]
    # kept rows: the same, in the same input order (row numbers are byte offsets in splits, but monotone)
    assert [r[:5] for r in kept_whole] == [r[:5] for r in kept_split] and len(kept_whole) > N // 2
    rows = [r[5] for r in kept_split]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    # rejected rows: the same, reason and detail alike, once the location of the line is set aside
    assert unlocated(rejected_whole, str(path)) == unlocated(rejected_split, str(path))
    reasons = {r[3] for r in rejected_split}
    assert "malformed" in reasons and "too_short" in reasons


def write_compressed(path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else bz2.compress(data))


@pytest.mark.parametrize("fmt,name", [("csv", "in.csv.gz"), ("cc3m", "in.tsv.bz2")])
def test_a_compressed_stream_fanned_out_in_chunks_gives_the_rows_of_a_whole_read(tmp_path, fmt, name):
    data = csv_bytes() if fmt == "csv" else tsv_bytes().split(b"\n", 1)[1]  # cc3m: caption<TAB>url, no header
    path = tmp_path / name
    write_compressed(path, data)
    whole_cfg = config(tmp_path / "whole", f"{fmt}:{path}")
    (src,) = plan_inputs(whole_cfg)
    assert src.split is None
    layout = Layout(whole_cfg.output)
    whole_stats = _filter_file(src, whole_cfg, layout)  # the unsplit read, one task, no fan-out
    assert whole_stats["parts"] == 1

    cfg = config(tmp_path / "fanned", f"{fmt}:{path}")
    cfg.reader.split_rows = 200
    (src,) = plan_inputs(cfg)
    stats = caption_task(src, cfg)  # no Ray in this process: the chunks are filtered here, in order
    rows = data.count(b"\n") - (fmt == "csv")
    assert stats["input"] == whole_stats["input"] == rows
    assert stats["parts"] == stats["chunks_filtered"] == -(-rows // 200)
    assert stats["kept"] == whole_stats["kept"] and stats["summary"]["rejected"] == whole_stats["summary"]["rejected"]
    assert outputs(cfg) == outputs(whole_cfg)  # row for row: keys, details and row numbers alike

    # resume: a chunk whose marker is missing is filtered again, the others are not
    fanned = Layout(cfg.output)
    os.remove(fanned.caption_done(src.file_id))
    os.remove(chunk_marker(fanned, src.file_id, 3))
    os.remove(fanned.caption_part(src.file_id, 3))
    again = caption_task(src, cfg)
    assert again["chunks_filtered"] == 1 and again["input"] == rows
    assert outputs(cfg) == outputs(whole_cfg)
    assert caption_task(src, cfg)["skipped"]  # and a finished file is not read again


@pytest.mark.slow
def test_fan_out_runs_chunks_as_ray_tasks(tmp_path, shared_ray):
    data = csv_bytes(3 * N)
    path = tmp_path / "big.csv.gz"
    write_compressed(path, data)
    whole_cfg = config(tmp_path / "whole", f"csv:{path}")
    (src,) = plan_inputs(whole_cfg)
    _filter_file(src, whole_cfg, Layout(whole_cfg.output))
    cfg = config(tmp_path / "fanned", f"csv:{path}")
    cfg.reader.split_rows = 500
    (src,) = plan_inputs(cfg)
    stats = caption_task(src, cfg)  # the reader here, chunks on the Ray workers
    rows = data.count(b"\n") - 1  # the header is no row; a quoted field across two lines is two
    chunks = -(-rows // 500)
    assert stats["input"] == rows and stats["parts"] == stats["chunks_filtered"] == chunks
    layout = Layout(cfg.output)
    pids = {json.loads(open(chunk_marker(layout, src.file_id, c)).read())["pid"] for c in range(chunks)}
    assert os.getpid() in pids and len(pids) >= 2  # the last chunk here, the others on workers
    assert outputs(cfg) == outputs(whole_cfg)
