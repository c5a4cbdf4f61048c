"""mmcl: multimodal contrastive representation learning."""

from mmcl.compat import ensure_torchvision_ops

ensure_torchvision_ops()

__version__ = "0.1.0"
