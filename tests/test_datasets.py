"""Named datasets: counts on the staged copies, the publishers' layouts, downloads and checksums."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userseq.core.errors import DataError
from userseq.data import datasets as ds
from userseq.data.datasets import (
    POSITION_NOTE,
    Download,
    dataset_path,
    fetch_dataset,
    is_dataset_name,
    list_datasets,
    load_dataset,
    load_item_metadata,
)
from userseq.data.eventlog import EventLog

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data


def _shared(subdir: str) -> Path:
    """Path of a staged dataset directory, or skip the test with the reason."""
    path = SHARED / subdir
    if not path.is_dir():
        pytest.skip(f"staged data {path} is absent (needs the project's shared/data directory)")
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user data dir, no repo/cwd shared data, an empty cache: each test says where data is."""
    monkeypatch.delenv("USERSEQ_DATA", raising=False)
    monkeypatch.setenv("USERSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "_repo_shared_data", lambda: None)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # ../shared/data relative to the cwd does not exist
    return tmp_path


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"staged data {SHARED} is absent (needs the project's shared/data directory)")
    monkeypatch.setenv("USERSEQ_DATA", str(SHARED))
    return SHARED


def _sizes(log: EventLog) -> tuple[int, int, int]:
    return log.n_users, log.n_items, log.n_events


def _assert_positions(log: EventLog) -> None:
    """Position timestamps run 0..len-1 within every user's sequence."""
    offsets, _ = log.sequences()
    expected = np.arange(log.n_events) - np.repeat(offsets[:-1], np.diff(offsets))
    assert np.array_equal(log.timestamps(), expected)


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def _with_downloads(monkeypatch: pytest.MonkeyPatch, name: str, *downloads: Download) -> None:
    monkeypatch.setitem(ds.DATASETS, name, dataclasses.replace(ds.DATASETS[name], downloads=downloads))


# ---------------------------------------------------------------------- staged copies (shared/data)
def test_ml1m_sasrec_counts(shared_data: Path) -> None:
    _shared("ml-1m")
    log = load_dataset("ml-1m")
    assert _sizes(log) == (6040, 3416, 999_611)
    assert log.timestamp_kind == "position"
    assert POSITION_NOTE in log.notes
    _assert_positions(log)
    meta = load_item_metadata("ml-1m")
    assert meta is not None and meta.columns == ["item_id", "title", "genres"]
    assert meta["item_id"].dtype == log.item_ids.dtype
    assert set(log.item_ids.to_list()) <= set(meta["item_id"].to_list())  # ids are MovieLens MovieIDs
    toy = meta.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story (1995)" and "Animation" in toy["genres"]


def test_ml100k_counts_and_metadata(shared_data: Path) -> None:
    _shared("ml-100k")
    log = load_dataset("ml-100k")
    assert _sizes(log) == (943, 1682, 100_000)
    assert log.timestamp_kind == "time"
    assert "rating" in log.frame.columns
    meta = load_item_metadata("ml-100k")
    assert meta is not None and meta.height == 1682
    row = meta.filter(pl.col("item_id") == 2).row(0, named=True)
    assert row["title"] == "GoldenEye (1995)" and row["genres"] == ["Action", "Adventure", "Thriller"]


def test_ml_latest_small_counts(shared_data: Path) -> None:
    _shared("ml-latest-small")
    log = load_dataset("ml-latest-small")
    assert _sizes(log) == (610, 9724, 100_836)
    assert log.timestamp_kind == "time"
    assert log.frame["rating"].dtype == pl.Float64
    meta = load_item_metadata("ml-latest-small")
    assert meta is not None and meta.height == 9742


def test_beauty_and_lastfm_counts(shared_data: Path) -> None:
    _shared("amazon-s3rec")
    beauty = load_dataset("amazon-beauty")
    assert _sizes(beauty) == (22_363, 12_101, 198_502)
    assert beauty.timestamp_kind == "position"
    _assert_positions(beauty)
    assert _sizes(load_dataset("amazon-lastfm")) == (1090, 3646, 52_551)
    assert load_item_metadata("amazon-beauty") is None


def test_scientific_counts_and_text(shared_data: Path) -> None:
    _shared("amazon-text/Scientific")
    log = load_dataset("amazon-scientific")
    assert (log.n_users, log.n_items) == (8442, 4385)
    assert log.n_events == 59_384  # history (<= 50) + target, per user
    assert log.timestamp_kind == "position"
    meta = load_item_metadata("amazon-scientific")
    assert meta is not None and meta.height == 4385
    assert meta["title"].null_count() == 0
    assert set(meta["item_id"].to_list()) == set(log.item_ids.to_list())


def test_dataset_path_and_listing(shared_data: Path) -> None:
    _shared("ml-100k")
    assert dataset_path("ml-100k") == shared_data / "ml-100k"
    info = {d.name: d for d in list_datasets()}
    assert info["ml-100k"].found_at == shared_data / "ml-100k"
    assert fetch_dataset("ml-100k") == shared_data / "ml-100k"  # found locally: no download


