"""PII scrubbing: catches every kind the generator inserts, and leaves ordinary numbers alone."""

from __future__ import annotations

from collections import Counter

import pytest

from client.redaction import PII_KINDS, RedactionConfig, RedactionResult, Redactor
from client.synthetic import SYNTHETIC_PERSON_NAMES, SyntheticConfig, generate_records_with_pii

ALL = Redactor(RedactionConfig(enabled=True, names=SYNTHETIC_PERSON_NAMES))


def _only(kind: str, text: str) -> tuple[str, dict[str, int]]:
    """Redact with every kind enabled and check that only ``kind`` fired."""
    clean, counts = ALL.redact(text)
    assert {k for k, n in counts.items() if n} == {kind}, (text, clean, counts)
    return clean, counts


@pytest.mark.parametrize("seed", [0, 1])
def test_catches_all_generated_pii(seed: int) -> None:
    records = generate_records_with_pii(SyntheticConfig(pii_fraction=0.5, seed=seed))
    with_pii = [(row, inserted) for row, inserted in records if inserted]
    assert len(with_pii) > 1000
    for row, inserted in with_pii:
        clean, counts = ALL.redact(row["text"])
        for kind, raw in inserted:
            assert raw not in clean, (kind, raw, clean)
        for kind, n in Counter(kind for kind, _ in inserted).items():
            assert counts[kind] >= n, (kind, row["text"], clean, counts)


def test_generated_texts_without_pii_are_unchanged() -> None:
    records = generate_records_with_pii(SyntheticConfig(seed=2))
    texts = [row["text"] for row, inserted in records if not inserted]
    assert len(texts) > 1500
    result = ALL.redact_all(texts)
    assert result.texts == tuple(texts)
    assert sum(result.counts.values()) == 0


@pytest.mark.parametrize(
    "text",
    [
        "I paid £250.00 at Tesco at 14:30 and was charged $1,250.75 again.",
        "BP 150/95, HR 112, SpO2 91%, RR 24, T 38.4, GCS 14, pain 8/10.",
        "Your appointment is on 12/03/2025 at 09:15, please arrive early.",
        "The transfer of €2,000 on 2024-05-01 is still pending after 10 days.",
        "Card ending 4821 was declined, reference 552301.",
        "Pt 67M, 3 tablets x 500mg, room 12 bed 4, G2P1 at 32/40.",
        "My account was locked 3 times this week and I was born in the wrong decade for apps.",
        "The account has 2 direct debits; sort code changes soon.",
        "Order 4539 1488 0343 6468 is a Luhn-invalid 16-digit string.",
        "Call back in 10 minutes, extension 4412.",
        "Dial +44 1234 56 for the 8-digit line, or 0800 123 for the short one.",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    clean, counts = ALL.redact(text)
    assert clean == text
    assert set(counts) == set(PII_KINDS)
    assert sum(counts.values()) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Email me at maria.okafor84@example.com please.", "Email me at [EMAIL] please."),
        ("reply to J_Smith+bank@mail.example.co.uk.", "reply to [EMAIL]."),
    ],
)
def test_email(text: str, expected: str) -> None:
    assert _only("email", text)[0] == expected


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "020 7946 0958",
        "07700 900123",
        "(555) 013-2447",
        "555-013-2447",
        "+1 312 555 0123",
        "+33 1 23 45 67 89",
        "+49 30 1234 5678",
        "+353 1 555 0123",
    ],
)
def test_phone(phone: str) -> None:
    assert _only("phone", f"Call me on {phone}, thanks.")[0] == "Call me on [PHONE], thanks."


@pytest.mark.parametrize("card", ["4539 1488 0343 6467", "5555-5555-5555-4444", "4111111111111111"])
def test_card(card: str) -> None:
    assert _only("card", f"Card: {card}.")[0] == "Card: [CARD]."


