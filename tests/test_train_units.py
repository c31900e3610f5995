"""Pieces of the training code that need no compiled model: the learning-rate schedule (DeepSpeed
WarmupDecayLR), what is trained, the static-shape upsampling of mask logits to each sample's size, the
checkpoint form of the state, the group split, the CLI registration."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.models import glus as glus_lib
from glus_jax.models.sam2 import transforms as sam_transforms
from glus_jax.train import forward as forward_lib
from glus_jax.train import optimizer as opt_lib
from glus_jax.train import state as state_lib


def _deepspeed_warmup_decay(k, lr, warmup, total):
    """deepspeed.runtime.lr_schedules.WarmupDecayLR(warmup_type="linear", warmup_min_lr=0) at
    last_batch_iteration k (k = 0 at the first optimizer step: the constructor steps once)."""
    warmup = max(2, warmup)
    gamma = k / warmup if k < warmup else max(0.0, (total - k) / max(1.0, total - warmup))
    return lr * gamma


@pytest.mark.parametrize("warmup,total", [(100, 3000), (0, 10), (20, 300), (5, 5)])
def test_lr_schedule_is_deepspeed_warmup_decay(warmup, total):
    cfg = opt_lib.OptimizerConfig(lr=3e-4, warmup_steps=warmup, total_steps=total)
    sched = opt_lib.lr_schedule(cfg)
    for k in sorted({0, 1, 2, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total, total + 7}):
        if k < 0:
            continue
        want = _deepspeed_warmup_decay(k, 3e-4, warmup, total)
        np.testing.assert_allclose(float(sched(k)), want, rtol=1e-6, atol=1e-12)
    assert float(sched(0)) == 0.0  # the first update of a run has lr 0, as in the reference


def test_optimizer_is_adamw_with_clipping():
    """One update by hand: clip to global norm 1, AdamW(0.9, 0.95, eps 1e-8, no decay), the schedule's lr."""
    cfg = opt_lib.OptimizerConfig(lr=1e-2, warmup_steps=2, total_steps=10)
    tx = opt_lib.make_optimizer(cfg)
    p = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    g = {"w": jnp.asarray([3.0, 4.0, 0.0])}  # norm 5 -> clipped to norm 1
    st = tx.init(p)
    for k in range(3):
        upd, st = tx.update(g, st, p)
        gc = np.asarray(g["w"]) / 5.0
        m = (1 - 0.9) * gc * sum(0.9**i for i in range(k + 1))
        v = (1 - 0.95) * gc**2 * sum(0.95**i for i in range(k + 1))
        mh, vh = m / (1 - 0.9 ** (k + 1)), v / (1 - 0.95 ** (k + 1))
        lr = _deepspeed_warmup_decay(k, 1e-2, 2, 10)
        want = -lr * mh / (np.sqrt(vh) + 1e-8)
        np.testing.assert_allclose(np.asarray(upd["w"]), want, rtol=1e-5, atol=1e-12)


@pytest.fixture(scope="module")
def lora_model():
    cfg = glus_lib.tiny(sam2=glus_lib.tiny_sam2(image_size=64))
    llama = dataclasses.replace(cfg.llava.llama, lora_rank=8, lora_alpha=16.0, lora_dropout=0.05)
    cfg = dataclasses.replace(cfg, llava=dataclasses.replace(cfg.llava, llama=llama))
    return nnx.eval_shape(lambda: glus_lib.GLUS(cfg, rngs=nnx.Rngs(0)))


