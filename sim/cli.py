"""The ``fedlora`` command: one entry point, one subcommand per job.

Flags are parsed here into frozen configuration dataclasses and handed to the job; no module
below this one reads flags or environment variables. Errors the user can fix (bad data,
impossible settings) end with one clear line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client.data_loading import DataConfig, DataValidationError
from client.redaction import RedactionConfig
from client.run_settings import (
    RUN_DEFAULTS,
    SERVER_LR_UNDER_DP,
    SERVER_LR_WITHOUT_DP,
    RunSettings,
)
from client.secure_aggregation_settings import MIN_SECURE_NODES, SecureAggregationConfig
from client.synthetic import SyntheticConfig
from client.training_config import (
    HEADS,
    LORA_VARIANTS,
    LR_SCHEDULES,
    DPConfig,
    HeadRefitConfig,
    ModelConfig,
    TrainConfig,
)
from privacy.accounting import format_epsilon
from sim.audit_commands import add_audit_parsers, cmd_audit, cmd_node
from sim.certs_commands import add_certs_parsers, cmd_certs
from sim.partitioning import PartitionScheme
from sim.simulation import PreparedSimulation, SimConfig
from sim.train_job import TrainJobConfig, run_train_job

EPILOG_TRAIN = """\
examples:
  # DP fine-tuning on the embedded generated data (bank + hospital), ε=8:
  fedlora train --out runs/train
  # your own CSV, fixed label set, separate test file, PII scrubbed first:
  fedlora train --data notes.csv --eval notes_test.csv --text-column note \\
      --label-column triage --labels-file labels.txt --redact --epsilon 3 --out runs/ward7
  # the non-private baseline:
  fedlora train --data notes.csv --no-dp --out runs/baseline

