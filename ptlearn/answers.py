"""An encoded example's answer, from a PromptedLM: decoded (generation, each task's virtual
prefix served from its KV cache) or chosen from the task's closed label set (rank
classification: the label whose answer tokens have the lowest total NLL)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from ptlearn import distributed, encoding, prefix_caches, prompted
from ptlearn.data import batching
from ptlearn.errors import PtlearnError
from ptlearn.generate import Sampling, decode, gather_rows
from ptlearn.gpt import GPT

if TYPE_CHECKING:
    from ptlearn.predict import PromptedLM


def sampling_from(inference: Any) -> Sampling:
    """The `inference.*` config -> Sampling; bad values raise a ConfigError-like PtlearnError."""
    try:
        return Sampling(
            greedy=bool(inference.greedy),
            temperature=float(inference.temperature),
            top_k=int(inference.top_k),
            top_p=float(inference.top_p),
        )
    except ValueError as err:
        raise PtlearnError(f"inference options: {err}") from err


def generate_answers(
    lm: PromptedLM, examples: Sequence[encoding.EncodedExample], inference: Any
) -> list[str]:
    """Decodes each inference-encoded example's answer, returned stripped, in input order."""
    tokenizer = lm.tokenizer
    eos = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
    pad_id = tokenizer.fill_id
    sampling = sampling_from(inference)
    stops = stop_strings(inference)
    examples, prefix_lengths, prefix_rows, prefixes = prefix_caches.split_prefixes(lm, examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    answers: list[str] = [""] * len(examples)
    size = int(inference.batch_size)
    rng = jax.random.key(int(inference.seed))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        batch = batching.collate(
            [examples[i] for i in rows],
            lm.task_index,
            batch_size=size,
            max_length=lm.max_seq_length,
            pad_id=pad_id,
            left_pad=True,
        )
        inputs = prefix_caches.prompted_inputs(
            lm.config,
            lm.lm_params,
            lm.tables,
            batch["ids"],
            batch["task_id"],
            batch["virtual_index"],
        )
        rng, batch_rng = jax.random.split(rng)
        prefix = row_lengths = None
        if prefixes is not None:
            padded_rows = rows + [rows[0]] * (size - len(rows))  # collate's padding rows
            prefix = gather_rows(prefixes, jnp.asarray(prefix_rows[padded_rows]))
            row_lengths = jnp.asarray(prefix_lengths[padded_rows])
        tokens, lengths = decode(
            {"params": lm.lm_params},
            jnp.asarray(batch["ids"]),
            jnp.asarray(batch["attention_mask"]),
            batch_rng,
            inputs["embeddings"],
            prefix,
            row_lengths,
            inputs.get("kv_override"),
            inputs.get("kv_index"),
            config=lm.config,
            tokens_to_generate=int(inference.tokens_to_generate),
            sampling=sampling,
            eos_ids=eos,
        )
        tokens, lengths = distributed.to_host((tokens, lengths))
        for row, index in enumerate(rows):
            new = tokens[row, : lengths[row]].tolist()
            if new and new[-1] in eos:
                new = new[:-1]
            answers[index] = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stops)
    return answers


def stop_strings(inference: Any) -> tuple[str, ...]:
    """`inference.stop_strings` checked: non-empty strings."""
    stops = tuple(inference.get("stop_strings", ()))
    if not all(isinstance(s, str) and s for s in stops):
        raise PtlearnError(
            f"inference.stop_strings={stops!r}: give a tuple of non-empty strings, e.g. ('\\n',)"
        )
    return stops


def before_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest of `stops` (all of it when none occurs)."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The answer in a decoded continuation: before the first stop string, stripped."""
    return before_stop(text, stops).strip()


@functools.partial(jax.jit, static_argnames=("config",))
def _sequence_nll(config, lm_params, tables, batch):
    nll, _ = prompted.answer_nll(GPT(config), lm_params, tables, batch)
    return jnp.sum(nll, axis=1)


def rank_answers(
    lm: PromptedLM,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    label_sets: Mapping[str, Sequence[str]],
    *,
    batch_size: int,
) -> list[str]:
    """For each record, the label of its task whose answer tokens have the lowest total NLL."""
    pad_id = lm.tokenizer.fill_id
    candidates: list[tuple[int, str, encoding.EncodedExample]] = []
    for index, (line_no, record) in enumerate(records):
        task = record["taskname"]
        template = lm.templates[task]
        labels = label_sets.get(task)
        if not labels:
            raise PtlearnError(
                f"task {task!r} has no closed label set in the prompt model: rank "
                "classification needs one; use generation (inference.rank_classification=False)"
            )
        for label in labels:
            filled = {**record, template.answer_field: label}
            encoded = encoding.encode_example(
                template,
                filled,
                lm.tokenizer,
                max_seq_length=lm.max_seq_length,
                add_eos=lm.add_eos,
                add_bos=lm.add_bos,
                where=f"line {line_no}",
                line_no=line_no,
            )
            if encoded is not None:
                candidates.append((index, label, encoded))
    scores: dict[int, list[tuple[float, str]]] = {}
    candidates.sort(key=lambda c: len(c[2].ids))
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start : start + batch_size]
        batch = batching.collate(
            [c[2] for c in chunk],
            lm.task_index,
            batch_size=batch_size,
            max_length=lm.max_seq_length,
            pad_id=pad_id,
        )
        totals = distributed.to_host(_sequence_nll(lm.config, lm.lm_params, lm.tables, batch))
        for (index, label, _), total in zip(chunk, totals, strict=False):
            scores.setdefault(index, []).append((float(total), label))
    return [min(scores[i])[1] if i in scores else "" for i in range(len(records))]
