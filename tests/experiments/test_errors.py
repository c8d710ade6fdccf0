"""A user's mistake gets one clear line naming it, no traceback, and a non-zero exit; a bug
in litlab's own code keeps its traceback."""

import re
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

CNN = str(DEFAULTS.parent / "digits" / "cnn.yaml")


def one_error_line(code: int, err: str, message: str) -> None:
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("litlab: error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "missing.yaml"], "config: File does not exist: '/"),
        (["--config", CNN, "--trainer.max_epochz=3"], "unrecognized arguments: --trainer.max_epochz"),
        (["--config", CNN, "--trainer.max_epochs=abc"], "trainer.max_epochs: Expected a <class 'int'> (got 'abc')"),
        (
            ["--config", CNN, "--model.init_args.backbone=models.backbones.Resnet"],
            "model.backbone: cannot import class 'models.backbones.Resnet'",
        ),
        (["--config", CNN, "--model.init_args.backbone.init_args.activation=swish"], "model.backbone.activation"),
        (["--config", CNN, "--data.init_args.label_fraction=0"], "label_fraction must be in (0, 1]; got 0.0."),
        (["--config", CNN, "--data.init_args.batch_size=0"], "batch_size must be at least 1; got 0."),
        (["--config", CNN, "--model.init_args.backbone.init_args.channels=[]"], "CNN channels must name at least one"),
        (["--config", CNN, "--model.schedule=onecycle", "--model.warmup_fraction=0"], "onecycle schedule must rise"),
        (["--config", CNN, "--ckpt_path=missing.ckpt"], "Checkpoint file not found: missing.ckpt"),
        (["--config", CNN, "--ckpt_path=last"], "--ckpt_path last: no run under runs/digits-cnn holds a last.ckpt"),
        (["--config", CNN, "--model.optimizer.lr=-0.1"], "model.optimizer: Invalid learning rate: -0.1"),
        (["--config", CNN, "--model.optimizer.lr=1e6"], "The training loss became nan at step"),
        (["--config", CNN, "--trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing, and the closing test"),
        (["--config", CNN, "--trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
        (["--config", CNN, "--trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0 trains nothing"),
    ],
    ids=[
        "missing-file", "unknown-key", "wrong-type", "no-such-class", "bad-choice", "bad-value", "zero-batch",
        "bad-backbone", "onecycle-without-warmup", "no-checkpoint", "no-last-checkpoint", "negative-lr", "diverging-lr",
        "zero-epochs", "zero-steps", "zero-train-batches",
    ],
)
def test_user_error_is_one_clear_line(litlab_main, monkeypatch, args, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    one_error_line(*litlab_main("fit", *args)[::2], message)
    # A refused run leaves no empty run directory behind.
    assert not [d for d in Path("runs").glob("*/version_*") if not any(d.iterdir())]


@pytest.mark.parametrize(
    "flag, message",
    [
        ('--model.optimizer={"class_path": "os.system", "init_args": {"command": "touch ran"}}',
         "model.optimizer: class_path os.system is a function, not a class; a config builds only classes of the kind "
         "each place expects (here a torch.optim.Optimizer subclass, such as torch.optim.AdamW)."),
        ('--trainer.callbacks+={"class_path": "os.system", "init_args": {"command": "touch ran"}}',
         "trainer.callbacks: class_path os.system is a function, not a class"),
        ("--config=evil.yaml", "model.init_args.optimizer: class_path os.system is a function, not a class"),
        ("--model.optimizer=os.system", "Expected 'os.system' to be a function that returns <class 'Optimizer'>"),
        ("--model.optimizer=subprocess.Popen", "Expected 'subprocess.Popen' to be a subclass of <class 'Optimizer'>"),
    ],
    ids=["function-as-optimizer", "function-as-callback", "in-a-config-file", "function-path-as-optimizer",
         "class-of-another-kind"],
)
def test_a_config_builds_only_what_its_place_expects_and_runs_nothing_else(litlab_main, monkeypatch, flag, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    Path("evil.yaml").write_text("model:\n  init_args:\n    optimizer:\n      class_path: os.system\n"
                                 "      init_args: {command: touch ran}\n")
    one_error_line(*litlab_main("fit", "--config", CNN, flag)[::2], message)
    assert not Path("ran").exists() and not Path("runs").exists()


@pytest.mark.parametrize("subcommand", ["test", "predict", "validate"])
def test_evaluating_without_a_checkpoint_is_refused(litlab_main, monkeypatch, subcommand):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    one_error_line(*litlab_main(subcommand, "--config", CNN)[::2], f"litlab {subcommand} needs --ckpt_path")


@pytest.mark.slow  # three epochs
def test_a_diverging_run_keeps_its_earlier_checkpoints_and_never_saves_non_finite_weights(litlab_main, monkeypatch):
    import torch

    from models.classifier import Classifier

    finite_loss = Classifier.loss

    def diverges_in_epoch_two(self, logits, y):
        loss = finite_loss(self, logits, y)
        return loss * float("nan") if self.training and self.current_epoch == 2 else loss

    monkeypatch.setattr(Classifier, "loss", diverges_in_epoch_two)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # 20 steps an epoch: the first non-finite loss is the first step of epoch 2.
    one_error_line(*litlab_main("fit", "--config", CNN, "--trainer.max_epochs=4")[::2], "at step 40 (epoch 2)")
    folder = Path("runs/digits-cnn/version_0/checkpoints")
    files = [p for p in folder.glob("*.ckpt") if not p.is_symlink()]
    assert files and all("epoch000" in p.name or "epoch001" in p.name for p in files)
    last = torch.load(folder / "last.ckpt", weights_only=True)  # the state at the end of epoch 1
    assert last["epoch"] == 1 and last["global_step"] == 40
    for path in files:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_unknown_key_in_a_config_file_names_the_key(litlab_main, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lerning_rate: 0.1\n")
    one_error_line(*litlab_main("fit", "--config", CNN, "--config", str(bad))[::2], "model: Option 'lerning_rate' is not accepted")


def test_data_outside_the_contract_is_named(litlab_main, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_data.py").write_text(
        "import lightning as L\n\nclass Images(L.LightningDataModule):\n    input_shape = (1, 8, 8)\n"
    )
    code, _, err = litlab_main("fit", "--config", CNN, "--data=my_data.Images")
    one_error_line(code, err, "Images does not follow litlab's data contract: it has no num_classes, vocab_size, example_input")


def test_a_bug_while_building_classes_keeps_its_traceback(litlab_main, monkeypatch):
    # A TypeError or ValueError inside our own constructors is a bug, not a configuration mistake.
    def broken(name: str):
        raise TypeError("a bug in litlab")

    monkeypatch.setattr("models.backbones.cnn.make_activation", broken)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(Exception) as raised:  # jsonargparse may wrap it; the chain still holds the bug
        litlab_main("fit", "--config", CNN, "--trainer.max_steps=1")
    chain, err = [], raised.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, TypeError) and str(e) == "a bug in litlab" for e in chain)


@pytest.mark.slow
def test_the_installed_command_exits_with_status_2_and_one_line(litlab):
    # The one subprocess test: the console script itself, as a shell sees it.
    result = litlab("fit", "--config", CNN, "--data.init_args.label_fraction=0", timeout=120)
    one_error_line(result.returncode, result.stderr, "label_fraction must be in (0, 1]; got 0.0.")


@pytest.mark.slow
def test_the_command_starts_without_importing_what_only_some_runs_use_and_its_help_names_the_tasks():
    # W&B, timm, ONNX, the sweeps and scikit-learn (the digits' loader and stratified
    # splits) load when a run uses them, not for a --help or a typo: not at import, and not once
    # the parse has read the default config, whose logger is W&B's.
    import subprocess
    import sys

    # (Not transformers: where it is installed, torchmetrics imports it, and Lightning imports torchmetrics whole.)
    optional = ("wandb", "timm", "onnx", "onnxruntime", "peft", "optuna", "sklearn", "datasets")
    loaded = f"print([m for m in {optional!r} if m in sys.modules])"
    script = (f"import sys, experiments.cli; {loaded}\n"
              "for args in (['fit', '--help'], ['fit', '--model.help', 'models.Classifier'],\n"
              f"             ['fit', '--config', {CNN!r}, '--trainer.max_epochz=3']):\n"
              "    try:\n        experiments.cli.main(args)\n    except SystemExit:\n        print('=====')\n"
              f"{loaded}\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == lines[-1] == "[]", done.stdout[:2000] + done.stderr[-2000:]
    assert "unrecognized arguments: --trainer.max_epochz=3" in done.stderr
    # Yet a help names litlab's tasks among --model's known subclasses, and its backbones among a
    # backbone's (not the hundreds of modules torch and torchvision define), though they load on first use.
    fit_help, classifier_help = done.stdout.split("=====")[:2]
    model = " ".join(fit_help.split("\n  --model CONFIG")[1].split("--data")[0].split())
    assert all(f"models.{task}" in model for task in ("Classifier", "SimCLR", "LanguageModel", "CLIP")), model
    backbone = "".join(classifier_help.split("\n  --model.backbone BACKBONE")[1].split("\n  --")[0].split())
    known = backbone.split("knownsubclasses:")[1].rstrip(")").split(",")
    assert set(known) == {f"models.backbones.{name}" for name in
                          ("MLP", "CNN", "ResNet", "RNN", "Transformer", "Torchvision", "Timm", "HuggingFace")}, backbone[:3000]
    assert len(classifier_help.splitlines()) < 80


DISTILL = str(DEFAULTS.parent / "digits" / "distill.yaml")


def saved_classifier(path, backbone, classes: int) -> str:
    import torch

    from models import Classifier

    backbone.eval()(torch.zeros(2, 1, 8, 8))  # size the lazy first layer
    torch.save(Classifier(backbone=backbone, num_classes=classes).state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: __import__("models.backbones", fromlist=["CNN"]).CNN(channels=[32, 64]), "classifies 5 classes but the data has 10"),
        (lambda: __import__("models.backbones", fromlist=["MLP"]).MLP(width=32), "does not match CNN under prefix 'backbone.'"),
    ],
    ids=["class-count", "architecture"],
)
def test_a_wrong_teacher_is_one_clear_line(litlab_main, monkeypatch, tmp_path, make, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    classes = 5 if "classes" in message else 10
    teacher = saved_classifier(tmp_path / "teacher.pt", make(), classes)
    one_error_line(*litlab_main("fit", "--config", DISTILL, f"--model.teacher_checkpoint={teacher}")[::2], message)


def test_a_checkpoint_never_chooses_what_is_built(litlab_main, monkeypatch, tmp_path):
    # Lightning's CLI would import the class a checkpoint's hyperparameters name, running its
    # module's code; litlab builds what the config says and takes only weights from the file.
    import torch

    from models import Classifier
    from models.backbones import MLP

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "planted.py").write_text("import pathlib\npathlib.Path('imported.txt').write_text('ran')\nclass Model: ...\n")
    model = Classifier(backbone=MLP(depth=2, width=256, dropout=0.2), num_classes=10)
    model.backbone(torch.zeros(2, 1, 8, 8))
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": "planted.Model"},
                  "pytorch-lightning_version": "2.6.6"}
    torch.save(checkpoint, tmp_path / "planted.ckpt")
    code, out, err = litlab_main("test", "--config", str(DEFAULTS.parent / "digits" / "mlp.yaml"),
                                 f"--ckpt_path={tmp_path / 'planted.ckpt'}", "--trainer.enable_progress_bar=false")
    assert code == 0, err[-2000:]
    assert not (tmp_path / "imported.txt").exists() and "test/acc = " in out


MLP_YAML = str(DEFAULTS.parent / "digits" / "mlp.yaml")
RNN_YAML = str(DEFAULTS.parent / "digits" / "rnn.yaml")
TRANSFORMER_YAML = str(DEFAULTS.parent / "digits" / "transformer.yaml")
SIMCLR_YAML = str(DEFAULTS.parent / "digits" / "simclr.yaml")
GPT_YAML = str(DEFAULTS.parent / "text" / "gpt_small.yaml")
FINETUNE_YAML = str(DEFAULTS.parent / "digits" / "finetune.yaml")


@pytest.mark.parametrize(
    "config, flag, message",
    [
        (MLP_YAML, "--model.backbone.width=0", "MLP width must be positive; got 0."),
        (MLP_YAML, "--model.backbone.dropout=1.5", "MLP dropout must be in [0, 1); got 1.5."),
        (CNN, "--model.backbone.channels=[32,0]", "CNN channels[1] must be positive; got 0."),
        (CNN, "--model.backbone.kernel_size=0", "CNN kernel_size must be positive; got 0."),
        (RNN_YAML, "--model.backbone.hidden_size=0", "RNN hidden_size must be positive; got 0."),
        (RNN_YAML, "--model.backbone.num_layers=0", "RNN num_layers must be positive; got 0."),
        (TRANSFORMER_YAML, "--model.backbone.heads=0", "Transformer heads must be positive; got 0."),
        (TRANSFORMER_YAML, "--model.backbone.dropout=-0.1", "Transformer dropout must be in [0, 1); got -0.1."),
        (CNN, "--model.label_smoothing=1.0", "Classifier label_smoothing must be in [0, 1); got 1.0."),
        (CNN, "--model.optimizer.weight_decay=-1", "model.optimizer: Invalid weight_decay value: -1"),
        (CNN, "--data.val_fraction=0", "val_fraction must be between 0 and 1 (exclusive); got 0.0."),
        (CNN, "--data.test_fraction=1", "test_fraction must be between 0 and 1 (exclusive); got 1.0."),
        (CNN, "--data.num_workers=-1", "num_workers must be 0 (load in the main process) or more; got -1."),
        (CNN, "--data.augment.rotation=200", "augment.rotation must be between 0 and 180 degrees; got 200.0."),
        (SIMCLR_YAML, "--model.temperature=0", "temperature must be positive; got 0.0."),
        (SIMCLR_YAML, "--model.knn_k=-1", "SimCLR knn_k must be 0 (no k-NN monitor) or more; got -1."),
        (FINETUNE_YAML, "--model.backbone_lr_scale=0", "backbone_lr_scale must be positive; got 0.0."),
        (DISTILL, "--model.alpha=2", "alpha weighs the soft targets against the labels and must be in [0, 1]"),
        (CNN, "--trainer.callbacks.every_n_train_steps=0", "LatestCheckpoint every_n_train_steps must be positive"),
        (GPT_YAML, "--data.block_size=0", "TextDataModule block_size must be positive; got 0."),
        (GPT_YAML, "--data.mask_fraction=1.5", "TextDataModule mask_fraction must be in [0, 1); got 1.5."),
    ],
    ids=lambda value: value.split("--")[-1] if isinstance(value, str) and value.startswith("--") else None,
)
def test_an_out_of_range_number_is_one_clear_line(litlab_main, monkeypatch, config, flag, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    one_error_line(*litlab_main("fit", "--config", config, flag)[::2], message)


def test_a_text_file_that_is_not_utf8_is_one_clear_line_and_leaves_no_run(litlab_main, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "notes.txt").write_bytes("un café crème, s'il vous plaît".encode("latin-1"))
    code, _, err = litlab_main("fit", "--config", GPT_YAML, f"--data.source={tmp_path / 'notes.txt'}",
                               "--data.split_by=position")
    one_error_line(code, err, "notes.txt is not UTF-8 text (byte 0xe9 at offset 6); convert it")
    assert not list(Path("runs").glob("*/version_*"))


def test_a_damaged_or_mismatched_checkpoint_is_one_clear_line_and_leaves_no_run(litlab_main, monkeypatch, tmp_path):
    import torch

    from models import Classifier
    from models.backbones import MLP

    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = Classifier(backbone=MLP(depth=2, width=256, dropout=0.2), num_classes=10)
    model.backbone(torch.zeros(2, 1, 8, 8))
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6"}, tmp_path / "mlp.ckpt")
    data = (tmp_path / "mlp.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    for config, checkpoint, message in [
        (CNN, "mlp.ckpt", "does not fit Classifier as configured: 24 missing keys (backbone.features.0.weight"),
        (MLP_YAML, "cut.ckpt", "cut.ckpt is not a readable checkpoint"),
    ]:
        code, _, err = litlab_main("test", "--config", config, f"--ckpt_path={tmp_path / checkpoint}")
        one_error_line(code, err, message)
    assert not list(Path("runs").glob("*/version_*"))  # refused before anything was written


def damaged_run(tmp_path: Path) -> Path:
    """runs/digits-mlp/version_0 as a fit leaves it, with its newest checkpoint cut in half: an
    intact latest-…-step20 file, a damaged latest-…-step40 one, and last.ckpt linked to it."""
    import torch

    from models import Classifier
    from models.backbones import MLP

    model = Classifier(backbone=MLP(depth=2, width=256, dropout=0.2), num_classes=10)
    model.backbone(torch.zeros(2, 1, 8, 8))
    folder = Path("runs/digits-mlp/version_0/checkpoints")
    folder.mkdir(parents=True)
    whole = {"state_dict": model.state_dict(), "global_step": 20, "epoch": 0, "pytorch-lightning_version": "2.6.6"}
    torch.save(whole, folder / "latest-epoch000-step000020.ckpt")
    data = (folder / "latest-epoch000-step000020.ckpt").read_bytes()
    (folder / "latest-epoch001-step000040.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "last.ckpt").symlink_to("latest-epoch001-step000040.ckpt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # weights alone, no training state
    return folder


CUT = "last.ckpt (linked to latest-epoch001-step000040.ckpt) is not a readable checkpoint"
DAMAGED = [
    (["fit", "--config", MLP_YAML, "--ckpt_path=last"], CUT),
    (["test", "--config", MLP_YAML, "--ckpt_path=last"], CUT),
    (["predict", "--config", MLP_YAML, "--ckpt_path=runs/digits-mlp/version_0"], CUT),
    (["export", "--config", MLP_YAML, "--ckpt_path=last"], CUT),
    (["fit", "--config", FINETUNE_YAML, "--model.checkpoint=runs/digits-mlp/version_0/checkpoints/last.ckpt"], CUT),
    (["fit", "--config", DISTILL, "--model.teacher_checkpoint=runs/digits-mlp/version_0"], CUT),
    (["fit", "--config", MLP_YAML, "--ckpt_path={tmp}/weights.pt"], "weights.pt holds no training state"),
    (["report", "runs/digits-mlp"], "metrics.csv is damaged (UnicodeDecodeError"),
    (["fit", "--config", MLP_YAML, "--ckpt_path=last", "gone"],
     "last.ckpt is a broken link (to latest-epoch001-step000040.ckpt, which is gone); the newest intact checkpoint "
     "beside it is runs/digits-mlp/version_0/checkpoints/latest-epoch000-step000020.ckpt: give that as --ckpt_path"),
]


@pytest.mark.parametrize("args, message", DAMAGED, ids=["resume", "test", "predict", "export", "finetune",
                                                         "distill-teacher", "weights-alone", "report", "broken-link"])
def test_a_damaged_file_is_one_line_at_every_entry_point(litlab_main, monkeypatch, tmp_path, args, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    folder = damaged_run(tmp_path)
    (folder.parent / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    if args[-1] == "gone":
        args = args[:-1]
        (folder / "latest-epoch001-step000040.ckpt").unlink()
    code, _, err = litlab_main(*[arg.format(tmp=tmp_path) for arg in args])
    one_error_line(code, err, message)
    assert sorted(p.name for p in Path("runs/digits-mlp").iterdir()) == ["version_0"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["checkpoints", "metrics.csv"]  # nothing added


@pytest.mark.slow
def test_predict_mistakes_are_one_line(litlab_main, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert litlab_main("fit", "--config", MLP_YAML, "--trainer.max_steps=1")[0] == 0
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "list.txt").write_text("../secret.png\n")
    run = "runs/digits-mlp/version_0"
    for args, message in [
        (["--config", SIMCLR_YAML, "--ckpt_path", run],
         "SimCLR has no predict_step, so litlab predict cannot run it; score it with litlab test"),
        (["--config", MLP_YAML, "--ckpt_path", run, "--inputs", "nowhere"],
         "--inputs nowhere does not exist; give an image folder, an image file, or a .txt list of image paths."),
        (["--config", MLP_YAML, "--ckpt_path", run, "--inputs", str(tmp_path / "in" / "list.txt")],
         "list.txt line 1 names ../secret.png, which lies outside"),
    ]:
        one_error_line(*litlab_main("predict", *args)[::2], message)


def test_help_names_every_command_in_a_whole_sentence(litlab_main):
    code, out, _ = litlab_main("--help")
    assert code == 0 and "litlab report RUN [RUN ...]" in out
    described, name = {}, None
    for line in out.split("Available subcommands:")[1].splitlines():
        if re.match(r"^    \S", line):  # a command, then the start of its description
            name, _, text = line.strip().partition(" ")
            described[name] = text.strip()
        elif name and line.strip():
            described[name] += " " + line.strip()
    assert set(described) == {"fit", "validate", "test", "predict", "export"}
    for command, text in described.items():  # whole sentences: Lightning's own stopped mid-sentence
        assert text[0].isupper() and text.endswith("."), (command, text)
