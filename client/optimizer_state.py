"""A node's Adam moments as plain named arrays, to carry them from one round to the next.

Why it exists: a federated node trains a few DP-SGD steps per round. A fresh Adam's first
step moves every coordinate by ±lr in the sign of its gradient, which under DP is mostly
noise; its second-moment estimate only becomes a variance after some tens of steps. Carrying
the moments across rounds lets every round's steps use the estimate of all earlier ones. The
moments are computed from the noisy, clipped gradients only (post-processing: no privacy
cost) and never leave the node; Flower keeps them in the node's ``Context.state``.

State is plain data (name → array), like Opacus' accountants: ``"<i>.exp_avg"``,
``"<i>.exp_avg_sq"`` and ``"<i>.step"`` for the i-th trainable parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

_MOMENTS = ("exp_avg", "exp_avg_sq")


def export_adam_state(
    optimizer: torch.optim.Adam, params: Sequence[nn.Parameter]
) -> dict[str, np.ndarray]:
    """The moments and step count of every parameter that has taken a step.

    Parameters
    ----------
    optimizer
        The plain ``torch.optim.Adam`` (not Opacus' wrapper, which shares its state).
    params
        Its parameters, in the order that names them.
    """
    arrays: dict[str, np.ndarray] = {}
    for index, param in enumerate(params):
        state = optimizer.state.get(param)
        if not state:
            continue
        for moment in _MOMENTS:
            arrays[f"{index}.{moment}"] = state[moment].detach().cpu().numpy().copy()
        arrays[f"{index}.step"] = np.array(float(state["step"]), dtype=np.float64)
    return arrays


def import_adam_state(
    optimizer: torch.optim.Adam, params: Sequence[nn.Parameter], arrays: Mapping[str, np.ndarray]
) -> None:
    """Give ``optimizer`` the moments of :func:`export_adam_state` before its first step.

    Raises
    ------
    ValueError
        Naming the entry whose parameter does not exist, whose shape differs from its
        parameter's, or that is incomplete (all three entries of a parameter or none).
    """
    indices = set()
    for key in arrays:
        head, _, kind = key.partition(".")
        if not head.isdigit() or kind not in (*_MOMENTS, "step"):
            raise ValueError(
                f"optimizer state entry {key!r} is not <index>.exp_avg|exp_avg_sq|step"
            )
        if int(head) >= len(params):
            raise ValueError(
                f"optimizer state entry {key!r} names parameter {head}, but there are {len(params)}"
            )
        indices.add(int(head))
    for index in sorted(indices):
        param = params[index]
        missing = [k for k in (*_MOMENTS, "step") if f"{index}.{k}" not in arrays]
        if missing:
            raise ValueError(f"optimizer state of parameter {index} lacks {', '.join(missing)}")
        moments = {}
        for moment in _MOMENTS:
            value = np.asarray(arrays[f"{index}.{moment}"])
            if value.shape != tuple(param.shape):
                raise ValueError(
                    f"optimizer state entry '{index}.{moment}' has shape {value.shape}, "
                    f"its parameter {tuple(param.shape)}"
                )
            moments[moment] = torch.tensor(value, dtype=param.dtype, device=param.device)
        step = float(np.asarray(arrays[f"{index}.step"]))
        optimizer.state[param] = {"step": torch.tensor(step), **moments}


def carried_steps(arrays: Mapping[str, np.ndarray]) -> int:
    """Steps the state of :func:`export_adam_state` has seen (0 for an empty state)."""
    steps = [int(np.asarray(v)) for k, v in arrays.items() if k.endswith(".step")]
    return max(steps, default=0)
