"""``fedlora train``: fine-tune the adapter on one institution's data (the centralized baseline).

Loads and validates the data (CSV/JSONL, or the embedded generated data set), optionally
redacts PII, tokenizes once, trains with DP-SGD (or without, as a baseline), evaluates on a
separate file or a seeded stratified hold-out, and writes ``OUT/metrics.json`` and the adapter
in ``OUT/adapter/``. Every output is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.adapter_io import save_adapter
from client.batching import TokenizedTexts, tokenize_texts
from client.data_loading import (
    DataConfig,
    LabelledTexts,
    check_enough_examples,
    load_labelled_texts,
)
from client.dp_training import (
    DPConfig,
    ProgressCallback,
    TrainConfig,
    TrainingReport,
    train_adapter,
)
from client.evaluation import EvalResult, evaluate
from client.label_text import read_label_descriptions
from client.model import ModelConfig, adapter_state, build_model, load_tokenizer
from client.redaction import RedactionConfig, Redactor
from client.synthetic import SyntheticConfig, write_embedded_data
from privacy.durable_io import write_json_atomic
from sim.splits import stratified_split

EMBEDDED_DATA_FILE = "embedded_data.csv"


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything ``fedlora train`` does, resolved from its flags.

    Parameters
    ----------
    out
        Output directory.
    data
        Training file; ``None`` generates the embedded data set into ``out``.
    eval_data
        Separate evaluation file; ``None`` holds out ``eval_fraction`` of ``data``.
    eval_fraction
        Stratified hold-out share when ``eval_data`` is ``None``.
    data_config, redaction, model, train, dp
        Settings of each stage.
    synthetic
        Generator settings for the embedded data set.
    split_seed
        Seed of the hold-out split.
    label_descriptions
        Optional file of public label descriptions for the prototype head (see
        :func:`client.label_text.read_label_descriptions`).
    """

    out: Path
    data: Path | None = None
    eval_data: Path | None = None
    eval_fraction: float = 0.2
    data_config: DataConfig = DataConfig()
    redaction: RedactionConfig = RedactionConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    dp: DPConfig = DPConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    split_seed: int = 0
    label_descriptions: Path | None = None

    def __post_init__(self) -> None:
        if self.eval_data is None and not (0 < self.eval_fraction < 1):
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


@dataclass(frozen=True)
class JobData:
    """The train and evaluation splits, validated and tokenized."""

    train: TokenizedTexts
    eval: TokenizedTexts
    labels: tuple[str, ...]
    source: str
    redaction_counts: dict[str, int]


def _redact(data: LabelledTexts, redactor: Redactor | None, counts: dict[str, int]) -> list[str]:
    if redactor is None:
        return list(data.texts)
    result = redactor.redact_all(data.texts)
    for kind, n in result.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    return list(result.texts)


