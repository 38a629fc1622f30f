"""The embedded synthetic data set: deterministic, varied, skewed per institution, well formed."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from client.redaction import PII_KINDS
from client.synthetic import (
    BANK_LABELS,
    COLUMNS,
    HOSPITAL_LABELS,
    SYNTHETIC_PERSON_NAMES,
    SyntheticConfig,
    generate_records,
    generate_records_with_pii,
    labels_for,
    write_csv,
    write_jsonl,
)

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return generate_records()


def _label_mixes(rows: list[dict[str, str]]) -> dict[str, Counter[str]]:
    mixes: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        mixes[row["institution"]][row["label"]] += 1
    return mixes


def _total_variation(a: Counter[str], b: Counter[str]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def _min_pairwise_tv(rows: list[dict[str, str]], domain: str) -> float:
    mixes = _label_mixes(rows)
    names = sorted(name for name in mixes if name.startswith(f"{domain}_"))
    return min(_total_variation(mixes[x], mixes[y]) for x, y in itertools.combinations(names, 2))


def test_label_sets() -> None:
    assert len(BANK_LABELS) >= 8
    assert len(HOSPITAL_LABELS) >= 8
    assert not set(BANK_LABELS) & set(HOSPITAL_LABELS)
    assert all(SNAKE_CASE.match(label) for label in BANK_LABELS + HOSPITAL_LABELS)
    assert labels_for(("bank", "hospital")) == BANK_LABELS + HOSPITAL_LABELS
    assert labels_for(("hospital", "bank")) == BANK_LABELS + HOSPITAL_LABELS
    assert labels_for(("hospital",)) == HOSPITAL_LABELS
    with pytest.raises(ValueError, match="'shop'"):
        labels_for(("shop",))


def test_person_names_are_full_names() -> None:
    assert len(SYNTHETIC_PERSON_NAMES) == len(set(SYNTHETIC_PERSON_NAMES)) >= 20
    assert all(len(name.split()) >= 2 for name in SYNTHETIC_PERSON_NAMES)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert generate_records(SyntheticConfig(seed=3)) == generate_records(SyntheticConfig(seed=3))
    assert generate_records(SyntheticConfig(seed=3)) != generate_records(SyntheticConfig(seed=4))


def test_same_config_gives_byte_identical_files(tmp_path: Path) -> None:
    config = SyntheticConfig(examples_per_institution=50, seed=9)
    write_csv(generate_records(config), tmp_path / "a.csv")
    write_csv(generate_records(config), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_default_size_ids_and_columns(rows: list[dict[str, str]]) -> None:
    assert 3000 <= len(rows) <= 4200
    assert all(tuple(row) == COLUMNS for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert all(row["id"].startswith(row["institution"] + "-") for row in rows)
    assert {row["institution"] for row in rows} == {
        "bank_a", "bank_b", "bank_c", "hospital_a", "hospital_b", "hospital_c",
    }  # fmt: skip


def test_labels_match_domains_and_all_appear(rows: list[dict[str, str]]) -> None:
    by_domain = {"bank": set(BANK_LABELS), "hospital": set(HOSPITAL_LABELS)}
    assert all(row["label"] in by_domain[row["domain"]] for row in rows)
    assert all(row["institution"].startswith(row["domain"] + "_") for row in rows)
    counts = Counter(row["label"] for row in rows)
    assert set(counts) == set(BANK_LABELS + HOSPITAL_LABELS)
    assert min(counts.values()) >= 5


def test_texts_are_varied_and_short(rows: list[dict[str, str]]) -> None:
    texts = [row["text"] for row in rows]
    assert len(set(texts)) > 0.95 * len(texts)
    assert all(10 <= len(text) <= 400 for text in texts)
    for label in BANK_LABELS + HOSPITAL_LABELS:
        label_texts = [row["text"] for row in rows if row["label"] == label]
        openings = {" ".join(text.split()[:3]) for text in label_texts}
        assert len(openings) >= 6, label


def test_vocabulary_is_shared_across_labels(rows: list[dict[str, str]]) -> None:
    """Labels are not given away by one keyword: 'card' and 'pain' span several labels."""
    with_card = {row["label"] for row in rows if "card" in row["text"].lower()}
    with_pain = {row["label"] for row in rows if "pain" in row["text"].lower()}
    assert len(with_card & set(BANK_LABELS)) >= 4
    assert len(with_pain & set(HOSPITAL_LABELS)) >= 4


def test_institutions_differ_in_label_mix_and_size(rows: list[dict[str, str]]) -> None:
    for domain in ("bank", "hospital"):
        assert _min_pairwise_tv(rows, domain) > 0.2
    sizes = Counter(row["institution"] for row in rows)
    assert len({sizes[f"bank_{x}"] for x in "abc"}) == 3
    assert len({sizes[f"hospital_{x}"] for x in "abc"}) == 3


def test_label_skew_controls_heterogeneity() -> None:
    flat = generate_records(SyntheticConfig(label_skew=1000.0, examples_per_institution=1000))
    skewed = generate_records(SyntheticConfig(label_skew=0.1, examples_per_institution=1000))
    for domain in ("bank", "hospital"):
        assert _min_pairwise_tv(flat, domain) < 0.1
        assert _min_pairwise_tv(skewed, domain) > 0.3


def test_pii_column_and_fraction(rows: list[dict[str, str]]) -> None:
    with_pii = [row for row in rows if row["pii"]]
    assert 0.3 <= len(with_pii) / len(rows) <= 0.5
    kinds = Counter(kind for row in with_pii for kind in row["pii"].split(","))
    assert set(kinds) == set(PII_KINDS)
    assert not generate_records_with_pii(SyntheticConfig(pii_fraction=0.0, seed=1))[0][1]
    none = generate_records(SyntheticConfig(pii_fraction=0.0, examples_per_institution=100))
    assert all(row["pii"] == "" for row in none)


def test_inserted_pii_is_in_the_text_and_matches_the_column() -> None:
    records = generate_records_with_pii(SyntheticConfig(pii_fraction=1.0, seed=5))
    assert [row for row, _ in records] == generate_records(
        SyntheticConfig(pii_fraction=1.0, seed=5)
    )
    for row, inserted in records:
        assert inserted
        assert row["pii"] == ",".join(kind for kind, _ in inserted)
        for _, raw in inserted:
            assert raw in row["text"]


def test_inserted_card_numbers_and_ibans_are_valid() -> None:
    records = generate_records_with_pii(SyntheticConfig(pii_fraction=1.0, seed=2))
    inserted = [pair for _, pairs in records for pair in pairs]
    cards = [raw for kind, raw in inserted if kind == "card"]
    ibans = [raw for kind, raw in inserted if kind == "iban"]
    assert cards and ibans
    for card in cards:
        digits = [int(c) for c in reversed(card) if c.isdigit()]
        assert len(digits) == 16
        doubled = [d * 2 - 9 if d > 4 else d * 2 for d in digits[1::2]]
        assert (sum(digits[0::2]) + sum(doubled)) % 10 == 0, card
    for iban in ibans:
        compact = iban.replace(" ", "")
        rearranged = compact[4:] + compact[:4]
        assert int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1, iban


def test_smaller_configs(tmp_path: Path) -> None:
    rows = generate_records(
        SyntheticConfig(
            domains=("hospital",), institutions_per_domain=5, examples_per_institution=40
        )
    )
    assert {row["domain"] for row in rows} == {"hospital"}
    assert len({row["institution"] for row in rows}) == 5
    assert len(rows) == 5 * 40  # sizes spread evenly around the mean
    single = generate_records(
        SyntheticConfig(institutions_per_domain=1, examples_per_institution=1)
    )
    assert len(single) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domains": ()}, "domains"),
        ({"domains": ("bank", "shop")}, "'shop'"),
        ({"domains": ("bank", "bank")}, "repeat"),
        ({"institutions_per_domain": 0}, "institutions_per_domain"),
        ({"institutions_per_domain": 27}, "institutions_per_domain"),
        ({"examples_per_institution": 0}, "examples_per_institution"),
        ({"examples_per_institution": 10.0}, "examples_per_institution"),
        ({"pii_fraction": 1.5}, "pii_fraction"),
        ({"pii_fraction": -0.1}, "pii_fraction"),
        ({"label_skew": 0.0}, "label_skew"),
        ({"label_skew": float("inf")}, "label_skew"),
        ({"label_skew": float("nan")}, "label_skew"),
        ({"seed": True}, "seed"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]


def test_csv_round_trip_is_atomic(tmp_path: Path) -> None:
    rows = generate_records(SyntheticConfig(examples_per_institution=30, seed=1))
    path = tmp_path / "data.csv"
    path.write_text("stale contents\n", encoding="utf-8")
    write_csv(rows, path)
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        assert list(reader) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["data.csv"]


def test_jsonl_round_trip_is_atomic(tmp_path: Path) -> None:
    rows = generate_records(SyntheticConfig(examples_per_institution=30, seed=1))
    path = tmp_path / "data.jsonl"
    write_jsonl(rows, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(KeyError):
        write_csv([{"id": "x"}], path)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.csv"]
