"""Deprecated alias: run folders moved to :mod:`mmcl.runs` in mmcl 0.2 (the layer below the engine); this module is
removed in mmcl 0.3. Its names come from :mod:`mmcl.runs.folder`, :mod:`~mmcl.runs.lock`, :mod:`~mmcl.runs.record`,
:mod:`~mmcl.runs.results` and :mod:`~mmcl.runs.files`."""

import warnings

from mmcl.runs.files import now, write_atomically
from mmcl.runs.folder import (
    RESUMABLE,
    check_resume_changes,
    config_changes,
    create_run_folder,
    flatten,
    parse_saved_config,
    refused_changes,
)
from mmcl.runs.lock import RunLock, exclusive
from mmcl.runs.record import LIBRARIES, RunRecord, git_commit, library_versions
from mmcl.runs.results import read_evaluations, record_evaluation, truncate_metrics

warnings.warn(
    "mmcl.engine.runs moved to mmcl.runs in mmcl 0.2; import from mmcl.runs (the old path is removed in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "LIBRARIES", "RESUMABLE", "RunLock", "RunRecord", "check_resume_changes", "config_changes", "create_run_folder",
    "exclusive", "flatten", "git_commit", "library_versions", "now", "parse_saved_config", "read_evaluations",
    "record_evaluation", "refused_changes", "truncate_metrics", "write_atomically",
]  # fmt: skip
