"""Everything a training run derives from its config before the first step: the mesh, the
base model, the task templates (new and restored), the encoded data, and the new tasks'
initial prompt parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ptlearn import (
    config_checks,
    config_lib,
    deep_prompts,
    encoding,
    numerics,
    prompt_encoders,
    prompts,
    sharding,
    templates,
)
from ptlearn.checkpoints import file_checksum, load_model, resolve_model
from ptlearn.checkpoints.prompt_model import PromptModel, load_prompt_model
from ptlearn.data import sources
from ptlearn.errors import ConfigError, DataError, did_you_mean
from ptlearn.gpt import GPT

logger = logging.getLogger(__name__)

# A task whose answers take at most this many distinct values gets a label set (for
# rank classification and `labels` init).
MAX_LABELS = 50


@dataclasses.dataclass
class Setup:
    """Everything a run derives from its config before the first step."""

    config: ml_collections.ConfigDict
    loaded: Any  # checkpoints.LoadedModel
    model: GPT
    task_names: list[str]  # row order of the prompt tables
    new_tasks: list[str]
    templates: dict[str, templates.TaskTemplate]
    restored: PromptModel | None
    encoder_config: prompt_encoders.EncoderConfig | None
    train_examples: list[encoding.EncodedExample]
    val_examples: list[encoding.EncodedExample]
    val_records: list[tuple[int, dict]]
    test_examples: list[encoding.EncodedExample]  # model.data.test_ds, scored at the end
    test_records: list[tuple[int, dict]]
    label_sets: dict[str, list[str]]
    mesh: Any  # jax.sharding.Mesh ("data", "fsdp", "model")
    rules: Any  # logical-axis rules (sharding.Rules)
    accumulation: int  # micro-batches per step: global / (micro x data-parallel)
    numerics: dict[str, str] = dataclasses.field(default_factory=dict)  # what "auto" chose
    # The base model's weights on the mesh, placed by the first init_state, which then drops
    # the host copy (`loaded.params`): each later run of this Setup shares them.
    lm_on_mesh: Any = None

    @property
    def existing_tasks(self) -> list[str]:
        """The restored tasks: the prompt tables' rows before the new tasks'."""
        return self.task_names[: len(self.task_names) - len(self.new_tasks)]


def base_params(s: Setup) -> Any:
    """The base model's weights (the tree under "params"): on the mesh once a run placed them,
    the host copy before. Either feeds GPT.apply (gpt.pack_params)."""
    return s.loaded.params if s.lm_on_mesh is None else s.lm_on_mesh


# --------------------------------------------------------------------------------------------
# Set-up: base model, templates, data


def _read_records(
    files: Sequence[str],
    key: str,
    tasks: Sequence[str],
    served: Mapping[str, templates.TaskTemplate],
) -> list[tuple[str, int, dict]]:
    """(source, row, record) of every data set named under `key` (data/sources.py: jsonl,
    CSV, TFDS, in-memory); records without a taskname take the one of `tasks` if it is alone."""
    fields = {t: dict(template.fields) for t, template in served.items() if template.fields}
    records = []
    for name in files:
        for line_no, record in sources.read(name, tasks=tasks, fields=fields):
            records.append((name, line_no, record))
    if files and not records:
        raise DataError(f"{key}: {', '.join(files)} hold no examples")
    return records


def adds_bos(data_cfg: Any, tokenizer: Any) -> bool:
    """BOS starts every example when `model.data.add_bos` says so or the checkpoint's tokenizer
    asks for it (Gemma: its outputs degrade without one)."""
    return bool(data_cfg.add_bos or tokenizer.add_bos)


def _encode(
    records: list[tuple[str, int, dict]],
    task_templates: Mapping[str, templates.TaskTemplate],
    tokenizer: Any,
    data_cfg: Any,
    max_seq_length: int,
) -> list[encoding.EncodedExample]:
    encoded = []
    for name in dict.fromkeys(r[0] for r in records):
        examples, stats = encoding.encode_dataset(
            [(n, r) for f, n, r in records if f == name],
            task_templates,
            tokenizer,
            max_seq_length=max_seq_length,
            add_eos=data_cfg.add_eos,
            add_bos=adds_bos(data_cfg, tokenizer),
            source=name,
        )
        logger.info("%s:\n%s", name, stats.summary())
        encoded.extend(examples)
    return encoded


def _label_sets(records: list[tuple[str, int, dict]], task_templates) -> dict[str, list[str]]:
    """Each task's closed label set (its training answers, when few); empty answers are no
    label (warned about, with where the first one is)."""
    values: dict[str, set[str]] = {}
    empty: list[str] = []
    for name, line_no, record in records:
        field = task_templates[record["taskname"]].answer_field
        answer = str(record.get(field, ""))
        if not answer.strip():
            empty.append(f"{name}:{line_no}")
            continue
        values.setdefault(record["taskname"], set()).add(answer)
    if empty:
        logger.warning(
            "%d training example(s) have an empty answer (first: %s); they train the model to "
            "stop at once and are no label of rank classification",
            len(empty),
            empty[0],
        )
    return {t: sorted(v) for t, v in values.items() if len(v) <= MAX_LABELS}


def gpt_config_from(config: ml_collections.ConfigDict, base: Any, mesh: Any = None) -> Any:
    """The base model's GPTConfig with the run's compute dtype, frozen-weight dtype, remat and
    batch chains (resolved for `mesh`: see `batch_chains`)."""
    m = config.model
    granularity = m.activations_checkpoint_granularity or ""
    if granularity not in ("", "full", "selective"):
        raise ConfigError(
            f"model.activations_checkpoint_granularity={granularity!r}: use '', 'full' or "
            "'selective'"
        )
    remat = {"": "none", "full": "full", "selective": "dots"}[granularity]
    dtype, matmul_dtype = config_lib.dtypes_of_precision(config.trainer.precision)
    return base.replace(
        dtype=dtype,
        matmul_dtype=matmul_dtype,
        param_dtype=frozen_weights_dtype(m),
        remat_policy=remat,
        batch_chains=batch_chains(m, mesh),
    )


def batch_chains(m: ml_collections.ConfigDict, mesh: Any) -> int:
    """`model.batch_chains`, with 0 resolved: 2 on CPU devices when the batch axis is not
    split over devices and the micro-batch is even (two independent chains keep both cores
    busy; experiments/bench_vs_peft.md), else 1 (an accelerator wants the larger matmuls)."""
    if m.batch_chains:
        return int(m.batch_chains)
    if mesh is None:
        return 1
    on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    batch_split = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1) > 1
    return 2 if on_cpu and not batch_split and m.micro_batch_size % 2 == 0 else 1


def frozen_weights_dtype(m: ml_collections.ConfigDict) -> str:
    """`model.frozen_weights_dtype`, checked: how the base model's weights are stored."""
    if m.frozen_weights_dtype not in ("float32", "bfloat16"):
        raise ConfigError(
            f"model.frozen_weights_dtype={m.frozen_weights_dtype!r}: use 'float32' or 'bfloat16'"
        )
    return m.frozen_weights_dtype


