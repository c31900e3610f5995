"""The GLUS that learns the synthetic world (`glus_jax.data.synthetic`) from scratch on a laptop CPU.

Same architecture as GLUS-S, every tower shrunk:

- CLIP: 224 px (the CLIP preprocessing crops 224), patch 28 -> 8 x 8 = 64 patches, which GLUS's 1x4
  average pooling turns into 16 image tokens per frame (a training sample's 8 frames add 8 x 15 tokens
  to its ~200 text tokens instead of 8 x 63).
- LLaMA: a few layers over the world tokenizer's vocabulary (`synthetic_tokenizer.VOCAB_SIZE`, [SEG] =
  `SEG_TOKEN_ID`).
- SAM2: the oracle's tiny hiera (`glus.tiny_sam2`) at the world's frame size (128 px by default: the
  generated frames are 128 x 128, so nothing is resampled twice; low-res masks are 32 x 32). Inference
  keeps the decoder's mask token 0, the only one GLUS's training trains: SAM2's
  `dynamic_multimask_via_stability` (quirk Q5) would swap in tokens 1-3 whenever token 0's mask is
  unstable, and in a SAM2 trained from scratch those are untrained (on 10 held-out videos the
  word-loss model scores J&F 0.264 with token 0, 0.202 with the swap).

`synthetic_world()` with no arguments is what `configs/synthetic.py` trains (preset "synthetic_world").
"""

from __future__ import annotations

import dataclasses

from glus_jax.config import from_dict, to_dict
from glus_jax.data import synthetic_tokenizer
from glus_jax.models import clip as clip_lib
from glus_jax.models import llama as llama_lib
from glus_jax.models import llava as llava_lib
from glus_jax.models.glus import GLUSConfig, tiny_sam2
from glus_jax.models.io import with_field

# Sizes chosen by the step-time measurements in the report of issue #8 (2 CPU cores, batch 2).
CLIP_WIDTH, CLIP_LAYERS, CLIP_HEADS, CLIP_PATCH = 128, 3, 4, 28
LLM_WIDTH, LLM_LAYERS, LLM_HEADS, LLM_MLP = 128, 3, 4, 384
SAM2_IMAGE_SIZE = 128


def synthetic_world(
    vocab_size: int = synthetic_tokenizer.VOCAB_SIZE,
    *,
    seg_token_id: int | None = None,
    image_size: int = SAM2_IMAGE_SIZE,
    **overrides,
) -> GLUSConfig:
    """GLUS for the synthetic world (module docstring). `seg_token_id` defaults to the world
    tokenizer's ([SEG] directly after the sentencepiece pieces: vocab_size - 3)."""
    clip = clip_lib.CLIPVisionConfig(
        hidden_size=CLIP_WIDTH,
        intermediate_size=4 * CLIP_WIDTH,
        num_layers=CLIP_LAYERS,
        num_heads=CLIP_HEADS,
        patch_size=CLIP_PATCH,
        image_size=224,
    )
    llama = llama_lib.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=LLM_WIDTH,
        intermediate_size=LLM_MLP,
        num_layers=LLM_LAYERS,
        num_heads=LLM_HEADS,
        max_position_embeddings=1024,
    )
    # select_layer -2 as GLUS: the last CLIP layer's output is never used (so it gets no gradient).
    llava = llava_lib.LlavaConfig(llama=llama, clip=clip)
    cfg = GLUSConfig(
        llava=llava,
        sam2=tiny_sam2(image_size, dynamic_multimask_via_stability=False),
        seg_token_id=vocab_size - 3 if seg_token_id is None else seg_token_id,
    )
    # Every tower has 2-5 layers: as straight-line code instead of scans the train step takes 0.45 s
    # instead of 0.54 on 2 CPU cores (`benchmarks.train --config synthetic [--scan-layers]`), with the
    # same numbers (the recipe reproduces the embedded model bit for bit) and compile time.
    cfg = from_dict(GLUSConfig, with_field(to_dict(cfg), "unroll_layers", True))
    return dataclasses.replace(cfg, **overrides)
