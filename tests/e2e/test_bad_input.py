"""Bad input, as a table: every case runs the real CLI and must exit 2 with one message that names the
file, line or key involved, print no traceback, and leave the user's files byte for byte as they were.

Each row prepares its inputs in a fresh folder (the user's), runs one command, then checks. Add rows here
for every new command and data form.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

import graftune
from graftune.data.motion_clips import write_motion_clips
from tests.e2e.cli import run_cli

pytestmark = pytest.mark.e2e


@dataclass
class Kit:
    """What cases build on: data and finished runs, copied into each case's folder before use."""

    text: Path  # 16 BBC News articles per topic, TOPIC/NNN.txt
    images: Path  # noisy colour PNGs, three classes
    bert: Path  # a tiny BERT with the real MiniLM tokenizer
    llama: Path  # a tiny Llama causal LM with the same tokenizer
    text_run: Path  # finished: tiny BERT on the text data
    image_run: Path  # finished: module:helpers:tiny_cnn on the images
    clips: Path  # generated motion clips, two classes (grow, shrink)
    video_run: Path  # finished: module:helpers:tiny_cnn per frame on the clips


@pytest.fixture(scope="module")
def kit(bbc_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("kit")
    images = helpers.write_colour_folders(root / "images")
    bert = helpers.write_tiny_bert(root / "bert", mean_pooling=True)
    llama = helpers.write_tiny_llama(root / "llama")
    quiet = Console(quiet=True)
    graftune.train({**text_config(bbc_folder, bert), "train": {"epochs": 1, "progress": False}}, root / "text-run",
                   console=quiet)
    graftune.train({**image_config(images), "train": {"epochs": 1, "batch_size": 8, "progress": False}},
                   root / "image-run", console=quiet)
    clips = root / "clips"
    write_motion_clips(clips, per_class=4, frames=4, size=32, classes=("grow", "shrink"))
    graftune.train({**video_config(clips), "train": {"epochs": 1, "batch_size": 4, "progress": False}},
                   root / "video-run", console=quiet)
    return Kit(bbc_folder, images, bert, llama, root / "text-run", root / "image-run", clips, root / "video-run")


def text_config(data: Path, bert: Path) -> dict[str, Any]:
    return {"task": "text-classification", "model": {"source": f"hf:{bert}"},
            "data": {"train": str(data), "max_length": 32}, "freeze": {"body": "all"}}


def image_config(data: Path) -> dict[str, Any]:
    return {"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
            "data": {"train": str(data), "image_size": 16, "augment": False}, "freeze": {"body": 2}}


def video_config(data: Path) -> dict[str, Any]:
    return {"task": "video-classification", "model": {"source": "module:helpers:tiny_cnn"},
            "data": {"train": str(data), "image_size": 16}, "video": {"frames": 4}, "freeze": {"body": "all"}}


# --- the cases ---------------------------------------------------------------------------------------------
# Each case gets the user's folder and the kit, writes what it needs, and returns (arguments, fragments the
# message must contain).

Case = Callable[[Path, Kit], tuple[list[Any], list[str]]]
CASES: dict[str, Case] = {}
SECONDS: dict[str, int] = {}  # the cases whose regression would hang, not fail: how long they may run


def case(name: str, seconds: int | None = None) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES[name] = function
        if seconds is not None:
            SECONDS[name] = seconds
        return function

    return register


def copy(source: Path, user: Path, name: str) -> Path:
    target = user / name
    shutil.copytree(source, target)
    return target


def text_train(user: Path, kit: Kit, *extra: Any) -> list[Any]:
    data = copy(kit.text, user, "news")
    return ["train", "--task", "text-classification", "--model", f"hf:{kit.bert}", "--data", data, "--freeze",
            "all", "--epochs", "1", "--out", user / "run", *extra]


def image_train(user: Path, kit: Kit, *extra: Any) -> list[Any]:
    data = copy(kit.images, user, "images")
    return ["train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn", "--data", data,
            "--set", "data.image_size=16", "--epochs", "1", "--out", user / "run", *extra]


def write_config(user: Path, text: str) -> Path:
    path = user / "run.yaml"
    path.write_text(text)
    return path


# configs and flags


@case("unknown model source")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index(f"hf:{kit.bert}")] = "bert-from-nowhere"
    return args, ["unknown model source 'bert-from-nowhere'", "minilm-l6"]


@case("unknown config key")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, f"task: text-classification\nmodel:\n  source: hf:{kit.bert}\ndata:\n"
                                f"  train: {kit.text}\noptim:\n  lrr: 0.001\n")
    return ["train", config, "--out", user / "run"], [f"{config}:7", "optim.lrr", "Did you mean 'lr'"]


@case("bad override value")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "train.epochs=many"), ["train.epochs"]


@case("override without a value")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "train.epochs"), ["--set 'train.epochs'", "KEY=VALUE"]


@case("YAML syntax error")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, "task: text-classification\nmodel: [unclosed\n")
    return ["train", config, "--out", user / "run"], [f"{config}:3", "not valid YAML"]


@case("key given twice in YAML")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, f"task: text-classification\nmodel: {{source: hf:{kit.bert}}}\ndata:\n"
                                f"  train: {kit.text}\n  train: elsewhere\n")
    return ["train", config, "--out", user / "run"], [f"{config}:5", "key 'train' given twice", "line 4"]


@case("config that is not a mapping")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, "- task\n- model\n")
    return ["train", config, "--out", user / "run"], [str(config), "must be a mapping"]


@case("config file missing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", user / "nope.yaml", "--out", user / "run"], [f"{user / 'nope.yaml'}: config file not found"]


@case("unknown task")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index("text-classification")] = "text-clasification"
    return args, ["'task'", "Did you mean 'text-classification'"]


@case("--data twice for train")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--data", kit.text), ["--data", "train data is given twice"]


@case("--data with an unknown split")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--data", f"holdout={kit.text}"), [f"--data holdout={kit.text}"]


@case("no --out")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    index = args.index("--out")
    return args[:index] + args[index + 2:], ["--out RUN is required"]


@case("nothing to train")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", "--out", user / "run"], ["give a CONFIG.yaml"]


@case("model.weights on a preset")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit, "--set", f"model.weights={user / 'w.pt'}")
    args[args.index(f"hf:{kit.bert}")] = "minilm-l6"
    return args, ["model.weights", "'minilm-l6' does not use it", "module:"]


@case("head.replace on a Transformers model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "head.replace=classifier"), ["head.replace", "does not use it"]


@case("image size for a text model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "data.image_size=64"), ["data.image_size", "reads text"]


@case("unknown text encoding")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "data.encoding=klingon"), ["data.encoding", "unknown text encoding"]


@case("partial without K")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit, "--strategy", "partial")
    args[args.index("all")] = "none"
    return args, ["strategy partial needs freeze.body"]


