"""Flower ServerApp of fedlora, on the legacy workflow path (``LegacyContext`` +
``DefaultWorkflow``) where Flower's SecAgg+ lives.

Flower loads ``server.app:app`` (settings from the run config); ``fedlora sim`` builds the
same app with :func:`make_server_app` and settings it already parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow

from client.adapter_io import save_adapter
from client.label_text import read_label_descriptions
from client.model import adapter_state, build_model, frozen_adapter_digest, load_adapter_state
from client.run_settings import RunSettings, settings_from_run_config
from privacy import mask_generator
from server.checkpoint import load_checkpoint
from server.evaluator import TestSetEvaluator
from server.run_record import RunRecord, eval_record
from server.secure_aggregation import make_fit_workflow, secure_aggregation_record
from server.strategy import DeltaFedAvg

mask_generator.install()  # this process may run SecAgg+: never with Flower's 32-bit generator

FINAL_ADAPTER_DIR = "adapter"


def run_federation(
    grid: Grid, context: Context, settings: RunSettings, log: Callable[[str], None]
) -> RunRecord:
    """Run (or resume) the planned rounds and write the final adapter and metrics.

    Returns
    -------
    RunRecord
        The run's record, as written to ``OUT/metrics.json``.
    """
    if not settings.labels:
        raise ValueError("run config 'labels' must list the federation's label set")
    if not settings.out_dir:
        raise ValueError("run config 'out-dir' is required (where metrics and adapters go)")
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    descriptions = (
        read_label_descriptions(Path(settings.label_descriptions_file), settings.labels)
        if settings.label_descriptions_file
        else None
    )
    # the initial head (class vectors from the public label text) travels to every node
    model = build_model(settings.model, settings.labels, descriptions)
    state = adapter_state(model, trainable_only=True)
    offset = 0
    config: dict[str, object] = {
        **settings.to_run_config(),
        "server-learning-rate-in-force": settings.global_learning_rate,
        "secure_aggregation": secure_aggregation_record(settings),
    }
    if settings.resume:
        checkpoint = load_checkpoint(out, settings)
        # strict names/shapes; and travel order is the model's, not the file's (sorted)
        load_adapter_state(model, checkpoint.state, trainable_only=True)
        state, offset = adapter_state(model, trainable_only=True), checkpoint.round
        record = RunRecord.resume(out, config, offset)
        log(f"resuming after round {offset} of {settings.rounds}")
    else:
        record = RunRecord(out, config)
    record.released_statistics = released_statistics(settings)
    evaluator = (
        TestSetEvaluator(settings, Path(settings.test_data), model) if settings.test_data else None
    )
    strategy = DeltaFedAvg(
        settings, state, frozen_adapter_digest(model), record, evaluator, offset, log
    )
    legacy = LegacyContext(
        context,
        config=ServerConfig(
            num_rounds=settings.rounds - offset, round_timeout=settings.round_timeout
        ),
        strategy=strategy,
    )
    fit_workflow = (
        make_fit_workflow(settings, strategy.note_halt)
        if settings.secure_aggregation.enabled
        else None
    )
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    load_adapter_state(model, strategy.global_state, trainable_only=True)
    final = evaluator(strategy.global_state) if evaluator is not None else None
    record.final = {
        **(eval_record(final) or {}),
        "epsilon": record.latest_epsilons(),
        "completed_rounds": sum(1 for r in record.rounds if r["completed"]),
    }
    save_adapter(
        out / FINAL_ADAPTER_DIR,
        adapter_state(model),
        settings.model,
        settings.labels,
        extra={"rounds": settings.rounds},
    )
    record.write()
    return record


def released_statistics(settings: RunSettings) -> list[str]:
    """What each node's fit reply discloses besides its (masked) adapter delta."""
    released = ["node name", "epsilon (PRV, RDP)", "noise multiplier", "steps"]
    if settings.keep_optimizer_state:
        released.append("steps already in the node's kept Adam state")
    if settings.send_train_loss:
        released.append("mean train loss (not covered by DP)")
    if settings.weighting == "examples":
        released.append("training example count (not covered by DP)")
    return released


def make_server_app(
    settings: RunSettings | None = None, log: Callable[[str], None] = print
) -> ServerApp:
    """A ServerApp with fixed settings (``fedlora sim``) or reading Flower's run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = (
            settings if settings is not None else settings_from_run_config(context.run_config)
        )
        run_federation(grid, context, resolved, log)

    return app


app = make_server_app()
