"""A NeMo prompt-learning yaml, read as NeMo users write them (ptlearn/nemo_yaml.py maps it).

  python -m ptlearn.train --config=configs/nemo.py:yaml=megatron_gpt_prompt_learning.yaml \
      --config.model.language_model_path=default \
      --config.model.data.train_ds="('data/assistant/train.jsonl',)" \
      --config.model.data.validation_ds="('data/assistant/val.jsonl',)" --workdir=runs/nemo

The yaml's `???` values are given on the command line, as with NeMo; a run that leaves one
unset stops with a line naming it. The keys the yaml sets that ptlearn ignores are logged, each
with the reason.
"""

from ptlearn import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, yaml="")
    if not args.yaml:
        raise config_lib.ConfigError(
            "configs/nemo.py needs the yaml: --config=configs/nemo.py:yaml=PATH"
        )
    return config_lib.from_nemo_yaml(args.yaml)
