"""Prediction with a trained prompt model: generation or rank classification, then task metrics.

  python -m ptlearn.predict --prompt_model=W/prompt_model --data=test.jsonl --pred_file=out.txt \
      [--model=M] [--config.inference.greedy=True --config.inference.tokens_to_generate=N ...]

Writes one prediction per input line, in input order (a newline inside a prediction is written
as the two characters `\\n`); when the answer field is present, prints the task metrics as JSON
on the last line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import answers, deep_prompts, encoding, metrics, prompted, sharding, templates
from ptlearn.config_lib import inference_config
from ptlearn.data import sources
from ptlearn.errors import CheckpointError, PtlearnError
from ptlearn.files import write_text_atomic
from ptlearn.generate import generate
from ptlearn.gpt import GPTConfig
from ptlearn.serving import serving_layout

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PromptedLM:
    """A frozen base model plus the prompt tables of the tasks it serves.

    `ptlearn.load(prompt_model)` gives one; `.predict`, `.rank`, `.generate` and `.evaluate`
    take records (dicts with `taskname` and the template's fields) or plain strings.
    """

    config: GPTConfig
    lm_params: Any  # the GPT's inner parameter tree
    tables: np.ndarray  # [num_tasks, P_max, E]
    task_names: list[str]
    templates: dict[str, templates.TaskTemplate]
    tokenizer: Any
    max_seq_length: int
    add_bos: bool
    add_eos: bool
    # Closed answer sets per task (rank classification), and the default inference options.
    label_sets: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    inference: Any = dataclasses.field(default_factory=inference_config)
    # (task, prefix ids, prefix virtual_index) -> that prefix's KV cache [.., 1, P, K, D]
    prefix_caches: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def task_index(self) -> dict[str, int]:
        """Task name -> row of `tables`."""
        return {t: i for i, t in enumerate(self.task_names)}

    def predict(
        self, inputs: Sequence[Mapping[str, Any] | str], task: str | None = None, **options: Any
    ) -> list[str]:
        """The answer for each input (a record, or a string filling the task's one input field),
        generated with `self.inference` updated by `options` (e.g. tokens_to_generate=4)."""
        records = as_records(self, inputs, task)
        inference = with_options(self.inference, options)
        return predict_records(self, records, inference, label_sets=self.label_sets)

    def rank(self, inputs: Sequence[Mapping[str, Any] | str], task: str | None = None) -> list[str]:
        """For each input, the label of its task's closed label set with the lowest NLL."""
        return self.predict(inputs, task, rank_classification=True)

    def generate(self, texts: Sequence[str], **options: Any) -> list[str]:
        """The base model's continuation of each raw text (no template, no prompt)."""
        inference = with_options(self.inference, options)
        eos = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else []
        prompts = [self.tokenizer.encode(t) for t in texts]
        if not all(prompts):
            raise PtlearnError("generate: every text needs at least one token")
        new_ids = generate(
            self.config,
            self.lm_params,
            prompts,
            tokens_to_generate=int(inference.tokens_to_generate),
            sampling=answers.sampling_from(inference),
            eos_ids=eos,
            pad_id=self.tokenizer.fill_id,
            seed=int(inference.seed),
        )
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in new_ids]
        stops = answers.stop_strings(inference)
        return [answers.before_stop(t, stops) for t in texts]

    def evaluate(
        self, inputs: Sequence[Mapping[str, Any]], **options: Any
    ) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} of the predictions for records that carry their answers."""
        records = as_records(self, inputs, None)
        inference = with_options(self.inference, options)
        predictions = predict_records(self, records, inference, label_sets=self.label_sets)
        return score(self, records, predictions)


def as_records(
    lm: PromptedLM, inputs: Sequence[Mapping[str, Any] | str], task: str | None
) -> list[tuple[int, dict]]:
    """(1-based index, record) per input; a string fills `task`'s single input field."""
    if isinstance(inputs, str | Mapping):
        raise PtlearnError("give a list of records or strings, not a single one")
    if task is not None and task not in lm.templates:
        raise PtlearnError(
            f"task={task!r} is not in this prompt model ({', '.join(lm.task_names)})"
        )
    records = []
    for number, item in enumerate(inputs, start=1):
        if isinstance(item, str):
            if task is None:
                raise PtlearnError(f"input {number} is a string: name its task (task=...)")
            template = lm.templates[task]
            fields = [f for f in template.field_names if f != template.answer_field]
            if len(fields) != 1:
                raise PtlearnError(
                    f"task {task!r} has input fields {fields}: give records, not strings"
                )
            item = {"taskname": task, fields[0]: item}
        elif isinstance(item, Mapping):
            item = dict(item)
            if task is not None:
                item.setdefault("taskname", task)
        else:
            raise PtlearnError(f"input {number} is a {type(item).__name__}: give a dict or str")
        records.append((number, item))
    return records


