"""The federation's run configuration as one frozen dataclass, shared by server and nodes.

Flower hands both apps the same run config (``[tool.flwr.app.config]`` in pyproject.toml,
overridden by ``flwr run --run-config`` or built by ``fedlora sim``). It is parsed and
validated here, once, into :class:`RunSettings`; nothing else reads the raw mapping. Per-node
settings (data path, node directory, the node's own budget) come from the node config and are
parsed by :func:`node_settings_from_config`: the server cannot raise a node's budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.secure_aggregation_settings import SecureAggregationConfig
from client.training_config import DPConfig, ModelConfig, TrainConfig

WEIGHTINGS: tuple[str, ...] = ("uniform", "examples")
ConfigValue = bool | int | float | str | bytes


def _get(config: Mapping[str, ConfigValue], key: str, kind: type, default: ConfigValue) -> object:
    value = config.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"run config {key!r} must be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _int(config: Mapping[str, ConfigValue], key: str, default: int) -> int:
    return int(_get(config, key, int, default))  # type: ignore[call-overload]


def _float(config: Mapping[str, ConfigValue], key: str, default: float) -> float:
    return float(_get(config, key, float, default))  # type: ignore[arg-type]


def _number(config: Mapping[str, ConfigValue], key: str, default: float) -> int | float:
    """An int (a count) or a float (a fraction), keeping which one was given."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"run config {key!r} must be a number, got {value!r}")
    return value


def _str(config: Mapping[str, ConfigValue], key: str, default: str) -> str:
    return str(_get(config, key, str, default))


def _bool(config: Mapping[str, ConfigValue], key: str, default: bool) -> bool:
    return bool(_get(config, key, bool, default))


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


#: Server learning rates a run gets when it sets none: the larger step only for FFA-LoRA
#: under DP, where it was measured to help (docs/results.md, sections 4 and 5).
SERVER_LR_UNDER_DP = 3.0
SERVER_LR_WITHOUT_DP = 1.0


def default_server_learning_rate(dp: bool, lora: str) -> float:
    """The server learning rate of a run that sets none.

    Parameters
    ----------
    dp
        Whether the nodes train under DP-SGD.
    lora
        The adapter variant (``"ffa"`` or ``"lora"``, see ``ModelConfig.lora``).

    Returns
    -------
    float
        :data:`SERVER_LR_UNDER_DP` for FFA-LoRA under DP, else :data:`SERVER_LR_WITHOUT_DP`.
        Plain LoRA averages A and B separately, so a step of 3 × the mean delta moves
        their product by up to 9 × the product of the mean deltas; under DP it fell below
        the zero-shot prior on medical_abstracts (50.2 % from 54.5 %; 61.1 % at 1).
    """
    return SERVER_LR_UNDER_DP if dp and lora == "ffa" else SERVER_LR_WITHOUT_DP


