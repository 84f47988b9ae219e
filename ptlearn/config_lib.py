"""The config tree (NeMo prompt-learning names, SPEC section 4), `parse_arg`, loading a config
file or shipped config by name; `config_checks.validate` checks the values.

Experiment files in `configs/` start from `base_config()` and change what they need; loading
locks the result so a mistyped `--config.x.y` (or override key) is an error rather than a
silently new key.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from ptlearn.errors import ConfigError, did_you_mean

# Deep prompts (keys and values at every layer): prefix tuning (Li & Liang 2021) and P-tuning v2
# (Liu et al. 2022) are the same method here, so both names are accepted.
DEEP_PROMPT_STYLES = ("prefix-tuning", "p-tuning-v2")
VIRTUAL_PROMPT_STYLES = ("prompt-tuning", "p-tuning", *DEEP_PROMPT_STYLES, "inference")
VALIDATION_ANSWERS = ("auto", "generate", "rank")
SCHEDULES = ("CosineAnnealing", "constant")  # model.optim.sched.name (ptlearn/optim.py)
# trainer.precision, model.frozen_weights_dtype and model.activations_checkpoint_granularity
# may say this: the fastest setting for the run's devices (ptlearn/numerics.py).
AUTO = "auto"
# NeMo's "required, give it on the command line" value (a yaml's `???`).
REQUIRED = "???"
# trainer.precision -> (activation dtype, matmul input dtype). "-mixed" (and NeMo's bare "bf16")
# is autocast-like: float32 activations, low-precision matmuls; "-true" runs activations low too.
PRECISIONS = {
    "32": ("float32", "float32"),
    "bf16": ("float32", "bfloat16"),
    "bf16-mixed": ("float32", "bfloat16"),
    "bf16-true": ("bfloat16", "bfloat16"),
    "16": ("float32", "float16"),
    "16-mixed": ("float32", "float16"),
    "16-true": ("float16", "float16"),
}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """`"model=default,encoder=lstm"` -> ConfigDict, typed after `defaults` (big_vision style).

    A key without `=` is a flag set to True; values of keys absent from `defaults` stay strings.
    """
    result = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return result
    for item in arg.split(","):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ConfigError(
                f"config argument {key!r} is not known; choose from: {', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        if not _:
            result[key] = True
        elif isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int | float):
            result[key] = type(default)(value)
        else:
            result[key] = value
    return result


def shipped_configs() -> dict[str, pathlib.Path]:
    """Name -> file of every config shipped in the package `ptlearn.configs` (a file with a
    `get_config`; common.py holds pieces the configs share)."""
    spec = importlib.util.find_spec("ptlearn.configs")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return {
        p.stem: p
        for folder in folders
        for p in sorted(pathlib.Path(folder).glob("*.py"))
        if not p.stem.startswith("_") and "def get_config(" in p.read_text()
    }


def config_file(name_or_path: str) -> pathlib.Path:
    """A config file path, or the name of a shipped config (`sentiment_ptuning`)."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix == ".py" and path.parent.name == "configs" else name_or_path
    if name in shipped:
        return shipped[name]
    raise ConfigError(
        f"config {name_or_path!r}: no such file, and no shipped config of that name (shipped: "
        f"{', '.join(shipped)})"
    )


def load_config_module(name_or_path: str) -> types.ModuleType:
    """The config file's module (its `get_config`, and `get_hyper` when it declares a sweep)."""
    path = config_file(name_or_path)
    spec = importlib.util.spec_from_file_location(f"ptlearn_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: defines no get_config(arg=None)")
    return module


