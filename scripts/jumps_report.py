"""Kept for old notes: the rank-jump report is the installed command `dlnlab-report RUN`
(dlnlab/cli/report.py)."""
from dlnlab.cli.report import main

if __name__ == "__main__":
    main()
