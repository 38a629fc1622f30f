"""DP-SGD local training: what changes, what must not, and what ε it reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.dp_training import (
    DPConfig,
    TrainConfig,
    group_clip_norms,
    plan_steps,
    train_adapter,
)
from client.model import ModelConfig, adapter_state, build_model
from privacy.accounting import DPEvent, compute_epsilon

LABELS3 = ("a", "b", "c")


def _train(toy_data, lora="ffa", dp=None, noise_seed=1, epochs=1):  # type: ignore[no-untyped-def]
    model = build_model(ModelConfig(model="tiny", lora=lora, seed=0), LABELS3)
    before = adapter_state(model)
    report = train_adapter(
        model,
        toy_data,
        TrainConfig(epochs=epochs, batch_size=32, learning_rate=1e-2, noise_seed=noise_seed),
        dp or DPConfig(target_epsilon=4.0),
    )
    return before, adapter_state(model), report


def _changed(before, after, marker):  # type: ignore[no-untyped-def]
    return {n: not np.array_equal(before[n], after[n]) for n in before if marker in n}


def test_ffa_trains_b_and_head_but_never_a(toy_data) -> None:  # type: ignore[no-untyped-def]
    before, after, report = _train(toy_data, "ffa")
    assert report.steps == plan_steps(len(toy_data), 32, 1).steps
    assert all(_changed(before, after, ".lora_B.").values())
    assert all(_changed(before, after, "head.").values())
    a_changed = _changed(before, after, ".lora_A.")
    assert a_changed and not any(a_changed.values())


def test_plain_lora_trains_a_and_b(toy_data) -> None:  # type: ignore[no-untyped-def]
    before, after, _ = _train(toy_data, "lora")
    assert all(_changed(before, after, ".lora_A.").values())
    assert all(_changed(before, after, ".lora_B.").values())


def test_noise_seeds_differ_when_sigma_positive(toy_data) -> None:  # type: ignore[no-untyped-def]
    dp = DPConfig(noise_multiplier=1.0)
    _, first, _ = _train(toy_data, dp=dp, noise_seed=1)
    _, second, _ = _train(toy_data, dp=dp, noise_seed=2)
    _, again, _ = _train(toy_data, dp=dp, noise_seed=1)
    assert any(not np.array_equal(first[n], second[n]) for n in first)
    assert all(np.array_equal(first[n], again[n]) for n in first)


def test_sigma_zero_is_deterministic_clipped_training(toy_data) -> None:  # type: ignore[no-untyped-def]
    dp = DPConfig(noise_multiplier=0.0, clip_norm=0.1)
    _, first, report = _train(toy_data, dp=dp, noise_seed=7)
    _, second, _ = _train(toy_data, dp=dp, noise_seed=7)
    assert all(np.array_equal(first[n], second[n]) for n in first)
    assert report.noise_multiplier == 0.0 and math.isinf(report.epsilon)


def test_reported_epsilon_lands_on_target_and_matches_pld(toy_data) -> None:  # type: ignore[no-untyped-def]
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    _, _, report = _train(toy_data, dp=DPConfig(target_epsilon=4.0, delta=1e-5), epochs=2)
    assert report.epsilon <= 4.0
    assert report.epsilon > 4.0 * 0.95  # calibrated, not wildly over-noised
    assert report.epsilon <= report.epsilon_rdp
    (event,) = report.events
    pld = PLDAccountant()
    pld.compose(
        PoissonSampledDpEvent(event.sample_rate, GaussianDpEvent(event.noise_multiplier)),
        event.steps,
    )
    independent = pld.get_epsilon(1e-5)
    assert abs(report.epsilon - independent) / independent < 0.03
    assert report.epsilon == pytest.approx(compute_epsilon([event], 1e-5), rel=1e-12)


def test_prior_spend_is_composed_and_calibrated_around(toy_data) -> None:  # type: ignore[no-untyped-def]
    prior = (DPEvent(1.5, 0.1, 20),)
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    spent = compute_epsilon(prior, 1e-5)
    report = train_adapter(
        model,
        toy_data,
        TrainConfig(epochs=1, batch_size=32, noise_seed=0),
        DPConfig(target_epsilon=spent + 2.0, delta=1e-5),
        prior_events=prior,
    )
    assert spent < report.epsilon <= spent + 2.0
    assert report.epsilon == pytest.approx(compute_epsilon([*prior, *report.events], 1e-5))


def test_no_dp_baseline_reports_no_epsilon(toy_data) -> None:  # type: ignore[no-untyped-def]
    _, _, report = _train(toy_data, dp=DPConfig(enabled=False))
    assert not report.dp and not report.events and math.isinf(report.epsilon)


def test_too_few_examples_for_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than the expected batch size 64"):
        plan_steps(10, 64, 1)


def test_empty_poisson_batches_still_take_a_noisy_step(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from client.batching import tokenize_texts

    data = tokenize_texts(
        tiny_tokenizer, ["card lost", "transfer late", "chest pain"] * 2, [0, 1, 2] * 2, 16
    )
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    # q = 1/6 with 6 records: empty batches are common; every step must still be counted.
    report = train_adapter(
        model,
        data,
        TrainConfig(epochs=4, batch_size=1, noise_seed=3),
        DPConfig(noise_multiplier=2.0),
    )
    assert report.steps == 24


@pytest.mark.parametrize("dp_enabled", [True, False])
def test_length_sorted_physical_batches_take_the_same_step(toy_data, dp_enabled) -> None:  # type: ignore[no-untyped-def]
    """Splitting each batch into length-sorted chunks changes the padding, not the step: the
    same Poisson batches, clipped per example, summed, one noise draw (σ > 0 here)."""
    import torch

    from client.dp_training import physical_batches

    dp = DPConfig(enabled=dp_enabled, noise_multiplier=0.5, clip_norm=0.5)
    results = []
    for budget in (64, 10**6):  # about 2-6 examples per pass / the whole batch in one pass
        model = build_model(ModelConfig(model="tiny", lora="lora", seed=0), LABELS3)
        for module in model.modules():  # dropout draws depend on the batch shapes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        train = TrainConfig(  # float32: bf16 rounding depends on the matmul shapes
            epochs=1,
            batch_size=32,
            learning_rate=1e-3,
            bf16=False,
            noise_seed=5,
            physical_batch_tokens=budget,
        )
        report = train_adapter(model, toy_data, train, dp)
        results.append((adapter_state(model), report))
    (chunked, chunked_report), (whole, whole_report) = results
    assert chunked_report.steps == whole_report.steps
    assert math.isclose(chunked_report.train_loss, whole_report.train_loss, rel_tol=1e-4)
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], atol=2e-6, err_msg=name)

    indices = torch.arange(len(toy_data))
    lengths = [len(toy_data.token_ids[i]) for i in range(len(toy_data))]
    chunks = physical_batches(toy_data, indices, 200)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(toy_data)))
    assert all(len(c) * max(lengths[int(i)] for i in c) <= 200 or len(c) == 1 for c in chunks)
    assert physical_batches(toy_data, indices[:0], 200)[0].numel() == 0


def test_lora_on_every_dense_layer_trains_under_dp(toy_data) -> None:  # type: ignore[no-untyped-def]
    """`dense` also names BERT's pooler, which mean pooling never uses: the encoder is built
    without it, so no adapter is left without per-sample gradients (Opacus refuses those)."""
    config = ModelConfig(model="tiny", target_modules=("query", "key", "value", "dense"))
    model = build_model(config, LABELS3)
    assert not any("pooler" in name for name, _ in model.named_parameters())
    train = TrainConfig(epochs=1, batch_size=32, bf16=False, noise_seed=1)
    report = train_adapter(model, toy_data, train, DPConfig(noise_multiplier=1.0))
    assert report.steps == plan_steps(len(toy_data), 32, 1).steps


def test_linear_lr_schedule_decays_to_lr_over_steps_and_reaches_the_optimizer(
    toy_data,  # type: ignore[no-untyped-def]
) -> None:
    linear = TrainConfig(learning_rate=0.04, lr_schedule="linear")
    assert [linear.learning_rate_at(step, 4) for step in range(5)] == [0.04, 0.03, 0.02, 0.01, 0.01]
    assert linear.learning_rate_at(0, 1) == 0.04
    assert TrainConfig(learning_rate=0.04).learning_rate_at(3, 4) == 0.04
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, linear"):
        TrainConfig(lr_schedule="cosine")
    dp = DPConfig(noise_multiplier=0.0)  # σ = 0: deterministic, so only the schedule differs
    trained = {}
    for schedule in ("constant", "linear", "linear"):
        model = build_model(ModelConfig(model="tiny", seed=0), LABELS3)
        config = TrainConfig(epochs=2, batch_size=32, noise_seed=3, lr_schedule=schedule)
        train_adapter(model, toy_data, config, dp)
        state = adapter_state(model)
        if schedule in trained:
            assert all(np.array_equal(state[n], trained[schedule][n]) for n in state)
        trained[schedule] = state
    constant, decayed = trained["constant"], trained["linear"]
    assert any(not np.allclose(constant[n], decayed[n]) for n in constant)


def test_weight_average_releases_the_bias_corrected_average_of_the_iterates(
    toy_data,  # type: ignore[no-untyped-def]
) -> None:
    decay = 0.6
    model = build_model(ModelConfig(model="tiny", seed=0), LABELS3)
    head = next(p for n, p in model.named_parameters() if p.requires_grad and "head" in n)
    iterates: list[np.ndarray] = []
    config = TrainConfig(epochs=2, batch_size=32, noise_seed=3, weight_average=decay)
    report = train_adapter(
        model,
        toy_data,
        config,
        DPConfig(noise_multiplier=1.0),
        progress=lambda *_: iterates.append(head.detach().numpy().copy()),
    )
    assert len(iterates) == report.steps > 2
    weights = np.array([decay ** (report.steps - 1 - t) for t in range(report.steps)])
    expected = np.tensordot(weights / weights.sum(), np.stack(iterates), axes=1)
    np.testing.assert_allclose(head.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(head.detach().numpy(), iterates[-1])
    # Post-processing: the same events, so the same ε as the last iterate's run.
    last = build_model(ModelConfig(model="tiny", seed=0), LABELS3)
    plain = train_adapter(
        last,
        toy_data,
        TrainConfig(epochs=2, batch_size=32, noise_seed=3),
        DPConfig(noise_multiplier=1.0),
    )
    assert plain.events == report.events and plain.epsilon == report.epsilon
    with pytest.raises(ValueError, match=r"weight_average must be in \[0, 1\), got 1"):
        TrainConfig(weight_average=1.0)


def test_group_clip_norms_split_c_squared_between_head_and_adapter_by_size() -> None:
    model = build_model(ModelConfig(model="tiny", lora="ffa", seed=0), LABELS3)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norms = group_clip_norms(model, 2.0, 0.25)
    assert len(norms) == len(trainable)
    assert math.isclose(math.sqrt(sum(c * c for c in norms)), 2.0, rel_tol=1e-9)
    pairs = list(zip(trainable, norms, strict=True))
    head = [(p.numel(), c) for (n, p), c in pairs if n.startswith("head.")]
    adapter = [(p.numel(), c) for (n, p), c in pairs if ".lora_B." in n]
    assert head and adapter and len(head) + len(adapter) == len(trainable)
    assert math.isclose(sum(c * c for _, c in head), 0.75 * 4.0, rel_tol=1e-9)
    assert math.isclose(sum(c * c for _, c in adapter), 0.25 * 4.0, rel_tol=1e-9)
    size, clip = adapter[0]  # within a group, C² per element is the same for every tensor
    assert all(math.isclose(c * c / n, clip * clip / size) for n, c in adapter)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.")
    with pytest.raises(ValueError, match="trainable head and adapter"):
        group_clip_norms(model, 1.0, 0.5)


def test_group_clipping_changes_the_step_not_sigma_or_epsilon(toy_data) -> None:  # type: ignore[no-untyped-def]
    _, flat, flat_report = _train(toy_data, dp=DPConfig(target_epsilon=4.0), noise_seed=3)
    grouped_dp = DPConfig(target_epsilon=4.0, adapter_clip_share=0.5)
    _, grouped, report = _train(toy_data, dp=grouped_dp, noise_seed=3)
    assert report.noise_multiplier == flat_report.noise_multiplier
    assert report.epsilon == flat_report.epsilon <= 4.0
    assert any(not np.array_equal(flat[n], grouped[n]) for n in flat if ".lora_B." in n)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"adapter_clip_share": 1.0}, "must be in"),
        ({"adapter_clip_share": 0.0}, "must be in"),
        ({"adapter_clip_share": 0.5, "grad_sample_mode": "ghost"}, "hooks"),
        ({"adapter_clip_share": 0.5, "enabled": False}, "only under DP"),
    ],
)
def test_group_clipping_settings_are_checked(changes, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        DPConfig(**changes)
