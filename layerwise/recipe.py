"""Which layers a run prunes, and how: targets, ignore and per-layer overrides.

Written as llm-compressor writes them: a target or ignore entry is a module class name
(``Linear``), a module's full name (``model.layers.0.mlp.down_proj``), or ``re:`` and a regular
expression matched from the start of the full name (``re:.*self_attn\\.o_proj$``). A layer is
pruned when some target matches it and no ignore entry does. An override applies its keys
(``sparsity``, ``pattern``, ``method``, ``options``) to the layers its ``targets`` match:

    method: alps
    sparsity: 0.7
    ignore: ["re:.*mlp\\.gate$"]              # a router stays dense
    overrides:
      - targets: ["re:.*down_proj$"]
        sparsity: 0.6
      - targets: ["re:model\\.layers\\.0\\."]
        method: sparsegpt

An override applies to the pruned layers it matches. A layer two overrides set the same key of,
to different values, is an error naming both; so is a target or ignore entry that matches no
layer, and an override that matches no pruned layer (only ignored ones, say).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from layerprune.layerwise.errors import LayerwiseError

OVERRIDE_KEYS = ("sparsity", "pattern", "method", "options")
DEFAULT_TARGETS = ("Linear",)


def matches(entry: str, name: str, kind: str) -> bool:
    """Whether a target/ignore ``entry`` names the module ``name`` of class ``kind``."""
    if entry.startswith("re:"):
        return re.match(entry[3:], name) is not None
    return entry == name or entry == kind


def check_entries(entries: list | tuple, what: str) -> list[str]:
    """A list of target/ignore strings, each ``re:`` pattern compiled once to name a bad one."""
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) and e for e in entries):
        raise LayerwiseError(f"{what} must be a list of module names, class names or 're:' patterns, got {entries!r}")
    for e in entries:
        if e.startswith("re:"):
            try:
                re.compile(e[3:])
            except re.error as err:
                raise LayerwiseError(f"{what} entry {e!r} is not a regular expression: {err}") from None
    return list(entries)


@dataclass(frozen=True)
class Override:
    """Settings for the layers ``targets`` match (only the keys given)."""

    targets: tuple[str, ...]
    values: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, item: Any, index: int) -> Override:
        where = f"overrides[{index}]"
        if not isinstance(item, dict):
            raise LayerwiseError(f"{where} must be a mapping with 'targets' and some of {', '.join(OVERRIDE_KEYS)}")
        unknown = sorted(set(item) - {"targets", *OVERRIDE_KEYS})
        if unknown:
            raise LayerwiseError(f"{where}: unknown key(s) {', '.join(unknown)}; an override takes targets and "
                                 f"{', '.join(OVERRIDE_KEYS)}")
        if "targets" not in item:
            raise LayerwiseError(f"{where} has no 'targets'")
        values = {k: item[k] for k in OVERRIDE_KEYS if k in item}
        if not values:
            raise LayerwiseError(f"{where} sets nothing (give some of {', '.join(OVERRIDE_KEYS)})")
        if "options" in values and not isinstance(values["options"], dict):
            raise LayerwiseError(f"{where}: options must be a mapping, got {values['options']!r}")
        return cls(tuple(check_entries(item["targets"], f"{where}.targets")), values)


def parse_overrides(items: Any) -> tuple[Override, ...]:
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise LayerwiseError(f"overrides must be a list of mappings, got {items!r}")
    return tuple(o if isinstance(o, Override) else Override.parse(o, i) for i, o in enumerate(items))


def plan_layers(names_kinds: list[tuple[str, str]], targets, ignore, overrides: tuple[Override, ...]) -> dict[str, dict]:
    """Full layer name → the override values that apply to it, for the layers the run prunes.

    names_kinds : every candidate layer as (full name, class name), over the whole model.
    Raises LayerwiseError for an entry that matches no layer, an override that matches no
    pruned layer, and two overrides that set one key of one layer to different values.
    """
    used: set[str] = set()

    def hit(entry: str, name: str, kind: str) -> bool:
        if matches(entry, name, kind):
            used.add(entry)
            return True
        return False

    plans: dict[str, dict] = {}
    ignored: set[str] = set()
    for name, kind in names_kinds:
        targeted = any([hit(t, name, kind) for t in targets])
        if any([hit(e, name, kind) for e in ignore]):
            ignored.add(name)
        elif targeted:
            plans[name] = {}
    for i, o in enumerate(overrides):
        hits = [name for name, kind in names_kinds if any(matches(t, name, kind) for t in o.targets)]
        pruned = [name for name in hits if name in plans]
        if not pruned:
            why = "ignore leaves them dense" if hits and all(n in ignored for n in hits) else "no target prunes them"
            raise LayerwiseError(f"overrides[{i}] targets {list(o.targets)} match no pruned layer"
                                 + (f" ({len(hits)} match, but {why})" if hits else ""))
        for name in pruned:
            for key, value in o.values.items():
                if key in plans[name] and plans[name][key][1] != value:
                    j = plans[name][key][0]
                    raise LayerwiseError(f"overrides[{j}] and overrides[{i}] both set {key} of {name} "
                                         f"({plans[name][key][1]!r} and {value!r})")
                plans[name][key] = (i, value)
    unused = [e for e in (*targets, *ignore) if e not in used]
    if unused:
        raise LayerwiseError(f"recipe entr{'y' if len(unused) == 1 else 'ies'} {', '.join(map(repr, unused))} match no "
                             "layer of the model's blocks")
    return {name: {k: v for k, (_, v) in plan.items()} for name, plan in plans.items()}


def load_recipe(source: str | dict | None) -> dict:
    """A recipe as a dict: a YAML file's path, or a dict as given (None: empty)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    import yaml

    try:
        with open(source, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise LayerwiseError(f"recipe file {str(source)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise LayerwiseError(f"recipe file {str(source)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LayerwiseError(f"recipe file {str(source)!r} must hold a mapping of settings, got {type(data).__name__}")
    return data