# ---------------------------------------------------------------------- publishers' layouts
def test_ml100k_official_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _shared("ml-100k")
    user_dir = tmp_path / "userdata"
    user_dir.mkdir()
    with zipfile.ZipFile(user_dir / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.genre"):
            zf.write(src / name, f"ml-100k/{name}")
    monkeypatch.setenv("USERSEQ_DATA", str(user_dir))
    assert dataset_path("ml-100k") == user_dir / "ml-100k.zip"
    log = load_dataset("ml-100k")
    assert _sizes(log) == (943, 1682, 100_000)
    assert log.timestamp_kind == "time"
    assert "ml-100k.zip!ml-100k/u.data" in log.source
    meta = load_item_metadata("ml-100k")
    assert meta is not None and meta.height == 1682


def test_ml1m_ratings_dat_filter_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Official ratings.dat: items with < 5 ratings go, users stay, ties keep input order."""
    lines = []
    for u in range(1, 6):  # items 10, 11, 12 get 5 ratings each; item 20 only 4
        lines += [f"{u}::10::5::300", f"{u}::11::3::100", f"{u}::12::4::100"]
        if u < 5:
            lines.append(f"{u}::20::1::200")
    user_dir = tmp_path / "userdata"
    (user_dir / "ml-1m").mkdir(parents=True)
    (user_dir / "ml-1m" / "ratings.dat").write_text("\n".join(lines) + "\n")
    (user_dir / "ml-1m" / "movies.dat").write_bytes(
        "10::Caf\xe9 (1990)::Drama\n11::B (1991)::Comedy|Drama\n12::C (1992)::Horror\n".encode("latin-1")
    )
    monkeypatch.setenv("USERSEQ_DATA", str(user_dir))

    log = load_dataset("ml-1m")
    assert _sizes(log) == (5, 3, 15)
    assert log.timestamp_kind == "time"
    offsets, items = log.sequences()
    first_user = log.item_ids.to_numpy()[items[offsets[0] : offsets[1]] - 1].tolist()
    assert first_user == [11, 12, 10]  # by timestamp; 11 before 12 (same second, input order)
    assert log.frame["rating"].to_list()[:3] == [3, 4, 5]
    step = log.report[1]
    assert "item >= 5" in step.name
    assert (step.events_before, step.events_after, step.items_removed, step.users_removed) == (19, 15, 1, 0)

    meta = load_item_metadata("ml-1m")
    assert meta is not None
    assert meta.row(0) == (10, "Café (1990)", ["Drama"])


def test_sequence_file_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`user item item ...` lines become position-stamped events; options reach EventLog."""
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata" / "LastFM.txt").write_text("1 5 6 7\n2 6 7\n3 7 7 8 9\n")
    monkeypatch.setenv("USERSEQ_DATA", str(tmp_path / "userdata"))
    log = load_dataset("amazon-lastfm", dedup_consecutive=True, notes=["mine"])
    assert _sizes(log) == (3, 5, 8)
    assert log.notes == [POSITION_NOTE, "mine"]
    assert log.report[-1].name.startswith("dedup")
    _assert_positions(load_dataset("amazon-lastfm"))


# ---------------------------------------------------------------------- downloads
def test_download_verifies_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _shared("ml-100k")
    archive = tmp_path / "served" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.item", "u.genre"):
            zf.write(src / name, f"ml-100k/{name}")
    blob = archive.read_bytes()
    _with_downloads(
        monkeypatch,
        "ml-100k",
        Download(_file_url(archive), "ml-100k.zip", sha256=hashlib.sha256(blob).hexdigest(),
                 md5=hashlib.md5(blob).hexdigest(), size=len(blob), extract=True),
    )
    assert dataset_path("ml-100k") is None
    log = load_dataset("ml-100k")  # downloads into $USERSEQ_CACHE/ml-100k and extracts
    assert _sizes(log) == (943, 1682, 100_000)
    cached = tmp_path / "cache" / "ml-100k"
    assert (cached / "ml-100k" / "u.data").is_file()
    assert dataset_path("ml-100k") == cached / "ml-100k"


def test_checksum_mismatch_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "LastFM.txt"
    served.write_text("1 2 3\n")
    _with_downloads(monkeypatch, "amazon-lastfm", Download(_file_url(served), "LastFM.txt", sha256="0" * 64))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        fetch_dataset("amazon-lastfm", dest=dest)
    assert hashlib.sha256(b"1 2 3\n").hexdigest() in str(err.value)
    assert list(dest.iterdir()) == []  # the bad file is not left behind


def test_unverified_download_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "LastFM.txt"
    served.write_text("1 2 3\n")
    _with_downloads(monkeypatch, "amazon-lastfm", Download(_file_url(served), "LastFM.txt"))
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        path = fetch_dataset("amazon-lastfm", dest=tmp_path / "dest")
    assert (path / "LastFM.txt").read_text() == "1 2 3\n"


def test_unreachable_url_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = _file_url(tmp_path / "nowhere" / "ml-1m.zip")
    _with_downloads(monkeypatch, "ml-1m", dataclasses.replace(ds.DATASETS["ml-1m"].downloads[0], url=missing))
    with pytest.raises(DataError) as err:
        load_dataset("ml-1m")
    msg = str(err.value)
    assert "could not reach" in msg and missing in msg
    assert "$USERSEQ_DATA" in msg and "'ml-1m.zip'" in msg and "'ml-1m/ratings.dat'" in msg


# ---------------------------------------------------------------------- names
def test_unknown_name() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("ml-2m")
    assert str(err.value) == (
        "unknown dataset 'ml-2m'. Known: ml-1m, ml-100k, ml-latest-small, amazon-beauty, amazon-lastfm, "
        "amazon-scientific; or pass a path to an events file"
    )
    assert is_dataset_name("ml-1m") and not is_dataset_name("ml-2m") and not is_dataset_name("events.csv")


def test_registry_entries_are_complete() -> None:
    infos = list_datasets()
    assert [d.name for d in infos] == list(ds.DATASETS)
    for info in infos:
        assert info.url.startswith("https://") and info.description and info.licence
        assert info.found_at is None  # isolated: nothing local
    for spec in ds.DATASETS.values():
        for d in spec.downloads:
            assert d.checksum is not None, f"{spec.name}: {d.filename} has no checksum"
