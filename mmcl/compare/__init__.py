"""``mmcl compare``: compare losses across modalities in one study, with statistics, verdicts and figures.

A study (:mod:`~mmcl.engine.compare.study`) names seeds, losses and tasks; every (task, loss, seed) cell runs
through the engine in its own run folder and process (:mod:`~mmcl.engine.compare.runner`,
:mod:`~mmcl.engine.compare.cell`); the report (:mod:`~mmcl.engine.compare.report`) is rebuilt from the cells'
records alone (:mod:`~mmcl.engine.compare.analysis`, :mod:`~mmcl.engine.compare.statistics`,
:mod:`~mmcl.engine.compare.claims`, :mod:`mmcl.engine.plots`). The submodules are imported where used, so that
a cell's process does not pay for the report's libraries.
"""
