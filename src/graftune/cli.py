"""The `graftune` command: train, tune, evaluate, predict, export, report, demo. One small function per command."""

from __future__ import annotations

import errno
import functools
import json
import os
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from graftune.errors import InputWarning, UserError
from graftune.generation import MAX_SEED, MIN_TEMPERATURE, check_generation

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pre-trained neural networks for a new task.")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# A file or folder the user named cannot be written or read: their problem to fix, not a graftune bug.
PATH_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG}
DEVICE_HELP = "where the model runs: auto (the GPU when there is one), cpu, cuda or cuda:N"
TRUST_HELP = "import Python code that the run folder names (a module: model); only for folders you trust"


def user_errors(command: F) -> F:
    """Print a UserError (or an unwritable path) in one or two lines and exit with status 2, never a
    traceback; print data warnings as one `warning:` line each."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", InputWarning)
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except UserError as err:
                _print_error(str(err))
            except OSError as err:
                if err.errno not in PATH_ERRORS:
                    raise
                _print_error(_path_error(err, kwargs))
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def _path_error(err: OSError, options: dict[str, Any]) -> str:
    """An unwritable path in words. A failed write() names no file (a full disk mid-write), so the folder the
    command writes into (--out, --resume, RUN) stands for it."""
    if err.filename:
        return f"{err.filename}: {err.strerror}. Check the path, its permissions and the free space."
    folder = next((options[name] for name in ("out", "resume", "run") if options.get(name) is not None), None)
    if folder is None:
        return f"{err.strerror}. Check the permissions and the free space of the folders this command writes."
    return (f"{folder}: {err.strerror} while writing into it. Free space or fix the permissions there, then run the "
            "command again (an interrupted training run continues with: graftune train --resume RUN).")


def _print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def flags_to_overrides(task: str | None, model: str | None, data: list[str], freeze: str | None,
                       epochs: int | None, lr: float | None, batch_size: int | None, seed: int | None,
                       strategy: str | None = None, retain: str | None = None, ewc: float | None = None,
                       l2sp: float | None = None) -> list[str]:
    """Turn the flag form of `train` into the same `key=value` overrides the config form uses."""
    overrides = [f"task={task}"] if task else []
    if model:
        overrides.append(f"model.source={model}")
    given: dict[str, str] = {}
    for item in data:
        name, sep, path = item.partition("=")
        if sep and name not in ("train", "val", "test"):
            raise UserError(f"--data {item}: expected PATH, train=PATH, val=PATH or test=PATH.")
        split, path = (name, path) if sep else ("train", item)
        if split in given:
            raise UserError(f"--data: the {split} data is given twice ({given[split]} and {path}). Give each split "
                            "once: --data PATH --data val=PATH --data test=PATH.")
        given[split] = path
        overrides.append(f"data.{split}={path}")
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
    resume: Annotated[Path | None, typer.Option(help="continue an interrupted run (with --epochs: longer)")] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
    accept_changed_data: Annotated[bool, typer.Option(
        "--accept-changed-data", help="with --resume: continue on the recorded split although data files changed "
                                      "(missing ones dropped)")] = False,
) -> None:
    """Fine-tune a pre-trained model; everything lands in the run directory."""
    from graftune.api import train as train_api

    flags = {"CONFIG": config, "--out": out, "--task": task, "--model": model, "--data": data, "--freeze": freeze,
             "--strategy": strategy, "--retain": retain, "--ewc": ewc, "--l2sp": l2sp, "--lr": lr,
             "--batch-size": batch_size, "--seed": seed, "--overwrite": overwrite or None}
    target = resume if resume is not None else out
    try:
        if resume is not None:
            refused = [name for name, value in flags.items() if value is not None]
            if refused:
                raise UserError(f"--resume continues a run with its own settings: {', '.join(refused)} cannot be "
                                "given with it (--epochs and --set train.epochs=N can). Start a new run with --out.")
            overrides = [f"train.epochs={epochs}"] if epochs is not None else []
            train_api({}, out=resume, overrides=overrides + (set_ or []), resume=True, console=console,
                      trust_code=trust_code, accept_changed_data=accept_changed_data)
            return
        if out is None:
            raise UserError("--out RUN is required: the run directory to create.")
        if accept_changed_data:
            raise UserError("--accept-changed-data is for --resume, which checks the data against the recorded split.")
        overrides = flags_to_overrides(task, model, data or [], freeze, epochs, lr, batch_size, seed, strategy,
                                       retain, ewc, l2sp) + (set_ or [])
        if config is None and not overrides:
            raise UserError("give a CONFIG.yaml, or --task, --model and --data.")
        train_api(config if config is not None else {}, out=out, overrides=overrides, overwrite=overwrite,
                  console=console, trust_code=trust_code)
    except KeyboardInterrupt:
        _interrupted(target)


@app.command("lr-find")
@user_errors
def lr_find(
    config: Annotated[Path, typer.Argument(help="YAML config of the run to find a rate for")],
    out: Annotated[Path | None, typer.Option("--out", help="folder for lr_find.json and lr_find.png")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: a.b=value")] = None,
    start: Annotated[float, typer.Option(help="first value of optim.lr tested")] = 1e-7,
    end: Annotated[float, typer.Option(help="last value of optim.lr tested")] = 10.0,
    steps: Annotated[int, typer.Option(help="optimizer steps (the training batches cycle if an epoch is "
                                            "shorter); the test stops early when the loss diverges")] = 100,
    overwrite: Annotated[bool, typer.Option(help="replace lr_find.json and lr_find.png in a non-empty --out")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
) -> None:
    """Learning-rate range test: the loss of the stage that will train at rising rates, and the rate picked.

    The rate rises exponentially from --start to --end; the pick follows fastai's valley rule.

    Writes lr_find.json and lr_find.png into --out."""
    from graftune.api import range_test
    from graftune.lr_find import RangeTest

    if out is None:
        raise UserError("--out DIR is required: the folder for lr_find.json and lr_find.png.")
    test = RangeTest(start, end, steps)  # refuses a range it cannot test, before anything loads
    finding = range_test(config, out, set_ or [], test, overwrite, console, trust_code)
    others = ", ".join(f"{name} {rate:.3g}" for name, rate in finding.suggestions.items() if name != finding.rule)
    typer.echo(f"optim.lr {finding.lr:.3g} ({finding.rule}; {others}) on stage {finding.stage}, "
               f"{len(finding.rates)} steps in {finding.seconds:.0f} s; curve in {out / 'lr_find.png'}")
    given = "".join(f" --set {shlex.quote(item)}" for item in set_ or [])
    typer.echo(f"use it: graftune train {shlex.quote(str(config))}{given} --set optim.lr={finding.lr:.3g} --out RUN "
               "(or optim.lr: auto, which runs this test when a run starts)")


def _interrupted(run: Path | None) -> None:
    """Ctrl-C: say what is saved and how to go on, and exit 130 as shells expect."""
    from graftune.checkpoint import Checkpoints

    latest = None
    if run is not None and (run / ".graftune-run").is_file():
        try:
            latest = Checkpoints(run / "checkpoints", run / "metrics.jsonl").latest()
        except UserError:
            latest = None
    if latest is None:
        console.print("interrupted before the first epoch was checkpointed; nothing to resume.")
    else:
        epoch = int(latest.name.removeprefix("epoch-"))
        console.print(f"interrupted; epoch {epoch} is the last checkpointed one. Continue with: "
                      f"graftune train --resume {run}")
    raise typer.Exit(130)


@app.command()
@user_errors
def tune(
    config: Annotated[Path, typer.Argument(help="YAML config of the runs to tune")],
    trials: Annotated[int, typer.Option("--trials", help="finished (complete or pruned) trials the study should "
                                                         "reach; running again continues to that number")],
    out: Annotated[Path, typer.Option("--out", help="study directory: created, or continued")],
    space: Annotated[list[str] | None, typer.Option(
        "--space", help="KEY=SPEC to search, added to the defaults: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, "
                        "choice:A,B,...")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="search only these keys: KEY[,KEY...]")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="a setting of every trial: a.b=value")] = None,
    timeout: Annotated[float | None, typer.Option(help="start no trial after this many seconds")] = None,
) -> None:
    """Search hyperparameters with Optuna: each trial a run; the best config and a table of trials written."""
    from graftune.tune import tune as tune_api

    try:
        tune_api(config, out, trials, space=space, only=only, overrides=set_, timeout=timeout, console=console)
    except KeyboardInterrupt:
        options = [(name, value) for name, values in (("--space", space), ("--only", only), ("--set", set_))
                   for value in values or []] + ([("--timeout", f"{timeout:g}")] if timeout is not None else [])
        command = shlex.join(["graftune", "tune", str(config), "--trials", str(trials), "--out", str(out),
                              *(part for option in options for part in option)])
        console.print("interrupted; the finished trials are kept and the interrupted one runs again first. Continue "
                      f"with the same command: {command}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(130) from None


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Path, typer.Option(help="labelled data: class folders or CSV/JSONL")],
    input_column: Annotated[str | None, typer.Option("--input-column", help="a table's input column (default: the "
                                                                            "run's data.input_column)")] = None,
    label_column: Annotated[str | None, typer.Option("--label-column", help="a table's label column (default: the "
                                                                            "run's data.label_column)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print all metrics as JSON")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Score a fine-tuned model on new labelled data, on the run's precision: its test data gives results.json."""
    from graftune.api import load

    fine_tuned = load(run, trust_code=trust_code, device=device)
    metrics = fine_tuned.evaluate(fine_tuned.read_labelled(data, input_column, label_column))
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
    json_output: Annotated[bool, typer.Option("--json", help="JSON lines: the input, the decided label, the argmax, "
                                                             "the decision rule, all probabilities")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """The model's prediction for each input: for a classifier, the label and its probability."""
    from graftune.api import load

    fine_tuned = load(run, trust_code=trust_code, device=device)
    for result in fine_tuned.predict(fine_tuned.task.read_inputs(inputs or [], text or [])):
        typer.echo(json.dumps(result) if json_output else fine_tuned.task.format_prediction(result))


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="run directory")],
    format_: Annotated[str, typer.Option("--format", help="onnx, hf (Transformers / sentence-transformers folder) "
                                                          "or torchscript")],
    out: Annotated[Path | None, typer.Option("--out", help="folder to write (default RUN/exports/FORMAT)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an export graftune wrote in --out")] = False,
    tolerance: Annotated[float, typer.Option(help="largest difference from PyTorch allowed, times max(1, the "
                                                  "largest output)")] = 1e-4,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
) -> None:
    """Export the model for serving, checked against PyTorch on the run's test split; labels and preprocessing
    travel with it."""
    from graftune.api import export as export_api

    done = export_api(run, format_, out, overwrite=overwrite, trust_code=trust_code, tolerance=tolerance)
    typer.echo(done.check.line())
    typer.echo(f"{done.format} export written to {done.folder} ({done.exporter})")


