"""Local training of the adapter on one node, with Opacus DP-SGD or without.

One facade, :func:`train_adapter`, wraps Opacus' ``PrivacyEngine``: Poisson sampling, per-sample
clipping at norm C, Gaussian noise σ·C, and a noise multiplier that is either given or
calibrated (by :mod:`privacy.accounting`) so that the planned steps, on top of whatever this
data set already spent, land at the node's target (ε, δ). The ε it reports is recomputed
from the recorded events by a named accountant, and cross-checked against the steps Opacus'
own accountant saw.

Randomness that protects privacy (Poisson sampling and the noise) comes from the operating
system unless a ``noise_seed`` is given for a reproducible experiment.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.batching import Batch, TokenizedTexts, make_batch
from client.head_refit import refit_class_vectors
from client.model import unwrap_model
from client.optimizer_state import export_adam_state, import_adam_state
from client.training_config import DPConfig, HeadRefitConfig, TrainConfig
from client.weight_average import ParameterAverage
from privacy.accounting import (
    DPEvent,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
)

#: Called after every optimizer step with (steps done, steps planned, running mean loss).
ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class StepPlan:
    """How many DP-SGD steps a training run takes and at what sampling rate."""

    sample_rate: float
    steps_per_epoch: int
    steps: int


@dataclass(frozen=True)
class TrainingReport:
    """What a training run did and what it cost.

    ``events`` are the DP events of this run only (DP-SGD's, then the head refit's when
    there is one); ``epsilon`` and ``epsilon_rdp`` compose ``prior_events`` and ``events``.
    Without DP, ``epsilon`` is ``inf`` and events are empty.
    ``optimizer_state`` is Adam's state after the run (:mod:`client.optimizer_state`).
    """

    dp: bool
    steps: int
    sample_rate: float
    noise_multiplier: float
    clip_norm: float
    delta: float
    accountant: str
    epsilon: float
    epsilon_rdp: float
    train_loss: float
    train_examples: int
    seconds: float
    bf16: bool
    events: tuple[DPEvent, ...] = field(default_factory=tuple)
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def head_refit_noise_multiplier(self) -> float | None:
        """σ₂ of the head refit (the event after DP-SGD's), or ``None`` when the run had none."""
        return self.events[1].noise_multiplier if len(self.events) > 1 else None


def plan_steps(num_records: int, batch_size: int, epochs: int) -> StepPlan:
    """Sampling rate and step count, matching Opacus' Poisson data loader.

    Raises
    ------
    ValueError
        If there are fewer records than one expected batch (the sampling rate would be 1).
    """
    if num_records < batch_size:
        raise ValueError(
            f"{num_records} training examples is fewer than the expected batch size "
            f"{batch_size}; lower the batch size or add data"
        )
    steps_per_epoch = math.ceil(num_records / batch_size)
    return StepPlan(1.0 / steps_per_epoch, steps_per_epoch, steps_per_epoch * epochs)


def bf16_supported() -> bool:
    """Whether bfloat16 autocast pays off on this CPU: only with AMX tiles.

    With AVX512-BF16 alone (no AMX) bf16 autocast measured 0.4-0.7x the float32 throughput
    with the pad-to-longest and length-sorted batches nodes use (``bench/local_step.py``,
    docs/results.md): the casts cost more than the faster dot products save. ``--bf16 on``
    still forces it.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


class IndexDataset(Dataset[tuple[int]]):
    """Records as ``(index,)``: Opacus' loader wants a tuple per record."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int]:
        return (index,)


def batch_indices(collated: Sequence[torch.Tensor]) -> torch.Tensor:
    """Record indices of one batch from a (Poisson) loader over :class:`IndexDataset`."""
    # Opacus turns a first-ever empty Poisson batch into [] and later ones into [empty tensor].
    if len(collated) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.as_tensor(collated[0], dtype=torch.long).reshape(-1)


def group_clip_norms(model: nn.Module, clip_norm: float, adapter_share: float) -> list[float]:
    """Per-tensor clip norms of group-wise clipping, in the order of the trainable parameters.

    The head (parameters under ``head.``) gets ``(1 − adapter_share)·C²`` and the encoder
    adapter ``adapter_share·C²``; within a group each tensor's share is proportional to its
    size. The norms' root sum of squares is ``clip_norm``, the sensitivity Opacus' per-layer
    optimizer calibrates its noise to.

    Raises
    ------
    ValueError
        If the head or the adapter has no trainable tensor (there is nothing to split).
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    head = [p.numel() if name.startswith("head.") else 0 for name, p in named]
    adapter = [p.numel() - h for (_, p), h in zip(named, head, strict=True)]
    if not sum(head) or not sum(adapter):
        raise ValueError("group-wise clipping needs trainable head and adapter parameters")
    shares = [
        (1 - adapter_share) * h / sum(head) + adapter_share * a / sum(adapter)
        for h, a in zip(head, adapter, strict=True)
    ]
    return [clip_norm * math.sqrt(share) for share in shares]


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)


def head_refit_event(refit: HeadRefitConfig, sigma: float, plan: StepPlan) -> DPEvent:
    """The full-batch release of a head refit that follows ``plan``'s steps at σ."""
    sigma_2 = refit.noise_multiplier(sigma, plan.sample_rate, plan.steps)
    return DPEvent(sigma_2, 1.0, refit.steps)


def resolve_noise_multiplier(
    dp: DPConfig, plan: StepPlan, delta: float, prior_events: Sequence[DPEvent] = ()
) -> float:
    """σ for this run: the configured one, or calibrated so that its steps, and the head
    refit that follows them if ``dp`` has one, land on the target ε."""
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # guaranteed by DPConfig
    refit = dp.head_refit
    return calibrate_noise_multiplier(
        dp.target_epsilon,
        delta,
        plan.sample_rate,
        plan.steps,
        prior_events=prior_events,
        accountant=dp.accountant,
        followed_by=None if refit is None else lambda s: [head_refit_event(refit, s, plan)],
    )


def _grad_samples_to_float32(params: Sequence[nn.Parameter]) -> None:
    # Under bf16 autocast Opacus stores per-sample gradients in bf16, and its clipping norms
    # would then carry ~0.4% rounding error: enough to let a clipped gradient exceed C. Norms
    # and clipping must be computed in float32 for the sensitivity bound to hold.
    for p in params:
        grad_sample = getattr(p, "grad_sample", None)
        if isinstance(grad_sample, torch.Tensor) and grad_sample.dtype != torch.float32:
            p.grad_sample = grad_sample.float()  # type: ignore[attr-defined]


def _noise_only_batch(pad_token_id: int) -> Batch:
    # An empty Poisson batch must still cost a noisy step (skipping it would reveal that the
    # batch was empty). Opacus adds noise only after a backward pass, so run one padding
    # token through the model with a zero loss: its clipped gradient is exactly zero.
    ids = torch.full((1, 1), pad_token_id, dtype=torch.long)
    return Batch(ids, torch.ones_like(ids), torch.zeros(0, dtype=torch.long))


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.numel() == 0:
        return logits.float().sum() * 0.0
    return nn.functional.cross_entropy(logits.float(), labels)


def physical_batches(
    data: TokenizedTexts, indices: torch.Tensor, token_budget: int
) -> list[torch.Tensor]:
    """Split one batch into length-sorted chunks of at most ``token_budget`` padded tokens.

    Padding a batch to its longest record costs ``size × longest`` tokens; sorted chunks cost
    ``Σ size_k × longest_k``. A record longer than the budget still gets a chunk of its own.
    An empty batch stays one empty chunk.
    """
    if indices.numel() == 0:
        return [indices]
    lengths = torch.as_tensor([len(data.token_ids[int(i)]) for i in indices], dtype=torch.long)
    order = torch.argsort(lengths, stable=True)
    ordered, ordered_lengths = indices[order], lengths[order].tolist()
    chunks, start = [], 0
    for end, length in enumerate(ordered_lengths):
        if end > start and (end - start + 1) * length > token_budget:
            chunks.append(ordered[start:end])
            start = end
    chunks.append(ordered[start:])
    return chunks


def _run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[int]],
    data: TokenizedTexts,
    train: TrainConfig,
    bf16: bool,
    planned_steps: int,
    progress: ProgressCallback | None,
) -> tuple[int, float]:
    """The optimisation loop; returns (steps taken, mean training loss).

    Each batch runs as length-sorted physical batches (:func:`physical_batches`). Under
    DP-SGD, Opacus clips every example's gradient and sums them over the physical batches
    (``signal_skip_step``, as its ``BatchMemoryManager`` does), then adds noise once and
    divides by the expected batch size: the step is that of the whole batch. Without DP the
    losses are weighted by each chunk's share, so the gradient is the batch mean. With
    ``train.weight_average`` the trained parameters end as the average of the iterates.
    """
    private = hasattr(optimizer, "signal_skip_step")  # an Opacus DPOptimizer
    params = [p for p in model.parameters() if p.requires_grad]
    average = ParameterAverage(params, train.weight_average) if train.weight_average else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    steps, loss_sum, loss_count = 0, 0.0, 0
    with warnings.catch_warnings():
        # Opacus' hooks on layers whose inputs need no gradient make torch warn every step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(train.epochs):
            for collated in loader:
                indices = batch_indices(collated)
                chunks = physical_batches(data, indices, train.physical_batch_tokens)
                optimizer.zero_grad(set_to_none=True)
                for number, chunk in enumerate(chunks, start=1):
                    batch = make_batch(data, chunk)
                    if len(batch) == 0:
                        batch = _noise_only_batch(data.pad_token_id)
                    with autocast:
                        logits = model(batch.input_ids, batch.attention_mask)
                    loss = _loss(logits, batch.labels)
                    share = 1.0 if private else len(batch) / max(len(indices), 1)
                    (loss * share).backward()
                    if len(batch) > 0:
                        loss_sum += float(loss.detach()) * len(batch)
                        loss_count += len(batch)
                    if number < len(chunks) and private:
                        _grad_samples_to_float32(params)
                        optimizer.signal_skip_step(do_skip=True)  # type: ignore[attr-defined]
                        optimizer.step()  # clips and sums this chunk's examples only
                        optimizer.zero_grad(set_to_none=True)  # keeps the running sum
                _grad_samples_to_float32(params)
                for group in optimizer.param_groups:
                    group["lr"] = train.learning_rate_at(steps, planned_steps)
                optimizer.step()
                if average is not None:
                    average.update()
                steps += 1
                if progress is not None:
                    progress(steps, planned_steps, loss_sum / max(loss_count, 1))
    if average is not None:
        average.copy_to_parameters()
    return steps, loss_sum / max(loss_count, 1)


