"""Errors a user can cause and fix themselves.

The CLI prints a `UserError` in one or two lines and exits with status 2; anything else is a bug in
graftune and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal


class UserError(Exception):
    """A problem with the user's input: a config key, a data file, a model source, a run folder.

    The message names the file, line or key involved and says what to do.
    """


class MissingColumn(UserError):
    """A table without the column named for its inputs or labels. The message ends by saying where that name
    is set: a config key (data.label_column) by default; `set_by` words it for a command that takes it as a
    flag (`graftune evaluate --label-column`), where the config key would send the user to the wrong place."""

    def __init__(self, problem: str, role: Literal["input", "label"], setting: str) -> None:
        super().__init__(f"{problem} Set {setting}.")
        self.problem, self.role = problem, role

    def set_by(self, setting: str) -> MissingColumn:
        return MissingColumn(self.problem, self.role, setting)


class InputWarning(UserWarning):
    """Something the user gave was skipped or ignored (a file of another format, a setting the chosen
    strategy does not use, code that changed since a run); the run goes on.

    The CLI prints these as one `warning:` line each; Python users get them through `warnings`.
    """


def closest(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""
