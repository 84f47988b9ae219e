"""Prompt models to and from Hugging Face PEFT adapters.

  python -m ptlearn.export peft --prompt_model=P --task=T --out=D
  python -m ptlearn.export from-peft --adapter=D --template=T.json --model=M --out=P

PEFT prepends one group of virtual tokens to the whole input, so a task exports when its
template starts with its only virtual group (and no BOS comes first). A prompt-tuning or frozen
p-tuning table becomes a PEFT prompt-tuning adapter (`prompt_embeddings` [P, E]); a deep prompt
a PEFT prefix-tuning adapter (`prompt_embeddings` [P, L * 2 * K * D], the layout PEFT views as
[P, L * 2, K, D]), with each key rotated by its slot's position, as PEFT hands the model
already-rotated keys in its cache. `from-peft` undoes both for a template you give.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ptlearn.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHTS_KEY = "prompt_embeddings"


def _check_peft_shape(template: Any, add_bos: bool, where: str) -> None:
    """Refuses templates PEFT cannot express, saying why."""
    from ptlearn import templates as tpl

    groups = sum(isinstance(s, tpl.Virtual) for s in template.segments)
    if groups != 1:
        raise ConfigError(
            f"{where}: task {template.taskname!r}: PEFT prepends one group of virtual tokens to "
            f"the whole input, but this template has {groups}"
        )
    if not isinstance(template.segments[0], tpl.Virtual):
        raise ConfigError(
            f"{where}: task {template.taskname!r}: PEFT puts the virtual tokens before all text, "
            "but this template has text before them"
        )
    if add_bos:
        raise ConfigError(
            f"{where}: the prompt model puts BOS before the virtual tokens; PEFT puts them "
            "before BOS, so the two would read different inputs"
        )


def _rotations(config: Any, count: int, sign: int) -> Any:
    """keys [P, L, K, D] -> rotated by +-slot position with each layer's RoPE base."""
    import jax.numpy as jnp

    from ptlearn.layers import apply_rope

    positions = sign * jnp.arange(count, dtype=jnp.int32)[None]

    def rotate(keys: np.ndarray) -> np.ndarray:
        if config.position_embedding != "rope":
            return keys
        layers = [
            np.asarray(apply_rope(jnp.asarray(keys[:, i][None]), positions, float(base))[0])
            for i, base in enumerate(config.layer_rope_bases)
        ]
        return np.stack(layers, axis=1)

    return rotate


def to_peft(prompt_model: str | pathlib.Path, task: str, out: str | pathlib.Path) -> dict:
    """Writes `task` of the prompt model as a PEFT adapter folder; returns its config."""
    from safetensors.numpy import save_file

    from ptlearn import templates
    from ptlearn.checkpoints.prompt_model import load_prompt_model
    from ptlearn.gpt import GPTConfig

    artifact = load_prompt_model(prompt_model)
    if task not in artifact.tables:
        raise ConfigError(f"--task={task}: not in {prompt_model} (it holds {artifact.tasks})")
    template = templates.parse_task_templates(
        [t for t in artifact.templates if t["taskname"] == task]
    )[task]
    _check_peft_shape(template, bool(artifact.encoding.get("add_bos")), str(prompt_model))
    config = GPTConfig(**artifact.base_model["config"])
    table = np.asarray(artifact.tables[task], np.float32)
    common = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(table.shape[0]),
        "num_transformer_submodules": 1,
        "num_layers": config.num_layers,
        "inference_mode": True,
        "base_model_name_or_path": artifact.base_model.get("file"),
        "revision": None,
    }
    if table.ndim == 2:
        adapter = {
            **common,
            "peft_type": "PROMPT_TUNING",
            "token_dim": int(table.shape[1]),
            "num_attention_heads": config.num_heads,
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
        }
        weights = table
    else:
        keys = _rotations(config, table.shape[0], +1)(table[:, :, 0])
        table = np.stack([keys, table[:, :, 1]], axis=2)  # [P, L, 2, K, D]
        kv_width = config.num_kv_heads * config.head_dim
        adapter = {
            **common,
            "peft_type": "PREFIX_TUNING",
            "token_dim": kv_width,
            "num_attention_heads": config.num_kv_heads,
            "encoder_hidden_size": kv_width,
            "prefix_projection": False,
        }
        weights = table.reshape(table.shape[0], -1)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({WEIGHTS_KEY: np.ascontiguousarray(weights, np.float32)}, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter, indent=1) + "\n")
    return adapter