@case("a strategy that trains a body frozen whole")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--strategy", "full"), ["freeze.body=all keeps all of it frozen"]


@case("more frozen groups than the model has")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index("all")] = "99"
    return args, ["freeze.body=99", "layer groups"]


@case("a freeze pattern that matches nothing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index("all")] = "nomatch"
    return args, ["freeze.body: 'nomatch' matches no parameter"]


@case("a freeze pattern that is no regex")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index("all")] = "layer[("
    return args, ["freeze.body: 'layer[('", "not a valid regular expression"]


@case("an early-stopping metric the task does not report")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "train.early_stopping.metric=val_bleu"), ["train.early_stopping.metric"]


@case("EWC without retained inputs")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit, "--ewc", "1.0")
    args[args.index("all")] = "none"
    return args, ["regularize.ewc needs inputs", "--retain"]


@case("mixup on text")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "regularize.mixup=0.4"), ["regularize.mixup"]


@case("L2-SP with a frozen body")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--l2sp", "1.0"), ["regularize.l2sp", "linear-probe"]


@case("custom strategy without stages")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit, "--strategy", "custom")
    args[args.index("all")] = "none"
    return args, ["strategy.stages"]


@case("batches of one under BatchNorm")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return image_train(user, kit, "--batch-size", "1"), ["train.batch_size=1", "BatchNorm"]


@case("--accept-changed-data without --resume")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--accept-changed-data"), ["--accept-changed-data is for --resume"]


@case("factory keyword arguments it rejects")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return image_train(user, kit, "--set", "model.kwargs={colour: red}"), ["module:helpers:tiny_cnn",
                                                                           "model.kwargs", "colour"]


