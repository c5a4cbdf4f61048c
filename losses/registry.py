"""Registry of named losses: ``build(name, **options)``, ``available()``, and the table of papers and inputs."""

from __future__ import annotations

import inspect
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


_REGISTRY: dict[str, LossInfo] = {}
_ALIASES: dict[str, str] = {}


def register_loss(name: str, *, paper: str, inputs: str, aliases: tuple[str, ...] = ()):
    """Class decorator adding a loss under ``name`` (and ``aliases``), as ``loss.name`` in a config.

    ``paper`` and ``inputs`` (the data the loss needs: ``"pairs"``, ``"pairs + labels"``, ...) are shown by
    ``mmcl losses``; the class's constructor keywords are the loss's options. The engine calls a loss as
    ``loss_fn(z_a, z_b, labels=None, negatives=None)`` and reads ``accepts_labels``, ``diagnostics`` and
    ``set_progress`` (subclass :class:`mmcl.losses.EmbeddingLoss` to have them).
    """

    def wrap(cls: type) -> type:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"loss {name!r} is registered twice")
        _REGISTRY[name] = LossInfo(name, cls, paper, inputs, tuple(aliases))
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


def format_table() -> str:
    """Plain-text table of names, aliases, papers and required inputs (``mmcl losses``)."""
    rows = [("name", "paper", "needs")] + [
        (i.name + (f" (alias {', '.join(i.aliases)})" if i.aliases else ""), i.paper, i.inputs) for i in table()
    ]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
