"""The run report (RUN/report.html) and TensorBoard logging, on tiny runs: a CNN on colour images (gradual
unfreezing, logged to TensorBoard), a BERT on texts that carry HTML, and a Llama on prompt/completion pairs.

The numbers on the page are checked against the run's own files and against hand computations: the
confusion matrix sums to the test split, the ECE is recomputed with plain loops, the worst examples are
misclassified and the most confident mistakes, the per-example test predictions are what `predict` gives
for the same file. Headless Chromium renders each page without console errors and shows every figure.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import helpers
import pytest
from rich.console import Console

import graftune
from graftune.calibration import reliability
from graftune.config import load_config
from graftune.errors import UserError
from graftune.report import write_report
from tests.e2e.cli import run_cli

QUIET = Console(quiet=True)
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"  # in every text and one label: shown, never run


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    images = helpers.write_colour_folders(root / "images", per_class=10)
    graftune.train({"task": "image-classification", "model": {"source": "module:helpers:tiny_cnn"},
                    "data": {"train": str(images), "image_size": 16, "augment": False}, "freeze": {"body": 2},
                    "strategy": {"name": "gradual", "unfreeze_every": 1},
                    "train": {"epochs": 3, "batch_size": 8, "progress": False, "log_with": "tensorboard"}},
                   root / "run", console=QUIET)
    return root / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    pool = ["match", "goal", "team", "shares", "price", "bank", "rain", "cloud", "wind"]
    draw = random.Random(0)  # the labels say nothing about the words: the test split will hold mistakes
    for label in ("sport", "markets", "a<b>&c"):
        for n in range(10):
            words = " ".join(draw.choice(pool) for _ in range(3 + 2 * n))
            helpers.write_text(root / "texts" / label / f"{n}.txt", f"{words} {HOSTILE}")
    bert = helpers.write_tiny_bert(root / "bert", mean_pooling=True)
    graftune.train({"task": "text-classification", "model": {"source": f"hf:{bert}"},
                    "data": {"train": str(root / "texts"), "max_length": 48}, "freeze": {"body": "all"},
                    "train": {"epochs": 1, "progress": False}}, root / "run", console=QUIET)
    return root / "run"


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    llama = helpers.write_tiny_llama(root / "llama")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"<i>capital</i> of country {i}", "completion": f"city {i % 3}"})
                             + "\n" for i in range(24)))
    graftune.train({"task": "causal-lm", "model": {"source": f"hf:{llama}"},
                    "data": {"train": str(pairs), "block_size": 64}, "strategy": {"name": "full"},
                    "optim": {"lr": 1e-2}, "train": {"epochs": 2, "batch_size": 4, "progress": False},
                    "generation": {"samples": 2, "max_new_tokens": 4}}, root / "run", console=QUIET)
    return root / "run"


# --- reading the page back ----------------------------------------------------------------------------------


class Page(HTMLParser):
    """The page as data: per section id, its text and its tables (rows of cell texts), and every tag seen."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self.tags: list[str] = []
        self.section: str | None = None
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "section":
            self.section = dict(attrs)["id"]
            self.sections[self.section] = {"text": "", "tables": []}
        elif self.section and tag == "table":
            self.sections[self.section]["tables"].append([])
        elif self.section and tag == "tr":
            self.sections[self.section]["tables"][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.section:
            self.sections[self.section]["tables"][-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.section:
            self.sections[self.section]["text"] += data
        if self.cell is not None:
            self.cell.append(data)


def page_of(run: Path) -> Page:
    return Page((run / "report.html").read_text(encoding="utf-8"))


def predictions(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]


def hand_ece(rows: list[dict[str, Any]], bins: int = 10) -> float:
    """ECE with plain loops: bin b holds confidences in (b/bins, (b+1)/bins] (0 joins the first)."""
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [r for r in rows if (low < r["confidence"] <= high) or (b == 0 and r["confidence"] == 0)]
        if inside:
            accuracy = sum(r["predicted"] == r["label"] for r in inside) / len(inside)
            confidence = sum(r["confidence"] for r in inside) / len(inside)
            total += len(inside) / len(rows) * abs(accuracy - confidence)
    return total


# --- calibration ------------------------------------------------------------------------------------------


def test_ece_of_a_hand_computed_case() -> None:
    # bins: 0.05 -> (0, .1] wrong; 0.15 -> (.1, .2] right; 0.55 -> (.5, .6] right; 0.95 twice -> (.9, 1] one right
    result = reliability([0.05, 0.15, 0.55, 0.95, 0.95], [0, 1, 1, 1, 0])
    assert result.ece == pytest.approx((0.05 + 0.85 + 0.45 + 2 * 0.45) / 5)
    assert result.counts == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert result.accuracy[9] == 0.5 and result.confidence[9] == pytest.approx(0.95)
    assert math.isnan(result.accuracy[2])


def test_bin_edges_are_closed_on_the_right() -> None:
    assert reliability([0.0, 0.1, 0.1000001, 1.0], [1, 1, 1, 1]).counts == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert reliability([0.9, 0.9], [1, 1]).ece == pytest.approx(0.1)  # right more often than it says


# --- a classifier's report --------------------------------------------------------------------------------


def test_the_image_report_holds_every_section_with_the_runs_numbers(image_run: Path) -> None:
    page = page_of(image_run)
    assert {"summary", "curves", "stages", "confusion", "per-class", "calibration", "worst", "results",
            "config"} <= set(page.sections)
    splits = json.loads((image_run / "data_splits.json").read_text())
    results = json.loads((image_run / "results.json").read_text())
    matrix_table = page.sections["confusion"]["tables"][0]
    assert matrix_table[-1][0] == "all" and int(matrix_table[-1][-1]) == splits["test"]["count"]
    labels = results["test"]["labels"]
    shown = [[int(cell) for cell in row[1:-1]] for row in matrix_table[1:-1]]
    assert shown == results["test"]["confusion_matrix"] and [row[0] for row in matrix_table[1:-1]] == labels
    per_class = {row[0]: row for row in page.sections["per-class"]["tables"][1][1:]}
    for label, scores in results["test"]["per_class"].items():
        assert float(per_class[label][1]) == pytest.approx(scores["precision"], abs=1e-4)
        assert int(per_class[label][4]) == scores["support"]
    rows = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    curve_table = page.sections["curves"]["tables"][0]
    assert [int(row[0]) for row in curve_table[1:]] == [1, 2, 3]
    assert [float(row[2]) for row in curve_table[1:]] == pytest.approx([r["train_loss"] for r in rows], rel=1e-3)


def test_the_stage_timeline_says_what_was_frozen_when(image_run: Path) -> None:
    groups = json.loads((image_run / "strategy.json").read_text())["groups"]
    rows = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    plan, timeline = page_of(image_run).sections["stages"]["tables"]
    assert [row[0] for row in plan[1:]] == [r["stage"] for r in rows] == ["head", "top-1", "all"]
    for shown, row in zip(timeline[1:], rows, strict=True):  # one stage per epoch in this run
        frozen = [g for g in groups if g not in row["trainable_groups"]]
        assert shown[2] == row["stage"] and shown[3] == f"{len(row['trainable_groups'])} of {len(groups)}"
        assert shown[5] == (", ".join(frozen) or "none") and int(shown[4]) == row["trainable_params"]
    assert timeline[1][5] == ", ".join(groups) and timeline[3][5] == ", ".join(groups[:2])  # freeze.body: 2


@pytest.mark.parametrize("name", ["image_run", "text_run"])
def test_test_predictions_are_in_split_order_and_match_predict(name: str, request: pytest.FixtureRequest) -> None:
    """Text batches are sorted by length, so a row taken in loader order would name the wrong example."""
    run: Path = request.getfixturevalue(name)
    rows = predictions(run)
    splits = json.loads((run / "data_splits.json").read_text())
    assert [r["where"] for r in rows] == splits["test"]["items"]
    model = graftune.load(run, trust_code=True)
    again = model.predict([(r["where"], r["input"]) for r in rows])
    for row, fresh in zip(rows, again, strict=True):
        for label, p in row["probabilities"].items():
            assert p == pytest.approx(fresh["probabilities"][label], abs=1e-5)
        top = max(row["probabilities"].values())  # (rounded to 6 places: near-ties of a tiny model may tie)
        assert row["probabilities"][row["predicted"]] == top and row["confidence"] == top


def test_the_ece_on_the_page_is_the_hand_computed_one(image_run: Path) -> None:
    text = " ".join(page_of(image_run).sections["calibration"]["text"].split())
    found = re.search(r"Expected calibration error \(ECE, 10 equal-width bins [^)]*\): (\d\.\d{4})", text)
    assert found, text
    shown = float(found.group(1))
    assert shown == pytest.approx(hand_ece(predictions(image_run)), abs=5e-5)


def test_the_worst_examples_are_the_most_confident_mistakes(text_run: Path) -> None:
    rows = predictions(text_run)
    mistakes = sorted((r for r in rows if r["predicted"] != r["label"]), key=lambda r: -r["confidence"])
    assert mistakes, "labels that do not follow from the texts cannot all be right"
    table = page_of(text_run).sections["worst"]["tables"][0]
    shown = table[1:]
    assert len(shown) == min(8, len(mistakes))
    for cells, mistake in zip(shown, mistakes, strict=False):
        assert cells[1] != cells[2]  # true != predicted
        assert cells[1] == mistake["label"] and cells[2] == mistake["predicted"]
        assert float(cells[3]) == pytest.approx(mistake["confidence"], abs=1e-3)
        assert mistake["where"] in cells[0]
    assert [float(c[3]) for c in shown] == sorted((float(c[3]) for c in shown), reverse=True)


def test_user_text_is_escaped(text_run: Path) -> None:
    html = (text_run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html and "<b>bold" not in html and "a<b>&c" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "a&lt;b&gt;&amp;c" in html  # the label, in the tables
    page = Page(html)
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "nav", "ul", "li",
                              "a", "section", "table", "thead", "tbody", "tr", "th", "td", "img", "pre", "br", "span"}
    assert HOSTILE in page.sections["worst"]["text"]  # shown as the text it is


def test_an_image_mistake_is_a_thumbnail(image_run: Path) -> None:
    html = (image_run / "report.html").read_text()
    worst = html.split('id="worst"')[1]
    if any(r["predicted"] != r["label"] for r in predictions(image_run)):
        assert 'class="thumb"' in worst and "data:image/png;base64," in worst


def test_a_received_runs_report_reads_no_file_its_rows_name_unless_asked(image_run: Path, tmp_path: Path) -> None:
    """Prediction rows of a folder someone sent may name any file of the user's: `graftune report` embeds none of
    them without --inputs, so the page it writes (and is passed on) holds nothing from outside the run."""
    run = tmp_path / "received"
    shutil.copytree(image_run, run)
    secret = helpers.write_png(tmp_path / "private" / "secret.png", size=(40, 20))
    rows = [{**row, "input": str(secret), "predicted": row["label"] + "x" if row["predicted"] == row["label"]
             else row["predicted"]} for row in predictions(image_run)]
    (run / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, output = run_cli("report", str(run))
    assert code == 0, output
    worst = (run / "report.html").read_text().split('id="worst"')[1]
    assert 'class="thumb"' not in worst and str(secret) in worst  # named, not read
    code, output = run_cli("report", str(run), "--inputs")
    assert code == 0, output
    assert 'class="thumb"' in (run / "report.html").read_text().split('id="worst"')[1]


@pytest.mark.parametrize("task", ["image-classification", "video-classification"])
def test_a_file_example_is_a_thumbnail_or_a_note_when_gone(task: str, tmp_path: Path) -> None:
    """Images show themselves, clips their middle frame; a file moved since the run is named, not an error."""
    from graftune.data.motion_clips import write_motion_clips
    from graftune.tasks import get_task

    if task == "image-classification":
        file = helpers.write_png(tmp_path / "red.png", size=(40, 20))
    else:
        write_motion_clips(tmp_path / "clips", per_class=1, frames=6, size=32, classes=("grow",))
        file = next((tmp_path / "clips").rglob("*.mp4"))
    settings = load_config(None, base={"task": task, "model": {"source": "efficientnet-lite0"},
                                       "data": {"train": str(tmp_path)}})
    cell = get_task(task)(settings, {"labels": ["a", "b"]}).example_cell
    shown = cell({"input": str(file), "where": f"{file} <x>"})
    thumbnail = re.search(r'<img class="thumb" alt="[^"]*" src="data:image/png;base64,([^"]+)">', shown)
    assert thumbnail and "&lt;x&gt;" in shown and "<x>" not in shown
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(thumbnail.group(1))))
    assert max(image.size) <= 96 and image.getpixel((0, 0)) != (0, 0, 0, 0)
    gone = cell({"input": str(tmp_path / "moved.png"), "where": "moved.png"})
    assert "missing or unreadable" in gone and "<img" not in gone


# --- a language model's report ----------------------------------------------------------------------------


def test_the_lm_report_shows_perplexity_and_samples(lm_run: Path) -> None:
    results = json.loads((lm_run / "results.json").read_text())
    page = page_of(lm_run)
    table = {row[0]: row[1:] for row in page.sections["perplexity"]["tables"][0][1:]}
    assert float(table["perplexity"][0]) == pytest.approx(results["before"]["perplexity"], rel=1e-3)
    assert float(table["perplexity"][1]) == pytest.approx(results["test"]["perplexity"], rel=1e-3)
    assert float(table["rougeL"][1]) == pytest.approx(results["test"]["rouge"]["rougeL"], rel=1e-3)
    samples = page.sections["samples"]["tables"][0][1:]
    assert len(samples) == len(results["test"]["samples"]) == 2
    for cells, sample, before in zip(samples, results["test"]["samples"], results["before"]["samples"], strict=True):
        assert cells == [" ".join(sample["prompt"].split()), " ".join(before["generated"].split()),
                         " ".join(sample["generated"].split())]
    assert "<i>capital" not in (lm_run / "report.html").read_text()
    assert not (lm_run / "test_predictions.jsonl").exists()


# --- rebuilding, and a run that has not finished ----------------------------------------------------------


def test_graftune_report_rebuilds_the_page(image_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    (run / "report.html").unlink()
    code, output = run_cli("report", str(run))
    assert code == 0, output
    assert set(page_of(run).sections) == set(page_of(image_run).sections)
    (run / "results.json").unlink()
    write_report(run)
    page = page_of(run)
    assert "has not finished" in page.sections["test"]["text"] and "confusion" not in page.sections


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a graftune run"):
        write_report(tmp_path)


# --- TensorBoard ------------------------------------------------------------------------------------------


def test_tensorboard_gets_every_epochs_metrics_and_rates(image_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = image_run / "logs" / image_run.name
    assert list(logs.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logs))
    events.Reload()
    rows = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("lr/head")] == pytest.approx([r["lr"]["head"] for r in rows], rel=1e-6)
    last = rows[-1]["lr"]  # groups unfrozen later appear from their first epoch on
    assert {f"lr/{name}" for name in last} <= set(events.Tags()["scalars"])


def test_log_with_takes_a_name_a_list_or_none_and_refuses_unknown_trackers() -> None:
    base = {"task": "text-classification", "model": {"source": "minilm-l6"}, "data": {"train": "news"}}

    def log_with(value: str) -> list[str]:
        return load_config(None, [f"train.log_with={value}"], base=base).train.log_with

    assert log_with("tensorboard") == ["tensorboard"] and log_with("none") == []
    assert log_with("tensorboard,mlflow") == log_with("[tensorboard, mlflow]") == ["tensorboard", "mlflow"]
    with pytest.raises(UserError, match=r"'train.log_with'.*unknown tracker 'tensorbord'. Did you mean 'tensorboard'"):
        log_with("tensorbord")


# --- the browser ------------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Any:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; "
                    "./install.sh --dev does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install "
                                                                 "'graftune[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system chromedriver by path: Selenium Manager, which would download one, never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def problems(browser: Any, page: Path) -> list[str]:
    """What is wrong with `page` as Chromium renders it: console errors and warnings, figures that did not load
    or take no space, sections that take none."""
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(page.as_uri())
    found = [f"console {e['level']}: {e['message']}" for e in browser.get_log("browser")
             if e["level"] in ("SEVERE", "WARNING")]
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, "
        "i.getBoundingClientRect().width, i.getBoundingClientRect().height]);")
    found += [f"figure {alt!r} not shown" for alt, complete, natural, width, height in images
              if not (complete and natural > 0 and width > 0 and height > 0)]
    sections = browser.execute_script("return Array.from(document.querySelectorAll('section')).map("
                                      "s => [s.id, s.getBoundingClientRect().height]);")
    found += [f"section {name} takes no space" for name, height in sections if height <= 0]
    return found if images and sections else [*found, "no figures or no sections"]


@pytest.mark.parametrize("name", ["image_run", "text_run", "lm_run"])
def test_the_report_renders_in_chromium(name: str, request: pytest.FixtureRequest, browser: Any) -> None:
    run: Path = request.getfixturevalue(name)
    assert problems(browser, run / "report.html") == []
    assert browser.title == f"graftune run {run.name}"


def test_the_browser_check_sees_a_broken_page(browser: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><section id="a"><h2>a</h2>'
                      '<img alt="damaged" src="data:image/png;base64,AAAA"></section>'
                      '<script>console.error("boom")</script></body></html>')
    found = problems(browser, broken)
    assert any("boom" in line for line in found) and "figure 'damaged' not shown" in found
