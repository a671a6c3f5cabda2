"""The `graftune` command: train, evaluate, predict, demo. One small function per command."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from graftune.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pre-trained neural networks for a new task.")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print a UserError in one or two lines and exit with status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def flags_to_overrides(task: str | None, model: str | None, data: list[str], freeze: str | None,
                       epochs: int | None, lr: float | None, batch_size: int | None, seed: int | None,
                       strategy: str | None = None, retain: str | None = None, ewc: float | None = None,
                       l2sp: float | None = None) -> list[str]:
    """Turn the flag form of `train` into the same `key=value` overrides the config form uses."""
    overrides = [f"task={task}"] if task else []
    if model:
        overrides.append(f"model.source={model}")
    for item in data:
        name, sep, path = item.partition("=")
        if sep and name in ("train", "val", "test"):
            overrides.append(f"data.{name}={path}")
        elif sep:
            raise UserError(f"--data {item}: expected PATH, train=PATH, val=PATH or test=PATH.")
        else:
            overrides.append(f"data.train={item}")
    for key, value in (("freeze.body", freeze), ("train.epochs", epochs), ("optim.lr", lr),
                       ("train.batch_size", batch_size), ("train.seed", seed), ("strategy.name", strategy),
                       ("regularize.retain", retain), ("regularize.ewc", ewc), ("regularize.l2sp", l2sp)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (optional with --task/--model/--data)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory to create")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: a.b=value")] = None,
    task: Annotated[str | None, typer.Option(help="image-classification, text-classification, ...")] = None,
    model: Annotated[str | None, typer.Option(help="hf:, timm:, torchvision:, module:, run: or a preset")] = None,
    data: Annotated[list[str] | None, typer.Option(help="PATH, or val=PATH / test=PATH")] = None,
    freeze: Annotated[str | None, typer.Option(help="all | none | K | regex[,regex]")] = None,
    strategy: Annotated[str | None, typer.Option(help="linear-probe, partial, full, gradual, discriminative, "
                                                      "lp-ft, lora, bitfit, fastai, ulmfit (see `strategies`)")] = None,
    retain: Annotated[str | None, typer.Option(help="inputs of the original task, for --ewc")] = None,
    ewc: Annotated[float | None, typer.Option(help="EWC strength (needs --retain)")] = None,
    l2sp: Annotated[float | None, typer.Option(help="L2-SP strength toward the pre-trained weights")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run")] = None,
) -> None:
    """Fine-tune a pre-trained model; everything lands in the run directory."""
    from graftune.api import train as train_api

    if resume is not None:
        train_api({}, out=resume, resume=True, console=console)
        return
    if out is None:
        raise UserError("--out RUN is required: the run directory to create.")
    overrides = flags_to_overrides(task, model, data or [], freeze, epochs, lr, batch_size, seed, strategy, retain,
                                   ewc, l2sp) + (set_ or [])
    if config is None and not overrides:
        raise UserError("give a CONFIG.yaml, or --task, --model and --data.")
    train_api(config if config is not None else {}, out=out, overrides=overrides, overwrite=overwrite,
              console=console)


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Path, typer.Option(help="labelled data: class folders or CSV/JSONL")],
    input_column: Annotated[str | None, typer.Option("--input-column")] = None,
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    json_output: Annotated[bool, typer.Option("--json", help="print all metrics as JSON")] = False,
) -> None:
    """Score a fine-tuned model on new labelled data."""
    from graftune.api import load

    fine_tuned = load(run)
    metrics = fine_tuned.evaluate(fine_tuned.task.read_labelled(data, input_column, label_column))
    if json_output:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for line in [fine_tuned.task.summary(metrics), *fine_tuned.task.details(metrics)]:
        typer.echo(line)


@app.command()
@user_errors
def predict(
    run: Annotated[Path, typer.Argument(help="run directory")],
    inputs: Annotated[list[str] | None, typer.Argument(help="image or text files")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="a text to classify (repeatable)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON lines with all probabilities")] = False,
) -> None:
    """The model's prediction for each input: for a classifier, the label and its probability."""
    from graftune.api import load

    fine_tuned = load(run)
    for result in fine_tuned.predict(fine_tuned.task.read_inputs(inputs or [], text or [])):
        typer.echo(json.dumps(result) if json_output else fine_tuned.task.format_prediction(result))


@app.command()
def strategies() -> None:
    """The named fine-tuning strategies and when to use each."""
    from graftune.strategies import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        typer.echo(f"{name:<15} {text}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/demo"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing demo run")] = False,
) -> None:
    """Fine-tune minilm-l6 on real BBC News articles (a few minutes on 2 cores)."""
    from graftune.demo import run_demo

    result = run_demo(out, overwrite=overwrite, console=console)
    typer.echo(f"test accuracy {result.test['accuracy']:.4f} on {result.test['examples']} BBC News articles; "
               f"run in {result.dir}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
