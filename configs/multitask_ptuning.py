"""All three seed applications trained at once with one shared p-tuning encoder (the method
of experiments/multitask_vs_single; configs/multitask.py is the recipe).

Each task keeps its own virtual-token inputs, so the shared MLP encoder gives each its own
prompt; batches mix tasks freely.

  python -m ptlearn.train --config=configs/multitask_ptuning.py --workdir=runs/multitask_ptuning

Arguments: encoder, model, steps, virtual (virtual tokens per task), seed (prompt init and
data order).
"""

from ptlearn import config_lib
from ptlearn.configs import common

TASKS = ("sentiment", "squad", "intent_and_slot")


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, encoder="mlp", model="default", steps=700, virtual=10, seed=1234
    )
    c = config_lib.base_config()
    common.set_seed(c, args.seed)
    entries = [common.reference_task(task, args.virtual) for task in TASKS]
    c.model.language_model_path = args.model
    c.model.virtual_prompt_style = "p-tuning"
    c.model.new_tasks = TASKS
    c.model.task_templates = tuple(template for template, _ in entries)
    c.model.data.train_ds = tuple(files["train"] for _, files in entries)
    c.model.data.validation_ds = tuple(files["validation"] for _, files in entries)
    c.model.data.test_ds = tuple(files["test"] for _, files in entries)
    c.model.data.validation_metric_examples = 0  # metrics by predict on the test files
    c.model.max_seq_length = 384
    c.model.p_tuning.encoder_type = args.encoder
    c.model.p_tuning.encoder_hidden = 1024
    c.model.optim.lr = 1e-3
    c.model.optim.sched.warmup_steps = 30
    c.trainer.max_steps = args.steps
    c.trainer.val_check_interval = 175
    c.trainer.limit_val_batches = 40
    c.inference.tokens_to_generate = 48  # the longest intent label is 44 tokens
    c.inference.batch_size = 32
    common.fastest_numerics(c)
    return c
