"""`python -m ptlearn.bench --mode=generate`: greedy decoding of prompt-tuned prompts through
the serving path (answers.generate_answers), EOS disabled so every row decodes in full.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ptlearn import answers, config_lib, evaluation, prefix_caches, training
from ptlearn.bench import (
    Options,
    header,
    peak_rss_mb,
    rates,
    synthetic_examples,
    synthetic_setup,
    time_calls,
)
from ptlearn.checkpoints import load_model
from ptlearn.data import batching
from ptlearn.serving import serving_layout


def bench_generate(args: Options) -> dict[str, Any]:
    """Greedy decoding of `--new_tokens` per row for `--batch` prompt-tuned prompts of
    `--prompt_len` text tokens, through answers.generate_answers with EOS disabled."""
    loaded = load_model(args.model, dtype=args.frozen_dtype)
    load_peak = peak_rss_mb()
    s = synthetic_setup(args, loaded)
    prompt_params = nn.meta.unbox(training.init_prompt_params(s, jax.random.key(args.seed)))
    tables = training.frozen_tables(s, prompt_params)
    examples = synthetic_examples(
        args.batch, args.prompt_len, args.virtual_tokens, loaded.config.vocab_size, 1, args.seed
    )
    # Inference examples carry no answer and no loss.
    examples = [
        dataclasses.replace(e, loss_mask=np.zeros_like(e.loss_mask), answer_start=len(e.ids))
        for e in examples
    ]
    # Without an EOS id the decoder never stops early: every row makes --new_tokens tokens.
    tokenizer = copy.copy(loaded.tokenizer)
    tokenizer.eos_id = None
    # load_model already gave --frozen_dtype, the model's param_dtype.
    config, lm_params = serving_layout(s.model.config, loaded.params)
    lm = dataclasses.replace(
        evaluation.prompted_lm(s, jax.device_put(lm_params), tables),
        config=config,
        tokenizer=tokenizer,
        max_seq_length=args.virtual_tokens + args.prompt_len + args.new_tokens,
        add_bos=False,
        add_eos=False,
    )
    inference = config_lib.inference_config()
    inference.greedy = True
    inference.tokens_to_generate = args.new_tokens
    inference.batch_size = args.batch
    compile_s, times = time_calls(
        lambda: answers.generate_answers(lm, examples, inference), args.steps, args.profile_dir
    )
    # The task's shared prefix comes from its KV cache; the rest is prefilled, bucketed.
    prefix = prefix_caches.shared_prefix_length(examples)
    prompt_length = prefix + batching.bucket_length(
        len(examples[0].ids) - prefix, lm.max_seq_length
    )
    median = statistics.median(times)
    new = args.batch * args.new_tokens
    result = header(args, "generate", args.model)
    result["seq"] = args.prompt_len  # the prompts' text tokens; --seq is for the step modes
    result.update(
        rates(
            median,
            args.batch * (prompt_length + args.new_tokens),
            args.batch * (len(examples[0].ids) + args.new_tokens),
            args.batch * (args.prompt_len + args.new_tokens),
        )
    )
    result.update(
        {
            "gen_tokens_per_s": round(new / median, 2),
            "prompt_len": args.prompt_len,
            "padded_prompt_length": prompt_length,
            "cached_prefix_length": prefix,
            "new_tokens": args.new_tokens,
            "step": "answers.generate_answers: task prefix from its KV cache, prefill, "
            "compiled decode loop, detokenize",
            "step_times_s": [round(t, 6) for t in times],
            "compile_s": round(compile_s, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_after_load_mb": round(load_peak, 1),
        }
    )
    return result
