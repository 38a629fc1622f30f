"""Optional PII scrubbing of texts before they are tokenized on a node.

Support messages and triage notes carry e-mail addresses, phone numbers, card numbers, IBANs,
account numbers, dates of birth and names. DP-SGD bounds what a trained adapter can reveal
about any one record, but nothing stops a tokenizer vocabulary, a debug dump or an error
message from showing a raw text; scrubbing first keeps such strings off the training path
altogether. Each kind of PII is replaced by a placeholder token (``[EMAIL]``, ``[CARD]``, ...)
so that the model still sees *that* something was there.

Rules run in a fixed order chosen so that long digit strings are claimed by the most specific
kind first: e-mail, IBAN (mod-97 checked), card (Luhn checked), account (keyword or UK sort
code), date of birth (keyword), phone (9 to 15 digits), then configured person names. Numbers
that are none of these (amounts, times, vitals, short references) are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "iban", "account", "dob", "name")

PLACEHOLDERS: Mapping[str, str] = MappingProxyType(
    {kind: f"[{kind.upper()}]" for kind in PII_KINDS}
)

# Lengths of IBANs for countries whose length is checked; other countries need 15..34 chars.
_IBAN_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "AT": 20, "BE": 16, "CH": 21, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27,
        "GB": 22, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
        "SE": 24,
    }
)  # fmt: skip


@dataclass(frozen=True)
class RedactionConfig:
    """What to scrub.

    Parameters
    ----------
    enabled
        When false, :class:`Redactor` returns texts unchanged (and counts nothing).
    names
        Person names to replace by ``[NAME]``, matched case-insensitively as whole words, with
        any run of whitespace between their parts. Names are only caught when listed here.
    kinds
        The PII kinds to scrub, a subset of :data:`PII_KINDS`.
    """

    enabled: bool = False
    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = PII_KINDS

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        if not isinstance(self.names, tuple):
            raise ValueError(f"names must be a tuple of strings, got {type(self.names).__name__}")
        for name in self.names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"names must be non-blank strings, got {name!r}")
        if not isinstance(self.kinds, tuple):
            raise ValueError(f"kinds must be a tuple of strings, got {type(self.kinds).__name__}")
        for kind in self.kinds:
            if kind not in PII_KINDS:
                raise ValueError(f"unknown PII kind {kind!r}; expected one of {PII_KINDS}")
        duplicates = sorted({kind for kind in self.kinds if self.kinds.count(kind) > 1})
        if duplicates:
            raise ValueError(f"duplicate PII kinds in kinds: {duplicates}")


@dataclass(frozen=True)
class RedactionResult:
    """Scrubbed texts and how many replacements of each kind were made.

    Parameters
    ----------
    texts
        The texts, in input order.
    counts
        Replacements per kind; every kind of :data:`PII_KINDS` is present (0 if none).
    """

    texts: tuple[str, ...]
    counts: Mapping[str, int]


# A replacer gets a candidate match and returns its replacement, or None to keep it as is.
_Replacer = Callable[[re.Match[str]], str | None]


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    replace: _Replacer


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _iban_valid(compact: str) -> bool:
    country = compact[:2]
    expected = _IBAN_LENGTHS.get(country)
    if expected is not None and len(compact) != expected:
        return False
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digit_count(text: str) -> int:
    return sum(char.isdigit() for char in text)


def _whole(placeholder: str) -> _Replacer:
    def replace(match: re.Match[str]) -> str | None:
        return placeholder

    return replace


def _after_keyword(placeholder: str) -> _Replacer:
    """Keep the keyword group ``kw`` (if it matched) and replace the rest."""

    def replace(match: re.Match[str]) -> str | None:
        return (match.group("kw") or "") + placeholder

    return replace


def _card(placeholder: str) -> _Replacer:
    def replace(match: re.Match[str]) -> str | None:
        digits = "".join(char for char in match.group(0) if char.isdigit())
        return placeholder if 13 <= len(digits) <= 19 and _luhn_valid(digits) else None

    return replace


def _phone(placeholder: str, low: int, high: int) -> _Replacer:
    def replace(match: re.Match[str]) -> str | None:
        return placeholder if low <= _digit_count(match.group(0)) <= high else None

    return replace


def _iban(placeholder: str) -> _Replacer:
    """Replace the longest valid IBAN at the start of a greedy candidate, keep the tail."""

    def replace(match: re.Match[str]) -> str | None:
        raw = match.group(0)
        ends = [index + 1 for index, char in enumerate(raw) if char != " "]
        for count in range(len(ends), 14, -1):
            end = ends[count - 1]
            tail = raw[end:]
            if tail and not tail.startswith(" "):
                continue  # would cut a group in half
            if _iban_valid(raw[:end].replace(" ", "")):
                return placeholder + tail
        return None

    return replace


_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"
    r"|\d{4}-\d{1,2}-\d{1,2}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}"
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})"
)

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_CARD = re.compile(
    r"(?<![\w+])(?<!\d[ -])"
    r"(?:\d{13,19}"
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|\d{4}([ -])\d{6}\2\d{4,5})"
    r"(?!\w)(?![ -]\d)"
)
_ACCOUNT = re.compile(
    r"(?P<kw>\b(?:account|acct|a/c|sort\s+code)\.?(?:\s+(?:no|number|nr|num)\.?)?"
    r"(?:\s+(?:is|was))?\s*[:#]?\s*)"
    r"(?:\d{2}-\d{2}-\d{2}(?:[ ,/]+\d{8})?|\d{4}(?:[ -]\d{4}){2,4}|\d{6,18})(?![\w-])"
    r"|(?<![\w-])\d{2}-\d{2}-\d{2}[ ,/]+\d{8}(?![\w-])",
    re.IGNORECASE,
)
_DOB = re.compile(
    r"(?P<kw>(?:\bd\.?o\.?b\b\.?|\bdate\s+of\s+birth\b|\bborn\b)"
    r"\s*[:=-]?\s*(?:(?:is|was|on)\s+)?)"
    rf"{_DATE}(?!\d)",
    re.IGNORECASE,
)
_PHONE_INTERNATIONAL = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}(?![\w-])"
)
_PHONE_NORTH_AMERICAN = re.compile(
    r"(?<![\w(+-])(?<!\d[ .])(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])(?![ .]\d)"
)
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+-])(?<!\d[ .])0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}(?![\w-])(?![ .]\d)"
)


def _name_pattern(names: tuple[str, ...]) -> re.Pattern[str] | None:
    if not names:
        return None
    variants = sorted({r"\s+".join(map(re.escape, name.split())) for name in names}, key=len)
    alternation = "|".join(reversed(variants))  # longest first
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def _rules(config: RedactionConfig) -> tuple[_Rule, ...]:
    """The rules for ``config``'s kinds, in application order."""
    p = PLACEHOLDERS
    rules = [
        _Rule("email", _EMAIL, _whole(p["email"])),
        _Rule("iban", _IBAN, _iban(p["iban"])),
        _Rule("card", _CARD, _card(p["card"])),
        _Rule("account", _ACCOUNT, _after_keyword(p["account"])),
        _Rule("dob", _DOB, _after_keyword(p["dob"])),
        _Rule("phone", _PHONE_INTERNATIONAL, _phone(p["phone"], 9, 15)),
        _Rule("phone", _PHONE_NORTH_AMERICAN, _phone(p["phone"], 10, 10)),
        _Rule("phone", _PHONE_NATIONAL, _phone(p["phone"], 10, 11)),
    ]
    names = _name_pattern(config.names)
    if names is not None:
        rules.append(_Rule("name", names, _whole(p["name"])))
    return tuple(rule for rule in rules if rule.kind in config.kinds)


