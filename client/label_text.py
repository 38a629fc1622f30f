"""The public text of each class, from which the prototype head's class vectors start.

Why it exists: the label set is public in a federation, and so may be a short description of
each label. Turning that text into the head's initial class vectors is the zero-shot prior
(see :mod:`client.prototype_head`); this module decides which text stands for each label and
reads optional descriptions from a file (JSON object, or CSV/TSV), naming the file, row and
field of anything wrong.

Without a description a label stands for itself with ``_`` and ``-`` read as spaces
(``fee_dispute`` → ``fee dispute``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from client.data_loading import DataValidationError

DESCRIPTION_COLUMNS = ("label", "description")


def label_as_text(label: str) -> str:
    """A label name as words: ``_`` and ``-`` become spaces, runs of spaces collapse."""
    return " ".join(label.replace("_", " ").replace("-", " ").split()) or label


def label_texts(
    labels: Sequence[str], descriptions: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The text that stands for each label, in label order.

    Parameters
    ----------
    labels
        The label set, in the order of the model's classes.
    descriptions
        Optional label → description; labels without one use :func:`label_as_text`.
    """
    given = descriptions or {}
    return tuple(given.get(label) or label_as_text(label) for label in labels)


def _rows_from_json(path: Path, text: str) -> list[tuple[int | None, str, str]]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataValidationError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(content, dict):
        raise DataValidationError(path, "expected a JSON object {label: description}")
    rows: list[tuple[int | None, str, str]] = []
    for label, description in content.items():
        if not isinstance(description, str):
            raise DataValidationError(path, "the description must be a string", field=label)
        rows.append((None, label, description))
    return rows


def _rows_from_csv(path: Path, text: str) -> list[tuple[int | None, str, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    header = list(reader.fieldnames or [])
    missing = [c for c in DESCRIPTION_COLUMNS if c not in header]
    if missing and len(header) != 2:
        raise DataValidationError(
            path,
            f"missing column(s) {', '.join(missing)}; the header must name "
            f"{' and '.join(DESCRIPTION_COLUMNS)} (or the file have exactly two columns: "
            "label, then description)",
        )
    label, description = DESCRIPTION_COLUMNS if not missing else header
    return [
        (row_number, (row[label] or "").strip(), (row[description] or "").strip())
        for row_number, row in enumerate(reader, start=1)
    ]


def read_label_descriptions(path: Path, labels: Sequence[str]) -> dict[str, str]:
    """Read label descriptions from a JSON object or a CSV/TSV with ``label,description``.

    Parameters
    ----------
    path
        The file (``.json``: ``{"fee_dispute": "a customer contests a fee", ...}``; other
        suffixes: CSV, or TSV for ``.tsv``, whose header names ``label`` and
        ``description``, or that has exactly two columns, label first, e.g. a data set's
        ``condition_label,condition_name`` file).
    labels
        The label set; every described label must belong to it. Labels left out keep their
        name as text.

    Raises
    ------
    DataValidationError
        Unreadable file, missing columns, an empty description, an unknown or repeated label;
        naming the file, row and field.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataValidationError(path, f"cannot read label descriptions: {exc}") from exc
    rows = (_rows_from_json if path.suffix.lower() == ".json" else _rows_from_csv)(path, text)
    known = set(labels)
    result: dict[str, str] = {}
    for row, label, description in rows:
        if label not in known:
            raise DataValidationError(
                path,
                f"unknown label {label!r} (expected one of: {', '.join(labels)})",
                row=row,
                field="label",
            )
        if label in result:
            raise DataValidationError(path, f"label {label!r} described twice", row=row)
        if not description.strip():
            raise DataValidationError(
                path, f"empty description for {label!r}", row=row, field="description"
            )
        result[label] = description.strip()
    if not result:
        raise DataValidationError(path, "no label descriptions found")
    return result
