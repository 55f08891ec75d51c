"""The encoder registry: one name -> (encoder class, its config class).

An encoder is a `SequenceEncoder` subclass constructed as `EncoderClass(config, items)` (its
config, an `EncoderConfig` subclass, and the item representation it embeds and scores with) and
registered with its config class:

    @register_encoder("tiny", config=TinyConfig)
    class Tiny(SequenceEncoder): ...

`encoder_config` and `parse_encoder_config` validate settings with the config class of the named
encoder; `build_encoder` constructs the encoder of a config.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from userseq.core.config import validate_config
from userseq.core.errors import ConfigError
from userseq.core.registry import Registry, decorator
from userseq.encoders.base import SequenceEncoder
from userseq.encoders.config import EncoderConfig
from userseq.encoders.readout import Set2SetReadout
from userseq.items.base import ItemRepr

ENCODERS: Registry[type[SequenceEncoder]] = Registry(
    "encoder", "Add one with userseq.register_encoder (docs/extending.md).")
register_encoder = decorator(ENCODERS)

DEFAULT_ENCODER = "sasrec"
# Settings that tasks building an encoder for their own use (e.g. detection) may pass to any
# encoder: `encoder_config` drops those the chosen encoder does not have (heads for gru4rec).
COMMON_SETTINGS = ("dim", "layers", "heads", "dropout", "max_len")


def _config_class(name: str) -> tuple[str, type[EncoderConfig]]:
    entry = ENCODERS.get(name)
    if entry.config is None or not issubclass(entry.config, EncoderConfig):
        raise ConfigError(f"encoder '{entry.name}' was registered without an EncoderConfig "
                          "subclass; register it with config=YourConfig.")
    return entry.name, entry.config


def encoder_config(name: str, **settings: Any) -> EncoderConfig:
    """The validated config of encoder `name` with `settings`.

    Of the common settings (`COMMON_SETTINGS`: dim, layers, heads, dropout, max_len) those the
    encoder does not have are dropped silently, so a task can pass the same five to any encoder;
    any other setting the encoder does not have is a ConfigError naming the allowed keys."""
    canonical, cls = _config_class(name)
    kept = {k: v for k, v in settings.items() if k in cls.model_fields or k not in COMMON_SETTINGS}
    return validate_config(cls, {**kept, "name": canonical}, f"encoder '{canonical}'")


def _error(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A pydantic error at `loc` (relative to the section) with our own message."""
    detail = InitErrorDetails(type=PydanticCustomError("encoder_config", "{m}", {"m": message}),
                              loc=loc, input=value)
    return ValidationError.from_exception_data("EncoderConfig", [detail])


def parse_encoder_config(value: Any, section: str = "model") -> Any:
    """A config section (mapping) validated by the config class of the encoder it names.

    For a pydantic before-validator: errors are pydantic errors located in the section. Keys that
    belong to another registered encoder are dropped (runs written by userseq 0.1 saved one flat
    config with every encoder's settings; switching `model.name` keeps the other settings); a key
    that no registered encoder knows is an error naming the allowed keys."""
    if not isinstance(value, dict | EncoderConfig):
        return value  # pydantic reports what is not a mapping
    data = value.model_dump() if isinstance(value, EncoderConfig) else dict(value)
    name = data.get("name", DEFAULT_ENCODER)
    try:
        canonical, cls = _config_class(name)
    except ConfigError as e:
        raise _error(("name",), str(e), name) from None
    if isinstance(value, cls):
        return value  # already validated by its encoder's config class
    others = _all_settings()
    for key in list(data):
        if key in cls.model_fields:
            continue
        if key not in others:
            allowed = ", ".join(cls.model_fields)
            raise _error((), f"unknown key '{section}.{key}' (allowed here: {allowed})", data[key])
        del data[key]
    data["name"] = canonical
    return cls.model_validate(data)


def _all_settings() -> set[str]:
    return {k for e in ENCODERS if e.config is not None for k in e.config.model_fields}


def other_encoder_setting(config: EncoderConfig, key: str) -> bool:
    """Whether `key` is a setting of another registered encoder but not of `config`'s encoder
    (e.g. `heads` for a gru4rec config): such settings are dropped, not errors."""
    return key not in type(config).model_fields and key in _all_settings()


def build_encoder(model_cfg: EncoderConfig, n_items: int,
                  items: ItemRepr | None = None) -> SequenceEncoder:
    """The encoder `model_cfg.name` over `n_items` items. `items` replaces the default item
    representation (`items.factory.build_items(model_cfg, n_items)`: text, compressed, ...)."""
    from userseq.items.factory import build_items

    canonical, cls = _config_class(model_cfg.name)
    if not isinstance(model_cfg, cls):
        model_cfg = encoder_config(canonical, **model_cfg.model_dump(exclude={"name"}))
    encoder_class = ENCODERS.get(canonical).obj
    encoder = encoder_class(model_cfg, items if items is not None else build_items(model_cfg,
                                                                                   n_items))
    if model_cfg.readout == "set2set":
        try:
            return Set2SetReadout(encoder, model_cfg.readout_steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return encoder
