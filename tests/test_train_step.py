"""The jitted train step on GLUS-tiny (SAM2 at 64 px) with a real pipeline batch of the golden MeViS video:
a few steps on one fixed batch lower the total loss; only the trainable parameters move (the frozen ones
and the mask decoder's high-res projections, which the reference runs under no_grad, stay bit-identical);
the reported lr is the schedule's; the exported model directory has LoRA folded in. The training SAM2
forward, which attends only to the memories that can exist at each query frame, equals attention over the
whole padded bank."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.data import pipeline
from glus_jax.models import glus as glus_lib
from glus_jax.models.io import load_model
from glus_jax.train import forward as forward_lib
from glus_jax.train import losses as losses_lib
from glus_jax.train import loop
from tests import train_world


def _flat(state):
    return {"/".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def setup_and_batch(tmp_path_factory):
    model_dir = train_world.model_dir(tmp_path_factory.mktemp("train_step"))
    cfg = train_world.tiny_config(
        model_dir,
        overrides=["--config.train.steps=50", "--config.train.warmup_steps=2", "--config.train.lr=1e-3",
                   "--config.train.dropout=false"],
    )
    s = loop.setup(cfg)
    it = pipeline.make_train_iterator(cfg, s.tokenizer, 0, 1, batch_size=s.local_batch)
    local = loop.stack_micro_batches([next(it)])
    return s, local


def test_steps_on_a_fixed_batch_lower_the_loss_and_train_only_trainables(setup_and_batch, tmp_path):
    s, local = setup_and_batch
    batch = loop.global_batch(local, s.mesh, s.rules)
    assert batch["sam_pixels"].shape == (1, 2, 4, 64, 64, 3) and batch["gt_masks"].shape[-2:] == (96, 128)
    params0, frozen0 = _flat(s.state.params), _flat(s.state.frozen)
    state, history = jax.tree.map(jnp.copy, s.state), []  # the step donates its input state
    for _ in range(6):
        state, metrics = s.step_fn(state, batch)  # the state is donated
        history.append(jax.device_get(metrics))
    losses = [float(m["loss"]) for m in history]
    # history[k] is the loss before update k; update 0 has lr 0 (the schedule's first value).
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[-1] < 0.8 * losses[0], losses
    assert [float(m["lr"]) for m in history] == pytest.approx([float(s.schedule(k)) for k in range(6)])
    assert all(np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0 for m in history)
    assert int(state.step) == 6

    params1, frozen1 = _flat(state.params), _flat(state.frozen)
    assert frozen1.keys() == frozen0.keys()
    for k in frozen0:
        np.testing.assert_array_equal(frozen1[k], frozen0[k], err_msg=k)
    moved = {k for k in params0 if not np.array_equal(params0[k], params1[k])}
    llm = "llava/llm/model/layers/self_attn"
    for k in (f"{llm}/q_proj/lora_b", f"{llm}/v_proj/lora_b", "llava/llm/lm_head/kernel",
              "llava/llm/model/embed_tokens", "llava/mm_projector/fc1/kernel", "text_hidden_fcs/fc1/kernel",
              "visual_model/sam_mask_decoder/output_upscaling/dc1/kernel"):
        assert any(m.startswith(k) for m in moved), k
    # The exported model directory is the plain model with LoRA folded in.
    export = loop.export_model(s, state, tmp_path / "model")
    model, _, stored = load_model(export)
    assert model.config.llava.llama.lora_rank == 0 and stored["source"]["trained_steps"] == 6
    lora = params1[f"{llm}/q_proj/lora_a"] @ params1[f"{llm}/q_proj/lora_b"] * 2.0  # alpha / r = 16 / 8
    np.testing.assert_allclose(np.asarray(model.llava.llm.model.layers.self_attn.q_proj.kernel[...]),
                               frozen0[f"{llm}/q_proj/kernel"] + lora, atol=1e-6, rtol=0)
    lm_head = np.asarray(model.llava.llm.lm_head.kernel[...])
    np.testing.assert_array_equal(lm_head, params1["llava/llm/lm_head/kernel"])
    # conv_s0 / conv_s1 belong to the mask decoder but run in forward_image under torch.no_grad in GLUS:
    # no gradient, so AdamW leaves them exactly as they were.
    for k in params0:
        if "/conv_s0/" in k or "/conv_s1/" in k:
            assert k not in moved, k


def _sam_forward_padded_bank(model, sam_pixels, seg_embeds, seg_ok, stride):
    """The training SAM2 forward with every query frame attending to the whole padded bank (all
    num_maskmem selected slots, absent ones masked) in a scan: what `sam_forward` computes over the
    present slots only."""
    graph, state = nnx.split(model.visual_model)
    cfg = model.config.sam2
    _, e, q, _ = seg_embeds.shape

    def one_sample(pixels, text, ok):
        def frame(bank, xs):
            px, t_emb, fid = xs
            sam = nnx.merge(graph, jax.tree.map(lambda x: x, state))
            feats = sam.encode_image(px[None])
            bank, out = glus_lib.frame_step_features(sam, bank, feats, t_emb, ok, fid, stride=stride, training=True)
            return bank, out.low_res_logits

        bank = glus_lib.init_bank(cfg, e, stride)
        _, low = jax.lax.scan(frame, bank, (pixels, jnp.moveaxis(text, 1, 0), jnp.arange(q, dtype=jnp.int32)))
        return jnp.moveaxis(low, 0, 1)

    return jax.vmap(one_sample)(sam_pixels, seg_embeds, seg_ok)


def test_sam_forward_attends_to_present_memories_only(setup_and_batch):
    """The unrolled training forward (memory attention over the slots that can hold a memory at each
    query frame) equals attention over the whole padded bank, also with expressions without [SEG]."""
    s, local = setup_and_batch
    model = nnx.merge(s.graphdef, s.state.params, s.state.frozen)
    assert forward_lib.memory_frame_counts(4, 7, 1) == (0, 1, 2, 3)
    assert forward_lib.memory_frame_counts(5, 7, 3) == (0, 1, 2, 2, 2)  # frames f-1 and multiples of 3
    stride = 1  # training's
    pixels = jnp.asarray(local["sam_pixels"][0])  # [B, Q, 64, 64, 3]
    b = pixels.shape[0]
    text = jax.random.normal(jax.random.PRNGKey(1), (b, 3, 4, model.config.out_dim))
    ok = jnp.asarray([[True, False, True], [False, True, True]])[:b]
    graph, state = nnx.split(model)

    @jax.jit
    def both(state, pixels, text, ok):
        m = nnx.merge(graph, state)
        new = forward_lib.sam_forward(m, pixels, text, ok, mem_stride=stride)
        return new, _sam_forward_padded_bank(m, pixels, text, ok, stride)

    new, ref = jax.device_get(both(state, pixels, text, ok))
    assert new.shape == (b, 3, 4, 16, 16)
    scale = float(np.abs(ref[np.asarray(ok)]).max())
    np.testing.assert_allclose(new, ref, atol=1e-5 * scale, rtol=0)
    assert (new[~np.asarray(ok)] == glus_lib.BLANK_LOGIT).all()


@pytest.mark.parametrize("ce_trains_llm", [True, False])
def test_seg_ce_trains_the_llm_body_only_when_asked(setup_and_batch, ce_trains_llm):
    """`train.ce_trains_llm=False` (the synthetic world): the [SEG] CE still trains lm_head, but none of
    it reaches the LLM below (the state that prompts SAM2)."""
    s, local = setup_and_batch
    batch = {k: v[0] for k, v in loop.global_batch(local, s.mesh, s.rules).items()}  # micro-batch 0
    options = forward_lib.ForwardOptions(ce_trains_llm=ce_trains_llm)

    def ce(params):
        model = nnx.merge(s.graphdef, *jax.tree.map(lambda x: x, (params, s.state.frozen)))  # this trace level
        out = forward_lib.forward(model, batch, options=options)
        logp = jax.nn.log_softmax(out.ce_logits, axis=-1)[..., model.config.seg_token_id]
        return -jnp.sum(jnp.where(out.seg_found, logp, 0.0)) / jnp.maximum(jnp.sum(out.seg_found), 1)

    grads = _flat(jax.grad(ce)(s.state.params))
    lm_head = [k for k in grads if k.startswith("llava/llm/lm_head/")]
    body = [k for k in grads if k.startswith(("llava/llm/model/", "llava/mm_projector/"))]
    assert lm_head and body
    assert all(np.abs(grads[k]).max() > 0 for k in lm_head)
    body_max = max(float(np.abs(grads[k]).max()) for k in body)
    assert (body_max > 0) == ce_trains_llm, body_max


def test_expression_word_loss_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 11)).astype(np.float32)
    ids = np.full((2, 3, 5), -1, np.int32)
    ids[0, 0, :3] = [1, 4, 4]
    ids[0, 1, :2] = [0, 10]
    ids[1, 2, :1] = [7]
    weights = rng.random((2, 3, 4)) > 0.3
    present = np.zeros((2, 3, 11))
    for b, e, v in zip(*np.nonzero(ids >= 0)):
        present[b, e, ids[b, e, v]] = 1.0
    t = present[:, :, None, :]
    bce = (np.logaddexp(0, logits) - logits * t).mean(-1)
    want = (bce * weights).sum() / weights.sum()
    got = losses_lib.expression_word_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(weights))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_word_loss_trains_the_llm_body_with_ce_trains_llm_false(setup_and_batch):
    """`train.word_weight` adds the expression-word loss; it reaches the LLM below lm_head even when the
    [SEG] CE does not (the synthetic world's setting), and weight 0 leaves the loss as GLUS's."""
    s, local = setup_and_batch
    batch = {k: v[0] for k, v in loop.global_batch(local, s.mesh, s.rules).items()}
    fwd = forward_lib.ForwardOptions(ce_trains_llm=False)
    banks = s.state.banks

    def total(params, weight):
        model = nnx.merge(s.graphdef, *jax.tree.map(lambda x: x, (params, s.state.frozen)))
        opts = forward_lib.LossOptions(contrastive=False, word_weight=weight)
        loss, metrics, _, _ = forward_lib.forward_and_loss(
            model, batch, banks, jax.random.PRNGKey(0), forward_options=fwd, loss_options=opts, dropout=False
        )
        return loss, metrics

    (l0, m0), (l1, m1) = total(s.state.params, 0.0), total(s.state.params, 2.0)
    assert "word_loss" not in m0 and float(m1["word_loss"]) > 0
    assert float(l1) == pytest.approx(float(l0) + float(m1["word_loss"]), rel=1e-5)
    word_only = lambda p: total(p, 1.0)[1]["word_loss"]  # noqa: E731
    grads = _flat(jax.grad(word_only)(s.state.params))
    body = [k for k in grads if k.startswith("llava/llm/model/layers/")]
    assert body and max(float(np.abs(grads[k]).max()) for k in body) > 0


def test_seg_cosine_compares_expressions_of_one_frame():
    x = jnp.zeros((1, 3, 2, 4)).at[0, 0, :, 0].set(1.0).at[0, 1, :, 0].set(1.0).at[0, 2, :, 1].set(1.0)
    valid = jnp.ones((1, 3, 2), bool)
    # pairs (0,1) cos 1, (0,2) and (1,2) cos 0, at both frames
    assert float(forward_lib.seg_cosine(x, valid)) == pytest.approx(1 / 3)
    assert float(forward_lib.seg_cosine(x, valid.at[0, 2].set(False))) == pytest.approx(1.0)
