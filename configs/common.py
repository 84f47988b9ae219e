"""The pieces the shipped configs combine (not a config itself): the seed applications' (SPEC
sections 2-3) templates and data folders, the CPU training recipe, the numerics, the seeds.
config_lib.py owns the config's keys; this module fills them in. Configs and experiments
import it as `from ptlearn.configs import common`."""

from __future__ import annotations

import ml_collections

from ptlearn import runs
from ptlearn.config_lib import AUTO, base_config, task_template
from ptlearn.errors import ConfigError

# The seed applications' templates (SPEC sections 2-3); configs pick from these.
VIRTUAL_MARKER = "<|VIRTUAL_PROMPT_0|>"
REFERENCE_TASKS = {
    "sentiment": dict(
        prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
        answer_field="label",
        metric="accuracy",
        data="data/fpb",
        tokens_to_generate=4,
    ),
    "squad": dict(
        prompt_template="<|VIRTUAL_PROMPT_0|> Context: {context}\n\nQuestion: {question}\n\nAnswer: {answer}",
        answer_field="answer",
        truncate_field="context",
        metric="squad",
        data="data/squad",
        tokens_to_generate=24,
    ),
    "intent_and_slot": dict(
        prompt_template="<|VIRTUAL_PROMPT_0|> {utterance}{label}",
        answer_field="label",
        metric="intent_slot",
        data="data/assistant",
        tokens_to_generate=48,  # the longest training label is 44 tokens
    ),
}


def reference_task(
    taskname: str, virtual_tokens: int = 10, data_dir: str | None = None
) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
    """(template entry, {"train", "validation", "test"} jsonl paths) of a seed application;
    with `virtual_tokens=0` its template without the virtual marker (zero-shot, in-context)."""
    spec = REFERENCE_TASKS[taskname]
    text = spec["prompt_template"]
    if not virtual_tokens:
        text = text.replace(VIRTUAL_MARKER + " ", "")
    template = task_template(
        taskname,
        text,
        total_virtual_tokens=virtual_tokens,
        virtual_token_splits=(virtual_tokens,) if virtual_tokens else (),
        answer_field=spec["answer_field"],
        truncate_field=spec.get("truncate_field"),
        answer_only_loss=True,
        metric=spec["metric"],
    )
    folder = data_dir or spec["data"]
    files = {
        k: f"{folder}/{name}.jsonl"
        for k, name in (("train", "train"), ("validation", "val"), ("test", "test"))
    }
    return template, files


def fast_cpu_training(config: ml_collections.ConfigDict) -> None:
    """The fastest CPU training of the frozen model (README, Benchmarks): bf16 matmuls on bf16
    frozen weights, each block recomputed in the backward pass; prompts and optimizer stay
    float32. It kept FPB accuracy (experiments/results/fpb_sentiment.md)."""
    config.trainer.precision = "bf16"
    config.model.frozen_weights_dtype = "bfloat16"
    config.model.activations_checkpoint_granularity = "full"


def fastest_numerics(config: ml_collections.ConfigDict) -> None:
    """Precision, frozen-weight storage and remat all "auto": what the shipped configs use, the
    fastest that kept accuracy on the run's devices (ptlearn/numerics.py says what and why)."""
    config.trainer.precision = AUTO
    config.model.frozen_weights_dtype = AUTO
    config.model.activations_checkpoint_granularity = AUTO


def set_seed(config: ml_collections.ConfigDict, seed: int) -> None:
    """The configs' `seed=N` argument: prompt init / dropout and data order both from `seed`."""
    config.model.seed = seed
    config.model.data.seed = seed


