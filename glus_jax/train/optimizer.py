"""Optimizer of GLUS training: what is trained, AdamW, the learning-rate schedule, gradient clipping.

Ports the optimizer side of GLUS `train_ds.py` (its DeepSpeed config):
- AdamW, betas (0.9, 0.95), eps 1e-8 (DeepSpeed's default), weight decay 0, lr 3e-4;
- `WarmupDecayLR` with `warmup_type="linear"`, `warmup_min_lr=0`: lr(k) = lr * k / W for k < W, then
  lr * max(0, (N - k) / max(1, N - W)), where k counts optimizer steps from 0 (DeepSpeed steps the
  scheduler once at construction, so the first update uses k = 0, i.e. lr = 0) and W = max(2, warmup)
  as DeepSpeed clamps it;
- `gradient_clipping: 1.0` (global norm of the accumulated, averaged gradient);
- trainable parameters: the LoRA adapters (r 8, alpha 16, dropout 0.05 on q_proj / v_proj, set on the
  model config) and every parameter whose path contains `lm_head`, `embed_tokens`, `mask_decoder` (the
  SAM2 `sam_mask_decoder`), `text_hidden_fcs` or `mm_projector`, the names train_ds.py re-enables after
  `get_peft_model` froze everything else. Frozen parameters get no optimizer state.

Gradient accumulation (10 micro-batches) is in the train step (`train/step.py`), not here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import optax
from flax import nnx

from glus_jax.models.llama import LoRAParam

# Path components train_ds.py makes trainable (`any(x in n for x in [...])` over parameter names); our
# SAM2 module is named `sam_mask_decoder` as in the state dict.
TRAINABLE = ("lm_head", "embed_tokens", "sam_mask_decoder", "text_hidden_fcs", "mm_projector")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    lr: float = 3e-4
    warmup_steps: int = 100
    total_steps: int = 3000  # optimizer steps (epochs x steps_per_epoch)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global-norm clipping; 0 = off

    def __post_init__(self):
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(
                f"OptimizerConfig: need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, "
                f"{self.warmup_steps}"
            )


def trainable_filter(names: Sequence[str] = TRAINABLE) -> nnx.filterlib.Filter:
    """nnx filter of the trained parameters: LoRA adapters + Params with one of `names` in their path."""
    return nnx.Any(LoRAParam, *(nnx.All(nnx.Param, nnx.PathContains(n)) for n in names))


def lr_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """DeepSpeed `WarmupDecayLR` (linear warm-up from 0, linear decay to 0 at total_steps)."""
    warmup = max(2, cfg.warmup_steps)

    def schedule(count):
        k = jnp.asarray(count, jnp.float32)
        up = k / warmup
        down = jnp.maximum(0.0, (cfg.total_steps - k) / max(1, cfg.total_steps - warmup))
        return cfg.lr * jnp.where(k < warmup, up, down)

    return schedule


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW with the schedule; `optax.inject_hyperparams` is not used, the lr of a
    step is `lr_schedule(cfg)(step)`."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            lr_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    )
    return optax.chain(*parts)
