"""Readers on format-exact fixtures (tests/fixtures/make_fixtures.py documents every byte)."""

from __future__ import annotations

import bz2
import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.schemas import SOURCE_ROW
from pipeline.config import ReaderConfig
from pipeline.readers import READERS, open_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def read_all(spec: str, cfg: ReaderConfig | None = None) -> tuple[list[dict], list[pa.Table], object]:
    _, files, reader = open_source(spec, cfg or ReaderConfig())
    tables = [t for path in files for t in reader.read(path)]
    for t in tables:
        assert t.schema.equals(SOURCE_ROW), t.schema
    return [row for t in tables for row in t.to_pylist()], tables, reader


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def cc3m_expected(path: str) -> list[tuple]:
    """The fixture's rows; a malformed detail names its file and line."""
    return [
        (
            "http://lh6.ggpht.com/-IvRtNLNcG8o/TpFyrudaT6I/AAAAAAAAM6o/_Tl9cq3tG5Y/s1600/bus-station.jpg",
            "a very typical bus station",
            None,
        ),
        (
            "http://78.media.tumblr.com/3b133294bdc9c7b6a3bd5b0abf7c0d6a/tumblr_nttyoyHnzh1r8x8ylo1_500.jpg",
            "sierra looked stunning in this top and this skirt while performing with person at their concert",
            None,
        ),
        (None, None, f"{path}:3: expected 2 tab-separated columns (caption, url), got 3"),
        # a Latin-1 byte in the caption: replaced, and the row is kept because its URL is intact
        ("http://example.com/latin1.jpg", "caf\ufffd latte art in a white cup", None),
        (None, "a caption without a url", f"{path}:5: missing url"),
        ("https://i.pinimg.com/736x/a1/b2/c3/premiere.jpg", "actor arrives at the premiere of the film", None),
    ]


@pytest.mark.parametrize("name", ["cc3m.tsv", "cc3m.tsv.gz", "cc3m.tsv.bz2"])
def test_cc3m_plain_gz_bz2_give_the_same_rows_in_order(name):
    rows, _, reader = read_all(f"cc3m:{fixture(name)}")
    assert [(r["url"], r["caption"], r["malformed"]) for r in rows] == cc3m_expected(fixture(name))
    assert all(r["width"] is None and r["height"] is None for r in rows)
    assert (reader.rows_read, reader.malformed) == (6, 2)


def test_batches_are_bounded_and_keep_input_order():
    rows, tables, _ = read_all(f"cc3m:{fixture('cc3m.tsv.gz')}", ReaderConfig(batch_size=4))
    assert [t.num_rows for t in tables] == [4, 2]
    assert [r["caption"] for r in rows] == [c for _, c, _ in cc3m_expected("")]


def test_glob_expands_sorted_and_reads_every_file():
    fmt, files, reader = open_source(f"cc3m:{FIXTURES}/cc3m.tsv*", ReaderConfig())
    assert fmt == "cc3m" and type(reader) is READERS["cc3m"]
    assert [os.path.basename(f) for f in files] == ["cc3m.tsv", "cc3m.tsv.bz2", "cc3m.tsv.gz"]


