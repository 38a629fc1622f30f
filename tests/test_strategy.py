"""Delta FedAvg: averaging, weighting, server learning rate, declines and bad uploads."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from client.run_settings import RunSettings
from client.secure_aggregation_settings import SecureAggregationConfig
from server.run_record import RunRecord
from server.strategy import DeltaFedAvg


class _Proxy(ClientProxy):
    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_parameters(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def fit(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def evaluate(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def reconnect(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError


GLOBAL = {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32)}


def _strategy(tmp_path, **changes) -> DeltaFedAvg:  # type: ignore[no-untyped-def]
    # server lr 1 unless a test says otherwise: the global moves by exactly the mean delta
    changes = {"server_learning_rate": 1.0, **changes}
    settings = RunSettings(rounds=2, labels=("x", "y"), expected_nodes=3, **changes)
    strategy = DeltaFedAvg(settings, dict(GLOBAL), "digest", RunRecord(tmp_path, {}), None)
    strategy.configure_fit(1, ndarrays_to_parameters(list(GLOBAL.values())), _Manager())
    return strategy


class _Manager:
    def wait_for(self, num_clients: int, timeout: int) -> bool:
        return True

    def all(self) -> dict[str, ClientProxy]:
        return {str(i): _Proxy(i) for i in range(3)}


def _res(delta: float, examples: int = 1, **metrics) -> FitRes:  # type: ignore[no-untyped-def]
    arrays = [np.full_like(v, delta) for v in GLOBAL.values()]
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)


def test_uniform_mean_of_deltas_with_server_lr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    strategy = _strategy(tmp_path, server_learning_rate=0.5)
    results = [(_Proxy(i), _res(d, node=f"n{i}")) for i, d in enumerate((1.0, 2.0, 6.0))]
    params, _ = strategy.aggregate_fit(1, results, [])
    a, b = parameters_to_ndarrays(params)
    assert np.allclose(a, 0.5 * 3.0) and np.allclose(b, 1 + 0.5 * 3.0)


def test_example_weighting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = SecureAggregationConfig(enabled=False)  # SecAgg+ sends every delta with weight 1
    strategy = _strategy(tmp_path, weighting="examples", secure_aggregation=plain)
    results = [(_Proxy(0), _res(1.0, 10, node="n0")), (_Proxy(1), _res(4.0, 30, node="n1"))]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert np.allclose(parameters_to_ndarrays(params)[0], (10 * 1 + 30 * 4) / 40)


@pytest.mark.parametrize("secure", [False, True])
def test_declined_node_is_not_averaged_and_not_sampled_again(tmp_path, secure) -> None:  # type: ignore[no-untyped-def]
    strategy = _strategy(tmp_path, secure_aggregation=SecureAggregationConfig(enabled=secure))
    declined = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([]),
        0,
        {"node": "n2", "declined": True, "reason": "budget_exhausted", "detail": "spent"},
    )
    results = [(_Proxy(0), _res(2.0, node="n0")), (_Proxy(2), declined)]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 2.0)
    assert strategy.record.stopped_nodes["n2"]["round"] == 1
    sampled = strategy.configure_fit(2, params, _Manager())
    if not secure:
        assert sorted(p.node_id for p, _ in sampled) == [0, 1]
        return
    # two nodes left: secure aggregation could not hide one update from the other's owner
    assert sampled == []
    strategy.evaluate(2, params)
    second = strategy.record.rounds[-1]
    assert second["round"] == 2 and not second["completed"]
    assert "secure aggregation needs 3" in second["halted"]


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_malformed_upload_is_a_failure_not_averaged(tmp_path, bad) -> None:  # type: ignore[no-untyped-def]
    strategy = _strategy(tmp_path)
    if bad == "shape":
        arrays = [np.zeros(7, np.float32)]
    else:
        arrays = [np.full_like(v, np.nan) for v in GLOBAL.values()]
    broken = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, {"node": "n1"})
    results = [(_Proxy(0), _res(3.0, node="n0")), (_Proxy(1), broken)]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 3.0)
    entry = strategy._round.entry  # type: ignore[union-attr]
    assert entry["nodes"]["n1"]["participated"] is False
    assert "not a finite delta" in entry["nodes"]["n1"]["error"]