@case("a factory module that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    args[args.index("module:helpers:tiny_cnn")] = "module:no_such_package.models:build"
    return args, ["module:no_such_package.models:build", "cannot import"]


@case("a factory that returns no model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    args[args.index("module:helpers:tiny_cnn")] = "module:helpers:not_a_module"
    return args, ["module:helpers:not_a_module", "not a torch.nn.Module"]


@case("a weights file that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return image_train(user, kit, "--set", f"model.weights={user / 'car.pt'}"), [f"{user / 'car.pt'}: weights file"]


@case("weights of another model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    weights = user / "ten.pt"
    torch.save(helpers.tiny_cnn(num_classes=10).state_dict(), weights)
    return image_train(user, kit, "--set", f"model.weights={weights}"), [str(weights), "other shapes"]


@case("a layer to cut at that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return image_train(user, kit, "--set", "head.cut_at=layer22"), ["layer 'layer22' not found", "layer2"]


@case("a text model for an image task")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    args[args.index("module:helpers:tiny_cnn")] = f"hf:{kit.bert}"
    return args[:args.index("--set")] + args[args.index("--set") + 2:], ["model.source", "is a text model"]


# data


@case("data that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    args[args.index("--data") + 1] = user / "missing"
    return args, [f"{user / 'missing'}: data not found"]


@case("an empty text file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    (user / "news" / "tech" / "empty.txt").write_text("  \n")
    return args, [f"{user / 'news' / 'tech' / 'empty.txt'}: empty text"]


@case("a corrupt image")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    (user / "images" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n not really an image")
    return args, [str(user / "images" / "red" / "broken.png"), "cannot read image"]


@case("text in another encoding")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    (user / "news" / "tech" / "latin.txt").write_bytes("caf\xe9 society".encode("latin-1"))
    return args, [f"{user / 'news' / 'tech' / 'latin.txt'}: not UTF-8 text (byte 3)", "data.encoding"]


def table(user: Path, name: str, text: str) -> Path:
    path = user / name
    path.write_text(text)
    return path


def table_train(user: Path, kit: Kit, path: Path, *extra: Any) -> list[Any]:
    return ["train", "--task", "text-classification", "--model", f"hf:{kit.bert}", "--data", path, "--freeze",
            "all", "--out", user / "run", *extra]


@case("a CSV column that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.csv", "review,label\ngreat film,pos\nawful film,neg\n")
    return table_train(user, kit, path, "--set", "data.input_column=reveiw"), [
        f"{path}:2", "no column 'reveiw'", "Did you mean 'review'"]


@case("a CSV row without a label")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.csv", "text,label\ngreat film,pos\nawful film,\n")
    return table_train(user, kit, path), [f"{path}:3", "empty label"]


@case("a CSV row with more fields than the header")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.csv", "text,label\ngreat film,pos\nawful, truly awful film,neg\n")
    return table_train(user, kit, path), [f"{path}:3", "more fields than the header"]


@case("a JSONL line that is not JSON")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.jsonl", '{"text": "fine", "label": "a"}\n{"text": "broken", "label": \n')
    return table_train(user, kit, path), [f"{path}:2:", "not valid JSON"]


@case("a JSONL line that is no object")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.jsonl", '{"text": "fine", "label": "a"}\n["text", "b"]\n')
    return table_train(user, kit, path), [f"{path}:2", "expected a JSON object"]


@case("a CSV image that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "photos.csv", "image,label\nnowhere.png,cat\n")
    args = ["train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn", "--data", path,
            "--out", user / "run"]
    return args, [f"{path}:2", "nowhere.png not found"]


@case("a label only validation has")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    helpers.write_text(user / "val" / "weather" / "1.txt", "Rain is expected across the north tomorrow.")
    return [*args, "--data", f"val={user / 'val'}"], ["label 'weather'", "does not appear in the training data"]


@case("a class too small to split")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    helpers.write_text(user / "news" / "weather" / "1.txt", "Sunny spells later.")
    return args, ["class 'weather' has 1 example"]


@case("a single class")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    for n in range(6):
        helpers.write_text(user / "one" / "sport" / f"{n}.txt", f"Match report number {n}.")
    return table_train(user, kit, user / "one"), ["found 1 class(es)", "at least 2"]


@case("a class folder of files graftune cannot read")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    helpers.write_text(user / "images" / "purple" / "1.heic", "not decodable here")
    return args, [str(user / "images" / "purple"), "has no image files", "1 .heic"]


@case("a data format that does not match the path")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "data.format=csv"), ["data.format is 'csv', but this is a folder"]


@case("a data file of an unknown kind")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "reviews.xlsx", "not a spreadsheet")
    return table_train(user, kit, path), [f"{path}: unknown data format '.xlsx'"]


@case("a folder without class folders")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "flat" / "a.txt", "loose file")
    return table_train(user, kit, user / "flat"), [f"{user / 'flat'}: no class folders"]


# where the run goes


@case("--out under a file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "notes.txt").write_text("mine")
    args = text_train(user, kit)
    args[args.index("--out") + 1] = user / "notes.txt" / "run"
    return args, [str(user / "notes.txt" / "run"), "cannot create the run folder"]


@case("--out is a finished run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    copy(kit.text_run, user, "run")
    return text_train(user, kit), [f"{user / 'run'}: run directory exists", "--overwrite"]


@case("--overwrite on a folder that is no run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "run" / "thesis.tex", "years of work")
    return text_train(user, kit, "--overwrite"), [f"{user / 'run'}: exists and is not a graftune run"]


@case("--overwrite on a run holding the user's files")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    (run / "my-notes.txt").write_text("notes")
    return text_train(user, kit, "--overwrite"), ["holds files graftune did not write (my-notes.txt)"]


# evaluate and predict


@case("predict: no run there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", user / "no-such-run", "--text", "hello"], [f"{user / 'no-such-run'}: run directory not found"]


@case("evaluate: no run there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["evaluate", user / "no-such-run", "--data", user], [f"{user / 'no-such-run'}: run directory not found"]


@case("predict: a run that never finished")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    shutil.rmtree(run / "model")
    return ["predict", run, "--text", "hello"], [f"{run}: no model/ folder", "--resume"]


@case("predict: an input file that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", copy(kit.text_run, user, "run"), user / "gone.txt"], [f"{user / 'gone.txt'}: input file"]


@case("predict: text for an image model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", copy(kit.image_run, user, "run"), "--text", "a cat", "--trust-code"], [
        "--text is for text models"]


@case("predict: a file that is no image")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    notes = helpers.write_text(user / "notes.txt", "hello")
    return ["predict", copy(kit.image_run, user, "run"), notes, "--trust-code"], [f"{notes}: not an image file"]


@case("predict: nothing to predict")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", copy(kit.text_run, user, "run")], ["nothing to predict"]


@case("predict: an empty text")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", copy(kit.text_run, user, "run"), "--text", "   "], ["--text #1: empty text"]


@case("predict: code the run folder names, not trusted")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.image_run, user, "run")
    image = next((kit.images / "red").glob("*.png"))
    return ["predict", run, image], [f"{run / 'model' / 'graftune.json'}", "module:helpers:tiny_cnn",
                                     "--trust-code"]


@case("evaluate: labels the model never saw")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "new" / "weather" / "1.txt", "Rain tomorrow.")
    helpers.write_text(user / "new" / "tech" / "1.txt", "Chips got faster.")
    return ["evaluate", copy(kit.text_run, user, "run"), "--data", user / "new"], [
        str(user / "new"), "labels weather were not in the training data"]


@case("evaluate: data that is not there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["evaluate", copy(kit.text_run, user, "run"), "--data", user / "gone"], [f"{user / 'gone'}: data not"]


@case("a damaged graftune.json")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    (run / "model" / "graftune.json").write_text('{"format": 2, "task": ')
    return ["predict", run, "--text", "hi"], [f"{run / 'model' / 'graftune.json'}: damaged"]


@case("a model folder of another format")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    info = json.loads((run / "model" / "graftune.json").read_text())
    (run / "model" / "graftune.json").write_text(json.dumps({**info, "format": 1}))
    return ["predict", run, "--text", "hi"], [f"{run / 'model' / 'graftune.json'}: written in model format 1"]


@case("damaged model weights")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["evaluate", run, "--data", kit.text], [f"{weights}: damaged"]


# resume


def resumable(user: Path, kit: Kit) -> Path:
    """A finished one-epoch text run: its checkpoint makes it resumable for more epochs. The head is trained by
    SGD, not solved exactly: ten cases build one each, and what they check is the resume's refusal, which
    does not depend on how the head was fitted (the exact probe's many small solves are slow on a busy CPU)."""
    data = copy(kit.text, user, "news")
    run = user / "run"
    code, output = run_cli("train", "--task", "text-classification", "--model", f"hf:{kit.bert}", "--data", data,
                           "--freeze", "all", "--epochs", "1", "--set", "data.max_length=32",
                           "--set", "strategy.probe=sgd", "--out", run)
    assert code == 0, output
    return run


@case("resume: a folder that is no run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "project" / "config.yaml", "database: postgres\n")
    return ["train", "--resume", user / "project"], [f"{user / 'project'}: not a graftune run"]


@case("resume: no folder there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", "--resume", user / "gone"], [f"{user / 'gone'}: run directory not found"]


@case("resume: a flag that would change the run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", "--resume", resumable(user, kit), "--lr", "0.1"], ["--lr cannot be given with it"]


@case("resume: a setting that would change the run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", "--resume", resumable(user, kit), "--set", "optim.weight_decay=0.5"], [
        "optim.weight_decay cannot change"]


@case("resume: fewer epochs than it ran")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    return ["train", "--resume", run, "--set", "train.epochs=0"], ["train.epochs"]


@case("resume: a data file changed")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    article = sorted((user / "news" / "tech").glob("*.txt"))[0]
    article.write_text(article.read_text() + " Edited later.")
    return ["train", "--resume", run, "--epochs", "2"], ["data changed since this run started", "1 changed",
                                                          article.name, "--accept-changed-data"]


@case("resume: a data file removed")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    article = sorted((user / "news" / "sports").glob("*.txt"))[0]
    article.unlink()
    return ["train", "--resume", run, "--epochs", "2"], ["1 missing", article.name]


@case("resume: a data file added")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    helpers.write_text(user / "news" / "sports" / "late.txt", "A late addition to the data.")
    return ["train", "--resume", run, "--epochs", "2"], ["1 new", "late.txt"]


@case("resume: code the run names, not trusted")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.image_run, user, "run")
    return ["train", "--resume", run, "--epochs", "2"], [f"{run / 'config.yaml'}", "module:helpers:tiny_cnn",
                                                         "--trust-code"]


@case("resume: a damaged last.json")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    (run / "checkpoints" / "last.json").write_text("{oops")
    return ["train", "--resume", run, "--epochs", "2"], [f"{run / 'checkpoints' / 'last.json'}: damaged"]


@case("resume: a damaged config.yaml")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    (run / "config.yaml").write_text("task: text-classification\nmodel: {source: [\n")
    return ["train", "--resume", run], [f"{run / 'config.yaml'}:3", "not valid YAML"]


@case("resume: a damaged data_splits.json")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    (run / "data_splits.json").write_text('{"train": ')
    return ["train", "--resume", run, "--epochs", "2"], [f"{run / 'data_splits.json'}: damaged"]


@case("resume: a crafted loop state")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = resumable(user, kit)
    state = run / "checkpoints" / "epoch-0001" / "custom_checkpoint_0.pkl"
    state.write_bytes(pickle.dumps({"fit": Crafted(user / "pwned"), "scheduler": {}}, protocol=2))
    return ["train", "--resume", run, "--epochs", "2"], [f"{state}: not a loop state graftune wrote"]


class Crafted:
    """A pickle that would create a file when unpickled in full."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


# language models


def lm_train(user: Path, kit: Kit, data: Path, *extra: Any) -> list[Any]:
    return ["train", "--task", "causal-lm", "--model", f"hf:{kit.llama}", "--data", data, "--epochs", "1",
            "--set", "data.block_size=32", "--out", user / "run", *extra]


@case("causal-lm: an encoder for a language model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = lm_train(user, kit, copy(kit.text, user, "news"))
    args[args.index(f"hf:{kit.llama}")] = f"hf:{kit.bert}"
    return args, [f"hf:{kit.bert}", "not a causal language model"]


@case("causal-lm: an empty corpus")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "corpus" / "a.txt", "   ")
    return lm_train(user, kit, user / "corpus"), [f"{user / 'corpus'}: no text found"]


@case("causal-lm: a pair without its completion column")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "pairs.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "answer": "d"}\n')
    return lm_train(user, kit, path, "--set", "data.form=pairs"), [f"{path}:2", "no column 'completion'"]


@case("causal-lm: a pair line that is no object")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "pairs.jsonl", '{"prompt": "a", "completion": "b"}\n["c", "d"]\n')
    return lm_train(user, kit, path, "--set", "data.form=pairs"), [f"{path}:2", "expected a JSON object"]


@case("causal-lm: a strategy that trains a new head first")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lm_train(user, kit, copy(kit.text, user, "news"), "--strategy", "lp-ft"), [
        "strategy lp-ft begins by training a new head"]


@case("causal-lm: a chat template the tokenizer lacks")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "pairs.jsonl", "".join(f'{{"prompt": "p{i}", "completion": "c{i}"}}\n' for i in range(9)))
    return lm_train(user, kit, path, "--set", "data.chat_template=true"), ["data.chat_template=true",
                                                                           "no chat template"]


def video_train(user: Path, kit: Kit, data: Path, *extra: Any) -> list[Any]:
    return ["train", "--task", "video-classification", "--model", "module:helpers:tiny_cnn", "--data", data,
            "--set", "data.image_size=16", "--set", "video.frames=4", "--epochs", "1", "--out", user / "run", *extra]


@case("video: a clip that is not a video")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.clips, user, "clips")
    bad = data / "grow" / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video at all" * 50)
    return video_train(user, kit, data), [str(bad), "cannot decode video broken.mp4"]


@case("video: an empty clip file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.clips, user, "clips")
    bad = data / "shrink" / "empty.webm"
    bad.write_bytes(b"")
    return video_train(user, kit, data), [str(bad), "empty.webm"]


@case("video: a clip cut short mid-file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.clips, user, "clips")
    bad = data / "grow" / "000.mp4"
    bad.write_bytes(bad.read_bytes()[:200])
    return video_train(user, kit, data), [str(bad), "000.mp4"]


@case("video: a CSV row whose clip is missing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.clips, user, "clips")
    table = user / "clips.csv"
    rows = [f"{p.relative_to(user)},{p.parent.name}" for p in sorted(data.rglob("*.mp4"))]
    table.write_text("video,label\n" + "\n".join([*rows, "clips/grow/gone.mp4,grow"]) + "\n")
    return video_train(user, kit, table), [f"{table}:{len(rows) + 2}", "gone.mp4 not found"]


@case("video: a class folder without video files")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.clips, user, "clips")
    (data / "notes").mkdir()
    (data / "notes" / "a.txt").write_text("not a clip")
    return video_train(user, kit, data), [str(data / "notes"), "has no video files", ".mp4"]


@case("video: a text model for clips")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = video_train(user, kit, copy(kit.clips, user, "clips"))
    args[args.index("module:helpers:tiny_cnn")] = f"hf:{kit.bert}"
    return args, ["is a text model", "reads videos", "Choose an image or video model"]


@case("video: mixup on clips")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return video_train(user, kit, copy(kit.clips, user, "clips"), "--set", "regularize.mixup=0.2"), [
        "regularize.mixup", "remove them for video"]


@case("video: an unknown temporal head")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return video_train(user, kit, copy(kit.clips, user, "clips"), "--set", "video.temporal=lstm"), [
        "video.temporal", "'mean'", "'conv'", "'attention'"]


@case("predict: an image file on a video run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    image = next(copy(kit.images, user, "images").rglob("*.png"))
    return ["predict", copy(kit.video_run, user, "run"), image, "--trust-code"], [
        str(image), "not a video file", ".mp4"]


@case("predict: a corrupt clip on a video run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    clip = user / "clip.mkv"
    clip.write_bytes(b"\x1aE\xdf\xa3 broken matroska")
    return ["predict", copy(kit.video_run, user, "run"), clip, "--trust-code"], [str(clip), "clip.mkv"]


@case("generate: a classifier")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["generate", copy(kit.text_run, user, "run"), "--prompt", "hello"], [
        "generate is for tasks that produce text", "text-classification"]


@case("generate: an empty prompt")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["generate", copy(kit.text_run, user, "run"), "--prompt", "  "], ["--prompt: empty prompt"]


# export


@case("export: no run there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["export", user / "no-such-run", "--format", "onnx"], [f"{user / 'no-such-run'}: run directory not found"]


@case("export: a folder that is no run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "photos" / "notes.txt", "mine")
    return ["export", user / "photos", "--format", "onnx"], [f"{user / 'photos'}: not a graftune run folder"]


@case("export: a run that never finished")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    shutil.rmtree(run / "model")
    return ["export", run, "--format", "torchscript"], [f"{run}: no model/ folder", "--resume"]


@case("export: an unknown format")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["export", copy(kit.text_run, user, "run"), "--format", "onxx"], [
        "--format onxx: unknown format", "onnx, hf or torchscript", "Did you mean 'onnx'"]


@case("export: --out holds the user's files")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "served" / "notes.txt", "mine")
    return ["export", copy(kit.text_run, user, "run"), "--format", "torchscript", "--out", user / "served"], [
        f"--out {user / 'served'}: exists and is not empty", "--overwrite"]


@case("export: --overwrite on a folder no export wrote")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "served" / "notes.txt", "mine")
    return ["export", copy(kit.text_run, user, "run"), "--format", "torchscript", "--out", user / "served",
            "--overwrite"], [f"--out {user / 'served'}: not an export graftune wrote", "refusing to replace it"]


@case("export: --out is a file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "model.onnx", "not a folder")
    return ["export", copy(kit.text_run, user, "run"), "--format", "onnx", "--out", user / "model.onnx"], [
        f"--out {user / 'model.onnx'}: exists and is a file"]


@case("export: hf for an image model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["export", copy(kit.image_run, user, "run"), "--format", "hf", "--trust-code"], [
        "--format hf: image and video models", "module:helpers:tiny_cnn", "Use --format onnx or --format torchscript"]


@case("export: hf for a video model")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["export", copy(kit.video_run, user, "run"), "--format", "hf", "--trust-code"], [
        "--format hf: image and video models", "Use --format onnx or --format torchscript"]


@case("export: code the run folder names, not trusted")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.image_run, user, "run")
    return ["export", run, "--format", "onnx"], [f"{run / 'model' / 'graftune.json'}", "module:helpers:tiny_cnn",
                                                 "--trust-code"]


@case("export: a tolerance of zero")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["export", copy(kit.text_run, user, "run"), "--format", "onnx", "--tolerance", "0"], [
        "--tolerance 0.0: must be above 0"]


# serve: each is refused before the server starts (a case that got past would serve until killed)

HELD: list[socket.socket] = []  # listening sockets that keep a port busy while a case runs


@case("serve: no run there")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", user / "no-such-run"], [f"{user / 'no-such-run'}: run directory not found"]


@case("serve: a folder that is no run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "notes" / "a.txt", "hello")
    return ["serve", user / "notes"], [f"{user / 'notes'}: no model/ folder"]


@case("serve: code the run folder names, not trusted")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.image_run, user, "run")
    return ["serve", run], ["module:helpers:tiny_cnn", "--trust-code"]


@case("serve: a port out of range")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", copy(kit.text_run, user, "run"), "--port", "70000"], [
        "Invalid value for '--port'", "less than or equal to 65535"]


@case("serve: a port in use")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    HELD.append(busy)
    port = busy.getsockname()[1]
    return ["serve", copy(kit.text_run, user, "run"), "--port", port], [
        f"--host 127.0.0.1 --port {port}: cannot listen there", "Address already in use"]


@case("serve: a host that is not this machine's")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", copy(kit.text_run, user, "run"), "--host", "192.0.2.1"], [
        "--host 192.0.2.1 --port 8000: cannot listen there"]


@case("serve: no batch")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", copy(kit.text_run, user, "run"), "--max-batch", "0"], ["Invalid value for '--max-batch'"]


@case("serve: a body limit of nothing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", copy(kit.text_run, user, "run"), "--max-body-mb", "0"], ["--max-body-mb 0: give a size above 0"]


@case("serve: a negative wait")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["serve", copy(kit.text_run, user, "run"), "--max-wait-ms", "-1"], ["Invalid value for '--max-wait-ms'"]


# tune


def tune_args(user: Path, kit: Kit, *extra: Any) -> list[Any]:
    """`graftune tune` on a tiny CNN over the colour images, from a config in the user's folder."""
    data = copy(kit.images, user, "images")
    config = write_config(user, yaml.safe_dump({**image_config(data), "train": {"epochs": 1, "batch_size": 8,
                                                                                "progress": False}}))
    return ["tune", config, "--trials", "2", "--out", user / "study", *extra]


@case("tune: a bad --space spec")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--space", "optim.lr=log:0:1e-3"), ["--space optim.lr=log:0:1e-3",
                                                                    "LOW above 0"]


@case("tune: a --space kind that does not exist")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--space", "head.dropout=uniform:0:1"), ["unknown spec 'uniform'", "choice:A,B"]


@case("tune: an unknown --space key")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--space", "optim.lrr=log:1e-4:1e-2"), [
        "--space optim.lrr: unknown key 'optim.lrr'", "Did you mean 'lr'"]


@case("tune: a --space value the key refuses")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--space", "head.dropout=float:0:1.5"), ["--space head.dropout", "less than 1"]


@case("tune: searching the data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--space", "data.train=choice:a,b"), ["--space data.train",
                                                                      "set data.train with --set"]


@case("tune: --only a key that is not searched")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--only", "head.dropout"), ["--only head.dropout: not in the search space",
                                                            "--space head.dropout=SPEC"]


@case("tune: a strategy of the search that the config rules out")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--set", "regularize.l2sp=0.1"), ["--space strategy.name=linear-probe",
                                                                  "regularize.l2sp"]


@case("tune: no trials")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = tune_args(user, kit)
    args[args.index("--trials") + 1] = "0"
    return args, ["--trials 0", "at least 1 trial"]


@case("tune: a timeout of no time")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return tune_args(user, kit, "--timeout", "0"), ["--timeout 0"]


@case("tune: a study folder that is not a study")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    helpers.write_text(user / "study" / "notes.txt", "mine")
    return tune_args(user, kit), [f"{user / 'study'}: exists and is not a graftune study", "Choose another --out"]


@case("tune: a run folder as the study")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    copy(kit.image_run, user, "study")
    return tune_args(user, kit), ["is a graftune run, not a study"]


@case("tune: data that the first trial cannot read")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    # The study folder is made just before trial 0 fails: a study in which nothing finished is removed again.
    return tune_args(user, kit, "--set", f"data.train={user / 'gone'}"), ["trial 0", str(user / "gone")]


@case("tune: continuing a study with other settings")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = tune_args(user, kit, "--only", "optim.lr")
    code, output = run_cli(*[str(a) for a in [*args[:3], "1", *args[4:]]])  # a 1-trial study to continue
    assert code == 0, output
    return [*args, "--set", "train.batch_size=4"], ["this study was started with other settings",
                                                     "train.batch_size differ"]

# the learning-rate range test


def lr_find(user: Path, kit: Kit, *extra: Any, probe: str = "sgd") -> list[Any]:
    """A linear probe trained by epochs (an exact one has no rate to find)."""
    data = copy(kit.text, user, "news")
    config = write_config(user, json.dumps({**text_config(data, kit.bert), "train": {"progress": False},
                                            "strategy": {"probe": probe}}))
    return ["lr-find", config, "--out", user / "lr", *extra]


@case("lr-find: a head that is solved exactly")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, probe="exact"), ["solved exactly", "strategy.probe=sgd"]


@case("lr-find: --start not below --end")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, "--start", "1", "--end", "0.1"), ["--start 1 --end 0.1", "--start below --end"]


@case("lr-find: a start that is not positive")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, "--start", "0"), ["--start 0", "positive number"]


@case("lr-find: too few steps")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, "--steps", "3"), ["--steps 3", "at least 5 steps"]


@case("lr-find: config file missing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["lr-find", user / "nope.yaml", "--out", user / "lr"], [f"{user / 'nope.yaml'}: config file not found"]


@case("lr-find: no --out")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit)[:2], ["--out DIR is required"]


@case("lr-find: --out holds the user's files")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "lr").mkdir()
    (user / "lr" / "lr_find.json").write_text("my own notes")
    return lr_find(user, kit), [f"--out {user / 'lr'}", "not empty", "--overwrite"]


