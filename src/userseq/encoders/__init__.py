"""Sequence encoders sharing one call signature (see `base.SequenceEncoder`), chosen by name.

Each encoder is one file (`sasrec.py`, `bert4rec.py`, `gru4rec.py`, `ssm.py`, `hydra.py`,
`set2set.py`, `seq2seq_ae.py`; the closed-form baselines pop, itemknn and ease share
`classical.py`) holding its config class and its module, registered with
`register_encoder(name, config=ConfigClass)`; `ENCODERS` lists them.
Shared building blocks live in `blocks.py` and `transformer.py`.

* `build_encoder(model_cfg, n_items, items=None)`: the encoder of a config;
* `encoder_config(name, **settings)`: a validated config; of the common settings (dim, layers,
  heads, dropout, max_len) those the encoder does not have are dropped silently (e.g. heads for
  gru4rec), so a task can build any encoder with the same five;
* `parse_encoder_config(section)`: the `model:` section of a config file, validated by the config
  class its `name` picks: settings of other registered encoders are dropped (one config serves
  every encoder, and runs of userseq 0.1 saved every encoder's settings), unknown keys are errors.
"""

from __future__ import annotations

# importing the built-in encoders registers them
from userseq.encoders.base import SequenceEncoder
from userseq.encoders.bert4rec import BERT4Rec, BERT4RecConfig
from userseq.encoders.classical import EASE, ClosedFormEncoder, ItemKNN, Pop
from userseq.encoders.config import EncoderConfig
from userseq.encoders.gru4rec import GRU4Rec, GRU4RecConfig
from userseq.encoders.hydra import Hydra, HydraConfig
from userseq.encoders.readout import Set2SetReadout
from userseq.encoders.registry import (
    COMMON_SETTINGS,
    DEFAULT_ENCODER,
    ENCODERS,
    build_encoder,
    encoder_config,
    other_encoder_setting,
    parse_encoder_config,
    register_encoder,
)
from userseq.encoders.sasrec import SASRec, SASRecConfig
from userseq.encoders.seq2seq_ae import Seq2SeqAE, Seq2SeqAEConfig
from userseq.encoders.set2set import Set2SetConfig, Set2SetEncoder
from userseq.encoders.ssm import SSM, SSMConfig, SSMEncoder
from userseq.encoders.transformer import TransformerConfig, TransformerEncoder

__all__ = [
    "BERT4Rec", "BERT4RecConfig", "COMMON_SETTINGS", "ClosedFormEncoder", "EASE", "ItemKNN",
    "Pop", "DEFAULT_ENCODER", "ENCODERS", "EncoderConfig",
    "GRU4Rec", "GRU4RecConfig", "Hydra", "HydraConfig", "SASRec", "SASRecConfig", "SSM",
    "SSMConfig", "SSMEncoder", "Seq2SeqAE", "Seq2SeqAEConfig", "SequenceEncoder", "Set2SetConfig",
    "Set2SetEncoder", "Set2SetReadout", "TransformerConfig", "TransformerEncoder", "build_encoder",
    "encoder_config", "other_encoder_setting", "parse_encoder_config", "register_encoder",
]
