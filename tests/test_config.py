"""Config loading: YAML files, `--set` overrides, and errors that name the key, the line and a fix."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest

from graftune.config import Config, load_config, validate
from graftune.errors import UserError, closest

MINIMAL = """\
task: text-classification
model:
  source: minilm-l6
data:
  train: data/train.csv
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, overrides=overrides, base=base)
    return str(info.value)


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.task == "text-classification"
    assert cfg.model.source == "minilm-l6"
    assert cfg.data.train == "data/train.csv"
    assert cfg.data.split.val == 0.15 and cfg.data.split.test == 0.15
    assert cfg.freeze.body == "none" and cfg.freeze.batchnorm == "frozen"
    assert cfg.optim.lr is None and cfg.optim.schedule == "cosine"
    assert cfg.train.epochs == 3 and cfg.train.early_stopping.patience == 3


def test_file_values_are_typed(tmp_path: Path) -> None:
    text = MINIMAL + "optim:\n  lr: 1e-4\n  weight_decay: 0\nhead:\n  hidden: [64, 32]\nfreeze:\n  body: 2\n"
    cfg = load_config(write(tmp_path, text))
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.head.hidden == [64, 32]
    assert cfg.freeze.body == 2


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), overrides=[
        "train.epochs=5", "optim.lr=3e-4", "optim.weight_decay=0.5", "head.hidden=[64, 32]", "freeze.body=3",
        "data.augment=false", "train.early_stopping.patience=7", "head.cut_at=layer3", "data.split.seed=11",
    ])
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.weight_decay == 0.5
    assert cfg.head.hidden == [64, 32]
    assert cfg.freeze.body == 3 and isinstance(cfg.freeze.body, int)
    assert cfg.data.augment is False
    assert cfg.train.early_stopping.patience == 7
    assert cfg.head.cut_at == "layer3"
    assert cfg.data.split.seed == 11
    # untouched keys from the file survive the overrides
    assert cfg.model.source == "minilm-l6" and cfg.data.train == "data/train.csv"


def test_overrides_replace_file_values_and_freeze_words_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "train:\n  epochs: 9\n")
    assert load_config(path).train.epochs == 9
    assert load_config(path, overrides=["train.epochs=2"]).train.epochs == 2
    assert load_config(path, overrides=["freeze.body=all"]).freeze.body == "all"
    assert load_config(path, overrides=["model.source=hf:/models/x"]).model.source == "hf:/models/x"


def test_overrides_alone_with_a_base() -> None:
    base = {"task": "image-classification", "model": {"source": "efficientnet-lite0"}}
    cfg = load_config(None, overrides=["data.train=images/", "model.kwargs.width=4"], base=base)
    assert cfg.task == "image-classification"
    assert cfg.data.train == "images/"
    assert cfg.model.kwargs == {"width": 4}


def test_overrides_do_not_mutate_the_base_dict() -> None:
    base = {"task": "image-classification", "model": {"source": "efficientnet-lite0"}, "data": {"train": "a/"}}
    load_config(None, overrides=["data.train=b/", "model.kwargs.width=4"], base=base)
    assert base == {"task": "image-classification", "model": {"source": "efficientnet-lite0"}, "data": {"train": "a/"}}


def test_exponent_floats_in_kwargs_are_floats() -> None:
    base = {"task": "image-classification", "model": {"source": "module:pkg:f"}, "data": {"train": "x"}}
    cfg = load_config(None, overrides=["model.kwargs.dropout=1e-3"], base=base)
    assert cfg.model.kwargs["dropout"] == pytest.approx(1e-3)


def test_override_without_equals_is_a_user_error(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL), overrides=["train.epochs"])
    assert "train.epochs" in message and "KEY=VALUE" in message


def test_unknown_key_names_key_file_line_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "optim:\n  lrr: 0.001\n")
    message = error_of(path)
    assert f"{path}:7:" in message
    assert "unknown key 'optim.lrr'" in message
    assert "Did you mean 'lr'?" in message


def test_unknown_nested_and_top_level_keys_suggest_within_their_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "data_:\n  x: 1\n")
    message = error_of(path, overrides=["data.split.vall=0.2", "train.early_stopping.patiance=2"])
    assert "unknown key 'data_'" in message and "Did you mean 'data'?" in message
    assert f"{path}:6:" in message
    assert "unknown key 'data.split.vall'. Did you mean 'val'?" in message
    assert f"{path}:4: unknown key 'data.split.vall'" in message  # nearest line: the `data:` section
    assert "unknown key 'train.early_stopping.patiance'. Did you mean 'patience'?" in message


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + "zzzzzz: 1\n"))
    assert "unknown key 'zzzzzz'" in message and "Did you mean" not in message


def test_missing_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "task: text-classification\ndata:\n  val: v.csv\n")
    message = error_of(path)
    assert "missing required key 'model'" in message
    assert f"{path}:2: missing required key 'data.train'" in message


def test_empty_file_lists_every_required_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, ""))
    for key in ("task", "model", "data"):
        assert f"missing required key '{key}'" in message


def test_invalid_values_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    message = error_of(path, overrides=["train.epochs=0"])
    assert "'train.epochs'" in message and "greater than or equal to 1" in message
    assert "'task'" in error_of(write(tmp_path, MINIMAL.replace("text-", "txt-"), "bad_task.yaml"))
    assert "cannot be negative" in error_of(path, overrides=["freeze.body=-1"])
    assert "'head.hidden'" in error_of(path, overrides=["head.hidden=wide"])