@case("lr-find: --out is a file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "lr").write_text("a file")
    return lr_find(user, kit, "--overwrite"), [f"--out {user / 'lr'}", "is a file"]


@case("lr-find: a loss that diverges at once")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, "--start", "1e3", "--end", "1e6", "--steps", "20"), [
        "range test stopped after", "too few points to pick a rate", "--start"]


@case("lr-find: a bad override")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return lr_find(user, kit, "--set", "optim.head_lr=-1"), ["'optim.head_lr'", "greater than 0"]


@case("optim.lr neither a number nor auto")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "optim.lr=fast"), ["'optim.lr'", "a positive number or 'auto'", "'fast'"]


# report


def damaged_run(user: Path, kit: Kit, name: str, text: str | None) -> Path:
    """A copy of the finished image run with one file replaced by `text` (None: removed)."""
    run = copy(kit.image_run, user, "run")
    if text is None:
        (run / name).unlink()
    else:
        (run / name).write_text(text)
    return run


@case("report: a folder that is not a run")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "notes").mkdir()
    (user / "notes" / "config.yaml").write_text("task: text-classification\n")
    return ["report", user / "notes"], [str(user / "notes"), "not a graftune run", ".graftune-run"]


@case("report: no such folder")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["report", user / "nowhere"], [str(user / "nowhere"), "run directory not found"]


