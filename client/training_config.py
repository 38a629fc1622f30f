"""The model and local-training settings as plain frozen dataclasses, free of torch.

Why it exists: a deployed node starts a fresh ClientApp process for every message, and
SecAgg+ sends four per round. Reading the run config must not import torch, transformers or
Opacus (seconds each time); only training does. ``client.model`` and ``client.dp_training``
use these classes and re-export them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privacy.accountant_names import ACCOUNTANTS

LORA_VARIANTS: tuple[str, ...] = ("ffa", "lora")
HEADS: tuple[str, ...] = ("prototype", "linear")
DEFAULT_MODEL = "default"
TINY_MODEL = "tiny"


@dataclass(frozen=True)
class ModelConfig:
    """How to build the model.

    Parameters
    ----------
    model
        ``"default"`` (all-MiniLM-L6-v2, offline), ``"tiny"`` or a Hugging Face id / local path.
    lora
        ``"ffa"`` (A frozen, B trained) or ``"lora"`` (A and B trained).
    rank, alpha, dropout
        LoRA rank r, scaling α (the update is scaled by α/r) and dropout on the LoRA input.
    target_modules
        Names of the encoder's linear layers that get adapters.
    max_length
        Tokens kept per text (longer texts are truncated).
    seed
        Seed of every random initialisation (LoRA A, head), identical across nodes.
    head
        ``"prototype"`` (cosine similarity to class vectors that start from the label text:
        the zero-shot prior) or ``"linear"`` (randomly initialised, no prior).
    prototype_norm
        Norm at which the prototype head stores its class vectors. The head normalises them,
        so this changes no prediction; it sets how fast the optimiser turns them: Adam moves
        each coordinate by about the learning rate per step, which turns a vector of norm R
        by about ``lr·√hidden / R``. A larger R keeps the label-text prior from being
        washed out by DP noise while LoRA adapts at the full learning rate.
    encoder_dropout
        Dropout probability of every dropout layer inside the encoder while training
        (all-MiniLM-L6-v2 was trained with 0.1). Evaluation never drops out.
    """

    model: str = DEFAULT_MODEL
    lora: str = "ffa"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")
    max_length: int = 128
    seed: int = 0
    head: str = "prototype"
    prototype_norm: float = 1.0
    encoder_dropout: float = 0.1  # 0 measured no better under DP (docs/results.md)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty name or path")
        if self.lora not in LORA_VARIANTS:
            raise ValueError(f"lora must be one of {', '.join(LORA_VARIANTS)}, got {self.lora!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha}")
        if not (0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (0 <= self.encoder_dropout < 1):
            raise ValueError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout}")
        if not self.target_modules or any(not m for m in self.target_modules):
            raise ValueError("target_modules must name at least one module")
        if not (math.isfinite(self.prototype_norm) and self.prototype_norm > 0):
            raise ValueError(f"prototype_norm must be > 0, got {self.prototype_norm}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")


GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "functorch")
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear")


@dataclass(frozen=True)
class HeadRefitConfig:
    """A last, full-batch DP fit of the prototype head's class vectors after DP-SGD.

    Once the encoder adapter is trained, the node embeds all its records with the adapted
    encoder (frozen from then on) and takes ``steps`` Adam steps on the class vectors alone,
    each on the clipped gradient of *every* record plus Gaussian noise (Opacus, sampling rate
    1). It pays off because ε does not add up: at ε = 8, DP-SGD's few subsampled steps at
    small σ spend their ε in a heavy tail, and a Gaussian release composed with them costs a
    small fraction of its own ε (docs/results.md section 5, eighth look).

    Parameters
    ----------
    steps
        Full-batch steps T₂ (≥ 1).
    noise_ratio
        ρ: the refit's noise on the full-data gradient sum, in units of the noise DP-SGD's
        steps leave on it as a whole. DP-SGD at σ, rate q and T steps adds noise σ·C per
        step to sums of about qN gradients; over its T steps that is like one full-data sum
        with noise σ·C / (q·√T). The refit's T₂ steps then each get
        ``σ₂ = ρ · σ / (q·√T) · √T₂``. σ is calibrated so that both phases together land on
        the target ε.
    learning_rate
        Adam learning rate of the refit.
    """

    steps: int = 10
    noise_ratio: float = 1.0
    learning_rate: float = 0.03

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"head refit steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.noise_ratio) and self.noise_ratio > 0):
            raise ValueError(f"head refit noise_ratio must be > 0, got {self.noise_ratio}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"head refit learning_rate must be > 0, got {self.learning_rate}")

    def noise_multiplier(self, sigma: float, sample_rate: float, steps: int) -> float:
        """σ₂ of each refit step, given DP-SGD's σ, sampling rate q and step count T (> 0)."""
        if steps < 1 or not (0 < sample_rate <= 1):
            raise ValueError(
                f"need steps >= 1 and sample_rate in (0, 1], got {steps} and {sample_rate}"
            )
        return self.noise_ratio * sigma / (sample_rate * math.sqrt(steps)) * math.sqrt(self.steps)


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy settings of local training.

    Parameters
    ----------
    enabled
        ``False`` trains without DP (a baseline; reports no ε).
    target_epsilon
        Total ε budget of this data set, used to calibrate σ when ``noise_multiplier`` is None.
    delta
        δ; ``None`` means ``min(1e-5, 1/N)``.
    noise_multiplier
        A fixed σ (then ε is whatever it costs; calibration is skipped).
    clip_norm
        Per-sample gradient clipping norm C.
    accountant
        Accountant that calibrates and reports ε (``prv``); ``rdp`` is always reported too.
    grad_sample_mode
        Opacus per-sample gradient mode.
    adapter_clip_share
        ``None`` (the default) clips each example's whole gradient at C. A share ``f`` in
        (0, 1) clips by group instead: the encoder adapter's gradient at ``C·√f`` and the
        head's at ``C·√(1 − f)`` (each group's tensors split its C² by their sizes), so the
        per-example sensitivity, and with it σ·C and ε, is unchanged. With the prototype
        head, an example's head gradient holds about 90 % of its squared norm before
        clipping (measured on BANKING77, docs/results.md section 5), so flat clipping leaves
        the adapter about a tenth of the budget.
        Opacus' per-layer clipping; hooks mode only.
    head_refit
        ``None`` (the default here) ends with DP-SGD's last step. A
        :class:`HeadRefitConfig` refits the prototype head's class vectors afterwards; both
        phases share the target ε. ``fedlora train`` turns it on by default.
    """

    enabled: bool = True
    target_epsilon: float | None = 8.0
    delta: float | None = None
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    adapter_clip_share: float | None = None
    head_refit: HeadRefitConfig | None = None

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}"
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                f"got {self.grad_sample_mode!r}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.delta is not None and not (0 < self.delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.enabled and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("DP needs either target_epsilon or noise_multiplier")
        if self.adapter_clip_share is not None:
            if not (0 < self.adapter_clip_share < 1):
                raise ValueError(
                    f"adapter_clip_share must be in (0, 1), got {self.adapter_clip_share}"
                )
            if not self.enabled:
                raise ValueError("adapter_clip_share applies only under DP (clipping is DP's)")
            if self.grad_sample_mode != "hooks":
                raise ValueError(
                    "adapter_clip_share needs grad_sample_mode 'hooks' (Opacus clips per "
                    f"layer only there), got {self.grad_sample_mode!r}"
                )
        if self.head_refit is not None and not self.enabled:
            raise ValueError("head_refit applies only under DP (without DP, train longer)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of local training.

    Parameters
    ----------
    epochs
        Passes over the data (in expectation, under Poisson sampling).
    batch_size
        Expected batch size B; the sampling rate is ``1 / ceil(N / B)``.
    learning_rate
        Adam learning rate.
    bf16
        Autocast the forward pass to bfloat16 (``None``: only on CPUs with AMX, where it
        pays off; measured slower than float32 with AVX512-BF16 alone).
    noise_seed
        Seed of sampling and noise for a reproducible experiment; ``None`` (the default, and
        the only safe choice in deployment) draws them from the operating system.
    physical_batch_tokens
        Most padded tokens in one forward/backward pass. A (Poisson) batch is sorted by
        length and run as consecutive physical batches of at most this many padded tokens
        whose clipped per-sample gradients are summed before the one noisy step: the same
        DP-SGD step, without padding every short text to the batch's longest one.
    lr_schedule
        ``"constant"`` or ``"linear"``: decay the learning rate linearly from
        ``learning_rate`` at the first step to ``learning_rate / steps`` at the last one
        of this training run (a node's round).
    weight_average
        Decay of an exponential moving average of the trainable parameters over the steps
        of one training run (:class:`client.weight_average.ParameterAverage`); the trained
        model is that average. 0 turns it off and keeps the last iterate. The average is
        post-processing of the noisy iterates: it costs no privacy.
    """

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-2  # best of 3e-3, 1e-2, 3e-2 in bench/sweep.py (docs/results.md)
    bf16: bool | None = None
    noise_seed: int | None = None
    physical_batch_tokens: int = 2048
    lr_schedule: str = "constant"
    weight_average: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not (0 <= self.weight_average < 1):
            raise ValueError(f"weight_average must be in [0, 1), got {self.weight_average}")
        if self.physical_batch_tokens < 1:
            raise ValueError(
                f"physical_batch_tokens must be >= 1, got {self.physical_batch_tokens}"
            )

    def learning_rate_at(self, step: int, steps: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of ``steps`` planned."""
        if self.lr_schedule == "constant" or steps <= 1:
            return self.learning_rate
        return self.learning_rate * (steps - min(step, steps - 1)) / steps
