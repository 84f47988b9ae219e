"""Finding the SQuAD recipe (configs/squad.py): deep prompts' learning rate, virtual tokens and
step budget against validation F1, one seed per setting; the chosen setting then runs with 3
seeds for the test table.

  python -m ptlearn.data.prepare squad --raw_dir=../shared/data --out_dir=data/squad
  python -m ptlearn.sweep --config=experiments/squad_recipe/config.py --workdir=runs/squad_recipe
  python -m ptlearn.report runs/squad_recipe --out=experiments/squad_recipe \
      --baselines=experiments/squad_recipe/earlier_arms.csv

Each arm: configs/squad.py with the arm's arguments, validation every 200 steps (loss on 25
batches, decoded answers on the first 100 validation questions), the checkpoint picked by
val_loss. Only the validation columns choose; the test split is scored for the record.
Arguments: those of configs/squad.py.
"""

from ptlearn import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg,
        lr=3e-3,
        virtual=10,
        steps=600,
        batch=8,
        projection=False,
        seed=0,
        model="default",
        data="data/squad",
    )
    return config_lib.load_config(
        "squad", ",".join(f"{key}={value}" for key, value in args.items())
    )


def get_hyper(h):
    # Learning rate first: 3e-3, 1e-2, 3e-2 and 1e-1 at 10 virtual tokens ran before (their
    # rows: earlier_arms.csv, which the report takes as --baselines; put the rates back here to
    # rerun them). 3e-2 is the best by validation F1 and loss (F1 75.2, loss 0.534; 1e-1: F1
    # 60.8, loss 0.604), and its val loss still fell at 600 steps, so twice the steps and 30
    # virtual tokens at 3e-2 come next (wider first: ~150 min on a 2-core AVX2 CPU fits one
    # session, the longer arm needs two and resumes from its checkpoint).
    wider_or_longer = h.zipit([h.sweep("steps", [600, 1200]), h.sweep("virtual", [30, 10])])
    return h.product([h.fixed("lr", 3e-2), wider_or_longer])
