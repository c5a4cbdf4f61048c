"""Deprecated alias: studies moved to :mod:`mmcl.compare` in mmcl 0.2 (the layer above the engine); this path and
its submodules (``mmcl.engine.compare.statistics``, ...) are removed in mmcl 0.3."""

import sys
import warnings

from mmcl.compare import analysis, cell, claims, plan, records, report, runner, statistics, study

warnings.warn(
    "mmcl.engine.compare moved to mmcl.compare in mmcl 0.2; import from mmcl.compare (the old path is removed in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)
for _module in (analysis, cell, claims, plan, records, report, runner, statistics, study):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
