"""TensorBoard over 100 runs, looked at in a real browser: screenshots of its Time Series and HParams pages.

  uv run python benchmarks/tensorboard_at_scale.py --out=/tmp/tb_shots

Trains one small run for real (for the exact set of tags and HParams a run
writes), then writes 100 runs with that run's tags through tffpipe's own
writers (`outputs.MetricsLog`, `outputs.record_hparams`; curves made up, one
setting per run changed, so every run has its own folder name and HParams
row), serves them with TensorBoard on the loopback address, and takes
screenshots with Debian's Chromium (`apt-get install chromium`) driven by
Playwright. Prints what the pages show (runs listed and selected, the chart
groups in order, the HParams columns) and the PNG files to look at.
"""

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tffpipe import config  # noqa: E402 (after sys.path)
from tffpipe import results  # noqa: E402 (after sys.path)
from tffpipe import run_names  # noqa: E402 (after sys.path)
from tffpipe.runtimes import processes  # noqa: E402 (after sys.path)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium tries Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _real_run(root: str, rounds: int) -> results.Run:
    folder = os.path.join(root, "template")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tffpipe.train",
            f"--root_dir={root}",
            "--experiment_name=template",
            f"--rounds={rounds}",
            "--eval_every=2",
            "--client_speed=lognormal:50,1.0",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return results.load_run(folder)


def _synthetic_runs(root: str, template: results.Run, count: int, rounds: int) -> list[str]:
    """`count` run folders with the template's columns, one setting changed per run, through tffpipe's writers."""
    from tffpipe.program import outputs

    rng = np.random.default_rng(0)
    columns = [c for c in template.metrics.columns if c != "round"]
    rates = np.geomspace(0.01, 1.0, 10)
    folders = []
    for i in range(count):
        values = {
            "root_dir": root,
            "rounds": rounds,
            "client_learning_rate": float(rates[i % 10]),
            "seed": i // 10,
            "algorithm": ("fedavg", "fedprox")[i % 2],
            "eval_every": 2,
        }
        cfg = config.from_values(values)
        paths = outputs.RunPaths(cfg.output.run_dir)
        os.makedirs(paths.run_dir, exist_ok=True)
        outputs.record_hparams(paths, run_names.tensorboard_hparams(cfg))
        log = outputs.MetricsLog(paths)
        speed = 0.05 + 0.3 * rng.random()
        for r in range(1, rounds + 1):
            row = template.metrics.iloc[min(r, len(template.metrics)) - 1]
            metrics = {}
            for name in columns:
                value = row[name]
                if np.isnan(value):
                    continue
                if name.endswith("accuracy") or "accuracy_" in name:
                    value = min(1.0, 0.1 + (1 - np.exp(-speed * r)) * 0.85 + 0.01 * rng.standard_normal())
                elif name.endswith("loss") or "loss_" in name:
                    value = 2.3 * np.exp(-speed * r) + 0.1
                metrics[name] = float(value)
            log.release(metrics, r)
        log.close()
        folders.append(paths.run_dir)
    return folders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(logdir: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    parent = os.getpid()
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={logdir}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: processes.die_with_parent(parent),  # noqa: PLW1509 (the death signal must be set in the child, before exec)
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return board, port
        except OSError:
            time.sleep(0.5)
    board.kill()
    raise RuntimeError("TensorBoard did not start within 120 s")


def _screenshots(port: int, out: str, runs: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/#timeseries")
        page.wait_for_timeout(8000)
        _shot(page, out, "timeseries.png")
        boxes = page.locator("runs-table input[type=checkbox]")
        checked = page.locator("runs-table input[type=checkbox]:checked")
        print(
            f"time series, as opened: {checked.count()} of {boxes.count()} run-selector boxes ticked "
            f"({runs} runs, the root's HParams configuration and the select-all box)"
        )
        groups = [
            t.strip() for t in page.locator("metrics-card-group-toolbar .group-title, .group-title").all_inner_texts()
        ]
        print(f"chart groups in order: {groups}")
        page.goto(f"http://127.0.0.1:{port}/#hparams")
        page.wait_for_timeout(8000)
        _shot(page, out, "hparams.png")
        headers = page.evaluate(_TABLE_HEADERS)
        print(f"HParams table columns in order: {headers}")
        browser.close()


# The HParams table (a vaadin-grid) lives in Polymer elements' shadow roots; its headers are div.table-header.
_TABLE_HEADERS = """() => {
  const found = [];
  const walk = (root) => root.querySelectorAll('*').forEach((e) => {
    if (e.shadowRoot) walk(e.shadowRoot);
    if (e.classList && e.classList.contains('table-header')) found.push((e.textContent || '').trim().replace(/\\s+/g, ' '));
  });
  walk(document);
  return found.filter((t) => t);
}"""


def _shot(page, out: str, name: str) -> None:
    path = os.path.join(out, name)
    page.screenshot(path=path, full_page=False)
    print(f"screenshot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "tb_shots"))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--keep", default="", help="write the runs here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="tb_scale_") as work:
        template = _real_run(os.path.join(work, "template_root"), args.rounds)
        root = os.path.join(work, "runs")
        folders = _synthetic_runs(root, template, args.runs, args.rounds)
        print(
            f"{len(folders)} runs under {root}, e.g. {os.path.basename(folders[-1])}; "
            f"{len([c for c in template.metrics.columns if c != 'round'])} scalars each"
        )
        board, port = _serve(root)
        try:
            _screenshots(port, args.out, len(folders))
        finally:
            board.kill()
            board.wait()


if __name__ == "__main__":
    main()