privacy: ε is record-level (ε, δ)-DP under add/remove-one adjacency with Poisson sampling,
computed by Opacus' PRV accountant from the recorded steps (RDP reported alongside). The
noise multiplier is calibrated so that the planned epochs land at --epsilon, unless
--noise-multiplier fixes it. δ defaults to min(1e-5, 1/N).
"""


#: ``fedlora train`` defaults: the configuration dataclasses' own (one place to change them).
TRAIN_DEFAULTS = TrainConfig()
DP_DEFAULTS = DPConfig()
REFIT_DEFAULTS = HeadRefitConfig()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except ``None``: those options' help says what unset means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _read_lines(path: Path, what: str) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc
    values = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not values:
        raise ValueError(f"{path}: no {what} found (one per line)")
    return values


def _add_model_group(p: argparse.ArgumentParser) -> None:
    """The model flags ``fedlora train`` and ``fedlora sim`` share; defaults from ModelConfig."""
    defaults = ModelConfig()
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        default=defaults.model,
        help="'default' (all-MiniLM-L6-v2), 'tiny', HF id or path",
    )
    model.add_argument(
        "--head",
        choices=HEADS,
        default=defaults.head,
        help="prototype: cosine similarity to class vectors that start as the encoder's "
        "embeddings of the label text (a zero-shot classifier before training, no privacy "
        "cost: the label set is public); linear: a random head (no prior)",
    )
    model.add_argument(
        "--prototype-norm",
        type=float,
        default=defaults.prototype_norm,
        help="norm at which the prototype head stores its class vectors: predictions do not "
        "depend on it, but Adam turns a vector of norm R by about lr·√hidden/R per step, so a "
        "larger R keeps the label-text prior from being washed out by DP noise",
    )
    model.add_argument(
        "--label-descriptions",
        type=Path,
        help="public label descriptions for the prototype head: JSON {label: text} or CSV "
        "with columns label,description (default: label names, '_'/'-' read as spaces)",
    )
    model.add_argument("--lora", choices=LORA_VARIANTS, default=defaults.lora)
    model.add_argument("--lora-rank", type=int, default=defaults.rank)
    model.add_argument("--lora-alpha", type=int, default=defaults.alpha)
    model.add_argument(
        "--target-modules", default=",".join(defaults.target_modules), help="comma-separated"
    )
    model.add_argument(
        "--max-length", type=int, default=defaults.max_length, help="tokens kept per text"
    )
    model.add_argument(
        "--encoder-dropout",
        type=float,
        default=defaults.encoder_dropout,
        help="dropout inside the encoder while training (the checkpoint was trained with 0.1; "
        "0 measured the same under DP, docs/results.md)",
    )


def _add_step_options(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    group.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=defaults.lr_schedule,
        help="linear: decay the learning rate linearly to lr/steps over each training run "
        "(a node's round)",
    )
    group.add_argument(
        "--weight-average",
        type=float,
        default=defaults.weight_average,
        metavar="DECAY",
        help="keep an exponential moving average of the adapter over the steps of each "
        "training run, with this decay per step, and release the average instead of the last "
        "step, at no privacy cost (0: off, the default; 0.9 measured no better over 3 "
        "epochs, docs/results.md)",
    )


def _model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        model=args.model,
        head=args.head,
        prototype_norm=args.prototype_norm,
        lora=args.lora,
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        target_modules=_split(args.target_modules),
        max_length=args.max_length,
        seed=args.seed,
        encoder_dropout=args.encoder_dropout,
    )


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune on one institution's data (DP-SGD), the centralized baseline",
        description="Fine-tune a LoRA adapter with DP-SGD on one institution's CSV/JSONL data.",
        epilog=EPILOG_TRAIN,
        formatter_class=_HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="CSV/TSV/JSONL file (default: embedded data)")
    held = data.add_mutually_exclusive_group()
    held.add_argument("--eval", type=Path, dest="eval_data", help="separate evaluation file")
    held.add_argument(
        "--eval-fraction", type=float, default=0.2, help="stratified hold-out share of --data"
    )
    data.add_argument("--text-column", default="text")
    data.add_argument("--label-column", default="label")
    data.add_argument("--id-column", help="column of unique record ids (checked if given)")
    labels = data.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="comma-separated label set (default: inferred)")
    labels.add_argument("--labels-file", type=Path, help="label set, one per line")
    data.add_argument("--redact", action="store_true", help="scrub PII before tokenization")
    data.add_argument("--redact-names", type=Path, help="file of person names to scrub")

    _add_model_group(p)

    priv = p.add_argument_group("differential privacy")
    priv.add_argument(
        "--epsilon",
        type=float,
        default=DP_DEFAULTS.target_epsilon,
        help="target ε of the whole run",
    )
    priv.add_argument("--delta", type=float, help="δ (default: min(1e-5, 1/N))")
    priv.add_argument("--noise-multiplier", type=float, help="fix σ instead of calibrating")
    priv.add_argument(
        "--clip-norm", type=float, default=DP_DEFAULTS.clip_norm, help="per-sample clipping norm C"
    )
    priv.add_argument(
        "--adapter-clip-share",
        type=float,
        metavar="F",
        help="clip by group: the encoder adapter's gradient at C·√F and the head's at "
        "C·√(1−F), same σ and ε (default: the whole gradient at C)",
    )
    priv.add_argument(
        "--head-refit-steps",
        type=int,
        default=REFIT_DEFAULTS.steps,
        metavar="T2",
        help="after DP-SGD, refit the prototype head's class vectors on the adapted encoder's "
        "embeddings of all records, in T2 full-batch DP steps that share the --epsilon budget "
        "(prototype head under DP only; 0: off). On BANKING77 at ε = 8 it raised DP-SGD's σ "
        "by 1.3 %% and test accuracy from 86.7 %% to 88.7 %% (docs/results.md)",
    )
    priv.add_argument(
        "--head-refit-noise-ratio",
        type=float,
        default=REFIT_DEFAULTS.noise_ratio,
        metavar="RHO",
        help="the refit's noise on the full-data gradient sum, in units of the noise all of "
        "DP-SGD's steps leave on it (σ/(q·√T)); smaller: a stronger refit, a noisier DP-SGD",
    )
    priv.add_argument(
        "--head-refit-lr",
        type=float,
        default=REFIT_DEFAULTS.learning_rate,
        help="Adam learning rate of the head refit",
    )
    priv.add_argument("--no-dp", action="store_true", help="train without DP (baseline)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS.epochs)
    opt.add_argument(
        "--batch-size",
        type=int,
        default=TRAIN_DEFAULTS.batch_size,
        help="expected (Poisson) batch size",
    )
    opt.add_argument(
        "--lr", type=float, default=TRAIN_DEFAULTS.learning_rate, help="Adam learning rate"
    )
    _add_step_options(opt, TRAIN_DEFAULTS)
    opt.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bfloat16 autocast; auto: only on CPUs with AMX (slower than float32 without)",
    )
    opt.add_argument("--seed", type=int, default=0, help="seed of model init and data split")
    opt.add_argument(
        "--noise-seed",
        type=int,
        help="seed DP sampling and noise (reproducible experiments only; default: OS entropy)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="write the embedded generated data set to a file",
        description="Generate the embedded data set (bank support messages, hospital triage "
        "notes, several institutions with skewed label mixes, PII-like strings) to CSV/JSONL.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output .csv or .jsonl file")
    p.add_argument("--domains", default="bank,hospital", help="comma-separated: bank,hospital")
    p.add_argument("--institutions-per-domain", type=int, default=3)
    p.add_argument("--examples-per-institution", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)


EPILOG_SIM = """\
examples:
  # the main job: 6 institutions (3 banks, 3 hospitals) of the embedded data, DP ε=8 each:
  fedlora sim --out runs/sim
  # a research grid point: 10 nodes, Dirichlet non-IID, 5 sampled per round, ε=3:
  fedlora sim --data intents.csv --text-column text --label-column category \\
      --nodes 10 --partition dirichlet:0.5 --nodes-per-round 5 --rounds 10 --epsilon 3 \\
      --out runs/d05
  # scale test: 100 nodes, tiny model, 10 per round:
  fedlora sim --model tiny --nodes 100 --nodes-per-round 10 --partition iid --batch-size 8 \\
      --out runs/scale
  # continue an interrupted run:
  fedlora sim --out runs/sim --resume
  # comparison run without secure aggregation (plaintext deltas reach the server):
  fedlora sim --no-secure-agg --out runs/plain

