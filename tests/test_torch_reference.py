"""The PyTorch step-by-step GLUS composition (benchmarks/torch_reference.py) vs the original's golden run.

Golden data (tests/golden): the GLUS-tiny checkpoint as split by the other golden sets: llava_glus_tiny/
(LLM, projector, text_hidden_fcs, config.json), llava_clip_vit_tiny/ (CLIP tower + preprocessor config),
sam2_visual_model.safetensors + mem_weights.safetensors (SAM2, gammas included), tok_glus_tiny/
(tokenizer), sam2_hiera_tiny_oracle.yaml; the video as JPEGs in data_video/; and our ref_infer.npz (slices
of the oracle's infer.npz / infer_gamma_loaded.npz / inference_steps.json, see ref_make_golden.py).

Tolerances (README section 7): token ids exact, LM logits 1e-4, [SEG] embeddings 1e-4, mask logits 1e-3,
binary masks equal except where the oracle's logit is within 1e-3 of 0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.torch_reference import TorchGLUS
from glus_jax.data.conversation import INFERENCE_FAILED_ANSWER, INFERENCE_PAST_ANSWER, inference_prompt
from glus_jax.data.tokenizer import GLUSTokenizer
from glus_jax.inference import protocol

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPRESSION = "The red ball moving to the right."
SAM_PREFIX = "model.visual_model."
SAM_WEIGHTS = ("sam2_visual_model.safetensors", "mem_weights.safetensors")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The reference is CPU-bound; one intra-op thread is fastest on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "ref_infer.npz")


@pytest.fixture(scope="module")
def frames(golden):
    folder = GOLDEN / "data_video" / "mevis" / "train" / "JPEGImages" / "v0"
    out = np.stack([cv2.cvtColor(cv2.imread(str(folder / f"{i:05d}.jpg")), cv2.COLOR_BGR2RGB)
                    for i in range(10)])
    digest = hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()
    assert digest == str(golden["frames_sha256"]), "decoded JPEGs differ from the oracle's frames_rgb"
    return out


def _sam_weights() -> dict[str, torch.Tensor]:
    out = {}
    for name in SAM_WEIGHTS:
        out.update({k if k.startswith(SAM_PREFIX) else SAM_PREFIX + k: v
                    for k, v in load_file(str(GOLDEN / name)).items()})
    return out


def _build(load_fuser_gamma: bool = False) -> TorchGLUS:
    state = dict(load_file(str(GOLDEN / "llava_glus_tiny" / "model.safetensors")))
    state.update(_sam_weights())
    clip_dir = GOLDEN / "llava_clip_vit_tiny"
    return TorchGLUS(
        glus_config=json.loads((GOLDEN / "llava_glus_tiny" / "config.json").read_text()),
        glus_state=state,
        clip_config=json.loads((clip_dir / "config.json").read_text()),
        clip_state=load_file(str(clip_dir / "model.safetensors")),
        sam_config=GOLDEN / "sam2_hiera_tiny_oracle.yaml",
        tokenizer=GLUSTokenizer.from_dir(GOLDEN / "tok_glus_tiny"),
        clip_processor=clip_dir,
        load_fuser_gamma=load_fuser_gamma,
    )


@pytest.fixture(scope="module")
def model():
    return _build()


def _assert_mask_logits(got, want, what):
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0, err_msg=what)
    decided = np.abs(want) >= 1e-3
    assert np.array_equal((got > 0)[decided], (want > 0)[decided]), f"{what}: binary mask differs"


def test_plain_run_reproduces_oracle_step_by_step(model, frames, golden):
    out = model.segment(frames, EXPRESSION)
    n = len(golden["generated_tokens"])
    assert out["context_frames"] == golden["context_frames"].tolist() == [1, 3, 6, 8]
    assert out["step_frames"] == list(range(n)) and out["passes"] == [list(range(n))]
    assert out["masks"].shape == (n, 96, 128) and out["masks"].dtype == bool
    for k, step in enumerate(out["steps"]):
        assert np.array_equal(out["token_ids"][k], golden[f"input_ids_step{k}"]), f"step {k}: token ids"
        assert out["generated_tokens"][k] == golden["generated_tokens"][k] == model.seg_token_id
        np.testing.assert_allclose(step["lm_logits_last"], golden["lm_logits_last"][k], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out["text_embeds"][k], golden["text_embeds_used"][k], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out["seg_embeddings"][k], golden[f"seg_embeddings_step{k}"],
                                   atol=1e-4, rtol=0)
        assert step["seg_positions"] == golden[f"seg_positions_step{k}"].tolist(), f"step {k}: [SEG] rows"
        used = golden["memory_frames"][k]
        assert step["memory_frames"] == used[used >= 0].tolist(), f"step {k}: memory frames"
        _assert_mask_logits(out["logits"][k], golden["pred_mask_logits"][k], f"step {k}: mask logits")
    assert np.array_equal(out["masks"], out["logits"] > 0)


def test_fuser_gamma_option(model, frames, golden):
    """Q1: by default the fuser gammas keep the yaml's 1e-6; the option loads the checkpoint's."""
    gamma_model = _build(load_fuser_gamma=True)
    stored = _sam_weights()
    for i in range(2):
        key = f"memory_encoder.fuser.layers.{i}.gamma"
        assert torch.all(model.sam.state_dict()[key] == torch.tensor(1e-6))
        want = stored[SAM_PREFIX + key]
        assert not torch.allclose(want, torch.tensor(1e-6))
        assert torch.equal(gamma_model.sam.state_dict()[key], want)
    context = golden["context_frames"].tolist()
    n = len(golden["gamma_pred_mask_logits"])
    steps = gamma_model.run_pass(frames, context, list(range(n)), EXPRESSION)
    for k, step in enumerate(steps):
        _assert_mask_logits(step["logits"], golden["gamma_pred_mask_logits"][k], f"gamma step {k}")
    # The option matters from the first frame with memory on.
    assert np.abs(steps[1]["logits"] - golden["pred_mask_logits"][1]).max() > 0.01


def test_key_frame_mode(model, frames):
    """Forward k..end, then backward k..0 with the same context; each frame under its own name."""
    video, key = frames[:5], 2
    out = model.segment(video, EXPRESSION, key_frame=key)
    assert out["context_frames"] == protocol.context_frames(5) == [0, 1, 2, 4]
    assert out["passes"] == protocol.key_frame_passes(5, key) == [[2, 3, 4], [2, 1, 0]]
    assert out["step_frames"] == [2, 3, 4, 2, 1, 0] and out["step_pass"] == [0, 0, 0, 1, 1, 1]
    steps = out["steps"]
    # The key frame opens both passes with identical inputs (empty bank, one round): identical results.
    assert steps[0]["rel_pos"] == steps[3]["rel_pos"] == 0
    assert np.array_equal(steps[0]["input_ids"], steps[3]["input_ids"])
    assert np.array_equal(steps[0]["logits"], steps[3]["logits"])
    # Each pass builds its own bank from rel pos 0.
    assert [s["memory_frames"] for s in steps] == [[], [0], [0, 1]] * 2
    # Frame f's mask is the record the merge picks: backward pass for f <= key, forward after it.
    merged = protocol.merge_passes(out["passes"], 5)
    for f, (p, pos) in enumerate(merged):
        record = steps[sum(len(o) for o in out["passes"][:p]) + pos]
        assert record["frame"] == f and record["pass"] == (1 if f <= key else 0)
        assert np.array_equal(out["logits"][f], record["logits"])
        assert np.array_equal(out["masks"][f], record["mask"])
    # The backward pass's frames differ from the forward pass's (not a copy).
    assert not np.array_equal(out["logits"][1], out["logits"][3])
    # Our inference_video context-frame rule agrees with glus_jax's protocol for any video length.
    for n in range(1, 40):
        assert TorchGLUS.context_frames(n) == protocol.context_frames(n), n


def test_fallback_without_seg(model, frames, golden):
    """A step whose generated token is not [SEG]: blank mask, no memory, history answer '... [SEG] .'."""
    calls = []

    def suppress_seg_on_second_call(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            output = output.clone()
            output[..., -1, model.seg_token_id] = -1e9
            return output
        return output

    handle = model.llm.lm_head.register_forward_hook(suppress_seg_on_second_call)
    try:
        steps = model.run_pass(frames, golden["context_frames"].tolist(), [0, 1, 2], EXPRESSION)
    finally:
        handle.remove()
    assert [s["seg_emitted"] for s in steps] == [True, False, True]
    assert steps[1]["generated_token"] != model.seg_token_id
    assert not steps[1]["mask"].any() and not steps[1]["logits"].any()
    # Step 0 is the oracle's; step 2 sees "[SEG] ." as round 2's answer and only frame 0 in memory.
    _assert_mask_logits(steps[0]["logits"], golden["pred_mask_logits"][0], "step 0")
    prompt = inference_prompt(EXPRESSION, 3, [INFERENCE_PAST_ANSWER, INFERENCE_FAILED_ANSWER])
    assert steps[2]["prompt"] == prompt != inference_prompt(EXPRESSION, 3)
    # The tokenizer strips the space after [SEG] (Q3), so "[SEG] ." and "[SEG]." give the same ids.
    assert steps[2]["input_ids"].tolist() == model.tokenizer.tokenizer_image_token(prompt)
    assert np.array_equal(steps[2]["input_ids"], golden["input_ids_step2"])
    # ...so only the missing memory of frame 1 changes step 2.
    assert steps[2]["memory_frames"] == [0]
    assert np.isfinite(steps[2]["logits"]).all()
    assert np.abs(steps[2]["logits"] - golden["pred_mask_logits"][2]).max() > 1e-2
