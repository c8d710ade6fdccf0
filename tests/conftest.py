"""Shared test set-up: every test runs in its own directory, W&B offline, one thread per process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backbone", action="append", default=[], metavar="MODULE[:CLASS]",
                     help="also run the backbone shape and gradient tests on a backbone of your own, outside "
                          "litlab (importable; repeatable): tests/models/backbones/test_backbones.py")


# The tests that run for a minute or more, longest first. They start first, and the hundreds of
# short tests fill in behind them: with `--dist worksteal` (make test) a core that runs out of work
# takes over half of the other's queue, so no long test is left running alone at the end while the
# other core idles. A name missing here only changes the order, never what runs.
LONGEST = (
    "test_a_ddp_fit_trains_as_one_process_does_and_killed_at_random_moments_resumes_bit_identical",
    "test_simclr_pretraining_beats_training_from_scratch_on_few_labels",
    "test_a_fit_killed_and_preempted_at_random_moments_resumes_bit_identical",
    "test_a_short_pretraining_beats_zlib_on_held_out_text_and_pays_off_in_few_label_fine_tuning",
    "test_with_all_labels_a_patient_consistent_teacher_beats_the_student_alone",
    "test_simclr_killed_at_random_moments_resumes_bit_identical",
    "test_a_small_llama_with_a_bpe_tokenizer_trained_here_beats_zlib_on_held_out_text",
    "test_the_gpu_script_runs_every_step_on_a_cpu_and_sets_each_recipe_against_its_bare_loop",
    "test_two_ddp_processes_train_the_adapters_as_one_process_does",
    "test_a_streamed_fit_stopped_mid_stream_resumes_bit_identical_and_other_worker_counts_are_refused",
    "test_a_sweep_over_learning_rate_and_width_finds_a_recipe_as_good_as_the_shipped_one_and_prunes",
    "test_a_sweep_stopped_and_killed_mid_trial_resumes_each_trial_to_its_uninterrupted_result",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, then the rest of the slow tier, then the fast tests (a stable sort: file order within each)."""
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = getattr(item, "originalname", item.name)
        if name in LONGEST:
            return 0, LONGEST.index(name)
        return (1 if item.get_closest_marker("slow") else 2), 0

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in a fresh directory with W&B offline and no W&B credentials."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # An in-process W&B run leaves its service's address here; a `litlab` subprocess started
    # later would hand its run to that service (owned by this worker) instead of starting its own.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials leak in
    monkeypatch.setattr(sys, "argv", ["litlab"])  # in-process CLIs read only their args=
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def torch_threads() -> None:
    torch.set_num_threads(1)


def run_litlab(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`env` entries are added to this process's environment; a None value removes one."""
    command = [str(Path(sys.executable).with_name("litlab")), *args]
    # WANDB_SERVICE: each subprocess starts its own W&B service, never one an in-process run left behind.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SERVICE": None, **(env or {})}
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={key: value for key, value in environment.items() if value is not None},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def litlab():
    """Run the real `litlab` console script in a subprocess, as a user would."""
    return run_litlab


QUIET = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """`cli("fit", "--config", path, ...)`: a LitlabCLI run in this process, quiet, W&B disabled
    (the W&B tests read real offline runs). Returns the CLI, with its trainer and model."""
    from experiments.cli import LitlabCLI

    monkeypatch.setenv("WANDB_MODE", "disabled")
    return lambda *args: LitlabCLI(args=[*args, *QUIET])


class Interrupted(Exception):
    """Stands for a kill: the process's state is lost, only what is on disk remains."""


@pytest.fixture
def interrupted_fit(cli, monkeypatch: pytest.MonkeyPatch):
    """`interrupted_fit(task, args, when, runs)`: `cli(*args)` with `task.training_step` raising `Interrupted`
    (a kill) at the first batch where `when(self, batch_idx)` holds. Returns the interrupted run's folder:
    the newest `version_*` under `runs`."""

    def run(task, args, when, runs: Path) -> Path:
        train = task.training_step

        def killed(self, batch, batch_idx):
            if when(self, batch_idx):
                raise Interrupted
            return train(self, batch, batch_idx)

        monkeypatch.setattr(task, "training_step", killed)
        with pytest.raises(Interrupted):
            cli(*args)
        monkeypatch.setattr(task, "training_step", train)
        return max(runs.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))

    return run


