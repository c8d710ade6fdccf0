"""Each Lightning internal that litlab reads (models/lightning_internals.py), against the installed Lightning.

A failure here means an upgrade moved one of them: the message names which, and the resume
guarantees that depend on it (mid-epoch loader position, metric states, metrics.csv rows kept).
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.lightning_internals import FIT_PROGRESS, batches_processed, saved_epoch_complete


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(L.Callback):
    def __init__(self, folder) -> None:
        self.folder, self.seen, self.saved = folder, [], {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((batch_idx, batches_processed(trainer)))
        if trainer.current_epoch == 0 and batch_idx == 1:
            trainer.save_checkpoint(self.folder / "middle.ckpt")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.folder / "end.ckpt")


def test_the_lightning_internals_litlab_reads_are_where_it_reads_them(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches an epoch
    probe = Probe(tmp_path)
    trainer = L.Trainer(max_epochs=2, callbacks=[probe], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), data)

    # trainer.fit_loop.epoch_loop.batch_progress.current.processed: batches of this epoch whose step ran.
    assert probe.seen == [(i, i + 1) for i in range(4)] * 2, (
        f"trainer.fit_loop.epoch_loop.batch_progress.current.processed moved or changed meaning: {probe.seen}")

    for name, complete in (("middle.ckpt", False), ("end.ckpt", True)):
        saved = torch.load(tmp_path / name, weights_only=True)
        node = saved
        for key in FIT_PROGRESS:
            assert isinstance(node, dict) and key in node, f"a checkpoint no longer holds {'/'.join(FIT_PROGRESS)}"
            node = node[key]
        assert "is_last_batch" in node, f"{'/'.join(FIT_PROGRESS)} no longer holds is_last_batch: {sorted(node)}"
        assert saved_epoch_complete(saved) is complete, f"{name}: is_last_batch no longer marks an epoch's end"
    assert saved_epoch_complete({"state_dict": {}}) is True  # a weights-only file: nothing to resume mid-epoch
