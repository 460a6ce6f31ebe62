"""No silent loss on input files, and resume keyed by the input set (issue 10).

Real files, the real caption pipeline (real fastText) run in-process: a transient read error is
retried and loses nothing; a file whose bytes are cut fails with its path and the rows read; a rerun
on a changed input set, or after a version change, is refused with the difference.
"""

from __future__ import annotations

import gzip
import json
import os
import threading

import pyarrow.parquet as pq
import pytest

from pipeline.build import plan_inputs
from pipeline.caption_phase import caption_task
from pipeline.config import BuildConfig
from pipeline.input_lock import InputMismatch, describe_inputs, lock_inputs
from pipeline.layout import Layout
from pipeline.readers.errors import InputUnreadable

N = 300


def write_tsv(path, n=N, start=0):
    lines = [
        f"a photo of a red sports car number {i} parked by the sea\thttp://img.example/{i}.jpg"
        for i in range(start, start + n)
    ]
    path.write_text("\n".join(lines) + "\n")


def config(tmp_path, sources):
    cfg = BuildConfig(sources=sources, output=str(tmp_path / "out"))
    cfg.run.read_backoff_s = [0.5, 1.0, 2.0, 4.0]
    return cfg


def rows_on_disk(layout: Layout) -> list[str]:
    keys = []
    for folder in (layout.path("_work", "captions"), layout.path("rejected")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".parquet"):
                keys += pq.read_table(os.path.join(folder, name), columns=["key"]).column("key").to_pylist()
    return keys


def test_transient_read_error_is_retried_and_loses_nothing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_tsv(src / "a.tsv")
    write_tsv(src / "0.tsv", n=5, start=10_000)
    cfg = config(tmp_path, [f"cc3m:{src}/*.tsv"])
    warm, file = plan_inputs(cfg)
    caption_task(warm, cfg)  # a warm worker: the language model is loaded, the read comes at once
    # The file is away for a moment (a replaced object, a flapping mount): the first read fails.
    os.rename(src / "a.tsv", src / "a.moved")
    timer = threading.Timer(0.8, os.rename, (src / "a.moved", src / "a.tsv"))
    timer.start()
    try:
        stats = caption_task(file, cfg)
    finally:
        timer.join()
    assert stats["read_attempts"] >= 2 and stats["input"] == N
    keys = rows_on_disk(Layout(cfg.output))
    assert len(keys) == len(set(keys)) == N + 5  # every row once: kept or rejected, none lost or doubled


