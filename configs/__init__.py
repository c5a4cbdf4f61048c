"""Configs shipped with mmcl, named without a path (``mmcl pretrain graph/mutag``); ``mmcl configs`` lists them."""
