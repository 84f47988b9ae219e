"""Every experiment's command lines stay runnable: each sweep's arms resolve to valid configs
(what `python -m ptlearn.sweep` does before it trains anything), and the commands in its
docstring name its own files."""

import pathlib
import re

import pytest

from ptlearn import config_checks, config_lib, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/config.py"))


def test_there_are_experiments():
    assert {"fpb_methods", "recipes", "squad_recipe", "intent_slot_recipe"} <= set(EXPERIMENTS)


@pytest.fixture(scope="module")
def prepared_workspace(shared_dir, tmp_path_factory):
    """A folder like a checkout after the experiments' prepare commands: configs/ and
    experiments/ linked, data/{fpb,squad,assistant} converted from ../shared/data (a config
    may read its data, as fpb_methods' in-context arms read their demonstrations)."""
    from test_readme_commands import _sandbox

    from ptlearn.data.prepare import prepare

    work = _sandbox(tmp_path_factory.mktemp("workspace"), shared_dir)
    for dataset, folder in (
        ("financial_phrasebank", "fpb"),
        ("squad", "squad"),
        ("assistant",) * 2,
    ):
        prepare(dataset, shared_dir / "data", work / "data" / folder)
    return work


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_arm_of_the_sweep_resolves_to_a_valid_config(
    name, prepared_workspace, tmp_path, monkeypatch
):
    monkeypatch.chdir(prepared_workspace)
    spec = f"experiments/{name}/config.py"
    arms = sweep.plan(spec, tmp_path, {}, {})
    assert arms, name
    for arm in arms:
        config_arg = next(w for w in arm.command if w.startswith("--config="))
        path, _, arg = config_arg.removeprefix("--config=").partition(":")
        config_checks.validate(config_lib.load_config(path, arg or None))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_docstring_commands_name_this_experiments_files(name):
    text = (ROOT / "experiments" / name / "config.py").read_text()
    commands = re.findall(r"^  python .*$", text.replace("\\\n", " "), re.M)
    sweeps = [c for c in commands if " -m ptlearn.sweep " in c]
    assert sweeps, f"{name}: no sweep command in its docstring"
    for command in sweeps:
        assert f"--config=experiments/{name}/config.py" in command
        assert f"--workdir=runs/{name}" in command
    reports = [c for c in commands if " -m ptlearn.report " in c]
    assert reports and all(f"--out=experiments/{name}" in c for c in reports), name
    for script in re.findall(r"python (experiments/\S+\.py)", " ".join(commands)):
        assert (ROOT / script).is_file(), script


def test_fpb_recipe_wordings_parse_and_an_unknown_one_is_refused(monkeypatch):
    from ptlearn import templates
    from ptlearn.errors import ConfigError

    monkeypatch.chdir(ROOT)
    spec = "experiments/fpb_recipe/config.py"
    shipped = config_lib.load_config("sentiment_prefix_tuning").model.task_templates[0]
    module = config_lib.load_config_module(spec)
    assert module.WORDINGS["plain"] == shipped.prompt_template
    for wording, text in module.WORDINGS.items():
        config = config_lib.load_config(spec, f"wording={wording}")
        assert config.model.task_templates[0].prompt_template == text
        templates.parse_task_templates(config.model.task_templates)  # a valid template
    with pytest.raises(ConfigError, match="wording='nope': use one of plain, labelled"):
        config_lib.load_config(spec, "wording=nope")
