"""``fedlora train`` and ``fedlora data`` end to end, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.adapter_io import load_adapter
from client.training_config import HeadRefitConfig
from privacy.accounting import format_epsilon
from sim.cli import build_parser, main, train_job_from_args

REQUIRED_KEYS = {
    "epsilon",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "clip_norm",
    "accuracy",
    "macro_f1",
    "train_examples",
    "eval_examples",
    "seconds",
}


@pytest.fixture(scope="module")
def bank_csv(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("data") / "bank.csv"
    code = main(
        [
            "data",
            "--out",
            str(path),
            "--domains",
            "bank",
            "--institutions-per-domain",
            "2",
            "--examples-per-institution",
            "300",
            "--seed",
            "3",
        ]
    )
    assert code == 0 and path.exists()
    return path


def _train(out: Path, data: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "tiny",
            # a random tiny encoder gives the label-text prior nothing to work with: learning
            # is shown from a random head (the prior is tested on the real model)
            "--head",
            "linear",
            "--max-length",
            "48",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--lr",
            "0.02",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_train_dp_on_generated_data(tmp_path, bank_csv, capsys) -> None:  # type: ignore[no-untyped-def]
    metrics = _train(tmp_path, bank_csv, "--epsilon", "4", "--redact")
    assert set(metrics) >= REQUIRED_KEYS
    assert metrics["accountant"] == "prv" and metrics["dp"] is True
    assert 0 < metrics["epsilon"] <= 4.0
    assert metrics["epsilon"] <= metrics["epsilon_rdp"]
    assert metrics["delta"] == 1e-5
    assert metrics["train_examples"] + metrics["eval_examples"] == 600
    assert sum(metrics["redaction"].values()) > 0
    assert metrics["accuracy"] > metrics["initial_accuracy"]
    saved = load_adapter(tmp_path / "adapter")
    assert len(saved.labels) == 10 and saved.state
    printed = capsys.readouterr().out
    assert "prv accountant" in printed
    assert f"ε = {format_epsilon(metrics['epsilon'])} (" in printed  # rounded up, never down


def test_train_without_dp_learns(tmp_path, bank_csv) -> None:  # type: ignore[no-untyped-def]
    metrics = _train(tmp_path, bank_csv, "--no-dp")
    assert metrics["epsilon"] is None and metrics["dp"] is False
    assert metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_zero_noise_is_reported_as_no_privacy(tmp_path, bank_csv, capsys) -> None:  # type: ignore[no-untyped-def]
    """σ = 0 (clipping only, to measure what the noise costs) ends with ε = ∞, not a crash."""
    metrics = _train(tmp_path, bank_csv, "--noise-multiplier", "0")
    assert metrics["dp"] is True and metrics["epsilon"] is None
    assert "ε = ∞: σ = 0 adds no noise" in capsys.readouterr().out


def test_separate_eval_file_uses_the_training_label_set(tmp_path, bank_csv) -> None:  # type: ignore[no-untyped-def]
    lines = bank_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    eval_path = tmp_path / "eval.csv"
    eval_path.write_text("".join(lines[:1] + lines[-50:]), encoding="utf-8")
    metrics = _train(tmp_path / "out", bank_csv, "--eval", str(eval_path), "--no-dp")
    assert metrics["eval_examples"] == 50 and metrics["train_examples"] == 600


def test_bad_data_exits_2_naming_file_row_and_problem(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello there,a\n   ,b\nfine text,a\n", encoding="utf-8")
    code = main(["train", "--data", str(bad), "--model", "tiny", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "row 2" in err and "whitespace" in err.lower()
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_too_few_examples_for_batch_size(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    small = tmp_path / "small.csv"
    rows = "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(20))
    small.write_text("text,label\n" + rows, encoding="utf-8")
    code = main(["train", "--data", str(small), "--model", "tiny", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "small.csv" in err and "batch size 64" in err


def test_help_teaches(capsys) -> None:  # type: ignore[no-untyped-def]
    for command in (["--help"], ["train", "--help"], ["sim", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "add/remove-one" in text and "--epsilon" in text
    # an unset option's help says what unset means; argparse's "(default: None)" would not
    assert "(default: None)" not in text and "δ (default: min(1e-5, 1/N))" in text


@pytest.mark.parametrize(
    ("extra", "refit"),
    [
        ((), HeadRefitConfig()),
        (("--head-refit-steps", "4", "--head-refit-noise-ratio", "2"), HeadRefitConfig(4, 2.0)),
        (("--head-refit-steps", "0"), None),
        (("--no-dp",), None),
        (("--head", "linear"), None),  # a linear head has no class vectors to refit
    ],
)
def test_the_head_refit_is_on_by_default_under_dp_with_the_prototype_head(extra, refit) -> None:  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["train", "--out", "x", *extra])
    assert train_job_from_args(args).dp.head_refit == refit


def test_a_negative_refit_step_count_is_named(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "--out", "x", "--head-refit-steps", "-1"]) == 2
    assert "--head-refit-steps must be >= 0 (0 turns the refit off), got -1" in (
        capsys.readouterr().err
    )


def test_train_reports_the_head_refit_in_its_spend(tmp_path, bank_csv, capsys) -> None:  # type: ignore[no-untyped-def]
    metrics = _train(tmp_path, bank_csv, "--epsilon", "4", "--head", "prototype")
    assert metrics["head_refit_steps"] == HeadRefitConfig().steps
    assert metrics["head_refit_noise_multiplier"] > metrics["noise_multiplier"]
    assert 0 < metrics["epsilon"] <= 4.0
    printed = capsys.readouterr().out
    assert f"then a head refit of {HeadRefitConfig().steps} full-batch steps at σ = " in printed


@pytest.mark.slow
def test_train_default_model_on_embedded_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real all-MiniLM-L6-v2 on the embedded data: far above chance at ε ≤ 8."""
    code = main(["train", "--out", str(tmp_path), "--quiet", "--epochs", "2"])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epsilon"] <= 8.0
    assert metrics["accuracy"] > 0.5  # 20 labels: chance is 0.05
