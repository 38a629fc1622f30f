"""The last phase of DP training: refit the prototype head's class vectors on frozen embeddings.

Why it exists: under DP-SGD almost all of what noise costs sits in the class vectors (77 × 384
on BANKING77), and at ε = 8 DP-SGD's few subsampled steps at small σ spend their ε in a heavy
tail. A full-batch Gaussian release composed with them costs a small fraction of its own ε,
so a last fit of the class vectors on every record at once buys more signal per unit of ε than
further DP-SGD steps (docs/results.md section 5, eighth look; the settings are
:class:`client.training_config.HeadRefitConfig`).

The encoder is frozen for this phase, so each record is embedded once by the adapted encoder;
Opacus then clips each record's gradient of the class vectors at C, adds Gaussian noise σ₂·C to
their sum at sampling rate 1, and Adam steps. The logit scale keeps its DP-SGD value.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.batching import TokenizedTexts
from client.evaluation import pooled_embeddings
from client.model import TextClassifier, unwrap_model
from client.prototype_head import PrototypeHead
from client.training_config import HeadRefitConfig
from privacy.accounting import DPEvent

#: Records per forward/backward pass of the head (each holds a 77 × 384 per-sample gradient).
REFIT_CHUNK = 512


def refit_class_vectors(
    model: nn.Module,
    data: TokenizedTexts,
    refit: HeadRefitConfig,
    event: DPEvent,
    clip_norm: float,
    *,
    generator: torch.Generator,
    bf16: bool = False,
) -> None:
    """Refit the class vectors of ``model``'s prototype head in place, as ``event`` plans.

    Parameters
    ----------
    model
        A :class:`client.model.TextClassifier` with a prototype head (unwrapped).
    data
        The node's tokenized training records (the same ones DP-SGD saw).
    refit
        Steps and learning rate.
    event
        The planned release: σ₂, sampling rate 1, ``refit.steps`` steps. It must already
        be part of the budget the caller calibrated.
    clip_norm
        Per-record clipping norm C.
    generator
        Source of the noise (OS entropy unless the caller seeded it).
    bf16
        Embed the records under bfloat16 autocast, as DP-SGD's forward passes ran.

    Raises
    ------
    ValueError
        If the head is not a prototype head or ``event`` does not match ``refit``.
    RuntimeError
        If Opacus recorded other steps than planned.
    """
    from opacus import PrivacyEngine

    classifier = unwrap_model(model)
    head = getattr(classifier, "head", None)
    if not isinstance(classifier, TextClassifier) or not isinstance(head, PrototypeHead):
        raise ValueError("the head refit needs a model with the prototype head")
    if event.sample_rate != 1.0 or event.steps != refit.steps:
        raise ValueError(
            f"a head refit takes {refit.steps} full-batch steps, the event plans "
            f"{event.steps} at sampling rate {event.sample_rate}"
        )
    embeddings = pooled_embeddings(classifier, data, bf16=bf16)
    labels = torch.as_tensor(data.label_ids, dtype=torch.long)
    loader = DataLoader(TensorDataset(embeddings, labels), batch_size=len(labels))
    scale_trainable = head.scale.requires_grad
    head.scale.requires_grad_(False)
    engine = PrivacyEngine(accountant="prv")
    private_head, optimizer, private_loader = engine.make_private(
        module=head,
        optimizer=torch.optim.Adam([head.prototypes], lr=refit.learning_rate),
        data_loader=loader,
        noise_multiplier=event.noise_multiplier,
        max_grad_norm=clip_norm,
        poisson_sampling=True,  # at sampling rate 1: every record, every step
        noise_generator=generator,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(refit.steps):
                for pooled, targets in private_loader:
                    _refit_step(private_head, optimizer, pooled, targets)
    finally:
        private_head._close()  # removes Opacus' hooks
        head.scale.requires_grad_(scale_trainable)
    recorded = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    if recorded != [(event.noise_multiplier, 1.0, refit.steps)]:
        raise RuntimeError(f"Opacus recorded {recorded}, the refit planned {event}")


def _refit_step(
    head: nn.Module, optimizer: torch.optim.Optimizer, pooled: torch.Tensor, targets: torch.Tensor
) -> None:
    # One noisy step over the whole data set, in chunks whose clipped per-sample gradients
    # Opacus sums (signal_skip_step) before it adds the noise once, as in DP-SGD's loop.
    optimizer.zero_grad(set_to_none=True)
    starts = range(0, len(targets), REFIT_CHUNK)
    for number, start in enumerate(starts, start=1):
        end = start + REFIT_CHUNK
        loss = nn.functional.cross_entropy(head(pooled[start:end]), targets[start:end])
        loss.backward()
        if number < len(starts):
            optimizer.signal_skip_step(do_skip=True)  # type: ignore[attr-defined]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    optimizer.step()
