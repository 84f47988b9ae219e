"""The SQuAD v1.1 recipe (extractive QA, contexts truncated first when too long): deep prompts
(keys and values at every layer) started from the frozen model's keys and values of a task
description; lr 3e-2, 1200 steps of batch 8, the lowest validation loss of
experiments/squad_recipe (600 steps: F1 64.6 in 32 min). Test, 3 seeds (experiments/recipes):
F1 68.7 +- 0.7, EM 59.0 +- 1.2; 99-100 min with its test on 2 Zen 4 cores in bf16, 68 on Zen 5.

  python -m ptlearn.data.prepare squad --raw_dir=../shared/data --out_dir=data/squad
  python -m ptlearn.train --config=squad --workdir=runs/squad \
      --config.model.data.train_ds=data/squad/train.jsonl \
      --config.model.data.validation_ds=data/squad/val.jsonl

Arguments: data (the jsonl folder), model, steps, virtual (virtual tokens), lr, batch,
projection (P-tuning v2's MLP reparameterisation instead of direct tables), seed.
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg,
        data="data/squad",
        model="default",
        steps=1200,
        virtual=10,
        lr=3e-2,
        batch=8,
        projection=False,
        seed=1234,
    )
    c = common.deep_prompt_config(
        "squad", args, "Answer the question with a short span copied from the context."
    )
    c.model.max_seq_length = 384
    c.model.data.validation_metric_examples = 100
    c.trainer.val_check_interval = 200
    c.trainer.limit_val_batches = 25
    c.inference.batch_size = 16
    return c
