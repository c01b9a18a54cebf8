"""Model registry: a dict filled by a decorator; `create_model(name, in_channels, n_classes)`."""
from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(fn):
        MODELS[name] = fn
        return fn
    return add


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, in_channels: int, n_classes: int, **kw) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name](in_channels=in_channels, n_classes=n_classes, **kw)


def _conv_block(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2)
    nn.init.kaiming_normal_(conv.weight, a=0.1)
    nn.init.zeros_(conv.bias)
    return [conv, nn.ReLU(), nn.BatchNorm2d(c_out)]


@register_model("tutorial_cnn")
def tutorial_cnn(in_channels: int, n_classes: int) -> nn.Module:
    """The common UrbanSound8K tutorial CNN: four stride-2 conv blocks (8, 16, 32, 64 channels;
    5x5 then 3x3), ReLU then BatchNorm, Kaiming init, global average pool, one linear layer."""
    return nn.Sequential(
        *_conv_block(in_channels, 8, 5),
        *_conv_block(8, 16, 3),
        *_conv_block(16, 32, 3),
        *_conv_block(32, 64, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, n_classes),
    )


@register_model("wide_cnn")
def wide_cnn(in_channels: int, n_classes: int) -> nn.Module:
    """The tutorial CNN at twice the width (16..128 channels) with dropout before the classifier."""
    return nn.Sequential(
        *_conv_block(in_channels, 16, 5),
        *_conv_block(16, 32, 3),
        *_conv_block(32, 64, 3),
        *_conv_block(64, 128, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, n_classes),
    )
