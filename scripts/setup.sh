#!/usr/bin/env bash
# Set up dlnlab in ./.venv on a fresh machine: torch 2.13.0 (CPU build) first, then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