def test_trainable_parameters_are_the_references(lora_model):
    _, params, frozen = state_lib.split_model(lora_model)
    train = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    fixed = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)}
    assert not train & fixed
    llm = "llava/llm/model/layers/self_attn"
    assert {f"{llm}/{m}/lora_{x}" for m in ("q_proj", "v_proj") for x in "ab"} <= train
    assert not any("lora" in p for p in fixed)
    assert {"llava/llm/lm_head/kernel", "llava/llm/model/embed_tokens", "llava/mm_projector/fc1/kernel",
            "text_hidden_fcs/fc2/bias"} <= train
    for prefix, trained in [("visual_model/sam_mask_decoder/", True), ("visual_model/image_encoder/", False),
                            ("visual_model/memory_attention/", False),
                            ("visual_model/memory_encoder/", False),
                            ("visual_model/sam_prompt_encoder/", False), ("llava/vision_tower/", False)]:
        assert any(p.startswith(prefix) for p in (train if trained else fixed)), prefix
        assert not any(p.startswith(prefix) for p in (fixed if trained else train)), prefix
    for frozen_path in (f"{llm}/q_proj/kernel", f"{llm}/k_proj/kernel", "llava/llm/model/norm/scale",
                        "visual_model/no_mem_embed"):
        assert frozen_path in fixed, frozen_path
    # The optimizer holds state for the trainable parameters only: Adam's mu and nu, plus counts.
    tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig())
    opt = jax.eval_shape(tx.init, params)
    n_train = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    # + the step counts of Adam and of the schedule
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(opt)) == 2 * n_train + 2


@pytest.mark.parametrize("n_in,n_out", [(16, 96), (16, 13), (64, 64), (7, 129), (256, 1)])
def test_bilinear_matrix_equals_torch_interpolate(n_in, n_out):
    got = np.asarray(forward_lib.bilinear_matrix(jnp.asarray(n_out), n_in, n_out + 5))
    want = sam_transforms.resize_weights(n_in, n_out, "bilinear")
    np.testing.assert_array_equal(got[:n_out], want)
    assert not got[n_out:].any()


def test_upsample_to_canvas_per_sample_sizes():
    """Each sample is upsampled to its own (traced) size in the top-left of the canvas, exactly as
    postprocess_masks at that static size; the rest is zero and marked invalid."""
    rng = np.random.default_rng(0)
    low = rng.normal(size=(3, 2, 4, 16, 16)).astype(np.float32) * 5
    sizes = np.asarray([[37, 53], [16, 16], [40, 9]], np.int32)
    canvas = (41, 60)
    up, valid = jax.jit(forward_lib.upsample_to_canvas, static_argnums=2)(low, sizes, canvas)
    up, valid = np.asarray(up), np.asarray(valid)
    assert up.shape == (3, 2, 4, *canvas) and valid.shape == (3, *canvas)
    for b, (h, w) in enumerate(sizes):
        want = np.asarray(glus_lib.upsample_logits(jnp.asarray(low[b]), (int(h), int(w))))
        np.testing.assert_allclose(up[b, ..., :h, :w], want, atol=1e-5, rtol=1e-6)  # |logits| up to ~20
        assert not up[b, ..., h:, :].any() and not up[b, ..., :, w:].any()
        assert valid[b, :h, :w].all() and valid[b].sum() == h * w


def test_split_groups():
    tree = {"a": jnp.arange(12).reshape(6, 2), "b": jnp.arange(6)}
    g = forward_lib.split_groups(tree, 3)
    assert g["a"].shape == (3, 2, 2) and g["b"].tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="does not split"):
        forward_lib.split_groups(tree, 4)


def test_checkpoint_tree_roundtrip(lora_model):
    _, params, frozen = state_lib.split_model(lora_model)
    params = jax.tree.map(lambda x: jnp.full(x.shape, 0.5, x.dtype), params)
    tx = opt_lib.make_optimizer(opt_lib.OptimizerConfig())
    state = state_lib.TrainState(
        step=jnp.asarray(7, jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
        banks=state_lib.init_banks(2, 64, 8), rng=jax.random.PRNGKey(3),
    )
    tree = state_lib.checkpoint_tree(state)
    assert set(tree) == {"step", "params", "opt_state", "banks", "rng"}  # frozen params are not saved
    assert all(isinstance(k, str) for k in tree["params"]["llava"]["llm"]["model"]["layers"]["self_attn"])
    changed = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.bool_ else ~x, tree)
    back = state_lib.restore_state(state, changed)
    assert int(back.step) == 8
    np.testing.assert_array_equal(np.asarray(back.banks.ptr), [1, 1])
    assert jax.tree.structure(back) == jax.tree.structure(state)
    leaf = back.params["llava"]["llm"]["lm_head"]["kernel"]
    assert float(np.asarray(leaf.get_value()).max()) == 1.5


