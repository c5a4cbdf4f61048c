"""Run folders, the layer below the engine: everything a run leaves on disk and the one reader of each file.

* :mod:`~mmcl.runs.files`: the folder's file names (spelled nowhere else) and atomic writes;
* :mod:`~mmcl.runs.folder`: the rules (a new folder per run, resume only on request and with checked overrides);
* :mod:`~mmcl.runs.lock`: one process trains in a folder at a time;
* :mod:`~mmcl.runs.record`: ``run.json``, what produced the run and how each session ended;
* :mod:`~mmcl.runs.checkpoints`: atomic checkpoints, rotation, the newest readable one;
* :mod:`~mmcl.runs.results`: ``metrics.jsonl`` and ``eval.json``;
* :mod:`~mmcl.runs.tracking`: experiment trackers (TensorBoard, wandb, ...);
* :mod:`~mmcl.runs.card`: the model card beside the export.

The trainer and the evaluation runner (:mod:`mmcl.engine`) call this layer; it imports neither them nor the
studies above them. Submodules that need torch (checkpoints, the folder rules, trackers, the card) are imported
where used, so that reading a study's records stays light.
"""

from mmcl.runs.files import is_run_folder, now, process_alive, write_atomically
from mmcl.runs.record import RunRecord, library_versions
from mmcl.runs.results import RANDOM_INIT, read_evaluations, read_metrics, record_evaluation

__all__ = [
    "RANDOM_INIT",
    "RunRecord",
    "is_run_folder",
    "library_versions",
    "now",
    "process_alive",
    "read_evaluations",
    "read_metrics",
    "record_evaluation",
    "write_atomically",
]
