"""The prototype head: the zero-shot prior from label text, its DP gradients and its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from client.data_loading import DataValidationError
from client.label_text import label_as_text, label_texts, read_label_descriptions
from client.model import ModelConfig, build_model, embed_texts
from client.prototype_head import PrototypeHead, prototype_grad_sample
from sim.cli import main

BANK_LABELS = ("card_arrival", "top-up_failed", "exchange_rate", "lost_or_stolen_card")
QUERIES = {
    "I ordered my new card two weeks ago and it still has not come": 0,
    "my attempt to add money to my account did not go through": 1,
    "what rate do you use to convert euros into dollars?": 2,
    "someone took my wallet with my card in it": 3,
}


def test_label_text_reads_names_as_words_and_prefers_descriptions() -> None:
    assert label_as_text("top-up_failed") == "top up failed"
    assert label_as_text("__") == "__"  # nothing but separators: keep the name
    assert label_texts(BANK_LABELS[:2], {"top-up_failed": "my top-up was declined"}) == (
        "card arrival",
        "my top-up was declined",
    )


def test_default_model_classifies_by_label_text_before_any_training() -> None:
    """The zero-shot prior: class vectors are the encoder's embeddings of the label words."""
    config = ModelConfig()
    model = build_model(config, BANK_LABELS)
    assert isinstance(model.head, PrototypeHead)
    expected = embed_texts(model, [label_as_text(x) for x in BANK_LABELS], config)
    assert torch.allclose(
        model.head.prototypes, nn.functional.normalize(expected, dim=-1), atol=1e-5
    )
    assert float(model.head.scale) == 20.0
    assert model.head.prototypes.requires_grad and model.head.scale.requires_grad
    tokenizer_batch = embed_texts(model, list(QUERIES), config)
    logits = model.head(tokenizer_batch)
    assert logits.abs().max() <= 20.0 + 1e-4  # scale · cosine
    assert logits.argmax(dim=1).tolist() == list(QUERIES.values())


def test_descriptions_change_the_initial_class_vectors_and_linear_has_no_prior() -> None:
    config = ModelConfig(model="tiny")
    plain = build_model(config, BANK_LABELS)
    described = build_model(config, BANK_LABELS, {"card_arrival": "when will my card arrive"})
    assert not torch.allclose(plain.head.prototypes[0], described.head.prototypes[0])
    assert torch.allclose(plain.head.prototypes[1:], described.head.prototypes[1:])
    linear = build_model(ModelConfig(model="tiny", head="linear"), BANK_LABELS)
    assert isinstance(linear.head, nn.Linear)
    with pytest.raises(ValueError, match="head must be one of prototype, linear"):
        ModelConfig(head="cosine")


def test_grad_sampler_matches_autograd_per_example() -> None:
    torch.manual_seed(0)
    head = PrototypeHead(16, 5, scale=7.0)
    with torch.no_grad():
        head.prototypes.mul_(3.0)  # un-normalised class vectors: the chain rule must hold
    pooled = torch.randn(6, 16)
    labels = torch.randint(0, 5, (6,))
    logits = head(pooled)
    backprops = torch.autograd.grad(
        nn.functional.cross_entropy(logits, labels, reduction="sum"), logits
    )[0]
    got = prototype_grad_sample(head, [pooled], backprops)
    for b in range(len(pooled)):
        head.zero_grad()
        nn.functional.cross_entropy(head(pooled[b : b + 1]), labels[b : b + 1]).backward()
        assert torch.allclose(got[head.prototypes][b], head.prototypes.grad, atol=1e-5)
        assert torch.allclose(got[head.scale][b], head.scale.grad, atol=1e-5)


def test_head_stays_float32_under_bf16_autocast() -> None:
    head = PrototypeHead(8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(2, 8).to(torch.bfloat16))
    assert out.dtype == torch.float32


def test_read_label_descriptions_json_and_csv(tmp_path: Path) -> None:
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps({"card_arrival": " when will my card arrive "}))
    assert read_label_descriptions(as_json, BANK_LABELS) == {
        "card_arrival": "when will my card arrive"
    }
    as_csv = tmp_path / "d.csv"
    as_csv.write_text('label,description\nexchange_rate,"rates, fees"\n')
    assert read_label_descriptions(as_csv, BANK_LABELS) == {"exchange_rate": "rates, fees"}
    two_columns = tmp_path / "names.csv"  # e.g. medical_tc_labels.csv: condition_label,name
    two_columns.write_text("code,name\ncard_arrival,card delivery\n")
    assert read_label_descriptions(two_columns, BANK_LABELS) == {"card_arrival": "card delivery"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "label,text,x\nx,y,z\n", "a.csv: missing column(s) description"),
        ("b.csv", "label,description\ncard_arrival,ok\nrefund,x\n", "b.csv, row 2, column 'label'"),
        ("c.csv", "label,description\ncard_arrival, \n", "row 1, column 'description'"),
        ("d.csv", "label,description\ncard_arrival,a\ncard_arrival,b\n", "described twice"),
        ("e.json", "[1, 2]", "expected a JSON object"),
        ("f.json", '{"card_arrival": 3}', "must be a string"),
        ("g.csv", "label,description\n", "no label descriptions found"),
    ],
)
def test_bad_label_descriptions_name_file_row_and_field(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_label_descriptions(path, BANK_LABELS)


def test_train_refuses_bad_descriptions_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    bad = tmp_path / "labels.csv"
    bad.write_text("label,description\nc,not a label\n")
    out = tmp_path / "out"
    args = ["--no-dp", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--quiet"]
    code = main(
        ["train", "--data", str(data), "--model", "tiny", "--label-descriptions", str(bad), *args]
    )
    assert code == 2
    assert "labels.csv, row 1, column 'label': unknown label 'c'" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
