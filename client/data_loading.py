"""Load one institution's labelled texts (CSV, TSV or JSON Lines), validated row by row.

Node operators (hospital or bank IT) run fedlora against their own exports. A bad file must
stop the node before any training, with an error that names the file, the row and the
problem, rather than surfacing later as a tensor shape error or a silently wrong label.
Error messages never quote a text (it may hold personal data); label and id values are
quoted, shortened. This module only reads; it writes nothing.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Final

MAX_TEXT_CHARS: Final = 100_000
"""Longer texts are rejected: they usually mean a wrong column or an unclosed quote."""

FILE_FORMATS: Final = ("auto", "csv", "tsv", "jsonl")
_SUFFIX_FORMATS: Final = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",  # JSON Lines under a .json name, as `fedlora synth` may write
}
_SHOWN_LABELS: Final = 10
_SHOWN_CHARS: Final = 40
_ARRAY_HINT: Final = (
    "; the file looks like one JSON array, but fedlora reads JSON Lines (one object per line)"
)


class DataValidationError(ValueError):
    """A data file that cannot be used as it is, located as precisely as known.

    ``str()`` reads e.g. ``"data/bank.csv, row 17, column 'label': unknown label 'refund'
    (expected one of: a, b, c)"``.

    Attributes
    ----------
    path : Path
        The data file.
    row : int or None
        1-based data row: records after the header for CSV/TSV, non-blank lines for JSON Lines.
        None for problems of the whole file.
    field : str or None
        The column (JSON key) at fault, if one is.
    problem : str
        What is wrong, and where useful how to fix it.
    line : int or None
        1-based physical line, given when it differs from what ``row`` suggests (quoted
        multi-line CSV texts, blank lines) or when no row is known (undecodable bytes).
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.problem = problem
        self.row = row
        self.field = field
        self.line = line
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [str(self.path)]
        if self.row is not None:
            parts.append(f"row {self.row}" + ("" if self.line is None else f" (line {self.line})"))
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"column {self.field!r}")
        return ", ".join(parts) + ": " + self.problem

    def __reduce__(self) -> tuple[type[DataValidationError], tuple[object, ...]]:
        # Survives pickling (simulation workers send exceptions across processes).
        return (type(self), (self.path, self.problem, self.row, self.field, self.line))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which columns hold what, and the label set.

    Parameters
    ----------
    text_column, label_column
        Column (JSON key) names of the text and of its label.
    id_column
        Optional record-id column; when given it must exist and ids must be non-empty and
        unique.
    labels
        The federation's fixed label set (order defines label ids). None infers the sorted
        unique labels of the file (as strings), for single-node use.
    file_format
        ``"auto"`` (by suffix: .csv, .tsv, .jsonl, .ndjson, .json), ``"csv"``, ``"tsv"``
        (tab-delimited, no quoting) or ``"jsonl"`` (one JSON object per line).
    """

    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = None
    labels: tuple[str, ...] | None = None
    file_format: str = "auto"

    def __post_init__(self) -> None:
        columns = {"text_column": self.text_column, "label_column": self.label_column}
        if self.id_column is not None:
            columns["id_column"] = self.id_column
        for name, value in columns.items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty column name, got {value!r}")
        seen: dict[str, str] = {}
        for name, value in columns.items():
            if value in seen:
                raise ValueError(f"{seen[value]} and {name} are both {value!r}; they must differ")
            seen[value] = name
        if self.file_format not in FILE_FORMATS:
            raise ValueError(
                f"file_format must be one of {', '.join(FILE_FORMATS)}, got {self.file_format!r}"
            )
        if self.labels is not None:
            labels = tuple(self.labels)
            object.__setattr__(self, "labels", labels)
            _check_label_set(labels)


def _check_label_set(labels: tuple[str, ...]) -> None:
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"labels[{i}] must be a non-empty string, got {label!r}")
        if label != label.strip():
            raise ValueError(
                f"labels[{i}] {label!r} has surrounding whitespace; labels read from files are "
                "stripped, so it could never match"
            )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"duplicate labels: {', '.join(map(repr, duplicates))}")
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {len(labels)}")


@dataclasses.dataclass(frozen=True)
class LabelledTexts:
    """One file's records, in file order.

    Parameters
    ----------
    path
        The file they were read from.
    texts
        The texts, verbatim.
    label_ids
        Per record, the index of its label in ``labels``.
    labels
        The label set used (given or inferred).
    ids
        Record ids when an id column was configured, else None.
    extra_columns
        Every other column's values as strings (e.g. ``"institution"``); for JSON Lines a key
        missing from a record, or null, reads as ``""``.
    """

    path: Path
    texts: tuple[str, ...]
    label_ids: tuple[int, ...]
    labels: tuple[str, ...]
    ids: tuple[str, ...] | None
    extra_columns: Mapping[str, tuple[str, ...]] = dataclasses.field(hash=False)

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        """Records per label, for every label of ``labels`` (zeros included), in label order."""
        counts = dict.fromkeys(self.labels, 0)
        for label_id in self.label_ids:
            counts[self.labels[label_id]] += 1
        return counts


def load_labelled_texts(path: str | Path, config: DataConfig) -> LabelledTexts:
    """Read and validate one labelled-text file.

    Parameters
    ----------
    path
        A CSV, TSV or JSON Lines file, UTF-8 (a byte-order mark is accepted).
    config
        Column names, label set and format.

    Returns
    -------
    LabelledTexts
        The records, with label ids into the given or inferred label set.

    Raises
    ------
    DataValidationError
        On the first problem found: missing or unreadable file, unsupported suffix, bytes
        that are not UTF-8, no data rows, missing columns, malformed rows (field count,
        quoting, invalid JSON), empty or over-long texts, empty or unknown labels, empty or
        duplicate ids.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(path, "file not found")
    if path.is_dir():
        raise DataValidationError(path, "is a directory, not a data file")
    file_format = _resolve_format(path, config.file_format)
    collector = _Collector(path, config)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataValidationError(path, f"cannot open: {exc.strerror or exc}") from None
    with handle:
        lines = _decoded_lines(path, handle)
        if file_format == "jsonl":
            _read_jsonl(lines, collector)
        else:
            _read_delimited(lines, collector, tab=file_format == "tsv")
    return collector.finish()


