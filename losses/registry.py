"""Registry of named losses: ``build(name, **options)``, ``available()``, and the table of papers and inputs."""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass, field

from torch import nn

from mmcl.losses.execution import Execution


@dataclass(frozen=True)
class LossInfo:
    name: str
    cls: type
    paper: str
    inputs: str  # the data the loss needs: "pairs", "pairs + labels", "pairs (+ hard negatives)"
    aliases: tuple[str, ...] = field(default=())
    #: Where a study's tuning searches each option by default (``mmcl compare``'s ``tune:``): ``[low, high]``
    #: (uniform), ``{"log": [low, high]}`` (log-uniform), ``{"int": [low, high]}`` or ``{"choice": [...]}``.
    search_space: dict = field(default_factory=dict)


_REGISTRY: dict[str, LossInfo] = {}
_ALIASES: dict[str, str] = {}


def register_loss(
    name: str, *, paper: str, inputs: str, aliases: tuple[str, ...] = (), search_space: dict | None = None
):
    """Class decorator adding a loss under ``name`` (and ``aliases``), as ``loss.name`` in a config.

    ``paper`` and ``inputs`` (the data the loss needs: ``"pairs"``, ``"pairs + labels"``, ...) are shown by
    ``mmcl losses``; the class's constructor keywords are the loss's options; ``search_space`` says where a study's
    tuning searches them by default (:attr:`LossInfo.search_space`). The engine calls a loss as
    ``loss_fn(z_a, z_b, labels=None, negatives=None)`` and reads ``accepts_labels``, ``diagnostics`` and
    ``set_progress`` (subclass :class:`mmcl.losses.EmbeddingLoss` to have them).
    """

    def wrap(cls: type) -> type:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"loss {name!r} is registered twice")
        _REGISTRY[name] = LossInfo(name, cls, paper, inputs, tuple(aliases), dict(search_space or {}))
        for alias in aliases:
            _ALIASES[alias] = name
        cls.registry_name = name
        return cls

    return wrap


def available() -> list[str]:
    """Registered loss names (aliases not included), in registration order."""
    return list(_REGISTRY)


def info(name: str) -> LossInfo:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        names = ", ".join(available() + sorted(_ALIASES))
        raise ValueError(f"unknown loss {name!r}; available: {names}")
    return _REGISTRY[key]


def options(name: str) -> dict[str, object]:
    """The options ``build(name, ...)`` accepts, with their defaults: the class's keywords, then the execution
    options (:mod:`mmcl.losses.execution`) it takes as ``**execution``."""
    cls = info(name).cls
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    found = {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if any(p.kind == p.VAR_KEYWORD for p in parameters) and hasattr(cls, "execution_options"):
        found.update(Execution.defaults(cls.execution_options))
    return found


def describe_options(name: str) -> dict[str, str]:
    """Each option of :func:`options` with its description, one line: the ``Args:`` entry of the first class of the
    loss's MRO whose docstring has one (a preset inherits ``temperature`` and ``layout`` from
    :class:`~mmcl.losses.ContrastiveLoss`), and :class:`~mmcl.losses.execution.Execution`'s for the execution
    options; ``""`` where none says."""
    documented: dict[str, str] = {}
    for owner in [*info(name).cls.__mro__, Execution]:
        for option, text in argument_descriptions(owner.__doc__ or "").items():
            documented.setdefault(option, text)
    return {option: documented.get(option, "") for option in options(name)}


_ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`")  # :class:`~losses.layouts.Layout` -> Layout


def argument_descriptions(docstring: str) -> dict[str, str]:
    """The entries of a Google-style ``Args:`` section, ``{name: description}`` with each description on one line
    and without reStructuredText markup; ``a, b: text`` describes both; ``**execution`` is left out."""
    lines = inspect.cleandoc(docstring).splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    entries: dict[str, list[str]] = {}
    names: list[str] = []
    indent = None
    for line in (line for line in lines[start:] if line.strip()):
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break  # the next section
        if depth > indent:  # a continuation line
            for name in names:
                entries[name].append(line.strip())
            continue
        entry = re.match(r"\s*([\w, ]+):(?:\s+(.*))?$", line)  # not ``**execution``: left out, and its lines
        names = [name.strip() for name in entry.group(1).split(",")] if entry else []
        for name in names:
            entries[name] = [entry.group(2) or ""]
    return {name: _ROLE.sub(r"\1", " ".join(words).replace("``", "")).strip() for name, words in entries.items()}


def build(name: str, **kwargs) -> nn.Module:
    """Build the registered loss ``name`` with ``kwargs`` overriding its defaults.

    >>> from mmcl import losses
    >>> loss_fn = losses.build("nt_xent", temperature=0.2)
    """
    loss_info = info(name)
    valid = options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for loss {loss_info.name!r}; valid options: {sorted(valid)}")
    return loss_info.cls(**kwargs)


def table() -> list[LossInfo]:
    return list(_REGISTRY.values())


def format_options(name: str, width: int = 100) -> str:
    """``mmcl losses NAME``: the loss's paper and inputs, then each option with its default and description."""
    loss = info(name)
    lines = [f"{loss.name}: {loss.paper}", f"needs: {loss.inputs}", "options:"]
    descriptions = describe_options(name)
    for option, default in options(name).items():
        lines.append(f"  {option} = {default!r}")
        lines.append(textwrap.fill(descriptions[option], width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def format_table() -> str:
    """Plain-text table of names, aliases, papers and required inputs (``mmcl losses``)."""
    rows = [("name", "paper", "needs")] + [
        (i.name + (f" (alias {', '.join(i.aliases)})" if i.aliases else ""), i.paper, i.inputs) for i in table()
    ]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
