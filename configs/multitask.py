"""All three seed applications trained at once: the three single-task recipes (configs/
sentiment.py, squad.py, intent_slot.py) merged into one run, each task keeping its own deep
prompt (template, virtual tokens, init text) and seeing as many examples as its recipe does
alone, in batches that mix the tasks (model.data.train_task_weights), and taking steps as
long as its recipe's: its lr scaled by its rows per mixed batch over its recipe's batch
(model.optim.task_lr_scales: sentiment 1/7, SQuAD 3/7, intent 5/7). Without the scaling,
sentiment (7% of the rows) took 2800 full-size steps from about one example each and stayed
at the class prior: seed 0's ranked validation accuracy was 64% (always neutral) at every
validation from step 350 to 1750, while SQuAD and intent learned (experiments/recipes).

  python -m ptlearn.train --config=configs/multitask.py --workdir=runs/multitask

Arguments: model, seed, lr (3e-2, the rate all three recipes chose, before each task's
scale), batch (of the mixed batches), steps (0: the recipes' examples over `batch`), virtual
(0: each recipe's count), scale_lr (each task's lr times its rows per mixed batch over its
recipe's batch: common.merged_config).
"""

from ptlearn import config_lib
from ptlearn.configs import common

RECIPES = ("sentiment", "squad", "intent_slot")  # the configs of sentiment, squad, intent


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, model="default", seed=1234, lr=3e-2, batch=16, steps=0, virtual=0, scale_lr=True
    )
    per_task = f"model={args.model},seed={args.seed}" + (
        f",virtual={args.virtual}" if args.virtual else ""
    )
    return common.merged_config(
        [config_lib.load_config(name, per_task) for name in RECIPES],
        lr=args.lr,
        batch=args.batch,
        steps=args.steps,
        scale_lr=args.scale_lr,
    )
