"""Read gradguard's JSON-lines events and summarize them (``gradguard audit``).

Standard library only, plus orjson when it is installed; nothing here imports
torch, so the audit runs wherever the logs are.
"""

from gradguard._audit._reader import JSON_BACKEND, InputError, Progress, expand_inputs
from gradguard._audit._render import JSON_SCHEMA_VERSION, render, to_json_dict
from gradguard._audit._sketch import LogSketch
from gradguard._audit._summary import (
    FAIL_ON_CONDITIONS,
    GROUP_KEYS,
    Collector,
    Comparison,
    FailOnResult,
    GroupSummary,
    Stats,
    Summary,
    check_fail_on,
    compare,
    summarize,
)

__all__ = [
    "FAIL_ON_CONDITIONS",
    "GROUP_KEYS",
    "JSON_BACKEND",
    "JSON_SCHEMA_VERSION",
    "Collector",
    "Comparison",
    "FailOnResult",
    "GroupSummary",
    "InputError",
    "LogSketch",
    "Progress",
    "Stats",
    "Summary",
    "check_fail_on",
    "compare",
    "expand_inputs",
    "render",
    "summarize",
    "to_json_dict",
]
