import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides):
    from vitbook.model import ViTConfig

    fields = dict(
        image_size=28,
        patch_size=7,
        in_channels=1,
        num_classes=10,
        dim=32,
        depth=2,
        heads=4,
        mlp_dim=64,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


@pytest.fixture
def tiny_cfg():
    return tiny_config()