def with_options(inference: Any, options: Mapping[str, Any]) -> Any:
    """A copy of the inference config with `options` set (unknown keys are an error)."""
    from ptlearn.config_lib import apply_overrides

    copy = inference.copy_and_resolve_references()
    copy.lock()
    return apply_overrides(copy, options)


def load_prompted_lm(
    prompt_model_dir: str, model: str | None = None, *, mesh: Any = None, rules: Any = None
) -> tuple[PromptedLM, Any]:
    """(the prompt model at `prompt_model_dir` on its base model (or `model`), checksum-checked;
    the artifact). With a mesh, the base model's weights are sharded after its logical axes."""
    from ptlearn.checkpoints import file_checksum, load_model, resolve_model
    from ptlearn.checkpoints.prompt_model import load_prompt_model

    artifact = load_prompt_model(prompt_model_dir)
    spec = model or artifact.base_model["spec"]
    path = resolve_model(spec)
    checksum = file_checksum(path)
    if checksum != artifact.base_model["sha256"]:
        raise CheckpointError(
            f"--model={spec} ({path}) is not the base model the prompt model in "
            f"{prompt_model_dir} was trained on ({artifact.base_model['file']}, sha256 "
            f"{artifact.base_model['sha256'][:12]}...); pass that model with --model"
        )
    loaded = load_model(spec)
    task_names = artifact.tasks
    parsed = templates.parse_task_templates(artifact.templates)
    fits = {(loaded.config.hidden_size,), deep_prompts.row_shape(loaded.config)}
    for task, table in artifact.tables.items():
        if tuple(table.shape[1:]) not in fits:
            raise CheckpointError(
                f"{prompt_model_dir}: task {task!r}'s prompt rows are {list(table.shape[1:])}, "
                f"which {spec} (hidden {loaded.config.hidden_size}) cannot take"
            )
    # Serving decodes on unrolled layers (a scan copies every weight out of the stack at each
    # decode step) with out-first kernels.
    config, lm_params = serving_layout(loaded.config, loaded.params)
    return PromptedLM(
        config=config,
        lm_params=_place(config, lm_params, mesh, rules),
        tables=prompted.stack_tables(artifact.tables, task_names),
        task_names=task_names,
        templates=parsed,
        tokenizer=loaded.tokenizer,
        max_seq_length=int(artifact.encoding["max_seq_length"]),
        add_bos=bool(artifact.encoding["add_bos"]),
        add_eos=bool(artifact.encoding["add_eos"]),
        label_sets=dict(artifact.label_sets),
        inference=_trained_inference(artifact),
    ), artifact


def _trained_inference(artifact: Any) -> Any:
    """The inference options the prompt model was trained with (defaults for older ones)."""
    inference = inference_config()
    saved = artifact.run_record.get("config", {}).get("inference", {})
    for key, value in saved.items():
        if key in inference:
            inference[key] = value
    return inference


def _place(config: GPTConfig, params: Any, mesh: Any, rules: Any) -> Any:
    if mesh is None:
        return jax.tree_util.tree_map(jnp.asarray, params)
    return jax.device_put(params, prompted.lm_shardings(config, mesh, rules))


def predict_records(
    lm: PromptedLM,
    records: Sequence[tuple[int, dict]],
    inference: Any,
    *,
    label_sets: Mapping[str, Sequence[str]] | None = None,
    source: str = "<records>",
) -> list[str]:
    """One prediction per record (empty for an example too long even after truncation)."""
    if inference.rank_classification:
        for line_no, record in records:
            _check_task(lm, record, f"{source}:{line_no}")
        return answers.rank_answers(
            lm, records, label_sets or {}, batch_size=int(inference.batch_size)
        )
    room = lm.max_seq_length - int(inference.tokens_to_generate)
    if room < 1:
        raise PtlearnError(
            f"inference.tokens_to_generate={inference.tokens_to_generate} leaves no room for "
            f"the prompt within max_seq_length={lm.max_seq_length}"
        )
    # Answers return by key: the line numbers when unique (one file: messages name its lines),
    # else positions (several files' line numbers repeat: a multitask test set).
    keys = [line_no for line_no, _ in records]
    if len(set(keys)) < len(keys):
        keys = list(range(len(records)))
    inference_records = []
    for key, (line_no, record) in zip(keys, records, strict=True):
        answer_field = lm.templates[_check_task(lm, record, f"{source}:{line_no}")].answer_field
        inference_records.append((key, {k: v for k, v in record.items() if k != answer_field}))
    encoded, _ = encoding.encode_dataset(
        inference_records,
        lm.templates,
        lm.tokenizer,
        max_seq_length=room,
        add_eos=lm.add_eos,
        add_bos=lm.add_bos or bool(inference.add_BOS),
        for_inference=True,
        source=source,
    )
    decoded = answers.generate_answers(lm, encoded, inference)
    by_key = {e.line_no: a for e, a in zip(encoded, decoded, strict=True)}
    return [by_key.get(key, "") for key in keys]