def train_adapter(
    model: nn.Module,
    data: TokenizedTexts,
    train: TrainConfig,
    dp: DPConfig,
    *,
    prior_events: Sequence[DPEvent] = (),
    progress: ProgressCallback | None = None,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
) -> TrainingReport:
    """Train the adapter of ``model`` in place on ``data``.

    Parameters
    ----------
    model
        A model from :func:`client.model.build_model`; only parameters with
        ``requires_grad`` change. It is returned to its unwrapped state afterwards.
    data
        The node's tokenized training records.
    train, dp
        Optimisation and privacy settings.
    prior_events
        DP events already recorded for this data set (composed into the reported ε and
        taken into account when calibrating σ).
    progress
        Optional per-step callback.
    optimizer_state
        Adam's state from an earlier run on the same parameters (a node's previous round;
        see :mod:`client.optimizer_state`); ``None`` starts a fresh Adam.

    Returns
    -------
    TrainingReport
        Steps, σ, q, δ and ε (named accountant, plus RDP) of the run.
    """
    from opacus import PrivacyEngine

    started = time.perf_counter()
    n = len(data)
    plan = plan_steps(n, train.batch_size, train.epochs)
    use_bf16 = bf16_supported() if train.bf16 is None else train.bf16
    delta = dp.delta if dp.delta is not None else default_delta(n)
    generator = _generator(train.noise_seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    adam = torch.optim.Adam(params, lr=train.learning_rate)
    if optimizer_state:
        import_adam_state(adam, params, optimizer_state)
    optimizer: torch.optim.Optimizer = adam
    loader: DataLoader[tuple[int]] = DataLoader(
        IndexDataset(n), batch_size=train.batch_size, shuffle=not dp.enabled, generator=generator
    )
    sigma = 0.0
    engine = None
    trained: nn.Module = model
    if dp.enabled:
        sigma = resolve_noise_multiplier(dp, plan, delta, prior_events)
        engine = PrivacyEngine(accountant=dp.accountant)
        clipping: dict[str, Any] = {"max_grad_norm": dp.clip_norm}
        if dp.adapter_clip_share is not None:
            clipping = {
                "max_grad_norm": group_clip_norms(model, dp.clip_norm, dp.adapter_clip_share),
                "clipping": "per_layer",
            }
        trained, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            **clipping,
            poisson_sampling=True,
            grad_sample_mode=dp.grad_sample_mode,
            noise_generator=generator,
        )
    try:
        steps, train_loss = _run_steps(
            trained, optimizer, loader, data, train, use_bf16, plan.steps, progress
        )
    finally:
        if engine is not None:
            trained._close()  # type: ignore[operator]  # removes Opacus hooks from the model
    unwrap_model(model).train()

    events: tuple[DPEvent, ...] = ()
    epsilon = epsilon_rdp = math.inf
    if dp.enabled:
        assert engine is not None
        recorded = sum(s for _, _, s in engine.accountant.history)
        if recorded != steps:
            raise RuntimeError(f"Opacus recorded {recorded} noisy steps, the loop took {steps}")
        events = (DPEvent(sigma, plan.sample_rate, steps),) if sigma > 0 else ()
        if dp.head_refit is not None and sigma > 0:
            refit = head_refit_event(dp.head_refit, sigma, plan)
            refit_class_vectors(
                model, data, dp.head_refit, refit, dp.clip_norm, generator=generator, bf16=use_bf16
            )
            events = (*events, refit)
        if sigma > 0:
            epsilon = compute_epsilon([*prior_events, *events], delta, dp.accountant)
            epsilon_rdp = compute_epsilon([*prior_events, *events], delta, "rdp")
    return TrainingReport(
        dp=dp.enabled,
        steps=steps,
        sample_rate=plan.sample_rate,
        noise_multiplier=sigma,
        clip_norm=dp.clip_norm,
        delta=delta,
        accountant=dp.accountant,
        epsilon=epsilon,
        epsilon_rdp=epsilon_rdp,
        train_loss=train_loss,
        train_examples=n,
        seconds=time.perf_counter() - started,
        bf16=use_bf16,
        events=events,
        optimizer_state=export_adam_state(adam, params),
    )