def _restore(m: Any, existing: list[str]) -> PromptModel | None:
    if not m.restore_path:
        return None
    restored = load_prompt_model(m.restore_path)
    missing = [t for t in existing if t not in restored.tables]
    if missing:
        raise ConfigError(
            f"model.existing_tasks names {missing}, which {m.restore_path} does not hold "
            f"(it holds {restored.tasks})"
        )
    if restored.base_model["sha256"] != file_checksum(resolve_model(m.language_model_path)):
        raise ConfigError(
            f"model.restore_path={m.restore_path} was trained on another base model "
            f"({restored.base_model['file']}); set model.language_model_path to it"
        )
    return restored


def _served_templates(
    m: Any, new_tasks: list[str], existing: list[str], restored: PromptModel | None
) -> dict[str, templates.TaskTemplate]:
    """Templates of the tasks this run serves: new ones from the config, old ones restored."""
    task_templates = templates.parse_task_templates(m.task_templates)
    if restored is not None:
        kept = [e for e in restored.templates if e["taskname"] in existing]
        for task, template in templates.parse_task_templates(kept).items():
            task_templates.setdefault(task, template)
    for task in new_tasks + existing:
        if task not in task_templates:
            raise ConfigError(
                f"task {task!r} has no entry in model.task_templates (defined: "
                f"{sorted(task_templates)})"
            )
    return {t: task_templates[t] for t in existing + new_tasks}


def _check_tasks(records: list[tuple[str, int, dict]], allowed: Sequence[str], why: str) -> None:
    for name, line_no, record in records:
        if record.get("taskname") not in allowed:
            task = record.get("taskname")
            raise DataError(
                f"{name}:{line_no}: task {ascii(task)} is not one this run can use "
                f"({why}: {list(allowed)}){did_you_mean(task, allowed)}"
            )


def _check_encoder_fits(encoder: prompt_encoders.EncoderConfig | None, m: Any) -> None:
    """Refuses an encoder whose float32 training state (weights, gradients, two Adam moments)
    would take more than half this machine's memory, before anything is allocated."""
    if encoder is None:
        return
    need = 16 * encoder.num_params  # 4 bytes x (weights, gradients, 2 moments)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have / 2:
        key = (
            "model.prefix_tuning.projection_hidden"
            if encoder.table_shape
            else ("model.p_tuning.encoder_hidden")
        )
        value = (
            m.prefix_tuning.projection_hidden if encoder.table_shape else m.p_tuning.encoder_hidden
        )
        raise ConfigError(
            f"{key}={value}: its encoder's training state needs {need / 2**30:.1f} GiB, more "
            f"than half of this machine's {have / 2**30:.1f} GiB; use a smaller one"
        )


