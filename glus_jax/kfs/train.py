"""Training of the key-frame selector: L1 between predicted and achieved per-frame IoU.

As VISA's `iou_loss` (GLUS `kfs/model/VISA.py`; its CE term on the fixed answer text is dropped: the
answer is a template the selector never has to generate). One example = one expression of one video:
K candidate frames (a random frame in each of K equal segments), the prompt with a `[SCORE]` per
frame, and the targets file's IoU of those frames (`targets.py`). The step is a pure jitted function

    (params, frozen, opt_state, batch, key) -> (params, opt_state, metrics)

over the trainable parameters only (LoRA adapters, the `[SCORE]` row, the head: `trainable_filter`);
GLUS's weights are a constant argument. Every batch has the same static shapes: B examples, T prompt
tokens (the longest prompt of the whole training set, bucketed), K frames. CLIP and the projector are
frozen, so image tokens are computed outside the step, once per frame (`FeatureCache`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from glus_jax.data.tokenizer import GLUSTokenizer
from glus_jax.inference import video_io
from glus_jax.kfs import selector as sel_lib
from glus_jax.kfs.selector import KeyFrameSelector, SelectorPredictor, candidate_frames, trainable_filter
from glus_jax.kfs.targets import TargetsError
from glus_jax.models.clip import clip_preprocess


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 500
    batch_size: int = 4
    lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global norm; 0 = off
    seed: int = 0
    # Target of frames where the referred object is absent. GLUS's evaluator scores an empty
    # prediction there as J = 1, but such a frame is a poor key frame (nothing to propagate from);
    # None keeps the evaluator's value.
    absent_score: float | None = 0.0
    jitter: bool = True  # a random frame per segment (False: the segment centres, as at inference)
    log_every: int = 10
    feature_cache_frames: int = 20000  # image tokens kept in host memory (frames)


@dataclasses.dataclass(frozen=True)
class Example:
    """One expression of one training video and its per-frame targets."""

    key: str  # "<video>_<exp_id>"
    video: str
    expression: str
    frame_paths: tuple[str, ...]
    target: np.ndarray  # [T] float32


def examples_from_targets(
    data: dict, *, absent_score: float | None = 0.0, root: str | None = None
) -> list[Example]:
    """Examples of a targets dict (`targets.load_targets`), with frame paths from its dataset (`root`
    overrides the recorded dataset root)."""
    from glus_jax.data.formats import load_dataset

    d = data["dataset"]
    ds = load_dataset(d["benchmark"], root or d["root"], d["split"])
    videos = {v.name: v for v in ds.videos}
    out = []
    for key, e in sorted(data["entries"].items()):
        v = videos.get(e["video"])
        if v is None:
            raise TargetsError(
                f"targets entry {key!r}: video {e['video']!r} is not in {d['benchmark']} {d['split']}"
            )
        if list(v.frame_names) != list(e["frames"]):
            raise TargetsError(f"targets entry {key!r}: frames differ from the dataset's video {v.name!r}")
        t = np.asarray(e["iou"], np.float32)
        if absent_score is not None:
            t = np.where(np.asarray(e["present"], bool), t, np.float32(absent_score))
        out.append(Example(key, v.name, e["expression"], tuple(v.frame_paths), t))
    if not out:
        raise TargetsError("the targets file has no entries")
    return out


class FeatureCache:
    """Image tokens [F, D] per (video, frame), computed by the selector's frozen CLIP + projector in
    batches of K frames and kept (least recently used first out) up to `max_frames`."""

    def __init__(self, selector: KeyFrameSelector, max_frames: int = 20000):
        self.graphdef, self.state = nnx.split(selector)
        self.max_frames = max_frames
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, ex: Example, frames: Sequence[int]) -> np.ndarray:
        """[K, F, D] float32 for frames (indices into the example's video)."""
        keys = [(ex.video, int(f)) for f in frames]
        missing = sorted({f for (_, f) in keys if (ex.video, f) not in self._cache})
        if missing:
            images = video_io.read_frames([ex.frame_paths[f] for f in missing], ex.video).frames
            pixels = clip_preprocess(images)
            k = len(frames)  # encode in fixed-size chunks (one compiled shape)
            for i in range(0, len(missing), k):
                chunk = pixels[i : i + k]
                pad = k - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                feats = np.asarray(sel_lib._encode(self.graphdef, self.state, chunk))[: k - pad]
                for f, x in zip(missing[i : i + k], feats):
                    self._cache[(ex.video, f)] = x
        for key in keys:
            self._cache.move_to_end(key)
        out = np.stack([self._cache[key] for key in keys])
        while len(self._cache) > self.max_frames:
            self._cache.popitem(last=False)
        return out


@functools.lru_cache(maxsize=16)
def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """clip (global norm) -> AdamW with linear warm-up and linear decay to 0 at `steps`. Cached per
    config, so equal configs give the same object and share the compiled train step."""
    warm = max(1, min(cfg.warmup_steps, cfg.steps - 1))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.lr, warm),
            optax.linear_schedule(cfg.lr, 0.0, max(1, cfg.steps - warm)),
        ],
        [warm],
    )
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def l1_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted mean |pred - target| over [B, K]."""
    return jnp.sum(jnp.abs(pred - target) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 5))
def train_step(graphdef, tx, max_len, params, frozen, opt_state, batch, key):
    """One optimizer step (module docstring). batch: input_ids, attention_mask [B, T], features
    [B, K, F, D], score_index, target, weight [B, K]; key: LoRA dropout. params and opt_state are
    donated. Returns (params, opt_state, {"loss", "grad_norm"})."""

    def loss_fn(params):
        # tree.map rebuilds the (non-differentiated) frozen Variables at this trace level: NNX refuses
        # Variables from the jit level inside the LLM's nnx.scan.
        model = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (params, frozen)))
        pred = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["features"],
            batch["score_index"],
            max_len=max_len,
            dropout_rng=key,
        )
        return l1_loss(pred, batch["target"], batch["weight"])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, max_len: int) -> Callable:
    """`train_step` with its static arguments bound: step(params, frozen, opt_state, batch, key)."""
    return functools.partial(train_step, graphdef, tx, max_len)


def _prompt_rows(tokenizer: GLUSTokenizer, selector: KeyFrameSelector, examples: Sequence[Example]) -> dict:
    enc = sel_lib.encode_prompts(
        tokenizer,
        [e.expression for e in examples],
        selector.config,
        use_mm_start_end=selector.llava.config.mm_use_im_start_end,
    )
    return enc


def make_batch(
    examples: Sequence[Example],
    rows: Sequence[int],
    prompts: dict,
    features: FeatureCache,
    k: int,
    rng: np.random.Generator | None,
) -> dict[str, np.ndarray]:
    """The arrays of one batch: examples `rows`, candidates jittered with `rng` (None: centres)."""
    feats, targets = [], []
    for r in rows:
        ex = examples[r]
        cand = candidate_frames(len(ex.target), k, rng)
        feats.append(features.get(ex, cand))
        targets.append(ex.target[cand])
    idx = np.asarray(rows)
    return {
        "input_ids": prompts["input_ids"][idx],
        "attention_mask": prompts["attention_mask"][idx],
        "score_index": prompts["score_index"][idx],
        "features": np.stack(feats),
        "target": np.stack(targets).astype(np.float32),
        "weight": np.ones((len(rows), k), np.float32),
    }


def evaluate_l1(
    selector: KeyFrameSelector, tokenizer: GLUSTokenizer, examples: Sequence[Example], features: FeatureCache
) -> float:
    """Mean L1 over the examples' centre candidates (the frames scored at inference)."""
    pred = SelectorPredictor(selector, tokenizer)
    k = selector.config.num_candidates
    errs = []
    for ex in examples:
        cand = candidate_frames(len(ex.target), k)
        s = pred.scores_from_features(jnp.asarray(features.get(ex, cand)), [ex.expression])[0]
        errs.append(np.abs(s - ex.target[cand]).mean())
    return float(np.mean(errs))


