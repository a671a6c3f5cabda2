"""Named points where the tests kill a run the way `kill -9` would, to prove that no instant loses work.

`GRAFTUNE_KILL_AT=POINT@EPOCH` (for example `checkpoint:renamed@2`) makes the process send itself
SIGKILL when it reaches POINT in that epoch: no handler, no cleanup, no flush. Unset, `reached` costs
a dictionary lookup. The points are listed in KILL_POINTS; tests/e2e/test_kill.py goes through them.
"""

from __future__ import annotations

import os
import signal

KILL_POINTS = (
    "train",                 # inside an epoch, after its first training batch
    "stage",                 # the next stage entered, its checkpoint not yet begun
    "checkpoint:begin",      # the temporary checkpoint folder made, nothing in it
    "checkpoint:written",    # the state written into the temporary folder, not yet renamed
    "checkpoint:renamed",    # the epoch's folder in place, the best weights not yet linked
    "checkpoint:best",       # the best weights linked, last.json not yet replaced
    "checkpoint:committed",  # last.json names the new epoch, metrics.jsonl not yet rewritten
    "checkpoint:metrics",    # metrics.jsonl rewritten, older epochs not yet removed
    "save:tested",           # training over and the test split scored, nothing saved
    "save:model",            # the model folder written, results.json not yet
)


def reached(point: str, epoch: int) -> None:
    """Kill this process now if the test asked for `point` in `epoch` (see the module docstring)."""
    if os.environ.get("GRAFTUNE_KILL_AT") == f"{point}@{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)