def single_task_config(
    taskname: str, style: str, args: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """base_config() set up to train one seed application; `args` are the config's parsed
    arguments `model`, `data` (the jsonl folder), `steps`, `virtual` and `seed`."""
    c = base_config()
    set_seed(c, args.seed)
    template, files = reference_task(taskname, args.virtual, args.data)
    steps = args.steps
    c.model.language_model_path = args.model
    c.model.virtual_prompt_style = style
    c.model.new_tasks = (taskname,)
    c.model.task_templates = (template,)
    c.model.data.train_ds = (files["train"],)
    c.model.data.validation_ds = (files["validation"],)
    c.model.data.test_ds = (files["test"],)
    c.trainer.max_steps = steps
    c.inference.tokens_to_generate = REFERENCE_TASKS[taskname]["tokens_to_generate"]
    fastest_numerics(c)
    return c


def deep_prompt_config(
    taskname: str, args: ml_collections.ConfigDict, init_text: str
) -> ml_collections.ConfigDict:
    """single_task_config for deep prompts whose tables start from the frozen model's keys and
    values of `init_text` (a task description); `args` also carry `lr`, `batch` and
    `projection` (P-tuning v2's MLP instead of direct tables)."""
    c = single_task_config(taskname, "prefix-tuning", args)
    c.model.global_batch_size = c.model.micro_batch_size = args.batch
    c.model.prompt_tuning.new_prompt_init_methods = ("text",)
    c.model.prompt_tuning.new_prompt_init_text = (init_text,)
    c.model.prefix_tuning.projection = args.projection
    c.model.optim.lr = args.lr
    c.model.optim.sched.warmup_steps = 30
    return c


# Per-task keys a merged run concatenates, one entry per task in each single-task config.
_PER_TASK_KEYS = (
    "model.new_tasks",
    "model.task_templates",
    "model.data.train_ds",
    "model.data.validation_ds",
    "model.data.test_ds",
    "model.prompt_tuning.new_prompt_init_methods",
    "model.prompt_tuning.new_prompt_init_text",
)
# Run-level keys the merge sets itself (budgets, validation, decoding lengths).
_RUN_KEYS = (
    "model.global_batch_size",
    "model.micro_batch_size",
    "model.max_seq_length",
    "model.optim.lr",
    "model.optim.task_lr_scales",
    "model.data.train_task_weights",
    "model.data.validation_metric_examples",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "trainer.limit_val_batches",
    "inference.tokens_to_generate",
    "inference.batch_size",
)


def merged_config(
    configs: list[ml_collections.ConfigDict],
    *,
    lr: float,
    batch: int,
    steps: int = 0,
    scale_lr: bool = False,
) -> ml_collections.ConfigDict:
    """One multitask run of several single-task configs: their tasks, templates, data and
    prompt inits side by side, each task weighted by the examples its config trains on
    (max_steps x global_batch_size), in mixed batches of `batch` for `steps` steps (0: the
    configs' examples over `batch`) at learning rate `lr`. With `scale_lr`, each task's lr is
    `lr` times its rows per mixed batch over its config's global_batch_size (the linear
    scaling rule: a task in 1 of 16 rows whose config took batches of 8 gets lr / 8, as its
    steps are 8 times as many and each from 1/8 of the examples). Any other key on which the
    configs differ is a ConfigError: the merge would have to pick one silently."""
    flats = [runs.flatten(c.to_dict()) for c in configs]
    for key in flats[0]:
        if key in _PER_TASK_KEYS or key in _RUN_KEYS:
            continue
        values = {repr(f[key]) for f in flats}
        if len(values) > 1:
            raise ConfigError(f"{key}: the merged configs differ ({', '.join(values)})")
    merged = configs[0].copy_and_resolve_references()
    with merged.unlocked():
        for key in _PER_TASK_KEYS:
            *path, leaf = key.split(".")
            node = merged
            for part in path:
                node = node[part]
            parts = []
            for c in configs:
                source = c
                for part in path:
                    source = source[part]
                parts.extend(source[leaf])
            node[leaf] = tuple(parts)
        examples = [c.trainer.max_steps * c.model.global_batch_size for c in configs]
        m = merged.model
        m.global_batch_size = m.micro_batch_size = batch
        m.max_seq_length = max(c.model.max_seq_length for c in configs)
        m.optim.lr = lr
        m.data.train_task_weights = tuple(examples)
        if scale_lr:
            rows = [batch * e / sum(examples) for e in examples]  # per mixed batch, on average
            m.optim.task_lr_scales = tuple(
                r / c.model.global_batch_size for r, c in zip(rows, configs, strict=True)
            )
        # Decoded answers only inform (val_loss picks); SQuAD and intent decoding is the cost.
        m.data.validation_metric_examples = 150
        merged.trainer.max_steps = steps or round(sum(examples) / batch)
        merged.trainer.val_check_interval = max(1, merged.trainer.max_steps // 8)
        merged.trainer.limit_val_batches = 40
        merged.inference.tokens_to_generate = max(c.inference.tokens_to_generate for c in configs)
        merged.inference.batch_size = min(c.inference.batch_size for c in configs)
    return merged
