"""Named datasets: counts on the staged copies, the publishers' layouts, downloads and checksums."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userseq.core.errors import DataError
from userseq.data import datasets as ds
from userseq.data.datasets import (
    DATASETS,
    POSITION_NOTE,
    Download,
    dataset_path,
    fetch_dataset,
    is_dataset_name,
    list_datasets,
    load_dataset,
    load_item_metadata,
)
from userseq.data.datasets import registry as ds_registry
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
    monkeypatch.setattr(ds_registry, "_repo_shared_data", lambda: None)
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


@pytest.fixture
def with_downloads():
    """Replace a registered dataset's downloads for one test (the spec is restored afterwards)."""
    saved: list[ds.DatasetSpec] = []

    def replace(name: str, *downloads: Download) -> None:
        spec = DATASETS.get(name).obj
        saved.append(spec)
        ds.register_dataset(dataclasses.replace(spec, downloads=downloads), replace=True)

    yield replace
    for spec in reversed(saved):
        ds.register_dataset(spec, replace=True)


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
    # ids are MovieLens MovieIDs
    assert set(log.item_ids.to_list()) <= set(meta["item_id"].to_list())
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
    assert row["title"] == "GoldenEye (1995)"
    assert row["genres"] == ["Action", "Adventure", "Thriller"]


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
        "10::Caf\xe9 (1990)::Drama\n11::B (1991)::Comedy|Drama\n12::C (1992)::Horror\n"
        .encode("latin-1")
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
    counts = (step.events_before, step.events_after, step.items_removed, step.users_removed)
    assert counts == (19, 15, 1, 0)

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
def test_download_verifies_and_extracts(tmp_path: Path, with_downloads) -> None:
    src = _shared("ml-100k")
    archive = tmp_path / "served" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.item", "u.genre"):
            zf.write(src / name, f"ml-100k/{name}")
    blob = archive.read_bytes()
    with_downloads(
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


def test_checksum_mismatch_raises(tmp_path: Path, with_downloads) -> None:
    served = tmp_path / "LastFM.txt"
    served.write_text("1 2 3\n")
    with_downloads("amazon-lastfm", Download(_file_url(served), "LastFM.txt", sha256="0" * 64))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        fetch_dataset("amazon-lastfm", dest=dest)
    assert hashlib.sha256(b"1 2 3\n").hexdigest() in str(err.value)
    assert list(dest.iterdir()) == []  # the bad file is not left behind


def test_unverified_download_warns(tmp_path: Path, with_downloads) -> None:
    served = tmp_path / "LastFM.txt"
    served.write_text("1 2 3\n")
    with_downloads("amazon-lastfm", Download(_file_url(served), "LastFM.txt"))
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        path = fetch_dataset("amazon-lastfm", dest=tmp_path / "dest")
    assert (path / "LastFM.txt").read_text() == "1 2 3\n"


def test_unreachable_url_says_where_to_put_files(tmp_path: Path, with_downloads) -> None:
    missing = _file_url(tmp_path / "nowhere" / "ml-1m.zip")
    download = DATASETS.get("ml-1m").obj.downloads[0]
    with_downloads("ml-1m", dataclasses.replace(download, url=missing))
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
        "unknown dataset 'ml-2m'. Known: ml-1m, ml-100k, ml-latest-small, amazon-beauty, "
        "amazon-lastfm, amazon-scientific, wiki-vandals, petgen-wiki; or pass a path to an events "
        "file"
    )
    assert is_dataset_name("ml-1m") and not is_dataset_name("ml-2m")
    assert not is_dataset_name("events.csv")


def test_registry_entries_are_complete() -> None:
    infos = list_datasets()
    assert [d.name for d in infos] == DATASETS.names()
    for info in infos:
        assert info.url.startswith("https://") and info.description and info.licence
        assert info.found_at is None  # isolated: nothing local
    for spec in (e.obj for e in DATASETS):
        for d in spec.downloads:
            assert d.checksum is not None, f"{spec.name}: {d.filename} has no checksum"


