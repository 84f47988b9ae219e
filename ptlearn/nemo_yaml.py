"""A NeMo prompt-learning yaml as a ptlearn config (`config_lib.from_nemo_yaml`, and
`--config=configs/nemo.py:yaml=PATH` on the command line).

ptlearn's config keys carry NeMo's names, so every yaml key that ptlearn has is copied to the
same place (lists become tuples, `null` the key's empty value, numbers written as text such as
`1e-4` numbers). NeMo keys that ptlearn has no use for are listed in `NemoConfig.ignored` with
the reason, and any other key is an error naming it. Hydra interpolations (`${name}`,
`${model.tensor_model_parallel_size}`) are resolved first. A `???` value (NeMo's "required")
stays `???` until a command-line override replaces it; `config_checks.validate` refuses a run
that still has one, naming the key.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
import yaml

from ptlearn import config_checks, config_lib
from ptlearn.errors import ConfigError

REQUIRED = config_lib.REQUIRED

_NO_CACHE = "examples are encoded in memory when the run starts; there are no cache files"
_ALWAYS_BEST = "the prompt model is always written once, from the best checkpoint"
# NeMo keys ptlearn does not implement, and why (dotted paths of the yaml).
IGNORED = {
    "name": "a name for interpolations only (${name} is resolved)",
    "trainer.logger": "ptlearn always writes metrics.jsonl and TensorBoard events",
    "trainer.enable_checkpointing": "ptlearn checkpoints at every validation",
    "trainer.replace_sampler_ddp": "batches are a pure function of seed and position",
    "trainer.benchmark": "XLA has no cuDNN autotuning switch",
    "exp_manager.exp_dir": "the run's folder is --workdir (or exp_manager.explicit_log_dir)",
    "exp_manager.name": "the run's folder is --workdir (or exp_manager.explicit_log_dir)",
    "exp_manager.create_wandb_logger": "there is no Weights & Biases logger",
    "exp_manager.wandb_logger_kwargs": "there is no Weights & Biases logger",
    "exp_manager.resume_ignore_no_checkpoint": "a workdir without a checkpoint starts afresh",
    "exp_manager.create_checkpoint_callback": "ptlearn checkpoints at every validation",
    "exp_manager.checkpoint_callback_params.save_nemo_on_train_end": _ALWAYS_BEST,
    "exp_manager.checkpoint_callback_params.save_best_model": _ALWAYS_BEST,
    "exp_manager.checkpoint_callback_params.filename": "checkpoints are folders named by step",
    "exp_manager.checkpoint_callback_params.model_parallel_size": (
        "checkpoints hold whole arrays and restore onto any mesh"
    ),
    "model.save_nemo_on_validation_end": _ALWAYS_BEST,
    "model.data.pin_memory": "JAX has no pinned-memory loader switch",
    "model.data.train_cache_data_path": _NO_CACHE,
    "model.data.validation_cache_data_path": _NO_CACHE,
    "model.data.test_cache_data_path": _NO_CACHE,
    "model.data.load_cache": _NO_CACHE,
    "model.optim.sched.monitor": "the schedules do not watch a metric",
    "model.optim.sched.reduce_on_plateau": "the schedules are CosineAnnealing and constant",
    # Kept in ptlearn's config at their defaults (SPEC 4) but not implemented: a yaml's value
    # is noted, not applied (config_checks.UNIMPLEMENTED says what to use instead).
    **config_checks.UNIMPLEMENTED,
}
_INTERPOLATION = re.compile(r"\$\{([^${}]+)\}")


@dataclasses.dataclass(frozen=True)
class NemoConfig:
    """A read yaml: the ptlearn config, {ignored key: why}, and the keys still `???`."""

    config: ml_collections.ConfigDict
    ignored: dict[str, str]
    required: list[str]


def _lookup(tree: Mapping[str, Any], path: str, where: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: the interpolation ${{{path}}} names no key of the yaml")
        node = node[part]
    return node


def resolve_interpolations(
    tree: Any, root: Mapping[str, Any] | None = None, where: str = ""
) -> Any:
    """`${a.b}` references replaced by the values they name: a whole-value reference keeps the
    value's type, one inside text is substituted as text. A cycle is a ConfigError."""
    root = tree if root is None else root

    def resolve(value: Any, path: str, seen: tuple[str, ...]) -> Any:
        if isinstance(value, Mapping):
            return {
                k: resolve(v, f"{path}.{k}" if path else str(k), seen) for k, v in value.items()
            }
        if isinstance(value, list):
            return [resolve(v, f"{path}[{i}]", seen) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def target(name: str) -> Any:
            if name in seen:
                raise ConfigError(f"{where}: {path}: interpolation cycle through ${{{name}}}")
            return resolve(_lookup(root, name, f"{where}: {path}"), name, (*seen, name))

        whole = _INTERPOLATION.fullmatch(value)
        if whole:
            return target(whole.group(1))
        return _INTERPOLATION.sub(lambda m: str(target(m.group(1))), value)

    return resolve(tree, "", ())


def _converted(key: str, value: Any, default: Any, where: str) -> Any:
    """A yaml value in the type of ptlearn's default for `key`."""
    if value == REQUIRED:
        return (REQUIRED,) if isinstance(default, tuple) else REQUIRED
    if value is None:
        return "" if isinstance(default, str) else () if isinstance(default, tuple) else default
    if isinstance(default, tuple):
        return tuple(value) if isinstance(value, list) else (value,)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}={value!r}: give true or false")
        return value
    if isinstance(default, int | float) and isinstance(value, str | int | float):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {key}={value!r}: give a number") from None
        if isinstance(default, int) and number != int(number):
            raise ConfigError(f"{where}: {key}={value!r}: give a whole number")
        return int(number) if isinstance(default, int) else number
    if isinstance(default, str):
        return str(value)
    return value


