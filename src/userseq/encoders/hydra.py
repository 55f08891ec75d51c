"""`hydra`: a bidirectional state-space encoder (Hydra-style, Hwang et al. 2024) for masked-item
training (the BERT4Rec objective) and for detection.

Each block mixes the sequence with a forward S4D pass and a flipped backward S4D pass, each
seeing strictly earlier (resp. later) positions, plus a diagonal term D u_t for the position
itself: a quasiseparable mixer `y = shift(SSM_f)(u) + flip(shift(SSM_b)(flip(u))) + D u`. The
blocks, the hybrid `model.blocks` option and the padding rules are those of `ssm.py`; like
BERT4Rec, the [mask] token is item n_items + 1 and recommendations read the [mask] appended
after the history.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from userseq.encoders.registry import register_encoder
from userseq.encoders.ssm import SSMConfig, SSMEncoder
from userseq.items.base import ItemRepr


class HydraConfig(SSMConfig):
    """Hydra: bidirectional SSM blocks (or a bidirectional hybrid) with a [mask] token."""

    special_tokens: ClassVar[int] = 1  # the [mask] row after the catalogue

    name: str = "hydra"
    mask_prob: float = Field(0.2, gt=0, lt=1, description="masked-item training proportion")


@register_encoder("hydra", config=HydraConfig)
class Hydra(SSMEncoder):
    """Bidirectional state-space encoder trained to fill in masked items."""

    def __init__(self, config: HydraConfig, items: ItemRepr) -> None:
        super().__init__(config, items, causal=False, mask_token=items.n_items + 1)
