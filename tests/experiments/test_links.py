"""The data tells the model what it needs, through the contract: classes and vocabulary are never typed twice."""

from experiments.cli import DEFAULTS

TOKENS = '''
import torch
from datamodules import DataModule, Splits, TensorSamples


class Tokens(DataModule):
    """Sequences of token ids whose class is their first token."""

    num_classes = 4
    vocab_size = 12
    example_input = torch.zeros(2, 6, dtype=torch.long)

    def load(self) -> Splits:
        x = torch.randint(0, 12, (200, 6), generator=torch.Generator().manual_seed(0))
        data = TensorSamples(input=x, target=x[:, 0] % 4)
        return Splits(train=data, val=data, test=data)
'''


def test_vocabulary_and_classes_are_linked_from_the_data_into_the_model(cli, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "token_data.py").write_text(TOKENS)
    run = cli(
        "fit", "--config", str(DEFAULTS.parent / "digits" / "transformer.yaml"), "--data=token_data.Tokens",
        "--model.backbone.input=tokens", "--trainer.max_epochs=1",
    )
    assert run.model.backbone.embed.num_embeddings == 12  # vocab_size came from the data
    assert run.model.head.out_features == 4
