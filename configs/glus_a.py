"""GLUS-A: all RefVOS datasets (scripts/train_glus_a.sh: 50 epochs x 100 steps, rates 40,150,4,30,30,
no contrastive loss)."""

from configs.base import base_config


def get_config():
    c = base_config()
    c.data.datasets = ("mevis", "refyoutube_vos", "davis17", "revos", "lvvis")
    c.data.sample_rates = (40, 150, 4, 30, 30)
    c.train.steps = 50 * 100
    c.train.contrastive = False
    return c
