"""Model-zoo backbones: any classification model of torchvision or timm, by name, with the
published pretrained weights (downloaded through the library's own cache) or the same
weights from a local file, for clusters without internet.

The model's classifier is removed: `forward` gives the pooled features the classifier read
(`out_features` wide), so litlab's tasks put their own head on it. A local `weights_file`
holds the original model's state dict (`.pth`/`.pt` or `.safetensors`, as torchvision and
timm publish them): its classifier keys are ignored and every other key must match, by
name and shape, or nothing is loaded and the error names the keys.

`preprocessing` says what the weights expect (input size, mean, std) where they say it;
tasks warn when the data is normalised otherwise.
"""

import importlib
import logging
from typing import Any
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.registry import register
from models.checkpoints import load_backbone, read_state_dict
from models.errors import ConfigError

log = logging.getLogger(__name__)  # backbones never import Lightning; tasks report `preprocessing`


def _last_linear(model: nn.Module) -> str:
    """The dotted name of the model's classifier: its last nn.Linear."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no linear classifier to remove; choose a classification model "
            "with a linear head (resnet, convnext, efficientnet, mobilenet, regnet, vit, swin...)."
        )
    return names[-1]


def _load_without(model: nn.Module, path: str, classifier: str | tuple[str, ...]) -> None:
    """Load the original model's state dict from `path`, less its classifier's keys (one head,
    or several, as distilled ViTs have), strictly."""
    heads = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    state = {key: value for key, value in read_state_dict(path).items() if not key.startswith(heads)}
    load_backbone(model, path, prefix="", state=state)
    log.info(f"{type(model).__name__} loaded from {path} (its {', '.join(h + '*' for h in heads)} keys left out).")


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=size < x.shape[-1], align_corners=False)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    # A grey image read as colour: the usual way to give an ImageNet model one-channel data.
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@register(image={"name": "resnet18"})
class Torchvision(nn.Module):
    """A model of `torchvision.models` by `name` (resnet18, resnet50, convnext_tiny,
    efficientnet_b0, mobilenet_v3_small, regnet_y_400mf, vit_b_16, swin_t...).

    weights: torchvision's weights by name ("DEFAULT", "IMAGENET1K_V2", ...), downloaded into
        torch's hub cache on first use; they also say how inputs were normalised.
    weights_file: a local copy of those weights (or any state dict of this model), loaded
        instead of downloading: the way to use them on a machine without internet.
    resize_to: inputs are resized to this square size first (a ViT needs its own, 224).
    One-channel images are repeated to three.
    """

    def __init__(
        self, name: str = "resnet18", weights: str | None = None, weights_file: str | None = None,
        resize_to: int | None = None,
    ) -> None:
        super().__init__()
        from torchvision import models

        if name not in models.list_models(module=models):
            raise ConfigError(
                f"torchvision has no classification model {name!r}; choose one of torchvision.models.list_models(), "
                "e.g. resnet18, resnet50, convnext_tiny, efficientnet_b0, vit_b_16."
            )
        try:
            # A local copy of the weights stands in for the download.
            self.model = models.get_model(name, weights=None if weights_file is not None else weights)
        except (URLError, OSError) as err:
            raise ConfigError(
                f"Could not download torchvision's {name} weights {weights!r} ({err}); on a machine without internet, "
                f"download them elsewhere and set weights_file to the .pth file instead."
            ) from None
        except (KeyError, ValueError) as err:
            raise ConfigError(f"torchvision's {name} has no weights {weights!r} ({err}); try weights: DEFAULT.") from None
        self.classifier = _last_linear(self.model)
        self.out_features = self.model.get_submodule(self.classifier).in_features
        self.model.set_submodule(self.classifier, nn.Identity())
        if weights_file is not None:
            _load_without(self.model, weights_file, self.classifier)
        self.resize_to = resize_to
        self.preprocessing: dict[str, Any] = {}
        if weights is not None:
            transform = models.get_model_weights(name).verify(weights).transforms()
            self.preprocessing = {"input_size": transform.crop_size[0], "mean": tuple(transform.mean),
                                  "std": tuple(transform.std)}
            log.info(f"torchvision {name} weights {weights} expect {self.preprocessing}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_resize(_rgb(x), self.resize_to))  # (B, out_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B, C, H, W), for ResNet-style models and those with `features`."""
        m, x = self.model, _resize(_rgb(x), self.resize_to)
        if hasattr(m, "layer4"):  # ResNet, ResNeXt, Wide ResNet
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        if hasattr(m, "trunk_output"):  # RegNet
            return m.trunk_output(m.stem(x))
        if hasattr(m, "features"):  # VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt
            return m.features(x)
        raise ConfigError(f"Torchvision {type(m).__name__} gives no feature map here; use its pooled features.")


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(
            "The Timm backbone needs the timm package; install it with pip install 'litlab[timm]'."
        ) from None


@register(image={"name": "test_resnet"})
class Timm(nn.Module):
    """A model of timm by `name` (`timm.list_models()`), built with `num_classes=0` so that it
    gives its pooled features; `forward_features` is timm's own (unpooled) one.

    pretrained: timm's published weights, downloaded through its own (Hugging Face) cache.
    weights_file: a local copy of those weights (or any state dict of this model), loaded
        instead of downloading: the way to use them on a machine without internet.
    img_size: passed to models that take it (ViTs), which resample their position embeddings.
    resize_to: inputs are resized to this square size first. One-channel images are repeated to three.
    """

    def __init__(
        self, name: str = "resnet18", pretrained: bool = False, weights_file: str | None = None,
        img_size: int | None = None, resize_to: int | None = None,
    ) -> None:
        super().__init__()
        timm = _timm()
        if not timm.is_model(name):
            raise ConfigError(f"timm has no model {name!r}; see timm.list_models(), e.g. resnet50, convnext_tiny, vit_small_patch16_224.")
        extra = {} if img_size is None else {"img_size": img_size}
        try:
            # A local copy of the weights stands in for the download.
            self.model = timm.create_model(name, pretrained=pretrained and weights_file is None, num_classes=0, **extra)
        except (URLError, OSError) as err:
            raise ConfigError(
                f"Could not download timm's {name} weights ({err}); on a machine without internet, download them "
                "elsewhere and set weights_file to the .safetensors or .pth file instead."
            ) from None
        self.out_features = self.model.num_features
        self.classifier = self.model.pretrained_cfg.get("classifier", "head")
        if weights_file is not None:
            _load_without(self.model, weights_file, self.classifier)
        self.resize_to = resize_to
        cfg = self.model.pretrained_cfg
        self.preprocessing = {"input_size": cfg["input_size"][-1], "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
        if pretrained or weights_file is not None:
            log.info(f"timm {name} weights expect {self.preprocessing}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_resize(_rgb(x), self.resize_to))  # (B, out_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(_resize(_rgb(x), self.resize_to))