@dataclass(frozen=True)
class RunSettings:
    """Everything about a federated run that the server and every node must agree on.

    Parameters
    ----------
    rounds
        Planned number of server rounds (nodes calibrate their noise for all of them).
    nodes_per_round
        Nodes sampled per round; 0 means every available node.
    expected_nodes
        Nodes that must be connected before round 1 starts (``min_available``).
    labels
        The federation's fixed label set, in index order (empty only while a driver has not
        read the data yet; no app runs without it).
    text_column, label_column
        Columns of the node data files.
    model, train, dp
        Model, local optimisation and DP-SGD settings.
    server_learning_rate
        Global update = global + server_learning_rate · mean(delta); ``None`` (the
        default) means :data:`SERVER_LR_UNDER_DP` for FFA-LoRA under DP and
        :data:`SERVER_LR_WITHOUT_DP` otherwise (see :attr:`global_learning_rate`).
    keep_optimizer_state
        Each node keeps its Adam moments from one round to the next (in Flower's node
        context; they never leave the node and, computed from the noisy gradients, cost no
        privacy) instead of starting every round with a fresh Adam.
    weighting
        ``uniform`` (each node counts once; the default, it reveals no example counts) or
        ``examples`` (FedAvg weighting by local example counts).
    round_timeout
        Seconds the server waits for a round's replies.
    out_dir
        Where the server writes metrics, checkpoints and the final adapter.
    test_data
        Server-held evaluation file (empty: no centralized evaluation).
    label_descriptions_file
        Server-side file of public label descriptions (JSON object, or CSV/TSV with
        ``label,description``) from which the prototype head's class vectors start; empty:
        the label names. Only the server reads it: it ships the initial head to the nodes.
    partitions_dir
        Simulation only: per-node data files written by ``fedlora sim``.
    ledger_dir
        Simulation only: where each node keeps its privacy ledger.
    resume
        Continue from the checkpoint in ``out_dir``.
    send_train_loss
        Nodes also report their mean training loss (a statistic DP does not cover).
    secure_aggregation
        SecAgg+ settings (on by default: the server sees only the sum of the deltas).
    """

    rounds: int
    labels: tuple[str, ...] = ()
    nodes_per_round: int = 0
    expected_nodes: int = 3
    text_column: str = "text"
    label_column: str = "label"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig(epochs=1, batch_size=32)  # per round, on a node's share
    dp: DPConfig = DPConfig()
    server_learning_rate: float | None = None
    keep_optimizer_state: bool = False
    weighting: str = "uniform"
    round_timeout: float = 3600.0
    out_dir: str = ""
    test_data: str = ""
    label_descriptions_file: str = ""
    partitions_dir: str = ""
    ledger_dir: str = ""
    resume: bool = False
    send_train_loss: bool = True
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be >= 2 distinct names, got {list(self.labels)}")
        if self.nodes_per_round < 0:
            raise ValueError(f"nodes_per_round must be >= 0, got {self.nodes_per_round}")
        if self.expected_nodes < 1:
            raise ValueError(f"expected_nodes must be >= 1, got {self.expected_nodes}")
        if self.nodes_per_round > self.expected_nodes:
            raise ValueError(
                f"nodes_per_round ({self.nodes_per_round}) exceeds the expected nodes "
                f"({self.expected_nodes})"
            )
        lr = self.server_learning_rate
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"server_learning_rate must be > 0, got {lr}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if not (self.round_timeout > 0):
            raise ValueError(f"round_timeout must be > 0 seconds, got {self.round_timeout}")
        if self.secure_aggregation.enabled:
            self.secure_aggregation.check_round(self.sampled_per_round)
            if self.weighting != "uniform":
                raise ValueError(
                    "secure aggregation sends every delta with weight 1: use weighting "
                    "'uniform' (example-count weighting would also reveal each node's count)"
                )

    @property
    def sampled_per_round(self) -> int:
        """Nodes asked to train in each round."""
        return self.nodes_per_round or self.expected_nodes

    @property
    def global_learning_rate(self) -> float:
        """The server learning rate in force: the configured one, else the measured default
        for this run's DP setting and adapter variant.

        Under DP each FFA-LoRA node's Adam divides by gradients that are mostly noise, so the
        mean delta moves the model too little; a larger server step recovers it (BANKING77,
        10 nodes, ε = 8: 72 % at 1, 78–80 % at 3, diverged at 10). Without DP the same step
        overshoots, and so it does for plain LoRA under DP (docs/results.md, sections 4–5).
        """
        if self.server_learning_rate is not None:
            return self.server_learning_rate
        return default_server_learning_rate(self.dp.enabled, self.model.lora)

    def to_run_config(self) -> dict[str, ConfigValue]:
        """The flat Flower run config that :func:`settings_from_run_config` reads back."""
        return {
            "num-server-rounds": self.rounds,
            "nodes-per-round": self.nodes_per_round,
            "expected-nodes": self.expected_nodes,
            "labels": ",".join(self.labels),
            "text-column": self.text_column,
            "label-column": self.label_column,
            "model": self.model.model,
            "lora": self.model.lora,
            "lora-rank": self.model.rank,
            "lora-alpha": self.model.alpha,
            "target-modules": ",".join(self.model.target_modules),
            "max-length": self.model.max_length,
            "model-seed": self.model.seed,
            "head": self.model.head,
            "prototype-norm": self.model.prototype_norm,
            "encoder-dropout": self.model.encoder_dropout,
            "label-descriptions-file": self.label_descriptions_file,
            "local-epochs": self.train.epochs,
            "batch-size": self.train.batch_size,
            "learning-rate": self.train.learning_rate,
            "lr-schedule": self.train.lr_schedule,
            "weight-average": self.train.weight_average,
            "bf16": {None: "auto", True: "on", False: "off"}[self.train.bf16],
            "noise-seed": -1 if self.train.noise_seed is None else self.train.noise_seed,
            "dp": self.dp.enabled,
            "target-epsilon": self.dp.target_epsilon or 0.0,
            "target-delta": self.dp.delta or 0.0,
            "clip-norm": self.dp.clip_norm,
            "server-learning-rate": self.server_learning_rate or 0.0,
            "keep-optimizer-state": self.keep_optimizer_state,
            "weighting": self.weighting,
            "round-timeout": self.round_timeout,
            "out-dir": self.out_dir,
            "test-data": self.test_data,
            "partitions-dir": self.partitions_dir,
            "ledger-dir": self.ledger_dir,
            "resume": self.resume,
            "send-train-loss": self.send_train_loss,
            "secure-aggregation": self.secure_aggregation.enabled,
            "secagg-shares": self.secure_aggregation.shares,
            "secagg-threshold": self.secure_aggregation.threshold,
            "secagg-clipping-range": self.secure_aggregation.clipping_range,
        }


