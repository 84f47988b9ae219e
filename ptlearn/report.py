"""Tables and plots of a sweep (or of one run): `python -m ptlearn.report W`.

Writes into W:
- `arms.csv`: one row per arm: its settings, the machine it ran on (its run record's), status,
  steps, wall time, trainable parameters and every final / best / test metric;
- `results.csv` and `results.md`: one row per setting and machine (the arms that differ only
  in their seeds together): mean and standard deviation over the seeds of every metric, steps
  and wall time, and how many seeds finished;
- `results_pooled.csv`, and its table in `results.md`, where a setting's seeds ran on more than
  one machine: those seeds together, every metric but wall time (which only compares on one
  machine), so a 3-seed mean exists when each seed ran in another session;
- `plot_<axis>.png` for each swept axis with more than one value: that axis against the
  headline metrics, mean with standard-deviation error bars, one line per other setting;
- `curves.png`: training loss and validation loss against the step, one line per arm.

`--baselines=FILE.csv` adds rows measured elsewhere (a majority class, another library's runs)
in arms.csv's columns: they enter the tables and the axis plots beside the sweep's arms, and
their columns that are settings (not outcomes: OUTCOMES) join the table's keys.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from ptlearn import runs
from ptlearn.errors import ConfigError
from ptlearn.run_log import read_metrics
from ptlearn.sweep import SWEEP_FILE

# Row keys that are bookkeeping, not results: left out of the tables.
NOT_METRICS = ("step", "epoch", "lr", "elapsed_s", "val_time_s", "grad_norm")
# arms.csv's columns that are an arm's outcome (arm_rows), not one of its settings.
OUTCOMES = (
    "arm",
    "status",
    "error",
    "stopped",
    "steps",
    "best_step",
    "wall_time_min",
    "trainable_parameters",
)
OUTCOME_PREFIXES = ("final/", "best/", "test/")


def _is_seed(axis: str) -> bool:
    return axis == "seed" or axis.endswith(".seed")


def _metrics(prefix: str, row: dict[str, Any], keep) -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in row.items()
        if keep(k)
        and k not in NOT_METRICS
        and not k.endswith(("/n", "tokens_per_s", "steps_per_s"))
        and isinstance(v, int | float)
    }


def arm_rows(workdir: pathlib.Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one dict per arm: settings, status and results; the sweep's axes)."""
    state = runs.read_json(workdir / SWEEP_FILE)
    if state:
        arms, axes = state["arms"], list(state["axes"])
    elif runs.is_finished(workdir):
        arms, axes = [{"name": ".", "settings": {}, "status": "finished"}], []
    else:
        raise ConfigError(f"{workdir}: neither a sweep ({SWEEP_FILE}) nor a finished run")
    rows = []
    for arm in arms:
        folder = workdir / arm["name"]
        row: dict[str, Any] = {"arm": arm["name"], **arm["settings"], "status": arm["status"]}
        # The sweep's word counts: an arm it refused (its workdir holds another config's run)
        # keeps that run's result.json, which must not enter the table.
        if arm["status"] == "running" and runs.is_finished(folder):
            row["status"] = "finished"  # the sweep was stopped after this arm ended
        if row["status"] == "finished" and runs.is_finished(folder):
            run = runs.Run.from_workdir(folder)
            machine = runs.read_json(folder / runs.RECORD_FILE).get("machine")
            if machine:  # a setting's rows from two machines stay apart (their wall times)
                row["machine"] = machine
            row.update(
                stopped=run.stopped or "",
                steps=run.final_step,
                best_step=run.best_step,
                wall_time_min=run.wall_time_s / 60,
                trainable_parameters=run.trainable_parameters,
            )
            row.update(_metrics("final/", run.final, lambda k: k == "loss" or k.startswith("val_")))
            row.update(_metrics("best/", run.best, lambda k: k.startswith("val_")))
            row.update(_metrics("test/", run.test, lambda k: True))
        else:
            row["error"] = arm.get("error", "")
        rows.append(row)
    return rows, axes


def setting_columns(columns: Sequence[str]) -> list[str]:
    """The columns of an arms.csv (or a baselines CSV in its layout) that are settings."""
    return [c for c in columns if c not in OUTCOMES and not c.startswith(OUTCOME_PREFIXES)]


def read_baselines(path: str | pathlib.Path, axes: Sequence[str]) -> Any:
    """The rows of a baselines CSV, checked: each names its setting of the sweep's axes (it
    may have settings of its own, as an earlier sweep's arms.csv has)."""
    import pandas as pd

    try:
        rows = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--baselines={path}: cannot read it as CSV: {err}") from err
    keys = [a for a in axes if not _is_seed(a)]
    missing = [k for k in ["arm", *keys] if k not in rows.columns]
    if missing:
        raise ConfigError(
            f"--baselines={path}: no column {', '.join(missing)}; each row needs `arm` and the "
            f"sweep's axes ({', '.join(keys) or 'none'})"
        )
    return rows.assign(status="finished")


