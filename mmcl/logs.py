"""mmcl's messages: the ``mmcl`` logger on stderr, INFO and above, written through tqdm so that they never break
a progress bar. Any layer may call :func:`configure_logging` (the command line does, and so does a study cell's
process); this module imports nothing of mmcl."""

from __future__ import annotations

import logging
import sys


class _ProgressAwareHandler(logging.Handler):
    """Writes mmcl's messages to stderr without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def configure_logging() -> None:
    """mmcl's messages (``logging.getLogger("mmcl")``) on stderr, INFO and above, once per process."""
    logger = logging.getLogger("mmcl")
    if not any(isinstance(handler, _ProgressAwareHandler) for handler in logger.handlers):
        logger.addHandler(_ProgressAwareHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