def encoder_config_from(model_cfg: Any, base: Any) -> prompt_encoders.EncoderConfig | None:
    """The prompt encoder of the run, for the base model's GPTConfig `base`: p-tuning's
    (`model.p_tuning.*`), or the deep prompts' projection (`model.prefix_tuning.*`: an MLP
    from each virtual token's input [E] to its keys and values [L, 2, K, D]); None for styles
    that train tables directly."""
    style = model_cfg.virtual_prompt_style
    if style == "p-tuning":
        p = model_cfg.p_tuning
        return prompt_encoders.EncoderConfig(
            encoder_type=p.encoder_type,
            embed_dim=base.hidden_size,
            num_layers=p.num_layers,
            encoder_hidden=p.encoder_hidden,
            dropout=p.dropout,
            init_std=p.init_std,
        )
    if style in config_lib.DEEP_PROMPT_STYLES and model_cfg.prefix_tuning.projection:
        d = model_cfg.prefix_tuning
        shape = deep_prompts.row_shape(base)
        return prompt_encoders.EncoderConfig(
            encoder_type="mlp",
            embed_dim=int(np.prod(shape)),
            encoder_hidden=d.projection_hidden,
            dropout=d.dropout,
            init_std=d.init_std,
            input_dim=base.hidden_size,
            table_shape=shape,
        )
    return None


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Validates the config and reads templates and data, then loads the base model. The
    Setup's config has every "auto" numerics key resolved for the devices (`numerics`)."""
    config_checks.validate(config)
    devices = sharding.select_devices(config.trainer.devices)
    config, chosen = numerics.resolve(config, devices)
    m = config.model
    mesh = sharding.make_mesh(m.tensor_model_parallel_size, config.mesh.fsdp, devices)
    rules = sharding.rules_from_config(config.mesh.rules, sequence_parallel=m.sequence_parallel)
    accumulation = sharding.accumulation_steps(m.global_batch_size, m.micro_batch_size, mesh, rules)
    new_tasks = list(config_lib.as_tuple(m.new_tasks))
    existing = list(config_lib.as_tuple(m.existing_tasks))
    restored = _restore(m, existing)
    served = _served_templates(m, new_tasks, existing, restored)
    train_records = _read_records(
        config_lib.as_tuple(m.data.train_ds), "model.data.train_ds", new_tasks, served
    )
    if not train_records:
        raise ConfigError("model.data.train_ds: give at least one training jsonl file")
    _check_tasks(train_records, new_tasks, "only model.new_tasks train")
    val_records = _read_records(
        config_lib.as_tuple(m.data.validation_ds), "model.data.validation_ds", list(served), served
    )
    _check_tasks(val_records, list(served), "the tasks this run serves")
    test_records = _read_records(
        config_lib.as_tuple(m.data.test_ds), "model.data.test_ds", list(served), served
    )
    _check_tasks(test_records, list(served), "the tasks this run serves")
    # Loaded straight into the storage dtype: no float32 copy of the model stays around.
    loaded = load_model(m.language_model_path, dtype=frozen_weights_dtype(m))
    max_len = min(m.max_seq_length, loaded.config.max_position_embeddings)
    encoder_config = encoder_config_from(m, loaded.config)
    _check_encoder_fits(encoder_config, m)
    label_sets = dict(restored.label_sets) if restored is not None else {}
    label_sets.update(_label_sets(train_records, served))
    return Setup(
        config=config,
        loaded=loaded,
        model=GPT(gpt_config_from(config, loaded.config, mesh)),
        task_names=existing + new_tasks,
        new_tasks=new_tasks,
        templates=served,
        restored=restored,
        encoder_config=encoder_config,
        train_examples=_encode(train_records, served, loaded.tokenizer, m.data, max_len),
        val_examples=_encode(val_records, served, loaded.tokenizer, m.data, max_len),
        val_records=[(n, r) for _, n, r in val_records],
        test_examples=_encode(test_records, served, loaded.tokenizer, m.data, max_len),
        test_records=[(n, r) for _, n, r in test_records],
        label_sets={t: v for t, v in label_sets.items() if t in served},
        mesh=mesh,
        rules=rules,
        accumulation=accumulation,
        numerics=chosen,
    )


