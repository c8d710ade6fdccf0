"""How the `litlab` command reads its arguments: jsonargparse's nested reports as one line, the
user's error found inside what a link or a class raised, and a config that names anything but
a class where something is built."""

import inspect
import pydoc
import re
import sys
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from models.backbones.registry import BACKBONES
from models.errors import ConfigError

BOILERPLATE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Expected a path but",
    "Problem with given class_path",
)


def summarize_parser_error(message: str) -> str:
    """One sentence from jsonargparse's nested report: the deepest key, what is wrong, the value given."""
    keys, detail, given, class_path = [], "", "", ""
    for line in message.splitlines():
        text = line.strip().lstrip("- ").strip()
        if path := re.match(r"Problem with given class_path '([^']+)'", text):
            class_path = path.group(1)
        if key := re.match(r'Parser key "([^"]+)"', text):
            keys.append(key.group(1))
            detail = text[key.end() :].strip(" :")
        elif text.startswith("Given value:"):
            given = given or text.removeprefix("Given value:").strip()
        elif text and not text.startswith(BOILERPLATE) and not detail:
            detail = text
    if not keys:
        return detail or message.strip().splitlines()[0]
    where = ".".join(keys)
    if class_path and ("has no attribute" in detail or "No module named" in detail):
        return f"{where}: cannot import class '{class_path}' ({detail}); check the class_path"
    if given and given not in detail and "NestedArg" not in given and not given.startswith("{"):
        detail = f"{detail} (got {given!r})"
    return f"{where}: {detail or 'invalid value'}"


def config_error_in(err: BaseException) -> ConfigError | FileNotFoundError | None:
    """The user's error (a ConfigError, a missing file) `err` is or was raised from, if any."""
    while err is not None:
        if isinstance(err, (ConfigError, FileNotFoundError)):
            return err
        err = err.__cause__ or err.__context__
    return None


KNOWN = ", known subclasses: "
# Packages whose modules are parts of networks, not networks a task is given: a help lists none
# of their classes as a backbone (litlab's zoo backbones wrap the model zoos' networks).
NOT_BACKBONES = ("torch", "torchvision", "torchmetrics", "lightning", "timm", "transformers", "peft",
                 "models", "datamodules", "callbacks", "experiments")


class LitlabHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, but an argument that takes a network (typed `nn.Module`, as every
    task's backbone is) lists litlab's registered backbones and the user's own imported modules
    as its known subclasses, not every module torch and torchvision define (hundreds of lines).
    Any importable `nn.Module` is still accepted."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        head, known, listed = text.rpartition(KNOWN)
        paths = listed.removesuffix(")").split(", ")
        if not known or "torch.nn.Module" not in paths:
            return text
        backbones = set(BACKBONES.values())
        kept = [path for path in paths
                if path.split(".")[0] not in NOT_BACKBONES or pydoc.locate(path) in backbones]
        return f"{head}{KNOWN}{', '.join(kept)})" if kept else f"{head})"


class LitlabArgumentParser(LightningArgumentParser):
    def __init__(self, *args, formatter_class=LitlabHelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives; let it.
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        print(f"litlab: error: {summarize_parser_error(message).rstrip('.')}. See: {prog} --help", file=sys.stderr)
        sys.exit(2)


def check_arguments(args: list[str]) -> None:
    """`check_builds_only_classes` on what the command line gives, before jsonargparse reads it:
    each --config file and each flag whose value is a mapping. (jsonargparse 4.53 fails on a
    function given as a class_path with a message about its own internals; a later one may call it.)"""
    import yaml

    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if not value and i + 1 < len(args) and key.startswith("--") and not args[i + 1].startswith("--"):
            value = args[i + 1]
        if key == "--config" and Path(value).is_file():
            try:
                check_builds_only_classes(yaml.safe_load(Path(value).read_text()))
            except yaml.YAMLError:
                continue  # jsonargparse names what is wrong with the file
        elif key.startswith("--") and value.lstrip().startswith("{"):
            try:
                check_builds_only_classes(yaml.safe_load(value), key[2:].rstrip("+"))
            except yaml.YAMLError:
                continue


def check_builds_only_classes(config: object, where: str = "") -> None:
    """Refuse every `class_path` of a parsed config that names anything but a class, before
    anything is built. jsonargparse checks that a class given for a callable argument (an
    optimizer) builds the expected kind, but calls a *function* named there with the config's
    `init_args` (`{class_path: os.system, init_args: {command: ...}}` would run the command)."""
    if isinstance(config, dict):
        path = config.get("class_path")
        if isinstance(path, str) and not inspect.isclass(target := pydoc.locate(path)) and target is not None:
            kind = "a function" if callable(target) else f"a {type(target).__name__}"
            hint = " (here a torch.optim.Optimizer subclass, such as torch.optim.AdamW)" if where.endswith("optimizer") else ""
            raise ConfigError(
                f"{where}: class_path {path} is {kind}, not a class; a config builds only classes of the kind "
                f"each place expects{hint}."
            )
        for key, value in config.items():
            check_builds_only_classes(value, f"{where}.{key}" if where else key)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            check_builds_only_classes(value, f"{where}[{i}]")


def check_trains_something(trainer) -> None:
    """A fit with no epoch or step to train would end by testing untrained weights."""
    if trainer.get("fast_dev_run"):
        return
    for knob in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(knob) == 0:  # 0 and 0.0 alike
            least = "a fraction above 0 or a count of at least 1" if knob == "limit_train_batches" else \
                "at least 1 (or -1 for no limit)"
            raise ConfigError(
                f"trainer.{knob}=0 trains nothing, and the closing test would score untrained weights; give {knob} "
                f"{least}, or use litlab test or validate to evaluate a checkpoint."
            )
