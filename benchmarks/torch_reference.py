"""GLUS inference composed step by step from the PyTorch reference parts (the baseline for benchmarks).

What this is: the original GLUS inference (`inference_iter.py: inference_video / inference_frames`,
`model/GLUS.py: GLUSForCausalLM.evaluate / get_visual_embs`, `model/llava/model/llava_arch.py`,
`model/llava/model/multimodal_encoder/clip_encoder.py`) rebuilt from stock modules:

- LLM: transformers `LlamaForCausalLM` (built from the LLaMA fields of the GLUS config.json), called with
  `inputs_embeds` after our own splicing of the image features (each `<image>` placeholder -200 -> 64 tokens).
- Vision tower: transformers `CLIPVisionModel`, `hidden_states[select_layer]` without CLS ->
  AvgPool1d(4) over the flattened token sequence (quirk Q8) -> mm_projector Linear. Pixels from
  transformers' CLIP image processor on the uint8 RGB frames, as the reference.
- SAM2: the installed `sam2` package modules (`SAM2Base` instantiated from the SAM2 yaml), wired the GLUS
  way: the [SEG] embedding is appended as the only sparse prompt token (the vendored 2.0 prompt encoder's
  `text_embeds` argument, which the package lacks), and GLUS's own memory bank (quirk Q4) replaces SAM2's
  `track_step`.

The loop is the reference's on purpose (this is what speedups are measured against): one full LLM forward
over the whole prompt per frame (no KV cache reuse, full logits), CLIP on every image of the prompt at every
step, one SAM2 image encode per frame per pass, every frame of a pass preprocessed at the pass start.

Package-vs-GLUS (sam2 1.1.0 vs the vendored 2.0) differences and how they are handled:
- `PromptEncoder.forward` has no `text_embeds`: we call it with no prompts (empty sparse tokens, the
  `no_mask_embed` dense embedding) and concatenate the text embedding as sparse token [B, 1, C] ourselves,
  which is exactly what the vendored encoder does.
- `SAM2Base` 1.x adds `no_obj_embed_spatial` and `use_signed_tpos_enc_to_obj_ptrs` (SAM2.1 features): both
  forced False (2.0 behaviour; a yaml setting them is refused). 2.0's `add_all_frames_to_correct_as_cond`
  is dropped (only used by SAM2's own tracking, which GLUS does not call).
- `_encode_new_memory` takes `object_score_logits` in 1.x: we run the memory-encoder steps ourselves
  (sigmoid -> x scale + bias -> `memory_encoder(..., skip_mask_sigmoid=True)`), no object-score gating.
- `SAM2Transforms` needs torchvision (not installed here): its two tensor ops are reproduced with torch
  (`Resize((1024, 1024))` on a tensor = bilinear, antialias=True; `Normalize` with ImageNet mean/std) and
  `postprocess_masks` (holes/sprinkles disabled in GLUS) is one bilinear interpolation, align_corners=False.
- The dynamic multimask settings of 2.0's `build_sam2(apply_postprocessing=True)` (stability delta 0.05,
  threshold 0.98) are set in `sam_mask_decoder_extra_args`; the model is in eval mode (quirk Q5).
- `PositionEmbeddingRandom` builds its grid in float32 in the package but in the Gaussian matrix's dtype
  in the vendored copy (a GLUS edit); the package version fails in bf16, so `dense_pe` computes the dense
  PE the vendored way (identical in float32).
- Hiera / FPN / memory attention / memory encoder / mask decoder are numerically the same code in both
  (1.x only adds a CUDA warm-up cache to the sine PE and drops the flash-attention kernel context).
- transformers 5 `CLIPVisionModel` state dicts drop the `vision_model.` prefix of 4.x checkpoints and the
  4.31 `position_ids` buffer; both are mapped on load. LLaMA's saved `rotary_emb.inv_freq` buffers are
  checked against the recomputed frequencies and dropped.

Quirk Q1: by default the memory-encoder fuser gammas are NOT loaded (transformers 4.31 renames checkpoint
keys containing "gamma"/"beta" to "weight"/"bias", so they never reach the model and keep the yaml's
`layer_scale_init_value`, 1e-6); `load_fuser_gamma=True` loads them.
Quirk Q6: key-frame mode writes every frame under its own name (glus-jax decision; README section 10).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glus_jax.data.conversation import (
    INFERENCE_FAILED_ANSWER,
    answer_from_output,
    inference_prompt,
)
from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX, GLUSTokenizer

# SAM2Transforms' Normalize constants (ImageNet).
SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)
# build_sam2(apply_postprocessing=True) overrides of the vendored 2.0 builder.
SAM_DECODER_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
# SAM2Base arguments that only exist in sam2 >= 2.1 and must keep their 2.0 behaviour (off).
_SAM21_ONLY_FLAGS = ("no_obj_embed_spatial", "use_signed_tpos_enc_to_obj_ptrs")
# SAM2Base arguments of the vendored 2.0 that the package no longer accepts (unused by GLUS).
_SAM20_ONLY_ARGS = ("add_all_frames_to_correct_as_cond",)

GLUS_LLM_PREFIX = "model."
GLUS_SAM_PREFIX = "model.visual_model."
GLUS_VISION_TOWER_PREFIX = "model.vision_tower."


# ------------------------------------------------------------------------------------------ loading helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a HF directory with model.safetensors / a sharded safetensors index."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        return load_file(str(path))
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            out.update(load_file(str(path / shard)))
        return out
    raise FileNotFoundError(f"{path}: no safetensors weights (model.safetensors or an index) found")


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                 allow_missing: Sequence[str] = ()) -> None:
    """load_state_dict that reports missing / unexpected / mis-shaped keys by name."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and k not in allow_missing)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                    for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(f"{what}: state dict does not fit the model: missing={missing} "
                         f"unexpected={unexpected} mis-shaped={shapes}")
    module.load_state_dict({k: _as_tensor(v) for k, v in state.items()}, strict=False)