def _check_task(lm: PromptedLM, record: Mapping[str, Any], where: str) -> str:
    task = record.get("taskname")
    if task not in lm.templates:
        raise PtlearnError(
            f"{where}: task {task!r} is not in this prompt model (it serves: "
            f"{', '.join(lm.task_names)})"
        )
    return task


def score(
    lm: PromptedLM, records: Sequence[tuple[int, dict]], predictions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Task metrics for every task whose records all carry the answer field."""
    results: dict[str, dict[str, float]] = {}
    for task in sorted({r["taskname"] for _, r in records}):
        template = lm.templates[task]
        rows = [i for i, (_, r) in enumerate(records) if r["taskname"] == task]
        examples = [records[i][1] for i in rows]
        if not all(template.answer_field in e for e in examples):
            continue
        preds = [predictions[i] for i in rows]
        results[task] = metrics.task_metrics(
            template.metric, preds, examples, answer_field=template.answer_field, taskname=task
        )
    return results


def main(argv: Sequence[str]) -> None:
    """Predicts --data with --prompt_model into --pred_file; prints the metrics as JSON."""
    del argv
    from absl import flags
    from ml_collections import config_flags

    from ptlearn import cli

    f = flags.FLAGS
    c = f.config
    _check_pred_file(pathlib.Path(f.pred_file))  # before the model loads, not after the work
    for key in ("batch_size", "tokens_to_generate"):
        if int(c.inference[key]) < 1:
            raise PtlearnError(f"--config.inference.{key}={c.inference[key]}: must be >= 1")
    mesh = sharding.make_mesh(
        c.model.tensor_model_parallel_size, c.mesh.fsdp, sharding.select_devices(c.trainer.devices)
    )
    rules = sharding.rules_from_config(c.mesh.rules)
    lm, _ = load_prompted_lm(f.prompt_model, f.model, mesh=mesh, rules=rules)
    fields = {t: dict(tpl.fields) for t, tpl in lm.templates.items() if tpl.fields}
    records = list(sources.read(f.data, tasks=lm.task_names, fields=fields))
    if not records:
        raise PtlearnError(f"--data={f.data}: the data set holds no examples")
    # The options the model was trained with, then only what the command line changes: the
    # CLI, ptlearn.load(...).predict and the run's test_metrics.json give the same answers.
    given = config_flags.get_override_values(f["config"])
    inference = with_options(
        lm.inference,
        {k.removeprefix("inference."): v for k, v in given.items() if k.startswith("inference.")},
    )
    with sharding.activate(mesh, rules):
        predictions = predict_records(
            lm, records, inference, label_sets=lm.label_sets, source=f.data
        )
    out = pathlib.Path(f.pred_file)
    write_text_atomic(out, "".join(p.replace("\n", "\\n") + "\n" for p in predictions))
    results = score(lm, records, predictions)
    summary: dict[str, Any] = {"n_predictions": len(predictions), "pred_file": str(out)}
    if len(results) == 1:
        summary.update(next(iter(results.values())))
    summary["tasks"] = results
    cli.print_json(summary)


def _check_pred_file(path: pathlib.Path) -> None:
    """--pred_file must be a writable file path (not a folder), in a folder that exists."""
    if path.is_dir():
        raise PtlearnError(f"--pred_file={path}: is a folder; give a file path")
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise PtlearnError(f"--pred_file={path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PtlearnError(f"--pred_file={path}: cannot be written here")


def _define_flags():
    from absl import flags
    from ml_collections import ConfigDict, config_flags

    from ptlearn.config_lib import inference_config

    flags.DEFINE_string("prompt_model", None, "folder written by ptlearn.train (W/prompt_model)")
    flags.DEFINE_string(
        "data", None, "data set to predict: jsonl, CSV, tfds:NAME:SPLIT (any mix of the tasks)"
    )
    flags.DEFINE_string("pred_file", None, "where to write one prediction per input line")
    flags.DEFINE_string(
        "model", None, "base model ('default' or a path); default: the one trained on"
    )
    config = ConfigDict(
        {
            "inference": inference_config(),
            # Where the base model runs: as in training (trainer.devices per process, TP, FSDP).
            "trainer": {"devices": 1},
            "model": {"tensor_model_parallel_size": 1},
            "mesh": {"fsdp": 1, "rules": ()},
        }
    )
    config_flags.DEFINE_config_dict("config", config)
    flags.mark_flags_as_required(["prompt_model", "data", "pred_file"])


if __name__ == "__main__":
    from ptlearn import cli

    _define_flags()
    cli.run(main)
