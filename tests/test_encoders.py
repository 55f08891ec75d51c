"""The shared encoder interface: shapes, padding invariance, causality, the last-position shortcut."""

import pytest
import torch

from userseq.config import ModelConfig
from userseq.encoders import ENCODERS, build_encoder
from userseq.errors import ConfigError


@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_padding_invariance_and_last(name):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name=name, dim=16, max_len=12, heads=2), n_items=30).eval()
    x = torch.randint(1, 31, (4, 8))
    x[0, :3] = 0
    x[1, :7] = 0
    h = enc(x, x > 0)
    assert h.shape == (4, 8, 16)
    torch.testing.assert_close(enc.last(x, x > 0), h[:, -1], rtol=1e-5, atol=1e-5)
    wider = torch.cat([torch.zeros(4, 4, dtype=torch.long), x], 1)
    torch.testing.assert_close(enc.last(wider, wider > 0), h[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_encoders_do_not_look_ahead(name):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name=name, dim=16, max_len=10), n_items=30).eval()
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1  # change only the newest item
    assert enc.causal
    torch.testing.assert_close(enc(x, x > 0)[:, :-1], enc(y, y > 0)[:, :-1])


def test_bert4rec_is_bidirectional_with_mask_token():
    enc = build_encoder(ModelConfig(name="bert4rec", dim=16, max_len=10, heads=2), n_items=30).eval()
    assert not enc.causal and enc.mask_token() == 31
    assert enc.items.output_matrix().shape == (31, 16)  # [mask] is not a rankable item
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1
    assert not torch.allclose(enc(x, x > 0)[:, 0], enc(y, y > 0)[:, 0])


def test_unknown_model_name():
    cfg = ModelConfig.model_construct(name="foo")
    with pytest.raises(ConfigError, match="unknown model 'foo'"):
        build_encoder(cfg, 10)
