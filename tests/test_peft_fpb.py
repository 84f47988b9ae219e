"""experiments/peft_fpb/run.py: PEFT beside ptlearn on the same FPB split."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "peft_fpb" / "run.py"
PEER_PYTHON = pathlib.Path(os.environ.get("PTLEARN_PEER_PYTHON", "/tmp/peer-venv/bin/python"))
PEER_MODEL = ROOT / "runs" / "peer" / "smollm2-hf"
FPB = ROOT / "data" / "fpb"  # python -m ptlearn.data.prepare financial_phrasebank


def _line(method, seed, greedy, rank):
    test_at = [
        {
            "mark_s": 240.0,
            "step": 200,
            "best_step": 200,
            "n": 191,
            "acc_rank": rank,
            "acc_greedy": greedy,
        }
    ]
    return {
        "method": method,
        "seed": seed,
        "lr": 3e-3,
        "autocast": True,
        "machine": "AMD EPYC, 2 CPUs, avx512_bf16",
        "train": {"test_at": test_at},
    }


def test_the_table_has_peft_seeds_beside_ptlearn_rows(tmp_path):
    lines = [_line("prompt", 0, 0.90, 0.91), _line("prompt", 1, 0.92, 0.93)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", f"--out={tmp_path / 'results.jsonl'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "results.md").read_text()
    peft = "| PEFT prompt, lr 0.003 (bf16 autocast) | AMD EPYC, 2 CPUs, avx512_bf16 | 4.0 min |"
    assert f"{peft} 91.0 ± 1.4% | 92.0 ± 1.4% | 2 |" in table
    assert "| ptlearn deep prompts (prefix tuning), text init (bf16) |" in table
    recipe = [line for line in table.splitlines() if line.startswith("| ptlearn the FPB recipe (")]
    assert "97.7 ± 1.1%" in recipe[0] and "min (whole run)" in recipe[0]


@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason=f"no PEFT venv at {PEER_PYTHON}")
@pytest.mark.skipif(
    not PEER_MODEL.is_dir(), reason="no converted peer model (bench_vs_peft.py --convert)"
)
@pytest.mark.skipif(not (FPB / "train.jsonl").is_file(), reason=f"no prepared FPB split in {FPB}")
def test_a_short_peft_run_scores_the_test_split_at_its_marks(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [
            str(PEER_PYTHON),
            str(SCRIPT),
            "--method=prompt",
            "--budget_s=8",
            "--marks_s=4",
            "--val_every=5",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["mark_s"] for m in record["train"]["test_at"]] == [4.0, 8.0]
    assert record["data"] == {"train": 1518, "val": 191, "test": 191}
    assert all(0 <= m["acc_rank"] <= 1 for m in record["train"]["test_at"])
