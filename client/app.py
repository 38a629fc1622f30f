"""Flower ClientApp of a fedlora node (legacy ``NumPyClient`` path, as SecAgg+ requires).

Flower loads ``client.app:app``; ``fedlora sim`` builds the same app with
:func:`make_client_app` and settings it already parsed. Everything a node does lives in
:mod:`client.node`; this module only translates between Flower messages and it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient

from client.node import load_node, run_round
from client.round_plan import RoundPlan
from client.run_settings import (
    NodeSettings,
    RunSettings,
    node_settings_from_config,
    settings_from_run_config,
)

#: Flower reports a failed node without saying which one; errors carry the name behind this.
NODE_ERROR_PREFIX = "[fedlora node "


class AdapterClient(NumPyClient):
    """Trains the adapter on one node's data; returns only the adapter delta.

    With ``weighting = "uniform"`` the node reports 1 as its example count, so its dataset
    size never leaves the node through Flower's plaintext fit result.
    """

    def __init__(self, settings: NodeSettings, run: RunSettings, run_id: str) -> None:
        self.settings = settings
        self.run = run
        self.run_id = run_id

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """One round of local DP-SGD from the global adapter ``parameters``."""
        try:
            node = load_node(self.settings, self.run)
            outcome = run_round(node, RoundPlan.from_config(config), parameters, self.run_id)
        except Exception as exc:
            raise RuntimeError(f"{NODE_ERROR_PREFIX}{self.settings.node_name}] {exc}") from exc
        weight = node.examples if self.run.weighting == "examples" else 1
        return outcome.delta, 0 if outcome.declined else weight, outcome.metrics


def make_client_app(run: RunSettings | None = None) -> ClientApp:
    """A ClientApp with fixed settings (``fedlora sim``) or reading Flower's run config."""

    def client_fn(context: Context) -> Client:
        settings = run if run is not None else settings_from_run_config(context.run_config)
        node = node_settings_from_config(context.node_config, settings)
        return AdapterClient(node, settings, str(context.run_id)).to_client()

    return ClientApp(client_fn=client_fn)


app = make_client_app()
