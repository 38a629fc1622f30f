"""Secure aggregation: the hardened mask generator, what the server sees, dropouts, halts.

Flower's real SecAgg+ protocol (fedlora's workflow on the server, fedlora's ClientApp mod
chain on the nodes) runs over an in-process transport (tests/secagg_harness.py) that records
every reply the server receives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.client import ClientApp
from flwr.common import FitIns, MessageType, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from secagg_harness import (
    CapturingFedAvg,
    fixed_client_fn,
    run_secagg_round,
    server_identity,
)

from client.app import make_secure_aggregation_mod
from client.round_plan import RoundPlan
from client.run_settings import NodeSettings, RunSettings, node_settings_from_config
from client.secure_aggregation_settings import SecureAggregationConfig
from privacy import mask_generator
from privacy.mask_generator import FLOWER_MASK_GENERATOR, MASK_GENERATOR, chacha20_masks
from server.secure_aggregation import make_fit_workflow

SHAPES = [(64, 8), (8, 96), (20,)]
MOD = 2**32


def _settings(nodes: int, **secure: Any) -> RunSettings:
    return RunSettings(
        rounds=1,
        labels=("a", "b"),
        expected_nodes=nodes,
        train=dataclasses.replace(RunSettings(rounds=1).train, learning_rate=5e-3),
        secure_aggregation=SecureAggregationConfig(**secure),
    )


#: Per-coordinate std of the smallest DP update we send: one Adam step (lr 5e-3) of mostly
#: noise moves a coordinate by about 0.3 · lr; longer rounds move it more.
SMALLEST_NOISE_STD = 0.3 * 5e-3


def _deltas(nodes: int, scale: float = SMALLEST_NOISE_STD) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        [rng.normal(0, scale, shape).astype(np.float32) for shape in SHAPES] for _ in range(nodes)
    ]


def _apps(
    deltas: list[list[np.ndarray]], failing: frozenset[int] = frozenset()
) -> dict[int, ClientApp]:
    """One ClientApp per node with fedlora's mod and a client returning a fixed delta."""
    settings = _settings(len(deltas))

    def settings_of(context: Context) -> tuple[RunSettings, NodeSettings]:
        return settings, node_settings_from_config(context.node_config, settings)

    mod = make_secure_aggregation_mod(settings_of)
    return {
        index + 1: ClientApp(fixed_client_fn(delta, index in failing), mods=[mod])
        for index, delta in enumerate(deltas)
    }


def _masked_uploads(grid: Any) -> dict[int, list[np.ndarray]]:
    uploads = {}
    for reply in grid.received:
        if reply.has_error():
            continue
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in record:
            arrays = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
            uploads[reply.metadata.src_node_id] = arrays
    return uploads


# ---------------------------------------------------------------- the mask generator


def test_the_hardened_generator_is_installed_on_both_sides() -> None:
    assert mask_generator.installed_generator() == MASK_GENERATOR
    assert mask_generator.flower_mod.pseudo_rand_gen is chacha20_masks
    assert mask_generator.flower_workflow.pseudo_rand_gen is chacha20_masks


def test_keys_sharing_their_32_bit_fold_give_different_masks() -> None:
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
    # flip the same bit in two 4-byte words: the XOR fold to 32 bits is unchanged
    second = bytearray(first)
    second[0] ^= 0x01
    second[4] ^= 0x01
    second = bytes(second)
    shapes = [(1000,)]
    flower_a, flower_b = (FLOWER_MASK_GENERATOR(k, MOD, shapes)[0] for k in (first, second))
    assert np.array_equal(flower_a, flower_b)  # the weakness: 2**32 masks per key at most
    ours_a, ours_b = (chacha20_masks(k, MOD, shapes)[0] for k in (first, second))
    assert not np.array_equal(ours_a, ours_b)
    assert np.mean(ours_a == ours_b) < 0.01


def test_masks_are_uniform_over_the_ring_and_shaped() -> None:
    masks = chacha20_masks(b"k" * 32, MOD, [(200, 100), (), (3,)])
    assert [m.shape for m in masks] == [(200, 100), (), (3,)]
    values = masks[0].ravel()
    assert values.min() >= 0 and values.max() < MOD
    assert abs(values.mean() / MOD - 0.5) < 0.01
    histogram, _ = np.histogram(values, bins=16, range=(0, MOD))
    assert histogram.min() > 0.9 * values.size / 16
    assert np.array_equal(masks[0], chacha20_masks(b"k" * 32, MOD, [(200, 100)])[0])


def test_a_node_refuses_a_server_announcing_another_generator(tmp_path: Any) -> None:
    from client.app import _check_mask_generator

    plan = RoundPlan(1, 1, 1, 8, 0.01, 1.0, 8.0, 0.0, "sig", "digest", "flower-mt19937-32bit")
    with pytest.raises(ValueError, match="masks would not cancel"):
        _check_mask_generator(plan)
    _check_mask_generator(dataclasses.replace(plan, mask_generator=MASK_GENERATOR))
    _check_mask_generator(dataclasses.replace(plan, mask_generator=""))  # plaintext round


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("nodes", "secure", "message"),
    [
        (2, {}, "at least 3 nodes"),
        (5, {"threshold": 1}, "threshold must be >= 2"),
        (5, {"threshold": 1.0}, "no node may drop out"),
        (5, {"shares": 4, "threshold": 4}, "must be below the shares"),
        (5, {"shares": 6}, "exceed the nodes per round"),
        (3, {"threshold": 0.9}, "not below the shares"),
    ],
)
def test_unprotective_settings_are_refused(
    nodes: int, secure: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(nodes, **secure)


def test_example_weighting_is_refused_with_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="weight 1"):
        RunSettings(rounds=1, labels=("a", "b"), weighting="examples")


