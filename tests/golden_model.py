"""The oracle's GLUS-tiny checkpoint reassembled from the golden pieces, for tests.

tests/golden holds GLUS-tiny split by the golden sets that use its parts: llava_glus_tiny/ (LLM, projector,
text_hidden_fcs, config.json), sam2_visual_model.safetensors + mem_weights.safetensors (the SAM2 visual
model, un-prefixed or `model.visual_model.`-prefixed keys), tok_glus_tiny/ (tokenizer),
llava_clip_vit_tiny/ (the CLIP vision tower) and sam2_hiera_tiny_oracle.yaml. `glus_tiny_checkpoint`
merges them back into the released HF layout (one model.safetensors + config.json + tokenizer files), which
`tools.convert_weights.glus.convert_glus` reads as it reads a real GLUS checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
CLIP_DIR = GOLDEN / "llava_clip_vit_tiny"
SAM2_YAML = GOLDEN / "sam2_hiera_tiny_oracle.yaml"
TOKENIZER_DIR = GOLDEN / "tok_glus_tiny"
SAM_PREFIX = "model.visual_model."
SAM_WEIGHTS = ("sam2_visual_model.safetensors", "mem_weights.safetensors")


def sam2_state_dict(prefix: str = SAM_PREFIX) -> dict:
    """The SAM2 visual model's tensors (numpy) with keys under `prefix` ("" = an official SAM2 state dict)."""
    from safetensors.numpy import load_file

    out = {}
    for name in SAM_WEIGHTS:
        for k, v in load_file(str(GOLDEN / name)).items():
            out[prefix + (k[len(SAM_PREFIX):] if k.startswith(SAM_PREFIX) else k)] = v
    return out


def glus_tiny_checkpoint(tmp_path: str | Path) -> Path:
    """Write GLUS-tiny in the released GLUS layout under `tmp_path`/GLUS-tiny and return that directory.

    Convert it with `convert_glus(dir, vision_tower=CLIP_DIR, sam2=SAM2_YAML)`."""
    from safetensors.numpy import load_file, save_file

    out = Path(tmp_path) / "GLUS-tiny"
    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    state = dict(load_file(str(GOLDEN / "llava_glus_tiny" / "model.safetensors")))
    state.update(sam2_state_dict())
    save_file(state, str(out / "model.safetensors"))
    shutil.copy(GOLDEN / "llava_glus_tiny" / "config.json", out / "config.json")
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    return out


def convert_glus_tiny(tmp_path: str | Path, **kwargs):
    """(GLUS model, tokenizer, source record) of the converted GLUS-tiny (kwargs go to `convert_glus`)."""
    from tools.convert_weights.glus import convert_glus

    return convert_glus(glus_tiny_checkpoint(tmp_path), vision_tower=CLIP_DIR, sam2=SAM2_YAML, **kwargs)
