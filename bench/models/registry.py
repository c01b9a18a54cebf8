"""Model registry: a dict filled by a decorator; `create_model(name, input_shape, n_classes, **params)`.

A leaf module (it imports nothing of the package). A model is a function
`fn(input_shape, n_classes, *, param=default, ...)`: `input_shape` is one clip's feature shape
(channels, height = bands, width = frames), and every keyword-only argument is a model parameter,
set from the config's `model.params`. Its defaults are the parameters' defaults.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn
from bench.core.errors import FoldbenchError

MODELS: dict[str, Callable[..., nn.Module]] = {}


class ModelError(FoldbenchError, ValueError):
    """A model name, parameter or input shape the model cannot take."""


def register_model(name: str):
    def add(fn):
        MODELS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(MODELS)


def model_params(name: str) -> dict[str, Any]:
    """The parameters `name` accepts, with their defaults."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return {
        p.name: p.default
        for p in inspect.signature(MODELS[name]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def check_params(name: str, params: dict[str, Any]) -> None:
    """Refuse parameter names that model `name` does not take (cheap: the signature only)."""
    accepted = model_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise ModelError(
            f"model {name!r} takes no parameter {', '.join(map(repr, unknown))}; its parameters (defaults): {known}"
        )


def create_model(name: str, input_shape: tuple[int, int, int], n_classes: int, **params) -> nn.Module:
    check_params(name, params)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ModelError(f"model {name!r}: input_shape is (channels, height, width), got {input_shape}")
    return MODELS[name](tuple(int(s) for s in input_shape), int(n_classes), **params)