def _sub_state(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _fix_key_431(key: str) -> str:
    """transformers 4.31 `_load_pretrained_model._fix_key`: "beta" -> "bias", else "gamma" -> "weight"."""
    if "beta" in key:
        return key.replace("beta", "bias")
    if "gamma" in key:
        return key.replace("gamma", "weight")
    return key


def build_sam2_base(sam_config: str | Path | Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate the package's SAM2Base from a SAM2 (2.0-style) yaml path or its parsed mapping.

    `sam_config` is a yaml file, the name of a yaml shipped with the package (e.g. "sam2_hiera_l.yaml"),
    or a mapping with a "model" node (the whole yaml) or the model node itself.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (registers nothing we need; makes the `_target_` modules importable)

    if isinstance(sam_config, Mapping):
        cfg = OmegaConf.create(dict(sam_config))
        source = "<in-memory SAM2 config>"
    else:
        path = Path(sam_config)
        if not path.is_file():
            shipped = Path(sam2.__file__).parent / "configs" / "sam2" / path.name
            if not shipped.is_file():
                raise FileNotFoundError(f"{sam_config}: SAM2 config not found (neither a file nor a "
                                        f"config shipped with the sam2 package)")
            path = shipped
        cfg = OmegaConf.load(path)
        source = str(path)
    model_cfg = cfg.model if "model" in cfg else cfg
    if "_target_" not in model_cfg:
        raise ValueError(f"{source}: no SAM2 model node with a _target_")
    for flag in _SAM21_ONLY_FLAGS:
        if model_cfg.get(flag, False):
            raise ValueError(f"{source}: {flag}=true is a SAM2.1 feature; GLUS uses SAM2.0 behaviour")
        model_cfg[flag] = False
    for arg in _SAM20_ONLY_ARGS:
        model_cfg.pop(arg, None)
    extra = model_cfg.get("sam_mask_decoder_extra_args")
    extra = OmegaConf.to_container(extra) if extra is not None else {}
    model_cfg["sam_mask_decoder_extra_args"] = {**extra, **SAM_DECODER_POSTPROCESSING}
    OmegaConf.resolve(cfg)
    model = instantiate(model_cfg, _recursive_=True)
    return model.eval()


def _clip_image_processor(source: Any):
    """transformers' CLIP image processor (the PIL/numpy backend when torchvision is absent)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # older transformers: the slow processor is CLIPImageProcessor itself
        from transformers import CLIPImageProcessor as Processor
    if source is None:
        return Processor()
    if isinstance(source, Mapping):
        cfg = {k: v for k, v in source.items() if k not in ("image_processor_type", "processor_class")}
        return Processor(**cfg)
    if isinstance(source, (str, Path)):
        return Processor.from_pretrained(str(source))
    return source  # an image processor instance


# ------------------------------------------------------------------------------------------ the model
class TorchGLUS:
    """GLUS inference from the PyTorch reference parts (transformers LLaMA + CLIP, the `sam2` package).

    Build with `TorchGLUS.from_pretrained(glus_dir, clip_dir, sam_config)` (a GLUS-layout HF checkpoint
    directory with its tokenizer, a CLIPVisionModel directory with preprocessor_config.json, a SAM2 yaml) or
    with the constructor from in-memory state dicts and configs.

    Args:
      glus_config: the GLUS config.json as a dict (LLaMA fields, mm_hidden_size, mm_vision_select_layer,
        out_dim; `rope_theta` optional, default 10000).
      glus_state: GLUS-layout state dict (`lm_head.weight`, `model.embed_tokens.weight`, `model.layers.*`,
        `model.norm.weight`, `model.mm_projector.*`, `model.text_hidden_fcs.0.{0,2}.*`,
        `model.visual_model.*`); `model.vision_tower.*` keys are ignored (the CLIP tower comes from
        `clip_state`, as inference_iter's `--vision-tower` does), as are `rotary_emb.inv_freq` buffers
        (checked against the recomputed RoPE frequencies).
      clip_config: the CLIPVisionModel config.json as a dict.
      clip_state: CLIPVisionModel state dict (`vision_model.*`).
      sam_config: SAM2 yaml path / shipped name / mapping (see `build_sam2_base`).
      tokenizer: the GLUS tokenizer ([SEG], <im_start>, <im_end> added).
      clip_processor: CLIP image processor, its preprocessor_config.json dict or directory (default: the
        CLIP defaults, identical to openai/clip-vit-large-patch14's).
      load_fuser_gamma: quirk Q1; False (default) reproduces the original loader (gammas stay at the yaml's
        layer_scale_init_value); True loads the checkpoint's gammas.
      mem_stride: memory-bank stride r (inference_iter's --mem_stride, default 3).
      context_frame_num, question_frame_num: 4 and 4 in GLUS.
      num_maskmem: GLUS's memory-bank span (its own kwarg, default 7).
      use_mem_bank: False is inference_iter's --not_use_mem_bank (no_mem_embed on every frame).
      image_size: SAM2 input resolution (1024).
      device, dtype: where and in which dtype every module runs (float32 reproduces the oracle; the
        reference's bf16 mode casts the whole model and the pixel inputs to bfloat16 likewise).
      attn_implementation: LLaMA / CLIP attention ("eager" as transformers 4.31, or "sdpa").
    """

    def __init__(
        self,
        *,
        glus_config: Mapping[str, Any],
        glus_state: Mapping[str, Any],
        clip_config: Mapping[str, Any],
        clip_state: Mapping[str, Any],
        sam_config: str | Path | Mapping[str, Any],
        tokenizer: GLUSTokenizer,
        clip_processor: Any = None,
        load_fuser_gamma: bool = False,
        mem_stride: int = 3,
        context_frame_num: int = 4,
        question_frame_num: int = 4,
        num_maskmem: int = 7,
        use_mem_bank: bool = True,
        image_size: int = 1024,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "eager",
    ):
        from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

        if mem_stride < 1:
            raise ValueError(f"mem_stride must be >= 1, got {mem_stride}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.context_frame_num = context_frame_num
        self.question_frame_num = question_frame_num
        self.mem_stride = mem_stride
        self.num_maskmem = num_maskmem
        self.use_mem_bank = use_mem_bank
        self.image_size = image_size
        self.load_fuser_gamma = load_fuser_gamma
        if tokenizer.seg_token_id is None:
            raise ValueError(f"{tokenizer.source}: tokenizer has no [SEG] token")
        self.seg_token_id = tokenizer.seg_token_id

        glus_state = {k: _as_tensor(v) for k, v in glus_state.items()}
        vocab = int(glus_config["vocab_size"])
        if len(tokenizer) != vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, GLUS config vocab_size is {vocab}")

        # ---------------- LLaMA (transformers LlamaForCausalLM from the LLaMA fields of config.json)
        if glus_config.get("rope_scaling") not in (None, {}):
            raise ValueError(f"rope_scaling={glus_config['rope_scaling']!r} is not supported")
        n_heads = int(glus_config["num_attention_heads"])
        llama_cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=int(glus_config["hidden_size"]),
            intermediate_size=int(glus_config["intermediate_size"]),
            num_hidden_layers=int(glus_config["num_hidden_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=int(glus_config.get("num_key_value_heads") or n_heads),
            hidden_act=glus_config.get("hidden_act", "silu"),
            max_position_embeddings=int(glus_config.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(glus_config.get("rms_norm_eps", 1e-6)),
            rope_parameters={"rope_type": "default",
                             "rope_theta": float(glus_config.get("rope_theta", 10000.0))},
            tie_word_embeddings=bool(glus_config.get("tie_word_embeddings", False)),
            attention_bias=False,
            use_cache=False,
        )
        llama_cfg._attn_implementation = attn_implementation
        self.llm = LlamaForCausalLM(llama_cfg)
        llm_state, inv_freqs = {}, []
        for k, v in glus_state.items():
            if k.startswith((GLUS_SAM_PREFIX, GLUS_VISION_TOWER_PREFIX, "model.mm_projector.",
                             "model.text_hidden_fcs.")):
                continue
            if k.endswith("rotary_emb.inv_freq"):
                inv_freqs.append((k, v))
                continue
            llm_state[k] = v
        _load_strict(self.llm, llm_state, "GLUS checkpoint (LLaMA part)",
                     allow_missing=[k for k in self.llm.state_dict() if k.endswith("inv_freq")])
        ref_inv = self.llm.model.rotary_emb.inv_freq.float()
        for k, v in inv_freqs:  # transformers 4.31 saved this buffer; it must be standard RoPE
            if v.shape != ref_inv.shape or not torch.allclose(v.float(), ref_inv, rtol=1e-6, atol=0):
                raise ValueError(f"GLUS checkpoint: {k} is not the RoPE frequency of rope_theta "
                                 f"{llama_cfg.rope_parameters['rope_theta']}")

        hidden = llama_cfg.hidden_size
        self.mm_projector = torch.nn.Linear(int(glus_config["mm_hidden_size"]), hidden)
        _load_strict(self.mm_projector, _sub_state(glus_state, "model.mm_projector."),
                     "GLUS checkpoint (mm_projector)")
        out_dim = int(glus_config.get("out_dim", 256))
        # GLUS text_hidden_fcs[0]: Linear, ReLU, Linear, Dropout(0)
        self.text_hidden_fc = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out_dim))
        _load_strict(self.text_hidden_fc, _sub_state(glus_state, "model.text_hidden_fcs.0."),
                     "GLUS checkpoint (text_hidden_fcs)")

        # ---------------- CLIP vision tower
        clip_cfg = CLIPVisionConfig.from_dict(dict(clip_config))
        clip_cfg._attn_implementation = attn_implementation
        self.clip = CLIPVisionModel(clip_cfg)
        clip_state = {k: _as_tensor(v) for k, v in clip_state.items()}
        own_keys = self.clip.state_dict()
        if not any(k.startswith("vision_model.") for k in own_keys):
            # transformers 5 CLIPVisionModel drops the `vision_model.` level of the saved (4.x) names.
            clip_state = {k.removeprefix("vision_model."): v for k, v in clip_state.items()}
        pos_key = next(k for k in own_keys if k.endswith("embeddings.position_embedding.weight"))
        pos_key = pos_key.replace("position_embedding.weight", "position_ids")
        pos_ids = clip_state.pop(pos_key, None)  # a persistent buffer in 4.31, not in 5.x
        if pos_ids is not None and not torch.equal(pos_ids.reshape(-1).long(), torch.arange(pos_ids.numel())):
            raise ValueError(f"CLIP checkpoint: {pos_key} is not arange")
        _load_strict(self.clip, clip_state, "CLIP checkpoint", allow_missing=[pos_key])
        self.clip_select_layer = int(glus_config.get("mm_vision_select_layer", -2))
        if clip_cfg.hidden_size != self.mm_projector.in_features:
            raise ValueError(f"CLIP hidden size {clip_cfg.hidden_size} != GLUS mm_hidden_size "
                             f"{self.mm_projector.in_features}")
        n_patches = (clip_cfg.image_size // clip_cfg.patch_size) ** 2
        if n_patches % 4:
            raise ValueError(f"{n_patches} CLIP patches are not divisible by the AvgPool1d(4) window")
        self.image_tokens = n_patches // 4  # 64 for ViT-L/14 at 224
        # GLUS's image_features_num: extra positions each <image> placeholder expands to.
        self.image_features_num = self.image_tokens - 1
        self.clip_processor = _clip_image_processor(clip_processor)

        # ---------------- SAM2 (package modules)
        self.sam = build_sam2_base(sam_config)
        sam_state = {}
        for k, v in glus_state.items():
            if not k.startswith(GLUS_SAM_PREFIX):
                continue
            k = k.removeprefix(GLUS_SAM_PREFIX)
            if not load_fuser_gamma:
                k = _fix_key_431(k)
            sam_state[k] = v
        own = self.sam.state_dict()
        # What the 4.31 loader drops: renamed keys that match no parameter (the fuser gammas).
        dropped = sorted(k for k in sam_state if k not in own and not load_fuser_gamma)
        dropped_ok = [k for k in dropped
                      if k.endswith(".weight") and k.removesuffix(".weight") + ".gamma" in own]
        if dropped != dropped_ok:
            bad = sorted(set(dropped) - set(dropped_ok))
            raise ValueError(f"GLUS checkpoint (visual_model): unexpected keys {bad}")
        for k in dropped:
            del sam_state[k]
        self.fuser_gamma_keys_dropped = [k.removesuffix(".weight") + ".gamma" for k in dropped]
        # Without load_fuser_gamma, gammas keep their constructor value whether or not the file has them.
        _load_strict(self.sam, sam_state, "GLUS checkpoint (visual_model)",
                     allow_missing=[] if load_fuser_gamma else [k for k in own if k.endswith(".gamma")])

        for m in (self.llm, self.mm_projector, self.text_hidden_fc, self.clip, self.sam):
            m.to(device=self.device, dtype=dtype).eval()
        self._sam_mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
        self._sam_std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, glus_dir: str | Path, clip_dir: str | Path, sam_config: str | Path | Mapping,
                        **kwargs: Any) -> TorchGLUS:
        """Load a GLUS-layout HF checkpoint directory (config.json, safetensors weights, tokenizer files),
        a CLIPVisionModel directory (config.json, weights, preprocessor_config.json) and a SAM2 yaml.

        Other keyword arguments go to the constructor; `tokenizer` may be a GLUSTokenizer or a tokenizer
        directory (default: `glus_dir`)."""
        glus_dir, clip_dir = Path(glus_dir), Path(clip_dir)
        for d in (glus_dir, clip_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: checkpoint directory not found")
        tokenizer = kwargs.pop("tokenizer", None) or glus_dir
        if not isinstance(tokenizer, GLUSTokenizer):
            tokenizer = GLUSTokenizer.from_dir(tokenizer)
        processor = kwargs.pop("clip_processor", None)
        if processor is None and (clip_dir / "preprocessor_config.json").is_file():
            processor = clip_dir
        return cls(
            glus_config=_read_json(glus_dir / "config.json"),
            glus_state=read_state_dict(glus_dir),
            clip_config=_read_json(clip_dir / "config.json"),
            clip_state=read_state_dict(clip_dir),
            sam_config=sam_config,
            tokenizer=tokenizer,
            clip_processor=processor,
            **kwargs,
        )

    # -------------------------------------------------------------------------------- preprocessing
    def preprocess_clip(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> CLIP pixel values [3, 224, 224] (CLIPImageProcessor.preprocess)."""
        pixels = self.clip_processor.preprocess(frame, return_tensors="pt")["pixel_values"][0]
        return pixels.to(self.device, self.dtype)

    def preprocess_sam(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> SAM2 input [3, S, S]: SAM2Transforms (ToTensor, Resize, Normalize).

        torchvision's Resize on a tensor is `interpolate(bilinear, align_corners=False, antialias=True)`.
        """
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div(255.0)
        x = F.interpolate(x[None], (self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)[0]
        x = (x - self._sam_mean) / self._sam_std
        return x.to(self.device, self.dtype)

    # -------------------------------------------------------------------------------- LLaVA side
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP pixels [N, 3, 224, 224] -> LLM image tokens [N, 64, D] (llava_arch.encode_images).

        hidden_states[select_layer] without CLS -> AvgPool1d(4, 4) over the token axis (1x4 windows in
        raster order, quirk Q8) -> mm_projector.
        """
        out = self.clip(pixel_values=pixels, output_hidden_states=True)
        feats = out.hidden_states[self.clip_select_layer][:, 1:]  # [N, 256, C]
        feats = F.avg_pool1d(feats.transpose(1, 2), kernel_size=4, stride=4).transpose(1, 2)
        return self.mm_projector(feats)

    def splice(self, input_ids: Sequence[int], image_features: torch.Tensor) -> torch.Tensor:
        """Token ids with IMAGE_TOKEN_INDEX placeholders -> input embeddings [L_expanded, D].

        The k-th placeholder is replaced by image_features[k] (prepare_inputs_labels_for_multimodal).
        """
        ids = torch.as_tensor(list(input_ids), device=self.device)
        where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
        if len(where) != image_features.shape[0]:
            raise ValueError(f"prompt has {len(where)} <image> placeholders for "
                             f"{image_features.shape[0]} images")
        embed = self.llm.model.embed_tokens
        pieces, start = [], 0
        for k, pos in enumerate(where):
            pieces += [embed(ids[start:pos]), image_features[k]]
            start = pos + 1
        pieces.append(embed(ids[start:]))
        return torch.cat(pieces, dim=0)

    def seg_positions(self, output_ids: Sequence[int], num_question: int) -> list[int] | None:
        """Rows of the expanded hidden states GLUS reads as [SEG] embeddings (GLUS.evaluate, quirk Q2).

        Every token followed by [SEG] in `output_ids` (prompt + generated token) is selected; its row is
        its id position plus image_features_num for each context image and for each [SEG] up to and
        including this one (one question image per round). None when the count of [SEG]s differs from
        `num_question` (the reference's length check fails and evaluate returns no mask).
        """
        ids = np.asarray(output_ids)
        follows_seg = np.flatnonzero(ids[1:] == self.seg_token_id)
        if len(follows_seg) != num_question:
            return None
        n = self.image_features_num
        return [int(p) + n * (self.context_frame_num + k + 1) for k, p in enumerate(follows_seg)]

    # -------------------------------------------------------------------------------- SAM2 side
    def memory_frames(self, frame_id: int, bank: Mapping[int, Any]) -> list[int]:
        """Bank entries GLUS.get_visual_embs attends to for relative frame `frame_id`, oldest first (Q4).

        t_rel = num_maskmem .. 1; t_rel 1 is the previous frame, the others every r-th frame below it;
        negative or absent entries are skipped.
        """
        r, chosen = self.mem_stride, []
        for t_pos in range(self.num_maskmem):
            t_rel = self.num_maskmem - t_pos
            prev = frame_id - 1 if t_rel == 1 else ((frame_id - 2) // r) * r - (t_rel - 2) * r
            if prev >= 0 and prev in bank:
                chosen.append(prev)
        return chosen

    def visual_embeddings(self, image: torch.Tensor, frame_id: int, bank: Mapping[int, Any]):
        """SAM2 image encode + GLUS memory conditioning of one frame (GLUS.get_visual_embs, batch 1).

        Returns (image_embed [1, C, h, w], high_res_feats [[1, C0, 4h, 4w], [1, C1, 2h, 2w]],
        vision_feats: the flattened [HW, 1, C] levels with the top level memory-conditioned, feat_sizes,
        used memory frame ids).
        """
        sam = self.sam
        backbone_out = sam.forward_image(image[None])  # conv_s0 / conv_s1 applied to the high-res levels
        _, vision_feats, vision_pos, feat_sizes = sam._prepare_backbone_features(backbone_out)
        # GLUS casts the levels to the pixel dtype (the FPN top-down path upcasts to float32).
        vision_feats = [f.to(image.dtype) for f in vision_feats]
        vision_pos = [p.to(image.dtype) for p in vision_pos]
        used = self.memory_frames(frame_id, bank) if (self.use_mem_bank and bank) else []
        if not used:
            # Empty bank (or nothing selectable): no_mem_embed added directly, no temporal encoding.
            vision_feats[-1] = vision_feats[-1] + sam.no_mem_embed
        else:
            memory = torch.cat([bank[f][0].flatten(2).permute(2, 0, 1) for f in used], dim=0)
            memory_pos = torch.cat([bank[f][1].flatten(2).permute(2, 0, 1) for f in used], dim=0)
            vision_feats[-1] = sam.memory_attention(
                curr=[vision_feats[-1]], curr_pos=[vision_pos[-1]],
                memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=0)
        maps = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
        return maps[-1], maps[:-1], vision_feats, feat_sizes, used

    def dense_pe(self) -> torch.Tensor:
        """PromptEncoder.get_dense_pe [1, C, h, w] as GLUS's vendored 2.0 computes it: the coordinate grid
        in the Gaussian matrix's dtype (the package builds it in float32, which fails in bf16 / fp16)."""
        pe = self.sam.sam_prompt_encoder
        layer = pe.pe_layer
        h, w = pe.image_embedding_size
        matrix = layer.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return layer._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)[None]

    def decode_mask(self, image_embed, high_res_feats, text_embed: torch.Tensor):
        """[SEG] embedding [C] -> (low-res mask logits [1, 1, 256, 256], iou predictions).

        The vendored 2.0 prompt encoder appends `text_embeds` after the (here empty) point/box tokens; the
        dense embedding is no_mask_embed. multimask_output=False with dynamic stability fallback (Q5).
        """
        pe = self.sam.sam_prompt_encoder
        sparse, dense = pe(points=None, boxes=None, masks=None)  # [1, 0, C], [1, C, h, w]
        # (GLUS casts the concatenation to the embedding's dtype: the empty sparse tensor is float32.)
        sparse = torch.cat([sparse, text_embed.reshape(1, 1, -1)], dim=1).to(text_embed.dtype)
        low_res, iou, _, _ = self.sam.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=high_res_feats,
        )
        return low_res, iou

    def encode_memory(self, vision_feats, feat_sizes, low_res: torch.Tensor):
        """GLUS's `_encode_new_memory` call: memory-conditioned top-level feature + mask logits upsampled to
        the SAM input size, sigmoid, x sigmoid_scale_for_mem_enc + sigmoid_bias_for_mem_enc (20, -10).

        Returns (maskmem_features [1, Cm, h, w], maskmem_pos_enc [1, Cm, h, w]).
        """
        sam = self.sam
        h, w = feat_sizes[-1]
        pix = vision_feats[-1].permute(1, 2, 0).reshape(1, -1, h, w)
        high = F.interpolate(low_res.float(), (self.image_size, self.image_size), mode="bilinear",
                             align_corners=False).to(low_res.dtype)
        mask = torch.sigmoid(high) * sam.sigmoid_scale_for_mem_enc + sam.sigmoid_bias_for_mem_enc
        out = sam.memory_encoder(pix, mask, skip_mask_sigmoid=True)
        return out["vision_features"], out["vision_pos_enc"][0]

    # -------------------------------------------------------------------------------- the loops
    @torch.inference_mode()
    def run_pass(self, frames: np.ndarray, context: Sequence[int], order: Sequence[int],
                 expression: str) -> list[dict[str, Any]]:
        """One `inference_frames` call: context frames `context`, query frames `order` (video indices).

        Returns one record per query frame (in `order`) with the step's prompt, ids, generated token,
        logits at the last position, [SEG] embeddings, mask logits at the frame's size, etc.
        """
        ctx, q = self.context_frame_num, self.question_frame_num
        if len(context) != ctx:
            raise ValueError(f"need {ctx} context frames, got {len(context)}")
        if not order:
            raise ValueError("a pass needs at least one query frame")
        sequence = list(context) + list(order)
        # inference_frames pre-processes every image of the pass (CLIP and SAM2) before the loop.
        clip_px = [self.preprocess_clip(frames[f]) for f in sequence]
        sam_px = [self.preprocess_sam(frames[f]) for f in sequence]
        bank: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # cleared per call (and at rel pos 0)
        answers: list[str] = []
        records = []
        for i in range(1, len(order) + 1):
            t0 = time.perf_counter()
            lo = max(ctx, ctx + i - q)
            window = list(range(lo, ctx + i))
            n_q = len(window)
            rel_pos = i - 1
            prompt = inference_prompt(expression, n_q, answers[len(answers) - (n_q - 1):] if n_q > 1 else [])
            input_ids = self.tokenizer.tokenizer_image_token(prompt)
            # -- LLM: CLIP on every prompt image, splice, one full forward, greedy next token
            image_features = self.encode_images(torch.stack([clip_px[k] for k in range(ctx)] +
                                                            [clip_px[k] for k in window]))
            embeds = self.splice(input_ids, image_features)
            hidden = self.llm.model(inputs_embeds=embeds[None], use_cache=False).last_hidden_state
            logits = self.llm.lm_head(hidden)  # full logits, as the reference's generate step
            token = int(torch.argmax(logits[0, -1]))
            output_ids = list(input_ids) + [token]
            positions = self.seg_positions(output_ids, n_q)
            record: dict[str, Any] = {
                "frame": sequence[ctx + i - 1], "rel_pos": rel_pos, "prompt": prompt,
                "input_ids": np.asarray(input_ids, np.int64), "generated_token": token,
                "lm_logits_last": logits[0, -1].float().cpu().numpy(),
                "final_hidden_last": hidden[0, -1].float().cpu().numpy(),
            }
            h, w = frames.shape[1:3]
            if positions is None:
                # inference_frames' fallback: blank mask, no memory for this frame, history "...[SEG] ."
                answers.append(INFERENCE_FAILED_ANSWER)
                record.update(seg_emitted=False, seg_positions=None, seg_embeddings=None, text_embeds=None,
                              low_res_logits=None, memory_frames=None,
                              logits=np.zeros((h, w), np.float32), mask=np.zeros((h, w), bool))
                record["seconds"] = time.perf_counter() - t0
                records.append(record)
                continue
            seg_embeddings = self.text_hidden_fc(hidden[0])[positions]  # [n_q, out_dim]
            text_embed = seg_embeddings[-1]  # decode_iter: only the newest frame's [SEG] reaches SAM2
            if rel_pos == 0:
                bank.clear()
            image_embed, high_res, vision_feats, feat_sizes, used = self.visual_embeddings(
                sam_px[ctx + i - 1], rel_pos, bank)
            low_res, _ = self.decode_mask(image_embed, high_res, text_embed)
            mask_logits = F.interpolate(low_res.float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
            if self.use_mem_bank:
                bank[rel_pos] = self.encode_memory(vision_feats, feat_sizes, low_res)
            answers.append(answer_from_output(self.tokenizer, output_ids))
            logits_np = mask_logits.float().cpu().numpy()
            record.update(
                seg_emitted=True, seg_positions=positions,
                seg_embeddings=seg_embeddings.float().cpu().numpy(),
                text_embeds=text_embed.float().cpu().numpy(),
                low_res_logits=low_res[0, 0].float().cpu().numpy(), memory_frames=used,
                logits=logits_np, mask=logits_np > 0,
            )
            record["seconds"] = time.perf_counter() - t0
            records.append(record)
        return records

    @staticmethod
    def context_frames(num_frames: int, context_frame_num: int = 4) -> list[int]:
        """inference_video's context frames: the middle clip of `frame_clips` (clip i takes, of each of the
        linspace segments [b_j, b_{j+1}), frame min(b_j + i, b_{j+1} - 1))."""
        bounds = np.linspace(0, num_frames, context_frame_num + 1, dtype=int)
        n_clips = math.ceil(num_frames / context_frame_num)
        i = n_clips // 2
        return [int(min(bounds[j] + i, bounds[j + 1] - 1)) for j in range(context_frame_num)]

    @torch.inference_mode()
    def segment(self, frames_uint8: np.ndarray, expression: str,
                key_frame: int | None = None) -> dict[str, Any]:
        """Segment `expression` in a video, as inference_video does.

        Args:
          frames_uint8: RGB frames [T, H, W, 3] uint8, in video order.
          expression: the referring expression (raw; normalised as the reference does).
          key_frame: index of the key frame (None or 0: one forward pass over the whole video); otherwise a
            forward pass key_frame..T-1 and a backward pass key_frame..0 (same context frames), every frame
            under its own name, the backward pass winning for the key frame (quirk Q6, glus-jax naming).

        Returns a dict: masks [T, H, W] bool, logits [T, H, W] float32 (mask logits at frame size; zeros for
        fallback frames), and per step in execution order: token_ids (prompt ids with -200 placeholders),
        generated_tokens, seg_embeddings ([n_seg, out_dim] or None), text_embeds ([out_dim] or None),
        step_frames, step_pass, seg_emitted; plus context_frames, passes (frame orders), steps (the full
        per-step records), seconds (wall time of the whole call).
        """
        frames = np.asarray(frames_uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        t = frames.shape[0]
        k = 0 if key_frame is None else int(key_frame)
        if not 0 <= k < t:
            raise ValueError(f"key frame {k} outside a video of {t} frames")
        t0 = time.perf_counter()
        context = self.context_frames(t, self.context_frame_num)
        passes = [list(range(k, t))] + ([list(range(k, -1, -1))] if k > 0 else [])
        steps, chosen = [], {}
        for p, order in enumerate(passes):
            for rec in self.run_pass(frames, context, order, expression):
                rec["pass"] = p
                chosen[rec["frame"]] = len(steps)  # later passes overwrite (backward wins)
                steps.append(rec)
        return {
            "masks": np.stack([steps[chosen[f]]["mask"] for f in range(t)]),
            "logits": np.stack([steps[chosen[f]]["logits"] for f in range(t)]),
            "token_ids": [s["input_ids"] for s in steps],
            "generated_tokens": [s["generated_token"] for s in steps],
            "seg_embeddings": [s["seg_embeddings"] for s in steps],
            "text_embeds": [s["text_embeds"] for s in steps],
            "seg_emitted": [s["seg_emitted"] for s in steps],
            "step_frames": [s["frame"] for s in steps],
            "step_pass": [s["pass"] for s in steps],
            "context_frames": context,
            "passes": passes,
            "steps": steps,
            "seconds": time.perf_counter() - t0,
        }


# ------------------------------------------------------------------------------------------ command line
def load_frames(path: str | Path) -> np.ndarray:
    """RGB uint8 [T, H, W, 3] from a folder of frames (sorted by name, decoded with cv2 as inference_iter
    does) or from a .npy / .npz (key `frames_rgb`, else its only array)."""
    import cv2

    path = Path(path)
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not names:
            raise FileNotFoundError(f"{path}: no .jpg / .png frames")
        frames = []
        for name in names:
            bgr = cv2.imread(str(name))
            if bgr is None:
                raise ValueError(f"{name}: cannot decode image")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return np.stack(frames)
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".npz":
        data = np.load(path)
        if "frames_rgb" in data.files:
            return data["frames_rgb"]
        if len(data.files) == 1:
            return data[data.files[0]]
        raise ValueError(f"{path}: no 'frames_rgb' array among {data.files}")
    raise ValueError(f"{path}: expected a frame folder, .npy or .npz")


def main(argv: Sequence[str] | None = None) -> int:
    """Time the reference on one video: `python -m benchmarks.torch_reference --glus DIR --clip DIR
    --sam-config YAML --frames DIR|NPZ --expression TEXT [--key-frame K] [--threads N] [--out FILE.npz]`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--glus", required=True, help="GLUS-layout HF checkpoint directory")
    parser.add_argument("--clip", required=True, help="CLIPVisionModel directory")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --glus)")
    parser.add_argument("--sam-config", required=True, help="SAM2 yaml (2.0 layout)")
    parser.add_argument("--frames", required=True, help="frame folder, .npy or .npz")
    parser.add_argument("--expression", required=True)
    parser.add_argument("--key-frame", type=int, default=None)
    parser.add_argument("--load-fuser-gamma", action="store_true")
    parser.add_argument("--mem-stride", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=1, help="time the whole video this many times")
    parser.add_argument("--out", default=None, help="write masks / logits / per-step tokens to this .npz")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = TorchGLUS.from_pretrained(
        args.glus, args.clip, args.sam_config, tokenizer=args.tokenizer,
        load_fuser_gamma=args.load_fuser_gamma, mem_stride=args.mem_stride, device=args.device,
        dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - t0
    frames = load_frames(args.frames)
    runs = [model.segment(frames, args.expression, key_frame=args.key_frame) for _ in range(args.repeat)]
    out = runs[-1]
    print(json.dumps({
        "frames": int(frames.shape[0]), "frame_size": list(frames.shape[1:3]), "steps": len(out["steps"]),
        "load_seconds": round(load_s, 3), "video_seconds": [round(r["seconds"], 3) for r in runs],
        "step_seconds": [round(s["seconds"], 3) for s in out["steps"]],
        "seg_emitted": out["seg_emitted"], "threads": torch.get_num_threads(), "device": args.device,
        "dtype": args.dtype,
    }))
    if args.out:
        np.savez_compressed(args.out, masks=out["masks"], logits=out["logits"],
                            generated_tokens=np.asarray(out["generated_tokens"]),
                            step_frames=np.asarray(out["step_frames"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
