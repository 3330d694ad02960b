import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsys.errors import ConfigError, ModelError
from fedsys.models import MODELS, build_model, load_weights, to_arrays

# Every model on every input it applies to: tabular, 8x8 digits, 28x28 MNIST; token sequences.
SHAPES = [(30,), (1, 8, 8), (1, 28, 28)]
SEQUENCE_MODELS = ("lstm", "transformer")
CASES = [
    (name, shape)
    for name in MODELS
    for shape in SHAPES
    if (len(shape) == 3 or not name.endswith("cnn")) and (len(shape) == 1 or name not in SEQUENCE_MODELS)
]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_models_map_inputs_to_class_logits(name, shape):
    model = build_model(name, shape, 10)

    out = model(torch.zeros((4, *shape)))

    assert out.shape == (4, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_unknown_model_and_unsuitable_shape():
    with pytest.raises(
        ConfigError, match="one of logreg, mlp, cnn, tanh-mlp, tanh-cnn, lstm, transformer, got 'resnet'"
    ):
        build_model("resnet", (30,), 2)
    with pytest.raises(ConfigError, match="model 'cnn' needs image inputs"):
        build_model("cnn", (30,), 2)
    with pytest.raises(ConfigError, match="model 'tanh-cnn' needs image inputs"):
        build_model("tanh-cnn", (1, 28), 2)


@pytest.mark.parametrize("name", ["cnn", "tanh-cnn"])
def test_cnn_pools_28x28_down_to_7x7_before_a_small_head(name):
    model = build_model(name, (1, 28, 28), 10)

    features = model.features(torch.zeros(2, 1, 28, 28))

    assert features.shape == (2, 32, 7, 7)
    assert model.head[0].in_features == 32 * 7 * 7
    assert sum(p.numel() for p in model.parameters()) < 60_000


@pytest.mark.parametrize(("shape", "pooled"), [((1, 8, 8), (2, 2)), ((3, 5, 9), (2, 3)), ((1, 1, 1), (1, 1))])
def test_cnn_pools_any_image_size_rounding_up(shape, pooled):
    model = build_model("cnn", shape, 3)

    out = model(torch.zeros(2, *shape))

    assert out.shape == (2, 3)
    assert model.head[0].in_features == 32 * pooled[0] * pooled[1]


@pytest.mark.parametrize(("name", "base"), [("tanh-mlp", "mlp"), ("tanh-cnn", "cnn")])
def test_tanh_variants_are_their_base_model_with_tanh(name, base):
    shape = (1, 28, 28)
    model, plain = build_model(name, shape, 10), build_model(base, shape, 10)

    kinds = [type(m) for m in model.modules()]

    assert nn.Tanh in kinds and nn.ReLU not in kinds
    assert [type(m) for m in plain.modules() if not isinstance(m, nn.ReLU)] == [
        k for k in kinds if k is not nn.Tanh
    ]
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }


def test_weights_with_wrong_shape_or_names_or_nan_are_refused():
    model = build_model("logreg", (30,), 2)
    good = to_arrays(model)

    wrong_shape = {**good, "1.weight": np.zeros((3, 30), np.float32)}
    with pytest.raises(ModelError, match=r"1.weight has shape \(3, 30\), model expects \(2, 30\)"):
        load_weights(model, wrong_shape)
    with pytest.raises(ModelError, match="missing \\['1.bias'\\]"):
        load_weights(model, {"1.weight": good["1.weight"]})
    poisoned = {**good, "1.bias": np.array([np.nan, 0], np.float32)}
    with pytest.raises(ModelError, match="1.bias contains NaN"):
        load_weights(model, poisoned)


def test_load_then_export_round_trips():
    model = build_model("mlp", (4,), 3)
    arrays = {k: np.full_like(v, 0.25) for k, v in to_arrays(model).items()}

    load_weights(model, arrays)

    assert all(np.array_equal(arrays[k], v) for k, v in to_arrays(model).items())


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_models_pass_opacus_module_validator(name, shape):
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(build_model(name, shape, 10), strict=False) == []


# Opacus warns on every engine without secure_mode, and torch when a hook fires on a first layer
# whose input needs no grad; fedsys.privacy.dpsgd documents and silences both the same way.
@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize(("name", "shape"), CASES)
def test_models_take_an_opacus_dp_sgd_step_with_per_sample_gradient_hooks(name, shape):
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    data = TensorDataset(torch.randint(0, 9, (8, *shape)).float(), torch.arange(8) % 10)  # also token ids
    gsm, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
        grad_sample_mode="hooks",
    )
    before = [p.detach().clone() for p in gsm.parameters()]
    features, labels = next(iter(loader))

    nn.functional.cross_entropy(gsm(features), labels).backward()
    optimizer.step()

    assert all(p.grad_sample.shape == (4, *p.shape) for p in gsm.parameters())
    after = list(gsm.parameters())
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(after, before, strict=True))
