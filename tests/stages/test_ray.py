"""Generation on a Ray cluster (stic.stages.ray_pool, ``--ray``), on a local 2-CPU cluster with the
tiny LLaVA: the Ray run's records equal one process's (greedy eval, and pairs sampled with the
same batch boundaries); a worker killed mid-run is restarted and nothing is lost or doubled; a
driver killed mid-run resumes to every id once.

Ray is part of the test extra (`make test` installs it): without it this module fails to
import, never skips.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

try:
    import ray
except ImportError as e:  # make test installs it: a missing Ray is a broken environment
    raise ImportError(f"tests/stages/test_ray.py needs Ray: pip install 'stic[ray]' ({e})") from e

import stic.stages.pairs
from stic.cli import _parse_stage
from stic.config import EvalConfig, PairsConfig, config_hash
from stic.runtime.files import read_jsonl
from stic.runtime.manifests import partial_path, read_manifest
from stic.stages import ray_pool
from stic.stages.evaluate import run_eval
from stic.stages.pairs import run_pairs
from stic.testing import make_images

BIN = Path(sys.executable).parent
# Ray Data's own settings warn about themselves each time a pipeline starts: noise here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
QUESTIONS = ("What is shown?", "How many shapes are there?", "What colour is the shape?")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (about 4 s to start); the runner joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # The wrappers below are defined here, not in stic: ship them by value to the workers.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tiny_model_factory, tmp_path_factory) -> dict:
    """The tiny LLaVA, 6 images plus one broken file, and 9 VQA questions about them."""
    root = tmp_path_factory.mktemp("ray")
    images = root / "images"
    make_images(images, 6, seed=31)
    (images / "broken.png").write_bytes(b"not a png")
    items = [
        {"id": f"q{i:02d}", "image": f"img_{i % 6:04d}.png", "question": q, "answer": "one"}
        for i, q in enumerate(QUESTIONS * 3)
    ]
    items.append({"id": "q_bad", "image": "broken.png", "question": "?", "answer": "no"})
    data = root / "vqa.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    model = str(tiny_model_factory("llava"))
    return {"root": root, "model": model, "images": str(images), "data": str(data)}


def _pairs_config(world, out: Path, **kw) -> PairsConfig:
    # Sampled (temperature 0.2) in batches of 2: equal records need equal batch boundaries.
    values = dict(max_new_tokens=6, temperature=0.2, batch_size=2, device="cpu", dtype="float32")
    return PairsConfig(
        model=world["model"], images=world["images"], out=str(out), **{**values, **kw}
    )


def _eval_config(world, out: Path, **kw) -> EvalConfig:
    values = dict(max_new_tokens=6, batch_size=2, device="cpu", dtype="float32")
    return EvalConfig(
        model=world["model"],
        images=world["images"],
        data=world["data"],
        out=str(out),
        **{**values, **kw},
    )


@pytest.fixture(scope="module")
def one_process(world) -> dict[str, Path]:
    """The reference outputs, made in this process without Ray."""
    out = world["root"] / "one"
    run_pairs(_pairs_config(world, out / "pairs.jsonl"))
    run_eval(_eval_config(world, out / "eval.json"))
    return {"pairs": out / "pairs.jsonl", "eval": out / "eval.json"}


def _ids(path: Path) -> list[str]:
    return [row["id"] for row in read_jsonl(path)]


@pytest.mark.slow
def test_ray_eval_equals_one_process(cluster, world, one_process, tmp_path):
    evaluation = _eval_config(world, tmp_path / "eval.json", ray="auto", workers=2)
    summary = run_eval(evaluation)
    assert summary.made == 9 and list(summary.bad_items) == ["q_bad"]  # reported by a worker
    assert "broken.png" in summary.bad_items["q_bad"]
    # Greedy answers from two worker processes: the same results file, the same records.
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(
        one_process["eval"].read_text()
    )
    assert partial_path(tmp_path / "eval.json").read_text() == (
        partial_path(one_process["eval"]).read_text()
    )
    # The Ray fields are runtime fields: the same run, resumable with or without Ray.
    assert config_hash(evaluation) == config_hash(replace(evaluation, ray=None, workers=None))
    assert read_manifest(tmp_path / "eval.json")["status"] == "complete"


def _slow_make_pairs(image_ids, images, backend, *, config, pid_file, real, **options):
    """The stage's own make_pairs, after noting the worker's pid and a pause (so a kill lands
    mid-batch)."""
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.4)
    return real(image_ids, images, backend, config=config, **options)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_pairs_equal_one_process(
    cluster, world, one_process, tmp_path, monkeypatch
):
    pid_file = tmp_path / "pids"
    slow = functools.partial(
        _slow_make_pairs, pid_file=str(pid_file), real=stic.stages.pairs.make_pairs
    )
    monkeypatch.setattr(stic.stages.pairs, "make_pairs", slow)
    out = tmp_path / "pairs.jsonl"
    killed: list[int] = []

    def kill_a_worker_mid_batch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = pid_file.read_text().split() if pid_file.exists() else []
            if len(pids) >= 2:  # both workers are in a batch: kill the one that began last
                killed.append(int(pids[-1]))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_mid_batch)
    killer.start()
    # Sampled (temperature 0.2), two workers, batches of 2 as in the reference run.
    summary = run_pairs(_pairs_config(world, out, ray="auto", workers=2))
    killer.join()

    assert killed, "no worker was killed: the test proved nothing"
    pids = [int(p) for p in pid_file.read_text().split()]
    # 3 batches, the killed one made again (Ray may redo more: the driver keeps each id once).
    assert len(pids) >= 4, pids
    assert len(set(pids)) == 3, pids  # the two workers and the killed one restarted by Ray
    assert summary.made == 6 and set(summary.bad_items) == {"broken.png"}
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 6
    # Same lines in the same order: the file one process writes, worker restart included.
    assert out.read_text() == one_process["pairs"].read_text()


@pytest.mark.slow
def test_killed_driver_resumes_to_every_id_once(cluster, world, one_process, tmp_path):
    out = tmp_path / "eval.json"
    args = [
        *("--model", world["model"], "--data", world["data"], "--images", world["images"]),
        *("--out", str(out), "--max-new-tokens", "6", "--device", "cpu", "--dtype", "float32"),
        # Joins this module's cluster by its address, as a driver on another machine would.
        *("--batch-size", "1", "--ray", cluster, "--workers", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [str(BIN / "stic"), "eval", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    records = partial_path(out)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None:
            if records.exists() and records.read_text().count("\n") >= 1:
                break
            time.sleep(0.01)
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    made_before = len(_ids(records))
    assert 1 <= made_before < 9, made_before
    assert read_manifest(out)["status"] == "running"

    summary = run_eval(_eval_config(world, out, ray="auto", workers=1, batch_size=1))
    assert summary.already_done == made_before and summary.made == 9 - made_before
    ids = _ids(records)
    assert len(ids) == len(set(ids)) == 9
    # Greedy: the resumed output equals one process's, whatever the batches were.
    assert json.loads(out.read_text()) == json.loads(one_process["eval"].read_text())


def test_missing_ray_says_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_pool.RayError, match=r"pip install 'stic\[ray\]'"):
        ray_pool.import_ray()


def test_ray_flag_alone_means_auto(tmp_path):
    base = ["--model", "m", "--images", "i", "--out", str(tmp_path / "p.jsonl")]
    assert _parse_stage("pairs", base).ray is None
    assert _parse_stage("pairs", [*base, "--ray"]).ray == "auto"
    parsed = _parse_stage(
        "pairs", [*base, "--ray", "local", "--workers", "4", "--worker-gpus", "1"]
    )
    assert (parsed.ray, parsed.workers, parsed.worker_gpus) == ("local", 4, 1.0)


def test_head_endpoint_forms(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_pool.head_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_pool.head_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert ray_pool.head_endpoint("[::1]:6379") == ("::1", 6379)
    for found_by_ray in ("local", "auto", "head-without-port"):
        assert ray_pool.head_endpoint(found_by_ray) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6380")
    assert ray_pool.head_endpoint("auto") == ("10.0.0.6", 6380)


def _unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_names_refused_silent_and_foreign_servers():
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port = _unused_port()
    assert ray_pool.unreachable(f"127.0.0.1:{port}", 5) == (
        f"no Ray cluster at 127.0.0.1:{port} (Connection refused)"
    )
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        assert ray_pool.unreachable(where, 0.5) == (
            f"nothing answered at {where} within 0.5 s (ray_timeout)"
        )

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # e.g. the dashboard's port by mistake
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        where = f"127.0.0.1:{web.server_address[1]}"
        assert (
            ray_pool.unreachable(where, 5)
            == f"what answers at {where} is not a Ray head (no gRPC reply)"
        )
    finally:
        web.shutdown()
        web.server_close()


@pytest.mark.slow
def test_a_real_head_is_reachable(cluster):
    assert ray_pool.unreachable(cluster, 5) is None


@pytest.mark.slow
def test_ray_address_with_nothing_listening_is_one_error_line(tmp_path):
    make_images(tmp_path / "images", 2)
    (tmp_path / "model").mkdir()  # never loaded: the driver stops at the address
    port = _unused_port()
    out = tmp_path / "pairs.jsonl"
    done = subprocess.run(
        [
            str(BIN / "stic"),
            "pairs",
            "--model",
            str(tmp_path / "model"),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(out),
            "--ray",
            f"127.0.0.1:{port}",
            "--ray-timeout",
            "5",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(stic.stages.pairs.__file__).parents[2])},
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"stic pairs: error: --ray 127.0.0.1:{port}: no Ray cluster at 127.0.0.1:{port} "
        "(Connection refused); start one (`ray start --head` on one machine, `ray start "
        "--address HEAD:6379` on the others) or use --ray local"
    ]
    assert not out.exists()
