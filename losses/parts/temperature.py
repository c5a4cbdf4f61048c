"""Temperature rules: the ``tau`` that divides each logit, always computed from detached quantities.

=============================  ==================================================================
rule                           temperature
=============================  ==================================================================
:class:`FixedTemperature`      a constant ``tau > 0``
:class:`AdaptiveTemperature`   MACL: one scalar per batch, ``tau0 * (1 + alpha * (A - A0))`` (or
                               ``tau0 * alpha**A``), ``A`` the mean detached positive cosine
:class:`DynamicTemperature`    DySTreSS: per entry, ``tau(sg(s))``, a cosine-shaped function of
                               the similarity between ``tau_min`` and ``tau_max``
:class:`LearnableTemperature`  CLIP: ``tau = 1 / exp(t)`` with ``t`` a trained parameter (the only
                               rule with a gradient), clamped as open_clip clamps it
=============================  ==================================================================

A rule is passed as ``temperature=`` to any loss, so ``build("dhel", temperature=AdaptiveTemperature(0.3))``
puts MACL's temperature on DHEL. A dict ``{"rule": "dystress", "tau_min": 0.07, "tau_max": 0.2}`` or a
plain number builds the same objects from a config file; ``{"rule": "learnable", "init": 0.07}`` makes any
loss's temperature a trained parameter (the engine optimises the loss's parameters with the encoder's).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn

from mmcl.losses.checks import check_choice, check_positive, construct


class TemperatureRule(nn.Module):
    """Base class. ``forward(sim, pair_cos)`` returns a 0-dim tensor or a tensor shaped like ``sim``.

    The blockwise path needs a rule in one of two forms, which the rule declares: a scalar rule
    (``per_entry = False``) gives the table's one temperature from the batch statistics alone, so
    ``forward`` on a 0-dim ``sim``; a per-entry rule (``per_entry = True``) gives ``tau_of(s)`` of the
    detached cosine and its :meth:`lower_bound`. :meth:`blockwise_unsupported` says when it has neither.
    """

    batch_stat_scope = "local"
    per_entry = False

    def __init__(self) -> None:
        super().__init__()
        self.diagnostics: dict[str, Tensor] = {}
        self.progress = 0.0

    def forward(self, sim: Tensor, pair_cos: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def floor_logit(self, tau: Tensor) -> Tensor:
        """The smallest possible logit, at cosine -1 (the debiased estimator's floor)."""
        return -1.0 / tau

    def blockwise_unsupported(self) -> str | None:
        """Why the blockwise path cannot evaluate this rule, or None when it can (a subclass that keeps one
        of the two forms above says so by returning None)."""
        return f"temperature rule {type(self).__name__} is not supported"

    def constrain_(self) -> None:
        """Project the rule's parameters back into their allowed range, in place; the engine calls it after each
        optimiser step (open_clip's clamp of ``logit_scale``). Rules without parameters do nothing."""


class FixedTemperature(TemperatureRule):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(self, sim: Tensor, pair_cos: Tensor) -> Tensor:
        tau = torch.tensor(self.temperature, dtype=sim.dtype, device=sim.device)
        self.diagnostics = {"tau": tau}
        return tau

    def blockwise_unsupported(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class AdaptiveTemperature(TemperatureRule):
    """MACL's batch-adaptive temperature (Huang et al., ICML 2023).

    .. math::
        A = \\operatorname{mean}_i \\operatorname{sg}(u_i \\cdot v_i), \\qquad
        \\tau = \\tau_0 (1 + \\alpha (A - A_0)) \\ \\text{(linear)} \\quad\\text{or}\\quad \\tau_0 \\alpha^{A}
        \\ \\text{(exponential, MACLa)}

    No gradient flows through ``A`` or ``tau``. A non-positive result is clamped to ``tau_floor``
    (default ``1e-3 * tau0``) and reported as ``tau_clamped``, or raises with
    ``on_nonpositive_tau="raise"``.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        alpha: float = 0.5,
        A0: float = 0.0,
        form: str = "linear",
        batch_stat_scope: str = "local",
        on_nonpositive_tau: str = "clamp",
        tau_floor: float | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = float(alpha)
        self.A0 = float(A0)
        self.form = check_choice("temperature_form", form, ("linear", "exponential"))
        if self.form == "exponential":
            check_positive("alpha (exponential form)", self.alpha)
        self.batch_stat_scope = check_choice("batch_stat_scope", batch_stat_scope, ("local", "global"))
        self.on_nonpositive_tau = check_choice("on_nonpositive_tau", on_nonpositive_tau, ("clamp", "raise"))
        self.tau_floor = check_positive("tau_floor", tau_floor if tau_floor is not None else 1e-3 * self.temperature)

    def forward(self, sim: Tensor, pair_cos: Tensor) -> Tensor:
        A = pair_cos.detach().mean().to(sim.dtype)
        if self.form == "linear":
            tau = self.temperature * (1 + self.alpha * (A - self.A0))
        else:
            tau = self.temperature * self.alpha**A
        clamped = tau <= 0
        if self.on_nonpositive_tau == "raise" and bool(clamped):
            raise ValueError(
                f"MACL temperature tau0*(1+alpha*(A-A0)) = {float(tau):.4g} <= 0 at alignment A = {float(A):.4f}; "
                "lower alpha, lower A0, or use on_nonpositive_tau='clamp'"
            )
        tau = torch.where(clamped, torch.full_like(tau, self.tau_floor), tau)
        self.diagnostics = {"alignment_A": A, "tau": tau, "tau_clamped": clamped.to(sim.dtype)}
        return tau

    def blockwise_unsupported(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, A0={self.A0}, form={self.form!r}"


class DynamicTemperature(TemperatureRule):
    """DySTreSS's per-entry temperature (Manna et al., IEEE TAI 2025), from the detached cosine ``s``.

    Shapes, with :math:`\\Delta = \\tau_{max} - \\tau_{min}`:

    * ``"cossin"``: :math:`\\tau(s) = \\tau_{min} + \\tfrac12\\Delta(1 - \\cos \\pi s)`;
      :math:`\\tau(0) = \\tau_{min}`, :math:`\\tau(\\pm 1) = \\tau_{max}`.
    * ``"shifted"``: :math:`\\tau_{min} + \\tfrac12\\Delta(1 + \\cos(\\pi (s + o)/c))` for
      :math:`s \\le -o`, else :math:`\\tau_{max}` (``offset`` ``o = -0.4``, ``width`` ``c = 0.7``).
    * ``"cosconst"``: the same with ``o = 0.2, c = 0.8`` (the CIFAR script's shape).
    * ``"const"``: :math:`\\tau_{max}`.

    ``tau_min_schedule="linear_to_max"`` raises ``tau_min`` linearly to ``tau_max`` over training
    (``progress`` from 0 to 1, set by the trainer through ``loss.set_progress``).
    """

    SHAPES = ("cossin", "shifted", "cosconst", "const")
    MONOTONE_KAPPA = (math.pi / 2 - 1) / 2
    per_entry = True

    def __init__(
        self,
        tau_min: float = 0.07,
        tau_max: float = 0.2,
        shape: str = "cossin",
        offset: float | None = None,
        width: float | None = None,
        detach_temperature: bool = True,
        tau_min_schedule: str = "constant",
    ) -> None:
        super().__init__()
        self.tau_min = check_positive("tau_min", tau_min)
        self.tau_max = check_positive("tau_max", tau_max)
        if self.tau_min > self.tau_max:
            raise ValueError(f"DySTreSS needs 0 < tau_min <= tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.shape = check_choice("shape", shape, self.SHAPES)
        default_offset, default_width = {"shifted": (-0.4, 0.7), "cosconst": (0.2, 0.8)}.get(shape, (0.0, 1.0))
        self.offset = float(default_offset if offset is None else offset)
        self.width = check_positive("width", default_width if width is None else width)
        self.detach_temperature = bool(detach_temperature)
        self.tau_min_schedule = check_choice("tau_min_schedule", tau_min_schedule, ("constant", "linear_to_max"))
        if shape in ("cossin", "shifted", "cosconst") and self.tau_min <= self.MONOTONE_KAPPA * (
            self.tau_max - self.tau_min
        ):
            warnings.warn(
                f"DySTreSS with tau_min={tau_min}, tau_max={tau_max}: s/tau(s) is not increasing on [-1, 1] "
                f"(needs tau_min > {self.MONOTONE_KAPPA:.4f}*(tau_max - tau_min)), so the logits can reorder "
                "similarities within a row",
                stacklevel=2,
            )

    def current_tau_min(self) -> float:
        if self.tau_min_schedule == "linear_to_max":
            return self.tau_min + min(max(self.progress, 0.0), 1.0) * (self.tau_max - self.tau_min)
        return self.tau_min

    def tau_of(self, s: Tensor, out: Tensor | None = None) -> Tensor:
        """``tau(s)`` entrywise; ``out`` (shaped like ``s``) receives the result (the blockwise path reuses
        one buffer per block)."""
        lo, hi = self.current_tau_min(), self.tau_max
        half = 0.5 * (hi - lo)
        if self.shape == "const":
            return torch.full_like(s, hi) if out is None else out.fill_(hi)
        if self.shape == "cossin":
            if out is None:
                return lo + half * (1 - torch.cos(math.pi * s))
            # The same operations in the same order, in place: the values are bitwise those above.
            return torch.mul(s, math.pi, out=out).cos_().neg_().add_(1).mul_(half).add_(lo)
        bell = lo + half * (1 + torch.cos(math.pi * (s + self.offset) / self.width))
        return torch.where(s <= -self.offset, bell, torch.full_like(s, hi), out=out)

    def forward(self, sim: Tensor, pair_cos: Tensor) -> Tensor:
        # Per-entry statistics are taken by the loss, over the entries it uses (not self-similarity).
        return self.tau_of(sim.detach() if self.detach_temperature else sim)

    def floor_logit(self, tau: Tensor) -> Tensor:
        return -1.0 / self.tau_of(torch.tensor(-1.0, dtype=tau.dtype, device=tau.device))

    def lower_bound(self) -> float:
        """No entry's temperature is below this (the shift of the self-similarity tiles)."""
        return self.current_tau_min()

    def blockwise_unsupported(self) -> str | None:
        if not self.detach_temperature:
            return "DynamicTemperature(detach_temperature=False) is only supported by the dense path"
        return None

    def extra_repr(self) -> str:
        return f"tau_min={self.tau_min}, tau_max={self.tau_max}, shape={self.shape!r}"


class LearnableTemperature(TemperatureRule):
    """CLIP's learned temperature (Radford et al. 2021, arXiv:2103.00020; open_clip's ``logit_scale``).

    The parameter is the log of the logit scale, ``t = log(1 / tau)``, initialised at ``log(1 / init)``
    (CLIP and open_clip: ``init = 0.07``):

    .. math::
        \\tau = 1 / e^{t}, \\qquad \\ell_{ij} = e^{t} \\, s_{ij}, \\qquad
        \\frac{\\partial L}{\\partial t} = \\sum_{ij} \\frac{\\partial L}{\\partial \\ell_{ij}} \\, \\ell_{ij}

    so the loss's gradient reaches ``t`` through every logit (the only temperature rule that is not detached).
    open_clip clamps in place after each optimiser step, ``logit_scale.clamp_(0, math.log(100))``
    (``src/open_clip_train/train.py``): :meth:`constrain_` does that with ``[log(min_logit_scale),
    log(max_logit_scale)]`` (defaults 1 and 100, i.e. ``0.01 <= tau <= 1``), and the engine calls it after every
    step. The forward pass clamps the same range out of place, so a loss used outside the engine never goes past
    it either; inside the range (always, after the in-place clamp) it is the identity, with its gradient.

    The blockwise path forms the gradient with respect to the logits itself and has no term for ``t``: a loss
    with this rule takes the dense path (silently when ``blockwise=None``).

    Example:
        >>> import torch
        >>> from mmcl import losses
        >>> loss_fn = losses.build("info_nce", temperature={"rule": "learnable", "init": 0.07})
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
        >>> loss.backward()
        >>> [name for name, _ in loss_fn.named_parameters()], round(float(loss_fn.diagnostics["tau"]), 4)
        (['temperature.log_scale'], 0.07)
        >>> loss_fn.temperature.log_scale.grad.shape
        torch.Size([])
    """

    def __init__(self, init: float = 0.07, max_logit_scale: float = 100.0, min_logit_scale: float = 1.0) -> None:
        super().__init__()
        init = check_positive("init", init)
        self.max_logit_scale = check_positive("max_logit_scale", max_logit_scale)
        self.min_logit_scale = check_positive("min_logit_scale", min_logit_scale)
        if not self.min_logit_scale <= 1.0 / init <= self.max_logit_scale:
            raise ValueError(
                f"temperature init={init} gives the logit scale 1/init = {1.0 / init:.4g}, outside [min_logit_scale, "
                f"max_logit_scale] = [{self.min_logit_scale:g}, {self.max_logit_scale:g}]; choose init in "
                f"[{1.0 / self.max_logit_scale:g}, {1.0 / self.min_logit_scale:g}] or widen the bounds"
            )
        self.init = init
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    @property
    def bounds(self) -> tuple[float, float]:
        """``[log(min_logit_scale), log(max_logit_scale)]``: the range of the parameter."""
        return math.log(self.min_logit_scale), math.log(self.max_logit_scale)

    def forward(self, sim: Tensor, pair_cos: Tensor) -> Tensor:
        log_scale = self.log_scale.to(sim.dtype).clamp(*self.bounds)
        tau = torch.exp(-log_scale)
        self.diagnostics = {"tau": tau.detach(), "logit_scale": log_scale.detach().exp()}
        return tau

    @torch.no_grad()
    def constrain_(self) -> None:
        self.log_scale.clamp_(*self.bounds)

    def blockwise_unsupported(self) -> str:
        return "a learnable temperature (its gradient is not formed by the blockwise path)"

    def extra_repr(self) -> str:
        return f"init={self.init}, max_logit_scale={self.max_logit_scale}, min_logit_scale={self.min_logit_scale}"


TEMPERATURE_RULES = {
    "fixed": FixedTemperature,
    "macl": AdaptiveTemperature,
    "dystress": DynamicTemperature,
    "learnable": LearnableTemperature,
}


def as_temperature_rule(temperature: float | str | dict | TemperatureRule) -> TemperatureRule:
    """A rule from a number (fixed), a ``{"rule": name, **options}`` dict (configs), a rule's name (its defaults:
    ``"learnable"``) or a rule object."""
    if isinstance(temperature, TemperatureRule):
        return temperature
    if isinstance(temperature, dict):
        options = dict(temperature)
        name = options.pop("rule", None)
        if name not in TEMPERATURE_RULES:
            raise ValueError(f"temperature dict needs 'rule' set to one of {sorted(TEMPERATURE_RULES)}, got {name!r}")
        return construct("temperature rule", TEMPERATURE_RULES[name], options)
    if isinstance(temperature, str) and temperature in TEMPERATURE_RULES and temperature != "fixed":
        return construct("temperature rule", TEMPERATURE_RULES[temperature], {})  # a rule's name: its defaults
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(
            f"temperature must be a number > 0, a TemperatureRule or a {{'rule': ...}} dict, got {temperature!r}"
        )
    return FixedTemperature(temperature)
