"""Imports run one way (DESIGN.md rule 8): no module imports one on a floor above it, and the
bottom floor (backbones and the plain-PyTorch pieces they use) imports no Lightning."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"models.errors", "models.checkpoints", "models.losses", "models.lazy", "models.tokenizer"}
FLOORS = {"models": 1, "datamodules": 2, "callbacks": 3, "experiments": 4}


def floor(module: str) -> int:
    if module.startswith("models.backbones") or module in PLAIN:
        return 0
    return FLOORS[module.split(".")[0]]


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules():
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, path


def test_no_module_imports_one_on_a_floor_above_it():
    ours = dict(modules())
    upward = []
    for name, path in ours.items():
        for target in imports(path):
            known = target if target in ours else target.rsplit(".", 1)[0]
            if known in ours and floor(known) > floor(name):
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_backbones_and_their_plain_pieces_import_no_lightning():
    plain = {name: path for name, path in modules() if floor(name) == 0}
    assert "models.backbones.zoo" in plain and "models.errors" in plain
    lightning = [f"{name} imports {target}" for name, path in plain.items() for target in imports(path)
                 if target.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")]
    assert not lightning, lightning
