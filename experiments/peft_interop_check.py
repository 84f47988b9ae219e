"""PEFT loads ptlearn's exports, and ptlearn PEFT's adapters, with the same logits.

  PTLEARN_PEER_PYTHON=PEER_VENV/bin/python python experiments/peft_interop_check.py WORKDIR [MODEL]

Both ways, on MODEL (`default`, the published check; `tiny` in the test suite): FPB prompt tuning and deep prompts trained by ptlearn (20 bf16
steps each in WORKDIR) exported as PEFT adapters (`ptlearn.export.to_peft`), and adapters PEFT
made itself (prompt tuning and prefix tuning, 6 virtual tokens) imported into ptlearn
(`ptlearn.export.from_peft`). In the peer venv (../shared/peer/README.md; a GGUF converted to a
transformers folder, an HF folder read as it is) PEFT computes float32 logits at the text positions of four test
sentences, and ptlearn the same. Prints one JSON line: {"export|import KIND":
{"max_abs_logit_diff": x, "positions": n}}.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

PEER = r"""
import json, sys, pathlib, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
model_path, folder, request = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
if (model_path / "config.json").is_file():  # already a transformers folder
    folder = model_path
elif not (folder / "config.json").is_file():
    gguf_path = model_path
    model = AutoModelForCausalLM.from_pretrained(str(pathlib.Path(gguf_path).parent),
        gguf_file=pathlib.Path(gguf_path).name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
torch.manual_seed(0)
for kind, path in request.get("make", {}).items():  # adapters PEFT makes itself (import side)
    make = {"PROMPT_TUNING": PromptTuningConfig, "PREFIX_TUNING": PrefixTuningConfig}[kind]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           make(task_type="CAUSAL_LM", num_virtual_tokens=6))
    with torch.no_grad():  # PEFT's N(0, 1) init scaled: embeddings' std, keys' and values'
        for parameter in model.prompt_encoder.parameters():
            parameter.mul_(0.02 if kind == "PROMPT_TUNING" else 0.05)
    model.save_pretrained(path)
out = {}
for name, item in request.get("compare", {}).items():
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, item["adapter"]).eval()
    rows = []
    with torch.no_grad():
        for ids in item["ids"]:
            rows.append(model(input_ids=torch.tensor([ids])).logits[0][-len(ids):].numpy().tolist())
    out[name] = rows
print(json.dumps(out))
"""


def _peer(request: dict, work: pathlib.Path, model: str) -> dict:
    from ptlearn.checkpoints import resolve_model

    command = [os.environ["PTLEARN_PEER_PYTHON"], "-c", PEER, str(resolve_model(model))]
    proc = subprocess.run(
        [*command, str(work / "hf_model"), json.dumps(request)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        sys.exit(f"the peer venv failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _our_logits(prompt_model: pathlib.Path, ids: list[list[int]]) -> list[np.ndarray]:
    """ptlearn's float32 logits at the text positions, the task's virtual tokens first."""
    import jax
    import jax.numpy as jnp

    import ptlearn
    from ptlearn import prompted
    from ptlearn.encoding import VIRTUAL_FILL_ID
    from ptlearn.gpt import GPT

    lm = ptlearn.load(str(prompt_model))
    model, count = GPT(lm.config), lm.tables.shape[1]
    apply = jax.jit(lambda params, inputs: model.apply({"params": params}, **inputs)[0])
    rows = []
    for text in ids:
        full = np.asarray([[VIRTUAL_FILL_ID] * count + text], np.int32)
        index = np.asarray([list(range(count)) + [-1] * len(text)], np.int32)
        inputs = prompted.prompted_inputs(
            model, lm.lm_params, jnp.asarray(lm.tables), full, np.zeros(1, np.int32), index
        )
        rows.append(np.asarray(apply(lm.lm_params, inputs)[0, count:]))
    return rows


def main() -> None:
    import ptlearn
    from ptlearn import export
    from ptlearn.checkpoints.prompt_model import load_prompt_model
    from ptlearn.data.jsonl import read_jsonl
    from ptlearn.data.prepare import prepare

    work = pathlib.Path(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "default"
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    prepare("financial_phrasebank", shared, work / "fpb")
    sentences = [r["sentence"] for r in read_jsonl(work / "fpb" / "test.jsonl")[:4]]
    configs = {
        "PROMPT_TUNING": "sentiment_prompt_tuning",
        "PREFIX_TUNING": "sentiment_prefix_tuning",
    }
    _peer({"make": {k: str(work / f"native_{k}") for k in configs}}, work, model)
    compare, ours = {}, {}
    for kind, name in configs.items():
        config = ptlearn.load_config(
            name,
            f"data={work / 'fpb'},steps={steps},model={model}",
            **{
                "trainer.val_check_interval": steps,
                "model.optim.sched.warmup_steps": min(5, steps // 2),
                "model.data.validation_metric_examples": 0,
                "model.data.test_ds": (),
            },
        )
        run = ptlearn.train(config, work / kind)
        export.to_peft(run.prompt_model, "sentiment", work / f"{kind}_adapter")
        lm = ptlearn.load(run.prompt_model)
        ids = [lm.tokenizer.encode(f" {s} sentiment:") for s in sentences]
        compare[f"export {kind}"] = {"adapter": str(work / f"{kind}_adapter"), "ids": ids}
        ours[f"export {kind}"] = _our_logits(pathlib.Path(run.prompt_model), ids)
        # PEFT's own adapter imported with the run's template, sized to its 6 tokens.
        template = {
            **load_prompt_model(run.prompt_model).templates[0],
            "total_virtual_tokens": 6,
            "virtual_token_splits": [6],
        }
        imported = export.from_peft(
            work / f"native_{kind}", template, model, work / f"imported_{kind}"
        )
        compare[f"import {kind}"] = {"adapter": str(work / f"native_{kind}"), "ids": ids}
        ours[f"import {kind}"] = _our_logits(imported, ids)
    theirs = _peer({"compare": compare}, work, model)
    result = {}
    for name, rows in ours.items():
        diffs = [np.abs(np.asarray(t) - o).max() for t, o in zip(theirs[name], rows, strict=True)]
        result[name] = {
            "max_abs_logit_diff": float(max(diffs)),
            "positions": sum(len(o) for o in rows),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
