#!/usr/bin/env bash
# Creates .venv (if missing) and installs glus-jax with its test references.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
stamp=.venv/.glus-jax-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/install.sh ]; then exit 0; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# The sam2 package (PyTorch reference for parity tests) asks for torchvision, which has no CPU
# build beside torch 2.13.0: install it without its dependencies; its modeling code imports fine.
.venv/bin/python -m pip install -q --no-deps "sam2==1.1.0"
touch "$stamp"
