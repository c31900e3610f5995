"""The embedded world model (glus_jax/assets/tiny_world) through `glus-jax demo` on its held-out video.

Floor: the model shipped now was trained for 2,100 steps with `configs/synthetic.py` and has only begun
to ground the expressions (README "The synthetic world"): it scores J&F 0.230 on this video and 0.252 on
50 held-out videos, below the best expression-blind baseline. The floor (0.15) guards the path from the
packaged files to the masks (tokenizer, config, weights, preprocessing): an unreadable or mismatched model gives
blank or random masks and J&F near 0. Raise it with the model.
"""

from __future__ import annotations

import io

from glus_jax import demo

FLOOR = 0.15


def test_embedded_model_scores_above_its_floor(tmp_path):
    assert (demo.embedded_model_dir() / "config.yaml").is_file(), "the embedded model is not packaged"
    out = io.StringIO()
    result = demo.run_demo(None, tmp_path / "run", stream=out)
    assert out.getvalue().strip().splitlines()[-1] == f"J&F: {result.jf:.4f}"
    assert result.jf >= FLOOR, out.getvalue()
