"""GLUS-S: LISA-7B-v1 + SAM2 hiera-large, trained on MeViS + Ref-YouTube-VOS with the contrastive loss
(scripts/train_glus_s.sh: 30 epochs x 100 steps, sample rates 1,1)."""

from configs.base import base_config


def get_config():
    return base_config()
