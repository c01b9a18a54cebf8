"""Plain CNNs: the tutorials' models, each as its tutorial builds it.

Inputs are feature banks [N, channels, height, width] (height = frequency bands, width = frames, or
N x N after an image resize). Models whose classifier is a flattened feature map get its size from
`input_shape`; an input too small for their pooling is a `ModelError` that says so.
"""

from __future__ import annotations

from torch import nn

from bench.models.registry import ModelError, register_model


def _conv_block(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2)
    nn.init.kaiming_normal_(conv.weight, a=0.1)
    nn.init.zeros_(conv.bias)
    return [conv, nn.ReLU(), nn.BatchNorm2d(c_out)]


@register_model("tutorial_cnn")
def tutorial_cnn(input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """The torchaudio-style UrbanSound8K tutorial CNN (the `seed` preset): four stride-2 conv blocks
    (8, 16, 32, 64 channels; 5x5 then 3x3), ReLU then BatchNorm, Kaiming init, global average pool,
    one linear layer. Any input size works (the pool is global)."""
    return nn.Sequential(
        *_conv_block(input_shape[0], 8, 5),
        *_conv_block(8, 16, 3),
        *_conv_block(16, 32, 3),
        *_conv_block(32, 64, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, n_classes),
    )


@register_model("wide_cnn")
def wide_cnn(input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """The tutorial CNN at twice the width (16..128 channels) with dropout before the classifier."""
    return nn.Sequential(
        *_conv_block(input_shape[0], 16, 5),
        *_conv_block(16, 32, 3),
        *_conv_block(32, 64, 3),
        *_conv_block(64, 128, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, n_classes),
    )


def _flat_size(name: str, input_shape: tuple[int, int, int], channels: int, steps) -> int:
    """Size of the flattened map after `steps`, each ("conv", kernel, stride, padding) or ("pool", k)."""
    h, w = input_shape[1:]
    for step in steps:
        if step[0] == "conv":
            _, k, s, p = step
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        else:
            h, w = h // step[1], w // step[1]
        if h < 1 or w < 1:
            raise ModelError(
                f"model {name!r}: input {input_shape[1]}x{input_shape[2]} is too small for its convolutions and pooling"
            )
    return channels * h * w


@register_model("librosa_cnn")
def librosa_cnn(input_shape: tuple[int, int, int], n_classes: int, *, padding: int = 1, hidden: int = 128) -> nn.Module:
    """The librosa folder-dataset tutorial's CNN (issue 9, preset `seed-librosa-cnn`): Conv 3x3 ->16
    + ReLU + MaxPool 2, Conv 3x3 16->32 + ReLU + MaxPool 2, flatten, Linear -> `hidden` (128) + ReLU,
    Linear -> classes. Convolutions pad by `padding` = 1 ('same'); 0 gives Keras' default 'valid'.
    PyTorch's default initialisation. The flatten size follows from `input_shape`, so a long linear
    spectrogram makes a large first Linear layer (32 x H/4 x W/4 inputs), as in the tutorial."""
    if padding not in (0, 1):
        raise ModelError(f"librosa_cnn: padding is 0 ('valid') or 1 ('same'), got {padding!r}")
    flat = _flat_size(
        "librosa_cnn", input_shape, 32, [("conv", 3, 1, padding), ("pool", 2), ("conv", 3, 1, padding), ("pool", 2)]
    )
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 3, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def _keras_init(model: nn.Module) -> nn.Module:
    """Keras' defaults: Glorot-uniform kernels, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register_model("keras_cnn")
def keras_cnn(
    input_shape: tuple[int, int, int], n_classes: int, *, dropout: float = 0.5, hidden: int = 64
) -> nn.Module:
    """The Keras CNN on GTZAN spectrogram images (N. S. Chauhan, "Audio Data Analysis Using Deep
    Learning with Python (Part 2)", KDnuggets, Feb 2020; preset `seed-gtzan-cnn`):
    Conv2D(32, 3x3, strides 2, 'valid'), AveragePooling2D(2), ReLU; Conv2D(64, 3x3, 'same'),
    AveragePooling2D(2), ReLU; Conv2D(64, 3x3, 'same'), AveragePooling2D(2), ReLU; Flatten,
    Dropout(0.5), Dense(64) + ReLU, Dropout(0.5), Dense(classes) (softmax is in the loss). Keras'
    Glorot-uniform initialisation. The tutorial feeds 64x64 RGB PNGs; here the input is the feature
    bank itself (its channels), e.g. a 64x64 spectrogram image: 64 x 3 x 3 = 576 flattened."""
    flat = _flat_size(
        "keras_cnn",
        input_shape,
        64,
        [("conv", 3, 2, 0), ("pool", 2), ("conv", 3, 1, 1), ("pool", 2), ("conv", 3, 1, 1), ("pool", 2)],
    )
    return _keras_init(
        nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 3, stride=2),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
    )