def check_enough_examples(
    path: Path, num_examples: int, batch_size: int, min_batches: int = 1
) -> None:
    """Refuse a training set too small for the expected batch size.

    DP-SGD samples each record with rate ``batch_size / N``; above 1 the expected
    batch size cannot be met and the privacy accounting would be meaningless.

    Parameters
    ----------
    path
        The file the examples came from (named in the error).
    num_examples
        N, the examples that will be trained on (after any hold-out split).
    batch_size
        Expected (Poisson) batch size.
    min_batches
        Batches per epoch the data must at least fill.

    Raises
    ------
    DataValidationError
        With ``row`` None, when ``num_examples < batch_size * min_batches``.
    ValueError
        When ``batch_size`` or ``min_batches`` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if min_batches < 1:
        raise ValueError(f"min_batches must be >= 1, got {min_batches}")
    n = num_examples
    needed = batch_size * min_batches
    if n >= needed:
        return
    have = f"only {n} example{'' if n == 1 else 's'}"
    if min_batches == 1:
        why = f"too few for expected batch size {batch_size} (sampling rate {batch_size}/{n} > 1)"
    else:
        why = (
            f"too few for {min_batches} batches of expected size {batch_size} "
            f"(needs at least {needed})"
        )
    raise DataValidationError(path, f"{have}, {why}; lower --batch-size or add data")


# ---------------------------------------------------------------------------------- reading


def _resolve_format(path: Path, file_format: str) -> str:
    if file_format != "auto":
        return file_format
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        known = ", ".join(_SUFFIX_FORMATS)
        shown = f"{suffix!r}" if suffix else "no suffix"
        raise DataValidationError(
            path,
            f"unsupported file type ({shown}); expected one of {known}, "
            "or set the file format explicitly",
        )
    return _SUFFIX_FORMATS[suffix]


def _decoded_lines(path: Path, handle: BinaryIO) -> Iterator[str]:
    """The file's lines (terminators kept) decoded as UTF-8, one at a time."""
    offset = 0
    for number, raw in enumerate(handle, start=1):
        if number == 1:
            if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise DataValidationError(
                    path, "the file is UTF-16 encoded (a 'Unicode text' export?); save it as UTF-8"
                )
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
                offset = len(codecs.BOM_UTF8)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataValidationError(
                path,
                f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset "
                f"{offset + exc.start} of the file; save the file as UTF-8",
                line=number,
            ) from None
        offset += len(raw)
        yield line


