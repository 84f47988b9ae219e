"""ptlearn: prompt learning (prompt tuning, p-tuning) for frozen GPT models in JAX/Flax.

The public API, for experiments driven from Python:

  config = ptlearn.load_config("sentiment_prompt_tuning", "model=tiny", **{"model.optim.lr": 3e-3})
  run = ptlearn.train(config, "runs/x")          # Run: history, final / best / test metrics
  lm = ptlearn.load(run.prompt_model)             # PromptedLM
  lm.predict(["profit rose"], task="sentiment")   # also .rank, .generate, .evaluate

Heavy modules (jax, flax) load on first use of `train` or `load`, not on `import ptlearn`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptlearn.config_lib import load_config

if TYPE_CHECKING:
    import ml_collections

    from ptlearn.predict import PromptedLM
    from ptlearn.runs import Run

__version__ = "0.1.0"
__all__ = ["PromptedLM", "Run", "in_memory", "load", "load_config", "train"]


def train(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> Run:
    """Trains `config`'s prompts in `workdir` (resuming the run there, if any) -> its Run.

    The same run as `python -m ptlearn.train --config=... --workdir=...` (multi-process runs
    included: `config.distributed` initialises JAX's runtime); a workdir that holds a run
    under another config is refused unless `allow_config_change`. Progress goes to stderr
    through the "ptlearn" logger.
    """
    from ptlearn import distributed, run_log, training

    run_log.console_logging(command=False)
    distributed.initialize(config.distributed)
    return training.train_and_evaluate(
        config, str(workdir), allow_config_change=allow_config_change
    )


def in_memory(records: list[dict], name: str | None = None) -> str:
    """Registers a list of records (dicts) as a data set of this process -> its spec
    ("mem:NAME"), for `model.data.train_ds` etc.: `**{"model.data.train_ds": (spec,)}`."""
    from ptlearn.data import sources

    return sources.in_memory(records, name)


def load(prompt_model: str, model: str | None = None) -> PromptedLM:
    """The prompt model at `prompt_model` on its base model (or `model`, checksum-checked)."""
    from ptlearn import predict

    lm, _ = predict.load_prompted_lm(str(prompt_model), model)
    return lm


def __getattr__(name: str) -> Any:
    if name == "Run":
        from ptlearn.runs import Run

        return Run
    if name == "PromptedLM":
        from ptlearn.predict import PromptedLM

        return PromptedLM
    raise AttributeError(f"module 'ptlearn' has no attribute {name!r}")
