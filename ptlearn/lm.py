"""`python -m ptlearn.lm`: tokenize, score and generate with a base model; JSON on the last line.

python -m ptlearn.lm tokenize --model=default --text_file=F
python -m ptlearn.lm score    --model=default --text_file=F
python -m ptlearn.lm generate --model=default --prompt="Once upon a time" --greedy
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from ptlearn import cli
from ptlearn.errors import PtlearnError


def _read_text(path: str) -> str:
    file = pathlib.Path(path)
    if not file.is_file():
        raise PtlearnError(f"--text_file={path}: no such file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PtlearnError(f"--text_file={path}: not UTF-8 text ({err})") from err


def _encode(tokenizer, text: str, add_bos: bool) -> list[int]:
    ids = tokenizer.encode(text)
    if add_bos:
        if tokenizer.bos_id is None:
            raise PtlearnError("--add_BOS: this model's tokenizer has no BOS token")
        ids = [tokenizer.bos_id, *ids]
    return ids


def _load(model: str, with_tokenizer: bool = True):
    from ptlearn.checkpoints import load_model

    loaded = load_model(model, with_tokenizer=with_tokenizer)
    if with_tokenizer and loaded.tokenizer is None:
        raise PtlearnError(f"--model={model}: the checkpoint carries no tokenizer files")
    return loaded


def cmd_tokenize(args: Any) -> dict:
    """Token ids of the text file (the tokenizer's own BOS rule applies)."""
    from ptlearn import tokenizers
    from ptlearn.checkpoints import resolve_model

    tokenizer = tokenizers.load_tokenizer(resolve_model(args.model))
    text = _read_text(args.text_file)
    return {"token_ids": _encode(tokenizer, text, args.add_BOS or tokenizer.add_bos)}


def cmd_score(args: Any) -> dict:
    """Mean next-token NLL of the whole file as one sequence."""
    import jax
    import jax.numpy as jnp

    from ptlearn.gpt import GPT
    from ptlearn.losses import token_nll

    loaded = _load(args.model)
    tokenizer = loaded.tokenizer
    ids = _encode(tokenizer, _read_text(args.text_file), args.add_BOS or tokenizer.add_bos)
    if len(ids) < 2:
        raise PtlearnError(f"--text_file={args.text_file}: needs at least 2 tokens to score")
    if len(ids) > loaded.config.max_position_embeddings:
        raise PtlearnError(
            f"--text_file={args.text_file}: {len(ids)} tokens exceed the model's context of "
            f"{loaded.config.max_position_embeddings}; split the file"
        )
    model = GPT(loaded.config)

    @jax.jit
    def mean_nll(params, ids):
        logits, _ = model.apply({"params": params}, ids[:, :-1])
        nll = token_nll(logits, ids[:, 1:])
        return jnp.mean(nll)

    value = float(mean_nll(loaded.params, jnp.asarray([ids], jnp.int32)))
    return {"nats_per_token": value, "n_tokens": len(ids)}


def cmd_generate(args: Any) -> dict:
    """Continuation of --prompt."""
    from ptlearn.generate import Sampling, generate
    from ptlearn.serving import serving_layout

    loaded = _load(args.model)
    tokenizer = loaded.tokenizer
    prompt_ids = _encode(tokenizer, args.prompt, args.add_BOS or tokenizer.add_bos)
    if not prompt_ids:
        raise PtlearnError("--prompt is empty: give some text, or --add_BOS")
    try:
        sampling = Sampling(
            greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
        )
    except ValueError as err:
        raise PtlearnError(f"sampling options: {err}") from err
    room = loaded.config.max_position_embeddings - len(prompt_ids)
    if not 1 <= args.tokens_to_generate <= room:
        raise PtlearnError(
            f"--tokens_to_generate={args.tokens_to_generate}: must be within 1 and {room}, what "
            f"the model's context ({loaded.config.max_position_embeddings}) leaves after the prompt"
        )
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    # Decoding runs faster on the serving layout (unrolled layers: no stack copy per step).
    config, params = serving_layout(loaded.config, loaded.params)
    (new_ids,) = generate(
        config,
        params,
        [prompt_ids],
        tokens_to_generate=args.tokens_to_generate,
        sampling=sampling,
        eos_ids=eos,
        pad_id=tokenizer.fill_id,
        seed=args.seed,
    )
    return {"text": tokenizer.decode(new_ids), "token_ids": new_ids}


COMMANDS = {"tokenize": cmd_tokenize, "score": cmd_score, "generate": cmd_generate}
REQUIRED = {"tokenize": ("text_file",), "score": ("text_file",), "generate": ("prompt",)}


@dataclasses.dataclass
class Options:
    """The flags of `python -m ptlearn.lm COMMAND`."""

    model: str = cli.option("default", "'default', 'tiny', .gguf, Hugging Face folder, .nemo")
    add_BOS: bool = cli.option(False, "prepend BOS to the text")
    text_file: str | None = cli.option(None, "tokenize / score: the UTF-8 text file")
    prompt: str | None = cli.option(None, "generate: the text to continue")
    tokens_to_generate: int = cli.option(30, "generate: new tokens")
    greedy: bool = cli.option(False, "generate: argmax instead of sampling")
    temperature: float = cli.option(1.0, "generate: sampling temperature")
    top_k: int = cli.option(0, "generate: sample from the k likeliest (0: all)")
    top_p: float = cli.option(1.0, "generate: nucleus sampling mass")
    seed: int = cli.option(0, "generate: sampling seed")


def run(command: str, **options: Any) -> dict:
    """Runs one command (`tokenize`, `score`, `generate`) with Options' defaults for the
    options not given; user errors raise PtlearnError."""
    if command not in COMMANDS:
        raise PtlearnError(f"command {command!r}: use one of {', '.join(COMMANDS)}")
    try:
        values = Options(**options)
    except TypeError as err:
        raise PtlearnError(f"{command}: {err}") from None
    missing = [f"--{n}" for n in REQUIRED[command] if getattr(values, n) is None]
    if missing:
        raise PtlearnError(f"{command} needs {' and '.join(missing)}")
    return COMMANDS[command](values)


def main(argv: Sequence[str]) -> None:
    """`python -m ptlearn.lm COMMAND --flags`: prints the result as one JSON line."""
    if len(argv) != 2:
        cli.fail(f"give one command ({' | '.join(COMMANDS)}) before the --flags")
    cli.print_json(run(argv[1], **cli.option_values(Options)))


if __name__ == "__main__":
    cli.define_options(Options)
    cli.run(main)
