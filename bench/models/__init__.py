"""Models: the registry (`registry.py`, a leaf) and one module per family, imported here so that
every model is registered. `create_model(name, input_shape, n_classes, **params)`."""

from __future__ import annotations

from bench.core.config import ConfigError, ModelConfig
from bench.models import cnn, strong, vit  # noqa: F401  (registers the models)
from bench.models.registry import (
    MODELS,
    ModelError,
    check_params,
    create_model,
    list_models,
    model_params,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelError",
    "check_model_config",
    "check_params",
    "create_model",
    "list_models",
    "model_params",
    "register_model",
]


def check_model_config(model: ModelConfig) -> None:
    """The model's name and parameter names, as a `ConfigError` (cheap: no model is built)."""
    if model.name not in MODELS:
        raise ConfigError(f"--model {model.name!r}: unknown; known: {', '.join(list_models())}")
    try:
        check_params(model.name, model.params)
    except ModelError as e:
        raise ConfigError(f"model.params: {e}") from None
