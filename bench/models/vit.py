"""A Vision Transformer on square spectrogram images (preset `seed-gtzan-vit`).

It follows the GTZAN tutorial "From Sound to Sight: Using Vision Transformers for Audio
Classification" (alessandro-ml.medium.com), which trains lucidrains' `vit-pytorch` ViT on Mel
spectrogram images, itself after Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021):
patch embedding, a class token, learned position embeddings, a pre-norm Transformer encoder, a final
LayerNorm and a linear head on the class token. The tutorial's size (image 480, patch 16, width 768,
depth 12, heads 12: about 86 M parameters) is available through the parameters; the defaults
(image 64, patch 8, width 128, depth 4, heads 4: about 0.8 M) train on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.registry import ModelError, register_model


class ViT(nn.Module):
    def __init__(
        self,
        channels: int,
        n_classes: int,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ):
        super().__init__()
        n_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        # Layers built one by one (nn.TransformerEncoder would deep-copy one layer's initial weights).
        self.blocks = nn.Sequential(
            *[
                nn.TransformerEncoderLayer(
                    width,
                    heads,
                    dim_feedforward=int(width * mlp_ratio),
                    dropout=dropout,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # [batch, patches, width]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(self.drop(x)))
        return self.head(x[:, 0])


@register_model("vit")
def vit(
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    dropout: float = 0.1,
) -> nn.Module:
    """ViT on square images of `image_size` (the features must be resized to it), see the module
    docstring for the source."""
    channels, h, w = input_shape
    if (h, w) != (image_size, image_size):
        raise ModelError(
            f"vit: image_size={image_size} needs {image_size}x{image_size} features, "
            f"got {h}x{w}; resize the features to {image_size}x{image_size} "
            f"or set model.params.image_size"
        )
    rules = [
        (patch_size >= 1 and image_size % patch_size == 0, "patch_size must divide image_size"),
        (width >= 1 and heads >= 1 and width % heads == 0, "heads must divide width"),
        (depth >= 1, "depth must be at least 1"),
        (mlp_ratio > 0, "mlp_ratio must be > 0"),
        (0 <= dropout < 1, "dropout must be in [0, 1)"),
    ]
    for ok, rule in rules:
        if not ok:
            raise ModelError(
                f"vit: {rule} (image_size={image_size}, patch_size={patch_size}, "
                f"width={width}, heads={heads}, depth={depth}, mlp_ratio={mlp_ratio}, "
                f"dropout={dropout})"
            )
    return ViT(channels, n_classes, image_size, patch_size, width, depth, heads, mlp_ratio, dropout)
