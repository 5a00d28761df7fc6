"""Find the inference code nobody guarded, and say how much memory it wastes.

Roles: ``_watch`` sees module calls (the hook watcher, per-thread state), ``_graph``
accounts for what a forward saved and whether a backward used it, ``_findings`` holds the
public records, ``_report`` renders them, ``_runner`` runs a program under a scan
(``gradguard scan``).
"""

from ._findings import DELIBERATE, KINDS, ScanFinding, ScanFindings
from ._watch import scan

__all__ = ["DELIBERATE", "KINDS", "ScanFinding", "ScanFindings", "scan"]
