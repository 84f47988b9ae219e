"""Finding the SQuAD recipe (configs/squad.py): deep prompts' learning rate, virtual tokens and
step budget against validation loss and F1, one seed per setting; the chosen setting then runs
with 3 seeds for the test table (experiments/recipes).

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
    # Learning rate first: 3e-3, 1e-2, 3e-2 and 1e-1 at 10 virtual tokens, then at the best
    # rate (3e-2: val F1 75.2, loss 0.534) 30 virtual tokens (loss 0.526, F1 74.1) and 1200
    # steps at 10 (loss 0.502, F1 74.2). All rows are in earlier_arms.csv, which the report takes
    # as --baselines. The choice: the lowest best val_loss (what picks checkpoints, and what
    # intent_slot_recipe chose by), val F1 on 100 questions within 3 points counting as a tie:
    # 1200 steps at 10 virtual tokens, configs/squad.py. The grid is done: this last arm is in
    # earlier_arms.csv too, so rerunning it means dropping its row there.
    return h.product([h.fixed("lr", 3e-2), h.fixed("steps", 1200), h.fixed("virtual", 10)])