def test_remote_paths_through_fsspec(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    with open(fixture("cc3m.tsv.gz"), "rb") as fh:
        data = fh.read()
    fs.pipe("/captions-test/part-0001.tsv.gz", data)
    fs.pipe("/captions-test/part-0000.tsv.gz", data)
    try:
        fmt, files, reader = open_source("cc3m:memory://captions-test/part-*.tsv.gz", ReaderConfig())
        assert [f.rsplit("/", 1)[-1] for f in files] == ["part-0000.tsv.gz", "part-0001.tsv.gz"]
        assert all(f.startswith("memory://") for f in files)
        rows = [r for t in reader.read(files[1]) for r in t.to_pylist()]
        assert [(r["url"], r["caption"], r["malformed"]) for r in rows] == cc3m_expected(files[1])
    finally:
        fs.rm("/captions-test", recursive=True)


def test_open_source_rejects_unknown_format_and_empty_glob():
    with pytest.raises(ValueError, match="unknown source format 'flickr'"):
        open_source(f"flickr:{fixture('cc3m.tsv')}", ReaderConfig())
    with pytest.raises(ValueError, match="matches no file"):
        open_source(f"cc3m:{FIXTURES}/nothing-*.tsv", ReaderConfig())
    with pytest.raises(ValueError, match="FORMAT:PATH_OR_GLOB"):
        open_source("cc3m", ReaderConfig())


def test_wit_caption_rule_sizes_and_quoting():
    rows, _, reader = read_all(f"wit:{fixture('wit.tsv.gz')}")
    assert [(r["caption"], r["width"], r["height"], r["malformed"]) for r in rows] == [
        # 1. reference description wins over attribution and alt text
        ("The stone bridge over the River Wye at Builth Wells", 1600, 1200, None),
        # 2. no reference: alt text
        ("Groe Hall from the north", 600, 800, None),
        # 3. only attribution: the English part, license boilerplate removed; unknown size
        ("The Wye valley near Builth in autumn", None, None, None),
        # pandas-quoted field holding a quote and a tab
        ('The "Royal Welsh" showground\twith its main ring', 1000, 3000, None),
        (None, None, None, f"{fixture('wit.tsv.gz')}:6: expected 17 columns, got 3"),
    ]
    assert rows[0]["url"] == "https://upload.wikimedia.org/wikipedia/commons/a/a1/Builth_bridge.jpg"
    assert (reader.rows_read, reader.malformed) == (5, 1)


def test_yfcc100m_decodes_title_and_description_and_skips_videos():
    rows, _, reader = read_all(f"yfcc100m:{fixture('yfcc100m_dataset.bz2')}")
    assert [(r["url"], r["caption"], r["malformed"]) for r in rows] == [
        (
            "http://farm4.staticflickr.com/3040/2588461524_0a1b2c3d4e.jpg",
            "Golden Gate Bridge at sunset, seen from Baker Beach",
            None,
        ),
        (
            "http://farm4.staticflickr.com/3040/4459371082_0a1b2c3d4e.mp4",
            "Surfing at Ocean Beach",
            f"video: {fixture('yfcc100m_dataset.bz2')}:2: marker column = 1",
        ),
        (None, None, f"{fixture('yfcc100m_dataset.bz2')}:3: expected 25 or 23 tab-separated columns, got 5"),
        ("http://farm4.staticflickr.com/3040/3191113320_0a1b2c3d4e.jpg", "IMG_0423.JPG", None),
    ]
    assert (reader.rows_read, reader.malformed) == (4, 2)


def test_laion_fixture_sizes_and_missing_fields():
    rows, _, _ = read_all(f"laion:{fixture('laion.parquet')}")
    assert [(r["url"], r["caption"], r["width"], r["height"], r["malformed"]) for r in rows] == [
        ("https://example.com/a.jpg", "A red fox in the snow", 640, 480, None),
        (None, "No URL here", 100, 100, f"{fixture('laion.parquet')}:row 2: missing URL"),
        ("https://example.com/c.jpg", None, None, 200, f"{fixture('laion.parquet')}:row 3: missing TEXT"),
        ("https://example.com/d.jpg", "Wide panorama of the Alps", 3000, 500, None),
    ]


def test_laion_shared_sample_without_size_columns_streams_in_batches(shared_data):
    path = str(shared_data / "laion_sample_1000.parquet")
    expected = pq.read_table(path, columns=["URL", "TEXT"])
    rows, tables, reader = read_all(f"laion:{path}", ReaderConfig(batch_size=300))
    assert [t.num_rows for t in tables] == [300, 300, 300, 100]
    assert [r["url"] for r in rows] == expected.column("URL").to_pylist()
    assert [r["caption"] for r in rows] == expected.column("TEXT").to_pylist()
    assert all(r["width"] is None and r["height"] is None and r["malformed"] is None for r in rows)
    assert reader.rows_read == 1000 and reader.malformed == 0


def test_generic_csv_with_configured_columns_quoting_and_bad_rows():
    cfg = ReaderConfig(url_column="image_link", caption_column="alt", width_column="w", height_column="h")
    for name in ("generic.csv", "generic.csv.gz"):
        rows, _, _ = read_all(f"csv:{fixture(name)}", cfg)
        path = fixture(name)
        assert [(r["url"], r["caption"], r["width"], r["height"], r["malformed"]) for r in rows] == [
            ("https://example.com/1.jpg", 'A dog, a cat and a "parrot"', 800, 600, None),
            # a quoted field spanning two lines: its first line is one malformed row, and the next
            # line is read as a record of its own (here: too few columns), never absorbed
            (
                "https://example.com/2.jpg",
                None,
                None,
                None,
                f"{path}:3: quoted field not closed on its line (unexpected end of data)",
            ),
            (None, None, None, None, f"{path}:4: expected 4 columns, got 3"),
            ("https://example.com/3.jpg", None, None, None, f"{path}:5: expected 4 columns, got 5"),
            (None, "missing url caption", None, None, f"{path}:6: missing image_link"),
        ]


def test_generic_csv_with_default_columns_missing_from_header_marks_rows_malformed():
    rows, _, _ = read_all(f"csv:{fixture('generic.csv')}")
    path = fixture("generic.csv")
    lacks = "header lacks column(s) ['url', 'caption']"
    assert [r["malformed"] for r in rows] == [
        f"{path}:2: {lacks}",
        f"{path}:3: quoted field not closed on its line (unexpected end of data)",
        f"{path}:4: {lacks}",
        f"{path}:5: {lacks}",
        f"{path}:6: {lacks}",
    ]


def test_generic_tsv_undecodable_caption_is_replaced_and_kept():
    rows, _, _ = read_all(f"tsv:{fixture('generic.tsv')}")
    assert [(r["url"], r["caption"], r["malformed"]) for r in rows] == [
        ("https://example.com/t1.jpg", "A lighthouse on a cliff", None),
        ("https://example.com/t2.jpg", "\ufffd\ufffd broken bytes", None),
    ]


def test_generic_jsonl_bz2_bad_lines_are_rows_not_errors():
    path = fixture("generic.jsonl.bz2")
    rows, _, reader = read_all(f"jsonl:{path}", ReaderConfig(width_column="width", height_column="height"))
    assert [(r["url"], r["width"], r["malformed"]) for r in rows] == [
        ("https://example.com/j1.jpg", 512, None),
        (None, None, f"{path}:2: bad JSON: Unterminated string starting at"),
        (None, None, f"{path}:3: JSON line is a list, not an object"),
        (None, None, f"{path}:4: missing url"),
        ("https://example.com/j5.jpg", None, None),
    ]
    assert reader.malformed == 3


def test_generic_parquet_with_configured_columns_and_string_sizes():
    cfg = ReaderConfig(url_column="link", caption_column="text", width_column="w", height_column="h")
    rows, _, _ = read_all(f"parquet:{fixture('generic.parquet')}", cfg)
    assert [(r["url"], r["caption"], r["width"], r["height"], r["malformed"]) for r in rows] == [
        ("https://example.com/p1.jpg", "A cat asleep on a sofa", 1024, 768, None),
        ("", "x", None, None, f"{fixture('generic.parquet')}:row 2: missing link"),
    ]


def test_large_compressed_input_streams_with_bounded_batches(tmp_path):
    lines = b"".join(b"caption number %d\thttp://example.com/%d.jpg\n" % (i, i) for i in range(25_000))
    for name, data in (("big.tsv.gz", gzip.compress(lines)), ("big.tsv.bz2", bz2.compress(lines))):
        (tmp_path / name).write_bytes(data)
        _, files, reader = open_source(f"cc3m:{tmp_path / name}", ReaderConfig(batch_size=4096))
        sizes, last = [], None
        for table in reader.read(files[0]):
            sizes.append(table.num_rows)
            last = table.column("caption")[-1].as_py()
        assert max(sizes) == 4096 and sum(sizes) == 25_000 and last == "caption number 24999"
        assert reader.malformed == 0


def test_truncated_compressed_file_is_a_file_level_error_with_the_rows_read(tmp_path):
    """A cut .gz is never one malformed row: it raises, naming the file and the rows read before the cut."""
    from pipeline.readers.errors import InputUnreadable

    # Large enough that the cut falls beyond the reader's 1 MiB buffer, so rows come before the error.
    lines = b"".join(b"caption number %d\thttp://example.com/%d.jpg\n" % (i, i) for i in range(200_000))
    data = gzip.compress(lines, compresslevel=1)
    (tmp_path / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    _, files, reader = open_source(f"cc3m:{tmp_path / 'cut.tsv.gz'}", ReaderConfig(batch_size=50_000))
    seen = 0
    with pytest.raises(InputUnreadable) as info:
        for table in reader.read(files[0]):
            assert table.column("malformed").null_count == table.num_rows
            seen += table.num_rows
    err = info.value
    assert not err.transient and err.path == files[0] and "cut.tsv.gz" in str(err)
    assert 0 < seen <= err.rows_read < 200_000 and f"after {err.rows_read} rows" in str(err)
    assert reader.malformed == 0


# -- a line is a row: quotes, stray CRs, NULs, bad bytes, wrong tab counts, blank lines ------------------
QUOTED_CAPTIONS = [
    '"leading quote never closed and a long caption after it',
    'unbalanced " quote in the middle of the caption',
    "\u201ccurly quotes\u201d around a phrase with \u2018single\u2019 ones",
    '"balanced quotes" at the start then more words',
    'a 12" vinyl record on a wooden table',
    'trailing quote at the very end"',
    '""doubled"" quotes as csv would escape them',
    "plain caption without any quote at all",
    "'single' quotes and it's an apostrophe",
    '" a lone quote with spaces " and "another one',
]


def _quoted_lines(n: int) -> list[tuple[str, str]]:
    return [
        (f"{QUOTED_CAPTIONS[i % len(QUOTED_CAPTIONS)]} number {i}", f"https://example.com/{i}.jpg") for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["tsv", "cc3m"])
def test_every_tsv_line_is_one_row_whatever_its_quotes(tmp_path, fmt):
    pairs = _quoted_lines(2000)
    if fmt == "tsv":
        text = "url\tcaption\n" + "".join(f"{u}\t{c}\n" for c, u in pairs)
    else:
        text = "".join(f"{c}\t{u}\n" for c, u in pairs)
    path = tmp_path / f"quotes.{fmt}"
    path.write_text(text, encoding="utf-8")
    rows, _, reader = read_all(f"{fmt}:{path}", ReaderConfig(batch_size=512))
    assert (reader.rows_read, reader.malformed) == (2000, 0)
    # every caption arrives exactly as written: same words, quotes included
    assert [(r["url"], r["caption"]) for r in rows] == [(u, c) for c, u in pairs]


def test_odd_lines_each_become_exactly_one_row_naming_file_and_line(tmp_path):
    lines = [
        b"url\tcaption",
        b"https://example.com/1.jpg\ta caption with a carriage return \r in the middle",
        b"https://example.com/2.jpg\ta caption with a NUL \x00 byte",
        b"https://example.com/3.jpg\tcaf\xe9 au lait in a bowl",  # Latin-1 caption: kept, replaced
        b"https://example.com/\xff4.jpg\ta broken url byte",  # URL not intact: rejected with it
        b"https://example.com/5.jpg a caption but no tab",
        b"https://example.com/6.jpg\ta caption\twith an extra tab",
        b"",
        b"https://example.com/8.jpg\ta windows line ending\r",
        b"https://example.com/9.jpg\tthe last caption",
    ]
    path = tmp_path / "odd.tsv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows, _, reader = read_all(f"tsv:{path}")
    assert reader.rows_read == len(lines) - 1
    got = [(r["url"], r["caption"], r["malformed"]) for r in rows]
    assert got == [
        ("https://example.com/1.jpg", "a caption with a carriage return \r in the middle", None),
        ("https://example.com/2.jpg", "a caption with a NUL \x00 byte", None),
        ("https://example.com/3.jpg", "caf\ufffd au lait in a bowl", None),
        ("https://example.com/\ufffd4.jpg", "a broken url byte", f"{path}:5: undecodable bytes (not UTF-8) in the url"),
        ("https://example.com/5.jpg", None, f"{path}:6: expected 2 columns, got 1"),
        ("https://example.com/6.jpg", None, f"{path}:7: expected 2 columns, got 3"),
        (None, None, f"{path}:8: blank line"),
        ("https://example.com/8.jpg", "a windows line ending", None),
        ("https://example.com/9.jpg", "the last caption", None),
    ]


def test_csv_quote_left_open_is_one_malformed_row_and_the_next_lines_are_read(tmp_path):
    path = tmp_path / "open.csv"
    path.write_text(
        "url,caption\n"
        'https://example.com/1.jpg,"a caption whose quote never closes\n'
        'https://example.com/2.jpg,"a quoted, fine caption"\n'
        'https://example.com/3.jpg,a 12" screen\n'
        'https://example.com/4.jpg,"closed" then text\n'
        "https://example.com/5.jpg,plain\n",
        encoding="utf-8",
    )
    rows, _, reader = read_all(f"csv:{path}")
    assert [(r["url"], r["caption"], r["malformed"] and r["malformed"].split(" (")[0]) for r in rows] == [
        ("https://example.com/1.jpg", None, f"{path}:2: quoted field not closed on its line"),
        ("https://example.com/2.jpg", "a quoted, fine caption", None),
        ("https://example.com/3.jpg", 'a 12" screen', None),
        ("https://example.com/4.jpg", None, f"{path}:5: quoted field not closed on its line"),
        ("https://example.com/5.jpg", "plain", None),
    ]
    assert (reader.rows_read, reader.malformed) == (5, 2)


# -- WIT picks English text; YFCC100M reads both layouts and gives videos their own reason ----------------
def test_wit_prefers_the_english_attribution_on_non_english_pages(tmp_path):
    header = [
        "language",
        "image_url",
        "caption_reference_description",
        "caption_alt_text_description",
        "caption_attribution_description",
        "attribution_passes_lang_id",
    ]
    rows_in = [
        # German page, attribution with an English part: the English part wins over the German reference
        [
            "de",
            "https://u.example/1.jpg",
            "Die Steinbrücke über den Fluss",
            "",
            "English: The stone bridge over the river Deutsch: Die Steinbrücke",
            "false",
        ],
        # French page, attribution not in the page's language and unlabelled: the attribution
        [
            "fr",
            "https://u.example/2.jpg",
            "Le vieux pont de pierre",
            "",
            "The old stone bridge at dusk. Own work",
            "false",
        ],
        # French page, attribution in French too: the reference (left to non_english)
        ["fr", "https://u.example/3.jpg", "Le vieux pont de pierre", "", "Le pont, travail personnel", "true"],
        # English page: the reference as before, even with an attribution
        ["en", "https://u.example/4.jpg", "The stone bridge at Builth Wells", "", "English: A bridge", "false"],
    ]
    path = tmp_path / "wit.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows_in]) + "\n", encoding="utf-8")
    rows, _, _ = read_all(f"wit:{path}")
    assert [r["caption"] for r in rows] == [
        "The stone bridge over the river",
        "The old stone bridge at dusk.",
        "Le vieux pont de pierre",
        "The stone bridge at Builth Wells",
    ]


def test_yfcc100m_reads_the_23_column_webscope_layout_and_marks_videos(tmp_path):
    def line23(pid, title, url, marker):
        fields = [
            str(pid),
            "12345@N00",
            "nick",
            "2008-06-20 19:21:38.0",
            "1213999301",
            "Canon",
            title,
            "",
            "tag1,tag2",
            "",
            "",
            "",
            "",
            f"http://www.flickr.com/photos/x/{pid}/",
            url,
            "CC BY",
            "",
            "3040",
            "4",
            "0a1b2c3d4e",
            "f00",
            "jpg",
            str(marker),
        ]
        assert len(fields) == 23
        return "\t".join(fields)

    path = tmp_path / "yfcc100m_dataset-0"
    path.write_text(
        line23(1, "Red+barn+in+a+snowy+field", "http://farm4.staticflickr.com/1_a.jpg", 0)
        + "\n"
        + line23(2, "Surfing+video", "http://farm4.staticflickr.com/2_a.mp4", 1)
        + "\n",
        encoding="utf-8",
    )
    rows, _, reader = read_all(f"yfcc100m:{path}")
    assert [(r["url"], r["caption"], r["malformed"]) for r in rows] == [
        ("http://farm4.staticflickr.com/1_a.jpg", "Red barn in a snowy field", None),
        ("http://farm4.staticflickr.com/2_a.mp4", "Surfing video", f"video: {path}:2: marker column = 1"),
    ]
    from common.schemas import CAPTION_REASONS, reader_reason

    assert reader_reason(rows[1]["malformed"]) == "video" in CAPTION_REASONS
    assert reader_reason(f"{path}:3: expected 25 or 23 tab-separated columns, got 5") == "malformed"


def test_io_errors_are_transient_and_format_errors_are_not():
    from pipeline.readers.errors import is_transient

    assert is_transient(FileNotFoundError("gone for a moment"))
    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject operation"))
    assert not is_transient(OSError("Truncated compressed stream"))
    assert not is_transient(pa.ArrowInvalid("Parquet magic bytes not found in footer"))
    assert not is_transient(EOFError("Compressed file ended before the end-of-stream marker"))
