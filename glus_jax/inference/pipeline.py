"""Video inference: GLUS on one video and one or more expressions, exactly as the reference protocol
(`inference_iter.py`: `inference_video` / `inference_frames` / `GLUSForCausalLM.evaluate`), but
without its repeated work:

* CLIP image tokens and SAM2 image features are computed once per frame (the reference re-encodes
  every image of every prompt at every step, and runs CLIP's last layer, whose output GLUS never reads).
* The prompt prefix shared by all steps of a video (system prompt, the context frames and the text
  before the first query frame) is encoded once into a KV cache. Each step's remaining tokens (its
  window of question rounds) run batched over many steps, attending to that one cache (it is not
  copied per step), since all prompts are known in advance once every step is assumed to answer
  [SEG]. Only the last position's hidden state is needed, so the last decoder layer computes its
  queries, MLP and logits for that position alone. The generated token is checked afterwards; steps
  after a step that did not emit [SEG] are recomputed with the reference's fallback history, so the
  result is always the step-by-step one.
* SAM2: the image trunk runs on each frame of a chunk (`trunk_batch` frames per call: on CPU one
  frame at a time is the fastest and keeps its buffers small), then one jitted `lax.scan` over the
  chunk runs memory attention, the mask decoder, the upsampling to the frame size and the memory
  encoder against a fixed-size memory bank shared by all expressions of the video (each expression
  has its own bank entries).

The video streams through in chunks of `frame_chunk` query frames: CLIP, the LLM steps, the SAM2
trunk and the propagation of one chunk run before the next chunk starts, so working memory does not
grow with the video (only the returned masks and logits do). A chunk that does not fill
`frame_chunk` is split into power-of-two pieces: no padded work, at most log2(frame_chunk) extra
compiled shapes. `timings` holds the seconds spent per stage in the last `segment` call ("clip",
"llm", "sam2_trunk", "propagation", "total"; compilation included on first calls).

`llm_mode="step"` runs the LLM as the reference does (one full forward per step); tests check that it
gives the same results as the batched mode.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glus_jax.data import conversation as conv
from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX, GLUSTokenizer
from glus_jax.inference import protocol
from glus_jax.models import glus as glus_lib
from glus_jax.models import llama as llama_lib
from glus_jax.models.clip import clip_preprocess
from glus_jax.models.glus import GLUS
from glus_jax.models.sam2.sam2 import SAM2ImageFeatures

STAGES = ("clip", "llm", "sam2_trunk", "propagation")


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _pieces(n: int, size: int) -> list[tuple[int, int]]:
    """(start, length) chunks covering range(n): full `size` chunks, then power-of-two pieces."""
    out, i = [], 0
    while n - i >= size:
        out.append((i, size))
        i += size
    while i < n:
        p = 1 << ((n - i).bit_length() - 1)
        out.append((i, p))
        i += p
    return out


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


@dataclasses.dataclass
class _Prefix:
    """The encoded prompt prefix (everything before the first query-frame placeholder)."""

    ids: list[int]
    cache: llama_lib.KVCache  # batch 1; slots past the prefix are invalid
    length: int  # expanded length (positions of the suffix start here)


@dataclasses.dataclass
class _PassLLM:
    """The LLM side of one expression in one pass, as it streams through the chunks."""

    expression: str
    order: Sequence[int]
    answers: list[str] = dataclasses.field(default_factory=list)  # per step done
    records: list[StepRecord] = dataclasses.field(default_factory=list)


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
        length_bucket: int = 8,
        trunk_batch: int = 1,
    ):
        if llm_mode not in ("batched", "step"):
            raise ValueError(f"llm_mode must be 'batched' or 'step', got {llm_mode!r}")
        for name, v in (("frame_chunk", frame_chunk), ("llm_batch", llm_batch), ("clip_batch", clip_batch),
                        ("length_bucket", length_bucket), ("mem_stride", mem_stride), ("trunk_batch", trunk_batch)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
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
        self.trunk_batch = trunk_batch
        self.graphdef, self.state = nnx.split(model)
        self.timings: dict[str, float] = {}
        self._ok_answers: dict[str, str] = {}

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> GLUSPipeline:
        """Load a model directory written by `glus-jax convert` / `glus-jax train`."""
        from glus_jax.models.io import load_model

        model, tokenizer, _ = load_model(model_dir)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------------- kernel calls

    def _call(self, stage: str, kernel: Callable, *args, **static):
        """Run a jitted kernel on the model (`kernel(graphdef, state, *args, **static)`), wait for
        it and add its time to `timings[stage]`. The one place every device computation goes
        through (benchmarks override it to count FLOPs or to check shapes without weights)."""
        t = time.perf_counter()
        out = jax.block_until_ready(kernel(self.graphdef, self.state, *args, **static))
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t
        return out

    # ------------------------------------------------------------------------------ CLIP

    def clip_tokens(self, frames: np.ndarray) -> jax.Array:
        """[T, H, W, 3] uint8 -> [T, tokens_per_image, D] image tokens (once per frame)."""
        t = time.perf_counter()
        pixels = clip_preprocess(frames)
        self.timings["clip"] = self.timings.get("clip", 0.0) + time.perf_counter() - t
        out = [self._call("clip", _encode_clip, pixels[i : i + n]) for i, n in _pieces(len(pixels), self.clip_batch)]
        return out[0] if len(out) == 1 else jnp.concatenate(out)

    # ------------------------------------------------------------------------------- LLM

    def _ok_answer(self, expression: str) -> str:
        """The history text of a step that emitted [SEG] (the reference decodes it from the output)."""
        if expression not in self._ok_answers:
            first = self._prompt(expression, 0, [])
            self._ok_answers[expression] = conv.answer_from_output(self.tokenizer, [*first, self.config.seg_token_id])
        return self._ok_answers[expression]

    def _prompt(self, expression: str, step: int, answers: Sequence[str]) -> list[int]:
        """Prompt ids of `step` given the answers of the earlier steps (the sliding window, Q7)."""
        rounds = min(step + 1, self.config.question_frames)
        past = list(answers[step + 1 - rounds : step])
        text = conv.inference_prompt(expression, rounds, past, use_mm_start_end=self.config.llava.mm_use_im_start_end)
        return self.tokenizer.tokenizer_image_token(text)

    def _prefix(self, prompt: Sequence[int], ctx_tokens: jax.Array, cache: dict) -> tuple[_Prefix, int]:
        """The encoded prefix of `prompt` (from `cache`, keyed by its ids, or computed) and where the
        prompt's suffix starts."""
        n_ctx = ctx_tokens.shape[0]
        cut = int(np.nonzero(np.asarray(prompt) == IMAGE_TOKEN_INDEX)[0][n_ctx])
        key = tuple(prompt[:cut])
        if key not in cache:
            f = self.config.tokens_per_image
            length = cut + (f - 1) * n_ctx
            p_max = _bucket(length, self.length_bucket)
            ids, mask = self._pad_rows([key], _bucket(cut, self.length_bucket))
            kv = self._call("llm", _prefill, ids, mask, ctx_tokens[None], max_len=p_max)
            cache[key] = _Prefix(list(key), kv, length)
        return cache[key], cut

    def _llm_chunk(self, st: _PassLLM, start: int, stop: int, ctx_tokens, lookup, prefixes) -> tuple[jax.Array, np.ndarray]:
        """Steps start..stop-1 of a pass for one expression: ([SEG] embeddings [n, C], emitted [n]).

        Runs them assuming each emits [SEG]; after the first that does not, the rest are rerun with
        the reference's fallback answer in their history."""
        seg = self.config.seg_token_id
        embeds, emitted = [], []
        s0 = start
        while s0 < stop:
            answers = st.answers[:s0] + [self._ok_answer(st.expression)] * (stop - s0)
            prompts = [self._prompt(st.expression, s, answers) for s in range(s0, stop)]
            e, g = self._run_steps(st.order, range(s0, stop), prompts, ctx_tokens, lookup, prefixes)
            bad = np.nonzero(g != seg)[0]
            n = len(g) if len(bad) == 0 else int(bad[0]) + 1
            host_e = np.asarray(e[:n])
            for k in range(n):
                s = s0 + k
                st.records.append(StepRecord(int(st.order[s]), prompts[k], int(g[k]), host_e[k]))
            st.answers = answers[: s0 + n]
            if len(bad):
                st.answers[-1] = conv.INFERENCE_FAILED_ANSWER
            embeds.append(e[:n])
            emitted.append(g[:n] == seg)
            s0 += n
        return (embeds[0] if len(embeds) == 1 else jnp.concatenate(embeds)), np.concatenate(emitted)

    def _run_steps(self, order, steps: range, prompts, ctx_tokens, lookup, prefixes) -> tuple[jax.Array, np.ndarray]:
        """LLM steps `steps` (prompts given): batched against the cached prefix, or one by one."""
        q = self.config.question_frames
        f = self.config.tokens_per_image
        n_ctx = ctx_tokens.shape[0]
        windows = [[order[j] for j in protocol.question_window(s, q)] for s in steps]
        if self.llm_mode == "step":
            out_e, out_g = [], []
            for ids, win in zip(prompts, windows):
                t = _bucket(len(ids), self.length_bucket)
                n_img = n_ctx + len(win)
                max_len = _bucket(t + (f - 1) * n_img, self.length_bucket)
                feats = jnp.concatenate([ctx_tokens, lookup(win)])[None]
                padded, mask = self._pad_rows([ids], t)
                n_valid = np.asarray([len(ids) + (f - 1) * n_img], np.int32)
                e, g = self._call("llm", _full, padded, mask, feats, n_valid, max_len=max_len)
                out_e.append(e)
                out_g.append(np.asarray(g))
            return jnp.concatenate(out_e), np.concatenate(out_g)

        prefix, cut = self._prefix(prompts[0], ctx_tokens, prefixes)
        suffixes = []
        for ids in prompts:
            if ids[:cut] != prefix.ids:
                raise AssertionError("GLUS prompts of one pass must share their prefix up to the first query frame")
            suffixes.append(ids[cut:])
        offset = jnp.asarray(prefix.length, jnp.int32)
        out_e, out_g = [], []
        for i, b in _pieces(len(suffixes), self.llm_batch):
            rows, wins = suffixes[i : i + b], windows[i : i + b]
            s_tok = _bucket(max(len(r) for r in rows), self.length_bucket)
            s_max = _bucket(max(len(r) + (f - 1) * len(w) for r, w in zip(rows, wins)), self.length_bucket)
            ids, mask = self._pad_rows(rows, s_tok)
            # [b, q, F, D]: a short window (first steps) repeats its last frame; those are never spliced.
            feats = lookup([x for w in wins for x in w + [w[-1]] * (q - len(w))]).reshape(b, q, *ctx_tokens.shape[1:])
            n_valid = np.asarray([len(r) + (f - 1) * len(w) for r, w in zip(rows, wins)], np.int32)
            e, g = self._call("llm", _suffix, prefix.cache, offset, ids, mask, feats, n_valid, max_len=s_max)
            out_e.append(e)
            out_g.append(np.asarray(g))
        return (out_e[0] if len(out_e) == 1 else jnp.concatenate(out_e)), np.concatenate(out_g)

    def seg_embeddings(
        self, tokens: jax.Array, context: Sequence[int], order: Sequence[int], expression: str
    ) -> tuple[np.ndarray, np.ndarray, list[StepRecord]]:
        """The LLM side of one pass: per step, the projected [SEG] embedding and whether [SEG] was
        generated. tokens: [T, F, D] image tokens of the video; context: video frame indices of
        the context frames; order: video frame indices of the pass's query frames, in order."""
        ctx_tokens = tokens[jnp.asarray(list(context))]

        def lookup(frames):
            return tokens[jnp.asarray(frames)]

        st, prefixes = _PassLLM(expression, list(order)), {}
        embeds, ok = [], []
        for start, n in _pieces(len(order), self.frame_chunk):
            e, o = self._llm_chunk(st, start, start + n, ctx_tokens, lookup, prefixes)
            embeds.append(np.asarray(e))
            ok.append(o)
        return np.concatenate(embeds), np.concatenate(ok), st.records

    def _pad_rows(self, rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return ids, mask

    # ------------------------------------------------------------------------------- SAM2

    def _sam_chunk(self, frames: np.ndarray, bank, text, ok, frame_ids: np.ndarray, size: tuple[int, int]):
        """Trunk on a chunk of frames [n, H, W, 3], then the propagation scan over them for E
        expressions (text [n, E, C], ok [n, E]). Returns (bank, FrameOutput [n, E, ...], masks [n, E, H, W])."""
        parts = [self._call("sam2_trunk", _sam_trunk, frames[i : i + n]) for i, n in _pieces(len(frames), self.trunk_batch)]
        feats = parts[0] if len(parts) == 1 else SAM2ImageFeatures(
            jnp.concatenate([x.vision_features for x in parts]),
            parts[0].vision_pos_enc,  # batch-independent
            tuple(jnp.concatenate(xs) for xs in zip(*(x.high_res_feats for x in parts))),
        )
        bank, (out, masks) = self._call(
            "propagation", _propagate, bank, feats, text, ok, jnp.asarray(frame_ids, jnp.int32),
            mem_stride=self.mem_stride, size=size,
        )
        return bank, out, masks

    def propagate(self, frames: np.ndarray, order: Sequence[int], text: np.ndarray, ok: np.ndarray):
        """SAM2 over the pass's query frames for E expressions: text [n, E, C], ok [n, E].
        Returns low-res logits [n, E, h, w], iou [n, E], object scores [n, E]."""
        n, e = ok.shape
        bank = glus_lib.init_bank(self.config.sam2, e, self.mem_stride)
        outs = []
        for i, c in _pieces(n, self.frame_chunk):
            idx = np.asarray(order[i : i + c])
            bank, out, _ = self._sam_chunk(
                frames[idx], bank, text[i : i + c], ok[i : i + c], np.arange(i, i + c), frames.shape[1:3]
            )
            outs.append(jax.tree.map(np.asarray, out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    # ----------------------------------------------------------------------------- public

    def segment(
        self,
        frames: np.ndarray,
        expressions: Sequence[str],
        key_frames: Sequence[int] | None = None,
    ) -> list[SegmentResult]:
        """Segment every expression in the video frames [T, H, W, 3] uint8.

        key_frames: per expression, the index of the key frame (0 = plain forward run); each
        expression propagates from its key frame to the end, then back to the start.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        t_frames, h, w = frames.shape[:3]
        key_frames = [0] * len(expressions) if key_frames is None else list(key_frames)
        if len(key_frames) != len(expressions):
            raise ValueError(f"{len(key_frames)} key frames for {len(expressions)} expressions")
        self.timings = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        context = protocol.context_frames(t_frames, self.config.context_frames)
        ctx_tokens = self.clip_tokens(frames[np.asarray(context)])
        low_hw = (4 * self.config.sam2.image_embedding_size,) * 2
        outputs = [
            SegmentResult(
                expression=x,
                masks=np.zeros((t_frames, h, w), bool),
                low_res_logits=np.zeros((t_frames, *low_hw), np.float32),
                iou=np.zeros((t_frames,), np.float32),
                object_score=np.zeros((t_frames,), np.float32),
                key_frame=k,
                steps=[],
            )
            for x, k in zip(expressions, key_frames)
        ]
        prefixes: dict = {}  # encoded prompt prefixes of this video (same context frames throughout)
        # Expressions with the same key frame share passes, so their SAM2 propagation is batched.
        for key in sorted(set(key_frames)):
            group = [i for i, k in enumerate(key_frames) if k == key]
            passes = protocol.key_frame_passes(t_frames, key)
            chosen = protocol.merge_passes(passes, t_frames)
            for p, order in enumerate(passes):
                self._segment_pass(frames, order, p, chosen, [outputs[i] for i in group], ctx_tokens, prefixes)
        self.timings["total"] = time.perf_counter() - t0
        return outputs

    def _segment_pass(self, frames, order, p, chosen, outputs: list[SegmentResult], ctx_tokens, prefixes) -> None:
        """One pass (query frames `order`) for the expressions of `outputs`, streamed in chunks;
        writes the frames whose mask comes from this pass (`chosen`) into the outputs."""
        q = self.config.question_frames
        n = len(order)
        states = [_PassLLM(out.expression, list(order)) for out in outputs]
        bank = glus_lib.init_bank(self.config.sam2, len(outputs), self.mem_stride)
        win_frames: list[int] = []  # frames whose CLIP tokens are held (the window's reach back)
        win_tokens = None
        for start, c in _pieces(n, self.frame_chunk):
            new = list(order[start : start + c])
            tok = self.clip_tokens(frames[np.asarray(new)])
            win_tokens = tok if win_tokens is None else jnp.concatenate([win_tokens, tok])
            win_frames = win_frames + new
            rows = {f: i for i, f in enumerate(win_frames)}

            def lookup(fs, rows=rows, table=win_tokens):
                return table[jnp.asarray([rows[f] for f in fs])]

            text, ok = [], []
            for st in states:
                e, o = self._llm_chunk(st, start, start + c, ctx_tokens, lookup, prefixes)
                text.append(e)
                ok.append(o)
            text = jnp.stack(text, axis=1)  # [c, E, C]
            ok = np.stack(ok, axis=1)
            bank, out, masks = self._sam_chunk(
                frames[np.asarray(new)], bank, text, ok, np.arange(start, start + c), frames.shape[1:3]
            )
            t = time.perf_counter()
            out = jax.tree.map(np.asarray, out)
            masks = np.asarray(masks)
            for k, frame in enumerate(new):
                if chosen[frame] != (p, start + k):
                    continue
                for j, res in enumerate(outputs):
                    res.masks[frame] = masks[k, j]
                    res.low_res_logits[frame] = out.low_res_logits[k, j]
                    res.iou[frame] = out.iou[k, j]
                    res.object_score[frame] = out.object_score[k, j]
            self.timings["propagation"] += time.perf_counter() - t
            # Keep the tokens of the last q - 1 frames: the next steps' windows reach back to them.
            keep = max(len(win_frames) - (q - 1), 0)
            win_frames, win_tokens = win_frames[keep:], win_tokens[keep:]
        for res, st in zip(outputs, states):
            res.steps.append(st.records)


# ------------------------------------------------------------------------------ jitted kernels
# The GraphDef is a static argument: every pipeline of the same architecture shares one compiled
# program per shape.


def _head(m: GLUS, last_hidden):
    """Q2: the [SEG] embedding is text_hidden_fcs of the final-norm state at the last prompt
    position (the one whose logits predict [SEG]); greedy next token from the same state."""
    logits = m.llava.llm.logits(last_hidden)
    return m.text_hidden_fcs(last_hidden).astype(jnp.float32), jnp.argmax(logits, axis=-1)


def _last(hidden, n_valid):
    return jnp.take_along_axis(hidden, (n_valid - 1)[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=0)
def _encode_clip(graphdef, state, pixels):
    return nnx.merge(graphdef, state).llava.encode_images(pixels)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _prefill(graphdef, state, ids, mask, feats, *, max_len):
    """The prefix [1, T] (with its context images) into a KV cache of `max_len` slots."""
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    cache = m.llava.llm.init_cache(1, max_len)
    _, cache = m.llava.llm.model(
        inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask, positions=sp.positions, cache=cache
    )
    return cache


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _suffix(graphdef, state, cache, offset, ids, mask, feats, n_valid, *, max_len):
    """B step suffixes [B, T] (their window images feats [B, q, F, D]) after the shared prefix in
    `cache` (batch 1, positions 0..offset-1): ([SEG] embeddings [B, C], next tokens [B])."""
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    hidden = _prefixed_last_hidden(m.llava.llm, cache, offset, sp.inputs_embeds, sp.attention_mask, n_valid)
    return _head(m, hidden)


def _prefixed_last_hidden(llm, cache, offset, x, mask, n_valid):
    """Final-norm hidden state at position n_valid-1 of each row of x [B, S, D] (row tokens at
    positions offset.., attending to the one shared prefix cache and causally to their own tokens).

    The same LLaMA forward as `LlamaModel.__call__` with a cache, but (1) the prefix keys/values are
    read once for all rows instead of being copied per row, and (2) the last layer computes queries,
    attention output and MLP only at the one position whose state is used (its keys and values are
    still computed for every position)."""
    cfg = llm.config
    b, s, _ = x.shape
    x = x.astype(jnp.dtype(cfg.dtype))
    positions = offset + jnp.arange(s, dtype=jnp.int32)[None, :]  # [1, S]
    cos, sin = llama_lib.rope_cos_sin(positions, cfg.dim_head, cfg.rope_theta)
    p_valid = cache.valid[0]  # [P]
    own = mask[:, None, None, :] & jnp.tril(jnp.ones((s, s), bool))[None, None]  # [B, 1, S, S]
    graphdef, layers = nnx.split(llm.model.layers)

    def layer_at(i):
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], layers))

    def project(attn, h, name, heads, cos, sin):
        y = getattr(attn, name)(h).reshape(*h.shape[:2], heads, cfg.dim_head)
        return y if cos is None else llama_lib.apply_rope(y, cos, sin)

    def body(x, i):
        layer = layer_at(i)
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        qh = project(attn, h, "q_proj", cfg.num_heads, cos, sin)
        kh = project(attn, h, "k_proj", cfg.kv_heads, cos, sin)
        vh = project(attn, h, "v_proj", cfg.kv_heads, None, None)
        o = _prefixed_attention(qh, cache.k[i, 0], cache.v[i, 0], p_valid, kh, vh, own)
        x = x + attn.o_proj(o.reshape(b, s, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x)), None

    n = cfg.num_layers
    x, _ = jax.lax.scan(body, x, jnp.arange(n - 1))
    layer = layer_at(n - 1)
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    kh = project(attn, h, "k_proj", cfg.kv_heads, cos, sin)
    vh = project(attn, h, "v_proj", cfg.kv_heads, None, None)
    last = (n_valid - 1)[:, None]  # [B, 1]
    h_last = jnp.take_along_axis(h, last[..., None], axis=1)  # [B, 1, D]
    cos_l, sin_l = llama_lib.rope_cos_sin(offset + last, cfg.dim_head, cfg.rope_theta)
    qh = project(attn, h_last, "q_proj", cfg.num_heads, cos_l, sin_l)
    own_last = mask[:, None, None, :] & (jnp.arange(s)[None, :] <= last)[:, None, None, :]  # [B, 1, 1, S]
    o = _prefixed_attention(qh, cache.k[n - 1, 0], cache.v[n - 1, 0], p_valid, kh, vh, own_last)
    x_last = jnp.take_along_axis(x, last[..., None], axis=1) + attn.o_proj(o.reshape(b, 1, -1))
    x_last = x_last + layer.mlp(layer.post_attention_layernorm(x_last))
    return llm.model.norm(x_last)[:, 0]


def _prefixed_attention(q, kp, vp, p_valid, k, v, mask):
    """softmax over [prefix keys, own keys] in one (float32) normalisation, as attention over the
    concatenated cache would be. q [B, T, H, Dh]; kp/vp [P, Hkv, Dh] shared by all rows, p_valid [P];
    k/v [B, S, Hkv, Dh], mask [B, 1, T, S]. Returns [B, T, H, Dh]."""
    rep = q.shape[2] // k.shape[2]
    if rep > 1:  # grouped-query attention
        kp, vp = jnp.repeat(kp, rep, axis=1), jnp.repeat(vp, rep, axis=1)
        k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    scale = q.shape[-1] ** -0.5
    neg = jnp.finfo(jnp.float32).min
    lp = jnp.einsum("bthd,phd->bhtp", q, kp.astype(q.dtype)).astype(jnp.float32) * scale
    lp = jnp.where(p_valid[None, None, None, :], lp, neg)
    ls = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale
    ls = jnp.where(mask, ls, neg)
    # One softmax over both key sets without concatenating them (no [B, H, T, P + S] copy).
    top = jnp.maximum(lp.max(-1, keepdims=True), ls.max(-1, keepdims=True))
    ep, es = jnp.exp(lp - top), jnp.exp(ls - top)
    norm = 1.0 / (ep.sum(-1, keepdims=True) + es.sum(-1, keepdims=True))
    pp, ps = (ep * norm).astype(v.dtype), (es * norm).astype(v.dtype)
    return jnp.einsum("bhtp,phd->bthd", pp, vp.astype(v.dtype)) + jnp.einsum("bhts,bshd->bthd", ps, v)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _full(graphdef, state, ids, mask, feats, n_valid, *, max_len):
    m = nnx.merge(graphdef, state)
    sp = m.llava.embed_multimodal(ids, feats, max_len=max_len, attention_mask=mask)
    hidden, _ = m.llava.llm.model(inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask, positions=sp.positions)
    return _head(m, _last(hidden, n_valid))


@functools.partial(jax.jit, static_argnums=0)
def _sam_trunk(graphdef, state, frames):
    """uint8 frames [n, H, W, 3] -> SAM2ImageFeatures with batch n (preprocessing on device)."""
    sam = nnx.merge(graphdef, state).visual_model
    return sam.encode_image(glus_lib.sam_preprocess(frames, sam.cfg.image_size))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("mem_stride", "size"))
def _propagate(graphdef, state, bank, feats, text, ok, frame_ids, *, mem_stride, size):
    """The frame loop over a chunk: per frame, memory attention, mask decoder, memory encoder and
    the mask at the frame size (`size`), for E expressions. Returns (bank, (FrameOutput, masks
    [n, E, H, W] bool))."""
    sam = nnx.merge(graphdef, state).visual_model
    pos = feats.vision_pos_enc

    # The module is a broadcast scan operand (NNX modules may not be closed over by a scan).
    def step(sam, bank, xs):
        vision, high_res, t, o, f = xs
        one = SAM2ImageFeatures(vision[None], pos, tuple(x[None] for x in high_res))
        bank, out = glus_lib.frame_step_features(sam, bank, one, t, o, f, stride=mem_stride, compact_memory=True)
        return bank, (out, glus_lib.upsample_logits(out.low_res_logits, size) > 0)

    scan = nnx.scan(step, in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    return scan(sam, bank, (feats.vision_features, feats.high_res_feats, text, ok, frame_ids))
