"""Flower ClientApp of a fedlora node (legacy ``NumPyClient`` path, as SecAgg+ requires).

Flower loads ``client.app:app``; ``fedlora sim`` builds the same app with
:func:`make_client_app` and settings it already parsed. Everything a node does lives in
:mod:`client.node`; this module only translates between Flower messages and it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.round_plan import RoundPlan
from client.run_settings import (
    NodeSettings,
    RunSettings,
    node_settings_from_config,
    settings_from_run_config,
)
from privacy import mask_generator

mask_generator.install()  # SecAgg+ masks from ChaCha20, never Flower's 32-bit MT19937 seed

#: Flower reports a failed node without saying which one; errors carry the name behind this.
NODE_ERROR_PREFIX = "[fedlora node "
#: Key of the node's Adam state in its Flower context (``keep-optimizer-state``).
OPTIMIZER_STATE_KEY = "fedlora-optimizer-state"


class AdapterClient(NumPyClient):
    """Trains the adapter on one node's data; returns only the adapter delta.

    With ``weighting = "uniform"`` the node reports 1 as its example count, so its dataset
    size never leaves the node through Flower's plaintext fit result. ``state`` is the node's
    Flower context state, which keeps its Adam moments across rounds when the run asks for it.
    """

    def __init__(
        self, settings: NodeSettings, run: RunSettings, run_id: str, state: RecordDict
    ) -> None:
        self.settings = settings
        self.run = run
        self.run_id = run_id
        self.state = state

    def _kept_optimizer_state(self) -> dict[str, np.ndarray] | None:
        record = self.state.array_records.get(OPTIMIZER_STATE_KEY)
        if not self.run.keep_optimizer_state or record is None:
            return None
        return {key: array.numpy() for key, array in record.items()}

    def _keep_optimizer_state(self, arrays: dict[str, np.ndarray]) -> None:
        if self.run.keep_optimizer_state and arrays:
            self.state[OPTIMIZER_STATE_KEY] = ArrayRecord(
                {key: Array(value) for key, value in arrays.items()}
            )

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """One round of local DP-SGD from the global adapter ``parameters``."""
        # Imported here: torch, transformers and Opacus cost seconds, and a deployed node
        # starts a fresh process for each of SecAgg+'s four messages; only this one trains.
        from client.node import load_node, run_round

        try:
            plan = RoundPlan.from_config(config)
            _check_mask_generator(plan)
            node = load_node(self.settings, self.run)
            outcome = run_round(node, plan, parameters, self.run_id, self._kept_optimizer_state())
            self._keep_optimizer_state(outcome.optimizer_state)
        except Exception as exc:
            raise RuntimeError(f"{NODE_ERROR_PREFIX}{self.settings.node_name}] {exc}") from exc
        if outcome.declined:
            # weight 0 and zeros: under SecAgg+ a masked zero that adds nothing to the sum
            return [np.zeros_like(p) for p in parameters], 0, outcome.metrics
        weight = node.examples if self.run.weighting == "examples" else 1
        return outcome.delta, weight, outcome.metrics


def _check_mask_generator(plan: RoundPlan) -> None:
    """Refuse a round whose announced SecAgg+ mask generator is not the one in use here."""
    ours = mask_generator.installed_generator()
    if plan.mask_generator and plan.mask_generator != ours:
        raise ValueError(
            f"the server masks with {plan.mask_generator!r} but this node with {ours!r}: "
            "refusing to train (masks would not cancel; update fedlora on one side)"
        )


SettingsOf = Callable[[Context], tuple[RunSettings, NodeSettings]]


def make_secure_aggregation_mod(settings_of: SettingsOf) -> Mod:
    """The node's one mod: Flower's ``secaggplus_mod`` for secure-aggregation rounds; for a
    plaintext training round, a refusal when the node requires secure aggregation (every
    deployed node unless its node config sets ``require-secure-aggregation=false``).

    Parameters
    ----------
    settings_of
        The run's and this node's settings for a message's context.
    """

    def secure_aggregation_mod(
        message: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        if message.metadata.message_type != MessageType.TRAIN:
            return call_next(message, context)
        if RECORD_KEY_CONFIGS in message.content.config_records:
            return secaggplus_mod(message, context, call_next)
        _, node = settings_of(context)
        if node.require_secure_aggregation:
            raise RuntimeError(
                f"{NODE_ERROR_PREFIX}{node.node_name}] refusing a training round without "
                "secure aggregation: this node sends its update only masked (node config "
                "'require-secure-aggregation')"
            )
        return call_next(message, context)

    return secure_aggregation_mod


def make_client_app(run: RunSettings | None = None) -> ClientApp:
    """A ClientApp with fixed settings (``fedlora sim``) or reading Flower's run config,
    behind :func:`make_secure_aggregation_mod`."""

    def settings_of(context: Context) -> tuple[RunSettings, NodeSettings]:
        settings = run if run is not None else settings_from_run_config(context.run_config)
        return settings, node_settings_from_config(context.node_config, settings)

    def client_fn(context: Context) -> Client:
        settings, node = settings_of(context)
        return AdapterClient(node, settings, str(context.run_id), context.state).to_client()

    return ClientApp(client_fn=client_fn, mods=[make_secure_aggregation_mod(settings_of)])


app = make_client_app()