def test_cut_compressed_file_fails_with_its_path_and_rows_read(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    lines = b"".join(b"caption number %d is long enough\thttp://e.com/%d.jpg\n" % (i, i) for i in range(150_000))
    data = gzip.compress(lines, compresslevel=1)
    (src / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    cfg = config(tmp_path, [f"cc3m:{src}/*.gz"])
    (file,) = plan_inputs(cfg)
    with pytest.raises(InputUnreadable, match=r"unreadable file in .*cut\.tsv\.gz after \d+ rows") as info:
        caption_task(file, cfg)
    assert not info.value.transient and info.value.rows_read > 0
    assert not os.path.exists(Layout(cfg.output).caption_done(file.file_id))  # never marked done


def test_permanently_unreadable_file_fails_after_its_retries(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_tsv(src / "a.tsv")
    cfg = config(tmp_path, [f"cc3m:{src}/*.tsv"])
    cfg.run.read_backoff_s = [0.1, 0.1]
    (file,) = plan_inputs(cfg)
    os.remove(src / "a.tsv")
    with pytest.raises(InputUnreadable, match=r"transient read error in .*a\.tsv after 0 rows"):
        caption_task(file, cfg)


def test_changed_input_set_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_tsv(src / "a.tsv")
    write_tsv(src / "c.tsv", start=N)
    cfg = config(tmp_path, [f"cc3m:{src}/*.tsv"])
    layout = Layout(cfg.output)
    lock_inputs(layout, cfg, plan_inputs(cfg))
    lock_inputs(layout, cfg, plan_inputs(cfg))  # same inputs: accepted
    write_tsv(src / "b.tsv", start=2 * N)  # shifts c.tsv from position 1 to 2
    with pytest.raises(InputMismatch, match=r"added .*b\.tsv.*c\.tsv moved from position 000-000001"):
        lock_inputs(layout, cfg, plan_inputs(cfg))
    os.remove(src / "b.tsv")
    write_tsv(src / "c.tsv", n=N + 1, start=N)  # same name, other content
    with pytest.raises(InputMismatch, match=r"changed .*c\.tsv \(size"):
        lock_inputs(layout, cfg, plan_inputs(cfg))


def test_changed_versions_are_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_tsv(src / "a.tsv")
    cfg = config(tmp_path, [f"cc3m:{src}/*.tsv"])
    layout = Layout(cfg.output)
    recorded = lock_inputs(layout, cfg, plan_inputs(cfg))
    assert {"img2dataset", "pillow", "opencv-python-headless", "language_model"} <= set(recorded["versions"])
    # what the first run recorded under an older Pillow
    recorded["versions"]["pillow"] = "9.0.0"
    with open(layout.input_lock, "w") as fh:
        json.dump(recorded, fh)
    with pytest.raises(InputMismatch, match=r"pillow 9\.0\.0 -> "):
        lock_inputs(layout, cfg, plan_inputs(cfg))


def test_too_small_is_decided_before_download_when_the_source_has_sizes(tmp_path):
    import pyarrow as pa

    src = tmp_path / "in"
    src.mkdir()
    sizes = [(300, 300), (200, 380), (None, 100), (256, 300)]
    pq.write_table(
        pa.table(
            {
                "url": [f"http://img.example/{i}.jpg" for i in range(len(sizes))],
                "caption": [f"a photo of a red sports car number {i} parked by the sea" for i in range(len(sizes))],
                "w": pa.array([w for w, _ in sizes], pa.int64()),
                "h": pa.array([h for _, h in sizes], pa.int64()),
            }
        ),
        src / "a.parquet",
    )
    cfg = config(tmp_path, [f"parquet:{src}/a.parquet"])
    cfg.reader.width_column, cfg.reader.height_column = "w", "h"
    (file,) = plan_inputs(cfg)
    stats = caption_task(file, cfg)
    rejected = pq.read_table(Layout(cfg.output).rejected("captions", f"{file.file_id}-00000")).to_pylist()
    assert [(r["url"], r["reason"], r["detail"]) for r in rejected] == [
        ("http://img.example/1.jpg", "too_small", "200x380, short side 200 < 256 (source metadata)")
    ]
    assert stats["input"] == 4 and stats["kept"] == 3  # an unknown size is decided after download


# --- caption work split inside files (pipeline.splits) ------------------------------------------------
def caption_rows(cfg) -> list[tuple]:
    """Sorted (key, reason or 'kept', row or None) over every split's output (a URL may repeat)."""
    layout = Layout(cfg.output)
    out = []
    for folder in (layout.path("_work", "captions"), layout.path("rejected")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".parquet"):
                out += [
                    (r["key"], r.get("reason", "kept"), r.get("row"))
                    for r in pq.read_table(os.path.join(folder, name)).to_pylist()
                ]
    return sorted(out, key=repr)


@pytest.mark.parametrize("layout_kind", ["parquet", "lines"])
def test_a_split_file_gives_the_same_rows_as_a_whole_one(tmp_path, layout_kind):
    import pyarrow as pa

    src = tmp_path / "in"
    src.mkdir()
    n = 2_000
    captions = [f"a photo of a red sports car number {i} parked by the sea" if i % 7 else "ok" for i in range(n)]
    urls = [f"http://img.example/{i % 1500}.jpg" for i in range(n)]  # duplicates across splits
    if layout_kind == "parquet":
        pq.write_table(pa.table({"url": urls, "caption": captions}), src / "a.parquet", row_group_size=250)
        spec = f"parquet:{src}/a.parquet"
    else:
        (src / "a.tsv").write_text("".join(f"{c}\t{u}\n" for c, u in zip(captions, urls, strict=True)) + "bad line\n")
        spec = f"cc3m:{src}/a.tsv"
    results = []
    for split in (False, True):
        cfg = config(tmp_path / str(split), [spec])
        if split:
            cfg.reader.split_rows, cfg.reader.split_bytes = 600, 20_000
        files = plan_inputs(cfg)
        if not split:
            assert len(files) == 1
        elif layout_kind == "parquet":  # 250-row groups, >= 600 rows a split: 750, 750, 500
            assert [(f.split.start, f.split.stop, f.split.first_row) for f in files] == [
                (0, 3, 0),
                (3, 6, 750),
                (6, 8, 1500),
            ]
        else:
            assert len(files) > 4 and all(f.split.kind == "bytes" for f in files)
        total = sum(caption_task(f, cfg)["input"] for f in files)
        assert total == n + (layout_kind == "lines")
        results.append(caption_rows(cfg))
    whole, split = results
    # the same rows, kept or rejected alike (a malformed row is keyed by its position: byte offsets in splits)
    assert [r[:2] for r in whole if r[1] != "malformed"] == [r[:2] for r in split if r[1] != "malformed"]
    assert sum(r[1] == "malformed" for r in whole) == sum(r[1] == "malformed" for r in split)
    rows = [r[2] for r in split if r[2] is not None]
    assert len(rows) == len(set(rows))  # row numbers stay unique across splits
    if layout_kind == "parquet":
        assert whole == split  # and are the file's own row numbers


# --- ETags of s3:// inputs -----------------------------------------------------------------------------
@pytest.fixture()
def s3(monkeypatch):
    """A real S3 API on loopback (moto's server); pyarrow and boto3 both reach it via AWS_ENDPOINT_URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in {**env, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="inputs")
    yield client
    server.stop()


def test_a_replaced_s3_object_of_the_same_size_is_refused_by_its_etag(tmp_path, s3):
    import hashlib

    def tsv(word: str) -> bytes:
        return "".join(
            f"a photo of a {word} sports car number {i}\thttp://img.example/{i}.jpg\n" for i in range(50)
        ).encode()

    s3.put_object(Bucket="inputs", Key="cc3m/a.tsv", Body=tsv("red"))
    s3.put_object(Bucket="inputs", Key="cc3m/b.tsv", Body=tsv("tan"))
    cfg = config(tmp_path, ["cc3m:s3://inputs/cc3m/*.tsv"])
    layout = Layout(cfg.output)
    recorded = lock_inputs(layout, cfg, plan_inputs(cfg))
    assert [f["etag"] for f in recorded["files"]] == [hashlib.md5(tsv(w)).hexdigest() for w in ("red", "tan")]
    lock_inputs(layout, cfg, plan_inputs(cfg))  # unchanged objects: accepted

    s3.put_object(Bucket="inputs", Key="cc3m/a.tsv", Body=tsv("blu"))  # other bytes, the same size
    now = {f["path"]: f for f in describe_inputs(plan_inputs(cfg))}
    assert now["s3://inputs/cc3m/a.tsv"]["size"] == recorded["files"][0]["size"]
    # As when an object is replaced within the same second (S3 times have one-second resolution): the lock
    # holds the same size and time as now, and only the ETag tells the objects apart.
    for entry in recorded["files"]:
        entry["mtime_ns"] = now[entry["path"]]["mtime_ns"]
    with open(layout.input_lock, "w") as fh:
        json.dump(recorded, fh)
    with pytest.raises(
        InputMismatch, match=r"changed s3://inputs/cc3m/a\.tsv \(same size and mtime, ETag [0-9a-f]+ ->"
    ):
        lock_inputs(layout, cfg, plan_inputs(cfg))
