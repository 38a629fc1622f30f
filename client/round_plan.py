"""The round plan: what the server asks of a node in one round, as plain config values.

The server sends it in every fit instruction; the node parses it here and never trusts it for
privacy: the node's budget and δ come from its own node config, and the node calibrates its
own noise from its own record count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

ConfigValue = bool | int | float | str | bytes


@dataclass(frozen=True)
class RoundPlan:
    """One round's instructions.

    Parameters
    ----------
    round
        This round's number (1-based, continuing across a resumed run).
    total_rounds
        Rounds planned for the whole run; nodes calibrate σ as if they took part in all of the
        remaining ones (conservative when they are sampled less often).
    local_epochs, batch_size, learning_rate, clip_norm
        Local DP-SGD settings.
    target_epsilon, target_delta
        The run's suggested budget (a node uses its own when it has one; 0 = unset).
    adapter_signature
        Names and shapes of the tensors that travel, so a node refuses a mismatched model.
    frozen_adapter_digest
        Digest of the adapter tensors derived from the shared seed (FFA-LoRA's A).
    mask_generator
        The SecAgg+ mask generator the server unmasks with ("" without secure aggregation);
        a node using another one refuses to train, as its masks would not cancel.
    """

    round: int
    total_rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float
    target_epsilon: float
    target_delta: float
    adapter_signature: str
    frozen_adapter_digest: str
    mask_generator: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.round <= self.total_rounds:
            raise ValueError(f"round {self.round} is outside 1..{self.total_rounds}")
        if self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("local_epochs and batch_size must be >= 1")
        if not (self.learning_rate > 0 and self.clip_norm > 0):
            raise ValueError("learning_rate and clip_norm must be > 0")

    @property
    def remaining_rounds(self) -> int:
        """Rounds left including this one."""
        return self.total_rounds - self.round + 1

    def to_config(self) -> dict[str, ConfigValue]:
        """Flat config for a Flower FitIns."""
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> RoundPlan:
        """Parse the config a node received; raises ValueError naming a missing key."""
        kwargs = {}
        for name, kind in cls.__annotations__.items():
            key = name.replace("_", "-")
            if key not in config:
                raise ValueError(f"round plan lacks {key!r}")
            caster = {"int": int, "float": float, "str": str}[str(kind)]
            kwargs[name] = caster(config[key])
        return cls(**kwargs)
