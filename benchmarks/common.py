"""Shared pieces of the benchmarks: identical random weights for both sides, a synthetic video, FLOP counts,
peak memory.

Weights. `build_checkpoint` random-initialises the PyTorch side (transformers `LlamaForCausalLM` and
`CLIPVisionModel`, the `sam2` package's `SAM2Base` from a SAM2 2.0 yaml, the projector and
`text_hidden_fcs`), and writes it in the layout of a released GLUS checkpoint: a GLUS directory
(config.json, model.safetensors with GLUS key names, the tiny GLUS tokenizer), a CLIP directory and the
SAM2 yaml. `load_pair` loads it on both sides through the public paths (`TorchGLUS.from_pretrained`,
`tools.convert_weights.glus.convert_glus`). A random LLM does not emit [SEG]; `calibrate_seg_row` sets the
[SEG] row of lm_head on both sides (as the oracle did, README section 3) so that every step emits it.

FLOPs. XLA's cost analysis counts a while loop's body once, whatever its trip count, so every count here
lowers the function with every `lax.scan` fully unrolled (`unrolled_scans`); the count is of the lowered
(unoptimised) program: what the code asks for, dots and convolutions as 2 flops per multiply-add,
elementwise ops as 1. Ours: the sum over every jitted call the pipeline made (`CallLog`). The reference:
the same counter on our modules at the shapes the reference algorithm computes (`reference_flops`:
CLIP with all its layers on every image of every prompt, the LLM over the whole prompt with logits and
`text_hidden_fcs` at every position, SAM2 per frame with only the memory frames present), cross-checked
against PyTorch's own `FlopCounterMode` on the reference run (`torch_flops`, matmuls/convs only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.configs import BenchConfig

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO / "tests" / "golden" / "tok_glus_tiny"
CLIP_PREPROCESSOR = REPO / "tests" / "golden" / "llava_clip_vit_tiny" / "preprocessor_config.json"
EXPRESSION = "The red ball moving to the right."
SEG_LOGIT_MARGIN = 8.0  # how far the [SEG] logit is set above every other logit at the calibration steps


# ------------------------------------------------------------------------------------------ the video


def synthetic_frames(num_frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8: a textured background with three moving ellipses (red, green, blue)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([60 + 40 * xx / w, 70 + 30 * yy / h, 90 + 20 * (xx + yy) / (h + w)], -1)
    texture = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    objects = [
        ((220, 40, 40), 0.3 * h, 0.2 * w, 0.12 * h, 0.09 * w, 0.004 * h, 0.010 * w),
        ((40, 200, 60), 0.6 * h, 0.7 * w, 0.10 * h, 0.14 * w, -0.003 * h, -0.006 * w),
        ((50, 70, 220), 0.45 * h, 0.45 * w, 0.08 * h, 0.08 * w, 0.006 * h, 0.002 * w),
    ]
    out = np.empty((num_frames, h, w, 3), np.uint8)
    for t in range(num_frames):
        img = base + texture
        for color, cy, cx, ay, ax, vy, vx in objects:
            py = (cy + vy * t) % h
            px = (cx + vx * t) % w
            inside = ((yy - py) / ay) ** 2 + ((xx - px) / ax) ** 2 < 1
            img[inside] = np.asarray(color, np.float32) + texture[inside]
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_video(frames: np.ndarray, folder: Path) -> Path:
    """JPEG frames (quality 95) named 00000.jpg... as MeViS / Ref-YouTube-VOS store them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


