"""Prompt tuning for extractive QA on SQuAD v1.1 (contexts truncated first when too long).

  python -m ptlearn.data.prepare squad --raw_dir=../shared/data --out_dir=data/squad
  python -m ptlearn.train --config=configs/squad_prompt_tuning.py --workdir=runs/squad

Arguments: data, model, steps, virtual (virtual tokens), seed (prompt init and data order).
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, data="data/squad", model="default", steps=400, virtual=20, seed=1234
    )
    c = common.single_task_config("squad", "prompt-tuning", args)
    c.model.max_seq_length = 384
    c.model.prompt_tuning.new_prompt_init_methods = ("text",)
    c.model.prompt_tuning.new_prompt_init_text = (
        "Answer the question with a short span copied from the context.",
    )
    c.model.optim.lr = 3e-3
    c.model.optim.sched.warmup_steps = 20
    c.model.data.validation_metric_examples = 100
    c.trainer.val_check_interval = 100
    c.trainer.limit_val_batches = 25
    c.inference.batch_size = 16
    return c
