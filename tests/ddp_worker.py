"""Launched by test_train.py under torchrun: trains the test's tiny model with DDP and saves it."""

import sys

import torch
import torch.distributed as dist
from conftest import tiny_config
from test_train import RECIPE

from vitbook import data, train
from vitbook.model import ViT
from vitbook.transforms import DigitAugment

torch.manual_seed(0)
model = ViT(tiny_config())
train.fit(
    model,
    data.mnist("train").subset(range(512)),
    None,
    RECIPE,
    progress=False,
    augmentation=DigitAugment(),
)
if dist.get_rank() == 0:
    torch.save({"state_dict": model.state_dict(), "world_size": dist.get_world_size()}, sys.argv[1])
dist.destroy_process_group()
