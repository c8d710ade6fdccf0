"""Each Lightning internal that litlab reads (models/lightning_internals.py), against the installed Lightning.

A failure here means an upgrade moved one of them: the message names which, and the resume
guarantees that depend on it (mid-epoch loader position, metric states, metrics.csv rows kept).
Also the order of Lightning's epoch end that LatestCheckpoint relies on: an epoch's closing
metrics are logged after every on_train_epoch_end hook and before the next epoch starts.
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.lightning_internals import batches_processed


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("closing", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(L.Callback):
    def __init__(self) -> None:
        self.seen, self.events = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((batch_idx, batches_processed(trainer)))

    def on_train_epoch_end(self, trainer, pl_module):
        self.events.append(f"epoch {trainer.current_epoch} ends")

    def on_train_epoch_start(self, trainer, pl_module):
        self.events.append(f"epoch {trainer.current_epoch} starts")

    def on_train_end(self, trainer, pl_module):
        self.events.append("training ends")


class Logged(L.pytorch.loggers.Logger):
    name, version = "probe", 0

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def log_metrics(self, metrics, step=None):
        if "closing" in metrics:
            self.events.append(f"closing metrics of epoch {int(metrics['epoch'])} logged")

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_the_lightning_internals_litlab_reads_are_where_it_reads_them(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches an epoch
    probe = Probe()
    trainer = L.Trainer(max_epochs=2, callbacks=[probe], logger=Logged(probe.events), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), data)

    # trainer.fit_loop.epoch_loop.batch_progress.current.processed: batches of this epoch whose step ran.
    assert probe.seen == [(i, i + 1) for i in range(4)] * 2, (
        f"trainer.fit_loop.epoch_loop.batch_progress.current.processed moved or changed meaning: {probe.seen}")
    # LatestCheckpoint saves an epoch's end at the next epoch's start (or the end of training), after them.
    assert probe.events == ["epoch 0 starts", "epoch 0 ends", "closing metrics of epoch 0 logged", "epoch 1 starts",
                            "epoch 1 ends", "closing metrics of epoch 1 logged", "training ends"], (
        f"Lightning's epoch end changed order; LatestCheckpoint's end-of-epoch save may come before the closing metrics: "
        f"{probe.events}")


def test_lightning_passes_wandb_an_anonymous_setting_that_litlab_leaves_out():
    from lightning.pytorch.loggers import WandbLogger

    from models.lightning_internals import leave_wandb_defaults

    logger = WandbLogger(offline=True)
    assert "anonymous" in logger._wandb_init, "WandbLogger no longer keeps wandb.init's arguments in _wandb_init"
    leave_wandb_defaults(logger)
    assert "anonymous" not in logger._wandb_init
    kept = WandbLogger(offline=True, anonymous=True)
    leave_wandb_defaults(kept)
    assert kept._wandb_init["anonymous"] == "allow"  # a setting given is passed on