# ------------------------------------------------------------------------------------------ weights


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    glus_dir: Path
    clip_dir: Path
    sam_yaml: Path


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_checkpoint(cfg: BenchConfig, root: Path, *, seed: int = 0, save_dtype: str = "float32") -> Checkpoint:
    """Random PyTorch weights of `cfg` written as a GLUS checkpoint + CLIP directory + SAM2 yaml."""
    import torch
    import yaml
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from benchmarks.torch_reference import build_sam2_base

    root = Path(root)
    glus_dir, clip_dir = root / "glus", root / "clip"
    for d in (glus_dir, clip_dir):
        d.mkdir(parents=True, exist_ok=True)
    sam_yaml = root / "sam2.yaml"
    sam_yaml.write_text(yaml.safe_dump(cfg.sam2.yaml(), sort_keys=False))
    hf = cfg.hf_config()
    dt = _torch_dtype(save_dtype)

    torch.manual_seed(seed)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            max_position_embeddings=hf["max_position_embeddings"],
            rms_norm_eps=hf["rms_norm_eps"],
            tie_word_embeddings=False,
        )
    )
    state = {k: v for k, v in llama.state_dict().items() if not k.endswith("inv_freq")}
    del llama
    projector = torch.nn.Linear(cfg.clip_hidden, cfg.hidden_size)
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    fcs = torch.nn.Sequential(
        torch.nn.Linear(cfg.hidden_size, cfg.hidden_size), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden_size, cfg.out_dim)
    )
    state.update({f"model.text_hidden_fcs.0.{k}": v for k, v in fcs.state_dict().items()})
    sam = build_sam2_base(cfg.sam2.yaml())
    state.update({f"model.visual_model.{k}": v for k, v in sam.state_dict().items()})
    del sam
    save_file({k: v.detach().to(dt).contiguous() for k, v in state.items()}, str(glus_dir / "model.safetensors"))
    del state
    (glus_dir / "config.json").write_text(json.dumps(hf, indent=2))
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, glus_dir / f.name)

    clip = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in cfg.clip_config().items() if k != "architectures"}))
    # The 4.x layout of openai/clip-vit-large-patch14 (`vision_model.` prefix), as GLUS loads it.
    clip_state = {
        (k if k.startswith("vision_model.") else f"vision_model.{k}"): v.detach().to(dt).contiguous()
        for k, v in clip.state_dict().items()
    }
    save_file(clip_state, str(clip_dir / "model.safetensors"))
    (clip_dir / "config.json").write_text(json.dumps(cfg.clip_config(), indent=2))
    shutil.copy(CLIP_PREPROCESSOR, clip_dir / "preprocessor_config.json")
    return Checkpoint(glus_dir, clip_dir, sam_yaml)


def load_torch(ckpt: Checkpoint, cfg: BenchConfig, *, device: str = "cpu", attn: str = "eager"):
    """The PyTorch reference (`TorchGLUS`) on the checkpoint, in `cfg.dtype`."""
    from benchmarks.torch_reference import TorchGLUS

    return TorchGLUS.from_pretrained(
        ckpt.glus_dir, ckpt.clip_dir, ckpt.sam_yaml, device=device, dtype=_torch_dtype(cfg.dtype),
        attn_implementation=attn, image_size=cfg.sam2.image_size,
    )


def load_ours(ckpt: Checkpoint, cfg: BenchConfig):
    """(GLUS model, tokenizer) converted from the checkpoint with the public converter."""
    from tools.convert_weights.glus import convert_glus

    model, tokenizer, _ = convert_glus(ckpt.glus_dir, ckpt.clip_dir, ckpt.sam_yaml, dtype=cfg.dtype)
    return model, tokenizer


def abstract_model(cfg: BenchConfig):
    """The GLUS model of `cfg` with abstract (shape-only) parameters, and the tiny GLUS tokenizer.

    Built from the same yaml / config.json the checkpoint would carry, without any weights."""
    import tempfile

    import yaml
    from flax import nnx

    from glus_jax.data.tokenizer import GLUSTokenizer
    from glus_jax.models import llava as llava_lib
    from glus_jax.models.glus import GLUS, GLUSConfig
    from glus_jax.models.sam2 import config as sam2_config

    tokenizer = GLUSTokenizer.from_dir(TOKENIZER_DIR, add_glus_tokens=False)
    hf = dict(cfg.hf_config(), vocab_size=cfg.count_vocab or cfg.vocab_size)
    llava_cfg = llava_lib.from_hf_config(hf, cfg.clip_config(), projector_type="linear", dtype=cfg.dtype)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(yaml.safe_dump(cfg.sam2.yaml(), sort_keys=False))
        f.flush()
        sam_cfg = dataclasses.replace(sam2_config.from_yaml(f.name), dtype=cfg.dtype)
    gcfg = GLUSConfig(llava=llava_cfg, sam2=sam_cfg, seg_token_id=tokenizer.seg_token_id)
    return nnx.eval_shape(lambda: GLUS(gcfg, rngs=nnx.Rngs(0))), tokenizer


