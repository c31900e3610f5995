"""`unroll_layers` (the synthetic world's preset sets it on every tower) runs a tower's stacked layers as
straight-line code instead of an `nnx.scan`: the same parameters must give the scanned tower's outputs
and parameter gradients (GLUS-tiny's towers, random weights, jitted on both sides)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.config import from_dict, to_dict
from glus_jax.models import glus as glus_lib
from glus_jax.models.io import with_field


@pytest.fixture(scope="module")
def models():
    cfg = glus_lib.tiny(sam2=glus_lib.tiny_sam2(64))
    unrolled_cfg = from_dict(glus_lib.GLUSConfig, with_field(to_dict(cfg), "unroll_layers", True))
    scanned, unrolled = glus_lib.GLUS(cfg, rngs=nnx.Rngs(0)), glus_lib.GLUS(unrolled_cfg, rngs=nnx.Rngs(0))
    assert not cfg.llava.llama.unroll_layers and unrolled_cfg.sam2.memory_encoder.unroll_layers
    return scanned, unrolled


def _normal(*shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _memory_attention(m):
    ma = m.visual_model.memory_attention
    curr, memory = _normal(2, 16, ma.cfg.d_model), _normal(2, 48, ma.cfg.kv_in_dim, seed=2)  # 4 x 4, 3 frames
    return lambda m: m.visual_model.memory_attention(curr, memory, 0.1 * curr, 0.1 * memory, feat_size=(4, 4))


def _memory_encoder(m):
    cfg = m.visual_model.memory_encoder.cfg
    side = 4 * cfg.mask_total_stride  # the mask at image resolution for a 4 x 4 feature map
    pix, masks = _normal(2, 4, 4, cfg.in_dim), _normal(2, side, side, 1, seed=2)
    return lambda m: m.visual_model.memory_encoder(pix, masks)[0]


def _clip(m):
    size = m.config.llava.clip.image_size
    pixels = _normal(2, size, size, 3)
    return lambda m: m.llava.vision_tower(pixels)


def _llama(m):
    embeds = _normal(2, 12, m.config.llava.llama.hidden_size)
    return lambda m: m.llava.llm(inputs_embeds=embeds)[1]


def _hiera(m):
    frames = _normal(2, 64, 64, 3)
    return lambda m: m.visual_model.image_encoder.trunk(frames)


# tower -> (its module in the model, model -> (model -> output) on fixed random inputs)
TOWERS = {
    "clip": (lambda m: m.llava.vision_tower, _clip),
    "llama": (lambda m: m.llava.llm, _llama),
    "hiera": (lambda m: m.visual_model.image_encoder.trunk, _hiera),
    "memory_attention": (lambda m: m.visual_model.memory_attention, _memory_attention),
    "memory_encoder": (lambda m: m.visual_model.memory_encoder, _memory_encoder),
}


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_unrolled_tower_matches_the_scanned_one(models, tower):
    part, make = TOWERS[tower]
    apply = make(models[0])

    def run(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def loss(p):
            m = nnx.merge(graphdef, p, rest)
            out = apply(m)
            return sum(jnp.sum(jnp.square(o)) for o in jax.tree.leaves(out)), out

        scans = "scan[" in str(jax.make_jaxpr(loss)(params))
        (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
        flat = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}
        prefix = tower_prefix(model, part(model))
        tower_grads = {k: v for k, v in flat.items() if k.startswith(prefix)}
        return scans, float(value), jax.tree.map(np.asarray, out), tower_grads

    (scan_s, v_s, out_s, g_s), (scan_u, v_u, out_u, g_u) = (run(m) for m in models)
    assert scan_s and not scan_u  # the flag did change the program
    assert v_u == pytest.approx(v_s, rel=1e-5)
    for a, b in zip(jax.tree.leaves(out_u), jax.tree.leaves(out_s)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert g_s and g_u.keys() == g_s.keys()
    scale = max(float(np.abs(g).max()) for g in g_s.values())
    assert scale > 0
    # Float32 sums in another order: differences relative to the tower's largest gradient.
    for k in g_s:
        np.testing.assert_allclose(g_u[k], g_s[k], rtol=1e-3, atol=1e-5 * scale, err_msg=k)


def tower_prefix(model, module) -> str:
    for path, m in nnx.iter_graph(model):
        if m is module:
            return "/".join(map(str, path)) + "/"
    raise AssertionError("tower not found in the model")