@case("report: config.yaml missing")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "config.yaml", None)
    return ["report", run], [str(run / "config.yaml"), "missing"]


@case("report: damaged metrics.jsonl")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "metrics.jsonl", '{"epoch": 1\n')
    return ["report", run], [str(run / "metrics.jsonl"), "damaged"]


@case("report: damaged results.json")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "results.json", "{not json")
    return ["report", run], [str(run / "results.json"), "damaged"]


@case("report: damaged test_predictions.jsonl")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    rows = (kit.image_run / "test_predictions.jsonl").read_text().splitlines()
    run = damaged_run(user, kit, "test_predictions.jsonl", "\n".join([rows[0], '{"label": "red"}', *rows[2:]]))
    return ["report", run], [f"{run / 'test_predictions.jsonl'}:2", "damaged", "not a prediction row"]


@case("report: results.json of another shape")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "results.json", "[1, 2]")
    return ["report", run], [str(run / "results.json"), "not the dict graftune writes"]


@case("report: results.json whose test section is no table")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "results.json", json.dumps({"test": 5}))
    return ["report", run], [str(run), "does not have the shape graftune writes"]


@case("report: metrics.jsonl rows that are no objects")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "metrics.jsonl", "[1]\n")
    return ["report", run], [str(run / "metrics.jsonl"), "not a JSON object"]


