"""Loading labelled texts: happy paths per format, and a precise error for every bad input."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from client.data_loading import (
    MAX_TEXT_CHARS,
    DataConfig,
    DataValidationError,
    check_enough_examples,
    load_labelled_texts,
)

BANKING77 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"
ABC = DataConfig(labels=("a", "b", "c"))


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """``content`` written verbatim (str as UTF-8, no newline translation) to ``name``."""
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def fails(path: Path, where: str, problem: str) -> str:
    """A ``match`` pattern for ``"<path><where>: <problem>..."`` (``where`` like ", row 2")."""
    return "^" + re.escape(f"{path}{where}: {problem}")


# ------------------------------------------------------------------------------ happy paths


def test_csv_with_given_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bank.csv",
        "text,label,institution\n"
        "  card lost ,b,north\n"
        '"payment ""pending"", still",  c ,south\n'
        'he said "hi",a,north\n',
    )
    data = load_labelled_texts(path, ABC)
    assert data.path == path
    assert data.texts == ("  card lost ", 'payment "pending", still', 'he said "hi"')  # verbatim
    assert data.labels == ("a", "b", "c")
    assert data.label_ids == (1, 2, 0)  # labels stripped, ids index the given order
    assert data.ids is None
    assert dict(data.extra_columns) == {"institution": ("north", "south", "north")}
    assert len(data) == 3


def test_inferred_labels_are_sorted_and_ids_consistent(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,label\nt1,zeta\nt2,alpha\nt3,mid\nt4,alpha\n")
    data = load_labelled_texts(path, DataConfig())
    assert data.labels == ("alpha", "mid", "zeta")
    assert [data.labels[i] for i in data.label_ids] == ["zeta", "alpha", "mid", "alpha"]
    assert data.label_counts() == {"alpha": 2, "mid": 1, "zeta": 1}


def test_label_counts_cover_every_given_label(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,label\nt1,c\nt2,c\nt3,a\n")
    assert load_labelled_texts(path, ABC).label_counts() == {"a": 1, "b": 0, "c": 2}


def test_tsv_is_tab_delimited_without_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, "x.tsv", 'text\tlabel\nhe said "hi\tb\n"quoted, comma"\ta\n')
    data = load_labelled_texts(path, ABC)
    assert data.texts == ('he said "hi', '"quoted, comma"')
    assert data.label_ids == (1, 0)


def test_jsonl_with_int_labels_blank_lines_and_extra_keys(tmp_path: Path) -> None:
    lines = [
        {"text": "first", "label": 2, "site": "a"},
        {"text": "second", "label": "10", "score": 0.5},
        {"text": "third", "label": " 2 ", "site": None},
    ]
    body = "\n".join(json.dumps(r) for r in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n\n"
    data = load_labelled_texts(write(tmp_path, "x.jsonl", body), DataConfig())
    assert data.texts == ("first", "second", "third")
    assert data.labels == ("10", "2")  # ints become strings; sorted as strings
    assert data.label_ids == (1, 0, 1)
    assert dict(data.extra_columns) == {"site": ("a", "", ""), "score": ("", "0.5", "")}


def test_json_suffix_is_read_as_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", '{"text": "t1", "label": "a"}\n{"text": "t2", "label": "b"}\n')
    assert load_labelled_texts(path, ABC).label_ids == (0, 1)


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", "text,label\nt1,a\nt2,b\n")
    data = load_labelled_texts(path, DataConfig(labels=("a", "b"), file_format="csv"))
    assert data.texts == ("t1", "t2")


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", b"\xef\xbb\xbftext,label\r\ncaf\xc3\xa9,a\r\nt2,b\r\n")
    data = load_labelled_texts(path, ABC)
    assert data.texts == ("café", "t2")
    assert data.label_ids == (0, 1)
    jsonl = write(tmp_path, "x.jsonl", b'\xef\xbb\xbf{"text": "t", "label": "a"}\r\n')
    assert load_labelled_texts(jsonl, ABC).texts == ("t",)


def test_quoted_multiline_text_and_later_rows_name_their_line(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", 'text,label\n"line one\nline two\r\nthree",a\nt2,b\n')
    assert load_labelled_texts(good, ABC).texts == ("line one\nline two\r\nthree", "t2")
    bad = write(tmp_path, "bad.csv", 'text,label\n"line one\nline two",a\nt2,refund\n')
    with pytest.raises(
        DataValidationError,
        match=fails(bad, ", row 2 (line 4), column 'label'", "unknown label 'refund'"),
    ) as info:
        load_labelled_texts(bad, ABC)
    assert (info.value.row, info.value.line, info.value.field) == (2, 4, "label")


def test_ids_are_kept_and_not_extra(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "id,text,label\nr1,t1,a\nr2,t2,b\n")
    data = load_labelled_texts(path, DataConfig(id_column="id", labels=("a", "b")))
    assert data.ids == ("r1", "r2")
    assert dict(data.extra_columns) == {}


# ------------------------------------------------------------------------------- file level


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataValidationError, match=fails(missing, "", "file not found")) as info:
        load_labelled_texts(missing, ABC)
    assert info.value.path == missing and info.value.row is None
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataValidationError, match=fails(folder, "", "is a directory")):
        load_labelled_texts(folder, ABC)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "bank.xlsx", b"PK\x03\x04")
    with pytest.raises(
        DataValidationError, match=fails(path, "", "unsupported file type ('.xlsx')")
    ):
        load_labelled_texts(path, ABC)


def test_undecodable_bytes_name_line_and_byte_offset(tmp_path: Path) -> None:
    # "text,label\n" is 11 bytes, "ok,a\n" 5, "caf" 3: the Latin-1 é sits at offset 19.
    path = write(tmp_path, "x.csv", b"text,label\nok,a\ncaf\xe9,b\n")
    problem = "not valid UTF-8: byte 0xe9 at byte offset 19"
    with pytest.raises(DataValidationError, match=fails(path, ", line 3", problem)) as info:
        load_labelled_texts(path, ABC)
    assert info.value.line == 3


def test_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = write(tmp_path, "x.tsv", "text\tlabel\nt\ta\n".encode("utf-16"))
    with pytest.raises(DataValidationError, match=fails(path, "", "the file is UTF-16 encoded")):
        load_labelled_texts(path, ABC)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.csv", "", "empty dataset: the file is empty"),
        ("bom_only.csv", "\ufeff\n\n", "empty dataset: the file is empty"),
        ("header.csv", "text,label\n", "empty dataset: a header but no data rows"),
        ("blank_rows.csv", "text,label\n\n\r\n", "empty dataset: a header but no data rows"),
        ("header.tsv", "text\tlabel\n", "empty dataset: a header but no data rows"),
        ("empty.jsonl", "\n  \n", "empty dataset: no records"),
    ],
)
def test_empty_datasets(tmp_path: Path, name: str, content: str, problem: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataValidationError, match=fails(path, "", problem)):
        load_labelled_texts(path, ABC)


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,category\nt,a\n")
    problem = "missing column 'label' (columns found: 'text', 'category')"
    with pytest.raises(DataValidationError, match=fails(path, "", problem)):
        load_labelled_texts(path, ABC)


def test_missing_column_suggests_a_close_name_or_the_delimiter(tmp_path: Path) -> None:
    cased = write(tmp_path, "cased.csv", "Text,label\nt,a\n")
    with pytest.raises(DataValidationError, match=r"missing column 'text' .*did you mean 'Text'\?"):
        load_labelled_texts(cased, ABC)
    semicolons = write(tmp_path, "semi.csv", "text;label\nt;a\n")
    with pytest.raises(
        DataValidationError, match=r"found: 'text;label'\); is the file delimited by ';'"
    ):
        load_labelled_texts(semicolons, ABC)


def test_missing_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,label\nt,a\n")
    problem = "missing column 'note_id' (columns found: 'text', 'label')"
    with pytest.raises(DataValidationError, match=fails(path, "", problem)):
        load_labelled_texts(path, DataConfig(id_column="note_id", labels=("a", "b")))


def test_duplicate_header_names(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,label,text\nt,a,u\n")
    problem = "duplicate column names in the header: 'text'"
    with pytest.raises(DataValidationError, match=fails(path, "", problem)):
        load_labelled_texts(path, ABC)


# -------------------------------------------------------------------------------- row level


def test_unknown_label_shows_label_and_expected_set(tmp_path: Path) -> None:
    path = write(tmp_path, "bank.csv", "text,label\nt1,a\nt2,refund\n")
    problem = "unknown label 'refund' (expected one of: a, b, c)"
    with pytest.raises(DataValidationError, match=fails(path, ", row 2, column 'label'", problem)):
        load_labelled_texts(path, ABC)


def test_unknown_label_truncates_a_long_set_and_suggests(tmp_path: Path) -> None:
    labels = tuple(f"intent_{i:02d}" for i in range(77))
    path = write(tmp_path, "x.csv", "text,label\nt1,Intent_05\n")
    with pytest.raises(DataValidationError) as info:
        load_labelled_texts(path, DataConfig(labels=labels))
    message = str(info.value)
    assert "intent_09, ... (77 labels in all)" in message
    assert "intent_10" not in message
    assert message.endswith("did you mean 'intent_05'?")


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        ("t1,a\n,b\n", ", row 2, column 'text'", "empty text"),
        ('t1,a\n"  \t ",b\n', ", row 2, column 'text'", "text is whitespace only"),
        ("t1,a\nt2, \n", ", row 2, column 'label'", "empty label"),
        ("t1,a\nt2,b,extra\n", ", row 2", "3 fields, but the header has 2 columns"),
        ("t1\nt2,b\n", ", row 1", "1 fields, but the header has 2 columns"),
        ("\nt1,a\n\nt2,b,x\n", ", row 2 (line 5)", "3 fields, but the header has 2 columns"),
        ('t1,a\n"t2,b\nt3,c\n', ", row 2", "unclosed quote"),
        ('t1,a\n"t2"x,b\n', ", row 2", "malformed quoting"),
    ],
)
def test_bad_csv_rows(tmp_path: Path, body: str, where: str, problem: str) -> None:
    path = write(tmp_path, "x.csv", "text,label\n" + body)
    with pytest.raises(DataValidationError, match=fails(path, where, problem)):
        load_labelled_texts(path, ABC)


def test_bad_tsv_row_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "x.tsv", "text\tlabel\nt1\ta\nt2\twith tab\tb\n")
    problem = "3 fields, but the header has 2 columns (a tab inside a text?)"
    with pytest.raises(DataValidationError, match=fails(path, ", row 2", problem)):
        load_labelled_texts(path, ABC)


def test_overlong_text(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", f"text,label\nt1,a\n{'x' * (MAX_TEXT_CHARS + 1)},b\n")
    problem = f"text is {MAX_TEXT_CHARS + 1:,} characters long (limit {MAX_TEXT_CHARS:,})"
    with pytest.raises(DataValidationError, match=fails(path, ", row 2, column 'text'", problem)):
        load_labelled_texts(path, ABC)
    exactly = write(tmp_path, "ok.csv", f"text,label\n{'x' * MAX_TEXT_CHARS},a\n")
    assert len(load_labelled_texts(exactly, ABC).texts[0]) == MAX_TEXT_CHARS


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "id,text,label\nr1,t1,a\nr2,t2,b\nr1,t3,c\n")
    problem = "duplicate id 'r1' (also in row 1)"
    with pytest.raises(DataValidationError, match=fails(path, ", row 3, column 'id'", problem)):
        load_labelled_texts(path, DataConfig(id_column="id", labels=("a", "b", "c")))


def test_empty_id(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "id,text,label\nr1,t1,a\n  ,t2,b\n")
    with pytest.raises(DataValidationError, match=fails(path, ", row 2, column 'id'", "empty id")):
        load_labelled_texts(path, DataConfig(id_column="id", labels=("a", "b")))


def test_inferred_single_label_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "text,label\nt1,a\nt2,a\n")
    problem = "only one label ('a') in the data"
    with pytest.raises(DataValidationError, match=fails(path, ", column 'label'", problem)):
        load_labelled_texts(path, DataConfig())


@pytest.mark.parametrize(
    ("line", "where", "problem"),
    [
        ("{not json}", ", row 2 (line 3)", "not valid JSON (Expecting property name"),
        ('["t", "a"]', ", row 2 (line 3)", "expected a JSON object per line, got an array"),
        ('{"label": "a"}', ", row 2 (line 3), column 'text'", "missing column 'text' (keys in"),
        ('{"text": 3, "label": "a"}', ", row 2 (line 3), column 'text'", "text must be a string"),
        ('{"text": "", "label": "a"}', ", row 2 (line 3), column 'text'", "empty text"),
        ('{"text": "t"}', ", row 2 (line 3), column 'label'", "missing column 'label'"),
        ('{"text": "t", "label": 1.0}', ", row 2 (line 3), column 'label'", "label must be a"),
        ('{"text": "t", "label": true}', ", row 2 (line 3), column 'label'", "label must be a"),
        ('{"text": "t", "label": null}', ", row 2 (line 3), column 'label'", "label must be a"),
        ('{"text": "t", "label": "z"}', ", row 2 (line 3), column 'label'", "unknown label 'z'"),
    ],
)
def test_bad_jsonl_records(tmp_path: Path, line: str, where: str, problem: str) -> None:
    path = write(tmp_path, "x.jsonl", '{"text": "ok", "label": "a"}\n\n' + line + "\n")
    with pytest.raises(DataValidationError, match=fails(path, where, problem)):
        load_labelled_texts(path, ABC)


def test_jsonl_label_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", '{"text": "t", "label": 1.5}\n')
    with pytest.raises(DataValidationError, match=r"got number 1\.5$"):
        load_labelled_texts(path, ABC)


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", '[\n  {"text": "t", "label": "a"}\n]\n')
    with pytest.raises(DataValidationError, match=fails(path, ", row 1", "not valid JSON")) as info:
        load_labelled_texts(path, ABC)
    assert "fedlora reads JSON Lines" in str(info.value)


def test_jsonl_duplicate_int_ids(tmp_path: Path) -> None:
    body = "".join(json.dumps({"id": i, "text": "t", "label": "a"}) + "\n" for i in (7, 8, 7))
    path = write(tmp_path, "x.jsonl", body)
    problem = "duplicate id '7' (also in row 1)"
    with pytest.raises(DataValidationError, match=fails(path, ", row 3, column 'id'", problem)):
        load_labelled_texts(path, DataConfig(id_column="id", labels=("a", "b")))


def test_error_attributes_and_pickling() -> None:
    error = DataValidationError(Path("data/bank.csv"), "unknown label 'refund'", 17, "label")
    assert str(error) == "data/bank.csv, row 17, column 'label': unknown label 'refund'"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.row, clone.field, clone.problem, clone.line, str(clone)) == (
        error.path,
        17,
        "label",
        "unknown label 'refund'",
        None,
        str(error),
    )


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"text_column": " "}, "text_column must be a non-empty column name"),
        ({"label_column": "text"}, "text_column and label_column are both 'text'"),
        ({"id_column": "label"}, "label_column and id_column are both 'label'"),
        ({"labels": ("a",)}, "a classifier needs at least 2 labels, got 1"),
        ({"labels": ("a", "")}, "labels[1] must be a non-empty string"),
        ({"labels": ("a", " b")}, "labels[1] ' b' has surrounding whitespace"),
        ({"labels": ("a", "b", "a")}, "duplicate labels: 'a'"),
        ({"file_format": "xlsx"}, "file_format must be one of auto, csv, tsv, jsonl"),
    ],
)
def test_config_is_validated(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        DataConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- batch sizes


def test_check_enough_examples() -> None:
    check_enough_examples(Path("data/x.csv"), 64, 64)
    check_enough_examples(Path("data/x.csv"), 128, 64, min_batches=2)
    message = (
        "data/x.csv: only 12 examples, too few for expected batch size 64 "
        "(sampling rate 64/12 > 1); lower --batch-size or add data"
    )
    with pytest.raises(DataValidationError, match="^" + re.escape(message) + "$") as info:
        check_enough_examples(Path("data/x.csv"), 12, 64)
    assert info.value.row is None
    with pytest.raises(DataValidationError, match=r"only 127 examples, .*needs at least 128"):
        check_enough_examples(Path("data/x.csv"), 127, 64, min_batches=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        check_enough_examples(Path("data/x.csv"), 12, 0)


# -------------------------------------------------------------------------------- real data


def test_banking77_train_file_loads_as_is() -> None:
    path = BANKING77 / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = load_labelled_texts(path, DataConfig(label_column="category"))
    assert len(data) == 10_003
    assert len(data.labels) == 77
    counts = data.label_counts()
    assert min(counts.values()) == counts["contactless_not_working"] == 35
    assert max(counts.values()) == counts["card_payment_fee_charged"] == 187
    categories = BANKING77 / "categories.json"
    if categories.is_file():
        fixed = tuple(json.loads(categories.read_text(encoding="utf-8")))
        given = load_labelled_texts(path, DataConfig(label_column="category", labels=fixed))
        assert sorted(fixed) == list(data.labels)
        assert [given.labels[i] for i in given.label_ids] == [
            data.labels[i] for i in data.label_ids
        ]
