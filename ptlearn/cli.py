"""The one command-line style of every `python -m ptlearn.X` (after flax's examples): absl flags,
`--config` read by config_flags (a file or a shipped config's name, locked, `--config.a.b=v`
overrides), a thin `main` over a library function, and user errors as one line with exit code 2.

  if __name__ == "__main__":
      cli.define_config()          # when the command takes a config
      flags.DEFINE_string(...)     # its own flags
      cli.run(main)                # main(argv) calls the library; PtlearnError -> one line, 2
"""

from __future__ import annotations

import dataclasses
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


def option(default: Any, help_text: str) -> Any:
    """A field of an options dataclass: its default and its flag's help (`define_options`)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


def define_options(options_class: type) -> None:
    """One absl flag per field of an options dataclass (typed by its default: bool, int,
    float, else string); a field named `config` is the --config flag (optional)."""
    for field in dataclasses.fields(options_class):
        if field.name == "config":
            define_config(required=False)
            continue
        default, help_text = field.default, field.metadata["help"]
        if isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


def option_values(options_class: type) -> dict[str, Any]:
    """{field: its parsed flag's value} of an options dataclass."""
    return {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(options_class)}


def fail(message: str) -> NoReturn:
    """Prints `error: message` as one line on stderr and exits with the user-error code."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)


def print_json(values: Mapping[str, Any]) -> None:
    """One JSON object on stdout (numpy scalars as plain numbers): the command's result."""
    text = json.dumps(
        values,
        default=lambda v: run_log.plain(v) if hasattr(v, "item") else str(v),
        ensure_ascii=False,
    )
    print(text, flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(f"{err} (see --helpshort)")
    except PtlearnError as err:
        fail(str(err))
    except (AttributeError, KeyError) as err:
        message = _unknown_key(argv, err)
        if message is None:
            raise  # not an override of a missing key: a bug (e.g. in a get_config) to see whole
        fail(message)


def _unknown_key(argv: list[str], err: Exception) -> str | None:
    """config_flags' error for `--config.a.b=v` naming no key, as one line (None when the
    error names no key of an override on the command line)."""
    text = str(err)
    words = re.findall(r"[A-Za-z_]\w*", text)
    key = words[0] if words else "?"
    named = [a.split("=", 1)[0] for a in argv if a.startswith("--") and "." in a.split("=")[0]]
    where = next((n for n in named if key in n.split(".")), None)
    if where is None:
        return None
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
