"""``--executor ray``: each cell a Ray task with the resources the study asks for (``resources: {cpus, gpus}``).

``address=HOST:PORT`` (or ``RAY_ADDRESS``) joins a running cluster; without one a local Ray instance is started
with ``--jobs`` CPUs and stopped at the end. The study folder must be on a file system every node sees at the
same path, and every node needs mmcl (``pip install 'mmcl[ray]'``). Ray reuses a task's worker process for the
next task (``warm=true``, the default): imports and dataset caches carry over; ``warm=false`` gives every cell a
fresh worker (Ray's ``max_calls=1``). A task whose worker or node died is run again by Ray (``max_retries``) and
resumes from its checkpoint, as every cell trains with ``train.auto_resume``; one that still fails is recorded as
lost with Ray's reason.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from mmcl.compare.executor import Ended, Executor, Option, count, flag, positive, register_executor, require


def run_cell_task(spec_file: str) -> int:
    """A Ray task: one cell in this worker process (:func:`mmcl.compare.worker.run_here`)."""
    from mmcl.compare.worker import run_here

    return run_here(Path(spec_file))


def check_answers(address: str, timeout: float) -> None:
    """A ``ValueError`` naming ``address`` when nothing answers there within ``timeout`` seconds, or something
    that is not a Ray cluster's GCS (``ray.init`` itself retries for a minute or more)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--executor-option address={address}: expected HOST:PORT (e.g. 10.0.0.1:6379, the "
                         "head node's `ray start --head` address) or ray://HOST:PORT")  # fmt: skip
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"the Ray cluster at address={address} does not answer ({error}, waited up to {timeout:g} "
                         f"s); {FIX}") from None  # fmt: skip
    if address.startswith("ray://"):  # a Ray Client server: ray.init's own handshake tells
        return
    from ray._raylet import GcsClient  # what ray.init connects with; it answers at once where no GCS listens

    try:
        GcsClient(address=address).cluster_id  # noqa: B018 (the call is the check)
    except Exception as error:  # RpcError, or whatever a newer Ray raises for no GCS there
        raise ValueError(f"the Ray cluster at address={address} does not answer as a Ray cluster ({error}); "
                         f"{FIX}") from None  # fmt: skip


FIX = "start it with `ray start --head` there, or fix the address (--executor-option address=HOST:PORT or RAY_ADDRESS)"


@register_executor("ray")
class RayExecutor(Executor):
    """Ray tasks (see the module)."""

    name = "ray"
    queues = True
    options = {
        "address": Option(str, "HOST:PORT of a running Ray cluster (default: RAY_ADDRESS, else a local instance)"),
        "max_retries": Option(count, "runs of a task again after its worker or node died (default 3)"),
        "warm": Option(flag, "true: a Ray worker runs several cells (default); false: a fresh worker per cell"),
        "connect_timeout": Option(positive, "seconds to wait for the cluster's address to answer (default 10)"),
        "local_gpus": Option(count, "GPUs of the local instance (default: those Ray finds on this machine)"),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.address = self.settings.get("address") or os.environ.get("RAY_ADDRESS") or None
        self.refs: dict[Any, tuple[Path, float]] = {}
        self.ray: Any = None
        self.cluster_cpus: float | None = None

    @property
    def cpus(self) -> int:
        return self.resources.cpus or 1

    @property
    def parallelism(self) -> int:
        if self.address is None or self.cluster_cpus is None:
            return max(1, (self.jobs or 1) // self.cpus)
        return max(1, int(self.cluster_cpus // self.cpus))

    @property
    def threads(self) -> int:
        return self.cpus

    def describe(self) -> str:
        where = f"a local Ray instance of {self.jobs or 1} CPU(s)"
        if self.address:
            where = f"the Ray cluster at {self.address}"
        gpus = f", {self.resources.gpus:g} GPU(s)" if self.resources.gpus else ""
        return f"ray executor: {where}, {self.cpus} CPU(s){gpus} per cell, {self.parallelism} cell(s) at once"

    def start(self) -> None:
        self.ray = ray = require("ray", "ray", "ray")
        settings = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address is None:
            gpus = {"num_gpus": self.settings["local_gpus"]} if "local_gpus" in self.settings else {}
            ray.init(address="local", num_cpus=self.jobs or 1, **gpus, **settings)
        else:
            if self.address != "auto":
                check_answers(self.address, self.settings.get("connect_timeout", 10.0))
            try:
                ray.init(address=self.address, **settings)
            except ConnectionError as error:
                raise ValueError(f"the Ray cluster at address={self.address} refused the connection: {error}") from None
            self.cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        self.task = ray.remote(
            num_cpus=self.cpus, num_gpus=self.resources.gpus or 0, max_retries=self.settings.get("max_retries", 3),
            retry_exceptions=False, max_calls=0 if self.settings.get("warm", True) else 1,
        )(run_cell_task)  # fmt: skip

    def capacity(self) -> int:
        return max(0, self.parallelism - len(self.refs))

    def submit(self, spec_files: list[Path]) -> None:
        for spec_file in spec_files:
            self.refs[self.task.remote(str(spec_file))] = (spec_file, time.perf_counter())

    def wait(self, timeout: float) -> list[Ended]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:  # and whatever else ended meanwhile
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        return [self._ended(ref) for ref in ready]

    def _ended(self, ref: Any) -> Ended:
        spec_file, _ = self.refs.pop(ref)
        try:
            returncode = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # its worker or node died (after max_retries), cancelled
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return Ended(spec_file, -1, f"the Ray task failed: {type(error).__name__}: {reason}")
        return Ended(spec_file, returncode, f"the Ray task returned {returncode}")

    def cancel(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
