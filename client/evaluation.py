"""Accuracy and macro-F1 of a classifier on a tokenized split.

Evaluation on a node's private data is itself a release; callers decide where it may run
(the server-held test split, or a node that reports it as not covered by DP-SGD).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.batching import TokenizedTexts, make_batch


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


def predict_logits(
    model: nn.Module, data: TokenizedTexts, batch_size: int = 128, bf16: bool = False
) -> np.ndarray:
    """Logits for every record, in order (float32, shape ``(N, num_labels)``)."""
    was_training = model.training
    model.eval()
    # Sorting by length keeps padding (and time) low; the order is restored below.
    order = np.argsort([len(t) for t in data.token_ids], kind="stable")
    chunks: list[np.ndarray] = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(order), batch_size):
            batch = make_batch(data, order[start : start + batch_size])
            chunks.append(model(batch.input_ids, batch.attention_mask).float().numpy())
    model.train(was_training)
    logits = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    restored = np.empty_like(logits)
    restored[order] = logits
    return restored


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
