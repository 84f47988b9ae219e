"""Hugging Face PEFT on ptlearn's FPB split, for the table beside ptlearn's (issue 13).

Our copy of ../shared/peer/ptune_fpb.py, changed where a fair comparison needs it: the same
train / validation / test jsonl files as ptlearn (data/fpb), PEFT's fastest CPU numerics
(`--autocast=bfloat16`: float32 weights under torch.autocast, see ../shared/peer/README.md),
prefix tuning beside prompt tuning and p-tuning, a seed, and the test split scored with the
best-validation prompt so far at given wall-clock marks (`--marks_s`, the scoring time not
counted), so one run gives PEFT's accuracy at ptlearn's wall time and at its own budget.
Everything else is the peer's: template `{sentence} sentiment:`, answer ` {label}` + EOS,
answer-only loss, 10 virtual tokens, batch 8, AdamW, validation accuracy (rank
classification) every 100 steps picks the prompt, 2 torch threads.

Run with the peer venv's python (PTLEARN_PEER_PYTHON), from the checkout:

  $PTLEARN_PEER_PYTHON experiments/peft_fpb/run.py --method=prompt --seed=0 \
      --budget_s=480 --marks_s=240,420 --out=experiments/peft_fpb/results.jsonl
  python experiments/peft_fpb/run.py --table   # results.md beside results.jsonl (no torch)

The model is the dense float32 HF folder that `python experiments/bench_vs_peft.py --convert`
writes (runs/peer/smollm2-hf).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import pathlib
import random
import statistics
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
LABELS = ["positive", "negative", "neutral"]
LR = {"prompt": 3e-3, "ptune": 1e-3, "prefix": 3e-3}  # the peer's, and prefix as prompt
INIT_TEXT = "Classify the sentiment of this financial news as positive, negative or neutral:"
VIRTUAL = 10
# fpb_methods rows shown beside PEFT's: the baselines (no training), and the methods PEFT has.
BASELINE_ROWS = {
    "majority": "majority (the training split's most common label)",
    "zero-shot": "frozen model zero-shot, greedy",
    "zero-shot-rank": "frozen model zero-shot, by rank",
}
PTLEARN_ROWS = {
    "prompt-text": "prompt tuning, text init",
    "ptune-mlp": "p-tuning, MLP",
    "prefix-text": "deep prompts (prefix tuning), text init",
}


def machine_description() -> str:
    """ptlearn.machine's line for this CPU (loaded by path: the peer venv lacks ptlearn's
    dependencies, and the module needs none)."""
    spec = importlib.util.spec_from_file_location("machine", REPO / "ptlearn" / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cpu_description()


def read_split(path: pathlib.Path) -> list[tuple[str, str]]:
    """(sentence, label) rows of a ptlearn FPB jsonl file."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                rows.append((record["sentence"], record["label"]))
    return rows