def _apply(rule: _Rule, text: str) -> tuple[str, int]:
    hits = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal hits
        replacement = rule.replace(match)
        if replacement is None:
            return match.group(0)
        hits += 1
        return replacement

    return rule.pattern.sub(substitute, text), hits


class Redactor:
    """Replaces PII in texts by placeholder tokens; regexes are compiled once.

    Parameters
    ----------
    config
        What to scrub; a disabled config makes every call an identity.
    """

    def __init__(self, config: RedactionConfig) -> None:
        self._config = config
        self._rules = _rules(config) if config.enabled else ()

    @property
    def config(self) -> RedactionConfig:
        """The configuration this redactor was built from."""
        return self._config

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """Scrub one text.

        Parameters
        ----------
        text
            The raw text.

        Returns
        -------
        tuple[str, dict[str, int]]
            The scrubbed text and the number of replacements per kind (every kind present).
        """
        counts = dict.fromkeys(PII_KINDS, 0)
        for rule in self._rules:
            text, hits = _apply(rule, text)
            counts[rule.kind] += hits
        return text, counts

    def redact_all(self, texts: Sequence[str]) -> RedactionResult:
        """Scrub many texts.

        Parameters
        ----------
        texts
            The raw texts.

        Returns
        -------
        RedactionResult
            The scrubbed texts in input order and the replacement counts summed over them.
        """
        totals = dict.fromkeys(PII_KINDS, 0)
        scrubbed = []
        for text in texts:
            clean, counts = self.redact(text)
            scrubbed.append(clean)
            for kind, hits in counts.items():
                totals[kind] += hits
        return RedactionResult(texts=tuple(scrubbed), counts=MappingProxyType(totals))
