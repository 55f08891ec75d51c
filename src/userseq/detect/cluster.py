"""Behaviour clustering of user embeddings with explanations (FinDeepBehaviorCluster idea).

`cluster_run(run_dir, out_dir)` reads a detector run (e.g. the unsupervised `behavior-ae`):
`embeddings.safetensors`, `users.parquet`, optional `user_pages.parquet`. It clusters the user
vectors (the embedding, readable features, or both) with HDBSCAN (scikit-learn) after a PCA
to a few dimensions, draws a 2-D PCA map (PNG), and writes a Markdown and an HTML report with, for
each cluster: size, malicious-label rate and purity, mean detector score, the readable features
that most distinguish it (standardised mean difference against all users), the pages its users
edit far more often than others (lift), and a depth-2 decision-tree rule separating it from the
rest.

`cluster_metrics` scores a clustering the way FinDeepBehaviorCluster uses it: clusters ranked by
risk (labelled vandal rate of *training* users), `capture_at_10pct` = share of the other users'
vandals inside the riskiest clusters covering 10% of them (`lift_at_10pct` = capture / 0.10),
recall (`capture_at_Npct`) and precision (`precision_at_Npct`) at user shares 10/20/30/50% with
the area under that capture curve (`capture_auc`; random 0.5), size-weighted `purity`,
`n_clusters`, and a depth-3 tree's rules (in words) recognising the risky clusters from readable
features, with their precision/recall for vandals.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.artifacts import load_tensors, write_json
from userseq.core.errors import ArtifactError, ConfigError

NON_FEATURES = ("user_id", "label", "split", "score")


def _sklearn():
    try:
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA
        from sklearn.tree import DecisionTreeClassifier, export_text
    except ImportError:
        raise ConfigError("clustering needs scikit-learn: pip install scikit-learn") from None
    return HDBSCAN, PCA, DecisionTreeClassifier, export_text


def cluster_embeddings(emb: np.ndarray, min_cluster_size: int | None = None, seed: int = 0,
                       pca_dims: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN cluster labels (-1 = noise) and 2-D PCA coordinates for the map."""
    HDBSCAN, PCA, _, _ = _sklearn()
    x = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    dims = min(pca_dims, x.shape[1], max(1, x.shape[0] - 1))
    z = PCA(n_components=dims, random_state=seed).fit_transform(x)
    mcs = min_cluster_size or max(10, int(round(0.005 * len(x))))
    labels = HDBSCAN(min_cluster_size=mcs, min_samples=min(mcs, 10), copy=True).fit_predict(z)
    return labels, z[:, :2]


def _rule(X: np.ndarray, names: list[str], target: np.ndarray, seed: int) -> str:
    _, _, Tree, export_text = _sklearn()
    if target.all() or not target.any():
        return ""
    tree = Tree(max_depth=2, random_state=seed, class_weight="balanced").fit(X, target)
    # the leaf path with the highest share of cluster members, as one readable rule
    t = tree.tree_
    best, best_path = -1.0, ""

    def walk(node: int, path: list[str]) -> None:
        nonlocal best, best_path
        if t.children_left[node] == -1:
            v = t.value[node][0]
            share = v[1] / v.sum() if v.sum() else 0
            if share > best:
                best, best_path = share, " and ".join(path) or "(all)"
            return
        f, thr = names[t.feature[node]], t.threshold[node]
        walk(t.children_left[node], [*path, f"{f} <= {thr:.3g}"])
        walk(t.children_right[node], [*path, f"{f} > {thr:.3g}"])

    walk(0, [])
    return best_path