class Peer:
    """The frozen model with one PEFT prompt method, trained and scored as the peer does."""

    def __init__(self, method: str, model_dir: str, autocast: bool):
        import torch
        from peft import (
            PrefixTuningConfig,
            PromptEncoderConfig,
            PromptEncoderReparameterizationType,
            PromptTuningConfig,
            PromptTuningInit,
            TaskType,
            get_peft_model,
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.autocast = autocast
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        for p in base.parameters():
            p.requires_grad_(False)
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos
        label_ids = [self.tok(" " + label).input_ids for label in LABELS]
        assert all(len(ids) == 1 for ids in label_ids), label_ids
        self.label_ids = [ids[0] for ids in label_ids]
        if method == "prompt":
            config = PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=VIRTUAL,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=INIT_TEXT,
                tokenizer_name_or_path=model_dir,
            )
        elif method == "ptune":
            config = PromptEncoderConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=VIRTUAL,
                encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
            )
        else:
            config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL)
        self.model = get_peft_model(base, config)

    def _context(self):
        torch = self.torch
        if self.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _prompt(self, sentence: str) -> list[int]:
        return self.tok(f"{sentence} sentiment:").input_ids

    def _batch(self, seqs: list[list[int]]):
        torch = self.torch
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask

    def _last_logits(self, seqs: list[list[int]]):
        """Logits at each sequence's last real token ([B, V]) through PEFT's own forward
        (virtual tokens in front, or the prefix in the cache)."""
        torch = self.torch
        ids, mask = self._batch(seqs)
        with torch.no_grad(), self._context():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        offset = logits.shape[1] - ids.shape[1]  # prompt tuning returns the virtual positions
        last = torch.tensor([len(s) - 1 + offset for s in seqs])
        return logits[torch.arange(len(seqs)), last].float()

    def evaluate(self, rows: list[tuple[str, str]], greedy: bool, batch: int = 32) -> dict:
        """Accuracy by rank classification of the three labels, and by 3 greedy tokens."""
        self.model.eval()
        rows = sorted(rows, key=lambda r: len(self._prompt(r[0])))
        right_rank = right_greedy = 0
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            seqs = [self._prompt(s) for s, _ in chunk]
            logits = self._last_logits(seqs)
            ranked = logits[:, self.label_ids].argmax(-1).tolist()
            right_rank += sum(
                LABELS[k] == label for k, (_, label) in zip(ranked, chunk, strict=True)
            )
            if greedy:
                new = [[] for _ in chunk]
                for step in range(3):
                    if step:
                        logits = self._last_logits(seqs)
                    for j, token in enumerate(logits.argmax(-1).tolist()):
                        seqs[j] = seqs[j] + [token]
                        new[j].append(token)
                for tokens, (_, label) in zip(new, chunk, strict=True):
                    words = self.tok.decode(tokens, skip_special_tokens=True).strip().split()
                    first = words[0].strip(".,:;!?\"'").lower() if words else ""
                    right_greedy += first == label
        self.model.train()
        result = {"n": len(rows), "acc_rank": right_rank / len(rows)}
        if greedy:
            result["acc_greedy"] = right_greedy / len(rows)
        return result

    def train(self, train, val, test, args) -> dict:
        """Trains for --budget_s seconds of wall clock (validation included, test scoring at
        the marks excluded); returns the curve, the best step and the test at each mark."""
        torch = self.torch
        torch.manual_seed(args.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr or LR[args.method])
        encoded = []
        for sentence, label in train:
            prompt = self._prompt(sentence)
            answer = self.tok(" " + label).input_ids + [self.eos]
            encoded.append((prompt + answer, [-100] * len(prompt) + answer))
        order_rng = random.Random(args.seed)
        marks = sorted(args.marks_s) + [args.budget_s]
        excluded = 0.0  # seconds spent scoring the test split at the marks
        started = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - started - excluded

        def snapshot() -> dict:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in keys}

        keys = {k for k in self.model.state_dict() if "prompt_encoder" in k}  # what trains
        best = (self.evaluate(val, greedy=False)["acc_rank"], 0, snapshot())
        curve, at_marks, step, done = [], [], 0, False
        while not done:
            indices = list(range(len(encoded)))
            order_rng.shuffle(indices)
            for start in range(0, len(indices), args.batch):
                rows = [encoded[i] for i in indices[start : start + args.batch]]
                ids, mask = self._batch([x for x, _ in rows])
                labels = torch.full(ids.shape, -100, dtype=torch.long)
                for k, (_, y) in enumerate(rows):
                    labels[k, : len(y)] = torch.tensor(y)
                optimizer.zero_grad(set_to_none=True)
                with self._context():
                    loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                step += 1
                now = elapsed()
                if step % args.val_every == 0:
                    accuracy = self.evaluate(val, greedy=False)["acc_rank"]
                    curve.append({"step": step, "val_acc": accuracy, "elapsed_s": round(now, 1)})
                    print(json.dumps(curve[-1]), flush=True)
                    if accuracy > best[0]:
                        best = (accuracy, step, snapshot())
                while marks and elapsed() >= marks[0]:
                    mark = marks.pop(0)
                    scoring = time.perf_counter()
                    current = snapshot()
                    self.model.load_state_dict(best[2], strict=False)
                    test_result = self.evaluate(test, greedy=True)
                    self.model.load_state_dict(current, strict=False)
                    at_marks.append(
                        {"mark_s": mark, "step": step, "best_step": best[1], **test_result}
                    )
                    print(json.dumps(at_marks[-1]), flush=True)
                    excluded += time.perf_counter() - scoring
                if not marks:
                    done = True
                    break
        return {
            "steps": step,
            "trainable_parameters": sum(p.numel() for p in params),
            "best_val_acc": best[0],
            "best_step": best[1],
            "val_curve": curve,
            "test_at": at_marks,
        }


