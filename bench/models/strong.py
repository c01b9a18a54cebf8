"""`strong`: a PANNs-style CNN, the from-scratch baseline.

After Kong, Cao, Iqbal, Wang, Wang and Plumbley, "PANNs: Large-Scale Pretrained Audio Neural Networks
for Audio Pattern Recognition", IEEE/ACM TASLP 28 (2020), arXiv:1912.10211, its CNN10 (and CNN14)
architecture: blocks of two 3x3 convolutions, each followed by BatchNorm and ReLU, then 2x2 average
pooling and dropout 0.2; the map is averaged over frequency, then max- plus mean-pooled over time;
dropout 0.5, a fully connected layer + ReLU, dropout 0.5, the classifier. Xavier-uniform
initialisation and bias-free convolutions as in the paper's code. PANNs' CNN10 has 4 blocks of 64,
128, 256, 512 channels for 64-band log-mels; the defaults here halve that width (32, 64, 128, 256)
to fit a CPU budget (`width` = first block's channels, doubling per block, `depth` blocks). The
input BatchNorm over Mel bands of PANNs is left out: the training loop already normalises each band
with statistics of the training folds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import ModelError, register_model


class ConvBlock(nn.Module):
    """Conv 3x3 + BN + ReLU, twice; then 2x2 average pooling (1 along a side already of size 1)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=(min(2, x.shape[-2]), min(2, x.shape[-1])))


class PannsCNN(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int, depth: int, dropout: float, head_dropout: float):
        super().__init__()
        sizes = [channels] + [width * 2**i for i in range(depth)]
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(sizes, sizes[1:]))
        self.dropout, self.head_dropout = dropout, head_dropout
        self.fc = nn.Linear(sizes[-1], sizes[-1])
        self.out = nn.Linear(sizes[-1], n_classes)
        for fc in (self.fc, self.out):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, channels, freq, time]
        for block in self.blocks:
            x = F.dropout(block(x), p=self.dropout, training=self.training)
        x = x.mean(dim=2)  # over frequency: [batch, channels, time]
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=self.head_dropout, training=self.training)
        x = F.relu(self.fc(x))
        x = F.dropout(x, p=self.head_dropout, training=self.training)
        return self.out(x)


@register_model("strong")
def strong(
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    width: int = 32,
    depth: int = 4,
    dropout: float = 0.2,
    head_dropout: float = 0.5,
) -> nn.Module:
    """PANNs-style CNN (see the module docstring): `depth` blocks of `width`, 2x`width`, ... channels."""
    if not 1 <= width <= 1024 or not 1 <= depth <= 8:
        raise ModelError(f"strong: width must be 1..1024 and depth 1..8, got width={width}, depth={depth}")
    if not (0 <= dropout < 1 and 0 <= head_dropout < 1):
        raise ModelError(f"strong: dropout and head_dropout must be in [0, 1), got {dropout}, {head_dropout}")
    return PannsCNN(input_shape[0], n_classes, width, depth, dropout, head_dropout)
