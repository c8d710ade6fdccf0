"""The files of a data folder, walked without following a link out of it or back into it.

A link to a folder is never followed: one that leads inside the tree reaches its files twice
(or forever: `b/loop -> ..`), one that leads out of it reads what the user did not point at.
A link to a file is followed only where the file lies inside the tree and is not already in
it under its own name; every link left out is named in one warning. Image folders, caption
files and text folders are all read through here.
"""

import os
from pathlib import Path



def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path`, all links resolved, lies in `root` (itself resolved)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def files_under(tree: str | os.PathLike, skipped: list[str] | None = None) -> list[str]:
    """Every file in `tree`, sorted, each real file once. Links left out are appended to
    `skipped` (as 'path (why)'), or warned about at once when no list is given."""
    own: list[str] = skipped if skipped is not None else []
    files, links = [], []
    for folder, dirs, names in os.walk(tree, followlinks=False):
        for name in sorted(dirs):
            if os.path.islink(os.path.join(folder, name)):
                own.append(f"{os.path.join(folder, name)} (a link to a folder; links to folders are not followed)")
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        for name in names:
            path = os.path.join(folder, name)
            (links if os.path.islink(path) else files).append(path)
    seen = {os.path.realpath(path) for path in files}
    for path in sorted(links):
        real = os.path.realpath(path)
        if not inside(real, tree):
            own.append(f"{path} (a link out of {tree})")
        elif not os.path.isfile(real):
            own.append(f"{path} (a broken link)" if not os.path.exists(real) else f"{path} (a link to a folder)")
        elif real in seen:
            own.append(f"{path} (a link to a file already counted)")
        else:
            seen.add(real)
            files.append(path)
    if skipped is None:
        warn_skipped(own, tree)
    return sorted(files)


def subfolders(tree: str | os.PathLike, skipped: list[str] | None = None) -> list[str]:
    """The names of the real folders directly in `tree`, sorted; links to folders are left out."""
    own: list[str] = skipped if skipped is not None else []
    names = []
    for entry in sorted(os.scandir(tree), key=lambda e: e.name):
        if entry.is_symlink() and entry.is_dir():
            own.append(f"{entry.path} (a link to a folder; links to folders are not followed)")
        elif entry.is_dir(follow_symlinks=False):
            names.append(entry.name)
    if skipped is None:
        warn_skipped(own, tree)
    return names


def warn_skipped(skipped: list[str], tree: str | os.PathLike) -> None:
    if skipped:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"Skipped {len(skipped)} link(s) under {Path(tree)}: " + "; ".join(skipped))
