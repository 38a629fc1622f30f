"""A cosine-similarity classification head whose class vectors start from public label text.

Why it exists: a linear head starts as a random classifier, and under DP-SGD the few hundred
noisy steps a node can afford end below what the frozen encoder already knows. The label set
is public in a federation (every node must agree on it), so class vectors built from the
encoder's embeddings of the label names (or of given label descriptions) cost no privacy and
classify by similarity before any training (the zero-shot prior).

The head computes ``scale · cos(pooled, prototype_c)`` for every class ``c``: the mean-pooled
encoder output and each class vector are L2-normalised (as all-MiniLM-L6-v2 was trained), and
``scale`` is a learnable temperature. Both the class vectors and the scale are trained under
DP, so Opacus needs their per-sample gradients: :func:`prototype_grad_sample` gives them in
closed form and is registered with Opacus' hook-based grad sampler at import. The head runs in
float32 even under bf16 autocast (its cost is negligible; cosines need the precision).
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.nn import functional

#: Initial logit scale: cosines in [-1, 1] become logits in [-20, 20], sharp enough for a
#: softmax over dozens of classes to be confident when one class vector clearly matches.
INITIAL_SCALE = 20.0
#: ``torch.nn.functional.normalize``'s floor on a norm.
NORM_EPS = 1e-12


class PrototypeHead(nn.Module):
    """``scale · normalise(pooled) · normalise(prototypes)ᵀ``: logits from cosine similarity.

    Parameters
    ----------
    hidden_size
        Width of the pooled encoder output.
    num_labels
        Number of classes (one class vector each).
    scale
        Initial value of the learnable logit scale.
    """

    def __init__(self, hidden_size: int, num_labels: int, scale: float = INITIAL_SCALE) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_labels, hidden_size))
        self.scale = nn.Parameter(torch.tensor([float(scale)]))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pooled.device.type, enabled=False):
            unit = functional.normalize(pooled.float(), dim=-1, eps=NORM_EPS)
            prototypes = functional.normalize(self.prototypes, dim=-1, eps=NORM_EPS)
            return self.scale * (unit @ prototypes.T)

    @torch.no_grad()
    def set_prototypes(self, vectors: torch.Tensor, norm: float = 1.0) -> None:
        """Replace the class vectors (one row per class), stored rescaled to ``norm``.

        The forward pass normalises them, so ``norm`` changes no prediction, only how far
        an optimiser step turns them (see ``ModelConfig.prototype_norm``).
        """
        if tuple(vectors.shape) != tuple(self.prototypes.shape):
            raise ValueError(
                f"class vectors have shape {tuple(vectors.shape)}, "
                f"the head expects {tuple(self.prototypes.shape)}"
            )
        unit = functional.normalize(vectors.float(), dim=-1, eps=NORM_EPS)
        self.prototypes.copy_(unit * norm)


@register_grad_sampler(PrototypeHead)
def prototype_grad_sample(
    layer: PrototypeHead, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of the head's parameters, for Opacus' hook-based DP-SGD.

    With ``z = pooled / |pooled|``, ``w_c = p_c / |p_c|``, ``u_bc = z_b · w_c`` and logits
    ``s · u_bc``, the gradient of example ``b``'s loss ``g_bc = ∂L_b/∂logit_bc`` gives

    - ``∂L_b/∂s = Σ_c g_bc u_bc``;
    - ``∂L_b/∂p_c = s g_bc (z_b − u_bc w_c) / |p_c|`` (the derivative of normalisation).

    Parameters
    ----------
    layer
        The head.
    activations
        Its recorded input, ``[pooled]`` of shape ``(B, hidden)``.
    backprops
        Gradients of the per-example losses with respect to its output, ``(B, num_labels)``.

    Returns
    -------
    dict
        Per-sample gradients, float32, keyed by the trainable parameters.
    """
    grads = backprops.float()
    unit = functional.normalize(activations[0].float(), dim=-1, eps=NORM_EPS)
    norms = layer.prototypes.detach().norm(dim=-1).clamp_min(NORM_EPS)
    directions = layer.prototypes.detach() / norms.unsqueeze(-1)
    cosines = unit @ directions.T
    result: dict[nn.Parameter, torch.Tensor] = {}
    if layer.scale.requires_grad:
        result[layer.scale] = (grads * cosines).sum(dim=1, keepdim=True)
    if layer.prototypes.requires_grad:
        weight = layer.scale.detach().float() * grads / norms
        result[layer.prototypes] = weight.unsqueeze(-1) * (
            unit.unsqueeze(1) - cosines.unsqueeze(-1) * directions.unsqueeze(0)
        )
    return result