@case("report: strategy.json of another shape")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "strategy.json", '"full"')
    return ["report", run], [str(run / "strategy.json"), "not the dict graftune writes"]


@case("train.log_with: an unknown tracker")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "train.log_with=tensorbord"), [
        "train.log_with", "unknown tracker 'tensorbord'", "Did you mean 'tensorboard'"]


@case("train.log_with: a tracker that is not installed")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return text_train(user, kit, "--set", "train.log_with=tensorboard,swanlab"), [
        "train.log_with: swanlab is not installed", "pip install swanlab"]


# issue 20: links in received run folders, and the user's files inside a run under --overwrite. The link's target
# lies in the user's folder, so the check below proves it byte for byte untouched.


def planted(user: Path, kit: Kit, link: str, target: str = "victim.txt", source: Path | None = None) -> Path:
    """A copy of a finished run (the image run by default) with `link` replaced by a symbolic link to a file (or,
    for a name ending in '/', a folder) of the user's outside it."""
    run = copy(source or kit.image_run, user, "run")
    outside = user / target
    if link.endswith("/"):
        helpers.write_text(outside / "epoch-0001" / "keep.txt", "the user's")
    else:
        outside.write_text("the user's own file\n")
    path = run / link.rstrip("/")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(outside)
    return run


@case("links: report with a planted temporary name")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, ".report.html.tmp")
    return ["report", run], [str(run / ".report.html.tmp"), "symbolic link", "never follows links"]


@case("links: report with a plot linked outside")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "plots/learning_curves.png", "secret.png")
    return ["report", run], [str(run / "plots" / "learning_curves.png"), "symbolic link"]


@case("links: resume with checkpoints/ linked elsewhere")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "checkpoints/", "elsewhere")
    return ["train", "--resume", run, "--epochs", "2", "--trust-code"], [str(run / "checkpoints"), "symbolic link"]


@case("links: resume with a planted metrics temporary name")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, ".metrics.jsonl.tmp")
    return ["train", "--resume", run, "--epochs", "2", "--trust-code"], [str(run / ".metrics.jsonl.tmp"),
                                                                         "symbolic link"]


@case("links: export with exports/ linked elsewhere")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "exports/", "elsewhere")
    return ["export", run, "--format", "torchscript", "--trust-code"], [str(run / "exports"), "symbolic link"]


@case("links: evaluate with a linked results file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "results.json", source=kit.text_run)
    return ["evaluate", run, "--data", kit.text], [str(run / "results.json"), "symbolic link"]


@case("links: predict with a linked model file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "model/graftune.json", source=kit.text_run)
    return ["predict", run, "--text", "hello"], [str(run / "model" / "graftune.json"), "symbolic link"]


@case("links: a run: source with a link")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "plots/confusion_matrix.png", source=kit.text_run)
    return (["train", "--task", "text-classification", "--model", f"run:{run}", "--data", kit.text, "--out",
             user / "child"], [str(run / "plots" / "confusion_matrix.png"), "symbolic link"])


@case("links: tune continuing a study with a linked database")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = tune_args(user, kit)
    study = user / "study"
    study.mkdir()
    (study / ".graftune-study").write_text("graftune study directory\n")
    (user / "victim.db").write_bytes(b"the user's database")
    (study / "study.db").symlink_to(user / "victim.db")
    return args, [str(study / "study.db"), "symbolic link"]


@case("overwrite: the user's notes inside plots/")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.image_run, user, "run")
    helpers.write_text(run / "plots" / "notes.txt", "what I saw in these curves")
    return image_train(user, kit, "--overwrite"), [str(run), "holds files graftune did not write", "plots/notes.txt"]


@case("overwrite: the user's image inside an export")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = copy(kit.text_run, user, "run")
    helpers.write_text(run / "exports" / "onnx" / "tokenizer" / "mine.txt", "mine")
    helpers.write_text(run / "exports" / "onnx" / "export.json", json.dumps({"files": ["model.onnx"]}))
    return text_train(user, kit, "--overwrite"), ["holds files graftune did not write",
                                                  "exports/onnx/tokenizer/mine.txt"]


@case("overwrite: a run with a link inside")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    planted(user, kit, "plots/learning_curves.png")
    return image_train(user, kit, "--overwrite"), ["holds files graftune did not write", "plots/learning_curves.png"]


# issue 20: data edges


@case("a JSONL label that is a list")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "news.jsonl", '{"text": "fine", "label": "sport"}\n{"text": "odd", "label": ["business"]}\n')
    return table_train(user, kit, path), [f"{path}:2", "is a list", "multi-label classification is not supported",
                                          "one string label"]


@case("a JSONL label that is a fraction")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "news.jsonl", '{"text": "fine", "label": 1}\n{"text": "odd", "label": 0.5}\n')
    return table_train(user, kit, path), [f"{path}:2", "is the number 0.5", "a string, or a whole number"]