@app.command()
@user_errors
def report(
    run: Annotated[Path, typer.Argument(help="run directory (finished or not)")],
    inputs: Annotated[bool, typer.Option("--inputs", help="show the worst test images and clips as thumbnails, read "
                                         "from the files the run's predictions name (wherever they lie: use it for "
                                         "your own runs, not for a run folder someone sent you)")] = False,
) -> None:
    """Write RUN/report.html again from the run folder: curves, stages and rates, the test (confusion matrix,
    calibration, worst examples; perplexity and samples), forgetting, results and config. Every run writes it.

    Only files inside the run folder are read, unless --inputs is given."""
    from graftune.report import write_report

    typer.echo(f"report written to {write_report(run, read_inputs=inputs)}")


@app.command()
@user_errors
def generate(
    run: Annotated[Path, typer.Argument(help="run directory of a causal-lm run")],
    prompt: Annotated[str, typer.Option("--prompt", help="the text to continue (a pairs run: the prompt)")],
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help=(
        "at most this many new tokens; with the prompt's within the model's context"))] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help=f"0: greedy; else at least {MIN_TEMPERATURE:g}")]
    = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0)] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED)] = None,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Generate text with a fine-tuned language model, streamed as it comes."""
    from graftune.api import load

    if not prompt.strip():
        raise UserError("--prompt: empty prompt.")
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:  # the scaled logits would overflow
        raise UserError(f"--temperature {temperature:g}: give 0 (greedy) or at least {MIN_TEMPERATURE:g}.")
    fine_tuned = load(run, trust_code=trust_code, device=device)
    task = fine_tuned.task
    room = task.generation_room(fine_tuned.model, fine_tuned.preprocess, prompt)
    if room is not None:  # said with the flags' names, before the task's own check says it with its options'
        check_generation(room, max_new_tokens or task.settings.generation.max_new_tokens, "--prompt",
                         "--max-new-tokens")
    options = {key: value for key, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature),
                                             ("top_p", top_p), ("seed", seed)) if value is not None}
    fine_tuned.task.generate(fine_tuned.model, fine_tuned.preprocess, prompt,
                             lambda text: typer.echo(text, nl=False), **options)
    typer.echo()


@app.command()
@user_errors
def serve(
    run: Annotated[Path, typer.Argument(help="run directory")],
    host: Annotated[str, typer.Option(help="address to listen on; 0.0.0.0 for every interface")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes, each with its own model")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="items per request and per model batch")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0,
                                               help="how long a batch waits for more requests")] = 5.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="largest request body (413 above)")] = 16.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help=(
        "seconds a client has to send its headers, and between two parts of its body (408 past it)"))] = 20.0,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_HELP)] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Serve a fine-tuned run over HTTP: POST /predict (or /generate for a language model), API docs at /docs."""
    from graftune.serve import serve as serve_run

    try:
        serve_run(run, host, port, workers, max_batch, max_wait_ms, max_body_mb, trust_code,
                  on_ready=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False),
                  request_timeout=request_timeout, device=device)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: the usual way to stop
        console.print("stopped.")


