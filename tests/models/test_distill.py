"""Distill: the losses are right, the teacher never moves, the checkpoint is the student's alone."""

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from datamodules import IGNORE_INDEX, Augmentation, DigitsDataModule
from models import Classifier, Distill, FineTune
from models.backbones import CNN, MLP
from models.errors import ConfigError
from models.losses import hint_loss, soft_target_loss


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs
    )


def soft_target_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton's definition, one sample at a time: T² KL(p_teacher || p_student) at temperature T."""
    total = torch.tensor(0.0)
    for s, q in zip(student, teacher):
        p_t, p_s = (q / t).softmax(-1), (s / t).softmax(-1)
        total += (p_t * (p_t.log() - p_s.log())).sum()
    return total / len(student) * t * t


def test_soft_target_loss_matches_its_definition_and_becomes_cross_entropy_on_one_hot_targets():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    for t in (1.0, 2.0, 4.0):
        assert soft_target_loss(student, teacher, t) == pytest.approx(soft_target_by_hand(student, teacher, t).item(), rel=1e-5)
    assert soft_target_loss(teacher, teacher, 4.0) == pytest.approx(0.0, abs=1e-6)
    # A teacher certain of one class at T = 1 is a one-hot label: the loss is the plain cross entropy.
    y = torch.randint(0, 5, (6,))
    certain = 100.0 * F.one_hot(y, 5).float()
    assert soft_target_loss(student, certain, 1.0) == pytest.approx(F.cross_entropy(student, y).item(), rel=1e-5)


def test_soft_target_gradient_reaches_the_student_only():
    student, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    soft_target_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_hint_loss_is_the_mean_squared_error_to_the_teacher_features():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    assert hint_loss(a, b) == pytest.approx(((a - b) ** 2).mean().item())


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, str]:
    """A CNN classifier trained for two epochs on digits, saved as .ckpt, .pt and .safetensors."""
    folder = tmp_path_factory.mktemp("teacher")
    L.seed_everything(0)
    model = Classifier(backbone=CNN(channels=[8, 16]), num_classes=10, optimizer=partial(torch.optim.Adam, lr=0.01))
    fit = trainer(max_epochs=2)
    fit.fit(model, datamodule=DigitsDataModule())
    fit.save_checkpoint(folder / "teacher.ckpt")
    state = model.state_dict()
    torch.save(state, folder / "teacher.pt")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, folder / "teacher.safetensors")
    return {kind: str(folder / f"teacher.{kind}") for kind in ("ckpt", "pt", "safetensors")}


def distill(teacher_checkpoint: str, **kwargs) -> Distill:
    return Distill(
        backbone=kwargs.pop("backbone", MLP(depth=1, width=16)),
        teacher=CNN(channels=[8, 16]),
        teacher_checkpoint=teacher_checkpoint,
        num_classes=kwargs.pop("num_classes", 10),
        optimizer=partial(torch.optim.Adam, lr=0.01),
        **kwargs,
    )


@pytest.mark.parametrize("kind", ["ckpt", "pt", "safetensors"])
def test_the_teacher_loads_from_every_format_and_agrees_with_the_trained_classifier(teacher_files, kind):
    reference = Classifier(backbone=CNN(channels=[8, 16]), num_classes=10)
    reference.load_state_dict(torch.load(teacher_files["pt"], weights_only=True))
    model = distill(teacher_files[kind])
    x = torch.randn(4, 1, 8, 8)
    _, logits = model.teach(x)
    assert torch.equal(logits, reference.eval()(x))


def test_the_teacher_never_moves_while_the_student_learns(teacher_files):
    L.seed_everything(0)
    model = distill(teacher_files["ckpt"], hint_weight=0.5)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}  # BN statistics included
    student_before = model.head.weight.clone()
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=DigitsDataModule(augment=Augmentation(crop_padding=1)))
    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())
    assert not any(p.requires_grad for p in [*model.teacher.parameters(), *model.teacher_head.parameters()])
    assert not model.teacher.training and model.backbone.training
    optimised = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in [*model.teacher.parameters(), *model.teacher_head.parameters()]}
    assert {id(p) for p in model.hint.parameters()} <= optimised
    assert not torch.equal(student_before, model.head.weight)