@case("test data that is the training data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = text_train(user, kit)
    data = args[args.index("--data") + 1]
    return [*args, "--data", f"test={data}"], [f"data.test ({data}) is the training data", "held-out data"]


@case("causal-lm: every prompt fills a block")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    long = " ".join(["word"] * 40)
    rows = "".join(f'{{"prompt": "{long} {i}", "completion": "c{i}"}}\n' for i in range(9))
    path = table(user, "pairs.jsonl", rows)
    return lm_train(user, kit, path), ["pairs were left out: each prompt fills a block of 32 tokens", f"{path}:",
                                       "Nothing to train on or score", "raise data.block_size"]


@case("causal-lm: a completion that is a list")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "pairs.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ["d"]}\n')
    return lm_train(user, kit, path), [f"{path}:2", "the completion (column 'completion') is [\"d\"], not text"]


@case("causal-lm: a completion that is the number 0")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "pairs.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": 0}\n')
    return lm_train(user, kit, path), [f"{path}:2", "is 0, not text", "a JSON string"]


@case("train.batch_size: true")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, f"task: text-classification\nmodel:\n  source: hf:{kit.bert}\ndata:\n"
                                f"  train: {kit.text}\ntrain:\n  batch_size: true\n")
    return ["train", config, "--out", user / "run"], [f"{config}:7", "train.batch_size", "not true or false"]


# issue 20: configs, weights files, output folders


def alias_bomb(data: Path) -> str:
    """'Billion laughs': an image config of a few hundred bytes whose nested anchors in model.kwargs stand for
    9**8 values."""
    levels = ["    a0: &a0 {k: lol}"] + [f"    a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}"
                                         for i in range(1, 9)]
    return ("task: image-classification\nmodel:\n  source: module:helpers:tiny_cnn\n  kwargs:\n" + "\n".join(levels)
            + f"\ndata:\n  train: {data}\n  image_size: 16\n")


@case("a config whose YAML aliases expand without end", seconds=30)
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = write_config(user, alias_bomb(copy(kit.images, user, "images")))
    return ["train", config, "--out", user / "run"], [f"{config}:", "aliases repeat more than 10,000 values",
                                                      "write the values out"]


@case("report: a run whose config.yaml is an alias bomb", seconds=30)
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "config.yaml", alias_bomb(kit.images))
    return ["report", run], [f"{run / 'config.yaml'}:", "aliases repeat more than 10,000 values"]


@case("train --resume: a run whose config.yaml is an alias bomb", seconds=30)
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = damaged_run(user, kit, "config.yaml", alias_bomb(kit.images))
    return ["train", "--resume", run], [f"{run / 'config.yaml'}:", "aliases repeat more than 10,000 values"]


@case("a latin-1 config")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    config = user / "run.yaml"
    config.write_bytes(f"# données de test\n{yaml.safe_dump(image_config(copy(kit.images, user, 'images')))}"
                       .encode("latin-1"))
    return ["train", config, "--out", user / "run"], [f"{config}:1: not UTF-8 text (byte 6",
                                                      "save the file as UTF-8"]


@case("an empty .pt weights file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "empty.pt").write_bytes(b"")
    return image_train(user, kit, "--set", f"model.weights={user / 'empty.pt'}"), [
        f"{user / 'empty.pt'}: cannot read weights: empty (0 bytes) or truncated; not a PyTorch weights file"]


@case("a truncated .pt weights file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    torch.save(helpers.tiny_cnn().state_dict(), user / "cut.pt")
    (user / "cut.pt").write_bytes((user / "cut.pt").read_bytes()[:5000])
    return image_train(user, kit, "--set", f"model.weights={user / 'cut.pt'}"), [
        f"{user / 'cut.pt'}: cannot read weights: truncated or damaged", "torch.save(model.state_dict(), path)"]


@case("a .pth weights file of random bytes")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "noise.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    return image_train(user, kit, "--set", f"model.weights={user / 'noise.pth'}"), [
        f"{user / 'noise.pth'}: cannot read weights: not a PyTorch weights file"]


@case("train --out inside the training data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = image_train(user, kit)
    args[args.index("--out") + 1] = user / "images" / "run"
    return args, [f"--out {user / 'images' / 'run'}: is inside the data.train folder {user / 'images'}",
                  "Choose an --out outside"]


@case("train --out the validation data folder itself, through a link")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    val = copy(kit.images, user, "val")
    (user / "shortcut").symlink_to(val)
    args = image_train(user, kit, "--data", f"val={val}")
    args[args.index("--out") + 1] = user / "shortcut"
    return args, [f"--out {user / 'shortcut'}: is inside the data.val folder {val}"]


@case("tune: --out inside the data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = tune_args(user, kit)
    args[args.index("--out") + 1] = user / "images" / "study"
    return args, [f"--out {user / 'images' / 'study'}: is inside the data.train folder"]


@case("lr-find: --out inside the data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    args = lr_find(user, kit)
    args[args.index("--out") + 1] = user / "news" / "lr"
    return args, [f"--out {user / 'news' / 'lr'}: is inside the data.train folder"]


@case("plan: --out inside the data")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    data = copy(kit.images, user, "images")
    return ["plan", "--data", data, "--model", "module:helpers:tiny_cnn", "--task", "image-classification",
            "--out", data / "plan"], [f"--out {data / 'plan'}: is inside the --data folder {data}"]


@case("demo: --out a folder that holds the user's files")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    (user / "work").mkdir()
    (user / "work" / "notes.txt").write_text("mine\n")
    return ["demo", "--out", user / "work"], [f"{user / 'work'}: run directory exists"]


# issue 20: serve and generation bounds


def lm_run(user: Path, kit: Kit) -> Path:
    """A finished causal-lm run of the tiny Llama (a context of 256 positions) on three articles."""
    corpus = user / "corpus"
    corpus.mkdir()
    for article in sorted((kit.text / "tech").glob("*.txt"))[:3]:
        (corpus / article.name).write_text(article.read_text()[:600])
    graftune.train({"task": "causal-lm", "model": {"source": f"hf:{kit.llama}"}, "strategy": {"name": "full"},
                    "data": {"train": str(corpus), "block_size": 32, "split": {"val": 0.34, "test": 0.0}},
                    "train": {"epochs": 1, "batch_size": 4, "progress": False},
                    "generation": {"samples": 0}}, user / "lm-run", console=Console(quiet=True))
    return user / "lm-run"


@case("generate: --max-new-tokens past the model's context")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["generate", lm_run(user, kit), "--prompt", "the new computer", "--max-new-tokens", "300"], [
        "--max-new-tokens 300: with the prompt's 3 tokens that is over the model's context of 256 tokens",
        "Give --max-new-tokens at most 253"]


@case("generate: a prompt longer than the model's context")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["generate", lm_run(user, kit), "--prompt", "word " * 300], [
        "--prompt: 300 tokens; the model reads at most 256 (its context)", "Shorten the prompt"]


@case("generate: a seed past what torch takes")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["generate", copy(kit.text_run, user, "run"), "--prompt", "hi", "--seed", str(2**70)], [
        "--seed", "18446744073709551615"]


@case("plan: a task it cannot score")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "scores.csv", "text,y\n" + "".join(f"text {n},{n}\n" for n in range(12)))
    return ["plan", "--task", "text-regression", "--model", f"hf:{kit.bert}", "--data", path, "--out",
            user / "plan"], ["--task text-regression", "classification tasks only"]


@case("regression: a target that is no number")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "scores.csv", "text,y\n" + "".join(f"text {n},{n}\n" for n in range(12)) + "odd,high\n")
    return ["train", "--task", "text-regression", "--model", f"hf:{kit.bert}", "--data", path, "--set",
            "data.label_column=y", "--out", user / "run"], [f"{path}:14", "'high', not a number"]


@case("regression: class folders")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["train", "--task", "text-regression", "--model", f"hf:{kit.bert}", "--data", copy(kit.text, user, "news"),
            "--out", user / "run"], ["class folders hold classes", "CSV or JSONL"]


@case("regression: an infinite target")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "scores.jsonl", "".join(f'{{"text": "t {n}", "y": {n}}}\n' for n in range(12))
                 + '{"text": "odd", "y": "inf"}\n')
    return ["train", "--task", "text-regression", "--model", f"hf:{kit.bert}", "--data", path, "--set",
            "data.label_column=y", "--out", user / "run"], [f"{path}:13", "finite number"]


@case("multi-label: a label given twice in a row")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "tags.csv", "text,tags\n" + "".join(f"text {n},a|b\n" for n in range(12)) + "odd,a|a\n")
    return ["train", "--task", "text-multilabel", "--model", f"hf:{kit.bert}", "--data", path, "--set",
            "data.label_column=tags", "--out", user / "run"], [f"{path}:14", "label 'a' given twice"]


