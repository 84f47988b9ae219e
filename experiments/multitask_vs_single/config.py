"""Multi-task vs single-task p-tuning of the three seed applications (sentiment, SQuAD, intent
and slot): each task's test metric when its prompt trains alone and when one shared encoder
trains all three at once.

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.data.prepare squad --raw_dir=../shared/data --out_dir=data/squad
  python -m ptlearn.data.prepare assistant --raw_dir=../shared/data --out_dir=data/assistant
  python -m ptlearn.sweep --config=experiments/multitask_vs_single/config.py \
      --workdir=runs/multitask_vs_single
  python -m ptlearn.report runs/multitask_vs_single --out=experiments/multitask_vs_single

`tasks=all` is the shipped `multitask_ptuning` config (MLP encoder, 10 virtual tokens per task, batches
mixing the tasks); `tasks=sentiment|squad|intent_and_slot` is the same config restricted to one
task (same encoder, optimizer and step budget, so a single-task run sees its task three times
as often). 400 steps, bf16, full rematerialisation; every run scored on its tasks' test splits.
"""

from ptlearn import config_lib
from ptlearn.configs import common

TASKS = ("sentiment", "squad", "intent_and_slot")


def get_config(arg=None):
    args = config_lib.parse_arg(arg, tasks="all", seed=0, model="default")
    config = config_lib.load_config("multitask_ptuning", f"seed={args.seed},model={args.model}")
    with config.unlocked():
        if args.tasks != "all":
            if args.tasks not in TASKS:
                raise config_lib.ConfigError(f"tasks={args.tasks!r}: use all or one of {TASKS}")
            keep = TASKS.index(args.tasks)
            m = config.model
            m.new_tasks = (args.tasks,)
            m.task_templates = (m.task_templates[keep],)
            for key in ("train_ds", "validation_ds", "test_ds"):
                m.data[key] = (m.data[key][keep],)
        config.trainer.max_steps = 400
        config.trainer.val_check_interval = 100
        common.fast_cpu_training(config)
    return config


def get_hyper(h):
    # Seed-major: the first four arms already compare every task both ways.
    return h.chainit(
        [h.product([h.sweep("tasks", ["all", *TASKS]), h.fixed("seed", s)]) for s in (0, 1, 2)]
    )
