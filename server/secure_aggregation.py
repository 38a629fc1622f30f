"""The server side of secure aggregation: Flower's SecAgg+ workflow, configured and watched.

Why it exists: ``SecAggPlusWorkflow`` ends a round that cannot finish (too few nodes left
after key sharing, too few shares to unmask) by logging "Secure aggregation halted" and
returning, without calling the strategy: the round silently counts as done with an unchanged
model. :class:`ReportingSecAggPlusWorkflow` reports every halt, with the stage and the node
counts, to a callback (the strategy records the round as not completed). :func:`make_fit_workflow`
builds it from :class:`SecureAggregationConfig` with weight 1 per node (``max_weight=1``), a
clipping range derived from the training settings, and the round timeout (never "wait
forever"), after checking that the hardened mask generator is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.server import Grid
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from client.run_settings import RunSettings
from privacy.mask_generator import MASK_GENERATOR, installed_generator

StageFunction = Callable[[Grid, Any, WorkflowState], bool]


class ReportingSecAggPlusWorkflow(SecAggPlusWorkflow):
    """``SecAggPlusWorkflow`` that reports a halted round to ``on_halt`` instead of hiding it.

    Parameters
    ----------
    on_halt
        Called with a readable reason when a stage ends the round early.
    **kwargs
        ``SecAggPlusWorkflow``'s arguments.
    """

    def __init__(self, on_halt: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_halt = on_halt

    def _watched(
        self, name: str, stage: StageFunction, grid: Grid, context: Any, state: WorkflowState
    ) -> bool:
        if stage(grid, context, state):
            return True
        sampled = len(state.sampled_node_ids)
        self.on_halt(
            f"secure aggregation halted in its {name} stage: {len(state.active_node_ids)} of "
            f"{sampled} sampled nodes still active, reconstruction threshold {state.threshold}"
            if sampled
            else f"secure aggregation halted in its {name} stage: no node was sampled"
        )
        return False

    def setup_stage(self, grid: Grid, context: Any, state: WorkflowState) -> bool:
        """Flower's setup stage, reporting a halt."""
        return self._watched("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Grid, context: Any, state: WorkflowState) -> bool:
        """Flower's share-keys stage, reporting a halt."""
        return self._watched("share-keys", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid: Grid, context: Any, state: WorkflowState) -> bool:
        """Flower's masked-upload stage (where nodes train), reporting a halt."""
        return self._watched(
            "masked-upload", super().collect_masked_vectors_stage, grid, context, state
        )

    def unmask_stage(self, grid: Grid, context: Any, state: WorkflowState) -> bool:
        """Flower's unmask stage, reporting a halt."""
        return self._watched("unmask", super().unmask_stage, grid, context, state)


def make_fit_workflow(
    settings: RunSettings, on_halt: Callable[[str], None]
) -> ReportingSecAggPlusWorkflow:
    """The SecAgg+ fit workflow for ``settings`` (secure aggregation must be enabled).

    Raises
    ------
    RuntimeError
        If the hardened mask generator is not what Flower's modules use in this process.
    """
    secure = settings.secure_aggregation
    if installed_generator() != MASK_GENERATOR:
        raise RuntimeError(
            f"Flower's SecAgg+ uses the mask generator {installed_generator()!r}, not "
            f"{MASK_GENERATOR!r}: privacy.mask_generator.install() was not called"
        )
    return ReportingSecAggPlusWorkflow(
        on_halt,
        num_shares=secure.shares,
        reconstruction_threshold=secure.threshold,
        max_weight=1.0,
        clipping_range=secure.clipping_for(settings.train.learning_rate),
        quantization_range=secure.quantization_range,
        modulus_range=secure.modulus_range,
        timeout=settings.round_timeout,
    )


def secure_aggregation_record(settings: RunSettings) -> dict[str, Any]:
    """What ``metrics.json`` records under ``config.secure_aggregation``."""
    secure = settings.secure_aggregation
    if not secure.enabled:
        return {"enabled": False}
    shares, threshold = secure.resolved(settings.sampled_per_round)
    return {
        "enabled": True,
        "mask_generator": MASK_GENERATOR,
        "shares": shares,
        "threshold": threshold,
        "configured_shares": secure.shares,
        "configured_threshold": secure.threshold,
        "clipping_range": secure.clipping_for(settings.train.learning_rate),
        "quantization_range": secure.quantization_range,
        "modulus_range": secure.modulus_range,
        "max_weight": 1.0,
        "timeout_seconds": settings.round_timeout,
    }