@case("multi-label: a label that is no string")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    path = table(user, "tags.jsonl", "".join(f'{{"text": "t {n}", "tags": ["a"]}}\n' for n in range(12))
                 + '{"text": "odd", "tags": ["a", 5]}\n')
    return ["train", "--task", "text-multilabel", "--model", f"hf:{kit.bert}", "--data", path, "--set",
            "data.label_column=tags", "--out", user / "run"], [f"{path}:13", "no string"]


# issue 21: predictions and evaluate columns


@case("evaluate: a CSV without the run's label column names --label-column")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    table = user / "new.csv"
    table.write_text("text,topic\nShares fell sharply on Monday,business\n")
    return ["evaluate", copy(kit.text_run, user, "run"), "--data", table], [
        f"{table}:2: no column 'label'", "Columns: text, topic. Set --label-column."]


@case("evaluate: --input-column that the CSV does not have names --input-column")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    table = user / "new.csv"
    table.write_text("text,label\nShares fell sharply on Monday,business\n")
    return ["evaluate", copy(kit.text_run, user, "run"), "--data", table, "--input-column", "body"], [
        f"{table}:2: no column 'body'", "Set --input-column."]


@case("predict: a device that is no device")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    return ["predict", copy(kit.text_run, user, "run"), "--text", "hello", "--device", "gpu0"], [
        "--device gpu0: not a device", "auto, cpu, cuda or cuda:N"]


@case("links: serve a run with a linked weights file")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = planted(user, kit, "model/model.safetensors", source=kit.text_run)
    return ["serve", run, "--port", "8765"], [str(run / "model" / "model.safetensors"), "symbolic link"]


@case("links: generate from a run with a linked config")
def _(user: Path, kit: Kit) -> tuple[list[Any], list[str]]:
    run = lm_run(user, kit)
    (user / "victim.txt").write_text("the user's own file\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(user / "victim.txt")
    return ["generate", run, "--prompt", "hi"], [str(run / "config.yaml"), "symbolic link"]


# --- the check ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the hash of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, kit: Kit, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    args, fragments = CASES[name](user, kit)
    before = snapshot(user)
    with helpers.time_limit(SECONDS.get(name, 0)):  # 0: no limit
        code, output = run_cli(*[str(a) for a in args])
    assert code == 2, output
    assert "Traceback" not in output
    message = " ".join(output.split())  # the console wraps long lines
    for fragment in fragments:
        assert " ".join(str(fragment).split()) in message, (fragment, output)
    assert snapshot(user) == before, "the command changed the user's files"
    assert not (user / "pwned").exists()


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, not only the in-process runner, exits 2 with a one-line message."""
    result = subprocess.run([sys.executable, "-m", "graftune.cli", "train", "--task", "text-classification",
                             "--model", "minilm-l6", "--data", str(tmp_path / "missing"), "--out",
                             str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "data not found" in result.stderr


def test_a_crafted_run_folder_runs_no_code(kit: Kit, tmp_path: Path) -> None:
    """A run folder whose model names module:os:system executes nothing without --trust-code."""
    run = copy(kit.text_run, tmp_path, "crafted")
    info = json.loads((run / "model" / "graftune.json").read_text())
    marker = tmp_path / "pwned"
    info.update(source="module:os:system", build_kwargs={"command": f"touch {marker}"}, surgery={})
    (run / "model" / "graftune.json").write_text(json.dumps(info))
    settings = (run / "config.yaml").read_text().replace(f"source: hf:{kit.bert}", "source: module:os:system")
    (run / "config.yaml").write_text(settings)
    for args in (["predict", run, "--text", "hello"], ["evaluate", run, "--data", kit.text],
                 ["export", run, "--format", "torchscript"], ["train", "--resume", run, "--epochs", "2"],
                 ["train", "--task", "text-classification", "--model", f"run:{run}", "--data", kit.text,
                  "--out", tmp_path / "child"]):
        code, output = run_cli(*[str(a) for a in args])
        assert code == 2 and "module:os:system" in output and "--trust-code" in output, output
        assert not marker.exists()


def test_a_sixteen_bit_image_folder_trains(tmp_path: Path) -> None:
    """16-bit greys, as scanners and microscopes write them, are read at their full range, not refused."""
    data = tmp_path / "deep"
    for label, level in (("dark", 8_000), ("light", 56_000)):
        (data / label).mkdir(parents=True)
        for n in range(6):
            grey = np.full((12, 12), level + 100 * n, dtype=np.uint16)
            Image.fromarray(grey).save(data / label / f"{n}.png")
    code, output = run_cli("train", "--task", "image-classification", "--model", "module:helpers:tiny_cnn",
                           "--data", data, "--set", "data.image_size=16", "--set", "data.augment=false",
                           "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run")
    assert code == 0, output
