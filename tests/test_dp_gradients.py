"""Regression tests for exact per-sample gradients of LoRA layers under Opacus.

An upstream report (opacus #820) describes silently corrupted LoRA updates for some
Opacus/peft version pairs; these tests compare Opacus against a per-example loop.
"""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from client.batching import make_batch
from client.dp_training import _grad_samples_to_float32
from client.model import ModelConfig, build_model

LABELS3 = ("a", "b", "c")

BATCH = [0, 1, 2, 3, 4, 5, 7, 11]


def _deterministic(model: nn.Module) -> nn.Module:
    """Dropout off (hooks only record in train mode, so eval() is not an option)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _per_example_grads(model: nn.Module, data, indices) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    grads = []
    for i in indices:
        model.zero_grad(set_to_none=True)
        batch = make_batch(data, [i])  # the example alone, unpadded
        loss = nn.functional.cross_entropy(
            model(batch.input_ids, batch.attention_mask), batch.labels, reduction="sum"
        )
        loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in _trainable(model)})
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("lora", ["lora", "ffa"])
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_opacus_per_sample_gradients_match_per_example_loop(toy_data, lora, mode) -> None:  # type: ignore[no-untyped-def]
    model = _deterministic(build_model(ModelConfig(model="tiny", lora=lora, seed=3), LABELS3))
    # B starts at zero; give it values so A's gradient is non-trivial too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    expected = _per_example_grads(model, toy_data, BATCH)
    gsm = GradSampleModule(model, loss_reduction="sum", force_functorch=(mode == "functorch"))
    batch = make_batch(toy_data, BATCH)  # padded to the longest: padding must not matter
    loss = nn.functional.cross_entropy(
        gsm(batch.input_ids, batch.attention_mask), batch.labels, reduction="sum"
    )
    loss.backward()
    names = [n for n, _ in _trainable(model)]
    assert any(".lora_B." in n for n in names)
    assert any(".lora_A." in n for n in names) == (lora == "lora")
    for name, param in _trainable(model):
        grad_sample = param.grad_sample
        assert grad_sample.shape == (len(BATCH), *param.shape), name
        for row, per_example in enumerate(expected):
            want = per_example[name]
            err = (grad_sample[row] - want).norm() / want.norm().clamp(min=1e-12)
            assert err < 1e-4, f"{name} example {row}: relative error {err:.2e}"
    gsm._close()


def test_sigma_zero_step_equals_clipped_sum(toy_data) -> None:  # type: ignore[no-untyped-def]
    model = _deterministic(build_model(ModelConfig(model="tiny", lora="lora", seed=5), LABELS3))
    clip = 0.05  # small enough that every example is clipped
    per_example = _per_example_grads(model, toy_data, BATCH)
    names = [n for n, _ in _trainable(model)]
    expected_update = {n: torch.zeros_like(p) for n, p in _trainable(model)}
    clipped_any = False
    for grads in per_example:
        norm = torch.sqrt(sum(grads[n].pow(2).sum() for n in names))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        clipped_any |= factor < 1.0
        for n in names:
            expected_update[n] -= factor * grads[n]
    assert clipped_any
    before = {n: p.detach().clone() for n, p in _trainable(model)}

    gsm = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD([p for _, p in _trainable(model)], lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=len(BATCH),
        loss_reduction="sum",
    )
    batch = make_batch(toy_data, BATCH)
    nn.functional.cross_entropy(
        gsm(batch.input_ids, batch.attention_mask), batch.labels, reduction="sum"
    ).backward()
    optimizer.step()
    for name, param in _trainable(model):
        got = param.detach() - before[name]
        # float32 can only resolve an update to a few ulps of the parameter itself (the
        # prototype head's scale is about 20, its update about 1e-3)
        ulps = 4 * torch.finfo(torch.float32).eps * before[name].norm()
        err = (got - expected_update[name]).norm()
        bound = 1e-4 * expected_update[name].norm() + ulps
        assert err <= bound, f"{name}: error {err:.2e} > {bound:.2e}"
    gsm._close()


def test_bf16_per_sample_gradients_are_clipped_in_float32(toy_data) -> None:  # type: ignore[no-untyped-def]
    """Under bf16 autocast, a single clipped example never moves the adapter by more than C."""
    model = _deterministic(build_model(ModelConfig(model="tiny", lora="lora", seed=9), LABELS3))
    clip = 1e-3
    gsm = GradSampleModule(model, loss_reduction="sum")
    params = [p for _, p in _trainable(model)]
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1,
        loss_reduction="sum",
    )
    worst = 0.0
    for i in range(24):
        before = [p.detach().clone() for p in params]
        batch = make_batch(toy_data, [i])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = gsm(batch.input_ids, batch.attention_mask)
        nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum").backward()
        assert any(p.grad_sample.dtype == torch.bfloat16 for p in params)
        _grad_samples_to_float32(params)
        assert all(p.grad_sample.dtype == torch.float32 for p in params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        moved = torch.sqrt(
            sum((p.detach() - b).pow(2).sum() for p, b in zip(params, before, strict=True))
        )
        worst = max(worst, float(moved) / clip)
    assert worst <= 1 + 1e-5, f"an update moved {worst:.6f}·C"
    gsm._close()
