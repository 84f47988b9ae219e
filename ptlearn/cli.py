"""The one command-line style of every `python -m ptlearn.X` (after flax's examples): absl flags,
`--config` read by config_flags (a file or a shipped config's name, locked, `--config.a.b=v`
overrides), a thin `main` over a library function, and user errors as one line with exit code 2.

  if __name__ == "__main__":
      cli.define_config()          # when the command takes a config
      flags.DEFINE_string(...)     # its own flags
      cli.run(main)                # main(argv) calls the library; PtlearnError -> one line, 2
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from ptlearn import config_lib, run_log
from ptlearn.errors import PtlearnError

USER_ERROR = 2

flags.DEFINE_enum(
    "log_level",
    "warning",
    ["debug", "info", "warning", "error"],
    "level of jax / orbax / absl messages (ptlearn's own progress is always shown)",
)


class _ConfigParser(config_flags_impl.ConfigFileFlagParser):
    """config_flags' file parser that also takes a shipped config's name and reports a missing
    file or a bad argument as a user error (config_flags would defer it to a traceback)."""

    def parse(self, path: str) -> Any:
        name, sep, arg = path.partition(":")
        return super().parse(str(config_lib.config_file(name)) + sep + arg)


def define_config(name: str = "config", *, required: bool = True) -> flags.FlagHolder:
    """`--config=FILE[:arg]` or `--config=NAME[:arg]`, locked, with `--config.a.b=v` overrides."""
    holder = config_flags.DEFINE_config_file(
        name, None, "experiment config: a file or a shipped config's name, [:arg]"
    )
    flags.FLAGS[name].parser = _ConfigParser(name=name, lock_config=True)
    if required:
        flags.mark_flag_as_required(name)
    return holder


def fail(message: str) -> NoReturn:
    """Prints `error: message` as one line on stderr and exits with the user-error code."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)


def print_json(values: Mapping[str, Any]) -> None:
    """One JSON object on stdout (numpy scalars as plain numbers): the command's result."""
    print(json.dumps(values, default=_plain, ensure_ascii=False), flush=True)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(f"{err} (see --helpshort)")
    except PtlearnError as err:
        fail(str(err))
    except (AttributeError, KeyError) as err:  # config_flags on an override of no such key
        fail(_unknown_key(argv, err))


def _unknown_key(argv: list[str], err: Exception) -> str:
    text = str(err)
    words = re.findall(r"[A-Za-z_]\w*", text)
    key = words[0] if words else "?"
    named = [a.split("=", 1)[0] for a in argv if a.startswith("--") and "." in a.split("=")[0]]
    where = next((n for n in named if key in n.split(".")), "a --config override")
    hint = re.search(r'Did you mean "[^"]+"', text)
    return f"{where}: no such config key {key!r}" + (f" ({hint.group(0)}?)" if hint else "")


def run(main: Callable[[list[str]], Any]) -> None:
    """absl's app.run with one-line user errors: bad flags, and PtlearnError from `main`."""

    def guarded(argv: list[str]) -> Any:
        run_log.console_logging(flags.FLAGS.log_level)
        try:
            return main(argv)
        except PtlearnError as err:
            fail(str(err))

    app.run(guarded, flags_parser=_parse_flags)
