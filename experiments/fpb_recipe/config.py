"""Finding the FPB recipe (configs/sentiment.py): deep prompts' settings against validation
accuracy, one seed per setting; the chosen setting is then run with 3 seeds for the test table.

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.sweep --config=experiments/fpb_recipe/config.py --workdir=runs/fpb_recipe
  python -m ptlearn.report runs/fpb_recipe --out=experiments/fpb_recipe

Each arm: the shipped `sentiment_prefix_tuning` config on the fastest numerics of this machine,
`steps` steps (cosine schedule, 30 warm-up steps), validation every 100 steps on the whole
validation split by rank classification (one scoring pass), the checkpoint picked by val_loss.
The grid: P-tuning v2's projection or direct tables x learning rate x virtual tokens. Only the
validation columns choose; the test split is scored for the record, never to choose.
Arguments: those of sentiment_prefix_tuning, and lr and batch.
"""

from ptlearn import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg,
        projection=False,
        lr=3e-3,
        batch=8,
        virtual=10,
        steps=600,
        seed=0,
        model="default",
        data="data/fpb",
    )
    config = config_lib.load_config(
        "sentiment_prefix_tuning",
        f"projection={args.projection},virtual={args.virtual},steps={args.steps},"
        f"seed={args.seed},model={args.model},data={args.data}",
    )
    with config.unlocked():
        config.model.optim.lr = args.lr
        config.model.global_batch_size = config.model.micro_batch_size = args.batch
        config.trainer.val_check_interval = 100
        config.model.data.validation_answers = "rank"
        config.model.data.validation_metric_examples = 1000  # all of FPB's 191
    return config


def get_hyper(h):
    return h.product(
        [
            h.sweep("projection", [False, True]),
            h.sweep("lr", [1e-3, 3e-3, 1e-2]),
            h.sweep("virtual", [10, 20]),
        ]
    )
