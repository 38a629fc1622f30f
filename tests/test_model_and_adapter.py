"""Model building, adapter state out/in with strict checks, and the adapter on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.adapter_io import load_adapter, save_adapter
from client.model import (
    ModelConfig,
    adapter_state,
    build_model,
    is_adapter_parameter,
    load_adapter_state,
)

LABELS3 = ("a", "b", "c")


def test_only_adapter_is_trainable_and_ffa_freezes_a() -> None:
    model = build_model(ModelConfig(model="tiny", lora="ffa"), ("a", "b", "c", "d"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_parameter(n) for n in trainable)
    assert not any(".lora_A." in n for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    frozen_base = [n for n, p in model.named_parameters() if not is_adapter_parameter(n)]
    assert frozen_base  # the base model exists but never trains
    plain = build_model(ModelConfig(model="tiny", lora="lora"), ("a", "b", "c", "d"))
    assert any(".lora_A." in n for n, p in plain.named_parameters() if p.requires_grad)


def test_same_seed_same_frozen_a_across_nodes() -> None:
    a = adapter_state(build_model(ModelConfig(model="tiny", seed=11), LABELS3))
    b = adapter_state(build_model(ModelConfig(model="tiny", seed=11), LABELS3))
    c = adapter_state(build_model(ModelConfig(model="tiny", seed=12), LABELS3))
    lora_a = [n for n in a if ".lora_A." in n]
    assert all(np.array_equal(a[n], b[n]) for n in lora_a)
    assert any(not np.array_equal(a[n], c[n]) for n in lora_a)


def test_travelling_state_is_float32_trainable_only() -> None:
    model = build_model(ModelConfig(model="tiny", lora="ffa", rank=4), LABELS3)
    state = adapter_state(model, trainable_only=True)
    assert state and all(v.dtype == np.float32 for v in state.values())
    assert not any(".lora_A." in n for n in state)
    assert set(state) < set(adapter_state(model))


def test_load_adapter_state_round_trip_and_strict_checks() -> None:
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    state = {n: np.full_like(v, 0.25) for n, v in adapter_state(model, trainable_only=True).items()}
    load_adapter_state(model, state, trainable_only=True)
    assert all(np.all(v == 0.25) for v in adapter_state(model, trainable_only=True).values())

    name = next(iter(state))
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(
            model, {k: v for k, v in state.items() if k != name}, trainable_only=True
        )
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(model, {**state, "base.weight": np.zeros(2)}, trainable_only=True)
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state(model, {**state, name: np.zeros((1, 1))}, trainable_only=True)
    bad = state[name].copy()
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_adapter_state(model, {**state, name: bad}, trainable_only=True)
    # a failed load leaves the model as it was
    assert all(np.all(v == 0.25) for v in adapter_state(model, trainable_only=True).values())


def test_adapter_directory_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = ModelConfig(model="tiny", rank=4)
    model = build_model(config, LABELS3)
    save_adapter(tmp_path / "adapter", adapter_state(model), config, ("a", "b", "c"), {"round": 2})
    saved = load_adapter(tmp_path / "adapter")
    assert saved.model_config == config and saved.labels == ("a", "b", "c")
    assert saved.extra == {"round": 2}
    fresh = build_model(config, LABELS3)
    load_adapter_state(fresh, saved.state)
    original = adapter_state(model)
    assert all(np.array_equal(original[n], v) for n, v in adapter_state(fresh).items())
    # no base-model weights on disk
    assert all(is_adapter_parameter(n) for n in saved.state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_encoder_dropout_reaches_every_dropout_layer(dropout: float) -> None:
    """``encoder_dropout`` sets hidden and attention dropout alike: with 0 a training-mode
    forward pass is deterministic, with 0.3 two passes differ; evaluation never drops out."""
    model = build_model(ModelConfig(model="tiny", encoder_dropout=dropout), LABELS3)
    rates = {m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {dropout}
    ids = torch.randint(1000, 2000, (4, 12))
    mask = torch.ones_like(ids)
    model.train()
    first, second = model(ids, mask), model(ids, mask)
    assert torch.equal(first, second) is (dropout == 0.0)
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))
    with pytest.raises(ValueError, match="encoder_dropout"):
        ModelConfig(encoder_dropout=1.0)


def test_model_config_validation() -> None:
    with pytest.raises(ValueError, match="lora must be one of ffa, lora"):
        ModelConfig(lora="dora")
    with pytest.raises(ValueError, match="rank"):
        ModelConfig(rank=0)
