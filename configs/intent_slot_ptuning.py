"""P-tuning (LSTM encoder) for intent and slot filling on the NLU Evaluation (Assistant) data.

  python -m ptlearn.data.prepare assistant --raw_dir=../shared/data --out_dir=data/assistant
  python -m ptlearn.train --config=configs/intent_slot_ptuning.py --workdir=runs/intent_slot

Arguments: encoder, data, model, steps, virtual (virtual tokens), seed (prompt init and data
order).
"""

from ptlearn import config_lib
from ptlearn.configs import common


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg,
        encoder="lstm",
        data="data/assistant",
        model="default",
        steps=800,
        virtual=10,
        seed=1234,
    )
    c = common.single_task_config("intent_and_slot", "p-tuning", args)
    c.model.max_seq_length = 128
    c.model.p_tuning.encoder_type = args.encoder
    c.model.p_tuning.encoder_hidden = 512
    c.model.optim.lr = 1e-3
    c.model.optim.sched.warmup_steps = 30
    c.trainer.val_check_interval = 200
    c.inference.batch_size = 64
    return c