def _csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def write_table(results: pathlib.Path, out: pathlib.Path) -> None:
    """results.md: PEFT's runs (mean +- std over seeds at each mark) beside ptlearn's: the FPB
    recipe (experiments/recipes, 3 seeds), its shorter step budgets (experiments/fpb_recipe, one
    seed), the methods PEFT also has and the baselines (experiments/fpb_methods)."""
    if not results.is_file():
        raise SystemExit(f"{results}: no PEFT runs recorded yet; run --method=... first")
    runs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list] = {}
    for run in runs:
        for point in run["train"]["test_at"]:
            machine = run.get("machine", "not recorded")
            key = (run["method"], run["lr"], run["autocast"], machine, point["mark_s"])
            groups.setdefault(key, []).append(point)

    def spread(values: list[float]) -> str:
        mean = 100 * statistics.mean(values)
        if len(values) < 2:
            return f"{mean:.1f}%"
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"

    lines = [
        "# ptlearn and Hugging Face PEFT on the same FPB split and machine",
        "",
        "Commands: `experiments/peft_fpb/run.py` (docstring); ptlearn's rows are the FPB recipe",
        "(configs/sentiment.py: `experiments/recipes`, and its step budgets at one seed:",
        "`experiments/fpb_recipe`) and `experiments/fpb_methods` (400 steps at lr 3e-3, 3 seeds).",
        "Wall times compare only on one machine; rows whose machine is not recorded ran before",
        "run records named it, on the AMD EPYC with AVX512-BF16 of the PEFT runs (session notes).",
        "",
        "| system, method | machine | wall time (training) | test accuracy, greedy | by rank "
        "| seeds |",
        "|---|---|---|---|---|---|",
    ]
    for (method, lr, autocast, machine, mark), points in sorted(groups.items()):
        precision = "bf16 autocast" if autocast else "float32"
        lines.append(
            f"| PEFT {method}, lr {lr:g} ({precision}) | {machine} | {mark / 60:.1f} min "
            f"| {spread([p['acc_greedy'] for p in points])} "
            f"| {spread([p['acc_rank'] for p in points])} | {len(points)} |"
        )
    experiments = REPO / "experiments"
    ptlearn = [
        ("the FPB recipe", row)
        for row in _csv_rows(experiments / "recipes" / "results.csv")
        if row["run"] == "sentiment"
    ]
    ptlearn += [
        (f"the FPB recipe, {int(float(row['steps']))} steps", row)
        for row in _csv_rows(experiments / "fpb_recipe" / "results.csv")
        if float(row["lr"]) == 0.03
        and int(float(row["steps"])) < 400
        and all(not row.get(k) for k in ("batch", "sched", "wording"))
    ]
    methods = _csv_rows(experiments / "fpb_methods" / "results.csv")
    ptlearn += [
        (PTLEARN_ROWS[row["method"]], row) for row in methods if row["method"] in PTLEARN_ROWS
    ]
    for row in methods:
        if row["method"] in BASELINE_ROWS:
            accuracy = 100 * float(row["test/test_sentiment/accuracy_mean"])
            lines.append(
                f"| baseline: {BASELINE_ROWS[row['method']]} | - | - | {accuracy:.1f}% | - | 1 |"
            )
    for name, row in ptlearn:
        accuracy = 100 * float(row["test/test_sentiment/accuracy_mean"])
        std = row["test/test_sentiment/accuracy_std"]  # empty with one seed
        shown = f"{accuracy:.1f} ± {100 * float(std):.1f}%" if std else f"{accuracy:.1f}%"
        machine = row.get("machine") or "not recorded"
        # "auto" numerics: float32 on a CPU without bf16 hardware (ptlearn/numerics.py).
        precision = "float32" if machine.endswith(("avx2", "avx512f", "no avx2")) else "bf16"
        lines.append(
            f"| ptlearn {name} ({precision}) | {machine} "
            f"| {float(row['wall_time_min_mean']):.1f} min (whole run) "
            f"| {shown} | - | {row['seeds']} |"
        )
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=sorted(LR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget_s", type=float, default=480)
    # 420 s: the FPB recipe's whole run (7.0 min); 240 s: half of PEFT's budget.
    p.add_argument(
        "--marks_s", default="240,420", help="comma list of seconds to score the test at"
    )
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--val_every", type=int, default=100)
    p.add_argument("--autocast", default="bfloat16", choices=["bfloat16", "none"])
    p.add_argument("--data", default=str(REPO / "data" / "fpb"))
    p.add_argument("--model", default=str(REPO / "runs" / "peer" / "smollm2-hf"))
    p.add_argument("--out", default=str(HERE / "results.jsonl"))
    p.add_argument("--table", action="store_true", help="write results.md from --out")
    args = p.parse_args()
    if args.table:
        write_table(pathlib.Path(args.out), pathlib.Path(args.out).with_name("results.md"))
        return
    if not args.method:
        p.error("--method is required (or --table)")
    args.marks_s = [float(x) for x in args.marks_s.split(",") if x.strip()]
    import torch

    torch.set_num_threads(2)
    data = pathlib.Path(args.data)
    train, val, test = (read_split(data / f"{name}.jsonl") for name in ("train", "val", "test"))
    peer = Peer(args.method, args.model, args.autocast == "bfloat16")
    record = {
        "method": args.method,
        "seed": args.seed,
        "autocast": args.autocast == "bfloat16",
        "lr": args.lr or LR[args.method],
        "budget_s": args.budget_s,
        "data": {"train": len(train), "val": len(val), "test": len(test)},
        "torch": torch.__version__,
        "machine": machine_description(),
        "train": peer.train(train, val, test, args),
    }
    print(json.dumps(record), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