# ------------------------------------------------------------------------------------- [SEG] emission


def step_prompts(tokenizer, expression: str, num_steps: int, question_frames: int = 4) -> list[list[int]]:
    """Prompt ids of the steps of one pass when every step emits [SEG] (the reference's history)."""
    from glus_jax.data import conversation as conv

    out = []
    for s in range(num_steps):
        rounds = min(s + 1, question_frames)
        out.append(tokenizer.tokenizer_image_token(conv.inference_prompt(expression, rounds)))
    return out


def calibrate_seg_row(ref, model, frames: np.ndarray, expression: str, steps: Sequence[int]) -> dict[str, Any]:
    """Set lm_head's [SEG] row of the reference (and of our `model`, unless None) to alpha * u so that
    [SEG] is the greedy token at `steps`.

    u: the normalised mean direction of the final-norm hidden states at the last prompt position of those
    steps (computed by the reference; both sides have the same weights); alpha: the smallest value that
    puts the [SEG] logit SEG_LOGIT_MARGIN above every other logit at each of them. The hidden states do not
    depend on lm_head, so one pass suffices (the oracle iterated to the same fixed point).
    """
    import torch

    from glus_jax.inference import protocol

    seg = ref.seg_token_id
    t = len(frames)
    context = protocol.context_frames(t, ref.context_frame_num)
    prompts = step_prompts(ref.tokenizer, expression, max(steps) + 1, ref.question_frame_num)
    hidden, others = [], []
    with torch.inference_mode():
        for s in steps:
            window = [w for w in protocol.question_window(s, ref.question_frame_num)]
            images = [ref.preprocess_clip(frames[f]) for f in [*context, *window]]
            feats = ref.encode_images(torch.stack(images))
            embeds = ref.splice(prompts[s], feats)
            h = ref.llm.model(inputs_embeds=embeds[None], use_cache=False).last_hidden_state[0, -1].float()
            logits = ref.llm.lm_head(h.to(ref.dtype)).float()
            logits[seg] = -torch.inf
            hidden.append(h)
            others.append(float(logits.max()))
    hs = torch.stack(hidden)
    u = torch.nn.functional.normalize(torch.nn.functional.normalize(hs, dim=-1).mean(0), dim=0)
    proj = hs @ u
    if bool((proj <= 0).any()):
        raise RuntimeError("[SEG] calibration: hidden states point away from their mean direction")
    alpha = float(max((o + SEG_LOGIT_MARGIN) / float(p) for o, p in zip(others, proj)))
    row = (alpha * u).to(ref.dtype)
    with torch.no_grad():
        ref.llm.lm_head.weight[seg] = row
    if model is not None:
        kernel = model.llava.llm.lm_head.kernel
        kernel.set_value(kernel[...].at[:, seg].set(jnp.asarray(row.float().cpu().numpy(), kernel[...].dtype)))
    return {"alpha": alpha, "steps": list(steps), "projections": [float(p) for p in proj]}


# -------------------------------------------------------------------------------------------- FLOPs


@contextlib.contextmanager
def unrolled_scans():
    """Trace every `jax.lax.scan` fully unrolled (so XLA's cost analysis sees every iteration).

    Only for counting: functions traced inside must be fresh (a jitted function traced before keeps its
    cached, rolled program; see `lowered_flops`)."""
    original = jax.lax.scan

    @functools.wraps(original)
    def scan(*args, **kwargs):
        kwargs["unroll"] = True
        return original(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype) if hasattr(x, "dtype") else x, tree)


