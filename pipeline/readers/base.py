"""Reader base class: streaming, batching, counting and malformed-row handling live here once.

A format reader only says how to turn its file into rows. It implements ONE of:

* `iter_rows(path)`   -> yields `Row` tuples (url, caption, width, height, malformed), exactly one
                         per input LINE, in input order. Used by the line-based formats (TSV, CSV,
                         JSONL, CC3M, WIT, YFCC100M).
* `iter_tables(path)` -> yields `pa.Table`s already in SOURCE_ROW schema, one row per record. Used
                         by parquet formats, which stay columnar (no per-row Python) for speed.

`read(path)` is the one public call: it streams `pa.Table`s of at most `ReaderConfig.batch_size`
rows with exactly `common.schemas.SOURCE_ROW`, so memory is bounded by the batch, never by the file.
Bad input never raises: it becomes a row whose `malformed` column says why, prefixed with its file
and line (`PATH:LINE: detail`, or `PATH:row N: detail` for parquet), and it is counted.

One line is one row, always (the per-line accounting lives here, in `_lines`, once): only LF or
CRLF end a line (a lone CR stays inside the caption); a blank line, a wrong field count, an
unterminated quote are each one malformed row; bytes that are not UTF-8 are decoded with
U+FFFD replacement and the row is kept when its URL is intact. So the input count of a file is its
number of data lines (records, for parquet) and "kept + rejected = input" means what it says.

The per-record loops live here too: `header_rows` (a header line, then one record per line: WIT,
CSV, TSV), `split_rows` (headerless tab-split lines: CC3M, YFCC100M) and `line_rows` (one text line
per row: JSONL). A format passes its column rule, its detail text and a `to_row` callback that only
knows its own columns.
"""

from __future__ import annotations

import csv
import io
from typing import Callable, Iterable, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from common.schemas import SOURCE_ROW, reader_reason
from pipeline.config import ReaderConfig
from pipeline.readers.errors import until_unreadable

_READ_BUFFER = 1 << 20  # 1 MiB: large enough that remote streams are read in few requests
REPLACEMENT = "\ufffd"  # what an undecodable byte becomes (errors="replace")


class Row(NamedTuple):
    url: str | None
    caption: str | None
    width: int | None = None
    height: int | None = None
    malformed: str | None = None


def bad(detail: str, url: str | None = None, caption: str | None = None) -> Row:
    """A row that could not be used; the detail ends up in the `malformed` rejection."""
    return Row(url, caption, None, None, detail)


def url_field(fields: list[str]) -> str | None:
    """The URL of a line whose columns cannot be trusted: the first word of its first http(s) field."""
    for field in fields:
        field = field.strip()
        if field[:7].lower() == "http://" or field[:8].lower() == "https://":
            return field.split()[0]
    return None


def split_fields(text: str, delimiter: str, quoting: bool) -> list[str] | str:
    """Fields of ONE line, or an error string.

    quoting=False (IANA text/tab-separated-values, CC3M): a plain split, quotes are text.
    quoting=True (RFC 4180 CSV, pandas-written WIT): the csv module on this line alone, strict, so a
    quote left open at the end of the line is an error here instead of a licence to swallow the
    following lines.
    """
    if not quoting or '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return f"quoted field not closed on its line ({exc})"


def _located(detail: str, where: str) -> str:
    """ "WHERE: detail", after a reader skip reason if the detail starts with one (schemas.reader_reason)."""
    reason = reader_reason(detail)
    if reason != "malformed":
        return f"{reason}: {where}: {detail[len(reason) + 2 :]}"
    return f"{where}: {detail}"


def to_int(value: object) -> int | None:
    """Best-effort positive size from metadata ('640', 640.0, '', None): unknown becomes None."""
    if value is None or value == "":
        return None
    try:
        number = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number > 0 else None


class Split(NamedTuple):
    """Part of one input file, so that caption work follows the cluster, not the file count.

    kind "rows":  parquet row groups [start, stop); first_row is the file's row number of the first.
    kind "bytes": the lines that START in bytes [start, stop) of an uncompressed line file (the
                  line that straddles `start` belongs to the previous split); first_row = start, so
                  row numbers stay unique and in input order (a line has at least one byte).
    """

    kind: str
    start: int
    stop: int
    first_row: int


