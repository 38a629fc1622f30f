"""Adam state as named arrays: a round-trip resumes Adam exactly; bad state is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.optimizer_state import carried_steps, export_adam_state, import_adam_state


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]


def _step(optimizer: torch.optim.Adam, params: list[torch.nn.Parameter], seed: int) -> None:
    torch.manual_seed(seed)
    optimizer.zero_grad()
    sum((p * torch.randn_like(p)).sum() for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()


def test_exported_state_resumes_adam_exactly_where_it_stopped() -> None:
    params = _params()
    adam = torch.optim.Adam(params, lr=0.1)
    for seed in range(3):
        _step(adam, params, seed)
    state = export_adam_state(adam, params)
    assert carried_steps(state) == 3 and carried_steps({}) == 0
    snapshot = [p.detach().clone() for p in params]
    _step(adam, params, 3)  # the uninterrupted fourth step

    resumed = [torch.nn.Parameter(s.clone()) for s in snapshot]
    fresh = torch.optim.Adam(resumed, lr=0.1)
    import_adam_state(fresh, resumed, state)
    _step(fresh, resumed, 3)
    for continued, again in zip(params, resumed, strict=True):
        torch.testing.assert_close(continued, again)

    restarted = [torch.nn.Parameter(s.clone()) for s in snapshot]
    _step(torch.optim.Adam(restarted, lr=0.1), restarted, 3)  # a fresh Adam steps differently
    assert not torch.allclose(restarted[0], params[0])


def test_bad_state_is_refused_naming_the_entry() -> None:
    params = _params()
    adam = torch.optim.Adam(params, lr=0.1)
    _step(adam, params, 0)
    state = export_adam_state(adam, params)
    wrong_shape = {**state, "1.exp_avg": np.zeros(5, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"'1.exp_avg' has shape \(5,\), its parameter \(4,\)"):
        import_adam_state(adam, params, wrong_shape)
    with pytest.raises(ValueError, match="names parameter 2, but there are 2"):
        import_adam_state(adam, params, {**state, "2.step": np.array(1.0)})
    incomplete = {k: v for k, v in state.items() if k != "0.exp_avg_sq"}
    with pytest.raises(ValueError, match="parameter 0 lacks exp_avg_sq"):
        import_adam_state(adam, params, incomplete)
    with pytest.raises(ValueError, match=r"'0\.momentum' is not"):
        import_adam_state(adam, params, {"0.momentum": np.zeros(1)})
