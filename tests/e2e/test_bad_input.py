"""Bad input: one clear message naming the file, line or key, exit status 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e

TEXT = ["train", "--task", "text-classification", "--model", "minilm-l6", "--epochs", "1", "--freeze", "all"]


@pytest.fixture
def news(bbc_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "news"
    shutil.copytree(bbc_folder, copy)
    return copy


def expect_error(args: list[object], *fragments: str) -> str:
    code, output = run_cli(*[str(a) for a in args])
    assert code == 2, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    return output


def test_unknown_model_source(news: Path, tmp_path: Path) -> None:
    expect_error(["train", "--task", "text-classification", "--model", "bert-from-nowhere", "--data", news,
                  "--out", tmp_path / "r"], "unknown model source 'bert-from-nowhere'", "minilm-l6")


def test_unknown_config_key_suggests_the_closest(news: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"task: text-classification\nmodel:\n  source: minilm-l6\ndata:\n  train: {news}\n"
                      "optim:\n  lrr: 0.001\n")
    expect_error(["train", config, "--out", tmp_path / "r"], f"{config}:7", "optim.lrr", "Did you mean 'lr'")


def test_empty_text_file(news: Path, tmp_path: Path) -> None:
    empty = news / "tech" / "empty.txt"
    empty.write_text("  \n")
    expect_error([*TEXT, "--data", news, "--out", tmp_path / "r"], str(empty), "empty text")


def test_corrupt_image(fashion_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "images"
    shutil.copytree(fashion_folder, data)
    broken = data / "train" / "bag" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n not really an image")
    expect_error(["train", "--task", "image-classification", "--model", "efficientnet-lite0", "--data", data,
                  "--out", tmp_path / "r"], str(broken), "cannot read image")


def test_unknown_csv_column(tmp_path: Path) -> None:
    table = tmp_path / "reviews.csv"
    table.write_text("review,label\ngreat film,pos\nawful film,neg\n")
    expect_error([*TEXT, "--data", table, "--set", "data.input_column=reveiw", "--out", tmp_path / "r"],
                 f"{table}:2", "no column 'reveiw'", "Did you mean 'review'")


def test_label_in_val_missing_from_train(news: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    (val / "weather").mkdir(parents=True)
    (val / "weather" / "1.txt").write_text("Rain is expected across the north tomorrow.")
    expect_error([*TEXT, "--data", news, "--data", f"val={val}", "--out", tmp_path / "r"],
                 "label 'weather'", "does not appear in the training data")


def test_class_with_too_few_examples(news: Path, tmp_path: Path) -> None:
    (news / "weather").mkdir()
    (news / "weather" / "1.txt").write_text("Sunny spells later.")
    expect_error([*TEXT, "--data", news, "--out", tmp_path / "r"], "class 'weather' has 1 example")


def test_missing_run_directory(tmp_path: Path) -> None:
    expect_error(["predict", tmp_path / "no-such-run", "--text", "hello"], "run directory not found")
    expect_error(["evaluate", tmp_path / "no-such-run", "--data", tmp_path], "run directory not found")


def test_bad_override_value(news: Path, tmp_path: Path) -> None:
    expect_error([*TEXT, "--data", news, "--set", "train.epochs=many", "--out", tmp_path / "r"], "train.epochs")


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, not only the in-process runner, exits 2 with a one-line message."""
    result = subprocess.run([sys.executable, "-m", "graftune.cli", "train", "--task", "text-classification",
                             "--model", "minilm-l6", "--data", str(tmp_path / "missing"), "--out",
                             str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "data not found" in result.stderr