def aggregate(arms: Any, axes: Sequence[str]) -> Any:
    """One row per setting of the non-seed axes: `<col>_mean`, `<col>_std`, `seeds`."""
    finished = arms[arms["status"] == "finished"]
    keys = [a for a in axes if not _is_seed(a)]
    values = [c for c in finished.columns if c not in (*axes, "arm", "status", "error", "stopped")]
    values = [c for c in values if finished[c].dtype.kind in "fiu"]
    if keys:
        grouped = finished.groupby(keys, sort=False, dropna=False)[values]
    else:
        grouped = finished.assign(_all=0).groupby("_all")[values]
    table = grouped.agg(["mean", "std"])
    table.columns = [f"{c}_{s}" for c, s in table.columns]
    table["seeds"] = grouped.size()
    return table.reset_index().drop(columns="_all", errors="ignore")


def _markdown(table: Any, axes: Sequence[str]) -> str:
    """mean ± std cells; the columns that vary only."""
    import pandas as pd

    keys = [a for a in axes if not _is_seed(a)]
    shown = pd.DataFrame({k: table[k] for k in keys})
    for column in [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]:
        mean, std = table[f"{column}_mean"], table[f"{column}_std"]
        digits = 0 if column in ("steps", "best_step", "trainable_parameters") else 4
        if column == "wall_time_min":
            digits = 1
        shown[column] = [
            "" if m != m else f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s > 0 else "")
            for m, s in zip(mean, std, strict=True)  # m != m: NaN, a metric this row lacks
        ]
    shown["seeds"] = table["seeds"]
    return shown.to_markdown(index=False)


def headline_metrics(table: Any) -> list[str]:
    """The metrics the plots show: test task metrics (else best validation ones), and loss."""
    means = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    for prefix in ("test/test_", "best/val_"):
        task = [m for m in means if m.startswith(prefix) and "/" in m[len(prefix) :]]
        loss = [m for m in means if m == f"{prefix}loss"]
        if task or loss:
            return (task + loss)[:4]
    return [m for m in means if m == "final/loss"]


