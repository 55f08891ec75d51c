"""Amazon review sequences: the S3-Rec sets (amazon-beauty, amazon-lastfm) and the UniSRec
amazon-scientific set with item text.

They are published as ordered sequences without timestamps: the position in the user's sequence
is the timestamp (`timestamp_kind="position"`, with `POSITION_NOTE`). Licences: the Amazon and
LastFM derivatives are research-use data; keep them out of public releases.
"""

from __future__ import annotations

import polars as pl

from userseq.data.datasets.base import (
    POSITION_NOTE,
    DatasetEvents,
    DatasetFiles,
    DatasetSpec,
    Download,
    Layout,
)
from userseq.data.datasets.parse import int_ids, read_delimited, sequence_lines, with_positions
from userseq.data.datasets.registry import register_dataset

_S3REC = ("https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/"
          "2a81540ae18615d88ef88227b0c066e5b74781e5/data")
_COWPIREC = ("https://raw.githubusercontent.com/ysh-1998/CoWPiRec/"
             "db47560c2364650d22afc77080717287daec5079/dataset/Scientific")
_LOCAL_SHA = "sha256 of the staged copy (shared/data, fetched from this pinned commit)"


# ---------------------------------------------------------------------- S3-Rec
def _s3rec(name: str, fname: str, description: str, licence: str, sha256: str) -> DatasetSpec:
    """A dataset from the S3-Rec repository: one `user item item ...` file, local or downloaded."""

    def read(files: DatasetFiles, kind: str) -> DatasetEvents:
        return DatasetEvents(sequence_lines(files, fname), files.where(fname), "position",
                             [POSITION_NOTE])

    read.__doc__ = f"Read S3-Rec's {fname} (`user item item ...` per line, chronological)."
    return DatasetSpec(
        name=name, description=description, licence=licence,
        homepage="https://github.com/RUCAIBox/CIKM2020-S3Rec",
        downloads=(Download(f"{_S3REC}/{fname}", fname, sha256=sha256,
                            checksum_source=_LOCAL_SHA),),
        layouts=(Layout("s3rec", "amazon-s3rec", (fname,)), Layout("s3rec", ".", (fname,))),
        load=read,
    )


register_dataset(_s3rec(
    "amazon-beauty", "Beauty.txt",
    "Amazon Beauty 5-core, S3-Rec preprocessing (sequences, no timestamps): 22,363 users, "
    "12,101 items, 198,502 events",
    "Amazon review data (McAuley lab): research use only; S3-Rec repository has no licence file",
    "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
))
register_dataset(_s3rec(
    "amazon-lastfm", "LastFM.txt",
    "LastFM (HetRec 2011), S3-Rec preprocessing (sequences, no timestamps): 1,090 users, "
    "3,646 items, 52,551 events",
    "HetRec 2011 terms: research use; S3-Rec repository has no licence file",
    "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802",
))


# ---------------------------------------------------------------------- UniSRec Scientific
def _meta_scientific(files: DatasetFiles, kind: str) -> pl.DataFrame:
    """Item text keyed by index: Scientific.text is keyed by ASIN, item2index maps ASIN -> index."""
    index = read_delimited(files, "Scientific.item2index", {"asin": pl.String, "item_id": pl.Int64})
    text = read_delimited(files, "Scientific.text", {"asin": pl.String, "text": pl.String})
    if text.height and text["asin"][0].startswith("item_id:"):
        text = text.slice(1)
    df = index.join(text, on="asin", how="left", maintain_order="left")
    return df.select("item_id", "asin", pl.col("text").str.strip_chars().alias("title"))


_SCIENTIFIC_FILES = (
    ("Scientific.test.inter", "546da7e5f44002b4518d7fd58066684bc09613f76c240914e16976d57cfe7083"),
    ("Scientific.text", "95887e6bda76e54f59b71b566320520d5da74e21d3b6ff8f20bfb6e8e84aa831"),
    ("Scientific.item2index", "896ab1017508cf20834d3d0537da9f8f624324223a835af272a98ba16f8c087a"),
)


@register_dataset(
    "amazon-scientific",
    description="Amazon 2018 Industrial & Scientific, UniSRec preprocessing, with item text "
    "(sequences, no timestamps): 8,442 users, 4,385 items",
    licence="Amazon review data 2018 (McAuley lab): research use only; source repository has "
    "no licence file",
    homepage="https://github.com/RUCAIBox/UniSRec",
    downloads=tuple(Download(f"{_COWPIREC}/{fname}", fname, sha256=sha, checksum_source=_LOCAL_SHA)
                    for fname, sha in _SCIENTIFIC_FILES),
    layouts=(
        Layout("unisrec", "amazon-text/Scientific", ("Scientific.test.inter",)),
        Layout("unisrec", "Scientific", ("Scientific.test.inter",)),
        Layout("unisrec", ".", ("Scientific.test.inter",)),
    ),
    metadata=_meta_scientific,
)
def read_scientific(files: DatasetFiles, kind: str) -> DatasetEvents:
    """Rebuild each user's sequence from the leave-one-out test file: item_id_list + item_id."""
    name = "Scientific.test.inter"
    schema = {"user_id": pl.String, "item_id_list": pl.String, "item_id": pl.String}
    rows = read_delimited(files, name, schema)
    if rows.height and rows["user_id"][0].startswith("user_id:"):
        rows = rows.slice(1)  # RecBole typed header (user_id:token ...)
    history = pl.col("item_id_list").fill_null("").str.extract_all(r"\S+")
    seqs = rows.select(
        "user_id", pl.concat_list(history, pl.col("item_id").str.strip_chars()).alias("item_id")
    ).explode("item_id")
    df = with_positions(int_ids(seqs, files.where(name)))
    notes = [POSITION_NOTE, "sequences rebuilt from Scientific.test.inter (history capped at 50 "
             "items + target)"]
    return DatasetEvents(df, files.where(name), "position", notes)