def _top_pages(page_sets: pl.DataFrame, m: np.ndarray) -> list[dict[str, Any]]:
    """The pages cluster `m`'s users edit far more often than all users (lift), most first."""
    size = m.sum()
    members = pl.Series("row", np.flatnonzero(m))
    inside = page_sets.filter(pl.col("row").is_in(members.implode()))
    cnt_in = inside.group_by("page").len().rename({"len": "n_in"})
    cnt_all = page_sets.group_by("page").len().rename({"len": "n_all"})
    t = cnt_in.join(cnt_all, on="page").with_columns(
        (pl.col("n_in") / size).alias("share_in"),
        ((pl.col("n_in") / size) / (pl.col("n_all") / len(m))).alias("lift"))
    t = t.filter(pl.col("n_in") >= max(3, int(0.02 * size)))
    t = t.sort(["lift", "n_in"], descending=True)
    return [{"page": r["page"], "users": int(r["n_in"]), "lift": float(r["lift"])}
            for r in t.head(5).iter_rows(named=True)]


def explain_clusters(users: pl.DataFrame, labels: np.ndarray, pages: pl.DataFrame | None = None,
                     seed: int = 0, top: int = 4) -> list[dict[str, Any]]:
    """Per cluster: size, label rate, purity, mean score, the `top` most distinguishing readable
    features, a depth-2 tree rule and (with `pages`) the over-represented pages."""
    feats = [c for c in users.columns if c not in NON_FEATURES]
    X = users.select(feats).to_numpy().astype(np.float64)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    y = users["label"].to_numpy()
    scores = users["score"].to_numpy()
    page_sets = pages.unique() if pages is not None and pages.height else None
    out = []
    for c in sorted(set(labels.tolist())):
        m = labels == c
        d = (X[m].mean(0) - mu) / sd
        order = np.argsort(-np.abs(d))[:top]
        rate = float(y[m].mean())
        info: dict[str, Any] = {
            "cluster": int(c), "size": int(m.sum()), "share": float(m.mean()),
            "malicious_rate": rate, "purity": max(rate, 1 - rate),
            "mean_score": float(scores[m].mean()),
            "distinguishing": [{"feature": feats[j], "cluster_mean": float(X[m, j].mean()),
                                "overall_mean": float(mu[j]), "std_diff": float(d[j])}
                               for j in order],
            "rule": _rule(X, feats, m, seed) if c != -1 else "",
        }
        if page_sets is not None:
            info["top_pages"] = _top_pages(page_sets, m)
        out.append(info)
    return out