@pytest.fixture
def litlab_main(capsys: pytest.CaptureFixture):
    """`litlab_main("fit", ...)` -> (exit code, stdout, stderr) of `experiments.cli.main` in this process."""
    from experiments.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def read_wandb_run(run_dir: Path) -> dict:
    """Read an offline W&B run back from its transaction log (`run-<id>.wandb`).

    The log is a LevelDB-style record file: a 7-byte file header, then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type); FULL/LAST chunks end a
    protobuf `Record`. Returns the run's name, project and tags, its config, the history
    rows that were logged, and the artifacts (type and files) it logged.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, header = 32768, 7
    pos, chunks, config, history, run, artifacts = header, [], {}, [], {}, []
    while pos + header <= len(data):
        if block - pos % block < header:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0:
            break
        chunks.append(data[pos + header : pos + header + length])
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            field = record.WhichOneof("record_type")
            if field == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
            if field == "run":
                run = {"name": record.run.display_name, "project": record.run.project, "tags": list(record.run.tags)}
            if field == "artifact":
                manifest = record.artifact.manifest.contents
                artifacts.append({"type": record.artifact.type, "files": [entry.path for entry in manifest]})
            if field in ("config", "run"):
                items = record.config.update if field == "config" else record.run.config.update
                config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return {**run, "config": config, "history": history, "artifacts": artifacts}


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer of 512 ids that `litlab tokenizer` trained on the embedded
    corpus's training split (once per test process), in a folder AutoTokenizer loads."""
    from experiments.tokenizer import main

    folder = tmp_path_factory.mktemp("bpe")
    main(["--vocab_size", "512", "--output", str(folder / "tokenizer"), "--cache_dir", str(folder / "cache")])
    return folder / "tokenizer"


@pytest.fixture
def wandb_run():
    """Reader for an offline W&B run directory: {'name', 'project', 'tags', 'config', 'history'}."""
    return read_wandb_run


# ---- Small datasets written in the real on-disk formats, learnable by class ----


def square_value(label: int) -> int:
    """The brightness of a class's square: distinct for ten classes, so even a pooled feature tells them apart."""
    return 60 + 19 * (label % 10)


def class_images(n: int, classes: int, channels: int, size: int, seed: int = 0) -> tuple:
    """uint8 images (n, size, size, channels) on faint noise, each with its class's square: a
    class-specific place and brightness (`square_value`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, (n, size, size, channels), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(classes)))
    step = size // cells
    for i, label in enumerate(labels):
        r, c = divmod(int(label), cells)
        images[i, r * step : (r + 1) * step, c * step : (c + 1) * step] = square_value(int(label))
    return images, labels


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 200, n_test: int = 100) -> Path:
    """MNIST idx files (uncompressed), where torchvision looks: root/<folder>/raw/."""
    import struct

    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_images(n, 10, 1, 28, seed)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.astype("uint8").tobytes())
    return root


def write_cifar(root: Path, classes: int = 10, n_per_batch: int = 40, n_test: int = 100) -> Path:
    """CIFAR python pickle batches, where torchvision looks: root/cifar-10-batches-py/ or root/cifar-100-python/."""
    import pickle

    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if classes == 10 else "fine_labels"
    test_names = [name for name, _ in cls.test_list]
    for i, (name, _) in enumerate(cls.train_list + cls.test_list):
        n = n_test if name in test_names else n_per_batch
        images, labels = class_images(n, classes, 3, 32, seed=i)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # CIFAR rows: all red, then green, then blue
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels.tolist()}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{c}" for c in range(classes)]}, f)
    return root


def trust_written_cifar(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """torchvision checks CIFAR files against the real files' MD5s; accept the ones the test wrote."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import calculate_md5

    for cls in (CIFAR10, CIFAR100):
        folder = root / cls.base_folder
        if folder.exists():
            md5 = lambda name: calculate_md5(str(folder / name))  # noqa: E731
            monkeypatch.setattr(cls, "train_list", [[name, md5(name)] for name, _ in cls.train_list])
            monkeypatch.setattr(cls, "test_list", [[name, md5(name)] for name, _ in cls.test_list])
            monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16) -> Path:
    """PNG files in class subfolders: root/<class>/<i>.png."""
    from PIL import Image

    images, labels = class_images(classes * per_class, classes, 3, size)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root


def write_captioned_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, jsonl: bool = False) -> Path:
    """PNG files (`write_image_folder`) and a captions file beside them: two captions per image,
    naming its class, with the class as the label; captions.csv, or captions.jsonl."""
    import csv
    import json

    write_image_folder(root, classes, per_class, size)
    rows = []
    for path in sorted(root.rglob("*.png")):
        name = path.parent.name
        file = str(path.relative_to(root))
        rows += [(file, f"a square of {name}", name), (file, f"{name}, a bright square on noise", name)]
    if jsonl:
        lines = [json.dumps({"file": f, "caption": c, "label": label}) for f, c, label in rows]
        (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    else:
        with (root / "captions.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["file", "caption", "label"])
            writer.writerows(rows)
    return root


@pytest.fixture
def datasets_on_disk(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Writers for small MNIST / FashionMNIST / CIFAR / PNG-folder datasets in their real formats,
    and the BPE tokenizer the tests train (`bpe_tokenizer`), trained only where a test asks for it."""

    class Writers:
        @staticmethod
        def bpe_tokenizer() -> Path:
            return request.getfixturevalue("bpe_tokenizer")

        square_value = staticmethod(square_value)
        mnist = staticmethod(write_mnist)
        image_folder = staticmethod(write_image_folder)
        captioned_folder = staticmethod(write_captioned_folder)

        @staticmethod
        def cifar(root: Path, classes: int = 10, **kwargs) -> Path:
            write_cifar(root, classes, **kwargs)
            trust_written_cifar(monkeypatch, root)
            return root

    return Writers
