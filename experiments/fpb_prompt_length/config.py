"""Prompt length ablation on Financial PhraseBank, after Lester et al. 2021 (figure 3): prompt
tuning of the default model with 1 to 100 virtual tokens, 3 seeds each.

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.sweep --config=experiments/fpb_prompt_length/config.py \
      --workdir=runs/fpb_prompt_length
  python -m ptlearn.report runs/fpb_prompt_length --out=experiments/fpb_prompt_length

Each arm: the shipped `sentiment_prompt_tuning` recipe (text init, adamw lr 3e-3, cosine
schedule, batch 8) for a fixed 400 steps, bf16 matmuls on bf16 frozen weights with full
rematerialisation (the fastest CPU setting; bf16 kept FPB accuracy in
experiments/results/fpb_sentiment.md), val_loss every 100 steps picks the checkpoint, and the
test split is scored by greedy generation. Arguments as sentiment_prompt_tuning's.
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    config = config_lib.load_config("sentiment_prompt_tuning", arg)
    with config.unlocked():
        config.trainer.max_steps = 400
        config.trainer.val_check_interval = 100
        common.fast_cpu_training(config)
        config.model.data.validation_metric_examples = 0  # val_loss only; the test is generated
    return config


def get_hyper(h):
    return h.product([h.sweep("virtual", [1, 5, 10, 20, 50, 100]), h.sweep("seed", [0, 1, 2])])