def test_unlabelled_images_are_taught_by_the_teacher_alone(teacher_files):
    L.seed_everything(0)
    model = distill(teacher_files["ckpt"], alpha=0.5)
    dm = DigitsDataModule(label_fraction=0.05, unlabelled="keep")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch["target"] == IGNORE_INDEX).any() and (batch["target"] != IGNORE_INDEX).any()
    logits = model.head(model.backbone(batch["input"]))
    labelled = batch["target"] != IGNORE_INDEX
    assert model.loss(logits, batch["target"]).item() == pytest.approx(
        F.cross_entropy(logits[labelled], batch["target"][labelled]).item(), rel=1e-5
    )
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=dm)
    assert len(fit.train_dataloader.dataset) == len(dm.labelled_dataset) + len(dm.unlabelled_dataset)


def test_the_checkpoint_holds_the_student_alone_and_every_task_loads_it(teacher_files, tmp_path):
    L.seed_everything(0)
    model = distill(teacher_files["ckpt"], hint_weight=0.5)
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=DigitsDataModule())
    fit.save_checkpoint(tmp_path / "student.ckpt")
    saved = torch.load(tmp_path / "student.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in saved["state_dict"]} == {"backbone", "head"}
    x = torch.randn(3, 1, 8, 8)
    expected = model.eval()(x)
    # As a plain Classifier, strictly: the student's own config tests and predicts from it.
    classifier = Classifier(backbone=MLP(depth=1, width=16), num_classes=10)
    classifier.backbone(torch.zeros(1, 1, 8, 8))  # size the lazy layer as setup would
    classifier.load_state_dict(saved["state_dict"])
    assert torch.equal(classifier.eval()(x), expected)
    # As a pretrained backbone for FineTune, and as the teacher of a smaller student.
    finetune = FineTune(backbone=MLP(depth=1, width=16), num_classes=10, checkpoint=str(tmp_path / "student.ckpt"))
    assert torch.equal(finetune.backbone.eval()(x), model.backbone(x))
    smaller = Distill(backbone=MLP(depth=1, width=4), teacher=MLP(depth=1, width=16),
                      teacher_checkpoint=str(tmp_path / "student.ckpt"), num_classes=10)
    assert torch.equal(smaller.teach(x)[1], expected)


def test_a_distill_fit_resumes_with_its_teacher_and_regressor(teacher_files, tmp_path):
    L.seed_everything(0)
    first = trainer(max_epochs=1)
    first.fit(distill(teacher_files["ckpt"], hint_weight=0.5), datamodule=DigitsDataModule())
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = distill(teacher_files["ckpt"], hint_weight=0.5)
    hint_before = resumed.hint.weight.clone()
    second = trainer(max_epochs=2)
    second.fit(resumed, datamodule=DigitsDataModule(), ckpt_path=tmp_path / "epoch1.ckpt")
    assert second.current_epoch == 2 and not torch.equal(hint_before, resumed.hint.weight)
    reference = distill(teacher_files["ckpt"])
    assert all(torch.equal(a, b) for a, b in zip(resumed.teacher.state_dict().values(), reference.teacher.state_dict().values()))


def test_a_teacher_of_another_architecture_or_class_count_is_refused_by_name(teacher_files, tmp_path):
    with pytest.raises(ConfigError, match="does not match MLP under prefix 'backbone.'"):
        Distill(backbone=MLP(width=8), teacher=MLP(width=8), teacher_checkpoint=teacher_files["pt"], num_classes=10)
    with pytest.raises(ConfigError, match="classifies 10 classes but the data has 5"):
        distill(teacher_files["pt"], num_classes=5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        distill(str(tmp_path / "nowhere.ckpt"))


def test_test_reports_the_teacher_and_the_agreement(teacher_files):
    L.seed_everything(0)
    model = distill(teacher_files["ckpt"])
    fit = trainer(max_epochs=2)
    dm = DigitsDataModule()
    fit.fit(model, datamodule=dm)
    (results,) = fit.test(model, datamodule=dm, verbose=False)
    assert {"test/acc", "test/f1", "test/loss", "test/teacher_acc", "test/agreement"} <= set(results)
    assert results["test/teacher_acc"] > 0.8 and 0.5 < results["test/agreement"] <= 1.0
    assert not Path("checkpoints").exists()


# ---- proof that it helps: the shipped recipes, seeds 0, 1 and 2, through the CLI ----

DIGITS = Path(__file__).resolve().parents[2] / "experiments" / "digits"
STUDENT = ["--model.backbone.depth=1", "--model.backbone.width=64", "--model.backbone.dropout=0"]


def test_acc(run) -> float:
    return float(run.trainer.callback_metrics["test/acc"])


test_acc.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_with_few_labels_the_taught_student_beats_the_student_alone_by_five_points(cli):
    # The teacher sees only the 5% of labels too: the CNN with augmentation, trained on them alone.
    few = ["--data.label_fraction=0.05", "--data.batch_size=16"]
    teacher = cli("fit", "--config", str(DIGITS / "cnn_augment.yaml"), *few)
    checkpoint = teacher.trainer.checkpoint_callback.best_model_path
    scratch, taught = [], []
    for seed in (0, 1):
        # The student alone: the same MLP on the 5% of labelled images, as long as the taught one.
        alone = cli("fit", "--config", str(DIGITS / "mlp.yaml"), *STUDENT, *few, "--trainer.max_epochs=60", f"--seed_everything={seed}")
        scratch.append(test_acc(alone))
        distil = cli("fit", "--config", str(DIGITS / "distill_unlabelled.yaml"), f"--model.teacher_checkpoint={checkpoint}",
                     f"--seed_everything={seed}")
        taught.append(test_acc(distil))
    print(f"teacher {test_acc(teacher):.4f} scratch {scratch} taught {taught}")
    # Measured (seeds 0, 1, 2): teacher 92.2%; scratch 86.1 / 86.4 / 87.8, taught 92.2 / 91.7 / 91.9
    # (+5.2 points on the mean). The test holds seeds 0 and 1 to it (+5.7): two seeds prove it at two thirds the cost.
    assert sum(taught) / 2 - sum(scratch) / 2 >= 0.05
    assert all(t > s for t, s in zip(taught, scratch))


@pytest.mark.slow
def test_with_all_labels_a_patient_consistent_teacher_beats_the_student_alone(cli):
    teacher = cli("fit", "--config", str(DIGITS / "cnn.yaml"))
    checkpoint = teacher.trainer.checkpoint_callback.best_model_path
    scratch, taught = [], []
    for seed in (0, 1):
        # The student's best recipe alone: no augmentation (shifts cost an MLP accuracy), 60 epochs.
        alone = cli("fit", "--config", str(DIGITS / "mlp.yaml"), *STUDENT, "--trainer.max_epochs=60", f"--seed_everything={seed}")
        scratch.append(test_acc(alone))
        distil = cli("fit", "--config", str(DIGITS / "distill.yaml"), f"--model.teacher_checkpoint={checkpoint}", f"--seed_everything={seed}")
        taught.append(test_acc(distil))
    print(f"teacher {test_acc(teacher):.4f} scratch {scratch} taught {taught}")
    # Measured (seeds 0, 1, 2): teacher 99.7%; scratch 96.9 / 97.5 / 96.9, taught 98.3 / 98.6 / 98.3
    # (+1.3 points on the mean). The test holds seeds 0 and 1 to it (+1.25).
    assert all(t > s for t, s in zip(taught, scratch))
    assert sum(taught) / 2 - sum(scratch) / 2 >= 0.008  # three test images of 360
