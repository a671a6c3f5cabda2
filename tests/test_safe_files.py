"""A run folder someone sent can hold links planted where graftune writes, reads or deletes: nothing outside the
folder is ever touched through them, and nothing of the user's inside it is deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graftune.checkpoint import Checkpoints
from graftune.errors import UserError
from graftune.rundir import RunDir
from graftune.safe_files import Confined


def outside_file(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("the user's own file\n")
    return victim


def new_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.adopt(run.stage(overwrite=False))
    return run


def test_a_planted_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    victim, run = outside_file(tmp_path), new_run(tmp_path)
    for name in (".report.html.tmp", ".metrics.jsonl.tmp", ".results.json.tmp"):
        (run.path / name).symlink_to(victim)
    run.write_text(run.report, "<html></html>")
    run.write_json(run.results, {"test": {}})
    run.write_text(run.metrics, "")
    assert victim.read_text() == "the user's own file\n"
    assert run.results.is_file() and not run.results.is_symlink()


def test_a_link_is_refused_by_name_before_any_command_works(tmp_path: Path) -> None:
    victim, run = outside_file(tmp_path), new_run(tmp_path)
    (run.path / "plots").mkdir()
    (run.path / "plots" / "learning_curves.png").symlink_to(victim)
    with pytest.raises(UserError, match=r"plots/learning_curves\.png: a symbolic link \(to .*victim\.txt\)"):
        run.require_resumable()
    with pytest.raises(UserError, match="symbolic link"):
        run.files.read_bytes(run.plots / "learning_curves.png")
    with pytest.raises(UserError, match="symbolic link"):
        run.files.write_text(run.plots / "learning_curves.png", "x")
    assert victim.read_text() == "the user's own file\n"


def test_paths_outside_the_folder_are_refused(tmp_path: Path) -> None:
    files = Confined(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="outside the run folder"):
        files.write_text(tmp_path / "elsewhere.txt", "x")
    with pytest.raises(UserError, match=r"'\.\.'"):
        files.write_text(tmp_path / "run" / ".." / "elsewhere.txt", "x")
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_linked_checkpoints_folder_gets_no_checkpoint_and_loses_nothing(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "epoch-0001").mkdir(parents=True)
    (elsewhere / "epoch-0001" / "thesis.tex").write_text("years of work")
    (elsewhere / ".epoch-0002.tmp").mkdir()
    run.checkpoints.symlink_to(elsewhere)
    store = Checkpoints(run.checkpoints, run.metrics, run.files)
    with pytest.raises(UserError, match="symbolic link"):
        store.tidy(keep="epoch-0003")
    assert (elsewhere / "epoch-0001" / "thesis.tex").read_text() == "years of work"
    assert (elsewhere / ".epoch-0002.tmp").is_dir()


def test_tidying_spares_a_users_folder_named_like_a_checkpoint(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    store = Checkpoints(run.checkpoints, run.metrics, run.files)
    ours = run.files.temporary_folder(run.checkpoints, "epoch-0004")  # left by a kill, recorded as graftune's
    (ours / "model.safetensors").write_bytes(b"weights")
    mine = run.checkpoints / "epoch-0099"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    store.tidy(keep="epoch-0005")
    assert not ours.exists()
    assert (mine / "notes.txt").read_text() == "mine"


def test_overwrite_lists_the_users_files_at_every_depth(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    run.write_bytes(run.plots / "learning_curves.png", b"png")
    assert run.foreign_files() == []
    (run.plots / "notes.txt").write_text("mine")
    (run.path / "exports" / "onnx" / "tokenizer").mkdir(parents=True)
    (run.path / "exports" / "onnx" / "export.json").write_text(json.dumps({"files": ["model.onnx", "tokenizer/v"]}))
    (run.path / "exports" / "onnx" / "model.onnx").write_bytes(b"onnx")
    (run.path / "exports" / "onnx" / "tokenizer" / "v").write_text("vocab")
    (run.path / "exports" / "onnx" / "tokenizer" / "mine.png").write_bytes(b"mine")
    assert run.foreign_files() == ["exports/onnx/tokenizer/mine.png", "plots/notes.txt"]
    with pytest.raises(UserError, match=r"holds files graftune did not write \(exports/onnx/tokenizer/mine\.png, "
                                        r"plots/notes\.txt\)"):
        run.stage(overwrite=True)
    assert (run.plots / "notes.txt").read_text() == "mine"


def test_a_users_folder_named_like_the_staging_folder_survives(tmp_path: Path) -> None:
    mine = tmp_path / ".run.graftune-new"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    target = RunDir(tmp_path / "run")
    target.adopt(target.stage(overwrite=False))
    assert (mine / "keep.txt").read_text() == "mine" and target.is_run()


def test_replacing_a_folder_keeps_what_the_manifest_does_not_name(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    staged = run.files.temporary_folder(run.path, "model")
    (staged / "model.safetensors").write_bytes(b"one")
    run.files.replace_folder(staged, run.model)
    assert run.foreign_files() == []
    staged = run.files.temporary_folder(run.path, "model")
    (staged / "model.safetensors").write_bytes(b"two")
    run.files.replace_folder(staged, run.model)
    assert (run.model / "model.safetensors").read_bytes() == b"two" and run.foreign_files() == []
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_relative_folder_takes_absolute_paths_inside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out runs/x` is relative, the temporary folders Python makes may be absolute (3.12's mkdtemp): the
    manifest records both the same way."""
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs/x")
    run.adopt(run.stage(overwrite=False))
    folder = run.files.temporary_folder(tmp_path / "runs" / "x", "model")  # absolute
    (folder / "w.bin").write_bytes(b"w")
    run.files.replace_folder(folder, run.model)
    run.write_text(run.config, "task: x\n")
    assert run.foreign_files() == [] and (run.model / "w.bin").read_bytes() == b"w"