outputs in --out: metrics.json, adapter/ (final global adapter), checkpoint/, ledgers/
(each node's privacy ledger), accuracy.png, epsilon.png, partitions/ and test.csv.

privacy: every node calibrates its own noise so that taking part in all planned rounds lands
exactly on its ε budget (record-level (ε, δ)-DP, add/remove-one adjacency, Poisson sampling,
PRV accountant); it records each spend in its ledger before its update leaves it.

secure aggregation (on by default): Flower's SecAgg+ with a ChaCha20 mask generator; the
server unmasks only the sum of >= 3 nodes' deltas, and a round that cannot be unmasked is
reported as not completed.
"""


def _add_sim_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate a federation of institutions on this machine (the main job)",
        description="Simulate N institutions fine-tuning one adapter with federated DP-LoRA "
        "rounds, through Flower's simulation runtime (Ray).",
        epilog=EPILOG_SIM,
        formatter_class=_HelpFormatter,
    )
    fed = p.add_argument_group("federation")
    fed.add_argument(
        "--nodes", type=int, help="number of institutions (default: 6, or from natural:)"
    )
    fed.add_argument("--nodes-per-round", type=int, default=0, help="sampled per round; 0 = all")
    fed.add_argument("--rounds", type=int, default=5)
    fed.add_argument(
        "--partition",
        default=None,
        help="iid | dirichlet:ALPHA | pathological:K | natural:COLUMN "
        "(default: natural:institution on the embedded data, else dirichlet:0.5)",
    )
    fed.add_argument("--weighting", choices=("uniform", "examples"), default="uniform")
    fed.add_argument(
        "--server-lr",
        type=float,
        help="server learning rate: the global adapter moves by this times the mean node "
        f"delta (default: {SERVER_LR_UNDER_DP:g} under DP with FFA-LoRA, {SERVER_LR_WITHOUT_DP:g} "
        "with --no-dp or --lora lora; measured in docs/results.md)",
    )
    fed.add_argument(
        "--keep-optimizer-state",
        action=argparse.BooleanOptionalAction,
        default=RUN_DEFAULTS.keep_optimizer_state,
        help="each node keeps its Adam moments from round to round (in its Flower context; "
        "they never leave the node and cost no privacy) instead of a fresh Adam every round "
        "(measured +0.6 points, within noise, docs/results.md)",
    )
    fed.add_argument("--round-timeout", type=float, default=3600.0, help="seconds per round")
    held = fed.add_mutually_exclusive_group()
    held.add_argument(
        "--test-fraction", type=float, default=0.2, help="server-held test share of --data"
    )
    held.add_argument(
        "--test-data",
        type=Path,
        help="separate server-held test file (same columns and labels); all of --data trains",
    )
    fed.add_argument("--cpus-per-node", type=float, default=1.0, help="Ray CPUs per node actor")

    secure = p.add_argument_group(
        "secure aggregation (SecAgg+: the server sees only the sum of the nodes' deltas)"
    )
    secure.add_argument(
        "--no-secure-agg",
        action="store_true",
        help="send deltas in plaintext (comparison runs only); with it on, >= 3 nodes per round",
    )
    secure.add_argument(
        "--secagg-shares",
        type=_count_or_fraction,
        default=1.0,
        help="shares of each node's secrets: a count >= 3, or a fraction (0, 1] of the nodes "
        "per round",
    )
    secure.add_argument(
        "--secagg-threshold",
        type=_count_or_fraction,
        default=0.6,
        help="shares needed to unmask a dropped node: a count below the shares, or a "
        "fraction (0, 1) of them; lower tolerates more dropouts, higher resists more collusion",
    )

    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="CSV/TSV/JSONL file (default: embedded data)")
    data.add_argument("--text-column", default="text")
    data.add_argument("--label-column", default="label")
    labels = data.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="comma-separated label set (default: inferred)")
    labels.add_argument("--labels-file", type=Path, help="label set, one per line")

    _add_model_group(p)

    priv = p.add_argument_group("differential privacy (per node)")
    priv.add_argument(
        "--epsilon",
        type=float,
        default=RUN_DEFAULTS.dp.target_epsilon,
        help="each node's total ε budget",
    )
    priv.add_argument("--delta", type=float, help="δ (default: min(1e-5, 1/N) per node)")
    priv.add_argument("--clip-norm", type=float, default=RUN_DEFAULTS.dp.clip_norm)
    priv.add_argument("--no-dp", action="store_true", help="train without DP (baseline)")
    priv.add_argument(
        "--node-budget",
        action="append",
        default=[],
        metavar="NODE=EPS",
        help="a node's own ε budget, if it differs from --epsilon (repeatable)",
    )

    opt = p.add_argument_group("local optimisation")
    opt.add_argument("--local-epochs", type=int, default=RUN_DEFAULTS.train.epochs)
    opt.add_argument(
        "--batch-size",
        type=int,
        default=RUN_DEFAULTS.train.batch_size,
        help="expected (Poisson) batch size",
    )
    opt.add_argument(
        "--lr",
        type=float,
        default=RUN_DEFAULTS.train.learning_rate,
        help="local Adam learning rate",
    )
    _add_step_options(opt, RUN_DEFAULTS.train)
    opt.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bfloat16 autocast; auto: only on CPUs with AMX (slower than float32 without)",
    )
    opt.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the node files and test split, print the equivalent `flwr run` command, "
        "and stop (to run the same apps the Flower way)",
    )
    p.add_argument(
        "--ledger-dir",
        type=Path,
        help="nodes' ledger directory (default: OUT/ledgers); share it across runs to "
        "accumulate each node's spend over several runs",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fedlora`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedlora",
        description="Privacy-preserving federated LoRA fine-tuning: Flower rounds, Opacus "
        "DP-SGD on every node, per-node privacy accounting.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_sim_parser(sub)
    _add_train_parser(sub)
    _add_data_parser(sub)
    add_audit_parsers(sub, _HelpFormatter)
    add_certs_parsers(sub, _HelpFormatter)
    return parser


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def train_job_from_args(args: argparse.Namespace) -> TrainJobConfig:
    """Turn ``fedlora train`` flags into a :class:`sim.train_job.TrainJobConfig`."""
    labels = (
        _split(args.labels)
        if args.labels
        else (_read_lines(args.labels_file, "labels") if args.labels_file else None)
    )
    names = _read_lines(args.redact_names, "names") if args.redact_names else ()
    bf16 = {"auto": None, "on": True, "off": False}[args.bf16]
    return TrainJobConfig(
        out=args.out,
        data=args.data,
        eval_data=args.eval_data,
        eval_fraction=args.eval_fraction,
        data_config=DataConfig(
            text_column=args.text_column,
            label_column=args.label_column,
            id_column=args.id_column,
            labels=labels,
        ),
        redaction=RedactionConfig(enabled=args.redact or bool(names), names=names),
        model=_model_config_from_args(args),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            lr_schedule=args.lr_schedule,
            weight_average=args.weight_average,
            bf16=bf16,
            noise_seed=args.noise_seed,
        ),
        dp=DPConfig(
            enabled=not args.no_dp,
            target_epsilon=args.epsilon,
            delta=args.delta,
            noise_multiplier=args.noise_multiplier,
            clip_norm=args.clip_norm,
            adapter_clip_share=args.adapter_clip_share,
            head_refit=_head_refit_from_args(args),
        ),
        split_seed=args.seed,
        label_descriptions=args.label_descriptions,
    )


def _head_refit_from_args(args: argparse.Namespace) -> HeadRefitConfig | None:
    if args.head_refit_steps < 0:
        raise ValueError(
            f"--head-refit-steps must be >= 0 (0 turns the refit off), got {args.head_refit_steps}"
        )
    if args.no_dp or args.head != "prototype" or args.head_refit_steps == 0:
        return None
    return HeadRefitConfig(
        steps=args.head_refit_steps,
        noise_ratio=args.head_refit_noise_ratio,
        learning_rate=args.head_refit_lr,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    job = train_job_from_args(args)
    bar: tqdm | None = None

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        metrics = run_train_job(job, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if metrics["dp"] and metrics["epsilon"] is None:  # --noise-multiplier 0: clipping only
        privacy = (
            f"ε = ∞: σ = 0 adds no noise (clipped steps only, no privacy), "
            f"q = {metrics['sample_rate']:.4g}, {metrics['steps']} steps"
        )
    elif metrics["dp"]:
        privacy = (
            f"ε = {format_epsilon(metrics['epsilon'])} (δ = {metrics['delta']:.3g}, "
            f"{metrics['accountant']} accountant; RDP {format_epsilon(metrics['epsilon_rdp'])}), "
            f"σ = {metrics['noise_multiplier']:.4f}, "
            f"q = {metrics['sample_rate']:.4g}, {metrics['steps']} steps"
        )
        if metrics["head_refit_noise_multiplier"] is not None:
            privacy += (
                f", then a head refit of {metrics['head_refit_steps']} full-batch steps at "
                f"σ = {metrics['head_refit_noise_multiplier']:.4f}"
            )
    else:
        privacy = "no differential privacy (baseline)"
    print(
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on "
        f"{metrics['eval_examples']} held-out examples; {privacy}"
    )
    print(f"wrote {job.out / 'metrics.json'} and {job.out / 'adapter'}/")
    return 0


def sim_config_from_args(args: argparse.Namespace) -> SimConfig:
    """Turn ``fedlora sim`` flags into a :class:`sim.simulation.SimConfig`."""
    labels = (
        _split(args.labels)
        if args.labels
        else (_read_lines(args.labels_file, "labels") if args.labels_file else None)
    )
    embedded = args.data is None
    partition = args.partition or ("natural:institution" if embedded else "dirichlet:0.5")
    scheme = PartitionScheme.parse(partition)
    nodes = args.nodes if args.nodes is not None or scheme.kind == "natural" else 6
    settings = RunSettings(
        rounds=args.rounds,
        nodes_per_round=args.nodes_per_round,
        # natural partitions learn their node count from the data; checked again then
        expected_nodes=max(nodes or MIN_SECURE_NODES, args.nodes_per_round, 1),
        text_column="text" if embedded else args.text_column,
        label_column="label" if embedded else args.label_column,
        model=_model_config_from_args(args),
        train=TrainConfig(
            epochs=args.local_epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            lr_schedule=args.lr_schedule,
            weight_average=args.weight_average,
            bf16={"auto": None, "on": True, "off": False}[args.bf16],
        ),
        dp=DPConfig(
            enabled=not args.no_dp,
            target_epsilon=args.epsilon,
            delta=args.delta,
            clip_norm=args.clip_norm,
        ),
        label_descriptions_file=(
            str(args.label_descriptions.resolve()) if args.label_descriptions else ""
        ),
        server_learning_rate=args.server_lr,
        keep_optimizer_state=args.keep_optimizer_state,
        weighting=args.weighting,
        round_timeout=args.round_timeout,
        resume=args.resume,
        send_train_loss=True,
        secure_aggregation=SecureAggregationConfig(
            enabled=not args.no_secure_agg,
            shares=args.secagg_shares,
            threshold=args.secagg_threshold,
        ),
    )
    return SimConfig(
        out=args.out,
        settings=settings,
        partition=scheme,
        nodes=nodes,
        data=args.data,
        data_config=DataConfig(
            text_column=args.text_column, label_column=args.label_column, labels=labels
        ),
        test_fraction=args.test_fraction,
        test_data=args.test_data,
        seed=args.seed,
        cpus_per_node=args.cpus_per_node,
        node_budgets=tuple(_node_budget(text) for text in args.node_budget),
        ledger_dir=args.ledger_dir,
    )


def _count_or_fraction(text: str) -> int | float:
    """``3`` → 3 (a count); ``0.6`` → 0.6 (a fraction)."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def _node_budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not sep or not name or not budget > 0:
        raise ValueError(f"--node-budget {text!r}: expected NODE=EPS with EPS > 0")
    return name, budget


def _cmd_sim(args: argparse.Namespace) -> int:
    from sim.simulation import launch_simulation, prepare_simulation

    config = sim_config_from_args(args)
    prepared = prepare_simulation(config)
    if args.prepare_only:
        print(flwr_run_command(prepared))
        return 0
    record = launch_simulation(prepared, config.cpus_per_node)
    final = record["final"] or {}
    initial = record.get("initial") or {}
    print()
    if final.get("accuracy") is not None:
        print(
            f"final accuracy {final['accuracy']:.4f} (macro-F1 {final['macro_f1']:.4f}) on the "
            f"server's test split; round 0 (before training) "
            f"{initial.get('accuracy', float('nan')):.4f}"
        )
    print(f"completed rounds: {final.get('completed_rounds', 0)} of {config.settings.rounds}")
    for name, eps in sorted(final.get("epsilon", {}).items()):
        print(
            f"  {name}: ε = {format_epsilon(eps)} (PRV accountant, "
            f"budget {config.settings.dp.target_epsilon})"
        )
    for name, info in sorted(record.get("stopped_nodes", {}).items()):
        print(f"  {name}: stopped at round {info['round']}: {info['reason']}")
    print(f"wrote {config.out}/metrics.json, adapter/, ledgers/, accuracy.png, epsilon.png")
    incomplete = [r["round"] for r in record["rounds"] if not r["completed"]]
    if incomplete:
        print(
            f"fedlora sim: rounds {incomplete} did not complete (see 'failures' and "
            "'stopped_nodes' in metrics.json)",
            file=sys.stderr,
        )
        return 1
    return 0


def flwr_run_command(prepared: PreparedSimulation) -> str:
    """The ``flwr run`` command line that runs a prepared simulation through Flower's CLI."""
    overrides = []
    for key, value in prepared.settings.to_run_config().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(
                str(Path(value).resolve()) if key.endswith(("-dir", "-data")) and value else value
            )
        else:
            text = repr(value)
        overrides.append(f"{key}={text}")
    config = " ".join(overrides)
    return (
        f"flwr run . local --federation-config 'num-supernodes={len(prepared.node_names)}' "
        f"--run-config '{config}'"
    )


def _cmd_data(args: argparse.Namespace) -> int:
    from client.synthetic import generate_records, write_csv, write_jsonl

    config = SyntheticConfig(
        domains=_split(args.domains),
        institutions_per_domain=args.institutions_per_domain,
        examples_per_institution=args.examples_per_institution,
        seed=args.seed,
    )
    rows = generate_records(config)
    suffix = args.out.suffix.lower()
    if suffix == ".csv":
        write_csv(rows, args.out)
    elif suffix in (".jsonl", ".json"):
        write_jsonl(rows, args.out)
    else:
        raise ValueError(f"{args.out}: use a .csv or .jsonl file name")
    print(f"wrote {len(rows)} records to {args.out}")
    return 0


COMMANDS = {
    "sim": _cmd_sim,
    "train": _cmd_train,
    "data": _cmd_data,
    "audit": cmd_audit,
    "node": cmd_node,
    "certs": cmd_certs,
}


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a fedlora user (our own output stays)."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # a privacy tool does not phone home
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    for message in (
        "Secure RNG turned off",  # documented in README: OS-seeded generator, no torchcsprng
        ".*is_gradient_checkpointing.*",
        "Full backward hook is firing",
        "Optimal order is .*",
        "Tip: In future versions of Ray.*",
        "The specified min_partition_size.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*run_simulation.*")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedlora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except DataValidationError as exc:
        print(f"fedlora {args.command}: data error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"fedlora {args.command}: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"fedlora {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedlora {args.command}: interrupted; outputs already written are complete")
        return 130


if __name__ == "__main__":
    sys.exit(main())
