"""Models: plain-PyTorch backbones and the LightningModules (tasks) that train them.

The tasks are imported on first use (`models.Classifier`), so `models.backbones`,
`models.losses` and `models.errors` stay importable without Lightning.
"""

from importlib import import_module

TASKS = {
    "CLIP": "models.multimodal",
    "Classifier": "models.classifier",
    "Distill": "models.distill",
    "FineTune": "models.finetune",
    "LanguageModel": "models.language_model",
    "SimCLR": "models.pretrain",
    "Task": "models.task",
}

__all__ = list(TASKS)


def __getattr__(name: str):
    if name in TASKS:
        return getattr(import_module(TASKS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
