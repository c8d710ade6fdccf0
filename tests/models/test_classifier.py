from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules import DigitsDataModule
from models import Classifier
from models.backbones import MLP


def classifier(**kwargs) -> Classifier:
    return Classifier(backbone=kwargs.pop("backbone", MLP(width=32)), num_classes=10, **kwargs)


def test_head_is_sized_from_the_backbone_and_the_classes():
    model = Classifier(backbone=MLP(width=48), num_classes=7)
    assert (model.head.in_features, model.head.out_features) == (48, 7)


def test_losses_match_their_definitions():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    mse = classifier(loss="mse").loss(logits, y)
    assert mse == pytest.approx(((logits.softmax(-1) - F.one_hot(y, 10)) ** 2).mean().item())
    smoothed = classifier(label_smoothing=0.1).loss(logits, y)
    assert smoothed == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "mse", "label_smoothing": 0.1}, "label_smoothing applies to loss=cross_entropy"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
    ],
)
def test_contradictory_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifier(**kwargs)


def test_fit_learns_and_predict_gives_classes_and_probabilities():
    L.seed_everything(0)
    dm = DigitsDataModule()
    model = classifier(optimizer=partial(torch.optim.Adam, lr=0.01))
    trainer = L.Trainer(
        max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=dm)
    (results,) = trainer.test(model, datamodule=dm, verbose=False)
    assert results["test/acc"] > 0.9 and set(results) == {"test/loss", "test/acc", "test/f1"}
    batches = trainer.predict(model, datamodule=dm)
    probs = torch.cat([b["probs"] for b in batches])
    assert probs.shape == (360, 10) and torch.allclose(probs.sum(-1), torch.ones(360))
    assert torch.equal(torch.cat([b["pred"] for b in batches]), probs.argmax(-1))
    accuracy = (torch.cat([b["pred"] for b in batches]) == torch.cat([b["target"] for b in batches])).float().mean()
    assert accuracy == pytest.approx(results["test/acc"], abs=1e-6)


def test_the_model_summary_gets_one_sample_of_the_data_and_counts_its_flops():
    # Without an input the summary's FLOPs column reads 0; a linear layer costs 2 x in x out a sample.
    from lightning.pytorch.utilities.model_summary import ModelSummary

    model = classifier(backbone=MLP(width=32, depth=2))
    trainer = L.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule())
    assert model.example_input_array.shape == (1, 1, 8, 8)
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert ModelSummary(model).total_flops == linear > 0


@pytest.mark.slow
def test_compile_trains_as_eager_does_keeps_the_checkpoint_keys_and_every_task_names_parts_it_has():
    from models import CLIP, SimCLR
    from models.backbones import CNN, Transformer

    def fit(compile: bool) -> Classifier:
        L.seed_everything(0)
        model = Classifier(backbone=CNN(channels=[8, 16]), num_classes=10, compile=compile,
                           optimizer=partial(torch.optim.SGD, lr=0.1))
        trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        return model

    eager, compiled = fit(False), fit(True)
    # The first layer is lazy: compiled only once it is sized, as the set-up does, and then in use.
    assert getattr(compiled.backbone, "_compiled_call_impl", None) is not None
    assert getattr(eager.backbone, "_compiled_call_impl", None) is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    # Each task's compiled parts are modules it has.
    simclr = SimCLR(backbone=CNN(channels=[8]), compile=True)
    clip = CLIP(image_backbone=CNN(channels=[8]), text_backbone=Transformer(input="tokens", vocab_size=32, d_model=16,
                                                                             depth=1, heads=2, max_len=8), compile=True)
    for task in (simclr, clip):
        assert all(isinstance(task.get_submodule(part), torch.nn.Module) for part in task.compiled_parts)
