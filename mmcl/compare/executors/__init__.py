"""The built-in executors of :data:`mmcl.compare.executor.EXECUTORS`, one file each: ``local`` (worker processes on
this machine, a GPU each), ``ray`` (Ray tasks, on a cluster or a local instance) and ``slurm`` (a submitit job
array, or submitit's local mode). Importing them imports neither Ray nor submitit: each does when it starts."""

from mmcl.compare.executors import local, ray, slurm

__all__ = ["local", "ray", "slurm"]