def test_cli_registers_train():
    import argparse

    from glus_jax import cli
    from glus_jax.train import cli as train_cli

    assert cli.SUBCOMMANDS["train"][0] == "glus_jax.train.cli"
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    argv = ["--config", "configs/tiny.py", "--workdir", "w", "--config.train.steps=3"]
    args, unknown = p.parse_known_args(argv)
    assert args._accepts_unknown and unknown == ["--config.train.steps=3"]


def test_init_by_converting_lisa_clip_and_official_sam2(tmp_path):
    """`model.lisa_checkpoint` + `model.vision_tower` + `model.sam2_checkpoint` (no init_from), as train_ds.py
    sets the model up: LLaVA from the LISA/GLUS checkpoint, SAM2 from an official {"model": ...} .pt with
    its real fuser gammas, a fresh text_hidden_fcs (PyTorch's default Linear init), LoRA B = 0."""
    import shutil

    import torch

    from glus_jax.train import loop
    from tests import train_world
    from tests.golden_model import CLIP_DIR, GOLDEN, SAM2_YAML, sam2_state_dict

    lisa = tmp_path / "lisa"  # GLUS-tiny's LLaVA part: LLM, projector, text_hidden_fcs, no SAM2 tensors
    shutil.copytree(GOLDEN / "llava_glus_tiny", lisa)
    for f in (GOLDEN / "tok_glus_tiny").iterdir():
        shutil.copy(f, lisa / f.name)
    sam_sd = sam2_state_dict(prefix="")
    torch.save({"model": {k: torch.from_numpy(v.copy()) for k, v in sam_sd.items()}}, tmp_path / "sam2.pt")
    cfg = train_world.tiny_config("", overrides=[
        f"--config.model.lisa_checkpoint={lisa}", f"--config.model.vision_tower={CLIP_DIR}",
        f"--config.model.sam2_checkpoint={tmp_path / 'sam2.pt'}", f"--config.model.sam2_config={SAM2_YAML}"])
    model, tok, source = loop.build_model(cfg)
    assert source["load_fuser_gamma"] and tok.seg_token_id == model.config.seg_token_id == 512
    assert model.config.sam2.image_size == train_world.IMAGE_SIZE and model.config.llava.llama.lora_rank == 8

    ref, _, _ = train_world.convert_glus_tiny(tmp_path / "ref", load_fuser_gamma=True)
    np.testing.assert_array_equal(np.asarray(model.llava.llm.lm_head.kernel[...]),
                                  np.asarray(ref.llava.llm.lm_head.kernel[...]))
    got_sam = dict(nnx.to_flat_state(nnx.state(model.visual_model)))
    for path, var in nnx.to_flat_state(nnx.state(ref.visual_model)):
        np.testing.assert_array_equal(np.asarray(got_sam[path].get_value()), np.asarray(var.get_value()),
                                      err_msg=str(path))
    gamma = np.asarray(model.visual_model.memory_encoder.fuser.layers.gamma[...])  # stacked CXBlocks [2, C]
    np.testing.assert_array_equal(gamma[0], sam_sd["memory_encoder.fuser.layers.0.gamma"])  # not Q1's 1e-6
    fc1 = np.asarray(model.text_hidden_fcs.fc1.kernel[...])
    assert not np.allclose(fc1, np.asarray(ref.text_hidden_fcs.fc1.kernel[...]))
    assert np.abs(fc1).max() <= 1 / np.sqrt(fc1.shape[0]) and fc1.std() > 0.5 / np.sqrt(3 * fc1.shape[0])
    q = model.llava.llm.model.layers.self_attn.q_proj
    assert not np.asarray(q.lora_b[...]).any() and np.asarray(q.lora_a[...]).any()


def test_a_trainable_name_that_selects_nothing_is_an_error():
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self):
            self.visual_model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    graphdef, train, _ = state_lib.split_model(Tiny(), ("visual_model",))
    assert len(nnx.to_flat_state(train)) == 2
    with pytest.raises(ValueError, match=r"train.trainable: \[\"\('visual_model'\"\]"):
        state_lib.split_model(Tiny(), ("('visual_model'",))