# ---------------------------------------------------------------------- registering a dataset
def test_register_dataset_through_public_api(tmp_path: Path, cli) -> None:
    """A dataset registered with `userseq.register_dataset` loads by name, in Python and the CLI."""
    import userseq

    home = tmp_path / "clicks"
    home.mkdir()
    (home / "clicks.csv").write_text("uid,item,ts\nu1,a,3\nu1,b,1\nu2,a,2\nu2,c,5\nu2,b,4\n")

    @userseq.register_dataset("toy-clicks", layouts=[ds.Layout("csv", home, "clicks.csv")],
                              tasks=("nextitem",))
    def toy_clicks(files: ds.DatasetFiles, kind: str) -> pl.DataFrame:
        """Five clicks of two users."""
        df = files.read_table("clicks.csv")
        return df.rename({"uid": "user_id", "item": "item_id", "ts": "timestamp"})

    try:
        assert is_dataset_name("toy-clicks") and dataset_path("toy-clicks") == home
        log = load_dataset("toy-clicks")
        assert _sizes(log) == (2, 3, 5)
        assert log.source == f"toy-clicks ({home / 'clicks.csv'})"
        offsets, items = log.sequences()
        first_user = log.item_ids.gather(items[offsets[0]:offsets[1]] - 1).to_list()
        assert first_user == ["b", "a"]  # sorted by time
        info = {d.name: d for d in list_datasets()}["toy-clicks"]
        assert info.description == "Five clicks of two users." and info.found_at == home
        res = cli("validate", "toy-clicks", "--json")
        assert res.code == 0, res.output
        assert '"users": 2' in res.stdout and '"events": 5' in res.stdout
        with pytest.raises(userseq.ConfigError, match="already registered"):
            userseq.register_dataset("toy-clicks", toy_clicks,
                                     layouts=[ds.Layout("csv", home, "x")])
    finally:
        DATASETS.unregister("toy-clicks")
    assert not is_dataset_name("toy-clicks")