def prepare_data(job: TrainJobConfig, tokenizer: Any) -> JobData:
    """Load, validate, split, redact and tokenize the job's data (each text tokenized once)."""
    if job.data is None:
        path = job.out / EMBEDDED_DATA_FILE
        data_config = write_embedded_data(path, job.synthetic, job.data_config)
    else:
        path, data_config = job.data, job.data_config
    full = load_labelled_texts(path, data_config)
    redactor = Redactor(job.redaction) if job.redaction.enabled else None
    counts: dict[str, int] = {}
    texts = _redact(full, redactor, counts)
    tokens = tokenize_texts(tokenizer, texts, full.label_ids, job.model.max_length)
    if job.eval_data is not None:
        held = load_labelled_texts(
            job.eval_data, dataclasses.replace(data_config, labels=full.labels, id_column=None)
        )
        train_tokens = tokens
        eval_tokens = tokenize_texts(
            tokenizer, _redact(held, redactor, counts), held.label_ids, job.model.max_length
        )
    else:
        train_idx, eval_idx = stratified_split(full.label_ids, job.eval_fraction, job.split_seed)
        train_tokens, eval_tokens = tokens.subset(train_idx), tokens.subset(eval_idx)
    check_enough_examples(path, len(train_tokens), job.train.batch_size)
    return JobData(train_tokens, eval_tokens, full.labels, str(path), counts)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("fedlora", "torch", "opacus", "peft", "transformers", "flwr"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def job_metrics(
    job: TrainJobConfig,
    data: JobData,
    report: TrainingReport,
    initial: EvalResult,
    final: EvalResult,
    seconds: float,
) -> dict[str, Any]:
    """The ``metrics.json`` record of a finished job."""
    return {
        "epsilon": _finite_or_none(report.epsilon) if report.dp else None,
        "epsilon_rdp": _finite_or_none(report.epsilon_rdp) if report.dp else None,
        "delta": report.delta if report.dp else None,
        "accountant": report.accountant if report.dp else None,
        "dp": report.dp,
        "adjacency": "add/remove one record" if report.dp else None,
        "sampling": "Poisson" if report.dp else "shuffled batches",
        "noise_multiplier": report.noise_multiplier if report.dp else None,
        "sample_rate": report.sample_rate,
        "steps": report.steps,
        "clip_norm": report.clip_norm if report.dp else None,
        "head_refit_noise_multiplier": report.head_refit_noise_multiplier,
        "head_refit_steps": (
            job.dp.head_refit.steps
            if job.dp.head_refit is not None and report.head_refit_noise_multiplier is not None
            else None
        ),
        "accuracy": final.accuracy,
        "macro_f1": final.macro_f1,
        "eval_loss": final.loss,
        "initial_accuracy": initial.accuracy,
        "initial_macro_f1": initial.macro_f1,
        "train_loss": report.train_loss,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "labels": list(data.labels),
        "bf16": report.bf16,
        "redaction": data.redaction_counts if job.redaction.enabled else None,
        "data": data.source,
        "training_seconds": report.seconds,
        "seconds": seconds,
        "config": {
            "model": dataclasses.asdict(job.model),
            "train": dataclasses.asdict(job.train),
            "dp": dataclasses.asdict(job.dp),
            "eval_fraction": None if job.eval_data else job.eval_fraction,
            "eval_data": str(job.eval_data) if job.eval_data else None,
            "label_descriptions": str(job.label_descriptions) if job.label_descriptions else None,
        },
        "versions": _software_versions(),
    }


def run_train_job(
    job: TrainJobConfig,
    *,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole single-node job and write its outputs.

    Returns
    -------
    dict
        The content written to ``OUT/metrics.json``.
    """
    started = time.perf_counter()
    job.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(job.model.model)
    data = prepare_data(job, tokenizer)
    log(
        f"data: {data.source}: {len(data.train)} train / {len(data.eval)} eval examples, "
        f"{len(data.labels)} labels"
    )
    descriptions = (
        read_label_descriptions(job.label_descriptions, data.labels)
        if job.label_descriptions is not None
        else None
    )
    model = build_model(job.model, data.labels, descriptions)
    initial = evaluate(model, data.eval, len(data.labels))
    prior = "zero-shot, label-text prior" if job.model.head == "prototype" else "random head"
    log(
        f"before training ({prior}): accuracy {initial.accuracy:.4f}, "
        f"macro-F1 {initial.macro_f1:.4f}"
    )
    report = train_adapter(model, data.train, job.train, job.dp, progress=progress)
    final = evaluate(model, data.eval, len(data.labels), bf16=report.bf16)
    metrics = job_metrics(job, data, report, initial, final, time.perf_counter() - started)
    save_adapter(
        job.out / "adapter",
        adapter_state(model),
        job.model,
        data.labels,
        extra={"epsilon": metrics["epsilon"], "delta": metrics["delta"]},
    )
    write_json_atomic(job.out / "metrics.json", metrics)
    return metrics
