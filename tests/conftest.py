"""Shared fixtures. Tests never reach a model hub: the default model ships in a package."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TOPICS = {
    0: ["my card was stolen", "lost my debit card", "please block my card"],
    1: ["the transfer has not arrived", "money sent yesterday is missing", "payment pending"],
    2: ["chest pain radiating to the arm", "tight chest and sweating", "crushing chest pain"],
}


def toy_texts(n: int) -> tuple[list[str], list[int]]:
    """``n`` short labelled texts (3 classes) of varying length, deterministic."""
    texts, labels = [], []
    for i in range(n):
        label = i % 3
        phrases = TOPICS[label]
        texts.append(" and ".join(phrases[(i + k) % 3] for k in range(1 + i % 3)))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="session")
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    from client.model import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def toy_data(tiny_tokenizer):  # type: ignore[no-untyped-def]
    from client.batching import tokenize_texts

    texts, labels = toy_texts(240)
    return tokenize_texts(tiny_tokenizer, texts, labels, max_length=32)


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path
