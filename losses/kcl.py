"""KCL: kernel contrastive losses, in the two published forms.

(a) ``variant="koromilas"`` — Koromilas et al., ICML 2024, arXiv:2405.18045 (code: pakoromilas/DHEL-KCL):

.. math::
    L = -2\\operatorname{mean}_i k(u_i, v_i) + \\gamma\\big[\\operatorname{mean}_{i<j} k(u_i,u_j)
    + \\operatorname{mean}_{i<j} k(v_i,v_j)\\big]

with energies within each view. Kernels of the squared distance ``d^2`` (parameter ``t``, default 2):
``gaussian`` ``exp(-t d^2)``; ``log`` ``-log(1 + t d^2)`` (its energy carries an extra factor 1/2, as in
the code); ``imq`` ``t / sqrt(t^2 + d^2)``; ``riesz`` ``d^-t`` (``-d^|t|`` for ``t < 0``; ``d >= 1e-6``);
``gaussian_riesz`` Riesz energy with Gaussian (``t = 2``) alignment.

(b) ``variant="waida"`` — Waida et al., ECML-PKDD 2023, arXiv:2304.00395 (code: hrkyd/KernelCL):

.. math::
    L = -\\operatorname{mean}_i k(u_i, v_i) + \\lambda\\frac{1}{B(B-1)}\\sum_{i \\ne j} k(u_i, v_j)

with cross-view negatives; ``kernel="gaussian"`` (GKCL, ``exp(-d^2/sigma2)``, ``lam = 8``) or
``"quadratic"`` (QKCL, ``(u.v)^2``, ``lam = 4``).

Both are U-statistics: the expected loss does not depend on the batch size.

Data: pairs ``(z_a, z_b)``; more views are refused. Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("kcl", kernel="gaussian", t=2.0, gamma=16.0)(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmcl.losses.checks import check_choice, check_positive
from mmcl.losses.core import EmbeddingLoss
from mmcl.losses.parts.layouts import Batch
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import ExecutionOptions

KOROMILAS_KERNELS = ("gaussian", "log", "imq", "riesz", "gaussian_riesz")
WAIDA_KERNELS = ("gaussian", "quadratic")


def squared_distance(cos: Tensor) -> Tensor:
    """``||a - b||^2`` of unit vectors from their cosine."""
    return (2 - 2 * cos).clamp(min=0)


@register_loss(
    "kcl",
    paper="KCL, Koromilas et al. 2024 (arXiv:2405.18045); Waida et al. 2023 (arXiv:2304.00395)",
    inputs="pairs",
    search_space={"t": [0.5, 4.0], "gamma": {"log": [1.0, 64.0]}},
)
class KCLLoss(EmbeddingLoss):
    """Kernel contrastive losses (module docstring).

    Args:
        variant: ``"koromilas"`` (energies within each view) or ``"waida"`` (cross-view negatives).
        kernel: koromilas: ``gaussian``, ``log``, ``imq``, ``riesz`` or ``gaussian_riesz``; waida: ``gaussian``
            (GKCL) or ``quadratic`` (QKCL).
        t: (koromilas) the kernels' parameter: ``exp(-t d^2)``, ``-log(1 + t d^2)``, ``t / sqrt(t^2 + d^2)``, the
            Riesz exponent.
        gamma: (koromilas) weight of the energy (uniformity) terms.
        sigma2: (waida) bandwidth of the gaussian kernel ``exp(-d^2 / sigma2)``.
        lam: (waida) weight of the negative term (None: 8 for gaussian, 4 for quadratic).
    """

    pairs_only = "its alignment kernel k(u_i, v_i) and its energies are written for one pair of views"

    def __init__(
        self,
        variant: str = "koromilas",
        kernel: str = "gaussian",
        t: float = 2.0,
        gamma: float = 16.0,
        sigma2: float = 1.0,
        lam: float | None = None,
        **execution: Unpack[ExecutionOptions],
    ) -> None:
        super().__init__(**execution)
        self.variant = check_choice("variant", variant, ("koromilas", "waida"))
        kernels = KOROMILAS_KERNELS if variant == "koromilas" else WAIDA_KERNELS
        self.kernel = check_choice(f"kernel (variant={variant!r})", kernel, kernels)
        self.t = float(t)
        if kernel != "riesz":
            check_positive("t", self.t)
        elif self.t == 0:
            raise ValueError("t (the Riesz exponent s) must be non-zero")
        self.gamma = float(gamma)
        self.sigma2 = check_positive("sigma2", sigma2)
        self.lam = float(lam) if lam is not None else (8.0 if kernel == "gaussian" else 4.0)

    def _koromilas_kernel(self, cos: Tensor, energy: bool) -> Tensor:
        d2 = squared_distance(cos)
        kernel = self.kernel
        if kernel == "gaussian_riesz":
            kernel = "riesz" if energy else "gaussian"
            t = self.t if energy else 2.0
        else:
            t = self.t
        if kernel == "gaussian":
            return torch.exp(-t * d2)
        if kernel == "log":
            return (-0.5 if energy else -1.0) * torch.log1p(t * d2)
        if kernel == "imq":
            return t / torch.sqrt(t**2 + d2)
        distance = torch.sqrt(d2.clamp(min=1e-12)).clamp(min=1e-6)
        return distance.pow(-t) if t > 0 else -distance.pow(-t)

    def _waida_kernel(self, cos: Tensor) -> Tensor:
        if self.kernel == "gaussian":
            return torch.exp(-squared_distance(cos) / self.sigma2)
        return cos**2

    def _off_diagonal_mean(self, local: Tensor, candidates: Tensor, batch: Batch, kernel) -> Tensor:
        values = kernel(local @ candidates.T)
        B, G = values.shape
        own = torch.zeros_like(values, dtype=torch.bool)
        rows = torch.arange(B, device=values.device)
        own[rows, rows + batch.start] = True
        total = values.masked_fill(own, 0).sum()
        return self.global_mean(total, torch.tensor(B * (G - 1), device=values.device))

    def compute(self, batch: Batch) -> Tensor:
        pos_cos = (batch.u * batch.v).sum(-1)
        count = torch.tensor(batch.u.shape[0], device=pos_cos.device)
        if self.variant == "koromilas":
            alignment = self.global_mean(self._koromilas_kernel(pos_cos, energy=False).sum(), count)
            energy = sum(
                self._off_diagonal_mean(local, full, batch, lambda c: self._koromilas_kernel(c, energy=True))
                for local, full in ((batch.u, batch.U), (batch.v, batch.V))
            )
            align_term, energy_term = -2 * alignment, self.gamma * energy
        else:
            alignment = self.global_mean(self._waida_kernel(pos_cos).sum(), count)
            energy = self._off_diagonal_mean(batch.u, batch.V, batch, self._waida_kernel)
            align_term, energy_term = -alignment, self.lam * energy
        if self.compute_diagnostics:
            self.diagnostics = {
                "align_term": align_term.detach(),
                "energy_term": energy_term.detach(),
                "pos_cos_mean": pos_cos.detach().mean(),
                "pos_cos_min": pos_cos.detach().min(),
            }
        return align_term + energy_term
