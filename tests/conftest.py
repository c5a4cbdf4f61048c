import mmcl.compat

# Before any test module imports torchvision or transformers (CPU-only torch: see mmcl/compat.py).
mmcl.compat.ensure_torchvision_ops()