@app.command()
@user_errors
def plan(
    data: Annotated[str, typer.Option(help="the training data: class folders or CSV/JSONL")],
    model: Annotated[list[str], typer.Option(help="a candidate model (repeat to compare several)")],
    task: Annotated[str, typer.Option(help="image-classification, text-classification, video-classification")],
    out: Annotated[Path, typer.Option(help="folder for plan.json and plan.yaml")] = Path("plan"),
    sample: Annotated[int, typer.Option(min=2, help="training examples to score the candidates on, stratified")] = 1000,
    set_: Annotated[list[str] | None, typer.Option("--set", help="a config key for every candidate: a.b=value")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace plan.json and plan.yaml in --out")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="import the code a module: model names")] = False,
) -> None:
    """Before training: score candidate models on a sample of the data and recommend model, strategy, freezing
    and rate (data size x similarity); writes OUT/plan.json and a runnable OUT/plan.yaml."""
    from graftune.plan import make_plan, show_plan, write_plan
    from graftune.run import Permissions
    from graftune.settings import refuse_output_in_data

    refuse_output_in_data(out, {"--data": data})
    if not overwrite and any((out / name).exists() for name in ("plan.json", "plan.yaml")):
        raise UserError(f"--out {out}: it already holds a plan; give another folder or --overwrite.")
    result = make_plan(task, model, data, set_ or [], sample, console, Permissions(trust_code=trust_code))
    write_plan(result, out)
    show_plan(result, console)
    typer.echo(f"plan written to {out / 'plan.json'}; train it with: graftune train {out / 'plan.yaml'} --out RUN")


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
