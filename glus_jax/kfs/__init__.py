"""Key-frame selection for GLUS: pick the frame where the target is most recognizable and propagate
from it both ways (GLUS `inference_iter.py --use_kf --score_json`).

* `selector`: a trained selector on GLUS's own LLaVA (LoRA + `[SCORE]` tokens + an IoU head);
  `from_glus`, `SelectorPredictor`, `save_selector` / `load_selector`.
* `targets`: its training targets, the per-frame IoU GLUS achieves on training videos.
* `train`: the L1 training loop (`train_selector`, `train_from_targets`).
* `self_refine`: no selector: score frames from GLUS's own outputs, re-run from the best one
  (`self_refine`, `SelfRefiningPipeline`).
* `cli`: `glus-jax select-key-frames` / `kfs-targets` / `train-selector`; score files in the reference's
  JSON format (`glus_jax.inference.protocol.save_score_json` / `load_score_json`).
"""

from glus_jax.kfs.self_refine import SelfRefineConfig, SelfRefiningPipeline, frame_scores, self_refine

__all__ = ["SelfRefineConfig", "SelfRefiningPipeline", "frame_scores", "self_refine"]
