import numpy as np
import pytest
import torch

from fedsys.errors import ConfigError, ModelError
from fedsys.models import build_model, load_weights, to_arrays


@pytest.mark.parametrize(("name", "shape"), [("logreg", (30,)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8))])
def test_models_map_inputs_to_class_logits(name, shape):
    model = build_model(name, shape, 10)

    out = model(torch.zeros((4, *shape)))

    assert out.shape == (4, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_unknown_model_and_unsuitable_shape():
    with pytest.raises(ConfigError, match="model must be one of logreg, mlp, cnn, got 'resnet'"):
        build_model("resnet", (30,), 2)
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("cnn", (30,), 2)


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


@pytest.mark.parametrize(("name", "shape"), [("logreg", (30,)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8))])
def test_models_pass_opacus_module_validator(name, shape):
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(build_model(name, shape, 10), strict=False) == []