def _read_delimited(lines: Iterable[str], collector: _Collector, tab: bool) -> None:
    if tab:
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(lines, strict=True)
    path = collector.path
    try:
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
    except csv.Error as exc:
        raise DataValidationError(path, _csv_problem(exc, tab), line=reader.line_num) from None
    if header is None:
        raise DataValidationError(path, "empty dataset: the file is empty")
    columns = [name.strip() for name in header]
    duplicates = sorted({name for name in columns if name and columns.count(name) > 1})
    if duplicates:
        raise DataValidationError(
            path, f"duplicate column names in the header: {', '.join(map(repr, duplicates))}"
        )
    config = collector.config
    required = [config.text_column, config.label_column]
    if config.id_column is not None:
        required.append(config.id_column)
    for name in required:
        if name not in columns:
            raise DataValidationError(path, _missing_column(name, columns, tab, header=True))
    text_at = columns.index(config.text_column)
    label_at = columns.index(config.label_column)
    id_at = None if config.id_column is None else columns.index(config.id_column)
    extra_at = {name: i for i, name in enumerate(columns) if name not in required}
    header_lines = reader.line_num
    row = 0
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            line = None if start == row + 1 + header_lines else start
            raise DataValidationError(
                path, _csv_problem(exc, tab), row=row + 1, line=line
            ) from None
        if fields is None:
            break
        if not fields:
            continue  # blank line
        row += 1
        line = None if start == row + header_lines else start
        if len(fields) != len(columns):
            raise DataValidationError(
                path, _field_count_problem(len(fields), len(columns), tab), row=row, line=line
            )
        collector.add(
            row,
            line,
            fields[text_at],
            fields[label_at],
            None if id_at is None else fields[id_at],
            {name: fields[i] for name, i in extra_at.items()},
        )
    if row == 0:
        raise DataValidationError(path, "empty dataset: a header but no data rows")


def _csv_problem(exc: csv.Error, tab: bool) -> str:
    message = str(exc)
    if "unexpected end of data" in message:
        return (
            "unclosed quote: the quoted field starting in this row runs to the end of the file "
            '(write a quote inside a quoted field as "")'
        )
    if "expected after" in message:
        return (
            "malformed quoting: a closing quote must be followed by a comma or the end of the "
            'line (write a quote inside a quoted field as "")'
        )
    if "field larger than field limit" in message:
        return (
            f"a field is longer than {csv.field_size_limit():,} characters, the CSV reader's "
            "limit (an unclosed quote?)"
        )
    if "new-line character" in message:
        return "carriage return inside an unquoted field (old Mac line endings?); use LF or CRLF"
    return f"malformed {'TSV' if tab else 'CSV'}: {message}"


def _field_count_problem(found: int, expected: int, tab: bool) -> str:
    problem = f"{found} fields, but the header has {expected} columns"
    if found > expected and not tab:
        problem += " (an unquoted comma in a text? quote such texts)"
    elif found > expected:
        problem += " (a tab inside a text?)"
    return problem


def _missing_column(name: str, found: list[str], tab: bool, header: bool) -> str:
    shown = ", ".join(repr(c) for c in found) if found else "none"
    where = "columns found" if header else "keys in this record"
    problem = f"missing column {name!r} ({where}: {shown})"
    close = _close_match(name, found)
    if close is not None:
        return problem + f"; did you mean {close!r}?"
    if header and len(found) == 1:
        separators = [s for s in (";", "|", "," if tab else "\t") if s in found[0]]
        if separators:
            problem += f"; is the file delimited by {separators[0]!r}?"
    return problem


def _read_jsonl(lines: Iterable[str], collector: _Collector) -> None:
    path = collector.path
    config = collector.config
    special = {config.text_column, config.label_column}
    if config.id_column is not None:
        special.add(config.id_column)
    row = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row += 1
        line = None if number == row else number
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
            if row == 1 and raw.lstrip().startswith("["):
                problem += _ARRAY_HINT
            raise DataValidationError(path, problem, row=row, line=line) from None
        if not isinstance(record, dict):
            problem = f"expected a JSON object per line, got {_json_type(record)}"
            if row == 1 and isinstance(record, list):
                problem += _ARRAY_HINT
            raise DataValidationError(path, problem, row=row, line=line)
        found = _jsonl_problem(record, config)
        if found is not None:
            column, problem = found
            raise DataValidationError(path, problem, row=row, field=column, line=line)
        # Validated above: the text is a string, label and id are strings or integers.
        collector.add(
            row,
            line,
            record[config.text_column],
            str(record[config.label_column]),
            None if config.id_column is None else str(record[config.id_column]),
            {k: _json_as_text(v) for k, v in record.items() if k not in special},
        )
    if row == 0:
        raise DataValidationError(path, "empty dataset: no records")


