"""Wikipedia detection data: wiki-vandals (VEWS edits, user labels) and petgen-wiki (PETGEN post
sequences with text and labels).

The readers turn the raw files into Polars frames; `userseq.detect.data` builds its `EventData`
and `TextData` from them. `load_dataset("wiki-vandals")` gives the edits as an `EventLog`;
petgen-wiki holds post texts without item ids and is read with `read_petgen_wiki`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl

from userseq.core.errors import DataError
from userseq.data.datasets.base import DatasetEvents, DatasetFiles, Layout
from userseq.data.datasets.fetch import open_files
from userseq.data.datasets.registry import register_dataset
from userseq.data.io import first_line

LEAKAGE_NOTE = ("isReverted, revertTime, cluebotRevert and the STiKi scores are known only after "
                "the edit (leakage): keep them out of early-detection features")
_VEWS_USERS = "users.tsv.gz"
_PETGEN_FILE = "wiki_sequences.jsonl.gz"


# ---------------------------------------------------------------------- wiki-vandals (VEWS)
def read_wiki_vandals(directory: Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """VEWS edits and user labels: (events, labels).

    events: user_id (username), item_id (page title), timestamp (ISO text), revid and the
    after-the-fact columns isReverted, revertTime, cluebotRevert, stiki_score, stiki_REP_USER.
    labels: user_id, label (1 vandal, 0 benign) from users.tsv.gz, checked against the prefix
    (benign_/vandal_) of each user's edit files. `directory` defaults to the local copy.
    """
    return _read_vews(open_files("wiki-vandals", directory))


def _read_csv(files: DatasetFiles, name: str, **kw: Any) -> pl.DataFrame:
    try:
        return pl.read_csv(io.BytesIO(files.read(name)), infer_schema_length=0, **kw)  # all text
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{files.where(name)}: could not parse: {first_line(e)}") from None


def _read_vews(files: DatasetFiles) -> tuple[pl.DataFrame, pl.DataFrame]:
    names = files.glob("benign_*.csv.gz") + files.glob("vandal_*.csv.gz")
    if not names:
        raise DataError(f"{files.path}: no benign_*.csv.gz / vandal_*.csv.gz files.")
    edits = pl.concat([
        _read_csv(files, n)  # the second line is blank
        .filter(pl.col("username").is_not_null())
        .with_columns(pl.lit(int(n.startswith("vandal")), dtype=pl.Int8).alias("file_label"))
        for n in names
    ])
    events = edits.select(
        pl.col("username").alias("user_id"), pl.col("pagetitle").alias("item_id"),
        pl.col("revtime").alias("timestamp"), pl.col("revid").cast(pl.Int64),
        pl.col("isReverted") == "True",
        pl.col("revertTime"),
        pl.col("cluebotRevert").cast(pl.Int64, strict=False),
        pl.col("stiki_score").cast(pl.Float64, strict=False),
        pl.col("stiki_REP_USER").cast(pl.Float64, strict=False),
    )
    users = _read_csv(files, _VEWS_USERS, separator="\t", has_header=False,
                      new_columns=["user_id", "userid", "block_time", "block_reason", "kind"])
    labels = users.select("user_id", (pl.col("kind") == "vandal").cast(pl.Int64).alias("label"))
    by_file = edits.group_by("username").agg(pl.col("file_label").max())
    clash = labels.join(by_file.rename({"username": "user_id"}), on="user_id")
    clash = clash.filter(pl.col("label") != pl.col("file_label"))
    if clash.height:
        some = clash["user_id"].head(3).to_list()
        raise DataError(f"{files.path}: {clash.height} users whose label in {_VEWS_USERS} "
                        f"disagrees with their file prefix (e.g. {some}).")
    return events, labels


@register_dataset(
    "wiki-vandals",
    description="Wikipedia edits (VEWS v1.1) of users labelled vandal or benign, page titles only: "
    "33,511 users, 756,944 edits",
    licence="VEWS dataset terms (CRAPL licence per the original README); cite Kumar, Spezzano, "
    "Subrahmanian, KDD 2015",
    homepage="https://github.com/swathiraja16/Vandalism/tree/"
    "97a2c9190e42715d5a8da362d99eef1a31944ed6/vews_dataset_v1.1",
    layouts=(Layout("vews", "wiki-vandals", (_VEWS_USERS,)), Layout("vews", ".", (_VEWS_USERS,))),
    tasks=("detect",),
)
def read_wiki_vandals_events(files: DatasetFiles, kind: str) -> DatasetEvents:
    """The VEWS edits as events (labels: `read_wiki_vandals`)."""
    events, _ = _read_vews(files)
    notes = [f"user labels (1 vandal, 0 benign) are in {_VEWS_USERS}", LEAKAGE_NOTE]
    return DatasetEvents(events, str(files.path), notes=notes)


# ---------------------------------------------------------------------- petgen-wiki
def read_petgen_wiki(directory: Path | None = None) -> pl.DataFrame:
    """PETGEN Wikipedia post sequences, one row per user: user_id (seq_id), posts (list of
    texts, in order), label (1 malicious, 0 benign), context (the target page text, "" when
    absent) and relevancy (per history post: 1 if on the target context, [] when absent).
    `directory` defaults to the local copy."""
    return _read_posts(open_files("petgen-wiki", directory))


def _read_posts(files: DatasetFiles) -> pl.DataFrame:
    try:
        df = pl.read_ndjson(io.BytesIO(files.read(_PETGEN_FILE)), infer_schema_length=None)
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{files.where(_PETGEN_FILE)}: could not parse: {first_line(e)}") from None
    missing = [c for c in ("seq_id", "posts", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{files.where(_PETGEN_FILE)}: missing fields {missing}; every line needs "
                        "seq_id, posts and label.")
    context = pl.col("context").fill_null("") if "context" in df.columns else pl.lit("")
    relevancy = (pl.col("relevancy") if "relevancy" in df.columns
                 else pl.lit(None, dtype=pl.List(pl.Int64)))
    return df.select(
        pl.col("seq_id").alias("user_id"),
        pl.col("posts").cast(pl.List(pl.String)),
        pl.col("label").cast(pl.Int64),
        context.cast(pl.String).alias("context"),
        relevancy.cast(pl.List(pl.Int64)).fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
        .alias("relevancy"),
    )


@register_dataset(
    "petgen-wiki",
    description="PETGEN Wikipedia post sequences with text, labelled benign or malicious: "
    "794 users (397 malicious), 5-20 posts each",
    licence="MIT (claws-lab/petgen repository); cite He, Ahamad, Kumar, KDD 2021",
    homepage="https://github.com/claws-lab/petgen",
    layouts=(Layout("petgen", "petgen-wiki", (_PETGEN_FILE,)),
             Layout("petgen", ".", (_PETGEN_FILE,))),
    tasks=("detect", "attack"),
)
def read_petgen_wiki_events(files: DatasetFiles, kind: str) -> DatasetEvents:
    """petgen-wiki has no event log: its posts are read with `read_petgen_wiki`."""
    raise DataError(
        "petgen-wiki holds post texts without item ids, not an event log: use it with a text "
        "detector (userseq detect train --data petgen-wiki --model hlstm, cnn or minilm) or read "
        "it with userseq.data.datasets.wiki.read_petgen_wiki()."
    )
