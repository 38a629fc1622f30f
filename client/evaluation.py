"""Accuracy and macro-F1 of a classifier on a tokenized split.

Evaluation on a node's private data is itself a release; callers decide where it may run
(the server-held test split, or a node that reports it as not covered by DP-SGD).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.batching import Batch, TokenizedTexts, make_batch
from client.model import TextClassifier


@dataclass(frozen=True)
class EvalResult:
    """Scores on one split."""

    accuracy: float
    macro_f1: float
    loss: float
    examples: int


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    scores = []
    for c in range(num_labels):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _in_length_order(
    model: nn.Module,
    data: TokenizedTexts,
    run: Callable[[Batch], torch.Tensor],
    batch_size: int,
    bf16: bool,
) -> torch.Tensor:
    """``run`` on every record in evaluation mode without gradients; float32 rows in order."""
    was_training = model.training
    model.eval()
    # Sorting by length keeps padding (and time) low; the order is restored below.
    order = np.argsort([len(t) for t in data.token_ids], kind="stable")
    chunks: list[torch.Tensor] = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(order), batch_size):
            chunks.append(run(make_batch(data, order[start : start + batch_size])).float())
    model.train(was_training)
    if not chunks:
        return torch.zeros((0, 0), dtype=torch.float32)
    rows = torch.cat(chunks)
    restored = torch.empty_like(rows)
    restored[torch.from_numpy(order)] = rows
    return restored


def predict_logits(
    model: nn.Module, data: TokenizedTexts, batch_size: int = 128, bf16: bool = False
) -> np.ndarray:
    """Logits for every record, in order (float32, shape ``(N, num_labels)``)."""
    return _in_length_order(
        model, data, lambda b: model(b.input_ids, b.attention_mask), batch_size, bf16
    ).numpy()


def pooled_embeddings(
    model: TextClassifier, data: TokenizedTexts, batch_size: int = 128, bf16: bool = False
) -> torch.Tensor:
    """The head's input for every record, in order (float32, ``(N, hidden)``): the
    mean-pooled encoder output of ``model`` as it is now, without dropout."""
    return _in_length_order(
        model, data, lambda b: model.embed(b.input_ids, b.attention_mask), batch_size, bf16
    )


def evaluate(
    model: nn.Module,
    data: TokenizedTexts,
    num_labels: int,
    batch_size: int = 128,
    bf16: bool = False,
) -> EvalResult:
    """Accuracy, macro-F1 and mean cross-entropy of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty split")
    logits = predict_logits(model, data, batch_size, bf16)
    y_true = data.label_ids
    y_pred = logits.argmax(axis=1)
    loss = float(
        nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y_true)).item()
    )
    return EvalResult(
        accuracy=float(np.mean(y_pred == y_true)),
        macro_f1=macro_f1(y_true, y_pred, num_labels),
        loss=loss,
        examples=len(data),
    )
