"""`glus-jax evaluate`: score predicted masks on a benchmark split, or package a server submission.

  glus-jax evaluate --benchmark mevis --split valid_u --pred DIR --data-root ROOT [--out FILE] [--workers N]
  glus-jax evaluate --benchmark davis17 --protocol official --pred DIR --data-root ROOT
  glus-jax evaluate --benchmark mevis --split valid --pred DIR --data-root ROOT --package mevis_valid.zip

DIR holds `<video>/<exp_id>/<frame>.png`. The summary table goes first; the last three lines are
`J: x`, `F: x`, `J&F: x` (fractions). `--out FILE` writes
`{"J", "F", "J&F", "per_expression": {"<video>_<exp_id>": [J, F]}, ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from glus_jax.eval.evaluators import (
    BENCHMARKS,
    DEFAULT_SPLITS,
    SERVER_SPLITS,
    MissingPredictionWarning,
    PredictionError,
    evaluate,
)
from glus_jax.eval.readers import DataError
from glus_jax.eval.submission import SUBMISSION_BENCHMARKS, package_submission


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--split", default=None,
                        help="split name (default: "
                        + ", ".join(f"{b} {s}" for b, s in DEFAULT_SPLITS.items()) + ")")
    parser.add_argument("--pred", required=True, type=Path,
                        help="predictions: DIR/<video>/<exp_id>/<frame>.png")
    parser.add_argument("--data-root", required=True, type=Path,
                        help="DATASET_ROOT holding mevis/, DAVIS17/, ReVOS/, ReasonVOS/, Refer-YouTube-VOS/")
    parser.add_argument("--out", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--protocol", choices=("expression", "official"), default="expression",
                        help="davis17 only: per-expression (GLUS, Sa2VA) or official per-annotator protocol")
    parser.add_argument("--package", type=Path, default=None, metavar="ZIP",
                        help="server-scored splits (mevis valid, refytvos valid): check completeness and "
                             "write the submission zip instead of scoring")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    split = args.split or DEFAULT_SPLITS[args.benchmark]
    try:
        if args.package is not None:
            if args.benchmark not in SUBMISSION_BENCHMARKS:
                raise DataError(f"--package: no server submission format for {args.benchmark}; "
                                f"choose from {', '.join(SUBMISSION_BENCHMARKS)}")
            if args.split is None and (args.benchmark, "valid") in SERVER_SPLITS:
                split = "valid"
            path = package_submission(args.benchmark, args.pred, args.data_root, args.package, split,
                                      progress=not args.no_progress)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
            return 0
        extra = {"protocol": args.protocol} if args.benchmark == "davis17" else {}
        if args.benchmark != "davis17" and args.protocol != "expression":
            raise DataError("--protocol applies to --benchmark davis17 only")
        with warnings.catch_warnings():
            warnings.simplefilter("always", MissingPredictionWarning)
            warnings.showwarning = _show_warning
            result = evaluate(args.benchmark, args.pred, args.data_root, split, workers=args.workers,
                              progress=not args.no_progress, **extra)
    except (DataError, PredictionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".partial")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=1)
        os.replace(tmp, args.out)
    print(result.table())
    print(f"J: {result.j:.4f}")
    print(f"F: {result.f:.4f}")
    print(f"J&F: {result.jf:.4f}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
