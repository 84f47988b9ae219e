"""Train prompts: `python -m ptlearn.train --config=FILE_OR_NAME[:arg] --workdir=W [--config.a.b=v]`.

Prints the run's summary (final, best and test metrics, the prompt model's path) as one JSON
line. The library behind it is `ptlearn.training.train_and_evaluate` (`ptlearn.train` in
Python).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from ptlearn import cli, distributed, training


def main(argv: Sequence[str]) -> None:
    """Trains the flags' config in --workdir; prints the run's summary as one JSON line."""
    del argv
    config = flags.FLAGS.config
    distributed.initialize(config.distributed)
    try:
        run = training.train_and_evaluate(
            config, flags.FLAGS.workdir, allow_config_change=flags.FLAGS.allow_config_change
        )
    except training.Interrupted as stop:  # preempted: saved, and the rerun resumes
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    if distributed.is_writer():
        cli.print_json(run.summary())


if __name__ == "__main__":
    cli.define_config()
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the prompt model go")
    flags.DEFINE_bool("allow_config_change", False, "continue a workdir's run under a new config")
    flags.mark_flag_as_required("workdir")
    cli.run(main)