def train_selector(
    selector: KeyFrameSelector,
    tokenizer: GLUSTokenizer,
    examples: Sequence[Example],
    cfg: TrainConfig = TrainConfig(),
    *,
    features: FeatureCache | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Train `selector` in place on `examples`; returns the logged metrics (step, loss, grad_norm)."""
    if not examples:
        raise TargetsError("no training examples")
    features = features or FeatureCache(selector, cfg.feature_cache_frames)
    k = selector.config.num_candidates
    prompts = _prompt_rows(tokenizer, selector, examples)
    max_len = sel_lib.spliced_length(
        prompts["input_ids"].shape[1], selector.config, selector.llava.config.tokens_per_image
    )
    graphdef, params, frozen = nnx.split(selector, trainable_filter(), ...)
    # The step donates its params: give it copies, so arrays the selector (and whoever split it,
    # e.g. the feature cache) still holds stay alive.
    params = jax.tree.map(jnp.copy, params)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, max_len)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    history = []
    t0 = time.perf_counter()
    for s in range(cfg.steps):
        rows = rng.choice(len(examples), cfg.batch_size, replace=len(examples) < cfg.batch_size)
        batch = make_batch(examples, rows, prompts, features, k, rng if cfg.jitter else None)
        params, opt_state, m = step(params, frozen, opt_state, batch, jax.random.fold_in(key, s))
        if (s + 1) % cfg.log_every == 0 or s == cfg.steps - 1:
            rec = {"step": s + 1, **{n: float(v) for n, v in m.items()}, "seconds": time.perf_counter() - t0}
            if not np.isfinite(rec["loss"]):
                raise FloatingPointError(f"key-frame selector training: loss {rec['loss']} at step {s + 1}")
            history.append(rec)
            if log:
                log(
                    f"step {rec['step']}: L1 {rec['loss']:.4f}  grad norm {rec['grad_norm']:.3f}"
                    f"  ({rec['seconds']:.1f} s)"
                )
    nnx.update(selector, params)
    return history


def train_from_targets(
    glus_model,
    tokenizer: GLUSTokenizer,
    targets: dict,
    out: str | Path | None,
    *,
    selector_config: sel_lib.SelectorConfig | None = None,
    train_config: TrainConfig | None = None,
    root: str | None = None,
    log: Callable[[str], None] | None = print,
    source: dict | None = None,
) -> tuple[KeyFrameSelector, GLUSTokenizer, dict]:
    """A new selector on `glus_model`, trained on a targets dict and saved to `out`.
    Returns (selector, tokenizer, report with the L1 before and after)."""
    selector_config = selector_config or sel_lib.SelectorConfig()
    train_config = train_config or TrainConfig()
    selector, tok = sel_lib.from_glus(glus_model, tokenizer, selector_config, seed=train_config.seed)
    examples = examples_from_targets(targets, absent_score=train_config.absent_score, root=root)
    features = FeatureCache(selector, train_config.feature_cache_frames)
    before = evaluate_l1(selector, tok, examples, features)
    history = train_selector(selector, tok, examples, train_config, features=features, log=log)
    after = evaluate_l1(selector, tok, examples, features)
    report = {"examples": len(examples), "l1_before": before, "l1_after": after, "history": history}
    if log:
        log(f"L1 on the training targets (centre frames): {before:.4f} -> {after:.4f}")
    if out is not None:
        sel_lib.save_selector(
            out,
            selector,
            tok,
            source={
                **(source or {}),
                "train": dataclasses.asdict(train_config),
                "l1_before": before,
                "l1_after": after,
            },
        )
    return selector, tok, report
