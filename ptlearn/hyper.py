"""The sweep language of `get_hyper(h)` (after big_vision's and the flax examples' `h`): axes
that expand to a list of arms, each arm a {name: value} dict.

A name without a dot is an argument of the config's `get_config(arg)` (`virtual`, `seed`,
`init`); a dotted name is a config key (`model.optim.lr`). Configs declare

  def get_hyper(h):
      return h.product([h.sweep("virtual", [1, 5, 10]), h.sweep("seed", [0, 1, 2])])

We chose `get_hyper(h)` over `sweep(add)`: its axes are named values rather than arbitrary
calls, so the command line can narrow or replace one (`--sweep.seed=0,1`) and the report
knows which setting each column of its table and each x-axis of its plots is.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from ptlearn.errors import ConfigError

Settings = dict[str, Any]  # one arm's {axis name: value}


def sweep(name: str, values: Iterable[Any]) -> list[Settings]:
    """One axis: an arm per value."""
    values = list(values)
    if not values:
        raise ConfigError(f"sweep axis {name!r} has no values")
    return [{name: v} for v in values]


def fixed(name: str, value: Any) -> list[Settings]:
    """A setting every arm shares."""
    return [{name: value}]


def product(axes: Sequence[list[Settings]]) -> list[Settings]:
    """Every combination of the axes' arms (the last axis varies fastest)."""
    return [_merge(combo) for combo in itertools.product(*axes)]


def zipit(axes: Sequence[list[Settings]]) -> list[Settings]:
    """The axes' arms side by side; they must be equally long."""
    lengths = {len(a) for a in axes}
    if len(lengths) > 1:
        raise ConfigError(f"zipit: axes of different lengths {sorted(lengths)}")
    return [_merge(combo) for combo in zip(*axes, strict=True)]


def chainit(axes: Sequence[list[Settings]]) -> list[Settings]:
    """The axes' arms one list after another."""
    return [arm for axis in axes for arm in axis]


def _merge(arms: Iterable[Settings]) -> Settings:
    merged: Settings = {}
    for arm in arms:
        clash = set(merged) & set(arm)
        if clash:
            raise ConfigError(f"sweep: {sorted(clash)} set by two axes of one product")
        merged.update(arm)
    return merged


def parse_values(text: str) -> list[Any]:
    """`"1,5,1e-3,lstm"` -> [1, 5, 0.001, "lstm"] (Python literals, else strings)."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(ast.literal_eval(item))
        except (ValueError, SyntaxError):
            values.append(item)
    return values


def with_axis(arms: list[Settings], name: str, values: Sequence[Any]) -> list[Settings]:
    """The arms with axis `name` set to `values`: replacing (or narrowing) its declared values,
    or adding it as a new axis crossed with the others.

    The new values are crossed with every distinct setting of the other axes, which is exact
    for a `product`; an axis declared in a `zipit` loses its pairing, and one in a `chainit`
    is crossed with settings of the other parts too (e.g. an untrained method with all seeds).
    """
    if not values:
        raise ConfigError(f"--sweep.{name}: give at least one value")
    others: list[Settings] = []
    for arm in arms:
        rest = {k: v for k, v in arm.items() if k != name}
        if rest not in others:
            others.append(rest)
    return product([others or [{}], sweep(name, values)])


def expand(module: Any, replaced: dict[str, Sequence[Any]]) -> list[Settings]:
    """The arms of a config module's `get_hyper(h)` (one empty arm without it), with
    command-line axes applied in order."""
    import ptlearn.hyper as h

    arms = module.get_hyper(h) if hasattr(module, "get_hyper") else [{}]
    if not isinstance(arms, list) or not all(isinstance(a, dict) for a in arms):
        raise ConfigError(
            f"{module.__file__}: get_hyper(h) must return a list of dicts (use h.product, "
            "h.sweep, ...)"
        )
    for name, values in replaced.items():
        arms = with_axis(arms, name, values)
    unique: list[Settings] = []
    for arm in arms:
        if arm not in unique:
            unique.append(arm)
    return unique