def from_peft(
    adapter: str | pathlib.Path,
    template: dict,
    model: str,
    out: str | pathlib.Path,
    *,
    add_eos: bool = True,
    max_seq_length: int = 512,
    labels: Sequence[str] = (),
) -> pathlib.Path:
    """A PEFT prompt-tuning / prefix-tuning adapter as a ptlearn prompt model at `out`, for
    `template` (its virtual group first, sized like the adapter) on base model `model`;
    `labels`: the task's closed label set, for rank classification."""
    from safetensors.numpy import load_file

    from ptlearn import templates
    from ptlearn.checkpoints import load_model
    from ptlearn.checkpoints.prompt_model import PromptModel, base_model_fields, save_prompt_model
    from ptlearn.deep_prompts import row_shape

    adapter = pathlib.Path(adapter)
    try:
        settings = json.loads((adapter / ADAPTER_CONFIG).read_text())
        weights = load_file(str(adapter / ADAPTER_WEIGHTS))[WEIGHTS_KEY]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{adapter}: not a PEFT prompt adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} with "
            f"{WEIGHTS_KEY!r}): {err}"
        ) from err
    parsed = templates.parse_task_templates([template])
    (task,) = parsed
    _check_peft_shape(parsed[task], False, str(adapter))
    loaded = load_model(model)
    config = loaded.config
    kind = settings.get("peft_type")
    count = int(settings.get("num_virtual_tokens", weights.shape[0]))
    if parsed[task].total_virtual_tokens != count:
        raise ConfigError(
            f"template {task!r}: total_virtual_tokens={parsed[task].total_virtual_tokens} but "
            f"the adapter has {count} virtual tokens"
        )
    if kind == "PROMPT_TUNING" and weights.shape == (count, config.hidden_size):
        table, style = np.asarray(weights, np.float32), "prompt-tuning"
    elif kind == "PREFIX_TUNING" and weights.shape == (count, int(np.prod(row_shape(config)))):
        table = np.asarray(weights, np.float32).reshape(count, *row_shape(config))
        keys = _rotations(config, count, -1)(table[:, :, 0])
        table, style = np.stack([keys, table[:, :, 1]], axis=2), "prefix-tuning"
    else:
        raise CheckpointError(
            f"{adapter}: peft_type {kind!r} with prompt_embeddings {list(weights.shape)} does "
            f"not fit {model!r} (hidden {config.hidden_size}, keys and values "
            f"{list(row_shape(config))} per layer); give the base model it was trained on"
        )
    return save_prompt_model(
        out,
        PromptModel(
            tables={task: table},
            templates=[parsed[task].to_dict()],
            **base_model_fields(model, loaded),
            encoding={"add_eos": add_eos, "add_bos": False, "max_seq_length": max_seq_length},
            label_sets={task: list(labels)} if labels else {},
            training={"virtual_prompt_style": style, "imported_from": str(adapter)},
        ),
    )


def main(argv: Sequence[str]) -> None:
    """`peft` (a prompt model's task -> a PEFT adapter) or `from-peft` (the other way)."""
    from absl import flags

    from ptlearn import cli

    f = flags.FLAGS
    if len(argv) != 2 or argv[1] not in ("peft", "from-peft"):
        cli.fail("give one command: peft (to a PEFT adapter) or from-peft (from one)")
    if argv[1] == "peft":
        if not (f.prompt_model and f.task and f.out):
            cli.fail("peft needs --prompt_model, --task and --out")
        cli.print_json(to_peft(f.prompt_model, f.task, f.out))
        return
    if not (f.adapter and f.template and f.out):
        cli.fail("from-peft needs --adapter, --template (a JSON file) and --out (--model: default)")
    try:
        template = json.loads(pathlib.Path(f.template).read_text())
    except (OSError, ValueError) as err:
        cli.fail(f"--template={f.template}: not a readable JSON template ({err})")
    labels = [x for x in (f.labels or "").split(",") if x]
    cli.print_json(
        {"prompt_model": str(from_peft(f.adapter, template, f.model, f.out, labels=labels))}
    )


if __name__ == "__main__":
    from absl import flags

    from ptlearn import cli

    flags.DEFINE_string("prompt_model", None, "peft: the prompt model folder")
    flags.DEFINE_string("task", None, "peft: the task to export")
    flags.DEFINE_string("adapter", None, "from-peft: the PEFT adapter folder")
    flags.DEFINE_string("template", None, "from-peft: the task template, a JSON file")
    flags.DEFINE_string("model", "default", "from-peft: the base model it was trained on")
    flags.DEFINE_string("labels", None, "from-peft: the task's labels, a,b,c (rank classification)")
    flags.DEFINE_string("out", None, "where the adapter (peft) or prompt model (from-peft) goes")
    cli.run(main)