def _template(entry: Any, index: int, where: str) -> ml_collections.ConfigDict:
    known = set(config_lib.task_template("t", "", 0, (), "").keys())
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: model.task_templates[{index}] is not a mapping")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(
            f"{where}: model.task_templates[{index}]: unknown key(s) {', '.join(unknown)} "
            f"(a template has {', '.join(sorted(known))})"
        )
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
    return ml_collections.ConfigDict(fields)


def _val_check(value: Any, config: ml_collections.ConfigDict) -> None:
    """Lightning's val_check_interval: an int counts steps, a float <= 1 is an epoch fraction."""
    if isinstance(value, float) and value <= 1.0:
        config.trainer.val_check_epochs = value
    elif value is not None:
        config.trainer.val_check_interval = int(value)


def read(path: str | pathlib.Path) -> NemoConfig:
    """The NeMo prompt-learning yaml at `path` as a ptlearn config (unlocked; lock it, or let
    `load_config` do so) with what was ignored and what is still required."""
    path = pathlib.Path(path)
    where = str(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{where}: the yaml's top level is not a mapping of keys")
    tree = resolve_interpolations(tree, where=where)
    config = config_lib.base_config()
    defaults = config.to_dict()
    ignored: dict[str, str] = {}
    unknown: list[str] = []

    def walk(node: Mapping[str, Any], prefix: str, defaults_node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted in IGNORED:
                ignored[dotted] = IGNORED[dotted]
            elif dotted == "model.task_templates":
                config.model.task_templates = tuple(
                    _template(e, i, where) for i, e in enumerate(value or [])
                )
            elif dotted == "trainer.val_check_interval":
                _val_check(value, config)
            elif key not in defaults_node:
                unknown.append(dotted)
            elif isinstance(defaults_node[key], Mapping):
                if value is not None and not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: {dotted} should be a mapping of keys")
                walk(value or {}, f"{dotted}.", defaults_node[key])
            else:
                config.update_from_flattened_dict(
                    {dotted: _converted(dotted, value, defaults_node[key], where)}
                )

    walk(tree, "", defaults)
    if unknown:
        raise ConfigError(
            f"{where}: key(s) ptlearn does not know: {', '.join(unknown)} (neither ptlearn "
            "config keys nor NeMo keys it knows to ignore)"
        )
    return NemoConfig(config, ignored, config_lib.required_keys(config))