def lowered_flops(fn: Callable, *args, **static) -> float:
    """FLOPs of fn(*args, **static) (args may be abstract), every scan unrolled."""
    fresh = jax.jit(lambda *a: fn(*a, **static))  # a new function object: no cached (rolled) trace
    with unrolled_scans():
        cost = fresh.lower(*args).cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


class CallLog:
    """Records every kernel call of a GLUSPipeline (see `CountingPipeline`) and counts their FLOPs.

    Each entry: (stage, the jitted kernel, its GraphDef, abstract args, static kwargs)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self._attention_cache: dict[Any, float] = {}

    def __call__(self, stage: str, kernel: Callable, graphdef, args: tuple, static: dict, memory_frames=None) -> None:
        """A call `kernel(graphdef, *args, **static)` of a jitted kernel (graphdef static).

        memory_frames: for the propagation kernel, the number of memory frames each frame of the chunk
        attends to (the branch its memory-attention switch takes; see `flops`)."""
        self.calls.append((stage, kernel, graphdef, abstract(args), dict(static), memory_frames))

    def flops(self) -> dict[str, float]:
        """FLOPs per stage (summed over calls; one lowering per distinct signature).

        XLA counts a conditional as its most expensive branch. The propagation kernel's memory attention
        is a switch over the number of memory frames present, so its count is corrected per frame: the
        largest branch is replaced by the one taken."""
        cache: dict[Any, float] = {}
        out: dict[str, float] = {}
        for stage, kernel, graphdef, args, static, memory_frames in self.calls:
            leaves, treedef = jax.tree.flatten(args)
            key = (kernel, graphdef, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves),
                   tuple(sorted(static.items())))
            if key not in cache:
                raw = kernel.__wrapped__
                cache[key] = lowered_flops(lambda *a, **k: raw(graphdef, *a, **k), *args, **static)
            total = cache[key]
            if memory_frames is not None:
                state, text = args[0], args[3]  # (state, bank, feats, text, ok, frame_ids)
                e = text.shape[1]
                largest = self._attention_flops(graphdef, state, e, None)
                total += sum(self._attention_flops(graphdef, state, e, k) - largest for k in memory_frames)
            out[stage] = out.get(stage, 0.0) + total
        return out

    def buffer_bytes(self) -> dict[str, int]:
        """Largest XLA working buffer (temp + output) of each kernel over its logged shapes, from the
        compiled programs' memory analysis (allocator-independent; arguments such as weights excluded)."""
        out: dict[str, int] = {}
        seen = set()
        for _, kernel, graphdef, args, static, _ in self.calls:
            leaves, treedef = jax.tree.flatten(args)
            key = (kernel, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves), tuple(sorted(static.items())))
            if key in seen:
                continue
            seen.add(key)
            m = kernel.lower(graphdef, *args, **static).compile().memory_analysis()
            name = kernel.__name__.lstrip("_")
            out[name] = max(out.get(name, 0), int(m.temp_size_in_bytes + m.output_size_in_bytes))
        return out

    def _attention_flops(self, graphdef, state, e: int, n: int | None) -> float:
        """Memory attention of E expressions over n memory frames (None: num_maskmem)."""
        key = (graphdef, e, n)
        if key not in self._attention_cache:
            self._attention_cache[key] = self._lower_attention(graphdef, state, e, n)
        return self._attention_cache[key]

    @staticmethod
    def _lower_attention(graphdef, state, e: int, n: int | None) -> float:
        from flax import nnx

        sc = _glus_config(graphdef, state).sam2
        n = sc.num_maskmem if n is None else n
        if n == 0:
            return 0.0
        side = sc.image_embedding_size
        hw = side * side
        dt = jnp.dtype(sc.dtype)

        def attend(state, curr, memory, mask):
            sam = nnx.merge(graphdef, state).visual_model
            return sam.memory_attention(curr, memory, curr, memory, memory_mask=mask, feat_size=(side, side))

        mask = None if e == 1 else jax.ShapeDtypeStruct((e, n * hw), jnp.bool_)
        return lowered_flops(
            attend, state, jax.ShapeDtypeStruct((e, hw, sc.hidden_dim), dt),
            jax.ShapeDtypeStruct((e, n * hw, sc.mem_dim), dt), mask,
        )


