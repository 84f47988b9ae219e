"""The shipped recipes on their test splits: configs/sentiment.py, squad.py, intent_slot.py and
multitask.py (the three merged, each task seeing its recipe's examples), 3 seeds each, with
the frozen model zero-shot beside them. The application tables of issue 13, and multitask
against single-task on the same recipes.

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.data.prepare squad --raw_dir=../shared/data --out_dir=data/squad
  python -m ptlearn.data.prepare assistant --raw_dir=../shared/data --out_dir=data/assistant
  python -m ptlearn.sweep --config=experiments/recipes/config.py --workdir=runs/recipes
  python -m ptlearn.report runs/recipes --out=experiments/recipes \
      --baselines=experiments/recipes/earlier_arms.csv

Arms (`run=...`): `sentiment`, `squad`, `intent_slot`, `multitask` (the shipped configs as
they are, `seed` set), and `zero-shot-{sentiment,squad,intent_slot}` (each application's
template without virtual tokens on the frozen model, no training, greedy generation up to
the first newline; the intent answer spans two lines, so it runs to tokens_to_generate).
"""

from ptlearn import config_lib
from ptlearn.configs import common

RECIPES = ("sentiment", "squad", "intent_slot", "multitask")
TASK_OF = {"sentiment": "sentiment", "squad": "squad", "intent_slot": "intent_and_slot"}


def get_config(arg=None):
    args = config_lib.parse_arg(arg, run="sentiment", seed=0, model="default")
    if args.run in RECIPES:
        return config_lib.load_config(args.run, f"seed={args.seed},model={args.model}")
    application = args.run.removeprefix("zero-shot-")
    if not args.run.startswith("zero-shot-") or application not in TASK_OF:
        raise config_lib.ConfigError(
            f"run={args.run!r}: use one of {', '.join(RECIPES)} or zero-shot-X, X one of "
            f"{', '.join(TASK_OF)}"
        )
    zero = config_lib.parse_arg(
        None,
        model=args.model,
        data=common.REFERENCE_TASKS[TASK_OF[application]]["data"],
        steps=0,
        virtual=0,
        seed=args.seed,
    )
    config = common.single_task_config(TASK_OF[application], "prompt-tuning", zero)
    recipe = config_lib.load_config(application, f"model={args.model}")
    config.model.max_seq_length = recipe.model.max_seq_length
    config.model.data.validation_metric_examples = 0
    config.inference.batch_size = recipe.inference.batch_size
    if application != "intent_slot":
        config.inference.stop_strings = ("\n",)
    return config


# The arms still to run, seed-major: one seed of every recipe first, so a partial table already
# compares them. Done (rows in earlier_arms.csv, which the report takes as --baselines; put an
# arm back here to rerun it): the zero-shot rows and the 3 seeds of sentiment, squad and
# intent_slot (squad's seed 0: squad_recipe's chosen arm, the same config, its workdir reused).
TO_RUN = tuple((seed, ("multitask",)) for seed in (0, 1, 2))


def get_hyper(h):
    return h.chainit(
        [h.product([h.sweep("run", list(runs)), h.fixed("seed", seed)]) for seed, runs in TO_RUN]
    )
