"""An encoded example's answer, from a PromptedLM: decoded (generation, each task's virtual
prefix served from its KV cache) or chosen from the task's closed label set (rank
classification: the label whose answer tokens have the lowest total NLL, each record's prompt
run once into a KV cache that every label's answer continues)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ptlearn import distributed, encoding, prefix_caches, prompted
from ptlearn.data import batching
from ptlearn.errors import PtlearnError
from ptlearn.generate import Sampling, after_prefix, decode, gather_rows
from ptlearn.gpt import GPT, cache_length

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


@functools.partial(jax.jit, static_argnames=("config",))
def _continuation_nll(config, lm_params, prompt_caches, prompt_lengths, rows, batch):
    """Total answer NLL [B] of continuations batch (right-padded, no virtual slots), row b
    continuing prompt rows[b] of prompt_caches ([.., R, P, K, D], prompt_lengths [R] real)."""
    model = GPT(config)
    lengths = prompt_lengths[rows]
    cache, key_mask = after_prefix(
        config, gather_rows(prompt_caches, rows), lengths, batch["attention_mask"]
    )
    hidden, _ = model.apply(
        {"params": lm_params},
        batch["ids"],
        positions=batch["positions"] + lengths[:, None],
        attention_mask=key_mask,
        cache=cache,
        cache_index=cache_length(prompt_caches),
        return_hidden=True,
    )
    nll = prompted.target_nll(model, lm_params, hidden, batch)
    return jnp.sum(nll * batch["target_mask"], axis=1)


Candidate = tuple[int, str, encoding.EncodedExample]  # (record, label, its encoded example)


def rank_answers(
    lm: PromptedLM,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    label_sets: Mapping[str, Sequence[str]],
    *,
    batch_size: int,
) -> list[str]:
    """For each record, the label of its task whose answer tokens have the lowest total NLL
    ("" when no label's example fits max_seq_length)."""
    scores = label_nlls(lm, records, label_sets, batch_size=batch_size)
    # A tie goes to the label that sorts first, whichever path scored the record.
    return [min((total, label) for label, total in s.items())[1] if s else "" for s in scores]


def label_nlls(
    lm: PromptedLM,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    label_sets: Mapping[str, Sequence[str]],
    *,
    batch_size: int,
    share_prompts: bool = True,
) -> list[dict[str, float]]:
    """Per record, {label: total NLL of its answer tokens} over its task's closed label set
    (a label whose example cannot fit max_seq_length is left out).

    With share_prompts, a record whose labels share its prompt (the usual case) runs the
    prompt once into a KV cache and each label's answer on it: for short labels about
    1 / (number of labels) of running every label's whole example, which is what the other
    records (prompt cut differently per label, a virtual token after the answer) and
    share_prompts=False do.
    """
    by_record = _candidates(lm, records, label_sets)
    whole: list[Candidate] = []
    shared: list[tuple[int, list[Candidate]]] = []
    for candidates in by_record:
        split = _prompt_split(candidates) if share_prompts else 0
        if split:
            shared.append((split, candidates))
        else:
            whole.extend(candidates)
    scores: list[dict[str, float]] = [{} for _ in records]
    _score_whole(lm, whole, batch_size, scores)
    _score_shared(lm, shared, batch_size, scores)
    return scores


def _candidates(
    lm: PromptedLM,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    label_sets: Mapping[str, Sequence[str]],
) -> list[list[Candidate]]:
    """Each record filled with each label of its task, encoded; only answer tokens count (a
    prompt cut shorter for a longer label must not lower that label's total)."""
    by_record = []
    for index, (line_no, record) in enumerate(records):
        task = record["taskname"]
        template = lm.templates[task]
        labels = label_sets.get(task)
        if not labels:
            raise PtlearnError(
                f"task {task!r} has no closed label set in the prompt model: rank "
                "classification needs one; use generation (inference.rank_classification=False)"
            )
        candidates = []
        for label in labels:
            encoded = encoding.encode_example(
                template,
                {**record, template.answer_field: label},
                lm.tokenizer,
                max_seq_length=lm.max_seq_length,
                add_eos=lm.add_eos,
                add_bos=lm.add_bos,
                where=f"line {line_no}",
                line_no=line_no,
            )
            if encoded is not None:
                answer_only = encoded.loss_mask.copy()
                answer_only[: encoded.answer_start] = 0
                candidates.append(
                    (index, label, dataclasses.replace(encoded, loss_mask=answer_only))
                )
        by_record.append(candidates)
    return by_record


def _prompt_split(candidates: Sequence[Candidate]) -> int:
    """Where a record's label examples can be cut into a shared prompt and per-label
    continuations: one before the first answer token (the last prompt token's hidden state
    predicts it), when every label has the same prompt and no virtual token follows; else 0."""
    if not candidates:
        return 0
    first = candidates[0][2]
    start = first.answer_start
    if start < 2:
        return 0
    for _, _, e in candidates:
        if (
            e.answer_start != start
            or not np.array_equal(e.ids[:start], first.ids[:start])
            or not np.array_equal(e.virtual_index[:start], first.virtual_index[:start])
            or (e.virtual_index[start - 1 :] >= 0).any()
        ):
            return 0
    return start - 1


def _score_whole(
    lm: PromptedLM, candidates: list[Candidate], batch_size: int, scores: list[dict]
) -> None:
    """Each candidate's whole example run through the model, batched by length."""
    candidates = sorted(candidates, key=lambda c: len(c[2].ids))
    lengths = [len(c[2].ids) for c in candidates]
    for part, rows in batching.length_chunks(lengths, batch_size, lm.max_seq_length):
        chunk = candidates[part]
        batch = batching.collate(
            [c[2] for c in chunk],
            lm.task_index,
            batch_size=rows,
            max_length=lm.max_seq_length,
            pad_id=lm.tokenizer.fill_id,
        )
        totals = distributed.to_host(_sequence_nll(lm.config, lm.lm_params, lm.tables, batch))
        for (index, label, _), total in zip(chunk, totals, strict=False):
            scores[index][label] = float(total)


def _score_shared(
    lm: PromptedLM,
    records: list[tuple[int, list[Candidate]]],
    batch_size: int,
    scores: list[dict],
) -> None:
    """Per length chunk of records (split, candidates): their prompts' KV caches in one
    forward, then every label's continuation (the last prompt token and the answer) on them."""
    pad_id = lm.tokenizer.fill_id
    records = sorted(records, key=lambda r: r[0])
    splits = [r[0] for r in records]
    for part, prompt_rows in batching.length_chunks(splits, batch_size, lm.max_seq_length):
        chunk = records[part]
        prompts = batching.collate(
            [encoding.slice_example(candidates[0][2], 0, split) for split, candidates in chunk],
            lm.task_index,
            batch_size=prompt_rows,
            max_length=lm.max_seq_length,
            pad_id=pad_id,
        )
        lengths = prompts["attention_mask"].sum(axis=1).astype(np.int32)
        caches = prefix_caches.run_prefixes(
            lm, prompts["ids"], prompts["task_id"], prompts["virtual_index"], lengths
        )
        continuations = [
            (row, index, label, encoding.slice_example(e, split))
            for row, (split, candidates) in enumerate(chunk)
            for index, label, e in candidates
        ]
        # Answers are a few tokens: pad to a power of two, not to training's multiple of 16;
        # a short chunk's continuations (a long prompt's few labels) fill fewer rows.
        longest = max(len(c[3].ids) for c in continuations)
        length = max(4, 1 << (longest - 1).bit_length())
        rows = min(batch_size, 1 << (len(continuations) - 1).bit_length())
        for first in range(0, len(continuations), rows):
            piece = continuations[first : first + rows]
            batch = batching.collate(
                [c[3] for c in piece],
                lm.task_index,
                batch_size=rows,
                max_length=length,
                pad_id=pad_id,
                length=length,
                num_targets=length,
            )
            cache_rows = np.zeros(rows, np.int32)
            cache_rows[: len(piece)] = [c[0] for c in piece]
            totals = distributed.to_host(
                _continuation_nll(lm.config, lm.lm_params, caches, lengths, cache_rows, batch)
            )
            for (_, index, label, _), total in zip(piece, totals, strict=False):
                scores[index][label] = float(total)