def _glus_config(graphdef, state):
    """The GLUSConfig of a split GLUS model (abstract state is fine)."""
    from flax import nnx

    return nnx.merge(graphdef, state).config


def memory_frame_ids(frame_id: int, stride: int, num_maskmem: int = 7) -> list[int]:
    """Frame ids GLUS selects at `frame_id` (Q4), oldest first; negative ids included."""
    ids = []
    for t_pos in range(num_maskmem):
        t_rel = num_maskmem - t_pos
        ids.append(frame_id - 1 if t_rel == 1 else ((frame_id - 2) // stride) * stride - (t_rel - 2) * stride)
    return ids


def _counting_pipeline():
    from glus_jax.inference import pipeline as pipeline_lib
    from glus_jax.inference.pipeline import GLUSPipeline

    class CountingPipeline(GLUSPipeline):
        """A GLUSPipeline that logs every kernel call into `log` (a CallLog) before running it."""

        def __init__(self, *args, log: CallLog, **kwargs):
            super().__init__(*args, **kwargs)
            self.log = log
            self._inserted: list[set[int]] = []  # per expression: frames in the memory bank (this clip)

        def _record(self, stage, kernel, args, static):
            memory_frames = None
            if kernel is pipeline_lib._propagate:
                _, _, _, ok, frame_ids = args
                memory_frames = []
                for f, o in zip(np.asarray(frame_ids).tolist(), np.asarray(ok)):
                    if f == 0:
                        self._inserted = [set() for _ in o]
                    ids = memory_frame_ids(f, static["mem_stride"], self.config.sam2.num_maskmem)
                    memory_frames.append(max(sum(g >= 0 and g in ins for g in ids) for ins in self._inserted))
                    for ins, ok_j in zip(self._inserted, o):
                        if ok_j:
                            ins.add(f)
            self.log(stage, kernel, self.graphdef, (self.state, *args), static, memory_frames)

        def _call(self, stage, kernel, *args, **static):
            self._record(stage, kernel, args, static)
            return super()._call(stage, kernel, *args, **static)

    class DryPipeline(CountingPipeline):
        """Runs the pipeline on abstract weights: each kernel is shape-evaluated (nothing executes) and
        returns zeros of its output shapes, integer outputs (generated tokens) set to [SEG]."""

        def _call(self, stage, kernel, *args, **static):
            self._record(stage, kernel, args, static)
            shapes = jax.eval_shape(functools.partial(kernel, self.graphdef, **static), self.state, *args)
            seg = self.config.seg_token_id

            def fill(s):
                return np.full(s.shape, seg if jnp.issubdtype(s.dtype, jnp.integer) else 0, s.dtype)

            return jax.tree.map(fill, shapes)

    return CountingPipeline, DryPipeline


def __getattr__(name):  # CountingPipeline / DryPipeline, built on first use (import cost)
    if name in ("CountingPipeline", "DryPipeline"):
        counting, dry = _counting_pipeline()
        globals().update(CountingPipeline=counting, DryPipeline=dry)
        return globals()[name]
    raise AttributeError(name)


@dataclasses.dataclass
class StepPlan:
    """What one reference step computes: CLIP images, the expanded prompt length, memory frames used
    (None: no [SEG] emitted, so no SAM2 work)."""

    images: int
    expanded_len: int
    memory_frames: int | None


def reference_plan(tokenizer, cfg_glus, num_frames: int, expression: str, mem_stride: int = 3) -> list[StepPlan]:
    """The steps of a plain (no key frame) reference run in which every step emits [SEG]."""
    from glus_jax.inference import protocol

    q, c = cfg_glus.question_frames, cfg_glus.context_frames
    f = cfg_glus.tokens_per_image
    prompts = step_prompts(tokenizer, expression, num_frames, q)
    plan = []
    for s, ids in enumerate(prompts):
        n_img = c + len(protocol.question_window(s, q))
        mem = _memory_count(s, mem_stride) if s else 0
        plan.append(StepPlan(n_img, len(ids) + (f - 1) * n_img, mem))
    return plan


def _memory_count(frame_id: int, stride: int, num_maskmem: int = 7) -> int:
    """How many memory frames GLUS attends to at `frame_id` when every earlier frame is in the bank."""
    n = 0
    for t_pos in range(num_maskmem):
        t_rel = num_maskmem - t_pos
        prev = frame_id - 1 if t_rel == 1 else ((frame_id - 2) // stride) * stride - (t_rel - 2) * stride
        n += prev >= 0
    return n


def plan_from_reference_run(out: dict[str, Any], tokens_per_image: int) -> list[StepPlan]:
    """The StepPlans of an actual `TorchGLUS.segment` run (its prompts, [SEG] emission, memory frames)."""
    plan = []
    for step in out["steps"]:
        ids = np.asarray(step["input_ids"])
        n_img = int((ids < 0).sum())
        mem = None if not step["seg_emitted"] else len(step["memory_frames"] or [])
        plan.append(StepPlan(n_img, len(ids) + (tokens_per_image - 1) * n_img, mem))
    return plan


def reference_flops(model, plan: Sequence[StepPlan], frame_size: tuple[int, int]) -> dict[str, float]:
    """FLOPs of the reference algorithm per stage ("clip", "llm", "sam2") summed over `plan`, counted on
    our modules at the reference's shapes (`model` may be abstract)."""
    from flax import nnx

    from glus_jax.models import glus as glus_lib
    from glus_jax.models.sam2 import memory_bank as mb

    graphdef, state = nnx.split(model)
    cfg = model.config
    state = abstract(state)
    clip_cfg = cfg.llava.clip
    d_llm = cfg.llava.llama.hidden_size
    dt = jnp.dtype(cfg.llava.llama.dtype)

    def clip_images(state, pixels):
        m = nnx.merge(graphdef, state)
        tower = m.llava.vision_tower
        x = tower.encode(pixels, clip_cfg.num_layers)  # HF runs every layer (hidden_states[-2] is read)
        pooled = tower.post_layernorm(x[:, 0])  # CLIPVisionModel's pooler output
        from glus_jax.models.llava import pool_image_tokens

        return m.llava.mm_projector(pool_image_tokens(x[:, 1:], m.llava.config.pool_size)), pooled

    def llm(state, embeds):
        m = nnx.merge(graphdef, state)
        hidden, _ = m.llava.llm.model(inputs_embeds=embeds)
        return m.llava.llm.logits(hidden), m.text_hidden_fcs(hidden)  # full logits; fcs at every row

    sam_cfg = cfg.sam2
    hw = sam_cfg.image_embedding_size**2

    def sam_frame(state, frame, memory, text, *, n_mem):
        m = nnx.merge(graphdef, state)
        sam = m.visual_model
        feats = sam.encode_image(glus_lib.sam_preprocess(frame, sam_cfg.image_size))
        _, h, w, c = feats.vision_features.shape
        curr = feats.vision_features.reshape(1, h * w, c)
        pos = feats.vision_pos_enc.reshape(1, h * w, c)
        if n_mem:
            embed = sam.memory_attention(curr, memory, pos, memory, feat_size=(h, w))
        else:
            embed = curr + sam.no_mem_embed[...].reshape(-1)
        embed = embed.reshape(1, h, w, c)
        out = sam.decode(embed, feats.high_res_feats, text_embeds=text)
        low = out.masks[:, 0]
        masks = glus_lib.upsample_logits(low, frame_size) > 0
        mem = mb.encode_frame_memory(
            sam.memory_encoder, embed, low, image_size=sam_cfg.image_size,
            sigmoid_scale=sam_cfg.sigmoid_scale_for_mem_enc, sigmoid_bias=sam_cfg.sigmoid_bias_for_mem_enc,
        )
        return masks, mem

    per_image = lowered_flops(clip_images, state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    llm_cache: dict[int, float] = {}
    sam_cache: dict[int, float] = {}
    out = {"clip": 0.0, "llm": 0.0, "sam2": 0.0}
    h, w = frame_size
    for step in plan:
        out["clip"] += per_image * step.images
        n = step.expanded_len
        if n not in llm_cache:
            llm_cache[n] = lowered_flops(llm, state, jax.ShapeDtypeStruct((1, n, d_llm), dt))
        out["llm"] += llm_cache[n]
        k = step.memory_frames
        if k is None:
            continue
        if k not in sam_cache:
            sam_cache[k] = lowered_flops(
                sam_frame,
                state,
                jax.ShapeDtypeStruct((1, h, w, 3), jnp.uint8),
                jax.ShapeDtypeStruct((1, max(k, 1) * hw, sam_cfg.mem_dim), dt),
                jax.ShapeDtypeStruct((1, cfg.out_dim), jnp.float32),
                n_mem=k,
            )
        out["sam2"] += sam_cache[k]
    return out


def split(flops: dict[str, float]) -> dict[str, float]:
    """Percentages of clip / llm / sam2 in a per-stage FLOP dict."""
    total = sum(flops.values())
    return {k: 100.0 * v / total for k, v in flops.items()}


def torch_flops(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), FLOPs PyTorch's FlopCounterMode counts while running it: matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1))


class PeakRSS:
    """Peak resident memory of this process during a `with` block, above the RSS at its start.

    Linux: the kernel's high-water mark (VmHWM) is reset at entry (/proc/self/clear_refs), plus a 5 ms
    sampler as a fallback where that reset is not permitted."""

    def __enter__(self):
        self.start = _status_kb("VmRSS") * 1024
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            pass
        self._peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _status_kb("VmRSS") * 1024)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        peak = self._peak
        if self._reset:
            peak = max(peak, _status_kb("VmHWM") * 1024)
        self.peak = peak
        self.increase = peak - self.start
        return False


# ------------------------------------------------------------------------------------- compile time


class CompileTimer:
    """Seconds JAX spends tracing, lowering and compiling (jax.monitoring duration events) while active."""

    _EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
               "/jax/core/compile/jaxpr_to_mlir_module_duration")
    _registered = False
    _active: list[CompileTimer] = []

    def __init__(self):
        self.seconds = 0.0

    @classmethod
    def _listener(cls, event: str, duration: float, **_):
        if event in cls._EVENTS:
            for t in cls._active:
                t.seconds += duration

    def __enter__(self):
        if not CompileTimer._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileTimer._listener)
            CompileTimer._registered = True
        CompileTimer._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileTimer._active.remove(self)
        return False


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- device


def device_name() -> str:
    """The JAX device the benchmark measures on, e.g. 'cpu:cpu x1 (2 host cores)'."""
    import os

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()} ({os.cpu_count()} host cores)"


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timed calls of fn (which must wait for its result), after one untimed
    warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rate(dtype: str, repeats: int = 5) -> float:
    """Measured FLOP/s of a large square matmul on the default JAX device (best of `repeats`): the rate
    FLOP-bound times and MFU are computed against. bfloat16 on a GPU, else float32 (CPU XLA has no fast
    bfloat16 matmul)."""
    n = 8192 if on_gpu() else 2048
    dt = jnp.bfloat16 if dtype == "bfloat16" and on_gpu() else jnp.float32
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / best_seconds(lambda: f(a).block_until_ready(), repeats)
