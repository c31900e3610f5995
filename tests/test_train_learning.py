"""Training lowers every loss term: `train.loop.train` on GLUS-tiny (the oracle's weights, SAM2 at 64 px,
LoRA and dropout on, contrastive loss on) over a generated MeViS-layout dataset
(`glus_jax.data.synthetic.generate`, plus a paraphrase per video so that the contrastive loss has positives)
for 40 steps. The mean of each term over the last 10 steps is below
its mean over the first 10 (CE, BCE, dice and the total; the contrastive term too where it was applied
in both windows). The run also writes TensorBoard scalars and its final checkpoint.

Slow: one train-step compilation plus 40 steps, 1.5-3 minutes here. tests/test_train_step.py is the fast
variant (a few steps on one fixed batch lower the total loss).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from glus_jax.data import synthetic
from glus_jax.train import loop
from tests import train_world

pytestmark = pytest.mark.slow

STEPS = 40


def _add_paraphrases(meta_file):
    """A second expression for the first object set of every video (same objects and masks, other words):
    the generator never repeats an object set, and the contrastive loss needs such positives."""
    meta = json.loads(meta_file.read_text())
    for video in meta["videos"].values():
        exps = video["expressions"]
        first = exps[sorted(exps, key=int)[0]]
        exps[str(max(int(k) for k in exps) + 1)] = {**first, "exp": first["exp"] + " in this video"}
    meta_file.write_text(json.dumps(meta))


def test_training_lowers_every_loss(tmp_path):
    world = synthetic.WorldConfig(height=48, width=64, min_frames=8, max_frames=12, max_expressions=4)
    synthetic.generate(tmp_path / "data" / "mevis", "train", 8, seed=3, config=world)
    _add_paraphrases(tmp_path / "data" / "mevis" / "train" / "meta_expressions.json")
    cfg = train_world.tiny_config(
        train_world.model_dir(tmp_path),
        tmp_path / "data",
        overrides=[f"--config.train.steps={STEPS}", "--config.train.warmup_steps=5", "--config.train.lr=1e-3",
                   "--config.train.ckpt_every=0", "--config.train.log_every=10",
                   "--config.train.bank_size=64", "--config.train.num_negatives=8",
                   "--config.data.max_seq_len=320"],
        max_mask_size=(48, 64),
    )
    result = loop.train(cfg, tmp_path / "work", export=False)
    hist = result.history
    assert len(hist) == STEPS and int(result.state.step) == STEPS

    def window(name, rows):
        return float(np.mean([h[name] for h in rows]))

    first, last = hist[:10], hist[-10:]
    names = ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss")
    report = {k: (window(k, first), window(k, last)) for k in names}
    for name, (a, b) in report.items():
        assert b < a, (name, report)
    assert report["loss"][1] < 0.85 * report["loss"][0], report
    applied_first = [h for h in first if h["contrastive_applied"] > 0]
    applied_last = [h for h in last if h["contrastive_applied"] > 0]
    if applied_first and applied_last:
        assert window("contrastive_loss", applied_last) < window("contrastive_loss", applied_first)
    assert any(h["contrastive_applied"] > 0 for h in hist), "the contrastive loss never applied"
    assert list((tmp_path / "work" / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "work" / "checkpoints" / str(STEPS)).is_dir()  # the last step is always saved