def _jsonl_problem(record: dict[str, object], config: DataConfig) -> tuple[str, str] | None:
    """(column, problem) for the first unusable text/label/id field of a record, or None."""
    keyed = [(config.text_column, "text"), (config.label_column, "label")]
    if config.id_column is not None:
        keyed.append((config.id_column, "id"))
    for name, _ in keyed:
        if name not in record:
            return name, _missing_column(name, list(record), tab=False, header=False)
    for name, what in keyed:
        value = record[name]
        if what == "text" and not isinstance(value, str):
            return name, f"text must be a string, got {_json_type(value)}"
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if what != "text" and not (isinstance(value, str) or is_int):
            return name, f"{what} must be a string or an integer, got {_json_type(value)}"
    return None


def _json_as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {_shorten(json.dumps(value))}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shorten(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 3] + "..."


def _close_match(value: str, options: Iterable[str]) -> str | None:
    options = list(options)
    folded = [o for o in options if o.casefold() == value.casefold()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.8)
    return close[0] if close else None


# ------------------------------------------------------------------------------- validation


class _Collector:
    """Validates records one at a time and accumulates them."""

    def __init__(self, path: Path, config: DataConfig) -> None:
        self.path = path
        self.config = config
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.ids: list[str] = []
        self.id_rows: dict[str, int] = {}
        self.extras: dict[str, list[str]] = {}
        self.known = None if config.labels is None else frozenset(config.labels)

    def add(
        self,
        row: int,
        line: int | None,
        text: str,
        label: str,
        record_id: str | None,
        extras: Mapping[str, str],
    ) -> None:
        config = self.config

        def fail(problem: str, column: str) -> DataValidationError:
            return DataValidationError(self.path, problem, row=row, field=column, line=line)

        if not text.strip():
            raise fail("empty text" if not text else "text is whitespace only", config.text_column)
        if len(text) > MAX_TEXT_CHARS:
            raise fail(
                f"text is {len(text):,} characters long (limit {MAX_TEXT_CHARS:,}); "
                "a wrong column or an unclosed quote?",
                config.text_column,
            )
        label = label.strip()
        if not label:
            raise fail("empty label", config.label_column)
        if self.known is not None and label not in self.known:
            raise fail(self._unknown_label(label), config.label_column)
        if record_id is not None and config.id_column is not None:
            if not record_id.strip():
                raise fail("empty id", config.id_column)
            first = self.id_rows.setdefault(record_id, row)
            if first != row:
                raise fail(
                    f"duplicate id {_shorten(record_id)!r} (also in row {first})", config.id_column
                )
            self.ids.append(record_id)
        n = len(self.texts)
        for name, values in self.extras.items():
            values.append(extras.get(name, ""))
        for name, value in extras.items():
            if name not in self.extras:
                self.extras[name] = [""] * n + [value]
        self.texts.append(text)
        self.labels.append(label)

    def _unknown_label(self, label: str) -> str:
        labels = self.config.labels or ()
        shown = ", ".join(labels[:_SHOWN_LABELS])
        if len(labels) > _SHOWN_LABELS:
            shown += f", ... ({len(labels)} labels in all)"
        problem = f"unknown label {_shorten(label)!r} (expected one of: {shown})"
        close = _close_match(label, labels)
        if close is not None:
            problem += f"; did you mean {close!r}?"
        return problem

    def finish(self) -> LabelledTexts:
        if self.config.labels is not None:
            labels = self.config.labels
        else:
            labels = tuple(sorted(set(self.labels)))
            if len(labels) < 2:
                raise DataValidationError(
                    self.path,
                    f"only one label ({_shorten(labels[0])!r}) in the data; a classifier needs "
                    "at least 2 (wrong label column?)",
                    field=self.config.label_column,
                )
        index = {label: i for i, label in enumerate(labels)}
        return LabelledTexts(
            path=self.path,
            texts=tuple(self.texts),
            label_ids=tuple(index[label] for label in self.labels),
            labels=labels,
            ids=None if self.config.id_column is None else tuple(self.ids),
            extra_columns={name: tuple(values) for name, values in self.extras.items()},
        )
