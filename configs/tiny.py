"""Tiny GLUS for CPU tests and the generated-video world: small CLIP, LLaMA and hiera, float32."""

from configs.base import base_config


def get_config():
    c = base_config()
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.remat = False
    c.data.datasets = ("mevis",)
    c.data.sample_rates = (1,)
    c.data.max_seq_len = 256
    c.data.num_workers = 0
    c.train.steps = 300
    c.train.batch_size = 2
    c.train.grad_accum = 1
    c.train.warmup_steps = 20
    c.train.bank_size = 64
    c.train.num_negatives = 8
    c.train.log_every = 10
    c.train.ckpt_every = 100
    c.mesh.shape = (1, 1, 1)
    return c
