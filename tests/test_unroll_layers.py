"""`unroll_layers` (the synthetic world's preset sets it on every tower) runs a tower's stacked layers as
straight-line code instead of an `nnx.scan`: the same parameters must give the scanned tower's outputs
and parameter gradients (GLUS-tiny's towers, random weights, jitted on both sides), and the unrolled
program must have no loop left."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.models import glus as glus_lib
from glus_jax.models.clip import CLIPVisionTower
from glus_jax.models.llama import LlamaForCausalLM
from glus_jax.models.sam2.hieradet import Hiera
from glus_jax.models.sam2.memory_attention import MemoryAttention
from glus_jax.models.sam2.memory_encoder import MemoryEncoder

CFG = glus_lib.tiny(sam2=glus_lib.tiny_sam2(64))
MA, ME = CFG.sam2.memory_attention, CFG.sam2.memory_encoder
# XLA drops a loop of one iteration, so every scan here runs at least two layers: CLIP with 3 layers (LLaVA
# reads the second to last), the hiera with two blocks in its first stage.
CLIP = dataclasses.replace(CFG.llava.clip, num_layers=3)
HIERA = dataclasses.replace(CFG.sam2.image_encoder.trunk, stages=(2, 1, 2, 1))


def _normal(*shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


# tower -> (module class, its config, inputs, call)
TOWERS = {
    "clip": (CLIPVisionTower, CLIP, (_normal(1, 224, 224, 3),), lambda m, x: m(x)),
    "llama": (LlamaForCausalLM, CFG.llava.llama, (_normal(2, 12, CFG.llava.llama.hidden_size),),
              lambda m, x: m(inputs_embeds=x)[1]),
    "hiera": (Hiera, HIERA, (_normal(1, 64, 64, 3),), lambda m, x: m(x)),
    # a 4 x 4 map attending to 3 memory frames
    "memory_attention": (MemoryAttention, MA,
                         (_normal(2, 16, MA.d_model), _normal(2, 48, MA.kv_in_dim, seed=2)),
                         lambda m, curr, mem: m(curr, mem, 0.1 * curr, 0.1 * mem, feat_size=(4, 4))),
    # a 4 x 4 feature map and its mask logits at image resolution
    "memory_encoder": (MemoryEncoder, ME, (_normal(1, 4, 4, ME.in_dim),
                                           _normal(1, 4 * ME.mask_total_stride, 4 * ME.mask_total_stride, 1)),
                       lambda m, pix, masks: m(pix, masks)[0]),
}


def _run(module: nnx.Module, inputs, call):
    """(the compiled program has a while loop, loss, outputs, flat parameter gradients) of sum(outputs^2)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p):
        out = call(nnx.merge(graphdef, p, rest), *inputs)
        return sum(jnp.sum(jnp.square(o)) for o in jax.tree.leaves(out)), out

    compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile()
    loops = re.search(r"\swhile\(", compiled.as_text()) is not None
    (value, out), grads = compiled(params)
    flat = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}
    return loops, float(value), jax.tree.map(np.asarray, out), flat


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_unrolled_tower_matches_the_scanned_one(tower):
    cls, cfg, inputs, call = TOWERS[tower]
    assert not cfg.unroll_layers
    scanned = cls(cfg, rngs=nnx.Rngs(0))
    unrolled = cls(dataclasses.replace(cfg, unroll_layers=True), rngs=nnx.Rngs(0))
    loop_s, v_s, out_s, g_s = _run(scanned, inputs, call)
    loop_u, v_u, out_u, g_u = _run(unrolled, inputs, call)
    assert loop_s and not loop_u  # the flag changed the program
    assert v_u == pytest.approx(v_s, rel=1e-5)
    for a, b in zip(jax.tree.leaves(out_u), jax.tree.leaves(out_s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert g_s and g_u.keys() == g_s.keys()
    scale = max(float(np.abs(g).max()) for g in g_s.values())
    assert scale > 0
    # Float32 sums in another order: differences relative to the tower's largest gradient.
    for k in g_s:
        np.testing.assert_allclose(g_u[k], g_s[k], rtol=1e-3, atol=1e-5 * scale, err_msg=k)