def without_data(config: ml_collections.ConfigDict, loaded: Any, mesh: Any, rules: Any) -> Setup:
    """A Setup of the config's new tasks that reads no data (benchmarks, plans): the model,
    templates and encoder of `config` over `loaded`, on `mesh`, no examples."""
    m = config.model
    new_tasks = list(config_lib.as_tuple(m.new_tasks))
    return Setup(
        config=config,
        loaded=loaded,
        model=GPT(gpt_config_from(config, loaded.config, mesh)),
        task_names=new_tasks,
        new_tasks=new_tasks,
        templates=templates.parse_task_templates(m.task_templates),
        restored=None,
        encoder_config=encoder_config_from(m, loaded.config),
        train_examples=[],
        val_examples=[],
        val_records=[],
        test_examples=[],
        test_records=[],
        label_sets={},
        mesh=mesh,
        rules=rules,
        accumulation=sharding.accumulation_steps(
            m.global_batch_size, m.micro_batch_size, mesh, rules
        ),
    )


# --------------------------------------------------------------------------------------------
# Parameters, freezing, optimizer


def init_prompt_params(s: Setup, rng: jax.Array) -> dict[str, Any]:
    """Fresh parameters for the new tasks (boxed with logical axes), plus the restored tables
    of existing tasks (plain arrays: replicated)."""
    m = s.config.model
    style = m.virtual_prompt_style
    num_tokens = [s.templates[t].total_virtual_tokens for t in s.new_tasks]
    if s.encoder_config is not None:  # p-tuning, or deep prompts through their projection
        params = prompts.init_p_tuning(
            s.encoder_config, dict(zip(s.new_tasks, num_tokens, strict=True)), rng
        )
    elif style == "prompt-tuning" or style in config_lib.DEEP_PROMPT_STYLES:
        params = _init_tables(s, num_tokens, rng)
        if style in config_lib.DEEP_PROMPT_STYLES:  # the frozen model's keys and values of them
            params["tables"] = {
                task: prompts.box_table(
                    deep_prompts.tables_from_embeddings(
                        s.model.config, base_params(s), nn.meta.unbox(table)
                    )
                )
                for task, table in params["tables"].items()
            }
    else:
        raise ConfigError(
            "model.virtual_prompt_style='inference' does not train; use ptlearn.predict"
        )
    if s.restored is not None:
        tables = params.setdefault("tables", {})
        row = table_row_shape(style, s.model.config)
        for task in s.existing_tasks:
            table = np.asarray(s.restored.tables[task])
            if table.shape[1:] != row:
                raise ConfigError(
                    f"model.restore_path: task {task!r}'s prompt has rows of shape "
                    f"{list(table.shape[1:])} but model.virtual_prompt_style={style!r} makes "
                    f"{list(row)}; add tasks in the style the prompt model was trained with"
                )
            tables[task] = table
    return params


def table_row_shape(style: str, config: Any) -> tuple[int, ...]:
    """What one virtual token of `style` holds: [E], or deep prompts' [L, 2, K, D]."""
    if style in config_lib.DEEP_PROMPT_STYLES:
        return deep_prompts.row_shape(config)
    return (config.hidden_size,)


def _init_tables(s: Setup, num_tokens: Sequence[int], rng: jax.Array) -> dict[str, Any]:
    """Prompt tuning's initial tables {"tables": {task: [P, E]}} by
    `model.prompt_tuning.new_prompt_init_methods`."""
    m = s.config.model
    methods = _per_task(
        m.prompt_tuning.new_prompt_init_methods, s.new_tasks, "new_prompt_init_methods"
    )
    texts = _per_task(m.prompt_tuning.new_prompt_init_text, s.new_tasks, "new_prompt_init_text")
    token_ids = []
    for task, count, method, text in zip(s.new_tasks, num_tokens, methods, texts, strict=True):
        if count == 0:  # no virtual tokens (zero-shot, in-context): nothing to initialise
            token_ids.append(None)
        elif method == "labels":
            words = " ".join(s.label_sets.get(task, []))
            if not words:
                raise ConfigError(
                    f"task {task!r}: 'labels' init needs a closed label set in the training data"
                )
            token_ids.append(s.loaded.tokenizer.encode(" " + words))
        elif method == "text":
            if not text:
                raise ConfigError(
                    f"model.prompt_tuning.new_prompt_init_text: task {task!r} uses 'text' "
                    "init but its text is empty"
                )
            token_ids.append(s.loaded.tokenizer.encode(text))
        else:
            token_ids.append(None)
    return prompts.init_prompt_tuning(
        s.new_tasks,
        num_tokens,
        methods,
        token_ids,
        base_params(s)["embed"]["embedding"],
        rng,
    )


def _per_task(values: Any, tasks: Sequence[str], key: str) -> list:
    values = list(config_lib.as_tuple(values))
    if len(values) == 1 and len(tasks) > 1:
        values = values * len(tasks)
    if len(values) != len(tasks):
        raise ConfigError(
            f"model.prompt_tuning.{key} has {len(values)} entries for {len(tasks)} new tasks; "
            "give one per task (or one for all)"
        )
    return values
