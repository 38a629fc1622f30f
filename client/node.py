"""One institution's node: its data, model and privacy ledger, and what it does in a round.

A node process loads and tokenizes its data once and builds the model once (cached by
:func:`load_node`; the nodes one simulation process serves share the model); every round it
loads the global adapter, checks its own budget, trains with DP-SGD, **records the spend
durably in its ledger**, and only then hands back the adapter delta. The ledger on disk, not
Flower's in-memory context, is the node's privacy memory: it survives new runs and restarts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from client.batching import TokenizedTexts, tokenize_texts
from client.data_loading import DataConfig, check_enough_examples, load_labelled_texts
from client.dp_training import (
    DPConfig,
    TrainingReport,
    plan_steps,
    train_adapter,
)
from client.model import (
    adapter_signature,
    adapter_state,
    build_model,
    frozen_adapter_digest,
    load_adapter_state,
    load_tokenizer,
)
from client.optimizer_state import carried_steps
from client.round_plan import RoundPlan
from client.run_settings import NodeSettings, RunSettings
from client.training_config import ModelConfig
from privacy.accounting import (
    DPEvent,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
    format_epsilon,
)
from privacy.ledger import LedgerEntry, PrivacyLedger, dataset_fingerprint
from privacy.signing_keys import ensure_signing_key

DECLINE_BUDGET = "budget_exhausted"
#: Above this σ an update is mostly noise: a node whose remaining budget would need more
#: declines instead of spending the rest of it on nothing useful.
MAX_USEFUL_NOISE_MULTIPLIER = 10.0


@dataclass
class Node:
    """A node's loaded state (one per process, reused across rounds)."""

    settings: NodeSettings
    run: RunSettings
    data: TokenizedTexts
    model: nn.Module
    ledger: PrivacyLedger | None
    trainable_names: tuple[str, ...]

    @property
    def examples(self) -> int:
        """N, the node's training records."""
        return len(self.data)


@dataclass(frozen=True)
class RoundOutcome:
    """What a node returns for one round."""

    delta: list[np.ndarray]
    metrics: dict[str, bool | int | float | str]
    declined: bool = False
    #: Adam's state after this round's training, for the next round (empty if declined).
    optimizer_state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def ledger_paths(settings: NodeSettings, run: RunSettings, fingerprint: str) -> tuple[Path, Path]:
    """(ledger file, signing-key directory) of a node.

    Simulated nodes share ``ledger-dir`` and are told apart by name; a deployed node keeps
    one ledger per data set (by fingerprint) in its own ``node-dir``.
    """
    if run.ledger_dir and settings.node_dir == Path(run.ledger_dir):
        return (
            settings.node_dir / f"{settings.node_name}.jsonl",
            settings.node_dir / "keys" / settings.node_name,
        )
    short = fingerprint.split(":", 1)[-1][:16]
    return settings.node_dir / f"ledger-{short}.jsonl", settings.node_dir


def _open_ledger(settings: NodeSettings, run: RunSettings, fingerprint: str) -> PrivacyLedger:
    path, key_dir = ledger_paths(settings, run, fingerprint)
    # the ledger writes its public key beside itself (<stem>.pub.pem) for auditors
    return PrivacyLedger(
        path,
        node_id=settings.node_name,
        dataset_fingerprint=fingerprint,
        signing_key=ensure_signing_key(key_dir),
    )


@functools.lru_cache(maxsize=2)
def _shared_model(model: ModelConfig, labels: tuple[str, ...]) -> nn.Module:
    """One model per process and run: every round starts by loading the global adapter into
    it and its frozen parts are the same on every node, so all the nodes a simulation
    process serves share it (building one per node cost each of them a model load and a
    label embedding every round once they outnumbered the cache)."""
    return build_model(model, labels)


@functools.lru_cache(maxsize=64)
def _load_node_cached(settings: NodeSettings, run: RunSettings, mtime_ns: int) -> Node:
    data_config = DataConfig(
        text_column=run.text_column, label_column=run.label_column, labels=run.labels
    )
    texts = load_labelled_texts(settings.data_path, data_config)
    tokens = tokenize_texts(
        load_tokenizer(run.model.model), texts.texts, texts.label_ids, run.model.max_length
    )
    model = _shared_model(run.model, run.labels)  # its adapter is the server's every round
    ledger = None
    if run.dp.enabled:
        fingerprint = dataset_fingerprint(texts.texts, [texts.labels[i] for i in texts.label_ids])
        ledger = _open_ledger(settings, run, fingerprint)
    names = tuple(adapter_state(model, trainable_only=True))
    return Node(settings, run, tokens, model, ledger, names)


def load_node(settings: NodeSettings, run: RunSettings) -> Node:
    """The node's data, model and ledger, loaded once per process and data file version."""
    try:
        mtime = settings.data_path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # let the loader raise its precise error
    return _load_node_cached(settings, run, mtime)


def _decline(node: Node, reason: str, detail: str) -> RoundOutcome:
    return RoundOutcome(
        [],
        {"node": node.settings.node_name, "declined": True, "reason": reason, "detail": detail},
        declined=True,
    )


def node_budget(node: Node, plan: RoundPlan) -> tuple[float, float]:
    """(ε budget, δ) this node enforces: its own, which the server may lower but never raise."""
    own, suggested = node.settings.budget_epsilon, plan.target_epsilon or None
    if own is not None:
        budget = min(own, suggested) if suggested else own
    elif suggested:
        budget = suggested
    else:
        raise ValueError("no ε budget: set node config 'budget-epsilon' or run 'target-epsilon'")
    if node.settings.delta is not None:
        delta = node.settings.delta
    else:
        delta = min(plan.target_delta or 1.0, default_delta(node.examples))
    return float(budget), float(delta)


