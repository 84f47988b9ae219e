"""The intent and slot recipe for the NLU Evaluation (Assistant) data: deep prompts (keys and
values at every layer) started from the frozen model's keys and values of a task description;
30 virtual tokens, lr 3e-2 and 2000 steps of batch 16, the best by validation of
experiments/intent_slot_recipe (validation loss 0.0937, intent 89%, slot F1 70.0; 10 tokens for
4000 steps: 0.0944, 89%, 66.7). Three seeds (experiments/recipes): test intent 88.1 +- 1.0%,
slot F1 71.6 +- 0.3; one seed's run takes 36 min on 2 AMX CPU cores, 84 min on 2 Zen 4 ones.

  python -m ptlearn.data.prepare assistant --raw_dir=../shared/data --out_dir=data/assistant
  python -m ptlearn.train --config=intent_slot --workdir=runs/intent_slot \
      --config.model.data.train_ds=data/assistant/train.jsonl \
      --config.model.data.validation_ds=data/assistant/val.jsonl

Arguments: data (the jsonl folder), model, steps, virtual (virtual tokens), lr, batch,
projection (P-tuning v2's MLP reparameterisation instead of direct tables), seed.
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg,
        data="data/assistant",
        model="default",
        steps=2000,
        virtual=30,
        lr=3e-2,
        batch=16,
        projection=False,
        seed=1234,
    )
    c = common.deep_prompt_config(
        "intent_and_slot",
        args,
        "Name the intent of this request to a voice assistant and list its slots.",
    )
    c.model.max_seq_length = 128
    c.model.data.validation_metric_examples = 100
    c.trainer.val_check_interval = 200
    c.inference.batch_size = 64
    return c