def test_luhn_invalid_numbers_are_not_cards() -> None:
    invalid = "4539 1488 0343 6468"
    clean, counts = ALL.redact(f"Card: {invalid}.")
    assert clean == f"Card: {invalid}."
    assert counts["card"] == 0
    clean, counts = ALL.redact(f"account {invalid}")
    assert clean == "account [ACCOUNT]"
    assert counts == {**dict.fromkeys(PII_KINDS, 0), "account": 1}


@pytest.mark.parametrize(
    "iban",
    ["GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
)
def test_iban(iban: str) -> None:
    assert _only("iban", f"IBAN {iban} URGENT.")[0] == "IBAN [IBAN] URGENT."


def test_iban_with_bad_check_digits_is_not_an_iban() -> None:
    clean, counts = ALL.redact("IBAN GB83 WEST 1234 5698 7654 32 URGENT.")
    assert counts["iban"] == 0
    assert "GB83 WEST" in clean


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my account 12345678 is locked", "my account [ACCOUNT] is locked"),
        ("acct no. 40-12-34 87654321", "acct no. [ACCOUNT]"),
        ("Account number: 87654321.", "Account number: [ACCOUNT]."),
        ("a/c 00123456", "a/c [ACCOUNT]"),
        ("paid from 40-12-34 87654321 today", "paid from [ACCOUNT] today"),
    ],
)
def test_account(text: str, expected: str) -> None:
    assert _only("account", text)[0] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DOB 12/03/1961.", "DOB [DOB]."),
        ("D.O.B. 12.03.1961", "D.O.B. [DOB]"),
        ("born 4 March 1975", "born [DOB]"),
        ("born on March 4, 1975", "born on [DOB]"),
        ("date of birth: 1988-07-21", "date of birth: [DOB]"),
        ("My date of birth is 4th March 1975.", "My date of birth is [DOB]."),
    ],
)
def test_dob(text: str, expected: str) -> None:
    assert _only("dob", text)[0] == expected


def test_names_are_whole_word_and_case_insensitive() -> None:
    redactor = Redactor(RedactionConfig(enabled=True, names=("Maria Okafor", "Liam O'Connor")))
    clean, counts = redactor.redact("Pt MARIA  okafor and Liam O'Connor; not Mariam Okaforth.")
    assert clean == "Pt [NAME] and [NAME]; not Mariam Okaforth."
    assert counts["name"] == 2
    unnamed = Redactor(RedactionConfig(enabled=True))
    assert unnamed.redact("Maria Okafor")[0] == "Maria Okafor"


def test_only_selected_kinds_are_scrubbed() -> None:
    redactor = Redactor(RedactionConfig(enabled=True, kinds=("email",)))
    text = "x@example.com, 020 7946 0958"
    clean, counts = redactor.redact(text)
    assert clean == "[EMAIL], 020 7946 0958"
    assert counts == {**dict.fromkeys(PII_KINDS, 0), "email": 1}


def test_disabled_config_is_identity() -> None:
    records = generate_records_with_pii(SyntheticConfig(examples_per_institution=50))
    texts = [row["text"] for row, _ in records]
    result = Redactor(RedactionConfig(names=SYNTHETIC_PERSON_NAMES)).redact_all(texts)
    assert result.texts == tuple(texts)
    assert dict(result.counts) == dict.fromkeys(PII_KINDS, 0)


def test_redact_all_sums_counts() -> None:
    result = ALL.redact_all(["a@example.com", "b@example.com and DOB 01/02/1990", "nothing"])
    assert isinstance(result, RedactionResult)
    assert result.texts == ("[EMAIL]", "[EMAIL] and DOB [DOB]", "nothing")
    assert dict(result.counts) == {**dict.fromkeys(PII_KINDS, 0), "email": 2, "dob": 1}
    with pytest.raises(TypeError):
        result.counts["email"] = 0  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ("email", "ssn")}, "'ssn'"),
        ({"kinds": ("email", "email")}, "duplicate"),
        ({"names": ("Maria Okafor", " ")}, "names"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedactionConfig(**kwargs)  # type: ignore[arg-type]
