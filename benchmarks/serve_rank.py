"""Two-stage serving load test: POST /rank = retrieve 100 with a next-item run + rank the 100 with
a CTR run, through `userseq serve RUN --ranker CTR_RUN` (issue #21 item 1).

Both runs are trained here on the same dataset (default ml-latest-small: the same item ids; ML-1M
as shipped in shared/data has no ratings, so no CTR labels) unless they exist already:

    userseq train --data ml-latest-small --model sasrec --out benchmarks/_work/rank/retrieval
    userseq ctr train --data ml-latest-small --model din --out benchmarks/_work/rank/ranker-din
    (and --model sdim: one service per ranker, `--rankers din sdim`)

then the service is started (a subprocess, torch 1 thread) and loaded with an open loop at
`--rate` requests/s (default 200; latency counts from the scheduled send time, so queueing is
charged), `--repeats` times per request kind:
- user: a known user id (precomputed retrieval vector; the ranker reads its stored history);
- history: the last 50 items of a random user posted as an explicit history (encoded on the fly;
  the ranker reads the posted history).
Each request is {retrieve: 100, k: 10}; an answer counts as an error unless it is 200 with 10
items; each answer is recorded as ok / 4xx / 503 (the in-flight limit) / other / timeouts (no
answer within `--timeout` s). Target: p99 < 20 ms and 0 errors on the 2-core machine (client
and server share it).

    python benchmarks/serve_rank.py                       # train if needed, measure, write
    python benchmarks/serve_rank.py --rate-seconds 2 --repeats 1 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402
from results import log, publish  # noqa: E402
from serve_load import free_port, request_bodies, start_server, stop_server, summary  # noqa: E402

STORE = HERE / "serve_rank_runs.json"
TARGET_P99_MS = 20.0


def train_runs(args: argparse.Namespace, model: str) -> tuple[Path, Path]:
    work = args.work
    retrieval, ranker = work / "retrieval", work / f"ranker-{model}"
    if not (retrieval / "model.safetensors").exists():
        log(f"training the retrieval run {retrieval}")
        results.run_userseq(["userseq", "train", "--data", args.data, "--model", "sasrec",
                             "--out", str(retrieval), "--epochs", str(args.epochs),
                             "--max-minutes", str(args.max_minutes), "--seed", "0", "--quiet",
                             "--overwrite"])
    if not (ranker / "model.safetensors").exists():
        log(f"training the ranking run {ranker}")
        results.run_userseq(["userseq", "ctr", "train", "--data", args.data, "--model",
                             model, "--out", str(ranker), "--epochs", str(args.ctr_epochs),
                             "--max-minutes", str(args.max_minutes), "--seed", "0", "--quiet",
                             "--overwrite"])
    return retrieval, ranker


OUTCOMES = ("ok", "4xx", "503", "other", "timeouts")


async def _post(client, body: dict, server_ms: list) -> str:
    """The outcome of one POST /rank: ok (200 with k items), 4xx, 503 (the in-flight limit),
    other (any other status, a 200 without k items, a connection error) or timeouts (no answer
    within the client timeout)."""
    try:
        async with client.post("/rank", json=body) as r:
            data = await r.json() if r.status == 200 else await r.read()
            if r.status == 503:
                return "503"
            if 400 <= r.status < 500:
                return "4xx"
            if r.status != 200 or len(data["items"]) != body["k"]:
                return "other"
            server_ms.append((data["timings_ms"]["retrieval"], data["timings_ms"]["ranking"]))
            return "ok"
    except TimeoutError:  # aiohttp's ClientTimeout raises asyncio.TimeoutError (= TimeoutError)
        return "timeouts"
    except Exception:
        return "other"


async def open_loop(url: str, bodies: list[dict], rate: float, timeout_s: float = 10.0
                    ) -> tuple[dict, list]:
    import aiohttp

    lat: list[float] = []
    server_ms: list = []
    outcomes = dict.fromkeys(OUTCOMES, 0)
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def one(body: dict, scheduled: float) -> None:
            outcome = await _post(client, body, server_ms)
            lat.append(time.perf_counter() - scheduled)
            outcomes[outcome] += 1

        t0 = time.perf_counter()
        tasks = []
        for i, body in enumerate(bodies):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, scheduled)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    res = summary(lat, len(bodies) - outcomes["ok"], wall)
    return {**res, "status": outcomes}, server_ms


def measure(args: argparse.Namespace, retrieval: Path, ranker: Path) -> list[dict]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(retrieval, port, ["--ranker", str(ranker), *args.server_args.split()])
    rows = []
    try:
        info = httpx.get(url + "/info", timeout=10).json()
        n_rate = int(args.rate * args.rate_seconds)
        for kind in args.kinds:
            bodies = request_bodies(retrieval, args.repeats * n_rate + 200, kind, args.k)
            bodies = [{**b, "retrieve": args.retrieve, "k": args.k} for b in bodies]
            asyncio.run(open_loop(url, bodies[:200], 50))  # warm-up (not recorded)
            pos = 200
            for rep in range(args.repeats):
                with results.LoadMonitor(every=2.0) as mon:
                    res, server_ms = asyncio.run(open_loop(url, bodies[pos : pos + n_rate],
                                                           args.rate, args.timeout))
                pos += n_rate
                sm = np.array(server_ms) if server_ms else np.full((1, 2), np.nan)
                row = {**res, "kind": kind, "repeat": rep + 1, "rate": args.rate,
                       "seconds": args.rate_seconds, "retrieve": args.retrieve, "k": args.k,
                       "server_retrieval_p50_ms": float(np.median(sm[:, 0])),
                       "server_ranking_p50_ms": float(np.median(sm[:, 1])),
                       "server_ranking_p99_ms": float(np.percentile(sm[:, 1], 99)),
                       "retrieval_run": f"{info['model']['name']} d={info['model']['dim']}, "
                                        f"{info['items']:,} items, {info['users']:,} users",
                       "ranker": f"{info['ranker']['model']}, {info['ranker']['items']:,} items "
                                 f"({info['ranker']['shared_items']:,} shared)",
                       **results.provenance(mon, seeds=[0], data=args.data)}
                log(f"{kind} #{rep + 1}: p50 {res['p50']:.1f} p99 {res['p99']:.1f} ms, "
                    f"{res['errors']} errors {res['status']}, {res['rps']:.0f} req/s, server "
                    f"retrieval/ranking p50 {row['server_retrieval_p50_ms']:.1f}/"
                    f"{row['server_ranking_p50_ms']:.1f} ms ({mon.verdict})")
                rows.append(row)
    finally:
        stop_server(proc)
    return rows


def _status(r: dict) -> str:
    """ok / 4xx / 503 / other / timeouts; rows from before the status codes were recorded show
    their error count alone."""
    st = r.get("status")
    if st is None:
        return f"{r['requests'] - r['errors']:,} ok, {r['errors']:,} errors (codes not recorded)"
    return " / ".join(f"{st[k]:,}" for k in OUTCOMES)


def section(rows: dict) -> list[str]:
    lines = ["Rows of `benchmarks/serve_rank_runs.json` (each with its command, commit, machine "
             "and load verdict). `userseq serve RETRIEVAL_RUN --ranker RANKING_RUN` (1 uvicorn "
             "worker, torch 1 thread); open loop, latency from the scheduled send time; client "
             "and server share the machine's cores. Each request: POST /rank {retrieve: 100, "
             "k: 10}; `user` = a known user id, `history` = the last 50 items of a random user "
             "posted as a history. Server stage times are the medians the service reports "
             "(`timings_ms`).", "",
             "| ranker | request | rate req/s | s | requests | ok / 4xx / 503 / other / timeouts "
             "| achieved req/s | p50 ms | p95 ms | p99 ms | server retrieval p50 ms | server "
             "ranking p50 / p99 ms | runs | load verdict | date |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    ordered = sorted(rows.values(), key=lambda r: (r["ranker"], r["kind"], r["date"],
                                                   r["repeat"]))
    for r in ordered:
        lines.append(f"| {r['ranker'].split(',')[0]} | {r['kind']} | {r['rate']:.0f} | "
                     f"{r['seconds']:.0f} | {r['requests']:,} | {_status(r)} | {r['rps']:.0f} | "
                     f"{r['p50']:.2f} | {r['p95']:.2f} | "
                     f"{r['p99']:.2f} | {r['server_retrieval_p50_ms']:.2f} | "
                     f"{r['server_ranking_p50_ms']:.2f} / {r['server_ranking_p99_ms']:.2f} | "
                     f"{r['retrieval_run']}; ranker {r['ranker']} | {r['verdict']} "
                     f"(load max {r['load_max']}) | {r['date']} |")
    lines.append("")
    latest = max((r["date"], r["commit"]) for r in ordered)[1] if ordered else ""
    lines.append(f"Target verdicts use the latest measurement only (commit {latest}); the "
                 "older rows above are kept for comparison (before /rank batching).")
    for ranker, kind in sorted({(r["ranker"].split(",")[0], r["kind"]) for r in ordered}):
        runs = [r for r in ordered if r["kind"] == kind and r["ranker"].startswith(ranker + ",")
                and r["commit"] == latest]
        if not runs:
            continue
        p99s = sorted(r["p99"] for r in runs)
        med = p99s[len(p99s) // 2]
        errs = sum(r["errors"] for r in runs)
        ok = med < TARGET_P99_MS and errs == 0
        per_run = ", ".join(f"{p:.1f}" for p in p99s)
        lines.append(f"- Target (p99 < {TARGET_P99_MS:.0f} ms, retrieve-100 + rank-100, 0 errors)"
                     f", ranker {ranker}, `{kind}`: p99 per run {per_run} ms (median "
                     f"{med:.1f}), {errs} errors: **{'PASS' if ok else 'FAIL'}** (median run)")
    cmds = sorted({r["command"] for r in ordered})
    lines += ["", *(f"Command: `{c}`" for c in cmds)]
    return lines


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-latest-small")
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "rank")
    ap.add_argument("--rankers", nargs="+", default=["din", "sdim"],
                    help="CTR models of the ranking runs (one service each)")
    ap.add_argument("--epochs", type=int, default=30, help="retrieval run epochs (max)")
    ap.add_argument("--ctr-epochs", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=1.0, help="per training run")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["user", "history"])
    ap.add_argument("--retrieve", type=int, default=100)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--server-args", default="")
    ap.add_argument("--timeout", type=float, default=10.0, help="client timeout per request (s)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true",
                    help="render the RESULTS.md section from the stored rows")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.table_only:
        publish("serve_rank", "HTTP service: two-stage POST /rank (retrieve 100 + rank 100)",
                section(results.load_rows(STORE)))
        return
    results.ensure_quiet(args.no_quiet)
    rows = []
    for model in args.rankers:
        retrieval, ranker = train_runs(args, model)
        rows += measure(args, retrieval, ranker)
    if args.no_write:
        for line in section({str(i): r for i, r in enumerate(rows)}):
            print(line)
        return
    for r in rows:
        key = f"{r['ranker'].split(',')[0]}/{r['kind']}/{r['date']}/#{r['repeat']}"
        results.save_row(STORE, key, r, HERE / "_work" / "serve_rank.lock")
    publish("serve_rank", "HTTP service: two-stage POST /rank (retrieve 100 + rank 100)",
            section(results.load_rows(STORE)))
    log("wrote the serve_rank section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    # no OMP_NUM_THREADS here: quiet-run's `nproc` honours it and would judge the load against 1
    # core (the 2026-12-02 13:47 run's quiet-run line said "cores=1 ... contended" for that
    # reason; its rows' own monitor, on os.cpu_count() = 2 cores, says clean). The service runs
    # with torch 1 thread (`userseq serve --threads 1`, the default).
    main()
