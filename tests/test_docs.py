"""Every `litlab` command in the fenced code blocks of README.md and docs/*.md parses to a config
with litlab's own parser, and every relative link of those pages leads to a file (and heading).

A trainer command (fit, validate, test, predict, export) is parsed as `litlab ... --print_config`
would parse it: by `LitlabCLI.parse_arguments` on LitlabCLI's own parser, built once and shared by
every command, so nothing is built, trained or read but the config files. The printed config must
then hold each flag's value under the flag's key, so a flag that argparse takes as an abbreviation
of another (`--trainer.max_epoch` for `--trainer.max_epochs`) fails too. `litlab report` is
parsed by its own parser (`experiments.report.parser`), to which `experiments.cli.main` hands it. Files that only a run or another
documented command writes are handled by name, each with its reason, below.
"""

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell"}
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict", "export")
# Commands that are not training runs, each with an argparse parser of its own: `parser()` of the module.
OWN_PARSERS = {"report": "experiments.report", "tokenizer": "experiments.tokenizer", "sweep": "experiments.sweep"}
OPERATORS = {">", ">>", "|", "||", "&&", ";", "&", "<", "2>", "2>&1"}
LAUNCHERS = {"srun", "torchrun", "mpirun"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
UNSPLITTABLE = "<a line the shell cannot split>"

# Placeholders for what a user brings: the command as written must fail on the placeholder alone,
# and with a real stand-in put in its place it must parse.
PLACEHOLDERS = {
    "my_package.MyDataModule": (
        "datamodules.DigitsDataModule",
        "a DataModule of the user's own, which this repository cannot import",
    ),
    "my_nets.Wide": (
        "models.backbones.MLP",  # which has a width too
        "the backbone of docs/layout.md, a module of the user's own (tests/models/backbones/test_own_backbone.py tests it)",
    ),
}
# Config files that a run writes: the test writes what that run would write, the --print_config of
# its fit without the command's own arguments (experiments.runs.COMMAND_ONLY), as its
# LoggerSaveConfigCallback does.
RUN_CONFIGS = {
    "runs/digits-cnn/version_0/config.yaml": (
        ("fit", "--config", "experiments/digits/cnn.yaml"),
        "written by `litlab fit --config experiments/digits/cnn.yaml` (its run is named digits-cnn)",
    ),
    "runs/digits-mlp-lr-width/best.yaml": (
        ("fit", "--config", "experiments/digits/mlp.yaml"),
        "written by `litlab sweep --sweep experiments/sweeps/digits_mlp.yaml`: a trial's run config of mlp.yaml",
    ),
}


@dataclass(frozen=True)
class Command:
    page: str  # relative to the repository root
    line: int
    text: str  # the command as the page writes it, continuation lines joined, trailing comment dropped
    args: tuple[str, ...]  # what follows `litlab`
    writes: str | None = None  # the file its stdout is redirected into, if any

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def shell_lines(page: Path):
    """(line number, logical line) of each command line in the page's bash, sh and plain fenced
    blocks: continuation lines joined, comment lines left out."""
    fence, pending, start = None, "", 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
            pending = ""
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def _is_litlab(word: str) -> bool:
    return Path(word).name == "litlab" or word in ("$L", "${L}")


def litlab_command(page: Path, number: int, line: str) -> Command | None:
    """The litlab command of a shell line, or None when the line runs something else."""
    words = [word for word in line.split() if not ENV_ASSIGNMENT.match(word)]
    if not words or not (_is_litlab(words[0]) or words[0] in LAUNCHERS):
        return None  # another program, a file listing, program output
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as err:  # unbalanced quotes: a command nobody could run
        if "litlab" in line:
            return Command(str(page.relative_to(ROOT)), number, line.strip(), (UNSPLITTABLE, str(err)))
        return None
    writes = None
    for i, token in enumerate(tokens):
        if token in OPERATORS:
            if token in (">", ">>") and i + 1 < len(tokens):
                writes = tokens[i + 1]
            tokens = tokens[:i]
            break
    for i, token in enumerate(tokens):
        if _is_litlab(token):
            prefix = [t for t in tokens[:i] if not ENV_ASSIGNMENT.match(t)]
            if prefix and prefix[0] not in LAUNCHERS:
                return None  # `echo litlab`, say: not a command that runs litlab
            text = " ".join(line.split(" #")[0].split())
            return Command(str(page.relative_to(ROOT)), number, text, tuple(tokens[i + 1 :]), writes)
    return None


def documented_commands() -> list[Command]:
    found = []
    for page in PAGES:
        for number, line in shell_lines(page):
            command = litlab_command(page, number, line)
            if command is not None:
                found.append(command)
    return found


COMMANDS = documented_commands()
# A file a documented command writes with `--print_config > FILE`, for the commands that read it.
PRINTED = {c.writes: c for c in COMMANDS if c.writes and "--print_config" in c.args}


@dataclass
class Parsed:
    code: int  # the exit status
    out: str  # what it printed: the config, as YAML
    err: str


class _Parser:
    """LitlabCLI's parser of each subcommand, built by its first command as `litlab` builds it, then
    reused for that subcommand's commands through LitlabCLI.parse_arguments (check_arguments, then
    jsonargparse). Building it costs as much as parsing; each command is still parsed on its own, once."""

    built: dict[str, tuple] = {}  # subcommand -> (the CLI, its parser)
    cache: dict[tuple[str, ...], Parsed] = {}

    @classmethod
    def parse(cls, argv: list[str]) -> None:
        from experiments.cli import LitlabCLI

        if argv[0] in cls.built:
            cli, parser = cls.built[argv[0]]
            cli._args = argv
            cli.parse_arguments(parser, argv)
            return

        class KeepParser(LitlabCLI):
            def parse_arguments(self, parser, args) -> None:
                cls.built[argv[0]] = self, parser
                super().parse_arguments(parser, args)

        KeepParser(args=argv)


def parse(args: tuple[str, ...]) -> Parsed:
    """Parse `litlab ARGS` as `litlab ARGS --print_config` would, without running anything.
    Run from the repository root, so that the pages' relative paths mean what they say."""
    if args in _Parser.cache:
        return _Parser.cache[args]
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from experiments.cli import main
    from models.errors import ConfigError

    helps = any(arg in ("-h", "--help") or arg.endswith(".help") for arg in args)
    argv = list(args) if "--print_config" in args or helps or args[0] in OWN_PARSERS else [*args, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if argv[0] in OWN_PARSERS:  # its own argparse parser, which main() hands the arguments to
                parsed = importlib.import_module(OWN_PARSERS[argv[0]]).parser().parse_args(argv[1:])
                print(yaml.safe_dump(vars(parsed)))
                raise SystemExit(0)
            if argv[0] not in TRAINER_SUBCOMMANDS:
                main(argv)  # anything else is refused there
            else:
                _Parser.parse(argv)
        code = 1  # --print_config exits; returning means it printed nothing
        err.write("the command parsed but did not print its config")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except (ConfigError, MisconfigurationException, FileNotFoundError) as error:  # what main() reports
        code = 2
        err.write(f"litlab: error: {error}")
    parsed = Parsed(code, out.getvalue(), err.getvalue())
    _Parser.cache[args] = parsed
    return parsed


def _flags(args: tuple[str, ...]):
    """(key, value, appends) of each `--key=value` / `--key value` flag."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            elif not eq:
                value = None
            yield key.removesuffix("+"), value, key.endswith("+")
        i += 1


def _lookup(config, key: str):
    """The value under a dotted flag key, through class_path/init_args and into the last list item
    (flags after `--trainer.callbacks+=X` set the appended callback's arguments)."""
    node = config
    for part in key.split("."):
        if isinstance(node, list) and node:
            node = node[-1]
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and isinstance(node.get("init_args"), dict) and part in node["init_args"]:
            node = node["init_args"][part]
        else:
            raise KeyError(key)
    return node


def _same(printed, value: str) -> bool:
    if isinstance(printed, dict) and "class_path" in printed:
        return printed["class_path"] == value
    try:
        given = yaml.safe_load(value)
    except yaml.YAMLError:
        given = value
    return printed == given or str(printed) == value


def check(args: tuple[str, ...]) -> list[str]:
    """What is wrong with `litlab ARGS`: empty when it parses and each flag's value is in its config."""
    if not args:
        return ["no subcommand"]
    if args[0] == UNSPLITTABLE:
        return [f"the shell cannot split this line: {args[1]}"]
    parsed = parse(args)
    if parsed.code != 0:
        return [f"exit status {parsed.code}: {parsed.err.strip()[-1500:]}"]
    if any(arg in ("-h", "--help") or arg.endswith(".help") for arg in args):
        return [] if parsed.out.strip() else ["printed no help"]
    try:
        config = yaml.safe_load(parsed.out)
    except yaml.YAMLError as error:
        return [f"printed no YAML: {error}"]
    if not isinstance(config, dict):
        return [f"printed no YAML mapping: {parsed.out[:300]!r}"]
    if args[0] == "report":
        positional = [a for a in args[1:] if not a.startswith("--")]
        return [] if config.get("runs") == positional else [f"runs is {config.get('runs')!r}"]
    if args[0] in ("tokenizer", "sweep"):
        return [f"--{key}={value} parsed as {config.get(key)!r}" for key, value, _ in _flags(args)
                if not _same(config.get(key), value) and not (key == "config" and value in config["config"])]
    problems = [f"the printed config lacks {key}" for key in ("model", "data", "trainer") if not config.get(key)]
    for key, value, appends in _flags(args):
        if key in ("config", "print_config") or value is None:
            continue
        try:
            printed = _lookup(config, key)
        except KeyError:
            problems.append(f"--{key} is not a key of the printed config")
            continue
        if appends:
            if not any(isinstance(item, dict) and item.get("class_path") == value for item in printed or []):
                problems.append(f"--{key}+={value} is not in the printed {key}")
        elif not _same(printed, value):
            problems.append(f"--{key}={value} printed as {printed!r}")
    return problems


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path


def _write_printed(command: Command, folder: Path) -> Path:
    """The file `command` writes with --print_config, written into `folder`."""
    parsed = parse(command.args)
    assert parsed.code == 0, f"{command.id} (which writes {command.writes}) fails: {parsed.err}"
    path = folder / Path(command.writes).name
    path.write_text(parsed.out)
    return path


def _write_run_config(path: str, folder: Path) -> Path:
    from experiments.runs import COMMAND_ONLY

    fit, reason = RUN_CONFIGS[path]
    parsed = parse(fit)
    assert parsed.code == 0, f"{path}, {reason}: that fit does not parse: {parsed.err}"
    config = {k: v for k, v in yaml.safe_load(parsed.out).items() if k not in COMMAND_ONLY}
    written = folder / "run" / Path(path).name
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(yaml.safe_dump(config, sort_keys=False))
    return written


def test_the_pages_document_litlab_commands():
    assert len(COMMANDS) > 50, [c.id for c in COMMANDS]
    assert {c.args[0] for c in COMMANDS} >= {*TRAINER_SUBCOMMANDS, "report"}


@pytest.mark.slow  # a parse each, a fifth of a second: a third of the fast tier's time, left to make test
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_every_documented_command_parses(command: Command, at_root: Path):
    args = list(command.args)
    # Config files that exist only once a run, or another documented command, has written them.
    for i, arg in enumerate(args):
        name = arg.removeprefix("--config=")
        if not (arg.startswith("--config=") or (i and args[i - 1] == "--config")) or (ROOT / name).exists():
            continue
        if name in PRINTED:
            path = _write_printed(PRINTED[name], at_root)
        elif name in RUN_CONFIGS:
            path = _write_run_config(name, at_root)
        else:
            pytest.fail(f"{command.id}: --config {name} does not exist, and no documented command writes it")
        args[i] = f"--config={path}" if arg.startswith("--config=") else str(path)
    for placeholder, (stand_in, reason) in PLACEHOLDERS.items():
        if any(placeholder in arg for arg in args):
            as_written = parse(tuple(args))
            assert as_written.code != 0 and placeholder.split(".")[0] in as_written.err, (
                f"{placeholder} ({reason}) should be what fails: {as_written.err}")
            args = [arg.replace(placeholder, stand_in) for arg in args]
    problems = check(tuple(args))
    assert not problems, f"{command.id}\n  " + "\n  ".join(problems)


def test_a_mistyped_flag_fails(at_root: Path):
    cnn = ("fit", "--config", "experiments/digits/cnn.yaml")
    assert check(cnn) == []
    assert check((*cnn, "--trainer.max_epochs=3")) == []
    # Not a flag at all: the parser refuses it.
    (problem,) = check((*cnn, "--trainer.max_epochz=3"))
    assert "unrecognized arguments: --trainer.max_epochz=3" in problem
    # argparse takes a prefix of one flag as that flag; the printed config shows it under another key.
    (problem,) = check((*cnn, "--trainer.max_epoch=3"))
    assert "--trainer.max_epoch is not a key of the printed config" in problem
    (problem,) = check((*cnn, "--model.backbone.activation=stepx"))
    assert "model.backbone.activation" in problem
    assert check(("fitt", "--config", "experiments/digits/cnn.yaml")) != []
    assert check(("report",)) != []  # a run is required
    assert check(("fit", "--help")) == [] and check(("fit", "--model.help", "models.Classifier")) == []


HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (outside code blocks)."""
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := HEADING.match(line)):
            text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