def test_register_dataset_spec_from_a_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full DatasetSpec, found under $USERSEQ_DATA inside a zip; its reader globs and parses."""
    user_dir = tmp_path / "userdata"
    user_dir.mkdir()
    with zipfile.ZipFile(user_dir / "shop.zip", "w") as zf:
        zf.writestr("shop/part-2.jsonl", '{"user_id": "u1", "item_id": "x", "timestamp": 2}\n')
        zf.writestr("shop/part-1.jsonl", '{"user_id": "u1", "item_id": "y", "timestamp": 1}\n'
                    '{"user_id": "u2", "item_id": "x", "timestamp": 1}\n')

    def read(files: ds.DatasetFiles, kind: str) -> ds.DatasetEvents:
        names = files.glob("part-*.jsonl")
        assert names == ["part-1.jsonl", "part-2.jsonl"]
        frame = pl.concat([files.read_table(n) for n in names])
        return ds.DatasetEvents(frame, files.where(names[0]), notes=[f"kind {kind}"])

    spec = ds.DatasetSpec(name="shop", layouts=[ds.Layout("jsonl", "shop.zip", "part-1.jsonl")],
                          load=read, homepage="https://example.org/shop")
    assert ds.register_dataset(spec) is spec
    try:
        monkeypatch.setenv("USERSEQ_DATA", str(user_dir))
        log = load_dataset("shop")
        assert _sizes(log) == (2, 2, 3) and log.notes == ["kind jsonl"]
        assert "shop.zip!shop/part-1.jsonl" in log.source
        assert load_item_metadata("shop") is None
        monkeypatch.delenv("USERSEQ_DATA")
        with pytest.raises(DataError) as err:  # no local copy and nothing to download
            load_dataset("shop")
        assert "no download" in str(err.value) and "https://example.org/shop" in str(err.value)
        assert "$USERSEQ_DATA" in str(err.value) and "'shop.zip'" in str(err.value)
    finally:
        DATASETS.unregister("shop")


def test_spec_needs_a_layout() -> None:
    with pytest.raises(DataError, match="at least one Layout"):
        ds.register_dataset("nowhere", lambda files, kind: pl.DataFrame(), layouts=[])
    assert not is_dataset_name("nowhere")


# ---------------------------------------------------------------------- detection datasets
def _vews_copy(root: Path, vandal_label: str = "vandal") -> Path:
    """A tiny VEWS layout: benign_/vandal_ edit files (header, blank line) and users.tsv.gz."""
    d = root / "wiki-vandals"
    d.mkdir(parents=True)
    header = ("username,revid,revtime,pagetitle,isReverted,revertTime,cluebotRevert,stiki_score,"
              "stiki_REP_USER\n\n")
    rows = {
        "benign_2013_1.csv.gz": "ann,1,2013-01-01T10:00:00Z,Cat,False,,,0.1,0.2\n"
                                "ann,2,2013-01-01T11:00:00Z,User:ann,False,,,0.1,0.2\n",
        "vandal_2013_1.csv.gz":
            "bob,3,2013-01-02T10:00:00Z,Dog,True,2013-01-02T10:01:00Z,1,0.9,0.8\n",
    }
    for name, body in rows.items():
        (d / name).write_bytes(gzip.compress((header + body).encode()))
    users = f"ann\t1\t\t\tbenign\nbob\t2\t2013-01-03\tvandalism\t{vandal_label}\n"
    (d / "users.tsv.gz").write_bytes(gzip.compress(users.encode()))
    return d


def test_detection_datasets_are_registered() -> None:
    info = {d.name: d for d in list_datasets()}
    assert info["wiki-vandals"].tasks == ("detect",)
    assert info["petgen-wiki"].tasks == ("detect", "attack")
    assert "nextitem" in info["ml-1m"].tasks and "detect" not in info["ml-1m"].tasks
    with pytest.raises(DataError, match="no download") as err:
        fetch_dataset("wiki-vandals")
    assert "'wiki-vandals/users.tsv.gz'" in str(err.value)


def test_datasets_list_command_shows_every_task(cli) -> None:
    res = cli("datasets", "list")
    assert res.code == 0, res.output
    for name in DATASETS.names():
        assert name in res.stdout  # names are never cut
    assert "detect" in res.stdout and "nextitem, ctr" in res.stdout
    assert "not found" in res.stdout  # isolated: no local copies


def test_wiki_vandals_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from userseq.data.datasets.wiki import read_wiki_vandals

    d = _vews_copy(tmp_path / "userdata")
    events, labels = read_wiki_vandals(d)
    assert events.columns == ["user_id", "item_id", "timestamp", "revid", "isReverted",
                              "revertTime", "cluebotRevert", "stiki_score", "stiki_REP_USER"]
    assert events["user_id"].to_list() == ["ann", "ann", "bob"]
    assert events["isReverted"].to_list() == [False, False, True]
    assert labels.rows() == [("ann", 0), ("bob", 1)]
    monkeypatch.setenv("USERSEQ_DATA", str(tmp_path / "userdata"))
    assert dataset_path("wiki-vandals") == d
    log = load_dataset("wiki-vandals")  # the edits as an event log
    assert _sizes(log) == (2, 3, 3) and log.timestamp_kind == "time"
    assert any("leakage" in n for n in log.notes)


def test_wiki_vandals_label_clash(tmp_path: Path) -> None:
    from userseq.data.datasets.wiki import read_wiki_vandals

    d = _vews_copy(tmp_path, vandal_label="benign")
    with pytest.raises(DataError, match="1 users whose label in users.tsv.gz disagrees"):
        read_wiki_vandals(d)
    with pytest.raises(DataError, match="not a copy of wiki-vandals"):
        read_wiki_vandals(tmp_path / "elsewhere")


def test_petgen_wiki_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from userseq.data.datasets.wiki import read_petgen_wiki

    d = tmp_path / "petgen-wiki"
    d.mkdir()
    lines = ['{"seq_id": 7, "posts": ["a b", "c"], "label": 1, "context": "t", "relevancy": [1]}',
             '{"seq_id": 9, "posts": ["d"], "label": 0}']
    (d / "wiki_sequences.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    df = read_petgen_wiki(d)
    assert df.rows() == [(7, ["a b", "c"], 1, "t", [1]), (9, ["d"], 0, "", [])]
    monkeypatch.setenv("USERSEQ_DATA", str(tmp_path))
    with pytest.raises(DataError, match="post texts without item ids"):
        load_dataset("petgen-wiki")
    (d / "wiki_sequences.jsonl.gz").write_bytes(gzip.compress(b'{"seq_id": 1, "posts": ["x"]}'))
    with pytest.raises(DataError, match=r"missing fields \['label'\]"):
        read_petgen_wiki(d)


# ---------------------------------------------------------------------- import order
def test_data_modules_import_one_way() -> None:
    """Only `load` and `cli` join dataset names and files: io and eventlog never import datasets
    (not even inside functions), and datasets never import load or cli."""
    import ast

    root = Path(ds.__file__).resolve().parents[1]  # src/userseq/data

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    for low in ("io.py", "eventlog.py", "split.py", "batches.py", "config.py"):
        assert not any(m.startswith("userseq.data.datasets") for m in imported(root / low)), low
    for path in (root / "datasets").glob("*.py"):
        bad = {m for m in imported(path) if m in ("userseq.data.load", "userseq.data.cli")}
        assert not bad, f"{path.name} imports {bad}"