#: Fallbacks for keys a run config leaves out: the dataclasses' own defaults, so that a run
#: configured by Flower and one built in Python train alike.
MODEL_DEFAULTS = ModelConfig()
RUN_DEFAULTS = RunSettings(rounds=1)


def settings_from_run_config(config: Mapping[str, ConfigValue]) -> RunSettings:
    """Parse and validate a Flower run config (see :meth:`RunSettings.to_run_config`).

    Raises
    ------
    ValueError
        Naming the key whose value is missing, of the wrong type or out of range.
    """
    labels = _split(_str(config, "labels", ""))
    if not labels:
        raise ValueError("run config 'labels' must list the federation's label set")
    bf16_flag = _str(config, "bf16", "auto")
    if bf16_flag not in ("auto", "on", "off"):
        raise ValueError(f"run config 'bf16' must be auto, on or off, got {bf16_flag!r}")
    noise_seed = _int(config, "noise-seed", -1)
    delta = _float(config, "target-delta", 0.0)
    epsilon = _float(config, "target-epsilon", 8.0)
    return RunSettings(
        rounds=_int(config, "num-server-rounds", 3),
        nodes_per_round=_int(config, "nodes-per-round", 0),
        expected_nodes=_int(config, "expected-nodes", 3),
        labels=labels,
        text_column=_str(config, "text-column", "text"),
        label_column=_str(config, "label-column", "label"),
        model=ModelConfig(
            model=_str(config, "model", MODEL_DEFAULTS.model),
            lora=_str(config, "lora", MODEL_DEFAULTS.lora),
            rank=_int(config, "lora-rank", MODEL_DEFAULTS.rank),
            alpha=_int(config, "lora-alpha", MODEL_DEFAULTS.alpha),
            target_modules=_split(
                _str(config, "target-modules", ",".join(MODEL_DEFAULTS.target_modules))
            ),
            max_length=_int(config, "max-length", MODEL_DEFAULTS.max_length),
            seed=_int(config, "model-seed", MODEL_DEFAULTS.seed),
            head=_str(config, "head", MODEL_DEFAULTS.head),
            prototype_norm=_float(config, "prototype-norm", MODEL_DEFAULTS.prototype_norm),
            encoder_dropout=_float(config, "encoder-dropout", MODEL_DEFAULTS.encoder_dropout),
        ),
        train=TrainConfig(
            epochs=_int(config, "local-epochs", RUN_DEFAULTS.train.epochs),
            batch_size=_int(config, "batch-size", RUN_DEFAULTS.train.batch_size),
            learning_rate=_float(config, "learning-rate", RUN_DEFAULTS.train.learning_rate),
            lr_schedule=_str(config, "lr-schedule", RUN_DEFAULTS.train.lr_schedule),
            weight_average=_float(config, "weight-average", RUN_DEFAULTS.train.weight_average),
            bf16={"auto": None, "on": True, "off": False}[bf16_flag],
            noise_seed=None if noise_seed < 0 else noise_seed,
        ),
        dp=DPConfig(
            enabled=_bool(config, "dp", True),
            target_epsilon=epsilon,
            delta=delta if delta > 0 else None,
            clip_norm=_float(config, "clip-norm", RUN_DEFAULTS.dp.clip_norm),
        ),
        server_learning_rate=_float(config, "server-learning-rate", 0.0) or None,
        keep_optimizer_state=_bool(
            config, "keep-optimizer-state", RUN_DEFAULTS.keep_optimizer_state
        ),
        weighting=_str(config, "weighting", "uniform"),
        round_timeout=_float(config, "round-timeout", 3600.0),
        out_dir=_str(config, "out-dir", ""),
        test_data=_str(config, "test-data", ""),
        label_descriptions_file=_str(config, "label-descriptions-file", ""),
        partitions_dir=_str(config, "partitions-dir", ""),
        ledger_dir=_str(config, "ledger-dir", ""),
        resume=_bool(config, "resume", False),
        send_train_loss=_bool(config, "send-train-loss", True),
        secure_aggregation=SecureAggregationConfig(
            enabled=_bool(config, "secure-aggregation", True),
            shares=_number(config, "secagg-shares", 1.0),
            threshold=_number(config, "secagg-threshold", 0.6),
            clipping_range=_float(config, "secagg-clipping-range", 0.0),
        ),
    )


