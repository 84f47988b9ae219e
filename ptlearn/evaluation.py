"""What a training run scores and writes besides its steps: validation / test loss and task
metrics of a prompt state, the per-task tables frozen for serving, and the prompt-model
artifact. `training` calls these at every validation and at the end.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ptlearn import distributed, predict, prompted, prompts
from ptlearn.checkpoints.prompt_model import PromptModel, base_model_fields, save_prompt_model
from ptlearn.data import batching
from ptlearn.train_setup import Setup, adds_bos


def spread(items: Sequence[Any], count: int) -> list:
    """`count` of `items` taken evenly across them, in their order: every file, task and
    length of a validation set is represented (its first or shortest `count` need not be);
    all of them when `count` is 0 or covers them."""
    if not count or count >= len(items):
        return list(items)
    stride = len(items) / count
    return [items[int(i * stride)] for i in range(count)]


def validate_loss(
    s: Setup, eval_step, trainable, frozen, examples=None, prefix: str = "val"
) -> dict[str, float]:
    """`{prefix}_loss` over `examples` (default: the validation set; token-weighted), and per
    task when there are several."""
    examples = s.val_examples if examples is None else examples
    if not examples:
        return {}
    task_index = {t: i for i, t in enumerate(s.task_names)}
    size = s.config.model.micro_batch_size
    limit = (
        s.config.trainer.limit_test_batches
        if prefix == "test"
        else s.config.trainer.limit_val_batches
    )
    # Batched by length for less padding, after the limit (the shortest N would leave out
    # long examples, a whole task such as SQuAD in a multitask run).
    examples = sorted(spread(examples, limit * size), key=lambda e: len(e.ids))
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        batch = batching.collate(
            chunk,
            task_index,
            batch_size=size,
            max_length=s.config.model.max_seq_length,
            pad_id=s.loaded.tokenizer.fill_id,
        )
        nll, count = distributed.to_host(eval_step(trainable, frozen, batch))
        for example, row_nll, row_count in zip(chunk, nll, count, strict=False):
            sums[example.taskname] = sums.get(example.taskname, 0.0) + float(row_nll)
            counts[example.taskname] = counts.get(example.taskname, 0.0) + float(row_count)
    result = {f"{prefix}_loss": sum(sums.values()) / max(sum(counts.values()), 1.0)}
    if len(sums) > 1:
        result.update({f"{prefix}_loss/{t}": sums[t] / max(counts[t], 1.0) for t in sums})
    return result


def frozen_tables(s: Setup, prompt_params: Any) -> dict[str, np.ndarray]:
    """Per-task [P, E] tables for serving (p-tuning's encoder output frozen)."""
    frozen = prompts.freeze_to_tables(prompt_params, s.encoder_config, s.task_names)
    return {t: np.asarray(v, np.float32) for t, v in distributed.to_host(frozen["tables"]).items()}


def prompted_lm(s: Setup, lm_params: Any, tables: Mapping[str, np.ndarray]) -> predict.PromptedLM:
    """The run's model as a PromptedLM (its templates, tokenizer and encoding) with these
    weights and per-task tables; a prompt model on disk loads through predict.load instead."""
    return predict.PromptedLM(
        config=s.model.config,
        lm_params=lm_params,
        tables=prompted.stack_tables(tables, s.task_names),
        task_names=s.task_names,
        templates=s.templates,
        tokenizer=s.loaded.tokenizer,
        max_seq_length=s.config.model.max_seq_length,
        add_bos=adds_bos(s.config.model.data, s.loaded.tokenizer),
        add_eos=s.config.model.data.add_eos,
    )


def validate_tasks(
    s: Setup,
    lm_params: Any,
    tables: Mapping[str, np.ndarray],
    records: Sequence[tuple[int, dict]] | None = None,
    prefix: str = "val",
) -> dict[str, float]:
    """Task metrics (SPEC section 5) as `{prefix}_{task}/{metric}`: by default on the first
    `validation_metric_examples` validation records, answered as
    `model.data.validation_answers` says; given records (the test split) are answered as
    `inference` says (generation, or rank classification when inference.rank_classification)."""
    method = s.config.model.data.validation_answers if records is None else "inference"
    if records is None:
        limit = s.config.model.data.validation_metric_examples
        records = spread(s.val_records, limit) if limit else []
    if not records:
        return {}
    lm = prompted_lm(s, lm_params, tables)
    predictions = answers(lm, records, s.config.inference, s.label_sets, method)
    flat = {}
    for task, values in predict.score(lm, records, predictions).items():
        flat.update({f"{prefix}_{task}/{k}": v for k, v in values.items()})
    return flat


def answers(
    lm: predict.PromptedLM,
    records: Sequence[tuple[int, dict]],
    inference: Any,
    label_sets: Mapping[str, Sequence[str]],
    method: str,
) -> list[str]:
    """One answer per record. method: "inference" (as `inference` says), "generate", "rank",
    or "auto" (rank for tasks with a closed label set, generate for the others)."""
    if method == "inference":
        return predict.predict_records(lm, records, inference, label_sets=label_sets)
    ranked = [
        method == "rank" or (method == "auto" and r.get("taskname") in label_sets)
        for _, r in records
    ]
    result = [""] * len(records)
    for rank in (True, False):
        chosen = [i for i, r in enumerate(ranked) if r == rank]
        if not chosen:
            continue
        options = predict.with_options(inference, {"rank_classification": rank})
        subset = [records[i] for i in chosen]
        for i, answer in zip(
            chosen,
            predict.predict_records(lm, subset, options, label_sets=label_sets),
            strict=True,
        ):
            result[i] = answer
    return result


def write_prompt_model(
    s: Setup, prompt_params: Any, directory: pathlib.Path, info: dict, record: dict
) -> None:
    """The prompt-only artifact: tables, templates, base-model and tokenizer references."""
    spec = s.config.model.language_model_path
    tok = s.loaded.tokenizer
    save_prompt_model(
        directory,
        PromptModel(
            tables=frozen_tables(s, prompt_params),
            templates=[s.templates[t].to_dict() for t in s.task_names],
            **base_model_fields(spec, s.loaded),
            encoding={
                "add_eos": bool(s.config.model.data.add_eos),
                "add_bos": adds_bos(s.config.model.data, tok),
                "max_seq_length": int(s.config.model.max_seq_length),
            },
            label_sets=s.label_sets,
            training={"virtual_prompt_style": s.config.model.virtual_prompt_style, **info},
            run_record=record,
        ),
    )