def test_a_learning_rate_is_a_positive_number_or_auto(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "optim:\n  lr: auto\n")
    assert load_config(path).optim.lr == "auto"
    assert load_config(path, overrides=["optim.lr=2e-4"]).optim.lr == pytest.approx(2e-4)
    for value in ("fast", "-1e-3", "0", ".nan"):
        message = error_of(path, overrides=[f"optim.lr={value}"])
        assert "'optim.lr'" in message and "a positive number or 'auto'" in message, message
        assert message.count("\n") == 0  # one line, not one per member of the union


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "task: text-classification\nmodel:\n  source: x\n  bad: : 2\n")
    message = error_of(path)
    assert message.startswith(f"{path}:4:8:")
    assert "not valid YAML" in message
    path = write(tmp_path, "task: text-classification\nmodel: [a, b\ndata: {}\n", "flow.yaml")
    assert error_of(path).startswith(f"{path}:3:")


def test_missing_file_and_non_mapping_are_user_errors(tmp_path: Path) -> None:
    assert "config file not found" in error_of(tmp_path / "nope.yaml")
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n", "list.yaml"))


def billion_laughs(levels: int = 9) -> str:
    """A config a few hundred bytes long whose nested anchors stand for 9**levels values."""
    lines = ["    a0: &a0 {k: lol}"] + [
        f"    a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}" for i in range(1, levels)]
    return "task: text-classification\nmodel:\n  source: minilm-l6\n  kwargs:\n" + "\n".join(lines) + \
        "\ndata:\n  train: data/train.csv\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, billion_laughs())
    assert path.stat().st_size < 1000
    with helpers.time_limit(10):  # before the bound, walking the expanded values never ended
        message = error_of(path)
    assert message.startswith(f"{path}:") and "aliases repeat more than 10,000 values" in message, message
    assert "\n" not in message


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    text = MINIMAL.replace("  source: minilm-l6\n", "  source: minilm-l6\n  kwargs: {a: &w [1, 2], b: *w}\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.kwargs == {"a": [1, 2], "b": [1, 2]}


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "head: &h {hidden: *h}\n")
    assert error_of(path).startswith(f"{path}:6:")
    assert "alias *h is inside its own anchor" in error_of(path)


def test_a_config_that_is_not_utf8_names_its_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(MINIMAL.replace("data/train.csv", "données.csv").encode("latin-1"))
    message = error_of(path)
    assert message.startswith(f"{path}:5: not UTF-8 text (byte ") and "save the file as UTF-8" in message, message


def test_a_huge_config_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "# " + "x" * 2_000_000 + "\n")
    assert "too large for a config" in error_of(path)


def test_a_control_character_is_one_line_with_its_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + "head:\n  dropout: 0.1\x00\n"))
    assert ":7: not valid YAML (the control character U+0000 is not allowed)" in message and "\n" not in message


def test_validate_reports_source_name() -> None:
    with pytest.raises(UserError, match=r"^cli: missing required key 'task'"):
        validate({"model": {"source": "x"}, "data": {"train": "t"}}, source="cli")


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), overrides=[
        "optim.lr=1e-5", "optim.head_lr=0.002", "head.hidden=[48]", "freeze.body=[encoder, '^embed']",
        "train.early_stopping.patience=null", "data.split.val=0.2", "model.kwargs={width: 3, names: [a, b]}",
        "data.image_size=160",
    ])
    again = load_config(write(tmp_path, cfg.to_yaml(), "resolved.yaml"))
    assert again == cfg
    assert again.freeze.body == ["encoder", "^embed"]
    assert again.train.early_stopping.patience is None
    assert again.optim.lr == pytest.approx(1e-5)


def test_assignment_is_validated() -> None:
    cfg = validate({"task": "text-classification", "model": {"source": "x"}, "data": {"train": "t"}})
    assert isinstance(cfg, Config)
    with pytest.raises(ValueError):
        cfg.train.epochs = 0


def test_closest() -> None:
    assert closest("lrr", ["lr", "head_lr", "weight_decay"]) == " Did you mean 'lr'?"
    assert closest("qqq", ["lr", "head_lr"]) == ""


def test_yes_no_on_off_are_strings_as_in_yaml_1_2(tmp_path: Path) -> None:
    """YAML 1.1 reads `no` as false, so `mixed_precision: no` would fail; only true/false are booleans."""
    path = tmp_path / "run.yaml"
    path.write_text("task: text-classification\nmodel: {source: x}\ndata: {train: y, augment: off}\n"
                    "train: {mixed_precision: no, progress: false}\n")
    cfg = load_config(path, overrides=["data.chat_template=on"])
    assert cfg.train.mixed_precision == "no" and cfg.train.progress is False
    assert cfg.data.augment is False and cfg.data.chat_template is True  # pydantic still reads off/on as booleans
    assert load_config(None, ["task=text-classification", "model.source=x", "data.train=y",
                              "train.mixed_precision=no"]).train.mixed_precision == "no"


def test_true_and_false_are_not_numbers(tmp_path: Path) -> None:
    """pydantic's lax mode reads true as 1: `batch_size: true` would train with batches of one."""
    path = write(tmp_path, MINIMAL + "train:\n  batch_size: true\n")
    message = error_of(path)
    assert f"{path}:7" in message and "'train.batch_size'" in message and "not true or false" in message
    for override in ("optim.weight_decay=false", "head.hidden=[true]", "data.image_size=true",
                     "train.num_workers=true"):
        assert "not true or false" in error_of(write(tmp_path, MINIMAL), overrides=[override]), override
    cfg = load_config(write(tmp_path, MINIMAL), overrides=["data.chat_template=true", "train.batch_size=4"])
    assert cfg.data.chat_template is True and cfg.train.batch_size == 4  # booleans still fill boolean keys