def _plot(xy: np.ndarray, labels: np.ndarray, y: np.ndarray, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the cluster map needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    noise = labels == -1
    ax = axes[0]
    ax.scatter(xy[noise, 0], xy[noise, 1], s=2, c="lightgrey", label="noise")
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(sorted(set(labels[~noise].tolist()))):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(i % 20), label=f"c{c}")
        cx, cy = np.median(xy[m], axis=0)
        ax.text(cx, cy, str(c), fontsize=9, weight="bold")
    ax.set_title("HDBSCAN clusters (PCA of the clustered vectors)")
    ax = axes[1]
    ax.scatter(xy[y == 0, 0], xy[y == 0, 1], s=2, c="tab:blue", alpha=0.5, label="benign")
    ax.scatter(xy[y == 1, 0], xy[y == 1, 1], s=2, c="tab:red", alpha=0.5, label="malicious")
    ax.legend(markerscale=5)
    ax.set_title("labels")
    for a in axes:
        a.set_xlabel("PC1")
        a.set_ylabel("PC2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cluster_section(c: dict[str, Any]) -> list[str]:
    lines = [f"## Cluster {c['cluster']} ({c['size']:,} users, malicious rate "
             f"{c['malicious_rate']:.2f})", "",
             "Distinguishing features (cluster mean vs all users, standardised difference):", ""]
    lines += [f"- `{f['feature']}`: {f['cluster_mean']:.3g} vs {f['overall_mean']:.3g} "
              f"({f['std_diff']:+.2f} sd)" for f in c["distinguishing"]]
    if c.get("rule"):
        lines += ["", f"Rule (depth-2 tree, cluster vs rest): `{c['rule']}`"]
    if c.get("top_pages"):
        lines += ["", "Pages over-represented: " + "; ".join(
            f"{p['page']} ({p['users']} users, lift {p['lift']:.1f})" for p in c["top_pages"])]
    return [*lines, ""]


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Behaviour clusters: {summary['run']}", "",
             f"{summary['users']:,} users ({summary['sampled']}), {summary['clusters']} clusters, "
             f"{summary['noise_share']:.1%} noise; size-weighted purity of clusters "
             f"{summary['weighted_purity']:.3f} (label rate overall "
             f"{summary['malicious_rate']:.3f}).", "",
             *_metrics_lines(summary.get("metrics")),
             "![map](map.png)", "",
             "| cluster | users | share | malicious rate | purity | mean score |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in summary["per_cluster"]:
        name = "noise" if c["cluster"] == -1 else str(c["cluster"])
        lines.append(f"| {name} | {c['size']:,} | {c['share']:.1%} | {c['malicious_rate']:.3f} "
                     f"| {c['purity']:.3f} | {c['mean_score']:.3f} |")
    lines += ["", "Size distribution (clusters only): " + ", ".join(
        f"{k} {v}" for k, v in summary["size_distribution"].items()), ""]
    for c in summary["per_cluster"]:
        if c["cluster"] != -1:
            lines += _cluster_section(c)
    return "\n".join(lines) + "\n"


def _metrics_lines(m: dict[str, Any] | None) -> list[str]:
    if not m:
        return []
    lines = [f"Clustered: {m['features']}. Top-risk clusters (risk from {m['risk_from']}) covering "
             f"10% of the {m['evaluated_users']:,} evaluated users hold "
             f"{m['capture_at_10pct']:.1%} of their {m['evaluated_vandals']:,} vandals (lift "
             f"{m['lift_at_10pct']:.2f}); purity {m['purity']:.3f}; {m['n_clusters']} clusters; "
             f"HDBSCAN {m['cluster_seconds']:.1f} s.", ""]
    if m.get("capture_curve"):
        lines += ["Riskiest clusters covering a share of the evaluated users: recall (share of "
                  "their vandals caught) and precision (vandal rate of the users taken); area "
                  f"under the capture curve {m['capture_auc']:.3f} (random "
                  f"{m['capture_auc_random']:.2f}, best possible {m['capture_auc_best']:.3f}).",
                  "", "| users taken | recall | precision | lift |", "|---:|---:|---:|---:|"]
        lines += [f"| {p['share']:.0%} | {p['capture']:.3f} | {p['precision']:.3f} "
                  f"| {p['lift']:.2f} |" for p in m["capture_curve"]]
        lines.append("")
    r = m["rule"]
    if r["rules"]:
        prec = "n/a" if r["precision"] is None else f"{r['precision']:.3f}"
        rec = "n/a" if r["recall"] is None else f"{r['recall']:.3f}"
        lines += [f"Rules for the risky clusters (depth-3 tree on readable features; precision "
                  f"{prec}, recall {rec} for vandals):", ""]
        lines += [f"- {rule}" for rule in r["rules"]]
        lines.append("")
    return lines


def markdown_html(md: str, title: str = "clusters") -> str:
    """A minimal, dependency-free HTML rendering of the Markdown report."""
    body, in_table, in_list = [], False, False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            if not in_table:
                body.append("<table border=1 cellpadding=3>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.find("](") + 2:line.rfind(")")] if "](" in line else "map.png"
            body.append(f'<img src="{html.escape(src)}" width="100%">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    head = f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>\n"
    return head + "\n".join(body) + "\n"


def _read_run(d: Path) -> tuple[np.ndarray, pl.DataFrame]:
    if not (d / "users.parquet").is_file():
        raise ArtifactError(f"{d}: users.parquet missing; cluster a run written by "
                            "`userseq detect train`.")
    tensors, _ = load_tensors(d / "embeddings.safetensors")
    emb = tensors["embeddings"].numpy()
    users = pl.read_parquet(d / "users.parquet")
    if len(users) != len(emb):
        raise ArtifactError(f"{d}: users.parquet ({len(users)}) and embeddings ({len(emb)}) "
                            "disagree.")
    return emb, users


def _user_pages(d: Path, pick: np.ndarray) -> pl.DataFrame | None:
    """(row in the sample, page) of every edit of a sampled user, if the run has user_pages."""
    if not (d / "user_pages.parquet").is_file():
        return None
    up = pl.read_parquet(d / "user_pages.parquet")
    top = int(up["user"].max())
    remap = np.full(top + 1, -1, dtype=np.int64)
    remap[pick[pick <= top]] = np.arange(int((pick <= top).sum()))
    rows = pl.Series("row", remap[up["user"].to_numpy()])
    return up.with_columns(rows).filter(pl.col("row") >= 0).select("row", "page")


def _summary(d: Path, users: pl.DataFrame, n_all: int, labels: np.ndarray,
             per: list[dict[str, Any]]) -> dict[str, Any]:
    clustered = [c for c in per if c["cluster"] != -1]
    sizes = np.array([c["size"] for c in clustered])
    sampled = f"random sample of {len(users):,}" if len(users) < n_all else "all users"
    return {
        "run": str(d), "users": len(users), "sampled": sampled,
        "clusters": len(clustered), "noise_share": float((labels == -1).mean()),
        "malicious_rate": float(users["label"].mean()),
        "weighted_purity": float(sum(c["purity"] * c["size"] for c in clustered)
                                 / max(1, sizes.sum())),
        "size_distribution": {"min": int(sizes.min()) if len(sizes) else 0,
                              "median": float(np.median(sizes)) if len(sizes) else 0,
                              "max": int(sizes.max()) if len(sizes) else 0},
        "per_cluster": per,
    }


FEATURE_SETS = ("both", "embedding", "hand")


def cluster_inputs(emb: np.ndarray, users: pl.DataFrame, features: str) -> np.ndarray:
    """What is clustered: the user embedding, the readable (hand) features, or both side by side
    (each block standardised, the hand block weighted like the embedding block)."""
    if features not in FEATURE_SETS:
        raise ConfigError(f"--features must be one of {', '.join(FEATURE_SETS)} (got "
                          f"{features!r}).")
    hand = users.select([c for c in users.columns if c not in NON_FEATURES]).to_numpy()
    hand = np.log1p(np.maximum(hand.astype(np.float64), 0))
    if features == "embedding":
        return emb
    if features == "hand":
        return hand
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    h = (hand - hand.mean(0)) / (hand.std(0) + 1e-6)
    return np.concatenate([z, h * np.sqrt(z.shape[1] / max(1, h.shape[1]))], axis=1)


def risk_order(labels: np.ndarray, y: np.ndarray, known: np.ndarray) -> list[int]:
    """Clusters (noise included as one group) by risk, highest first: the vandal rate among the
    users whose label is known (`known`: training users), Laplace-smoothed."""
    clusters = sorted(set(labels.tolist()))
    risk = {c: (y[(labels == c) & known].sum() + 1) / (((labels == c) & known).sum() + 2)
            for c in clusters}
    return sorted(clusters, key=lambda c: (-risk[c], c))


def capture_at(labels: np.ndarray, y: np.ndarray, order: list[int], share: float = 0.10,
               ) -> tuple[float, list[int]]:
    """Share of the vandals among users that the highest-risk clusters covering `share` of the
    users hold (the last cluster taken pro rata), and the clusters taken."""
    n, total = len(labels), max(1, int(y.sum()))
    budget, caught, taken = share * n, 0.0, []
    for c in order:
        m = labels == c
        size = int(m.sum())
        if budget <= 0:
            break
        take = min(1.0, budget / size)
        caught += take * y[m].sum()
        budget -= take * size
        taken.append(c)
    return float(caught / total), taken


CURVE_SHARES = (0.10, 0.20, 0.30, 0.50)


def capture_curve(labels: np.ndarray, y: np.ndarray, order: list[int],
                  shares: tuple[float, ...] = CURVE_SHARES) -> dict[str, Any]:
    """Recall and precision of the riskiest clusters at cumulative user shares, and the area under
    the capture curve.

    Taking the clusters in `order` (each pro rata at the boundary) traces a piecewise-linear curve
    from (0, 0) to (1, 1): x = share of users taken, y = share of their vandals caught. At each
    share s: `capture` (recall) = y(s), `precision` = vandals caught / users taken (the vandal
    rate of the taken users), `lift` = capture / s. `auc` is the exact area under the curve;
    random order gives 0.5 (`auc_random`) and the best possible order, all vandals first, gives
    1 - p/2 for vandal rate p (`auc_best`)."""
    n, v = len(labels), int(y.sum())
    xs, cs = [0.0], [0.0]
    for c in order:
        m = labels == c
        if not m.any():
            continue
        xs.append(xs[-1] + m.sum() / n)
        cs.append(cs[-1] + (y[m].sum() / v if v else 0.0))
    xs_a, cs_a = np.array(xs), np.array(cs)
    points = []
    for s in shares:
        cap = float(np.interp(s, xs_a, cs_a))
        points.append({"share": s, "capture": cap, "lift": cap / s,
                       "precision": cap * v / (s * n) if n else 0.0})
    rate = v / n if n else 0.0
    auc = float(np.sum((xs_a[1:] - xs_a[:-1]) * (cs_a[1:] + cs_a[:-1]) / 2))
    return {"points": points, "auc": auc, "auc_random": 0.5, "auc_best": 1 - rate / 2}


def rule_metrics(X: np.ndarray, names: list[str], target: np.ndarray, y: np.ndarray,
                 fit_on: np.ndarray, score_on: np.ndarray, seed: int = 0, depth: int = 3,
                 ) -> dict[str, Any]:
    """A depth-`depth` tree fitted on `fit_on` users to recognise the risky clusters from readable
    features; its positive leaves in words, and their precision/recall for vandals on
    `score_on` users."""
    _, _, Tree, _ = _sklearn()
    if target[fit_on].all() or not target[fit_on].any():
        return {"rules": [], "precision": None, "recall": None}
    tree = Tree(max_depth=depth, random_state=seed, class_weight="balanced",
                min_samples_leaf=20).fit(X[fit_on], target[fit_on])
    t = tree.tree_
    rules: list[str] = []

    def walk(node: int, path: list[str]) -> None:
        if t.children_left[node] == -1:
            if int(np.argmax(t.value[node][0])) == 1:
                rules.append(" and ".join(path) or "(all users)")
            return
        f, thr = names[t.feature[node]], t.threshold[node]
        walk(t.children_left[node], [*path, f"{f} <= {thr:.3g}"])
        walk(t.children_right[node], [*path, f"{f} > {thr:.3g}"])

    walk(0, [])
    hit = tree.predict(X[score_on]) == 1
    ys = y[score_on]
    return {"rules": rules, "precision": float(ys[hit].mean()) if hit.any() else None,
            "recall": float(hit[ys == 1].mean()) if (ys == 1).any() else None,
            "matched": int(hit.sum())}


def cluster_metrics(X_read: np.ndarray, names: list[str], labels: np.ndarray, y: np.ndarray,
                    known: np.ndarray, seed: int = 0, share: float = 0.10) -> dict[str, Any]:
    """capture_at_10pct / lift_at_10pct (on users whose label was not used for risk), purity,
    n_clusters, noise share, and the rules describing the risky clusters."""
    order = risk_order(labels, y, known)
    ev = ~known if (~known).any() else np.ones(len(y), dtype=bool)
    capture, taken = capture_at(labels[ev], y[ev], order, share)
    clustered = labels != -1
    purity = 0.0
    for c in set(labels[clustered].tolist()):
        r = y[labels == c].mean()
        purity += max(r, 1 - r) * (labels == c).sum()
    risky = np.isin(labels, taken)
    fit_on = np.flatnonzero(known) if known.any() else np.arange(len(y))
    rules = rule_metrics(X_read, names, risky, y, fit_on, np.flatnonzero(ev), seed)
    curve = capture_curve(labels[ev], y[ev], order)
    at = {f"{k}_at_{round(p['share'] * 100)}pct": p[k] for p in curve["points"]
          for k in ("capture", "precision")}
    return {"capture_at_10pct": capture, "lift_at_10pct": capture / share,
            **{k: at[k] for k in at if k != "capture_at_10pct"},
            "capture_auc": curve["auc"], "capture_auc_random": curve["auc_random"],
            "capture_auc_best": curve["auc_best"], "capture_curve": curve["points"],
            "purity": float(purity / max(1, clustered.sum())),
            "n_clusters": int(len(set(labels[clustered].tolist()))),
            "noise_share": float((~clustered).mean()), "risky_clusters": [int(c) for c in taken],
            "rule": rules, "rule_precision": rules["precision"], "rule_recall": rules["recall"],
            "evaluated_users": int(ev.sum()), "evaluated_vandals": int(y[ev].sum()),
            "risk_from": "training users' labels" if known.any() else "all labels"}


def cluster_run(run_dir: str | Path, out_dir: str | Path | None = None,
                min_cluster_size: int | None = None, max_users: int = 0, seed: int = 0,
                features: str = "both") -> dict[str, Any]:
    """Cluster a detector run's users (`features`: embedding, hand features or both); write
    OUT/metrics.json (capture_at_10pct, lift_at_10pct, purity, n_clusters, rules), map.png,
    report.md, report.html, clusters.json. OUT defaults to RUN/cluster; `max_users` > 0 clusters
    a seeded sample."""
    import time

    d = Path(run_dir)
    o = Path(out_dir) if out_dir is not None else d / "cluster"
    emb, users = _read_run(d)
    n_all = len(users)
    rng = np.random.default_rng(seed)
    pick = (np.sort(rng.choice(n_all, max_users, replace=False)) if 0 < max_users < n_all
            else np.arange(n_all))
    emb, users = emb[pick], users[pick]
    pages = _user_pages(d, pick)
    t0 = time.perf_counter()
    labels, xy = cluster_embeddings(cluster_inputs(emb, users, features), min_cluster_size, seed)
    seconds = time.perf_counter() - t0
    o.mkdir(parents=True, exist_ok=True)
    names = [c for c in users.columns if c not in NON_FEATURES]
    y = users["label"].to_numpy()
    known = (users["split"] == "train").to_numpy() if "split" in users.columns else \
        np.zeros(len(users), dtype=bool)
    metrics = {"run": str(d), "features": features, "users": len(users),
               "cluster_seconds": round(seconds, 2),
               **cluster_metrics(users.select(names).to_numpy().astype(np.float64), names,
                                 labels, y, known, seed)}
    write_json(metrics, o / "metrics.json")
    summary = _summary(d, users, n_all, labels, explain_clusters(users, labels, pages, seed))
    summary["metrics"] = metrics
    _plot(xy, labels, users["label"].to_numpy(), o / "map.png")
    md = _markdown(summary)
    (o / "report.md").write_text(md)
    (o / "report.html").write_text(markdown_html(md))
    write_json(summary, o / "clusters.json")
    assignments = pl.DataFrame({"user_id": users["user_id"], "cluster": labels})
    assignments.write_parquet(o / "assignments.parquet")
    return summary