# ---------------------------------------------------------------- the protocol


def test_the_server_sees_masked_uploads_and_an_exact_mean() -> None:
    settings = _settings(5)
    deltas = _deltas(5)
    strategy = CapturingFedAvg()
    halts: list[str] = []
    workflow = make_fit_workflow(settings, halts.append)
    grid = run_secagg_round(workflow, _apps(deltas), strategy, SHAPES)
    assert halts == []

    uploads = _masked_uploads(grid)
    assert sorted(uploads) == [1, 2, 3, 4, 5]
    clip = settings.secure_aggregation.clipping_for(settings.train.learning_rate)
    levels = settings.secure_aggregation.quantization_range
    for nid, arrays in uploads.items():
        masked = np.concatenate([a.ravel() for a in arrays[1:]]).astype(np.float64)
        plain = np.concatenate([d.ravel() for d in deltas[nid - 1]]).astype(np.float64)
        quantized = (plain + clip) * levels / (2 * clip)  # what would travel unmasked
        assert abs(np.corrcoef(masked, quantized)[0, 1]) < 0.1
        assert masked.min() >= 0 and masked.max() < MOD
        assert abs(masked.mean() / MOD - 0.5) < 0.05  # spread over the whole ring
        assert np.mean(masked > levels) > 0.9  # far outside the quantized range

    expected = [np.mean([d[i] for d in deltas], axis=0) for i in range(len(SHAPES))]
    (aggregate, *others) = strategy.aggregated
    assert all(all(np.array_equal(a, b) for a, b in zip(aggregate, o, strict=True)) for o in others)
    step = 2 * clip / levels  # one quantization level
    noise_std = float(np.std(np.concatenate([d.ravel() for node in deltas for d in node])))
    for got, want in zip(aggregate, expected, strict=True):
        error = np.abs(got - want)
        assert error.max() <= step  # stochastic rounding: under one level per node, averaged
        assert error.max() <= 0.01 * noise_std  # negligible next to the updates' noise


def test_one_of_five_dropping_after_key_sharing_gives_the_mean_of_the_other_four() -> None:
    settings = _settings(5)
    deltas = _deltas(5)
    strategy = CapturingFedAvg()
    halts: list[str] = []
    grid = run_secagg_round(
        make_fit_workflow(settings, halts.append),
        _apps(deltas, failing=frozenset({2})),
        strategy,
        SHAPES,
    )
    assert halts == []
    assert sorted(_masked_uploads(grid)) == [1, 2, 4, 5]  # node 3 (index 2) failed in fit
    survivors = [d for index, d in enumerate(deltas) if index != 2]
    expected = [np.mean([d[i] for d in survivors], axis=0) for i in range(len(SHAPES))]
    step = 2 * settings.secure_aggregation.clipping_for(5e-3) / 2**22
    for got, want in zip(strategy.aggregated[0], expected, strict=True):
        assert np.abs(got - want).max() <= step
    assert len(strategy.failures) >= 1


def test_a_round_that_cannot_be_unmasked_is_reported_not_skipped() -> None:
    settings = _settings(5)  # 5 shares, threshold 3
    strategy = CapturingFedAvg()
    halts: list[str] = []
    run_secagg_round(
        make_fit_workflow(settings, halts.append),
        _apps(_deltas(5), failing=frozenset({0, 1, 2})),
        strategy,
        SHAPES,
    )
    assert strategy.aggregated == []  # Flower never called the strategy...
    (reason,) = halts  # ...and the halt was reported
    assert "masked-upload stage" in reason and "2 of 5" in reason and "threshold 3" in reason


def test_a_node_requiring_secure_aggregation_refuses_a_plaintext_round() -> None:
    apps = _apps(_deltas(3))
    fit = FitIns(ndarrays_to_parameters([np.zeros(s, np.float32) for s in SHAPES]), {})
    content = compat.fitins_to_recorddict(fit, True)
    with server_identity():
        message = Message(content, dst_node_id=1, message_type=MessageType.TRAIN, group_id="1")
    deployed = {"data-path": "/nonexistent.csv", "node-dir": "/tmp/x", "budget-epsilon": 8.0}
    context = Context(7, 1, deployed, RecordDict(), {})
    with pytest.raises(RuntimeError, match="refusing a training round without secure"):
        apps[1](message, context)
    allowed = {**deployed, "require-secure-aggregation": False}
    reply = apps[1](message, Context(7, 1, allowed, RecordDict(), {}))
    assert not reply.has_error()


def test_fedlora_sim_refuses_fewer_than_three_nodes_with_secure_aggregation(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from sim.cli import main

    out = tmp_path / "run"
    status = main(
        ["sim", "--nodes", "2", "--partition", "iid", "--model", "tiny", "--out", str(out)]
    )
    assert status != 0
    assert "secure aggregation needs at least 3 nodes per round" in capsys.readouterr().err
    assert not out.exists()
