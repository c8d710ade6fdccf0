"""Recurrent network (Elman RNN, LSTM or GRU) summarising a sequence by its final state."""

from typing import Literal

import torch
from torch import nn

from models.backbones.registry import register
from models.errors import check_fraction, check_positive

Cell = Literal["rnn", "lstm", "gru"]
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@register(sequence=[{"cell": "rnn"}, {"cell": "lstm"}, {"cell": "gru", "num_layers": 2, "bidirectional": True}])
class RNN(nn.Module):
    """(B, T, F) -> final hidden state of the last layer, both directions concatenated.

    `forward_features` gives the last layer's output at every step instead: (B, T, out_features).
    """

    def __init__(
        self,
        cell: Cell = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive("RNN", hidden_size=hidden_size, num_layers=num_layers)
        check_fraction("RNN", dropout=dropout)
        # A lazy projection takes the feature size from the data; torch's recurrent modules cannot.
        self.project = nn.LazyLinear(hidden_size)
        self.rnn = CELLS[cell](
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            # torch applies dropout between layers only, and warns when there are none.
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.out_features = hidden_size * self.directions

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.project(x))  # (B, T, directions * hidden)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(self.project(x))  # x: (B, T, F) -> (B, T, hidden)
        if isinstance(h, tuple):  # LSTM returns (h_n, c_n)
            h = h[0]
        # h_n is (num_layers * directions, B, hidden); keep the last layer's directions.
        h = h[-self.directions :]  # (directions, B, hidden)
        return h.transpose(0, 1).reshape(x.shape[0], self.out_features)  # (B, directions * hidden)
