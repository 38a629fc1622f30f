"""Federated averaging of adapter *deltas* on Flower's legacy strategy interface.

Nodes return ``local adapter - global adapter``; the server averages the deltas (uniformly by
default, or weighted by example counts) and applies ``global += server_lr · mean``. Sending
deltas keeps each upload small and centred on zero, which is what secure aggregation's
quantizer needs. The strategy also plans each round for the nodes, stops sampling nodes that
declined for lack of budget, evaluates on the server-held test split, and checkpoints the
global adapter after every round.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from client.app import NODE_ERROR_PREFIX
from client.evaluation import EvalResult
from client.model import adapter_signature
from client.round_plan import RoundPlan
from client.run_settings import RunSettings
from client.secure_aggregation_settings import MIN_SECURE_NODES
from privacy.accounting import format_epsilon
from privacy.mask_generator import MASK_GENERATOR
from server.checkpoint import save_checkpoint
from server.run_record import RunRecord, eval_record

Evaluator = Callable[[dict[str, np.ndarray]], EvalResult]
_NODE_IN_ERROR = re.compile(re.escape(NODE_ERROR_PREFIX) + r"([^\]]+)\] (.*?)(?:\\n|\n|$)")


@dataclass
class _RoundState:
    number: int
    started: float
    sampled: dict[int, ClientProxy] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)
    halted: str | None = None


def failure_reason(failure: BaseException | tuple[ClientProxy, FitRes]) -> tuple[str | None, str]:
    """(node name if known, readable reason) of a failed fit reply."""
    if isinstance(failure, BaseException):
        text = str(failure)
    else:
        text = f"status {failure[1].status.code}: {failure[1].status.message}"
    match = _NODE_IN_ERROR.search(text)
    if match:
        return match.group(1), match.group(2).strip(" '\"")
    return None, text.splitlines()[0][:300] if text else "unknown failure"


class DeltaFedAvg(FedAvg):
    """FedAvg over adapter deltas, with round plans, budget-aware sampling and checkpoints.

    Parameters
    ----------
    settings
        The run's settings.
    initial_state
        Global trainable adapter at the start (fresh or from a checkpoint), in travel order.
    frozen_digest
        Digest of the seed-derived frozen adapter, sent so nodes can check they agree.
    record
        The run record that is rewritten after every round.
    evaluator
        Scores a trainable state on the server-held test split, or ``None``.
    round_offset
        Rounds already completed (when resuming).
    log
        Where progress lines go.
    """

    def __init__(
        self,
        settings: RunSettings,
        initial_state: dict[str, np.ndarray],
        frozen_digest: str,
        record: RunRecord,
        evaluator: Evaluator | None,
        round_offset: int = 0,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=1,
            min_evaluate_clients=0,
            min_available_clients=settings.expected_nodes,
            accept_failures=True,
        )
        self.settings = settings
        self.names = tuple(initial_state)
        self.global_state = {k: np.asarray(v, dtype=np.float32) for k, v in initial_state.items()}
        self.frozen_digest = frozen_digest
        self.record = record
        self.evaluator = evaluator
        self.round_offset = round_offset
        self.log = log
        self.exhausted: dict[int, str] = {}
        self.node_names: dict[int, str] = {}
        self.rng = random.Random(settings.model.seed + round_offset)
        self._round: _RoundState | None = None

    def __repr__(self) -> str:
        return f"DeltaFedAvg(rounds={self.settings.rounds}, weighting={self.settings.weighting})"

    # ------------------------------------------------------------------ planning
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The global trainable adapter (fresh or resumed)."""
        return ndarrays_to_parameters(list(self.global_state.values()))

    def round_plan(self, number: int) -> RoundPlan:
        """What every node is asked to do in round ``number``."""
        train, dp = self.settings.train, self.settings.dp
        return RoundPlan(
            round=number,
            total_rounds=self.settings.rounds,
            local_epochs=train.epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            clip_norm=dp.clip_norm,
            target_epsilon=dp.target_epsilon or 0.0,
            target_delta=dp.delta or 0.0,
            adapter_signature=adapter_signature(self.global_state),
            frozen_adapter_digest=self.frozen_digest,
            mask_generator=MASK_GENERATOR if self.settings.secure_aggregation.enabled else "",
        )

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample nodes that still have budget and send them the round plan."""
        number = self.round_offset + server_round
        self._round = _RoundState(number, time.perf_counter())
        client_manager.wait_for(
            self.settings.expected_nodes, timeout=int(self.settings.round_timeout)
        )
        eligible = [
            proxy
            for cid, proxy in sorted(client_manager.all().items())
            if proxy.node_id not in self.exhausted
        ]
        wanted = self.settings.sampled_per_round
        chosen = eligible if len(eligible) <= wanted else self.rng.sample(eligible, wanted)
        self._round.sampled = {proxy.node_id: proxy for proxy in chosen}
        if not chosen:
            self.log(f"round {number}: no node with remaining budget; nothing to train")
            return []
        if self.settings.secure_aggregation.enabled and len(chosen) < MIN_SECURE_NODES:
            self._round.halted = (
                f"only {len(chosen)} node(s) with remaining budget: secure aggregation needs "
                f"{MIN_SECURE_NODES}, so nothing is trained"
            )
            self.log(f"round {number}: {self._round.halted}")
            return []
        fit_ins = FitIns(parameters, dict(self.round_plan(number).to_config()))
        return [(proxy, fit_ins) for proxy in chosen]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No evaluation on node data: it would be a release DP-SGD does not cover."""
        return []

    # ------------------------------------------------------------------ aggregation
    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Average the deltas of the nodes that trained and update the global adapter."""
        state = self._round
        assert state is not None, "aggregate_fit before configure_fit"
        payload = int(sum(v.nbytes for v in self.global_state.values()))
        nodes: dict[str, dict[str, Any]] = {}
        deltas: list[list[np.ndarray]] = []
        weights: list[float] = []
        losses: list[float] = []
        for proxy, fit_res in results:
            metrics = dict(fit_res.metrics)
            name = str(metrics.get("node", proxy.node_id))
            self.node_names[proxy.node_id] = name
            if metrics.get("declined"):
                reason = str(metrics.get("detail") or metrics.get("reason"))
                self.exhausted[proxy.node_id] = name
                self.record.stopped_nodes[name] = {"round": state.number, "reason": reason}
                nodes[name] = {
                    "participated": False,
                    "declined": True,
                    "reason": reason,
                    "bytes_sent": 0,
                    "bytes_received": payload,
                }
                self.log(f"round {state.number}: {name} declined: {reason}")
                continue
            arrays = parameters_to_ndarrays(fit_res.parameters)
            layout_problem = self._layout_problem(arrays)
            if layout_problem:
                # never average what is not this adapter's delta; the round goes on without it
                failures = [*failures, RuntimeError(f"{NODE_ERROR_PREFIX}{name}] {layout_problem}")]
                continue
            deltas.append(arrays)
            weights.append(float(fit_res.num_examples))
            if "train_loss" in metrics:
                losses.append(float(metrics["train_loss"]))
            nodes[name] = {
                "participated": True,
                "epsilon": metrics.get("epsilon"),
                "epsilon_rdp": metrics.get("epsilon_rdp"),
                "noise_multiplier": metrics.get("noise_multiplier"),
                "steps": metrics.get("steps"),
                **(
                    {"optimizer_steps_carried": metrics["optimizer_steps_carried"]}
                    if "optimizer_steps_carried" in metrics
                    else {}
                ),
                "bytes_sent": self._upload_bytes(arrays),
                "bytes_received": payload,
            }
        failed: list[dict[str, str | None]] = []
        for failure in failures:
            failed_name, reason = failure_reason(failure)
            failed.append({"node": failed_name, "reason": reason})
            if failed_name is not None:
                nodes[failed_name] = {
                    "participated": False,
                    "error": reason,
                    "bytes_sent": 0,
                    "bytes_received": payload,
                }
            self.log(f"round {state.number}: node {failed_name or '?'} failed: {reason}")
        state.entry = {
            "round": state.number,
            "completed": bool(deltas),
            "train_loss": float(np.mean(losses)) if losses else None,
            "nodes": nodes,
            "failures": failed,
        }
        if not deltas:
            return None, {}
        self._apply(deltas, weights)
        return ndarrays_to_parameters(list(self.global_state.values())), {}

    def _upload_bytes(self, arrays: list[np.ndarray]) -> int:
        """Bytes of one node's update as sent: float32 deltas, or SecAgg+'s masked int64
        vector (one weight entry plus every value)."""
        if self.settings.secure_aggregation.enabled:
            return 8 * (1 + sum(int(a.size) for a in arrays))
        return int(sum(a.nbytes for a in arrays))

    def note_halt(self, reason: str) -> None:
        """Record that secure aggregation ended the current round early (and why)."""
        if self._round is not None:
            self._round.halted = reason
        number = self._round.number if self._round is not None else "?"
        self.log(f"round {number}: {reason}; the round does not count")

    def _layout_problem(self, arrays: list[np.ndarray]) -> str | None:
        expected = [v.shape for v in self.global_state.values()]
        got = [a.shape for a in arrays]
        if got == expected and all(np.all(np.isfinite(a)) for a in arrays):
            return None
        return (
            f"returned {len(got)} tensors that are not a finite delta of this adapter "
            f"({len(expected)} tensors expected)"
        )

    def _apply(self, deltas: list[list[np.ndarray]], weights: list[float]) -> None:
        if self.settings.weighting == "examples" and sum(weights) > 0:
            w = np.asarray(weights, dtype=np.float64) / sum(weights)
        else:
            w = np.full(len(deltas), 1.0 / len(deltas))
        lr = self.settings.global_learning_rate
        for i, name in enumerate(self.names):
            mean = sum(wk * d[i].astype(np.float64) for wk, d in zip(w, deltas, strict=True))
            self.global_state[name] = (self.global_state[name] + lr * mean).astype(np.float32)

    # ------------------------------------------------------------------ evaluation + record
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Score the global adapter, then record, checkpoint and report the round."""
        result = self.evaluator(self.global_state) if self.evaluator is not None else None
        if server_round == 0:
            if self.round_offset == 0:
                self.record.initial = eval_record(result)
                self.record.write()
                if result is not None:
                    prior = (
                        "zero-shot, label-text prior"
                        if self.settings.model.head == "prototype"
                        else "random head"
                    )
                    self.log(
                        f"round 0 (before training, {prior}): accuracy {result.accuracy:.4f}, "
                        f"macro-F1 {result.macro_f1:.4f}"
                    )
            return None if result is None else (result.loss, {"accuracy": result.accuracy})
        self._finish_round(result)
        return None if result is None else (result.loss, {"accuracy": result.accuracy})

    def _finish_round(self, result: EvalResult | None) -> None:
        state = self._round
        assert state is not None
        entry = state.entry or {
            "round": state.number,
            "completed": False,
            "train_loss": None,
            "nodes": {},
            "failures": [
                {"node": None, "reason": state.halted or "no node was sampled or none replied"}
            ],
        }
        if state.halted is not None:
            entry["halted"] = state.halted
        for node_id, name in self.exhausted.items():
            if node_id not in state.sampled:
                entry["nodes"].setdefault(
                    name,
                    {"participated": False, "stopped": True, "bytes_sent": 0, "bytes_received": 0},
                )
        scores: dict[str, float | None] = {"accuracy": None, "macro_f1": None, "loss": None}
        entry.update(eval_record(result) or scores)
        entry["seconds"] = time.perf_counter() - state.started
        self.record.rounds.append(entry)
        if entry["completed"]:
            save_checkpoint(self.record.out_dir, self.global_state, state.number, self.settings)
        self.record.write()
        self.log(_progress_line(entry, self.settings.rounds))


def _progress_line(entry: dict[str, Any], total: int) -> str:
    nodes = entry["nodes"]
    trained = sum(1 for n in nodes.values() if n.get("participated"))
    eps = [n["epsilon"] for n in nodes.values() if n.get("epsilon") is not None]
    parts = [f"round {entry['round']}/{total}"]
    if entry.get("accuracy") is not None:
        parts.append(f"accuracy {entry['accuracy']:.4f}")
        parts.append(f"macro-F1 {entry['macro_f1']:.4f}")
    if entry.get("train_loss") is not None:
        parts.append(f"train loss {entry['train_loss']:.4f}")
    parts.append(f"{trained}/{len(nodes)} nodes trained")
    if eps:
        parts.append(f"max ε {format_epsilon(max(eps), 3)}")
    if not entry["completed"]:
        parts.append("NOT COMPLETED (global adapter unchanged)")
    parts.append(f"{entry['seconds']:.1f}s")
    return " | ".join(parts)