def plot_axis(table: Any, axis: str, axes: Sequence[str], path: pathlib.Path) -> None:
    """`axis` against the headline metrics, error bars of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = headline_metrics(table)
    if not metrics:
        return
    others = [a for a in axes if a != axis and not _is_seed(a)]
    fig, panels = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    groups = table.groupby(others, sort=False) if others else [((), table)]
    for panel, metric in zip(panels[0], metrics, strict=True):
        for key, group in groups:
            label = ", ".join(f"{a}={v}" for a, v in zip(others, _tuple(key), strict=True))
            numeric = group[axis].map(lambda v: isinstance(v, int | float)).all()
            x = group[axis] if numeric else group[axis].astype(str)
            panel.errorbar(
                x,
                group[f"{metric}_mean"],
                yerr=group[f"{metric}_std"].fillna(0),
                marker="o",
                capsize=3,
                label=label or None,
                linestyle="-" if numeric else "none",  # no line between unordered categories
            )
            if numeric and group[axis].min() > 0 and group[axis].max() / group[axis].min() >= 20:
                panel.set_xscale("log")
            if not numeric:
                panel.tick_params(axis="x", labelrotation=45)
                for tick in panel.get_xticklabels():
                    tick.set_horizontalalignment("right")
        panel.set_xlabel(axis)
        panel.set_title(metric)
        panel.grid(alpha=0.3)
        if others:
            panel.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _baseline_names(arms: Any, rows: Sequence[dict[str, Any]]) -> str:
    swept = {r["arm"] for r in rows}
    return ", ".join(f"`{a}`" for a in arms["arm"] if a not in swept)


def _tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def plot_curves(workdir: pathlib.Path, arms: Any, path: pathlib.Path) -> None:
    """Training loss and validation loss against the step, one line per finished arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in arms.loc[arms["status"] == "finished", "arm"]:
        history = read_metrics(workdir / name)
        train = [(r["step"], r["loss"]) for r in history if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
        for panel, points in ((left, train), (right, val)):
            if points:
                panel.plot(
                    *zip(*points, strict=True), marker="." if panel is right else None, label=name
                )
    for panel, title in ((left, "training loss"), (right, "validation loss")):
        panel.set_xlabel("step")
        panel.set_title(title)
        panel.grid(alpha=0.3)
    if len(arms) <= 24:
        right.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    workdir: str | pathlib.Path,
    out: str | pathlib.Path | None = None,
    baselines: str | pathlib.Path | None = None,
) -> dict[str, str]:
    """Writes arms.csv, results.csv (and results_pooled.csv where seeds ran on several
    machines), results.md and the plots of the sweep (or run) in `workdir` into `out`
    (default: `workdir`), with the rows of the `baselines` CSV beside the arms' (a baseline
    row named like one of the sweep's arms is that arm recorded earlier: the sweep's row
    counts, once); returns {what: path}."""
    import pandas as pd

    workdir = pathlib.Path(workdir)
    out = pathlib.Path(out) if out is not None else workdir
    out.mkdir(parents=True, exist_ok=True)
    rows, axes = arm_rows(workdir)
    arms = pd.DataFrame(rows)
    if baselines is not None:
        earlier = read_baselines(baselines, axes)
        earlier = earlier[~earlier["arm"].isin(arms["arm"])]
        arms = pd.concat([earlier, arms], ignore_index=True)
        if not [a for a in axes if not _is_seed(a)]:  # one setting: label it to keep it apart
            swept = {r["arm"] for r in rows}
            arms.insert(0, "setting", [workdir.name if a in swept else a for a in arms["arm"]])
            axes = ["setting", *axes]
    # Settings no axis names (the machine; an earlier sweep's batch in the baselines) keep
    # their rows apart.
    axes = [*axes, *(c for c in setting_columns(arms.columns) if c not in axes)]
    outputs = [out / "curves.png", out / "results.csv", out / "results_pooled.csv"]
    for old in [*out.glob("plot_*.png"), *outputs]:
        old.unlink(missing_ok=True)  # the report's own outputs of an earlier state
    written = {"arms": str(out / "arms.csv")}
    arms.to_csv(written["arms"], index=False)
    failed = arms[arms["status"] != "finished"]
    lines = [f"# Results: {workdir.name}", ""]
    command = runs.read_json(workdir / SWEEP_FILE).get("command")
    if command:
        lines += [
            "Made by:",
            "",
            "```bash",
            command,
            f"python -m ptlearn.report {workdir} --out={out}"
            + (f" --baselines={baselines}" if baselines is not None else ""),
            "```",
            "",
        ]
    done = sum(r["status"] == "finished" for r in rows)
    lines += [f"{done} of {len(rows)} arms finished.", ""]
    if done:
        table = aggregate(arms, axes)
        table.to_csv(out / "results.csv", index=False)
        written["results"] = str(out / "results.csv")
        lines += [
            "Mean ± standard deviation over seeds (sample std; none shown when zero or with one "
            "seed). "
            "`best/` is the validation at the checkpoint the prompt model comes from, `test/` "
            "that prompt model on the test split, `final/` the last step.",
            "",
            _markdown(table, axes),
            "",
        ]
        if baselines is not None:
            lines += [
                f"Rows not from this sweep (`{baselines}`): {_baseline_names(arms, rows)}.",
                "",
            ]
        settings = [a for a in axes if a != "machine"]
        pooled = aggregate(arms, settings)
        if len(pooled) < len(table):  # some setting's seeds ran on more than one machine
            pooled = pooled.drop(columns=[c for c in pooled if c.startswith("wall_time_min")])
            pooled.to_csv(out / "results_pooled.csv", index=False)
            written["results_pooled"] = str(out / "results_pooled.csv")
            lines += [
                "## Seeds pooled over machines",
                "",
                "Each setting's seeds together wherever they ran, wall time left out: it "
                "compares on one machine only (the table above). Machines also differ in "
                "arithmetic: trainer.precision=auto trains in bf16 where the CPU has bf16 "
                "hardware, in float32 elsewhere.",
                "",
                _markdown(pooled, settings),
                "",
            ]
        else:  # the table is already pooled: it keeps the machine column for the plots' legends
            pooled, settings = table, axes
        swept = [a for a in axes if not _is_seed(a) and a != "machine" and table[a].nunique() > 1]
        for axis in swept if headline_metrics(table) else []:
            path = out / f"plot_{axis.replace('/', '_')}.png"
            plot_axis(pooled, axis, settings, path)  # metrics, not wall time: seeds pooled
            written[f"plot_{axis}"] = str(path)
            lines.append(f"![{axis}]({path.name})")
        stopped = arms["stopped"].fillna("") if "stopped" in arms else ""
        short = arms[(arms["status"] == "finished") & (stopped != "")]
        if len(short):
            names = ", ".join(f"`{a}`" for a in short["arm"])
            lines += ["", f"Stopped early (trainer.max_time_minutes): {names}.", ""]
        plot_curves(workdir, arms[arms["arm"].isin([r["arm"] for r in rows])], out / "curves.png")
        written["curves"] = str(out / "curves.png")
        lines += ["![training and validation curves](curves.png)", ""]
    if len(failed):
        lines += ["## Arms not finished", ""]
        lines += [
            f"- `{r.arm}`: {r.status} {getattr(r, 'error', '') or ''}" for r in failed.itertuples()
        ]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    written["markdown"] = str(out / "results.md")
    return written


def main(argv: Sequence[str]) -> None:
    """Writes the report of the folder named on the command line; prints {what: path}."""
    from absl import flags

    from ptlearn import cli

    if len(argv) != 2:
        cli.fail("give one sweep (or run) folder: python -m ptlearn.report W [--out=D]")
    if not pathlib.Path(argv[1]).is_dir():
        cli.fail(f"{argv[1]}: no such folder")
    cli.print_json(write_report(argv[1], flags.FLAGS.out, flags.FLAGS.baselines))


if __name__ == "__main__":
    from absl import flags

    from ptlearn import cli

    flags.DEFINE_string("out", None, "where the tables and plots go (default: the folder itself)")
    flags.DEFINE_string("baselines", None, "CSV of rows measured elsewhere, in arms.csv's columns")
    cli.run(main)
