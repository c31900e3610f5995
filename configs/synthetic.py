"""GLUS learning the synthetic world from scratch on a CPU (issue #8: the embedded demo model).

    glus-jax generate-data --root runs/world_data/mevis --split train --videos 400 --seed 0
    glus-jax train --config configs/synthetic.py --workdir runs/world   # -> runs/world/model

The model is the `synthetic_world` preset (glus_jax/models/presets_synthetic.py: CLIP patch 28 -> 16
tokens per frame, a 3-layer LLaMA over the world tokenizer, the tiny hiera at 128 px) with random
weights and the world tokenizer packaged in glus_jax/assets/world_tokenizer. Unlike GLUS, which
fine-tunes pretrained towers with LoRA, nothing here is pretrained: every tower is trained
(`train.trainable` names the three top-level modules) and LoRA is off. The data are the generator's
MeViS-layout videos (128 x 128 frames, `data.root`/mevis/train). Sizes and step count: one step
(batch 2, 3 expressions each) takes ~0.7 s of CPU time (~0.6-0.9 s wall on 2 idle cores, plus ~2 min
of compilation), so `train.steps` fits in about 20 minutes.
"""

from configs.base import base_config
from glus_jax.data.synthetic_tokenizer import world_tokenizer_dir


def get_config():
    c = base_config()
    c.model.preset = "synthetic_world"
    c.model.tokenizer = str(world_tokenizer_dir())
    c.model.dtype = "float32"
    c.model.remat = False

    c.data.root = "runs/world_data"  # GLUS --dataset_dir layout: runs/world_data/mevis/train
    c.data.datasets = ("mevis",)
    c.data.sample_rates = (1,)
    c.data.image_size = 128  # SAM2 input = the generated frame size
    c.data.max_mask_size = (128, 128)
    # The longest world conversation (two 7-word phrases joined by "and", the longest question template
    # in all 4 rounds) is 225 tokens before the image tokens are spliced in.
    c.data.max_seq_len = 232
    c.data.max_expressions = 3
    c.data.num_workers = 0
    c.data.num_threads = 1

    t = c.train
    t.steps = 1200  # 2,400 clips (x 3 expressions): ~15-20 min on 2 idle cores
    t.batch_size = 2
    t.grad_accum = 1
    t.lr = 1e-3  # from scratch, small towers: a larger step than GLUS's LoRA fine-tuning
    t.warmup_steps = 100
    t.weight_decay = 0.0
    t.lora_rank = 0
    t.trainable = ("llava", "text_hidden_fcs", "visual_model")
    t.bank_size = 64
    t.num_negatives = 8
    t.log_every = 10
    t.ckpt_every = 200
    t.keep_checkpoints = 2
    c.mesh.shape = (1, 1, 1)
    return c
