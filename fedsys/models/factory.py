"""Building a run's model from a zoo name or a user's ``package.module:factory``, and checking it
for DP-SGD before any round.

A factory is called with ``(feature_shape, num_classes)`` and must return an ``nn.Module``. It is
imported by name wherever the model is built (the server, and every client: in simulation the Ray
workers, in deployment each data holder), so its module must be importable in each of those
environments. Both sides build the same architecture from the same name and ``fix-model``.

The DP check runs Opacus' own layer validators (``ModuleValidator``) one named layer at a time,
so the error can say *which* layer fails, and adds in-place activations, which fedsys' DP-SGD step
refuses (they break per-sample gradient hooks). ``fix-model`` applies ``ModuleValidator.fix``
(BatchNorm -> GroupNorm, LSTM/GRU/MultiheadAttention -> Opacus' DP layers) and turns in-place off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fedsys.config import MODEL_REFERENCE_RE as REFERENCE_RE
from fedsys.errors import ConfigError
from fedsys.models.zoo import MODELS
from fedsys.references import import_callable

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def resolve_factory(name: str) -> ModelFactory:
    """The zoo model ``name``, or the callable a ``package.module:factory`` reference names.

    Raises:
        ConfigError: an unknown zoo name, a malformed reference, a module that cannot be
            imported here, or an attribute that is missing or not callable.
    """
    if ":" not in name:
        try:
            return MODELS[name]
        except KeyError as err:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {name!r}") from err
    if not REFERENCE_RE.match(name):
        raise ConfigError(f"model must be a built-in name or package.module:factory, got {name!r}")
    target = import_callable(
        name,
        kind="model",
        where="the module must be importable wherever the model is built (installed, or on PYTHONPATH)",
    )
    factory: ModelFactory = target
    return factory


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, *, fix: bool = False
) -> nn.Module:
    """Build a fresh model by zoo name or ``package.module:factory``, sized for the data.

    Args:
        name: a key of :data:`~fedsys.models.zoo.MODELS` or a ``package.module:factory`` reference.
        feature_shape: one example's shape, e.g. ``(30,)`` or ``(1, 8, 8)``.
        num_classes: number of labels.
        fix: apply :func:`fix_model` (the scenario's ``fix-model``); server and clients must agree.

    Raises:
        ConfigError: the name does not resolve, the input shape does not suit the model, or a
            user factory fails or returns something other than an ``nn.Module``.
    """
    factory = resolve_factory(name)
    if ":" in name:
        model = _call_user_factory(factory, name, feature_shape, num_classes)
    else:
        model = factory(feature_shape, num_classes)
    return fix_model(model) if fix else model


def _call_user_factory(
    factory: ModelFactory, name: str, feature_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    try:
        model: object = factory(feature_shape, num_classes)
    except ConfigError:
        raise
    except Exception as err:  # user code: report it as this model's configuration problem
        raise ConfigError(
            f"model {name!r} failed for feature shape {feature_shape} and {num_classes} classes: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def fix_model(model: nn.Module) -> nn.Module:
    """A copy with Opacus' ``ModuleValidator.fix`` applied and in-place activations turned off.

    Deterministic, so server and clients that both fix get the same parameter names and shapes.
    """
    from opacus.validators import ModuleValidator

    fixed: nn.Module = ModuleValidator.fix(model)
    for module in fixed.modules():
        if getattr(module, "inplace", False) is True:
            setattr(module, "inplace", False)  # noqa: B010  (a plain bool flag, not a submodule)
    return fixed


def dp_problems(model: nn.Module) -> list[str]:
    """Every layer DP-SGD cannot train, as ``"<Layer> at '<name>' (<reason>)"``; empty if none."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems = [
        f"in-place {type(m).__name__} at {_where(name)} (in-place ops break per-sample gradients)"
        for name, m in model.named_modules()
        if getattr(m, "inplace", False) is True
    ]
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for err in validator(module) if validator else []:
            problems.append(f"{type(module).__name__} at {_where(name)} ({_first_sentence(str(err))})")
    return problems


