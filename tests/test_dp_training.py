"""DP-SGD local training: what changes, what must not, and what ε it reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client.dp_training import (
    DPConfig,
    TrainConfig,
    group_clip_norms,
    plan_steps,
    train_adapter,
)
from client.evaluation import evaluate
from client.head_refit import refit_class_vectors
from client.model import ModelConfig, adapter_state, build_model
from client.training_config import HeadRefitConfig
from privacy.accounting import DPEvent, compute_epsilon
from privacy.reference_accounting import pld_epsilon

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


def test_head_refit_is_composed_into_the_target(toy_data) -> None:  # type: ignore[no-untyped-def]
    refit = HeadRefitConfig(steps=3)
    dp = DPConfig(target_epsilon=4.0, delta=1e-5, head_refit=refit)
    _, _, report = _train(toy_data, dp=dp, epochs=2)
    sgd, full = report.events
    assert sgd.sample_rate < 1 and sgd.noise_multiplier == report.noise_multiplier
    sigma_2 = refit.noise_multiplier(sgd.noise_multiplier, sgd.sample_rate, sgd.steps)
    assert full == DPEvent(sigma_2, 1.0, 3)
    assert report.head_refit_noise_multiplier == sigma_2
    assert 4.0 * 0.95 < report.epsilon <= 4.0
    assert report.epsilon == pytest.approx(compute_epsilon([sgd, full], 1e-5), rel=1e-12)
    assert report.epsilon == pytest.approx(pld_epsilon([sgd, full], 1e-5), rel=0.03)
    # the refit's share of the budget is paid by DP-SGD's noise, not taken on top of it
    _, _, without = _train(toy_data, dp=DPConfig(target_epsilon=4.0, delta=1e-5), epochs=2)
    assert report.noise_multiplier > without.noise_multiplier
    assert without.head_refit_noise_multiplier is None


def _refit(model, toy_data, sigma, steps=2, lr=0.03):  # type: ignore[no-untyped-def]
    refit_class_vectors(
        model,
        toy_data,
        HeadRefitConfig(steps=steps, learning_rate=lr),
        DPEvent(sigma, 1.0, steps),
        1.0,
        generator=torch.Generator().manual_seed(0),
    )


def test_head_refit_moves_only_the_class_vectors(toy_data) -> None:  # type: ignore[no-untyped-def]
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    before = adapter_state(model)
    _refit(model, toy_data, sigma=1.0)
    after = adapter_state(model)
    assert {n for n in before if not np.array_equal(before[n], after[n])} == {"head.prototypes"}
    assert model.head.scale.requires_grad  # trainable again for the next round
    assert not hasattr(model.head.prototypes, "grad_sample")  # Opacus let go of the head


def test_head_refit_with_little_noise_fits_the_records(toy_data) -> None:  # type: ignore[no-untyped-def]
    """σ₂ near 0: the refit is full-batch training of the class vectors on frozen embeddings,
    so accuracy on the records it fits must rise well above the (tiny, random) encoder's
    label-text prior."""
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    start = evaluate(model, toy_data, 3).accuracy
    _refit(model, toy_data, sigma=1e-3, steps=40, lr=0.1)
    assert evaluate(model, toy_data, 3).accuracy > max(start + 0.2, 0.6)


def test_head_refit_refuses_a_mismatched_event_or_a_linear_head(toy_data) -> None:  # type: ignore[no-untyped-def]
    model = build_model(ModelConfig(model="tiny"), LABELS3)
    with pytest.raises(ValueError, match="takes 2 full-batch steps"):
        refit_class_vectors(
            model,
            toy_data,
            HeadRefitConfig(steps=2),
            DPEvent(1.0, 0.5, 2),
            1.0,
            generator=torch.Generator(),
        )
    linear = build_model(ModelConfig(model="tiny", head="linear"), LABELS3)
    with pytest.raises(ValueError, match="prototype head"):
        _refit(linear, toy_data, sigma=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"noise_ratio": 0.0}, "noise_ratio must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
    ],
)
def test_head_refit_settings_are_validated(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        HeadRefitConfig(**kwargs)
    with pytest.raises(ValueError, match="only under DP"):
        DPConfig(enabled=False, head_refit=HeadRefitConfig())


def test_head_refit_noise_is_rho_times_dp_sgd_noise_on_the_full_sum() -> None:
    # DP-SGD: σ = 0.6 on sums of q·N gradients, T = 100 steps → like one full-data sum with
    # noise σ/(q·√T) = 0.6 / (0.02·10) = 3; the refit's 4 steps then get 2 · 3 · √4 = 12 each.
    assert HeadRefitConfig(steps=4, noise_ratio=2.0).noise_multiplier(0.6, 0.02, 100) == (
        pytest.approx(12.0)
    )