def _sigma_of_this_run(
    entries: Sequence[LedgerEntry], run_id: str, sample_rate: float, steps: int
) -> float | None:
    """The σ this run already trains with, if its last spend had the same q and steps."""
    if not entries:
        return None
    last = entries[-1]
    same_plan = last.sample_rate == sample_rate and last.steps == steps
    return last.noise_multiplier if last.run_id == run_id and same_plan else None


def _calibrated_sigma(
    node: Node,
    plan: RoundPlan,
    budget: float,
    delta: float,
    entries: Sequence[LedgerEntry],
    run_id: str,
) -> tuple[float | None, str]:
    """σ for this round so that all remaining planned rounds land on the budget, or a reason.

    Within a run σ stays fixed: the σ calibrated in the run's first round for all its rounds
    still fits the budget in later rounds (the history it implies is the same), and one σ
    per run lets the ledger merge a run into one accounting event, so that verifying a
    1,000-round history stays cheap. It is re-checked against the budget every round and
    recalibrated when the plan changed or it no longer fits.
    """
    assert node.ledger is not None
    steps = plan_steps(node.examples, plan.batch_size, plan.local_epochs)
    prior = [entry.event for entry in entries]
    sigma = _sigma_of_this_run(entries, run_id, steps.sample_rate, steps.steps)
    if sigma is not None:
        remaining = DPEvent(sigma, steps.sample_rate, steps.steps * plan.remaining_rounds)
        if compute_epsilon([*prior, remaining], delta) > budget:
            sigma = None
    if sigma is None:
        try:
            sigma = calibrate_noise_multiplier(
                budget,
                delta,
                steps.sample_rate,
                steps.steps * plan.remaining_rounds,
                prior_events=prior,
                initial_guess=prior[-1].noise_multiplier if prior else None,
                max_noise_multiplier=MAX_USEFUL_NOISE_MULTIPLIER,
            )
        except ValueError as exc:
            return None, str(exc)
    projected, _ = node.ledger.projected_epsilon(
        DPEvent(sigma, steps.sample_rate, steps.steps), delta
    )
    if projected > budget:
        return (
            None,
            f"projected ε {format_epsilon(projected)} after this round exceeds the budget {budget}",
        )
    return sigma, ""


def run_round(
    node: Node,
    plan: RoundPlan,
    global_arrays: list[np.ndarray],
    run_id: str,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
) -> RoundOutcome:
    """Train one round from the global adapter and return the delta (spend recorded first).

    ``optimizer_state`` is the Adam state this node kept from its previous round (see
    :attr:`client.run_settings.RunSettings.keep_optimizer_state`); ``None`` starts afresh.

    Raises
    ------
    ValueError
        If the received tensors do not match this node's adapter layout.
    """
    received = dict(zip(node.trainable_names, global_arrays, strict=False))
    if (
        len(global_arrays) != len(node.trainable_names)
        or adapter_signature(received) != plan.adapter_signature
    ):
        raise ValueError(
            f"{node.settings.node_name}: received adapter layout does not match this node's "
            f"model ({len(global_arrays)} tensors, expected {len(node.trainable_names)})"
        )
    if frozen_adapter_digest(node.model) != plan.frozen_adapter_digest:
        raise ValueError(
            f"{node.settings.node_name}: the frozen adapter (LoRA A from model seed "
            f"{node.run.model.seed}) differs from the server's; check library versions"
        )
    load_adapter_state(node.model, received, trainable_only=True)
    check_enough_examples(node.settings.data_path, node.examples, plan.batch_size)
    train = dataclasses.replace(
        node.run.train,
        epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
    )
    dp: DPConfig = dataclasses.replace(node.run.dp, clip_norm=plan.clip_norm)
    prior: list[DPEvent] = []
    budget = delta = math.nan
    if dp.enabled:
        assert node.ledger is not None
        budget, delta = node_budget(node, plan)
        entries = node.ledger.entries()
        prior = [entry.event for entry in entries]
        sigma, reason = _calibrated_sigma(node, plan, budget, delta, entries, run_id)
        if sigma is None:
            return _decline(node, DECLINE_BUDGET, reason)
        dp = dataclasses.replace(dp, noise_multiplier=sigma, delta=delta)
    report = train_adapter(
        node.model, node.data, train, dp, prior_events=prior, optimizer_state=optimizer_state
    )
    if dp.enabled:
        assert node.ledger is not None
        (event,) = report.events
        # Write-ahead: the spend is on disk before anything derived from it leaves the node.
        node.ledger.append_spend(
            run_id=run_id,
            round=plan.round,
            event=event,
            clip_norm=dp.clip_norm,
            delta=delta,
            budget_epsilon=budget,
        )
    after = adapter_state(node.model, trainable_only=True)
    delta_arrays = [after[name] - received[name] for name in node.trainable_names]
    metrics = _round_metrics(node, report, budget)
    if node.run.keep_optimizer_state:
        metrics["optimizer_steps_carried"] = carried_steps(optimizer_state or {})
    return RoundOutcome(delta_arrays, metrics, optimizer_state=report.optimizer_state)


def _round_metrics(
    node: Node, report: TrainingReport, budget: float
) -> dict[str, bool | int | float | str]:
    metrics: dict[str, bool | int | float | str] = {
        "node": node.settings.node_name,
        "declined": False,
        "steps": report.steps,
    }
    if report.dp:
        metrics.update(
            epsilon=report.epsilon,
            epsilon_rdp=report.epsilon_rdp,
            delta=report.delta,
            noise_multiplier=report.noise_multiplier,
            budget_epsilon=budget,
            accountant=report.accountant,
        )
    if node.run.send_train_loss:
        metrics["train_loss"] = report.train_loss
    return metrics
