"""Sweeps on the tiny model: arms and their workdirs, skip / resume / survive, the report."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from tiny_model import tiny_subprocess_env, write_tiny_data

from ptlearn import hyper, machine, report, sweep
from ptlearn.errors import ConfigError


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_tiny_data(folder)
    return folder


def _args(data, workdir, *extra, steps=4):
    return [
        sys.executable,
        "-m",
        "ptlearn.sweep",
        f"--config=configs/sentiment_prompt_tuning.py:model=tiny,data={data},virtual=4",
        f"--workdir={workdir}",
        f"--config.trainer.max_steps={steps}",
        "--config.trainer.val_check_interval=2",
        "--config.trainer.log_every_n_steps=1",
        "--config.model.optim.sched.warmup_steps=1",
        "--config.model.max_seq_length=64",
        "--config.model.data.validation_metric_examples=4",
        "--config.inference.tokens_to_generate=3",
        *extra,
    ]


def _sweep(*args):
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=900, env=tiny_subprocess_env(8)
    )


def test_axes_expand_narrow_and_add():
    arms = hyper.product([hyper.sweep("init", ["text", "random"]), hyper.sweep("seed", [0, 1, 2])])
    assert len(arms) == 6 and arms[0] == {"init": "text", "seed": 0}
    narrowed = hyper.with_axis(arms, "seed", [0])
    assert narrowed == [{"init": "text", "seed": 0}, {"init": "random", "seed": 0}]
    added = hyper.with_axis(narrowed, "model.optim.lr", [0.1, 0.01])
    assert len(added) == 4 and added[1] == {"init": "text", "seed": 0, "model.optim.lr": 0.01}
    assert hyper.zipit([hyper.sweep("a", [1, 2]), hyper.sweep("b", [3, 4])])[1] == {"a": 2, "b": 4}
    assert hyper.parse_values("1,5,1e-3,lstm,True") == [1, 5, 0.001, "lstm", True]
    with pytest.raises(ConfigError, match="different lengths"):
        hyper.zipit([hyper.sweep("a", [1]), hyper.sweep("b", [3, 4])])
    replaced, rest = sweep.split_sweep_flags(["prog", "--sweep.seed=0,1", "--workdir=w"])
    assert replaced == {"seed": [0, 1]} and rest == ["prog", "--workdir=w"]
    assert sweep.arm_name({"init": "text", "model.seed": 0}) == "init=text,seed=0"
    assert sweep.arm_name({"model.seed": 0, "model.data.seed": 1}) == "seed=0,data.seed=1"


def test_parallel_arms_need_their_own_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert sweep.device_groups(2) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "2,3"},
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="use --parallel=1"):
        sweep.device_groups(2)


def test_arms_sharing_a_gpu_split_its_memory(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    groups = sweep.device_groups(3, arms_per_gpu=2)
    assert [g["CUDA_VISIBLE_DEVICES"] for g in groups] == ["0", "0", "1"]
    assert {g["XLA_PYTHON_CLIENT_MEM_FRACTION"] for g in groups} == {"0.4500"}
    # One arm of a sweep that shares its GPU with others still takes only its share.
    assert sweep.device_groups(1, arms_per_gpu=4) == [
        {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2250"}
    ]
    with pytest.raises(ConfigError, match="room for 4 arms"):
        sweep.device_groups(5, arms_per_gpu=2)


def test_gpu_sweeps_script_shares_the_gpu_and_stops_at_its_deadline(toy_data, tmp_path):
    """experiments/gpu_sweeps.sh with a faked GPU: the sweep starts its first arm (the shares
    it gets: the test above), and at DEADLINE_S it is stopped and the script reports it. The
    script runs from a copy beside its own tiny sweep, so neither the real model nor the
    prepared data sets are needed (without them a real recipe's arm fails inside the deadline)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    experiments = tmp_path / "repo" / "experiments"
    (experiments / "tiny").mkdir(parents=True)
    shutil.copy(root / "experiments" / "gpu_sweeps.sh", experiments)
    # Many steps, so the first arm is still training when the deadline stops it.
    (experiments / "tiny" / "config.py").write_text(
        "from ptlearn import config_lib\n\n\n"
        "def get_config(arg=None):\n"
        "    return config_lib.load_config(\n"
        f"        'sentiment_prompt_tuning', 'model=tiny,data={toy_data},virtual=4,steps=100000'\n"
        "    )\n\n\n"
        "def get_hyper(h):\n"
        "    return h.sweep('seed', [0, 1])\n"
    )
    runs = tmp_path / "runs"
    env = {
        **tiny_subprocess_env(),
        "PYTHON": sys.executable,
        "RUNS": str(runs),
        "SWEEPS": "tiny:1",
        "DEADLINE_S": "10",  # the sweep plans both arms and starts one well inside it
        "CUDA_VISIBLE_DEVICES": "0",
    }
    proc = subprocess.run(
        ["bash", str(experiments / "gpu_sweeps.sh")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== tiny" in proc.stdout
    log = (runs / "tiny.log").read_text()
    assert (runs / "tiny" / sweep.SWEEP_FILE).is_file(), log[-2000:]
    state = json.loads((runs / "tiny" / sweep.SWEEP_FILE).read_text())
    assert [a["name"] for a in state["arms"]] == ["seed=0", "seed=1"]
    first, second = state["arms"]
    # Stopped mid-arm: a rerun resumes it.
    assert first["status"] == "running", log[-2000:]
    assert second["status"] == "pending"
    assert (runs / "tiny" / "seed=0" / sweep.ARM_LOG).is_file()


def test_two_by_two_sweep_skips_finished_arms_and_reports(toy_data, tmp_path):
    args = _args(toy_data, tmp_path, "--sweep.init=vocab,random", "--sweep.seed=0,1")
    first = _sweep(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    statuses = json.loads(first.stdout.strip().splitlines()[-1])
    assert statuses == {
        f"init={i},seed={s}": "finished" for i in ("vocab", "random") for s in (0, 1)
    }
    for name in statuses:
        arm = json.loads((tmp_path / name / "config.json").read_text())
        assert arm["model"]["seed"] == arm["model"]["data"]["seed"] == int(name[-1])
    for name in ("results.csv", "results.md", "arms.csv", "plot_init.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["init"]) == ["vocab", "random"] and list(results["seeds"]) == [2, 2]
    assert {"test/test_sentiment/accuracy_mean", "best/val_loss_std", "wall_time_min_mean"} <= set(
        results.columns
    )
    assert "| init" in (tmp_path / "results.md").read_text()
    stamps = {n: (tmp_path / n / "result.json").stat().st_mtime_ns for n in statuses}
    again = _sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to run" in again.stderr
    assert stamps == {n: (tmp_path / n / "result.json").stat().st_mtime_ns for n in statuses}
    # An earlier sweep's arms as baselines: its seeds join the same setting's, and a setting
    # only it has (batch) keeps its rows apart.
    earlier = pd.read_csv(tmp_path / "arms.csv").assign(
        arm=lambda t: "earlier-" + t["arm"],
        batch=lambda t: [4 if i == "vocab" else None for i in t["init"]],
    )
    earlier.to_csv(tmp_path / "earlier.csv", index=False)
    report.write_report(tmp_path, tmp_path / "with_earlier", tmp_path / "earlier.csv")
    merged = pd.read_csv(tmp_path / "with_earlier" / "results.csv")
    keys = zip(merged["init"], merged["batch"].fillna(0), merged["seeds"], strict=True)
    seeds = {(i, b): n for i, b, n in keys}
    assert seeds == {("vocab", 4): 2, ("vocab", 0): 2, ("random", 0): 4}
    # Each arm's machine is on the record; a setting's seeds from two machines stay apart.
    assert set(pd.read_csv(tmp_path / "arms.csv")["machine"]) == {machine.cpu_description()}
    moved = tmp_path / "init=vocab,seed=1" / "run_record.json"
    moved.write_text(json.dumps({**json.loads(moved.read_text()), "machine": "another CPU"}))
    report.write_report(tmp_path, tmp_path / "two_machines")
    split = pd.read_csv(tmp_path / "two_machines" / "results.csv")
    assert list(zip(split["init"], split["seeds"], strict=True)) == [
        ("vocab", 1),
        ("vocab", 1),
        ("random", 2),
    ]
    # ... and are pooled in a second table, without wall time (comparable on one machine only).
    pooled = pd.read_csv(tmp_path / "two_machines" / "results_pooled.csv")
    assert list(zip(pooled["init"], pooled["seeds"], strict=True)) == [("vocab", 2), ("random", 2)]
    assert "test/test_sentiment/accuracy_mean" in pooled and "wall_time_min_mean" not in pooled
    assert "## Seeds pooled over machines" in (tmp_path / "two_machines" / "results.md").read_text()
    assert not (tmp_path / "results_pooled.csv").exists()  # one machine: no second table
    # Back on one machine, a report into the same folder leaves no stale pooled table.
    moved.write_text(
        json.dumps({**json.loads(moved.read_text()), "machine": machine.cpu_description()})
    )
    report.write_report(tmp_path, tmp_path / "two_machines")
    assert not (tmp_path / "two_machines" / "results_pooled.csv").exists()
    assert "pooled" not in (tmp_path / "two_machines" / "results.md").read_text()
    # The sweep's own arms given again as baselines are those arms, counted once.
    report.write_report(tmp_path, tmp_path / "again", tmp_path / "arms.csv")
    assert list(pd.read_csv(tmp_path / "again" / "results.csv")["seeds"]) == [2, 2]
    # Under another config every arm's workdir is refused, and no old result is reported.
    changed = _sweep(*args, "--config.model.optim.lr=0.5")
    assert changed.returncode == 1
    assert set(json.loads(changed.stdout.strip().splitlines()[-1]).values()) == {"failed"}
    assert "0 of 4 arms finished" in (tmp_path / "results.md").read_text()
    assert "model.optim.lr: 0.003 -> 0.5" in (tmp_path / "results.md").read_text()


def test_killed_sweep_resumes_its_arm_and_a_failing_arm_is_recorded(toy_data, tmp_path):
    # Arm init=labels fails (the toy data has a label set, so break it: a text init of "").
    args = _args(
        toy_data,
        tmp_path,
        "--sweep.init=vocab,text",
        "--sweep.seed=0",
        "--config.model.prompt_tuning.new_prompt_init_text=('',)",
        steps=200,
    )
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tiny_subprocess_env(8),
    )
    arm = tmp_path / "init=vocab,seed=0"
    deadline = time.time() + 300
    while time.time() < deadline:
        saved = [p for p in (arm / "checkpoints" / "last").glob("*") if p.name.isdigit()]
        if saved and not (arm / "result.json").exists():
            break
        time.sleep(0.05)
    else:
        pytest.fail("the arm never checkpointed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # the arm's process gets SIGTERM as its parent dies
    assert not (arm / "result.json").exists()
    rerun = _sweep(*args)
    assert rerun.returncode == 1  # one arm failed
    statuses = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert statuses == {"init=vocab,seed=0": "finished", "init=text,seed=0": "failed"}
    rows = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines() if x]
    assert [r["step"] for r in rows if "loss" in r].count(1) == 1  # resumed, not restarted
    assert max(r["step"] for r in rows) == 200
    state = json.loads((tmp_path / "sweep.json").read_text())
    failed = next(a for a in state["arms"] if a["name"] == "init=text,seed=0")
    assert "new_prompt_init_text" in failed["error"]
    assert "init=text,seed=0" in (tmp_path / "results.md").read_text()


def test_report_of_a_single_run(toy_data, tmp_path):
    import ptlearn

    config = ptlearn.load_config(
        "sentiment_prompt_tuning",
        f"model=tiny,data={toy_data},virtual=4,steps=2,init=vocab",
        **{"model.optim.sched.warmup_steps": 1, "trainer.val_check_interval": 2},
    )
    ptlearn.train(config, tmp_path)
    written = report.write_report(tmp_path)
    assert pd.read_csv(written["results"])["seeds"].tolist() == [1]
    # Rows measured elsewhere sit beside the run's, each its own row, named as not from it.
    baselines = tmp_path / "baselines.csv"
    baselines.write_text("arm,status,steps,test/test_sentiment/accuracy\nmajority,finished,0,0.5\n")
    written = report.write_report(tmp_path, tmp_path / "with", baselines)
    table = pd.read_csv(written["results"])
    assert table["setting"].tolist() == ["majority", tmp_path.name]
    assert table["test/test_sentiment/accuracy_mean"][0] == 0.5
    markdown = (tmp_path / "with" / "results.md").read_text()
    assert "1 of 1 arms finished" in markdown and "not from this sweep" in markdown
    assert f"--baselines={baselines}" not in markdown  # a single run has no sweep command
    baselines.write_text("status\nfinished\n")
    with pytest.raises(ConfigError, match="no column arm"):
        report.write_report(tmp_path, tmp_path / "bad", baselines)
