"""How the `litlab` command reads its arguments: jsonargparse's nested reports as one line, and
the user's error found inside what a link or a class raised."""

import re
import sys

from lightning.pytorch.cli import LightningArgumentParser

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


class LitlabArgumentParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives; let it.
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        print(f"litlab: error: {summarize_parser_error(message).rstrip('.')}. See: {prog} --help", file=sys.stderr)
        sys.exit(2)
