"""`glus-jax demo` end to end on an untrained model of the world architecture and one short video."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from glus_jax import demo
from glus_jax.data import synthetic
from glus_jax.eval.readers import read_mask_png

# 8 frames at 64 x 64, one or two expressions: the whole run is dominated by compiling the pipeline.
WORLD = synthetic.WorldConfig(height=64, width=64, min_frames=8, max_frames=8, min_expressions=1, max_expressions=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from glus_jax.models.presets_synthetic import synthetic_world

    return demo.build_random_model(tmp_path_factory.mktemp("demo") / "model", config=synthetic_world(image_size=64))


def test_demo_end_to_end(tmp_path, model_dir):
    out = io.StringIO()
    result = demo.run_demo(model_dir, tmp_path / "run", world=WORLD, stream=out)
    lines = out.getvalue().strip().splitlines()
    assert re.fullmatch(r"J&F: (0|1)\.\d{4}", lines[-1]), lines[-1]
    assert float(lines[-1].split()[1]) == pytest.approx(result.jf, abs=5e-5)
    assert 0.0 <= result.jf <= 1.0

    # The generated video, one mask per frame and an overlay video per expression, the scores.
    video = synthetic.make_video(demo.DEMO_SEED, demo.SPLIT, 0, WORLD)
    assert result.video == video.name
    assert result.expressions == {str(i): e.text for i, e in enumerate(video.expressions)}
    for exp_id in result.expressions:
        d = result.masks_dir / video.name / exp_id
        pngs = sorted(d.glob("*.png"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(video.num_frames)]
        assert read_mask_png(pngs[0]).shape == (64, 64)
        assert (d / "overlay.mp4").stat().st_size > 0
        assert f"{exp_id}  " in out.getvalue() and result.expressions[exp_id] in out.getvalue()
    assert len(result.overlays) == len(result.expressions)
    scores = json.loads(result.scores_json.read_text())
    assert scores["J&F"] == pytest.approx(result.jf)
    assert set(scores["per_expression"]) == {f"{video.name}_{k}" for k in result.expressions}

    # J&F is the evaluator's on the written masks: recompute one expression's J by hand.
    from glus_jax.eval.metrics import jaccard

    pred = np.stack([read_mask_png(p) > 0 for p in sorted((result.masks_dir / video.name / "0").glob("*.png"))])
    want_j = float(np.mean(jaccard(video.expression_masks(0), pred)))
    assert result.per_expression["0"][0] == pytest.approx(want_j, abs=1e-6)


def test_missing_embedded_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "embedded_model_dir", lambda: tmp_path / "assets" / "tiny_world")
    with pytest.raises(demo.DemoError, match="(?s)embedded model is missing.*--random-model"):
        demo.run_demo(None, tmp_path / "run", world=WORLD)
    with pytest.raises(demo.DemoError, match="not a glus-jax model directory"):
        demo.run_demo(tmp_path, tmp_path / "run", world=WORLD)


def test_cli_reports_a_missing_model(tmp_path, monkeypatch, capsys):
    from glus_jax import cli

    monkeypatch.setattr(demo, "embedded_model_dir", lambda: tmp_path / "nothing")
    assert cli.main(["demo", "--out", str(tmp_path / "run")]) == 2
    assert "embedded model is missing" in capsys.readouterr().err
