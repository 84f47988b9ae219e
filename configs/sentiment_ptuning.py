"""P-tuning the default model for Financial PhraseBank sentiment (positive / negative / neutral).

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.train --config=configs/sentiment_ptuning.py --workdir=runs/sentiment

Arguments (`--config=configs/sentiment_ptuning.py:encoder=lstm,steps=400`): encoder (mlp, lstm,
biglstm, tpmlp), data (the jsonl folder), model ('default', 'tiny' or a path), steps, virtual
(virtual tokens), seed (prompt init and data order).
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, encoder="mlp", data="data/fpb", model="default", steps=600, virtual=10, seed=1234
    )
    c = common.single_task_config("sentiment", "p-tuning", args)
    c.model.max_seq_length = 256
    c.model.p_tuning.encoder_type = args.encoder
    c.model.p_tuning.encoder_hidden = 1024
    c.model.optim.lr = 1e-3
    c.model.optim.sched.warmup_steps = 30
    c.trainer.val_check_interval = 100
    c.inference.batch_size = 64
    return c
