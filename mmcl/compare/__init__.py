"""``mmcl compare``: compare losses across modalities in one study, with statistics, verdicts and figures; the layer
above the engine.

A study (:mod:`~mmcl.compare.study`) names seeds, losses and tasks; :mod:`~mmcl.compare.plan` says which of its
(task, loss, seed) cells are left; :mod:`~mmcl.compare.runner` runs each through the engine in its own run folder,
through an executor (:mod:`~mmcl.compare.executor`: local worker processes, Ray tasks or a Slurm job array) that
runs it in a worker process (:mod:`~mmcl.compare.worker`, :mod:`~mmcl.compare.cell`), which leaves a typed record
(:mod:`~mmcl.compare.records`); :mod:`~mmcl.compare.progress` follows a running study. The report
(:mod:`~mmcl.compare.report`) is rebuilt from the records alone (:mod:`~mmcl.compare.analysis`,
:mod:`~mmcl.compare.statistics`, :mod:`~mmcl.compare.aggregates`, :mod:`~mmcl.compare.claims`,
:mod:`~mmcl.compare.study_figures`), with the study definition of :mod:`~mmcl.compare.definition` and the earlier
reports of :mod:`~mmcl.compare.history`;
:mod:`~mmcl.compare.figures` also draws ``mmcl plot``'s training curves of runs. The submodules are imported where
used, so that a cell's process does not pay for the report's libraries.
"""
