"""Tokenize a data set once, then build padded batches from record indices.

Texts are tokenized a single time per data set (truncated, unpadded) and kept as id arrays;
each batch is padded only to its own longest text. On short texts (support messages, triage
notes) this is several times cheaper than padding every batch to a fixed length, which stays
available for benchmarks via ``pad_to``.

Batches are addressed by record indices, so DP-SGD's Poisson sampler (which draws indices)
and its occasional empty batch need nothing special.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TokenizedTexts:
    """A data set in token ids.

    Parameters
    ----------
    token_ids
        One int64 array per record, truncated to the model's ``max_length``, unpadded.
    label_ids
        One class index per record.
    pad_token_id
        Id used for padding.
    """

    token_ids: tuple[np.ndarray, ...]
    label_ids: np.ndarray
    pad_token_id: int

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.label_ids):
            raise ValueError(
                f"{len(self.token_ids)} token sequences but {len(self.label_ids)} labels"
            )

    def __len__(self) -> int:
        return len(self.token_ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedTexts:
        """The records at ``indices`` (no re-tokenization)."""
        idx = np.asarray(indices, dtype=np.int64)
        return TokenizedTexts(
            tuple(self.token_ids[i] for i in idx), self.label_ids[idx], self.pad_token_id
        )


@dataclass(frozen=True)
class Batch:
    """Model inputs for one batch (``input_ids``/``attention_mask`` shaped ``(B, L)``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def tokenize_texts(
    tokenizer: object, texts: Sequence[str], label_ids: Sequence[int], max_length: int
) -> TokenizedTexts:
    """Tokenize every text once (truncating to ``max_length`` tokens, no padding).

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer (callable on a list of strings).
    texts, label_ids
        The records.
    max_length
        Maximum tokens per text, special tokens included.
    """
    encoded = tokenizer(  # type: ignore[operator]
        list(texts), truncation=True, max_length=max_length, padding=False
    )
    token_ids = tuple(np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"])
    pad_id = tokenizer.pad_token_id  # type: ignore[attr-defined]
    return TokenizedTexts(token_ids, np.asarray(label_ids, dtype=np.int64), int(pad_id))


def make_batch(
    data: TokenizedTexts,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    pad_to: int | None = None,
) -> Batch:
    """Pad the records at ``indices`` to the longest of them (or to ``pad_to``).

    An empty ``indices`` gives an empty batch of shape ``(0, 1)``, which DP-SGD still turns
    into a (pure noise) step.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    seqs = [data.token_ids[i] for i in idx]
    longest = max((len(s) for s in seqs), default=1)
    width = longest if pad_to is None else max(pad_to, longest)
    input_ids = np.full((len(seqs), width), data.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return Batch(
        torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(data.label_ids[idx])
    )
