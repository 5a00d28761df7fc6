"""Run the command line: ``python -m gradguard audit ...``."""

from gradguard._cli import main

raise SystemExit(main())
