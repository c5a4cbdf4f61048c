"""The image encoder's export: the backbone in torchvision's own state-dict layout, the projection head, and the
constructor options, as safetensors and JSON (``RUN/model`` at the end of a run)::

    backbone.safetensors  the backbone's state dict. resnet18/resnet50: the keys of torchvision.models.resnet18()
                          (conv1, bn1, layer1..layer4) without fc; vit_tiny/vit: those of
                          torchvision.models.VisionTransformer (conv_proj, class_token, encoder.*) without heads;
                          any other backbone: its module's own keys (mmcl.load_encoder reads it)
    head.safetensors      the projection head, nn.Sequential keys (0.weight, 1.running_mean, ...; empty: none)
    mmcl_export.json      {"modality": "vision", "backbone": {name, in_channels, options, feature_dim, layout,
                          torchvision}, "head": {in_dim, hidden_dim, out_dim, num_layers, batch_norm},
                          "preprocess": {image_size, channels, mean, std, resize}}

torchvision loads the backbone after the changes mmcl makes to its models, which :func:`torchvision_code` writes
out for a given export (and the model card shows): ``fc`` (ResNet) or ``heads`` (ViT) replaced by
``nn.Identity()`` so the model returns features; the CIFAR stem (``conv1`` 3x3 stride 1 and no ``maxpool``); a
first convolution for other than 3 input channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torchvision import models

from mmcl.contract import Encoder
from mmcl.contract.export import load_weights, read_manifest, save_weights, write_manifest
from mmcl.modalities.vision.backbones import build_backbone, build_head

BACKBONE_FILE, HEAD_FILE = "backbone.safetensors", "head.safetensors"
#: The torchvision constructors whose state-dict layout mmcl's backbones keep.
TORCHVISION_RESNETS = ("resnet18", "resnet50")


def export_encoder(
    encoder: Encoder, folder: str | Path, backbone: dict[str, Any], head: dict[str, Any], preprocess: dict[str, Any]
) -> Path:
    """Write ``encoder`` to ``folder``: ``backbone`` = ``{name, in_channels, options}`` as passed to
    :func:`build_backbone`, ``head`` = :func:`build_head`'s arguments, ``preprocess`` = the evaluation transform's
    size, channels, mean, std and resize flag."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(encoder.backbone, folder / BACKBONE_FILE)
    save_weights(encoder.head, folder / HEAD_FILE)
    layout, arguments = torchvision_layout(backbone["name"], encoder.backbone)
    backbone = {**backbone, "layout": layout, "torchvision_arguments": arguments}
    write_manifest(folder, "vision", backbone=backbone, head=head, preprocess=preprocess)
    return folder


def load_encoder(folder: str | Path) -> Encoder:
    """The :class:`Encoder` of an export folder (eval mode): rebuilt from the manifest, weights loaded strictly."""
    manifest = read_manifest(folder)
    spec, head = manifest["backbone"], manifest["head"]
    backbone, _ = build_backbone(spec["name"], spec["in_channels"], **spec["options"])
    backbone.load_state_dict(load_weights(Path(folder) / BACKBONE_FILE))
    projection = build_head(head["in_dim"], head["hidden_dim"], head["out_dim"], head["num_layers"], head["batch_norm"])
    projection.load_state_dict(load_weights(Path(folder) / HEAD_FILE))
    return Encoder(backbone, projection).eval()


def torchvision_layout(name: str, backbone: nn.Module) -> tuple[str, dict[str, int] | None]:
    """(the torchvision constructor whose keys the backbone has, or ``"mmcl"``; a ViT's constructor arguments)."""
    if name in TORCHVISION_RESNETS and isinstance(backbone, models.ResNet):
        return f"torchvision.models.{name}", None
    if isinstance(backbone, models.VisionTransformer):
        arguments = {
            "image_size": backbone.image_size,
            "patch_size": backbone.patch_size,
            "num_layers": len(backbone.encoder.layers),
            "num_heads": backbone.encoder.layers[0].num_heads,
            "hidden_dim": backbone.hidden_dim,
            "mlp_dim": backbone.mlp_dim,
        }
        return "torchvision.models.VisionTransformer", arguments
    return "mmcl", None


def torchvision_code(folder: str | Path) -> str | None:
    """Python that builds the export's backbone with torchvision alone and loads its weights (None: the backbone
    is not a torchvision model). The model returns the features mmcl evaluates (``encoder.features``)."""
    manifest = read_manifest(folder)
    spec = manifest["backbone"]
    channels, options = spec["in_channels"], spec["options"]
    lines = ["import torch", "import torchvision", "from safetensors.torch import load_file", ""]
    if spec["layout"].startswith("torchvision.models.resnet"):
        lines.append(f"backbone = {spec['layout']}()")
        if options.get("cifar_stem"):
            lines += [
                f"backbone.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=3, stride=1, padding=1, bias=False)"
                "  # CIFAR stem",
                "backbone.maxpool = torch.nn.Identity()",
            ]
        elif channels != 3:
            lines.append(
                f"backbone.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)"
            )
        lines.append("backbone.fc = torch.nn.Identity()  # features, not ImageNet classes")
    elif spec["layout"] == "torchvision.models.VisionTransformer":
        arguments = spec["torchvision_arguments"]
        lines.append(
            "backbone = torchvision.models.VisionTransformer("
            + ", ".join(f"{key}={value}" for key, value in arguments.items())
            + ")"
        )
        if channels != 3:
            patch = arguments["patch_size"]
            lines.append(
                f"backbone.conv_proj = torch.nn.Conv2d({channels}, {arguments['hidden_dim']}, "
                f"kernel_size={patch}, stride={patch})"
            )
        lines.append("backbone.heads = torch.nn.Identity()  # the CLS token after the final LayerNorm")
    else:
        return None
    lines += [f"backbone.load_state_dict(load_file({str(Path(folder) / BACKBONE_FILE)!r}))", "backbone.eval()"]
    return "\n".join(lines)


def usage(folder: str | Path) -> str:
    """The model card's Markdown: the backbone with torchvision (where it is one), the whole encoder with mmcl."""
    preprocess = read_manifest(folder)["preprocess"]
    code = torchvision_code(folder)
    size, channels = preprocess["image_size"], preprocess["channels"]
    parts = []
    if code is not None:
        parts.append(f"The backbone with torchvision alone:\n\n```python\n{code}\n```\n")
    parts.append(
        "The backbone and the projection head with mmcl:\n\n```python\nimport mmcl\nimport torch\n\n"
        f"encoder = mmcl.load_encoder({str(folder)!r})\n"
        f"images = torch.zeros(2, {channels}, {size}, {size})  # normalised as below\n"
        "features = encoder.features(images)  # what mmcl's kNN and linear probe score\n"
        "embeddings = encoder(images)  # the projection head's output, which the loss saw\n```\n"
    )
    parts.append(
        f"Inputs: {channels}-channel images of {size}x{size} pixels, scaled to [0, 1] and normalised with mean "
        f"{preprocess['mean']} and std {preprocess['std']}"
        + (" (resized and centre-cropped first)." if preprocess["resize"] else ".")
    )
    return "\n".join(parts)
