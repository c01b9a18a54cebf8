"""Models: every registered model trains (forward + backward) on each front end's feature shape;
parameters travel from the config (YAML, --set) to the model and to MLflow's names; unknown ones
are refused up front; tutorial_cnn is the model it always was."""

import pytest
import torch
from torch import nn

from bench.core.config import ConfigError, RunConfig, flatten, load_yaml, merge, parse_overrides
from bench.models import MODELS, ModelError, create_model, model_params
from bench.drivers.prepare import check_config
from bench.train.fit import setup_training

# One clip's feature shape per front end: log-mel 64 bands x 4 s at 22.05 kHz / hop 512, 128 bands
# x 4 s at 44.1 kHz, a linear spectrogram (n_fft 2048) of 1 s, a 64 x 64 image, stereo log-mel.
SHAPES = {
    "log-mel": (1, 64, 87),
    "log-mel-128": (1, 128, 173),
    "linear": (1, 1025, 40),
    "image": (1, 64, 64),
    "stereo": (2, 64, 87),
}


def cases() -> list:
    out = []
    for name in sorted(MODELS):
        for front, shape in SHAPES.items():
            if name != "vit" or shape[1] == shape[2]:  # vit takes square images only
                out.append(pytest.param(name, shape, id=f"{name}-{front}"))
    return out


@pytest.mark.parametrize("name,shape", cases())
def test_forward_and_backward_on_every_front_end_shape(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, 7, **({"image_size": shape[1]} if name == "vit" else {}))
    x = torch.randn(3, *shape)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)


def test_every_model_is_covered_by_the_shape_test():
    assert set(MODELS) == {"tutorial_cnn", "wide_cnn", "librosa_cnn", "keras_cnn", "vit", "strong"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tutorial_cnn_is_unchanged():
    """Parameter counts (a structural fact) and outputs for a fixed seed, both taken from the code
    before models took parameters (bench/models.py at a0f6e4c, `create_model(name, 2, 10)`)."""
    torch.manual_seed(0)
    model = create_model("tutorial_cnn", (2, 64, 87), 10).eval()
    assert n_params(model) == 25602
    assert n_params(create_model("tutorial_cnn", (1, 64, 87), 3)) == 24947
    x = torch.randn(3, 2, 64, 87, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)[0, :4]
    expected = torch.tensor([0.3427269458770752, -0.0355672612786293, -0.2135206013917923, -0.5006930232048035])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert model_params("tutorial_cnn") == {}


def test_layer_sizes_follow_the_tutorials():
    keras = create_model("keras_cnn", (1, 64, 64), 10)
    linears = [m for m in keras.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 3 * 3, 64), (64, 10)]
    assert [m.p for m in keras.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    librosa = create_model("librosa_cnn", (1, 128, 173), 10)
    linears = [m for m in librosa.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 32 * 43, 128), (128, 10)]
    valid = create_model("librosa_cnn", (1, 128, 173), 10, padding=0)  # Keras' 'valid'
    assert [m for m in valid.modules() if isinstance(m, nn.Linear)][0].in_features == 32 * 30 * 41
    strong = create_model("strong", (1, 64, 87), 10, width=16, depth=3)
    convs = [m.out_channels for m in strong.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 32, 32, 64, 64]


def vit_param_count(channels, classes, image, patch, width, depth, mlp_ratio=4):
    """ViT's parameters, counted from its definition (not from the code under test)."""
    hidden = int(width * mlp_ratio)
    layer = (3 * width * width + 3 * width) + (width * width + width)  # attention in/out
    layer += (width * hidden + hidden) + (hidden * width + width) + 4 * width  # MLP, two LayerNorms
    embed = patch * patch * channels * width + width + width + ((image // patch) ** 2 + 1) * width
    return embed + depth * layer + 2 * width + width * classes + classes


def test_vit_has_the_tutorial_size_by_parameters():
    size = dict(image_size=480, patch_size=16, width=768, depth=12, heads=12)
    with torch.device("meta"):  # no memory, no training: only the structure
        model = create_model("vit", (1, 480, 480), 10, **size)
    assert n_params(model) == vit_param_count(1, 10, 480, 16, 768, 12) == 85_953_802
    small = create_model("vit", (1, 64, 64), 10)
    assert n_params(small) == vit_param_count(1, 10, 64, 8, 128, 4)
    assert len(small.blocks) == 4 and small.blocks[0].norm_first
    assert not torch.equal(small.blocks[0].linear1.weight, small.blocks[1].linear1.weight)


@pytest.mark.parametrize(
    "shape,params,match",
    [
        ((1, 64, 87), {}, "needs 64x64 features, got 64x87"),
        ((1, 64, 64), {"image_size": 32}, "needs 32x32 features, got 64x64"),
        ((1, 60, 60), {"image_size": 60}, "patch_size must divide image_size"),
        ((1, 64, 64), {"width": 100, "heads": 3}, "heads must divide width"),
    ],
)
def test_vit_refuses_inputs_and_sizes_it_cannot_take(shape, params, match):
    with pytest.raises(ModelError, match=match):
        create_model("vit", shape, 10, **params)


def test_inputs_too_small_for_a_flattening_model_are_a_clear_error():
    with pytest.raises(ModelError, match="too small"):
        create_model("keras_cnn", (1, 8, 8), 10)


def test_a_set_parameter_reaches_the_model_and_mlflow_names():
    cfg = merge(RunConfig(), parse_overrides(["model.name=strong", "model.params.width=8", "model.params.depth=2"]))
    assert cfg.model.params == {"width": 8, "depth": 2}  # read as YAML: ints
    flat = flatten(cfg)
    assert flat["model.params.width"] == 8 and flat["model.params.depth"] == 2
    assert "model.params" not in flat and RunConfig().model.params == {}
    assert merge(cfg, {"model.params.width": 16}).model.params == {"width": 16, "depth": 2}
    assert cfg.model.params == {"width": 8, "depth": 2}  # merge copied, did not change cfg
    model, *_ = setup_training(check_config(cfg), (1, 32, 40), 3, 10, torch.device("cpu"))
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16]


def test_params_from_yaml_and_back(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: vit, params: {depth: 6, image_size: 32}}\n")
    cfg = load_yaml(path)
    assert cfg.model.name == "vit" and cfg.model.params == {"depth": 6, "image_size": 32}
    from bench.core.config import dump_yaml

    path.write_text(dump_yaml(cfg))
    assert load_yaml(path).model.params == {"depth": 6, "image_size": 32}
    assert merge(cfg, {"model.params": {}}).model.params == {}  # an empty mapping clears


def test_unknown_parameter_is_a_config_error_naming_the_model_and_its_parameters():
    cfg = merge(RunConfig(), {"model.name": "strong", "model.params.depht": 3})
    with pytest.raises(ConfigError, match=r"'strong' takes no parameter 'depht'.*width=32.*depth=4"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="'tutorial_cnn' takes no parameter 'depth'.*none"):
        check_config(merge(RunConfig(), {"model.params.depth": 3}))
    with pytest.raises(ConfigError, match="a parameter value"):
        merge(RunConfig(), {"model.params.depth": {"a": 1}})
