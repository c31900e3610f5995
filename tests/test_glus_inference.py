"""GLUS video inference against the original's golden run (oracle GLUS-tiny), through the command line
contract, plus key-frame propagation against the PyTorch step-by-step reference and batched == step.

Tolerances (oracle README section 7): [SEG] embeddings 1e-4, mask logits 1e-3, binary masks equal
wherever the oracle's logit is not within 1e-3 of zero, and on >= 99.9 % of pixels.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glus_jax.cli import main as cli
from glus_jax.inference import protocol
from glus_jax.inference.pipeline import GLUSPipeline
from tests.glus_fixtures import GOLDEN, ORACLE_EXPRESSION, glus_tiny_checkpoint, golden_steps, oracle_frames

FRAMES_DIR = GOLDEN / "data_video" / "mevis" / "train" / "JPEGImages" / "v0"
NAMES = [f"{i:05d}" for i in range(10)]


@pytest.fixture(scope="module")
def ref():
    return np.load(GOLDEN / "ref_infer.npz")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("glus")
    ckpt, clip, yaml = glus_tiny_checkpoint(root)
    dirs = {}
    for name, extra in (("default", []), ("gamma", ["--load-fuser-gamma"])):
        dirs[name] = root / f"model_{name}"
        args = ["convert", "--checkpoint", str(ckpt), "--vision-tower", str(clip), "--sam2-config", str(yaml)]
        assert cli([*args, "--out", str(dirs[name]), *extra]) == 0
    return dirs


@pytest.fixture(scope="module")
def pipe(model_dirs):
    return GLUSPipeline.from_pretrained(model_dirs["default"])


def _check_masks(masks, logits, want_logits):
    np.testing.assert_allclose(logits, want_logits, atol=1e-3)
    decided = np.abs(want_logits) >= 1e-3
    np.testing.assert_array_equal(masks[decided], want_logits[decided] > 0)
    assert (masks == (want_logits > 0)).mean() >= 0.999


def test_cli_convert_and_segment_reproduce_the_original(model_dirs, ref, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model_dirs["default"]), "--frames", str(FRAMES_DIR),
            "--expression", ORACLE_EXPRESSION, "--out", str(out), "--save-logits"]
    assert cli(argv) == 0
    d = out / "v0" / "0"
    assert sorted(p.stem for p in d.glob("*.png")) == NAMES and (d / ".done").exists()
    masks = np.stack([np.asarray(Image.open(d / f"{n}.png")) for n in NAMES])
    assert set(np.unique(masks)) <= {0, 255}
    logits = np.load(d / "logits.npz")
    _check_masks(masks > 0, np.stack([logits[n] for n in NAMES]), ref["pred_mask_logits"])


def test_every_step_matches_the_original(pipe, ref):
    res = pipe.segment(oracle_frames(), [ORACLE_EXPRESSION])[0]
    steps = golden_steps()
    assert len(res.steps) == 1 and len(res.steps[0]) == 10
    for k, step in enumerate(res.steps[0]):
        assert step.frame == k
        assert step.input_ids == steps[k]["input_ids"], f"step {k} token ids"
        assert step.generated_token == int(ref["generated_tokens"][k]) == 512
        np.testing.assert_allclose(step.seg_embedding, ref["text_embeds_used"][k], atol=1e-4)
    _check_masks(res.masks, res.logits((96, 128)), ref["pred_mask_logits"])


def test_stored_gammas_option_reproduces_the_gamma_loaded_run(model_dirs, ref):
    pipe = GLUSPipeline.from_pretrained(model_dirs["gamma"])
    res = pipe.segment(oracle_frames(), [ORACLE_EXPRESSION])[0]  # golden: its first 4 frames
    _check_masks(res.masks[:4], res.logits((96, 128))[:4], ref["gamma_pred_mask_logits"])


def test_batched_llm_steps_equal_step_by_step(model_dirs, pipe):
    step_pipe = GLUSPipeline.from_pretrained(model_dirs["default"], llm_mode="step")
    frames = oracle_frames()
    tokens = pipe.clip_tokens(frames)
    context = protocol.context_frames(len(frames))
    for order in (list(range(10)), [6, 5, 4, 3, 2, 1, 0]):
        e1, ok1, r1 = pipe.seg_embeddings(tokens, context, order, ORACLE_EXPRESSION)
        e2, ok2, r2 = step_pipe.seg_embeddings(tokens, context, order, ORACLE_EXPRESSION)
        np.testing.assert_allclose(e1, e2, atol=1e-5)
        assert ok1.all() and ok2.all()
        assert [r.input_ids for r in r1] == [r.input_ids for r in r2]


@pytest.fixture(scope="module")
def torch_reference():
    import torch

    from tests.test_torch_reference import _build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops are far slower with 2 contending threads
    yield _build()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def key_frame_runs(pipe):
    frames = oracle_frames()
    return {k: pipe.segment(frames, [ORACLE_EXPRESSION], key_frames=[k])[0] for k in (4, 9)}


@pytest.mark.parametrize("key", [4, 9])
def test_key_frame_mode_matches_the_pytorch_reference(key_frame_runs, torch_reference, key):
    want = torch_reference.segment(oracle_frames(), ORACLE_EXPRESSION, key_frame=key)
    res = key_frame_runs[key]
    assert [[r.frame for r in p] for p in res.steps] == protocol.key_frame_passes(10, key)
    _check_masks(res.masks, res.logits((96, 128)), np.asarray(want["logits"]))


def test_cli_key_frame_writes_every_frame_under_its_own_name(model_dirs, key_frame_runs, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", "--model", str(model_dirs["default"]), "--frames", str(FRAMES_DIR),
            "--expression", ORACLE_EXPRESSION, "--out", str(out), "--key-frame", "00004"]
    assert cli(argv) == 0
    d = out / "v0" / "0"
    assert sorted(p.stem for p in d.glob("*.png")) == NAMES
    res = key_frame_runs[4]
    for i, n in enumerate(NAMES):
        np.testing.assert_array_equal(np.asarray(Image.open(d / f"{n}.png")) > 0, res.masks[i])
    # Frames 0..4 come from the backward pass (4, 3, 2, 1, 0), 5..9 from the forward pass.
    fwd, bwd = res.steps
    assert [r.frame for r in bwd] == [4, 3, 2, 1, 0] and [r.frame for r in fwd] == [4, 5, 6, 7, 8, 9]