@dataclass(frozen=True)
class NodeSettings:
    """What one institution's node decides for itself.

    Parameters
    ----------
    node_name
        Human-readable node id used in ledgers and reports.
    data_path
        The node's training data file.
    node_dir
        Where the node keeps its ledger and keys.
    budget_epsilon
        The node's own total ε budget for this data set (``None``: the run's target).
    delta
        The node's own δ (``None``: the run's δ, else ``min(1e-5, 1/N)``).
    require_secure_aggregation
        Refuse to train in a round without secure aggregation (deployed nodes: on unless
        node config ``require-secure-aggregation=false``; simulated nodes follow the run).
    """

    node_name: str
    data_path: Path
    node_dir: Path
    budget_epsilon: float | None = None
    delta: float | None = None
    require_secure_aggregation: bool = True


def node_settings_from_config(
    node_config: Mapping[str, ConfigValue], run: RunSettings
) -> NodeSettings:
    """The node's settings from its node config.

    Deployment nodes set ``data-path`` and ``node-dir`` (and optionally ``node-name``,
    ``budget-epsilon``, ``delta``) with ``flower-supernode --node-config``. In a simulation,
    nodes only know their ``partition-id``; their data and ledgers live where ``fedlora sim``
    put them (``partitions-dir``, ``ledger-dir`` in the run config).
    """
    deployed = "data-path" in node_config
    if deployed:
        node_dir = Path(_str(node_config, "node-dir", ""))
        if not str(node_dir) or str(node_dir) == ".":
            raise ValueError("node config 'node-dir' (ledger and keys directory) is required")
        if _float(node_config, "budget-epsilon", 0.0) <= 0:
            raise ValueError(
                "node config 'budget-epsilon' (> 0) is required: a node's privacy budget is its "
                "own decision, never the server's"
            )
        data_path = Path(str(node_config["data-path"]))
        name = _str(node_config, "node-name", data_path.stem)
    elif "partition-id" in node_config:
        if not run.partitions_dir:
            raise ValueError("simulation nodes need run config 'partitions-dir'")
        pid = _int(node_config, "partition-id", 0)
        from sim.partition_files import partition_file  # only simulations reach this

        simulated = partition_file(Path(run.partitions_dir), pid)
        name, data_path = simulated.name, simulated.data_path
        node_dir = Path(run.ledger_dir or run.partitions_dir)
        node_config = {**node_config, **simulated.node_config}
    else:
        raise ValueError(
            "node config must set 'data-path' and 'node-dir' (or be a simulated node with "
            "'partition-id')"
        )
    budget = _float(node_config, "budget-epsilon", 0.0)
    delta = _float(node_config, "delta", 0.0)
    return NodeSettings(
        node_name=name,
        data_path=data_path,
        node_dir=node_dir,
        budget_epsilon=budget if budget > 0 else None,
        delta=delta if delta > 0 else None,
        require_secure_aggregation=_bool(
            node_config,
            "require-secure-aggregation",
            True if deployed else run.secure_aggregation.enabled,
        ),
    )
