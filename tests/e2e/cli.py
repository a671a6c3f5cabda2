"""Run the real `graftune` CLI in-process and return exit code and output."""

from __future__ import annotations

from typer.testing import CliRunner

from graftune.cli import app


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output
