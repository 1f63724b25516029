"""The network: camera frame in, probability of "water needed" out, preprocessing included.

:class:`WaterNet` is what gets trained and what gets exported. Its ``forward`` takes raw camera
frames exactly as the Pi delivers them (``uint8``, RGB, NHWC, camera resolution) and returns
``p(water_on)`` per frame, so the ONNX graph holds the resize and the normalisation and training
and serving cannot disagree about them.

Training uses the same pieces in two steps: :meth:`Preprocess.resize` once per frame (the
data module caches its output and augments it), then :meth:`WaterNet.logits_from_resized`
(normalise + backbone). Evaluation and serving run ``resize -> normalise -> backbone`` with
the very same functions.

Resizing: a 640x480 frame shrunk ~3x by plain bilinear interpolation aliases (every third
pixel is sampled). ``F.interpolate(antialias=True)`` fixes that but only the dynamo exporter
handles it, so we box-filter first (``avg_pool2d`` by the whole shrink factor) and then
interpolate bilinearly the small rest: both ops export with either exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BACKBONES",
    "Preprocess",
    "WaterNet",
    "build_backbone",
    "build_preprocess",
    "build_model",
    "load_base_weights",
    "weights_checkpoint",
]

# ImageNet statistics: torchvision backbones were designed (and pretrained) for these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _classifier_mobilenet(m: nn.Module) -> None:
    m.classifier[-1] = nn.Linear(m.classifier[-1].in_features, 1)


def _classifier_resnet(m: nn.Module) -> None:
    m.fc = nn.Linear(m.fc.in_features, 1)


# name -> (torchvision constructor name, ImageNet weights enum name, head replacer)
BACKBONES: dict[str, tuple[str, str, Any]] = {
    "mobilenet_v3_small": ("mobilenet_v3_small", "MobileNet_V3_Small_Weights", _classifier_mobilenet),
    "mobilenet_v3_large": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights", _classifier_mobilenet),
    "resnet18": ("resnet18", "ResNet18_Weights", _classifier_resnet),
    "resnet50": ("resnet50", "ResNet50_Weights", _classifier_resnet),
}


def build_backbone(name: str, weights: str = "none") -> nn.Module:
    """A torchvision classifier with a one-logit head. ``weights``: ``none`` (random) or
    ``imagenet`` (torchvision's download; needs the network the first time)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    import torchvision.models as tvm

    ctor_name, weights_enum, replace_head = BACKBONES[name]
    if weights == "imagenet":
        net = getattr(tvm, ctor_name)(weights=getattr(tvm, weights_enum).DEFAULT)
    elif weights in ("none", None):
        net = getattr(tvm, ctor_name)(weights=None)
    else:
        raise ValueError(f"weights must be 'none', 'imagenet' or a checkpoint path, got {weights!r}")
    replace_head(net)
    for m in net.modules():
        # torchvision's MobileNetV3 sets BatchNorm momentum 0.01 (for long ImageNet runs): over a
        # few hundred steps its running statistics barely move from their init, so the network
        # in eval mode answers the same for every frame. 0.1 (PyTorch's default) tracks them.
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return net


class Preprocess(nn.Module):
    """uint8 NHWC RGB frames at the camera resolution -> (crop) -> normalised float NCHW at the model size."""

    def __init__(
        self,
        height: int,
        width: int,
        source_height: int,
        source_width: int,
        crop: tuple[int, int, int, int] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.height, self.width = int(height), int(width)
        self.source_height, self.source_width = int(source_height), int(source_width)
        if min(self.height, self.width, self.source_height, self.source_width) <= 0:
            raise ValueError("image sizes must be positive")
        x0, y0, x1, y1 = (0, 0, self.source_width, self.source_height) if crop is None else (int(v) for v in crop)
        if not (0 <= x0 < x1 <= self.source_width and 0 <= y0 < y1 <= self.source_height):
            raise ValueError(
                f"crop {list(crop or [])} must lie inside the {self.source_width}x{self.source_height} frame"
            )
        self.crop = (x0, y0, x1, y1)
        # Box-filter by the largest whole factor that keeps the image at least the model size.
        self.pool = max(1, min((y1 - y0) // self.height, (x1 - x0) // self.width))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, 3]`` uint8 -> ``[N, 3, height, width]`` float in [0, 1]."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [N, H, W, 3], got {list(frames.shape)}")
        x0, y0, x1, y1 = self.crop
        x = frames[:, y0:y1, x0:x1, :].permute(0, 3, 1, 2).float() / 255.0
        if self.pool > 1:
            x = F.avg_pool2d(x, kernel_size=self.pool, stride=self.pool)
        if x.shape[-2] != self.height or x.shape[-1] != self.width:
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=False)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(frames))


class WaterNet(nn.Module):
    """Preprocessing + backbone; ``forward(uint8 frames) -> p(water_on)`` of shape ``[N]``."""

    def __init__(
        self,
        backbone: str,
        height: int,
        width: int,
        source_height: int = 480,
        source_width: int = 640,
        crop: tuple[int, int, int, int] | None = None,
        weights: str = "none",
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.preprocess = Preprocess(height, width, source_height, source_width, crop)
        self.backbone = build_backbone(backbone, weights)

    def logits_from_resized(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N]`` from :meth:`Preprocess.resize` output (what training feeds)."""
        return self.backbone(self.preprocess.normalize(x)).squeeze(-1)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        return self.logits_from_resized(self.preprocess.resize(frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(frames))


def build_preprocess(model_cfg: dict, data_cfg: dict) -> Preprocess:
    """The preprocessing from the ``model`` (input size, crop) and ``data`` (camera size) groups."""
    return Preprocess(
        int(model_cfg["input_height"]),
        int(model_cfg["input_width"]),
        int(data_cfg["frame_height"]),
        int(data_cfg["frame_width"]),
        crop=tuple(model_cfg["crop"]) if model_cfg.get("crop") else None,
    )


def build_model(model_cfg: dict, data_cfg: dict) -> WaterNet:
    """The network from the ``model`` and ``data`` parameter groups (weights applied separately
    when they name a checkpoint: see :func:`load_base_weights`)."""
    weights = str(model_cfg.get("weights", "none"))
    pre = build_preprocess(model_cfg, data_cfg)
    return WaterNet(
        str(model_cfg["backbone"]),
        pre.height,
        pre.width,
        pre.source_height,
        pre.source_width,
        crop=pre.crop,
        weights=weights if weights in NO_CHECKPOINT else "none",
    )


def checkpoint_backbone(ckpt: dict, path: str | Path) -> str:
    """The backbone a Lightning checkpoint was trained with (its saved hyperparameters)."""
    hp = ckpt.get("hyper_parameters") or {}
    name = (hp.get("model") or {}).get("backbone") if isinstance(hp.get("model"), dict) else None
    if not name:
        raise ValueError(f"{path}: not an autosink checkpoint (no model.backbone in its hyperparameters)")
    return str(name)


def net_state_dict(ckpt: dict) -> dict:
    """The WaterNet weights inside a Lightning checkpoint of LitWaterNet (its ``net.`` entries)."""
    return {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


#: ``model.weights`` values that name no checkpoint
NO_CHECKPOINT = ("none", "imagenet")
#: ``model.weights`` names that conf/model/_base.yaml maps to a file (``model.weights_file``)
NAMED_STARTS = ("base", "production")


def weights_checkpoint(model_cfg: dict) -> Path | None:
    """The checkpoint training starts from: for a named start (``base``, ``production``) the
    file conf/model/_base.yaml maps it to (``model.weights_file``, which the train stage also
    declares as its DVC dependency); ``model.weights`` itself when it is a path; None for
    ``none``/``imagenet``."""
    weights = str(model_cfg.get("weights", "none"))
    if weights in NO_CHECKPOINT:
        return None
    if weights in NAMED_STARTS:
        if not model_cfg.get("weights_file"):
            raise ValueError(f"model.weights={weights} needs model.weights_file (composed from conf/model/_base.yaml)")
        return Path(model_cfg["weights_file"])
    return Path(weights)


def load_base_weights(net: WaterNet, path: str | Path) -> None:
    """Start from a checkpoint's weights (e.g. the production model's); the backbone must match."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: starting checkpoint not found (model.weights names it: base needs `dvc repro base`, "
            "production a promoted model, `autosink promote`); use model.weights=none, or `dvc pull` it"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    trained = checkpoint_backbone(ckpt, path)
    if trained != net.backbone_name:
        raise ValueError(
            f"{path}: checkpoint was trained with backbone {trained!r}, "
            f"but the config asks for {net.backbone_name!r}; use model={trained} "
            "or start from other weights"
        )
    net.load_state_dict(net_state_dict(ckpt))


def count_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))