def check_dp_compatible(model: nn.Module, *, name: str) -> None:
    """Raise a one-line ConfigError naming every layer DP-SGD cannot train.

    Raises:
        ConfigError: :func:`dp_problems` found any.
    """
    problems = dp_problems(model)
    if problems:
        raise ConfigError(
            f"model {name!r} is not DP-compatible: {'; '.join(problems)}; use --fix-model "
            "(scenario key fix-model = true) to replace them"
        )


def build_checked_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, *, fix: bool, dp: bool
) -> nn.Module:
    """:func:`build_model`, then, with ``dp``, :func:`check_dp_compatible` and, with ``fix``,
    :func:`check_norms`: the server's model, checked before any round.

    Raises:
        ConfigError: as :func:`build_model`, :func:`check_dp_compatible` and :func:`check_norms`.
    """
    model = build_model(name, feature_shape, num_classes, fix=fix)
    if dp:
        check_dp_compatible(model, name=name)
    if fix:
        check_norms(model, feature_shape, name=name)
    return model


def check_norms(model: nn.Module, feature_shape: tuple[int, ...], *, name: str) -> None:
    """Refuse GroupNorm layers that normalise single values, found by one forward pass.

    ``ModuleValidator.fix`` turns ``BatchNorm1d(C)`` into ``GroupNorm(min(32, C), C)``; on flat
    ``(N, C)`` features with ``C <= 32`` every group holds one value, which normalises to 0, so
    the layer outputs its bias whatever the input and nothing before it can learn.

    Raises:
        ConfigError: such a layer exists, or the model fails on a batch of ``feature_shape``.
    """
    import torch

    norms = {m: n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    if not norms:
        return
    single: list[str] = []

    def _inspect(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        if isinstance(module, nn.GroupNorm) and inputs[0][0].numel() == module.num_groups:
            single.append(_where(norms[module]))

    handles = [m.register_forward_hook(_inspect) for m in norms]
    try:
        with torch.no_grad():
            model(torch.zeros(2, *feature_shape))
    except Exception as err:  # user code: report it as this model's configuration problem
        raise ConfigError(
            f"model {name!r} fails on a batch of shape {(2, *feature_shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    if single:
        raise ConfigError(
            f"model {name!r}: GroupNorm at {', '.join(single)} normalises single values (one per group), "
            "so it outputs a constant whatever the input; fix-model makes one of a BatchNorm1d on flat "
            "features: use nn.LayerNorm there instead"
        )


def model_reference(model: str | Callable[..., Any]) -> str:
    """The name a factory is imported by (``package.module:factory``); strings pass through.

    Ray workers and data holders import the factory by name, so a callable defined in a
    notebook (``__main__``), a lambda or a nested function cannot reach them.

    Raises:
        ConfigError: the callable is not importable by its module and qualified name.
    """
    if isinstance(model, str):
        return model
    module = getattr(model, "__module__", None) or ""
    qualname = getattr(model, "__qualname__", None) or ""
    reference = f"{module}:{qualname}"
    if module == "__main__" or not REFERENCE_RE.match(reference):
        raise ConfigError(
            f"model {model!r} cannot be imported by name, which Ray workers and data holders need; "
            "define it in an importable module and pass it, or 'package.module:factory'"
        )
    if resolve_factory(reference) is not model:
        raise ConfigError(f"model {model!r} is not what {reference!r} imports")
    return reference


def _where(name: str) -> str:
    return repr(name) if name else "the model's root"


def _first_sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")


def declared_signature(feature_shape: str, num_classes: int) -> tuple[tuple[int, ...], int]:
    """``(feature_shape, num_classes)`` from a deployment scenario (``dataset = "node"``).

    The server holds no data to read them from, so the scenario declares them.

    Raises:
        ConfigError: ``feature-shape`` is not comma-separated positive integers, or ``num-classes`` < 2.
    """
    try:
        shape = tuple(int(d) for d in feature_shape.split(","))
    except ValueError as err:
        raise ConfigError(
            f"dataset 'node' needs feature-shape as comma-separated integers (e.g. \"30\" or "
            f'"1,8,8"), got {feature_shape!r}'
        ) from err
    if min(shape) < 1:
        raise ConfigError(f"feature-shape must be positive integers, got {feature_shape!r}")
    if num_classes < 2:
        raise ConfigError(f"num-classes must be >= 2 for dataset 'node', got {num_classes}")
    return shape, num_classes
