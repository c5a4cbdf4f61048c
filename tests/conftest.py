from mmcl.contract import ensure_torchvision_ops

# Before any test module imports torchvision or transformers (CPU-only torch: see mmcl/contract/compat.py).
ensure_torchvision_ops()
