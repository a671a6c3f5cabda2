"""Reading, checking, splitting and preprocessing the task's data."""
