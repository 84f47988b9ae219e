"""P-tuning the default model for Financial PhraseBank sentiment (positive / negative / neutral).

  python -m ptlearn.data.prepare financial_phrasebank --raw_dir=../shared/data --out_dir=data/fpb
  python -m ptlearn.train --config=configs/sentiment_ptuning.py --workdir=runs/sentiment

`:encoder=lstm` (or mlp, biglstm, tpmlp) picks the prompt encoder; `:data=DIR` the jsonl folder.
"""

from ptlearn import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, encoder="mlp", data="data/fpb", model="default", steps=600)
    c = config_lib.base_config()
    c.model.language_model_path = args.model
    c.model.virtual_prompt_style = "p-tuning"
    c.model.new_tasks = ("sentiment",)
    c.model.task_templates = (
        config_lib.task_template(
            "sentiment",
            "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            total_virtual_tokens=10,
            virtual_token_splits=(10,),
            answer_field="label",
            answer_only_loss=True,
        ),
    )
    c.model.max_seq_length = 256
    c.model.global_batch_size = 8
    c.model.micro_batch_size = 8
    c.model.p_tuning.encoder_type = args.encoder
    c.model.p_tuning.encoder_hidden = 1024
    c.model.p_tuning.num_layers = 2
    c.model.data.train_ds = (f"{args.data}/train.jsonl",)
    c.model.data.validation_ds = (f"{args.data}/val.jsonl",)
    c.model.data.test_ds = (f"{args.data}/test.jsonl",)
    c.model.optim.lr = 1e-3
    c.model.optim.sched.warmup_steps = 30
    c.model.optim.sched.min_lr = 1e-5
    c.trainer.max_steps = args.steps
    c.trainer.val_check_interval = 100
    c.trainer.log_every_n_steps = 10
    c.trainer.max_time_minutes = 28.0
    c.inference.tokens_to_generate = 4
    return c