def load_config(
    name_or_path: str, arg: str | None = None, **overrides: Any
) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file or shipped config, locked, with dotted-key overrides.

    `name_or_path` may carry the argument as on the command line (`"sentiment_ptuning:
    encoder=lstm"`); `overrides` are `{"model.optim.lr": 3e-3}` as `**` keywords.
    """
    if arg is None and ":" in name_or_path:
        name_or_path, arg = name_or_path.split(":", 1)
    config = load_config_module(name_or_path).get_config(arg)
    config.lock()
    return apply_overrides(config, overrides)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Sets dotted keys of a locked config in place (and returns it); unknown keys and values
    of the wrong type raise a ConfigError naming the key."""
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else ():
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                hint = (
                    did_you_mean(part, node) if isinstance(node, ml_collections.ConfigDict) else ""
                )
                raise ConfigError(f"unknown config key {key} (no {part!r}){hint}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            hint = did_you_mean(leaf, node) if isinstance(node, ml_collections.ConfigDict) else ""
            raise ConfigError(f"unknown config key {key}{hint}")
        try:
            node[leaf] = value
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {key!r}: {err}") from err
    return config


def task_template(
    taskname: str,
    prompt_template: str,
    total_virtual_tokens: int,
    virtual_token_splits: Sequence[int],
    answer_field: str,
    truncate_field: str | None = None,
    answer_only_loss: bool = False,
    metric: str = "accuracy",
) -> ml_collections.ConfigDict:
    """One entry of `model.task_templates` (SPEC section 3); the defaults are the template
    parser's (ptlearn.templates), as a NeMo yaml's template that omits a key gets them."""
    return ml_collections.ConfigDict(
        {
            "taskname": taskname,
            "prompt_template": prompt_template,
            "total_virtual_tokens": total_virtual_tokens,
            "virtual_token_splits": tuple(virtual_token_splits),
            "truncate_field": truncate_field,
            "answer_only_loss": answer_only_loss,
            "answer_field": answer_field,
            "metric": metric,
        }
    )


def base_config() -> ml_collections.ConfigDict:
    """Every key a prompt-learning run reads, with NeMo's names and sensible defaults."""
    c = ml_collections.ConfigDict()
    c.trainer = dict(
        devices=1,  # devices per process (-1: all); data parallel = devices / (TP x FSDP)
        num_nodes=1,
        accelerator="auto",
        precision="32",
        max_epochs=10,
        max_steps=-1,  # -1: max_epochs decides; 0: no training (score the initial prompt)
        max_time_minutes=0.0,  # 0: no wall-clock limit; else stop (and save) after this long
        log_every_n_steps=10,
        val_check_interval=100,  # steps between validations (and checkpoints)
        # > 0: validate every this fraction of an epoch instead (NeMo's float
        # val_check_interval, e.g. 1.0 = once an epoch), in whole steps.
        val_check_epochs=0.0,
        # 0: the whole validation set each time; N: N loss batches of examples spread evenly
        # over it (evaluation.spread: every task and length represented).
        limit_val_batches=0,
        # 0: the whole test split; N: N loss batches and N x inference.batch_size answered
        # records, spread over it (Lightning's knob, for smoke runs of a config).
        limit_test_batches=0,
        gradient_clip_val=1.0,
        resume_from_checkpoint="",
    )
    c.exp_manager = dict(
        explicit_log_dir="",
        resume_if_exists=True,
        checkpoint_callback_params=dict(monitor="val_loss", save_top_k=2, mode="min"),
    )
    c.model = dict(
        seed=1234,
        nemo_path="",  # where the prompt model is written; default WORKDIR/prompt_model
        virtual_prompt_style="p-tuning",
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        global_batch_size=8,
        micro_batch_size=8,
        restore_path="",
        language_model_path="default",
        existing_tasks=(),
        new_tasks=(),
        task_templates=(),
        sequence_parallel=False,
        activations_checkpoint_granularity="",
        activations_checkpoint_method="",
        activations_checkpoint_num_layers=1,
        max_seq_length=512,
        # ptlearn: storage dtype of the frozen LM weights (bfloat16 halves their memory);
        # prompt parameters and optimizer state always stay float32.
        frozen_weights_dtype="float32",
        # ptlearn: each block runs its micro-batch as N independent row groups, so XLA:CPU
        # overlaps one group's elementwise work with another's matmuls; 0 = auto (2 on CPU
        # when the batch axis is not sharded and the micro-batch is even, else 1).
        batch_chains=0,
        # ptlearn: ordered (regex, "trainable"|"frozen") rules on "/"-joined parameter paths.
        freeze_rules=(("lm/.*", "frozen"), ("prompt/.*", "trainable")),
        prompt_tuning=dict(new_prompt_init_methods=("text",), new_prompt_init_text=("",)),
        p_tuning=dict(
            encoder_type="mlp", dropout=0.0, num_layers=2, encoder_hidden=2048, init_std=0.023
        ),
        # Deep prompts (virtual_prompt_style prefix-tuning / p-tuning-v2). projection=False:
        # per-layer key/value tables, started from the frozen model's keys and values of
        # prompt_tuning's init; True: P-tuning v2's reparameterisation, an MLP (input E ->
        # projection_hidden -> L * 2 * K * D) over per-task learned inputs while training.
        prefix_tuning=dict(projection=False, projection_hidden=512, dropout=0.0, init_std=0.023),
        data=dict(
            seed=1234,  # data order (shuffling); model.seed draws the prompt init and dropout
            train_ds=(),
            validation_ds=(),
            test_ds=(),
            add_eos=True,
            add_bos=False,
            shuffle=True,
            num_workers=0,
            # Share of each training epoch per task, relative weights aligned with new_tasks
            # (NeMo's concat_sampling_probabilities, per task): a small task can be seen as
            # often as it would alone. Empty: each task by its example count.
            train_task_weights=(),
            validation_metric_examples=200,  # decoded per validation, spread over the set
            # How validation answers them: "auto" ranks a task's closed label set (one scoring
            # pass, no decoding loop) and generates open answers; "generate"; "rank". The test
            # split is answered as `inference` says, as a served model would be.
            validation_answers="auto",
        ),
        optim=dict(
            name="adamw",
            lr=1e-3,
            weight_decay=0.0,
            betas=(0.9, 0.999),
            eps=1e-8,
            sched=dict(name="CosineAnnealing", warmup_steps=50, constant_steps=0, min_lr=1e-5),
            # Factors on lr for each new task's own prompt parameters, aligned with new_tasks
            # (a shared p-tuning encoder keeps lr). Empty: lr for all. A multitask run sets
            # them so a task that sees fewer examples a step than its recipe steps less far.
            task_lr_scales=(),
        ),
    )
    c.inference = inference_config()
    # ptlearn: the device mesh (data x fsdp x model) and multi-host runtime.
    c.mesh = dict(
        fsdp=1,  # FSDP degree: weights' embed dimension sharded over it, batch split too
        rules=(),  # (logical axis, mesh axes) overrides of ptlearn.sharding.DEFAULT_RULES
    )
    c.distributed = dict(  # the fields of ptlearn.distributed.distributed_config()
        auto=False,
        coordinator_address="",
        num_processes=1,
        process_id=0,
        local_device_ids=(),
        cpu_collectives="gloo",
        initialization_timeout=300,
    )
    return c


def inference_config() -> ml_collections.ConfigDict:
    """SPEC section 5's inference options, plus ptlearn's rank-classification switch."""
    return ml_collections.ConfigDict(
        dict(
            greedy=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            tokens_to_generate=16,
            add_BOS=False,
            batch_size=16,
            seed=0,
            rank_classification=False,  # score each known label instead of generating
            # The answer ends before the first of these (e.g. "\n" for a frozen model that
            # writes past its label); decoding still stops only at EOS or tokens_to_generate.
            stop_strings=(),
        )
    )


def as_tuple(value: Any) -> tuple:
    """A config value that may be a single item, a tuple/list, or a tuple written as a string."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("(", "[")):
            try:
                return tuple(ast.literal_eval(text))
            except (ValueError, SyntaxError) as err:
                raise ConfigError(f"cannot read {value!r} as a tuple: {err}") from err
        return (value,)
    if isinstance(value, Sequence):
        return tuple(value)
    return (value,)


def dtypes_of_precision(precision: Any) -> tuple[str, str]:
    """`trainer.precision` (32, bf16, bf16-true, ...) -> (activation dtype, matmul dtype)."""
    key = str(precision)
    if key not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r}: use one of {', '.join(sorted(PRECISIONS))}"
        )
    return PRECISIONS[key]


def required_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Dotted keys whose value is still REQUIRED (`???`), alone or inside a tuple."""

    def walk(node: Any, prefix: str) -> list[str]:
        found = []
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                found += walk(value, f"{prefix}{key}.")
            elif value == REQUIRED or (isinstance(value, tuple) and REQUIRED in value):
                found.append(f"{prefix}{key}")
        return found

    return walk(config, "")


def from_nemo_yaml(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """A NeMo prompt-learning yaml as a ptlearn config (ptlearn/nemo_yaml.py says how each key
    maps); each key it ignores is a warning line with the reason (the yaml asks for something
    ptlearn will not do)."""
    import logging

    from ptlearn import nemo_yaml

    read = nemo_yaml.read(path)
    for key, why in read.ignored.items():
        logging.getLogger(__name__).warning("%s: %s ignored: %s", path, key, why)
    return read.config
