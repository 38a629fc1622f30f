"""Centralized evaluation of the global adapter on a test split the server holds.

The test split never leaves the server (or the simulation driver), and evaluating on it
costs no node any privacy. Data is tokenized once and the model built once per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import nn

from client.batching import tokenize_texts
from client.data_loading import DataConfig, load_labelled_texts
from client.dp_training import bf16_supported
from client.evaluation import EvalResult, evaluate
from client.model import load_adapter_state, load_tokenizer
from client.run_settings import RunSettings


class TestSetEvaluator:
    """Scores adapter states on the server-held test file."""

    __test__ = False  # not a pytest test class

    def __init__(self, settings: RunSettings, test_path: Path, model: nn.Module) -> None:
        data = load_labelled_texts(
            test_path,
            DataConfig(
                text_column=settings.text_column,
                label_column=settings.label_column,
                labels=settings.labels,
            ),
        )
        self.num_labels = len(settings.labels)
        self.data = tokenize_texts(
            load_tokenizer(settings.model.model),
            data.texts,
            data.label_ids,
            settings.model.max_length,
        )
        self.model = model  # the server's one model: evaluation reloads its adapter
        self.bf16 = bf16_supported() if settings.train.bf16 is None else settings.train.bf16

    def __call__(self, trainable_state: Mapping[str, np.ndarray]) -> EvalResult:
        """Accuracy and macro-F1 of the model with this (trainable) adapter state."""
        load_adapter_state(self.model, trainable_state, trainable_only=True)
        return evaluate(self.model, self.data, self.num_labels, bf16=self.bf16)

    @property
    def examples(self) -> int:
        """Size of the test split."""
        return len(self.data)
