"""Evaluation: J / F metrics (metrics.py), benchmark evaluators (evaluators.py), server submission
zips (submission.py) and the `glus-jax evaluate` command (cli.py)."""

from glus_jax.eval.evaluators import EvalResult, evaluate
from glus_jax.eval.metrics import f_measure, jaccard, jaccard_and_f
from glus_jax.eval.submission import package_submission

__all__ = ["EvalResult", "evaluate", "f_measure", "jaccard", "jaccard_and_f", "package_submission"]
