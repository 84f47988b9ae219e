"""Prompt tuning (one [10, 576] table, text init) for Financial PhraseBank sentiment.

  python -m ptlearn.train --config=configs/sentiment_prompt_tuning.py --workdir=runs/sentiment_pt

Arguments: init (text, random, vocab, labels), data, model, steps, virtual (virtual tokens),
seed (prompt init and data order).
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, init="text", data="data/fpb", model="default", steps=600, virtual=10, seed=1234
    )
    c = common.single_task_config("sentiment", "prompt-tuning", args)
    c.model.max_seq_length = 256
    c.model.prompt_tuning.new_prompt_init_methods = (args.init,)
    c.model.prompt_tuning.new_prompt_init_text = (
        "Classify the sentiment of this financial news sentence as positive, negative or neutral.",
    )
    c.model.optim.lr = 3e-3
    c.model.optim.sched.warmup_steps = 30
    c.trainer.val_check_interval = 100
    c.inference.batch_size = 64
    return c


def get_hyper(h):
    """The four prompt initialisations x 3 seeds (narrow it: --sweep.init=text --sweep.seed=0)."""
    return h.product(
        [h.sweep("init", ["text", "random", "vocab", "labels"]), h.sweep("seed", [0, 1, 2])]
    )
