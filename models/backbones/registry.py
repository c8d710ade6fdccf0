"""The backbone registry: every backbone with small example configurations per input kind."""

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])
Example = dict[str, Any]

INPUT_KINDS = ("image", "sequence", "tokens")
BACKBONES: dict[str, type[nn.Module]] = {}


def register(**examples: Example | list[Example]) -> Callable[[ModuleT], ModuleT]:
    """`@register(image={...}, sequence=[{...}, {...}])`: each keyword is an input kind the
    backbone accepts, each value the constructor kwargs (one dict or several) to build it for it.
    """
    unknown = set(examples) - set(INPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown input kind(s) {sorted(unknown)}; choose from {', '.join(INPUT_KINDS)}.")

    def decorator(cls: ModuleT) -> ModuleT:
        cls.examples = {kind: [v] if isinstance(v, dict) else list(v) for kind, v in examples.items()}
        BACKBONES[cls.__name__] = cls
        return cls

    return decorator
