"""Test-wide settings: float32 parity needs full-precision matmuls on every backend."""

import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
