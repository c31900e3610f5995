"""Video inference: GLUS on one video and one or more expressions, exactly as the reference protocol
(`inference_iter.py`: `inference_video` / `inference_frames` / `GLUSForCausalLM.evaluate`), but
without its repeated work:

* CLIP image tokens and SAM2 image features are computed once per frame (the reference re-encodes
  every image of every prompt at every step).
* The prompt prefix shared by all steps of a pass (system prompt, the context frames and the text
  before the first query frame) is encoded once into a KV cache; each step's remaining tokens (its
  window of question rounds) run batched over many steps against that cache, since all prompts are
  known in advance once every step is assumed to answer [SEG]. The generated token is checked
  afterwards; steps after a step that did not emit [SEG] are recomputed with the reference's fallback
  history, so the result is always the step-by-step one.
* SAM2 propagation is one jitted `lax.scan` per chunk of frames over a fixed-size memory bank shared
  by all expressions of the video (each expression has its own bank entries); the image trunk runs
  once per frame for all of them.

`llm_mode="step"` runs the LLM as the reference does (one full forward per step); tests check that it
gives the same results as the batched mode.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.data import conversation as conv
from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX, GLUSTokenizer
from glus_jax.inference import protocol
from glus_jax.models import glus as glus_lib
from glus_jax.models.clip import clip_preprocess
from glus_jax.models.glus import GLUS
from glus_jax.models.llava import splice_image_tokens


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclasses.dataclass
class StepRecord:
    """What one LLM step of one pass saw and produced (for goldens and debugging)."""

    frame: int  # video frame index of the step's query frame
    input_ids: list[int]  # prompt ids with IMAGE_TOKEN_INDEX placeholders
    generated_token: int
    seg_embedding: np.ndarray  # [C] projected [SEG] state fed to SAM2


@dataclasses.dataclass
class SegmentResult:
    expression: str
    masks: np.ndarray  # [T, H, W] bool, per video frame
    low_res_logits: np.ndarray  # [T, 4h, 4w] the chosen SAM2 logits of each frame
    iou: np.ndarray  # [T] predicted IoU of each frame's mask
    object_score: np.ndarray  # [T]
    key_frame: int
    steps: list[list[StepRecord]]  # per pass

    def logits(self, size: tuple[int, int]) -> np.ndarray:
        """Mask logits at the original resolution [T, H, W] (computed on demand, frame by frame)."""
        return np.stack([np.asarray(_upsample(l[None], size))[0] for l in self.low_res_logits])


@functools.partial(jax.jit, static_argnums=1)
def _upsample(low_res, size):
    return glus_lib.upsample_logits(low_res, size)


class GLUSPipeline:
    """GLUS video segmentation. `segment(frames, expressions, key_frames=None)`."""

    def __init__(
        self,
        model: GLUS,
        tokenizer: GLUSTokenizer,
        *,
        mem_stride: int = 3,
        frame_chunk: int = 8,
        llm_batch: int = 8,
        clip_batch: int = 8,
        llm_mode: str = "batched",
        length_bucket: int = 32,
    ):
        if llm_mode not in ("batched", "step"):
            raise ValueError(f"llm_mode must be 'batched' or 'step', got {llm_mode!r}")
        cfg = model.config
        if tokenizer.seg_token_id != cfg.seg_token_id:
            raise ValueError(f"tokenizer [SEG] id {tokenizer.seg_token_id} != model seg_token_id {cfg.seg_token_id}")
        self.config = cfg
        self.tokenizer = tokenizer
        self.mem_stride = mem_stride
        self.frame_chunk = frame_chunk
        self.llm_batch = llm_batch
        self.clip_batch = clip_batch
        self.llm_mode = llm_mode
        self.length_bucket = length_bucket
        self.graphdef, self.state = nnx.split(model)
        self.timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> GLUSPipeline:
        """Load a model directory written by `glus-jax convert` / `glus-jax train`."""
        from glus_jax.models.io import load_model

        model, tokenizer, _ = load_model(model_dir)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------------------ stages

    def clip_tokens(self, frames: np.ndarray) -> jax.Array:
        """[T, H, W, 3] uint8 -> [T, tokens_per_image, D] image tokens (once per frame)."""
        pixels = clip_preprocess(frames)
        n = len(pixels)
        b = self.clip_batch
        out = []
        for i in range(0, n, b):
            chunk = pixels[i : i + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(_encode_clip(self.graphdef, self.state, chunk)[: b - pad])
        return jnp.concatenate(out)

    def _step_prompts(self, expression: str, n_steps: int, answers: Sequence[str]) -> list[list[int]]:
        q = self.config.question_frames
        prompts = []
        for s in range(n_steps):
            rounds = min(s + 1, q)
            past = list(answers[s + 1 - rounds : s])
            text = conv.inference_prompt(expression, rounds, past, use_mm_start_end=self.config.llava.mm_use_im_start_end)
            prompts.append(self.tokenizer.tokenizer_image_token(text))
        return prompts

    def seg_embeddings(
        self, tokens: jax.Array, context: Sequence[int], order: Sequence[int], expression: str
    ) -> tuple[np.ndarray, np.ndarray, list[StepRecord]]:
        """The LLM side of one pass: per step, the projected [SEG] embedding and whether [SEG] was
        generated. tokens: [T, F, D] image tokens of the video; context: video frame indices of
        the context frames; order: video frame indices of the pass's query frames, in order."""
        seg = self.config.seg_token_id
        n = len(order)
        ok_answer = None
        answers: list[str] = []
        embeds = np.zeros((n, self.config.out_dim), np.float32)
        gen = np.zeros((n,), np.int64)
        prompts: list[list[int]] = []
        start = 0
        while start < n:
            # Assume every step from `start` on emits [SEG]; run them all, then find the first
            # that did not and redo the rest with the fallback history.
            if ok_answer is None:
                first = self._step_prompts(expression, 1, [])[0]
                ok_answer = conv.answer_from_output(self.tokenizer, [*first, seg])
            answers = answers[:start] + [ok_answer] * (n - start)
            prompts = prompts[:start] + self._step_prompts(expression, n, answers)[start:]
            e, g = self._run_steps(tokens, context, order, prompts, start)
            embeds[start:], gen[start:] = e, g
            bad = np.nonzero(g != seg)[0]
            if len(bad) == 0:
                break
            fail = start + int(bad[0])
            answers[fail] = conv.INFERENCE_FAILED_ANSWER
            start = fail + 1
            answers = answers[:start]
        records = [
            StepRecord(frame=int(order[s]), input_ids=prompts[s], generated_token=int(gen[s]), seg_embedding=embeds[s])
            for s in range(n)
        ]
        return embeds, gen == seg, records

    def _run_steps(self, tokens, context, order, prompts, start) -> tuple[np.ndarray, np.ndarray]:
        """Run LLM steps start..n-1 (batched against a cached prefix, or one by one)."""
        q = self.config.question_frames
        f = self.config.tokens_per_image
        steps = list(range(start, len(prompts)))
        windows = [[order[j] for j in protocol.question_window(s, q)] for s in steps]
        ctx_feats = tokens[jnp.asarray(list(context))]
        if self.llm_mode == "step":
            out_e, out_g = [], []
            for s, win in zip(steps, windows):
                ids = np.asarray(prompts[s])
                t = _bucket(len(ids), self.length_bucket)
                n_img = len(context) + len(win)
                max_len = _bucket(t + (f - 1) * n_img, self.length_bucket)
                feats = jnp.concatenate([ctx_feats, tokens[jnp.asarray(win)]])[None]
                padded, mask = self._pad_rows([ids], t)
                n_valid = np.asarray([len(ids) + (f - 1) * n_img], np.int32)
                e, g, _ = _full(self.graphdef, self.state, padded, mask, feats, n_valid, max_len=max_len)
                out_e.append(np.asarray(e)[0])
                out_g.append(int(np.asarray(g)[0]))
            return np.stack(out_e), np.asarray(out_g)

        # Shared prefix: everything before the first query-frame placeholder.
        n_ctx = len(context)
        cut = [int(np.nonzero(np.asarray(prompts[s]) == IMAGE_TOKEN_INDEX)[0][n_ctx]) for s in steps]
        prefix = prompts[steps[0]][: cut[0]]
        if any(prompts[s][:c] != prefix for s, c in zip(steps, cut)):
            raise AssertionError("GLUS prompts of one pass must share their prefix up to the first query frame")
        p_tok = _bucket(len(prefix), self.length_bucket)
        p_len = len(prefix) + (f - 1) * n_ctx  # expanded
        p_max = _bucket(p_len, self.length_bucket)
        suffixes = [prompts[s][c:] for s, c in zip(steps, cut)]
        s_tok = _bucket(max(len(x) for x in suffixes), self.length_bucket)
        s_max = _bucket(max(len(x) for x in suffixes) + (f - 1) * q, self.length_bucket)
        ids, mask = self._pad_rows([prefix], p_tok)
        # Suffix rows are written after the (padded) prefix slots; padded slots are masked out and
        # positions continue from the real prefix length, so padding changes nothing.
        cache = _prefill(self.graphdef, self.state, ids, mask, ctx_feats[None], cache_len=p_max + s_max, max_len=p_max)
        offset = jnp.asarray(p_len, jnp.int32)
        out_e, out_g = [], []
        b = self.llm_batch
        for i in range(0, len(steps), b):
            rows = suffixes[i : i + b]
            wins = windows[i : i + b]
            pad = b - len(rows)
            rows = rows + [rows[-1]] * pad
            wins = wins + [wins[-1]] * pad
            ids, mask = self._pad_rows(rows, s_tok)
            feats = tokens[jnp.asarray([w + [w[-1]] * (q - len(w)) for w in wins])]  # [b, q, F, D]
            n_valid = np.asarray([len(r) + (f - 1) * len(w) for r, w in zip(rows, wins)], np.int32)
            e, g, _ = _suffix(self.graphdef, self.state, cache, ids, mask, feats, offset, n_valid, max_len=s_max)
            out_e.append(np.asarray(e)[: b - pad])
            out_g.append(np.asarray(g)[: b - pad])
        return np.concatenate(out_e), np.concatenate(out_g)

    def _pad_rows(self, rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return ids, mask

    def propagate(self, frames: np.ndarray, order: Sequence[int], text: np.ndarray, ok: np.ndarray):
        """SAM2 over the pass's query frames for E expressions: text [n, E, C], ok [n, E].
        Returns low-res logits [n, E, h, w], iou [n, E], object scores [n, E]."""
        n, e = ok.shape
        bank = glus_lib.init_bank(self.config.sam2, e, self.mem_stride)
        c = self.frame_chunk
        outs = []
        for i in range(0, n, c):
            idx = list(order[i : i + c])
            pad = c - len(idx)
            fr = frames[np.asarray(idx + [idx[-1]] * pad)]
            t = np.concatenate([text[i : i + c], np.zeros((pad, *text.shape[1:]), text.dtype)])
            o = np.concatenate([ok[i : i + c], np.zeros((pad, e), bool)])
            fid = np.concatenate([np.arange(i, i + len(idx)), np.full(pad, -1)]).astype(np.int32)
            bank, out = _propagate(self.graphdef, self.state, bank, fr, t, o, fid, mem_stride=self.mem_stride)
            outs.append(jax.tree.map(lambda x: np.asarray(x)[: c - pad], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    # ----------------------------------------------------------------------------- public

    def segment(
        self,
        frames: np.ndarray | str | Path,
        expressions: Sequence[str],
        key_frames: Sequence[int] | None = None,
    ) -> list[SegmentResult]:
        """Segment every expression in the video: frames [T, H, W, 3] uint8, or a video file / frame
        folder path.

        key_frames: per expression, the index of the key frame (0 = plain forward run); each
        expression propagates from its key frame to the end, then back to the start.
        """
        if isinstance(frames, (str, Path)):
            from glus_jax.inference.video_io import read_video

            frames = read_video(frames).frames
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        t_frames, h, w = frames.shape[:3]
        key_frames = [0] * len(expressions) if key_frames is None else list(key_frames)
        if len(key_frames) != len(expressions):
            raise ValueError(f"{len(key_frames)} key frames for {len(expressions)} expressions")
        t0 = time.perf_counter()
        tokens = self.clip_tokens(frames)
        self.timings["clip"] = time.perf_counter() - t0
        context = protocol.context_frames(t_frames, self.config.context_frames)
        results = []
        # Expressions with the same key frame share passes, so their SAM2 propagation is batched.
        for key in sorted(set(key_frames)):
            group = [i for i, k in enumerate(key_frames) if k == key]
            passes = protocol.key_frame_passes(t_frames, key)
            pass_out, pass_steps = [], []
            for order in passes:
                t1 = time.perf_counter()
                per_expr = [self.seg_embeddings(tokens, context, order, expressions[i]) for i in group]
                self.timings["llm"] = self.timings.get("llm", 0.0) + time.perf_counter() - t1
                text = np.stack([p[0] for p in per_expr], axis=1)
                ok = np.stack([p[1] for p in per_expr], axis=1)
                t2 = time.perf_counter()
                pass_out.append(self.propagate(frames, order, text, ok))
                self.timings["sam2"] = self.timings.get("sam2", 0.0) + time.perf_counter() - t2
                pass_steps.append([p[2] for p in per_expr])
            chosen = protocol.merge_passes(passes, t_frames)
            for j, i in enumerate(group):
                low = np.stack([pass_out[p].low_res_logits[pos, j] for p, pos in chosen])
                iou = np.asarray([pass_out[p].iou[pos, j] for p, pos in chosen])
                obj = np.asarray([pass_out[p].object_score[pos, j] for p, pos in chosen])
                masks = self._masks(low, (h, w))
                results.append(
                    (i, SegmentResult(expressions[i], masks, low, iou, obj, key, [s[j] for s in pass_steps]))
                )
        self.timings["total"] = time.perf_counter() - t0
        return [r for _, r in sorted(results, key=lambda x: x[0])]

    def _masks(self, low_res: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Binary masks at the original size, upsampled frame by frame (no [T, H, W] float spike)."""
        return np.stack([np.asarray(_upsample(l[None], size))[0] > 0 for l in low_res])


# ------------------------------------------------------------------------------ jitted kernels
# The GraphDef is a static argument: every pipeline of the same architecture shares one compiled
# program per shape.


def _head(m: GLUS, last_hidden):
    """Q2: the [SEG] embedding is text_hidden_fcs of the final-norm state at the last prompt
    position (the one whose logits predict [SEG]); greedy next token from the same state."""
    logits = m.llava.llm.logits(last_hidden)
    return m.text_hidden_fcs(last_hidden).astype(jnp.float32), jnp.argmax(logits, axis=-1), logits


def _last(hidden, n_valid):
    return jnp.take_along_axis(hidden, (n_valid - 1)[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=0)
def _encode_clip(graphdef, state, pixels):
    return nnx.merge(graphdef, state).llava.encode_images(pixels)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("cache_len", "max_len"))
def _prefill(graphdef, state, ids, mask, feats, *, cache_len, max_len):
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    cache = m.llava.llm.init_cache(1, cache_len)
    _, cache = m.llava.llm.model(
        inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask, positions=sp.positions, cache=cache
    )
    return cache


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _suffix(graphdef, state, cache, ids, mask, feats, offset, n_valid, *, max_len):
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    hidden, _ = m.llava.llm.model(
        inputs_embeds=sp.inputs_embeds,
        attention_mask=sp.attention_mask,
        positions=sp.positions + offset,
        cache=cache.repeat(ids.shape[0]),
    )
    return _head(m, _last(hidden, n_valid))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _full(graphdef, state, ids, mask, feats, n_valid, *, max_len):
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    hidden, _ = m.llava.llm.model(inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask, positions=sp.positions)
    return _head(m, _last(hidden, n_valid))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("mem_stride",))
def _propagate(graphdef, state, bank, frames, text, ok, frame_ids, *, mem_stride):
    sam = nnx.merge(graphdef, state).visual_model
    pixels = glus_lib.sam_preprocess(frames, sam.cfg.image_size)

    # The module is a broadcast scan operand (NNX modules may not be closed over by a scan).
    def step(sam, bank, xs):
        px, t, o, f = xs
        return glus_lib.frame_step(sam, bank, px, t, o, f, stride=mem_stride)

    scan = nnx.scan(step, in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    return scan(sam, bank, (pixels, text, ok, frame_ids))
