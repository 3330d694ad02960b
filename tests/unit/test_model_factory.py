import pytest
import torch
from fixtures_models import bn_net
from torch import nn

from fedsys.config import RunConfig
from fedsys.coordinator.loop import _initial_model
from fedsys.errors import ConfigError, ModelError
from fedsys.models import (
    MODELS,
    build_checked_model,
    build_model,
    dp_problems,
    load_weights,
    model_reference,
    to_arrays,
)
from fedsys.privacy.dpsgd import check_model

SHAPE, CLASSES = (1, 8, 8), 10


def test_a_factory_reference_builds_the_users_module_for_the_data():
    model = build_model("fixtures_models:tanh_net", SHAPE, CLASSES)

    assert isinstance(model, nn.Sequential)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, CLASSES)


def test_built_in_names_still_build_and_an_unknown_plain_name_keeps_its_error():
    assert type(build_model("mlp", SHAPE, CLASSES)) is type(MODELS["mlp"](SHAPE, CLASSES))

    with pytest.raises(ConfigError, match=r"^model must be one of logreg, mlp, cnn, .* got 'resnet'$"):
        build_model("resnet", SHAPE, CLASSES)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:net", "cannot import 'no_such_module_xyz'"),
        ("fixtures_models:missing", "'fixtures_models' has no callable 'missing'"),
        ("fixtures_models:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
        ("fixtures_models:not_a_module", "must return a torch.nn.Module, got str"),
        ("fixtures_models:broken", "failed for feature shape (1, 8, 8) and 10 classes: RuntimeError"),
    ],
)
def test_a_bad_factory_reference_is_a_config_error_naming_it(name, message):
    with pytest.raises(ConfigError, match=f"model '{name}'") as err:
        build_model(name, SHAPE, CLASSES)

    assert message in str(err.value)


@pytest.mark.parametrize("model", ["fixtures_models:", "a-b:c", "mod:f:g", ":f"])
def test_a_malformed_reference_is_refused_when_the_config_is_built(model):
    with pytest.raises(ConfigError, match="model must be a built-in name or package.module:factory"):
        RunConfig().replace({"model": model})


def test_under_dp_a_batchnorm_model_fails_with_one_line_naming_the_layer():
    with pytest.raises(ConfigError) as err:
        build_checked_model("fixtures_models:bn_net", SHAPE, CLASSES, fix=False, dp=True)

    message = str(err.value)
    assert message.startswith(
        "model 'fixtures_models:bn_net' is not DP-compatible: BatchNorm1d at 'bn' "
        "(BatchNorm cannot support training with differential privacy); use --fix-model"
    )
    assert "\n" not in message


def test_every_offending_layer_is_named_in_place_activations_included():
    model = build_model("fixtures_models:inplace_bn_cnn", SHAPE, CLASSES)

    problems = dp_problems(model)

    assert [p.split(" (")[0] for p in problems] == ["in-place ReLU at 'act'", "BatchNorm2d at 'bn'"]


def test_without_dp_the_model_is_not_checked():
    model = build_checked_model("fixtures_models:bn_net", SHAPE, CLASSES, fix=False, dp=False)

    assert isinstance(model.bn, nn.BatchNorm1d)


def test_the_server_refuses_a_model_dp_sgd_cannot_train_before_any_round():
    config = RunConfig().replace({"dataset": "node", "feature-shape": "1,8,8", "num-classes": 10})

    with pytest.raises(ConfigError, match="BatchNorm1d at 'bn'"):
        _initial_model(config.replace({"model": "fixtures_models:bn_net"}), None)
    assert isinstance(_initial_model(config.replace({"model": "mlp"}), None), nn.Module)


def test_fix_model_makes_it_dp_compatible_and_server_and_clients_build_the_same_architecture():
    name = "fixtures_models:inplace_bn_cnn"
    config = RunConfig().replace(
        {"dataset": "node", "feature-shape": "1,8,8", "num-classes": 10, "model": name, "fix-model": True}
    )

    server = _initial_model(config, None)
    client = build_model(name, SHAPE, CLASSES, fix=True)
    load_weights(client, to_arrays(server), source="server")

    assert isinstance(client.bn, nn.GroupNorm) and client.act.inplace is False
    assert {k: v.shape for k, v in to_arrays(client).items()} == {
        k: v.shape for k, v in to_arrays(server).items()
    }
    assert dp_problems(client) == []
    check_model(client)  # the client's own DP-SGD gate
    with pytest.raises(ModelError, match="do not fit the model"):  # why both sides must fix
        load_weights(build_model(name, SHAPE, CLASSES), to_arrays(server), source="server")


def test_a_fixed_batchnorm1d_on_flat_features_is_refused_for_it_would_output_a_constant():
    model = build_model("fixtures_models:bn_net", (30,), 2, fix=True)
    assert model.bn(torch.randn(4, 16)).abs().max() < 1e-3  # GroupNorm(16, 16): one value per group

    with pytest.raises(ConfigError, match=r"GroupNorm at 'bn' normalises single values .* use nn.LayerNorm"):
        build_checked_model("fixtures_models:bn_net", (30,), 2, fix=True, dp=True)


def test_a_factory_function_becomes_the_reference_workers_import():
    assert model_reference(bn_net) == "fixtures_models:bn_net"
    assert model_reference("mlp") == "mlp"


def test_a_factory_workers_cannot_import_is_refused():
    def local(feature_shape, num_classes):
        return nn.Linear(1, 1)

    def notebook(feature_shape, num_classes):
        return nn.Linear(1, 1)

    notebook.__module__, notebook.__qualname__ = "__main__", "notebook"  # as defined in a notebook cell

    for factory in (local, notebook, lambda shape, classes: nn.Linear(1, 1)):
        with pytest.raises(ConfigError, match="cannot be imported by name"):
            model_reference(factory)
