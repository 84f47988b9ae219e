"""Which parameters train: ordered regex rules -> labels; split / merge of parameter trees.

Rules are `(regex, "trainable" | "frozen")` pairs matched against `/`-joined parameter paths of
the full tree, e.g. `lm/layers/attn/query/kernel` or `prompt/tables/sentiment`. The whole path
must match (`re.fullmatch`), the first matching rule wins, and a parameter no rule matches is an
error: nothing trains or freezes by accident. The gradient is then taken only with respect to
the trainable partition of `split`, so frozen weights get no gradient buffer at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ptlearn.errors import ConfigError

TRAINABLE = "trainable"
FROZEN = "frozen"
LABELS = (TRAINABLE, FROZEN)
RULES_KEY = "model.freeze_rules"
# The default for prompt learning: only prompt parameters train.
PROMPT_ONLY_RULES = (("prompt/.*", TRAINABLE), ("lm/.*", FROZEN))

Rule = tuple[str, str]


def _is_leaf(x: Any) -> bool:
    # A boxed parameter (nn.Partitioned) is one parameter, not a node with a `.value` child.
    return x is None or isinstance(x, nn.meta.AxisMetadata)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """A `jax.tree_util` key path -> `"a/b/c"`."""
    return "/".join(_key_name(k) for k in path)


def named_leaves(params: Any) -> list[tuple[str, Any]]:
    """[(`/`-joined path, leaf)] in tree order; boxed parameters count as one leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_leaf)
    return [(path_str(path), leaf) for path, leaf in flat if leaf is not None]


def _compile_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], str]]:
    compiled = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ConfigError(f"{RULES_KEY}[{i}]={rule!r}: a rule is a (regex, label) pair")
        pattern, label = rule
        if label not in LABELS:
            raise ConfigError(
                f"{RULES_KEY}[{i}]={rule!r}: label {label!r} must be 'trainable' or 'frozen'"
            )
        try:
            compiled.append((re.compile(pattern), label))
        except re.error as err:
            raise ConfigError(f"{RULES_KEY}[{i}]: bad regex {pattern!r}: {err}") from err
    return compiled


def _size(leaf: Any) -> int:
    return int(np.prod(np.shape(nn.meta.unbox(leaf))))


def param_labels(params: Any, rules: Sequence[Rule]) -> Any:
    """A tree like `params` with "trainable" / "frozen" at each parameter.

    params: e.g. {"lm": gpt_params, "prompt": prompt_params} (plain or boxed). rules: ordered
    (regex, label) pairs; whole-path match, first match wins. Logs each rule's match count once.
    Raises ConfigError naming the first parameter that no rule matches.
    """
    compiled = _compile_rules(rules)
    hits = [[0, 0] for _ in compiled]  # per rule: parameters, elements

    def label_of(path: Sequence[Any], leaf: Any) -> Any:
        if leaf is None:
            return None
        name = path_str(path)
        for i, (pattern, label) in enumerate(compiled):
            if pattern.fullmatch(name):
                hits[i][0] += 1
                hits[i][1] += _size(leaf)
                return label
        raise ConfigError(
            f"parameter {name!r} matches none of the {RULES_KEY} "
            f"{[r for r, _ in rules]}; add a rule that names it (e.g. ({name!r}, 'frozen'))"
        )

    labels = jax.tree_util.tree_map_with_path(label_of, params, is_leaf=_is_leaf)
    for (pattern, label), (num, size) in zip(compiled, hits, strict=True):
        log = logging.info if num else logging.warning
        log(
            "%s rule %r -> %s: %d parameters (%d values)",
            RULES_KEY,
            pattern.pattern,
            label,
            num,
            size,
        )
    return labels


def split(params: Any, labels: Any) -> tuple[Any, Any]:
    """(trainable, frozen): two trees shaped like `params`, the other partition's leaves None."""

    def pick(wanted: str) -> Any:
        return jax.tree.map(
            lambda label, leaf: leaf if label == wanted else None,
            labels,
            params,
            is_leaf=_is_leaf,
        )

    return pick(TRAINABLE), pick(FROZEN)


def merge(trainable: Any, frozen: Any) -> Any:
    """Inverse of `split`: each leaf from whichever tree holds it (exactly one must)."""

    def one(a: Any, b: Any) -> Any:
        if (a is None) == (b is None):
            raise ValueError("merge: a parameter is in both partitions or in neither")
        return b if a is None else a

    return jax.tree.map(one, trainable, frozen, is_leaf=_is_leaf)


def count(params: Any) -> int:
    """Number of values in a tree's parameters (None leaves count 0)."""
    return sum(_size(leaf) for _, leaf in named_leaves(params))


def count_by_label(params: Any, labels: Any) -> dict[str, int]:
    """{"trainable": n, "frozen": m}: values per label."""
    trainable, frozen = split(params, labels)
    return {TRAINABLE: count(trainable), FROZEN: count(frozen)}