class Reader:
    """Base of every format reader. Subclasses set `format` and implement iter_rows or iter_tables."""

    format = ""
    header_lines = 0  # lines before the first row (a header): line numbers in details count them

    def __init__(self, cfg: ReaderConfig | None = None):
        self.cfg = cfg or ReaderConfig()
        self.rows_read = 0
        self.malformed = 0
        self.split: Split | None = None

    # -- the public call --------------------------------------------------------------------------
    def read(self, path: str, split: Split | None = None) -> Iterator[pa.Table]:
        """Stream SOURCE_ROW tables of at most batch_size rows, one row per input line/record, in order.
        With `split`, only that row-group range (parquet) or byte range (plain text) of the file.

        A file that cannot be read to its end (truncated .gz, corrupt parquet, I/O error) raises
        InputUnreadable after the rows read so far: a file-level failure, never one malformed row.
        """
        self.split = split
        batch_size = max(1, int(self.cfg.batch_size))
        if type(self).iter_tables is not Reader.iter_tables:
            first = self._first_row(path)
            for table in until_unreadable(self.iter_tables(path), path):
                if isinstance(table, Row):
                    table = self._to_table([table])
                for start in range(0, table.num_rows, batch_size):
                    chunk = self._where(table.slice(start, batch_size), path, first + start)
                    yield self._count(chunk)
                first += table.num_rows
            return
        buffer: list[Row] = []
        where = self._line_origin(path)
        line = 0 if where != path else self.header_lines  # a split past the start counts from its own first line
        for row in until_unreadable(self.iter_rows(path), path):
            line += 1  # iter_rows yields exactly one row per line: its position IS its line number
            if row.malformed is not None:
                row = row._replace(malformed=_located(row.malformed, f"{where}:{line}"))
            buffer.append(row)
            if len(buffer) >= batch_size:
                yield self._count(self._to_table(buffer))
                buffer = []
        if buffer:
            yield self._count(self._to_table(buffer))

    def _first_row(self, path: str) -> int:
        """Rows of the file before this reader's row-group split (so details name the file's row)."""
        return self.split.first_row if self.split is not None and self.split.kind == "rows" else 0

    def _line_origin(self, path: str) -> str:
        """Where line numbers count from: the file, or, in a byte-range split past the start, that
        byte offset (lines before it are another task's, so they are not counted here)."""
        if self.split is not None and self.split.kind == "bytes" and self.split.start > 0:
            return f"{path}@byte{self.split.start}"
        return path

    # -- hooks for subclasses ---------------------------------------------------------------------
    def iter_rows(self, path: str) -> Iterator[Row]:
        raise NotImplementedError(f"{type(self).__name__} must implement iter_rows or iter_tables")

    def iter_tables(self, path: str) -> Iterator[pa.Table]:
        raise NotImplementedError

    # -- helpers shared by the formats ------------------------------------------------------------
    def open_lines(self, path: str) -> Iterator[bytes]:
        """Raw lines (bytes, LF included) of a possibly compressed, possibly remote file, or of this
        reader's byte-range split of an uncompressed one. A split past the start of a file with a
        header (csv, tsv, wit) begins with the file's header line(s), so every split parses its
        lines exactly as a whole read would: one line is one row, quotes never span lines.

        Bytes, not text: binary iteration splits on LF only, so a lone CR stays inside its line,
        and an undecodable byte cannot end the file.
        """
        split = self.split
        if split is None or split.kind != "bytes":
            with storage.open_input(path) as stream:
                yield from io.BufferedReader(stream, buffer_size=_READ_BUFFER)
            return
        fs, inner = storage.resolve(path)
        if split.start > 0 and self.header_lines:
            with fs.open_input_file(inner) as raw:
                head = io.BufferedReader(raw, buffer_size=1 << 16)
                for _ in range(self.header_lines):
                    yield head.readline()
        with fs.open_input_file(inner) as raw:
            raw.seek(max(0, split.start - 1))
            lines = io.BufferedReader(raw, buffer_size=_READ_BUFFER)
            pos = max(0, split.start - 1)
            if split.start > 0:  # finish the line that straddles `start`: the previous split owns it
                pos += len(lines.readline())
            while pos < split.stop:
                line = lines.readline()
                if not line:
                    return
                pos += len(line)
                yield line

    def parquet_batches(self, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of a parquet file, or of this reader's row-group split of it."""
        split = self.split
        groups = range(split.start, split.stop) if split is not None and split.kind == "rows" else None
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as fh:
            yield from pq.ParquetFile(fh).iter_batches(
                batch_size=self.cfg.batch_size, columns=columns, row_groups=groups
            )

    def _lines(self, path: str) -> Iterator[tuple[str, bool]]:
        """(text without its LF/CRLF, lossy) for every line: THE one place lines are counted out.

        lossy = the line held bytes that are not UTF-8, now U+FFFD; the loops below keep such a
        row only when its URL came through intact.
        """
        for raw in self.open_lines(path):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            try:
                yield raw.decode("utf-8"), False
            except UnicodeDecodeError:
                yield raw.decode("utf-8", "replace"), True

    @staticmethod
    def _checked(row: Row, lossy: bool) -> Row:
        if lossy and row.malformed is None and (row.url is None or REPLACEMENT in row.url):
            return bad("undecodable bytes (not UTF-8) in the url", row.url, row.caption)
        return row

    # -- the shared per-record loops: a format passes only what is specific to it ------------------
    def header_rows(
        self,
        path: str,
        delimiter: str,
        required: Iterable[str],
        lacks: str,
        to_row: Callable[[dict[str, int], list[str]], Row],
        quoting: bool = True,
    ) -> Iterator[Row]:
        """Rows of a delimited file whose first line is a header (set `header_lines = 1`).

        Every following line is one record (split_fields: quoting per line, never across lines).
        A line becomes a malformed row when it is blank, when its quoting is broken, when the
        header lacks a `required` column (detail: `lacks` formatted with missing=[...]), or when
        its field count differs from the header's; every other line goes to `to_row(index, fields)`.
        """
        lines = self._lines(path)
        first = next(lines, None)
        if first is None:
            return
        header = split_fields(first[0], delimiter, quoting)
        header = [] if isinstance(header, str) else header
        index = {name.strip().lstrip("\ufeff"): i for i, name in enumerate(header)}
        missing = [c for c in required if c not in index]
        for text, lossy in lines:
            fields = split_fields(text, delimiter, quoting) if text.strip() else "blank line"
            if isinstance(fields, str):
                yield bad(fields, url_field(text.split(delimiter)))
            elif missing:
                yield bad(lacks.format(missing=missing), url_field(fields))
            elif len(fields) != len(header):
                yield bad(f"expected {len(header)} columns, got {len(fields)}", url_field(fields))
            else:
                yield self._checked(to_row(index, fields), lossy)

    def line_rows(self, path: str, to_row: Callable[[str], Row]) -> Iterator[Row]:
        """One row per line: a blank line is malformed, any other goes to `to_row(line)`."""
        for text, lossy in self._lines(path):
            yield self._checked(to_row(text), lossy) if text.strip() else bad("blank line")

    def split_rows(
        self, path: str, columns: int | Iterable[int], wrong_count: str, to_row: Callable[[list[str]], Row]
    ) -> Iterator[Row]:
        """One row per tab-separated line without header or quoting (split, not csv: IANA TSV).

        A line with a field count not in `columns` is malformed (detail: `wrong_count` formatted
        with got=N, url: its first http(s) field); the fields of any other line go to `to_row(fields)`.
        """
        allowed = {columns} if isinstance(columns, int) else set(columns)

        def split(line: str) -> Row:
            fields = line.split("\t")
            if len(fields) not in allowed:
                return bad(wrong_count.format(got=len(fields)), url_field(fields))
            return to_row(fields)

        yield from self.line_rows(path, split)

    def _to_table(self, rows: list[Row]) -> pa.Table:
        columns = list(zip(*rows, strict=True))
        return pa.Table.from_arrays(
            [pa.array(col, type=field.type) for col, field in zip(columns, SOURCE_ROW, strict=True)], schema=SOURCE_ROW
        )

    @staticmethod
    def _where(table: pa.Table, path: str, first: int) -> pa.Table:
        """Prefix the malformed details of a columnar chunk with file and row number (1-based)."""
        malformed = table.column("malformed")
        if malformed.null_count == table.num_rows:
            return table
        details = [
            None if d is None else _located(d, f"{path}:row {first + i + 1}")
            for i, d in enumerate(malformed.to_pylist())
        ]
        return table.set_column(table.schema.get_field_index("malformed"), "malformed", pa.array(details, pa.string()))

    def _count(self, table: pa.Table) -> pa.Table:
        self.rows_read += table.num_rows
        self.malformed += table.num_rows - table.column("malformed").null_count
        return table


def _utf8(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def columnar_source_rows(
    batch: pa.RecordBatch | pa.Table, url: str, caption: str, width: str | None, height: str | None
) -> pa.Table:
    """SOURCE_ROW from named columns of an Arrow batch, without a per-row Python loop.

    A row is malformed when its URL or caption is missing; sizes that are not positive numbers
    become null (unknown) rather than malformed, since they only feed the aspect-ratio filter.
    """
    n = batch.num_rows
    names = batch.schema.names

    def text(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(n, pa.string())
        col = batch.column(names.index(name))
        if pa.types.is_large_string(col.type) or pa.types.is_string(col.type):
            return pc.cast(col, pa.string())
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            try:
                return pc.cast(col, pa.string())
            except pa.ArrowInvalid:  # some values are not UTF-8: null them, the row becomes malformed
                values = [v.decode("utf-8", "strict") if _utf8(v) else None for v in col.to_pylist()]
                return pa.array(values, pa.string())
        return pc.cast(col, pa.string())

    def size(name: str | None) -> pa.Array:
        if not name or name not in names:
            return pa.nulls(n, pa.int64())
        col = batch.column(names.index(name))
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.utf8_trim_whitespace(col)
            col = pc.cast(pc.if_else(pc.match_substring_regex(col, r"^[0-9]+(\.[0-9]*)?$"), col, None), pa.float64())
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_finite(col), col, None)
            col = pc.floor(col)
        col = pc.cast(col, pa.int64(), safe=False)
        return pc.if_else(pc.greater(col, 0), col, None)

    urls = text(url)
    captions = text(caption)
    url_missing = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(urls)), 0), True)
    caption_missing = pc.is_null(captions)
    malformed = pc.if_else(
        url_missing,
        pa.scalar(f"missing {url}", pa.string()),
        pc.if_else(caption_missing, pa.scalar(f"missing {caption}", pa.string()), pa.scalar(None, pa.string())),
    )
    return pa.Table.from_arrays([urls, captions, size(width), size(height), malformed], schema=SOURCE_ROW)
