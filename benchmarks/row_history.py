"""Every configuration a next-item row was ever published with, from git history (issue #14 item 2:
"every configuration tried is recorded").

A row of benchmarks/nextitem_runs.json that was replaced (for instance the Beauty SASRec row, twice)
leaves its earlier versions only in git. This script walks the commits that changed that file and
lists, per (dataset, model), each published version: commit, date, command (with the config it
named, read at that commit), validation and test NDCG@10, epochs and why training stopped, and
whether it is the current row. The validation column is what each replacement should have been
chosen on; the table shows where a test score was seen before a config changed.

    python benchmarks/row_history.py            # render RESULTS.md section `nextitem-history`
    python benchmarks/row_history.py --no-write # print only

No training, no timing: it reads git objects only (needs the repository's history).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

ROOT = HERE.parent
STORE = "benchmarks/nextitem_runs.json"
SECTION = "nextitem-history"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def config_at(rev: str, cmd: str) -> str:
    """The model/train settings of the config file a command names, as it was at `rev`."""
    parts = cmd.split()
    if "--config" not in parts:
        return "defaults"
    path = parts[parts.index("--config") + 1]
    try:
        import yaml

        cfg = yaml.safe_load(git("show", f"{rev}:{path}")) or {}
    except (subprocess.CalledProcessError, ValueError):
        return f"{path} (not in that commit)"
    keep = {k: cfg[k] for k in ("model", "train", "loss") if k in cfg}
    return json.dumps(keep, separators=(",", ":")).replace('"', "")


def history() -> list[dict]:
    revs = git("log", "--reverse", "--format=%h %ad", "--date=short", "--", STORE).split("\n")
    seen: dict[tuple, dict] = {}
    out = []
    for line in filter(None, revs):
        rev, date = line.split()
        rows = json.loads(git("show", f"{rev}:{STORE}"))
        for key, r in rows.items():
            m = r.get("metrics", {})
            version = (r.get("cmd"), m.get("test", {}).get("ndcg@10"))
            if seen.get(key) == version:
                continue
            seen[key] = version
            t = m.get("train", {})
            out.append({"row": key, "commit": rev, "date": date, "cmd": r.get("cmd", ""),
                        "config": config_at(rev, r.get("cmd", "")),
                        "valid": t.get("best_valid", m.get("valid", {}).get("ndcg@10")),
                        "test": m.get("test", {}).get("ndcg@10"), "epochs": t.get("epochs"),
                        "best_epoch": t.get("best_epoch"), "stopped": t.get("stopped", "")})
    current = {k: (r.get("cmd"), r.get("metrics", {}).get("test", {}).get("ndcg@10"))
               for k, r in json.loads((ROOT / STORE).read_text()).items()}
    for h in out:
        h["current"] = current.get(h["row"]) == (h["cmd"], h["test"])
    return out


def fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "—"


def table(write: bool) -> None:
    rows = history()
    lines = [f"Each version of each row of `{STORE}` in git history (oldest first). A row with "
             "more than one version was replaced; compare the versions on validation NDCG@10 "
             "(what a replacement must be chosen on), not test.", "",
             "| row | commit | date | config (at that commit) | valid NDCG@10 | test NDCG@10 | "
             "epochs (best) | stopped | current |", "|---|---|---|---|---|---|---|---|---|"]
    for h in sorted(rows, key=lambda h: h["row"]):
        lines.append(f"| {h['row']} | {h['commit']} | {h['date']} | `{h['config']}` | "
                     f"{fmt(h['valid'])} | {fmt(h['test'])} | {h['epochs']} ({h['best_epoch']}) "
                     f"| {h['stopped']} | {'yes' if h['current'] else 'replaced'} |")
    replaced = sorted({h["row"] for h in rows if not h["current"]})
    lines += ["", f"Rows replaced at least once: {', '.join(replaced) or 'none'}. Rendered by "
              "`python benchmarks/row_history.py` from git objects (no training)."]
    results.publish(SECTION, "Next-item rows: every published configuration (git history)",
                    lines, write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true")
    table(not ap.parse_args().no_write)


if __name__ == "__main__":
    main()
