"""A generating stage's batches made on a Ray cluster (``--ray``), written by this process.

:func:`stic.stages.runner.run_generation` hands its batch loop here when ``config.ray`` is set;
everything else (the output claim, the done set, resume, ``finish``, the manifest) stays in the
runner. The batches are the ones one process would make, cut at the same boundaries from the
same to-do list, because the HF backend samples a batch from the seed of its first item. They
flow through a Ray Data pipeline:

``ray.data.from_items`` (one row per batch, its items pickled) -> ``map_batches`` over an actor
pool of :class:`BatchWorker` (``--workers``, each with ``--worker-gpus`` GPUs and
``--worker-cpus`` cores; it opens the stage's backend once, loads the batch's images itself from
the items' paths and calls the stage's ``make_records``) -> rows back to the driver, in batch
order, whose records are appended (fsynced) as one process appends them.

Only the driver writes. A worker process that dies (killed, out of memory) is restarted by Ray
and its batch redone (``RESTARTS`` times); the driver drops a record whose id it already has, so
the output holds every id once. An exception raised by the stage's own code (or by opening the
backend) is not retried: it comes back as data and is raised here, stopping the run as it would
stop one process, and the rerun resumes. Images are read by the
workers, so on several machines ``--images`` (and the model) must be at the same path on each.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from stic.stages.batches import load_batch_images

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'stic[ray]'"
# Restarts of a worker process that died, and retries of the batch it was making: enough for a
# lost machine or a preempted GPU, few enough that a batch that kills every worker stops the run.
RESTARTS = 3


class RayError(RuntimeError):
    """Ray cannot run this stage (not installed, no cluster at the address); the message says why."""


def import_ray():
    """``ray`` with Ray Data, or :class:`RayError` naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (the pipeline; `ray` alone may lack its dependencies)
    except ImportError as e:
        raise RayError(
            f"--ray needs Ray Data, which cannot be imported here ({e}); install it: {RAY_INSTALL}"
        ) from None
    return ray


@dataclass(frozen=True)
class WorkerStage:
    """What a worker needs of a :class:`~stic.stages.runner.GenerationStage` (no ``finish``,
    ``details`` or ``adopt``: those may hold the driver's state, a judge client, a lock)."""

    name: str
    item_id: Callable[[Any], str]
    image_of: Callable[[Any], str | None]
    make_records: Callable[..., list[dict]]
    load_image: Callable[[Any], Any] | None


class BatchWorker:
    """One actor of the pool: the stage's backend opened once, then one batch per call.

    A call takes rows ``{"batch": int, "items": pickled list}`` and returns, per row, the
    batch's number, its records and its unusable images (id -> why) as JSON, the seconds spent
    generating, the worker's process id, and the exception the stage's code raised (pickled;
    empty when none). Such an exception is data, not a task failure: Ray would retry it, and
    it would only be raised again; the driver raises it as one process would.
    """

    def __init__(self, stage: WorkerStage, config: Any, adapter: str | None) -> None:
        from stic.modeling.backends import BACKENDS

        self.stage = stage
        self.config = config
        self.backend, self.failed = None, b""
        try:
            self.backend = BACKENDS[getattr(config, "backend", "hf")](config, adapter)
        except Exception as e:  # e.g. no model at --model on this machine: say so on the driver
            self.failed = _pickled_error(e)

    def __call__(self, rows: dict) -> dict:
        out: dict[str, list] = {"records": [], "bad": [], "seconds": [], "error": []}
        for payload in rows["items"]:
            items = pickle.loads(payload)
            unusable: dict[str, str] = {}
            made, began, error = [], time.monotonic(), self.failed
            if not error:
                try:
                    kept, images = load_batch_images(
                        self.stage, items, self.config.images, unusable
                    )
                    made = self.stage.make_records(kept, images, self.backend) if kept else []
                except Exception as e:
                    error = _pickled_error(e)
            out["seconds"].append(time.monotonic() - began)
            out["records"].append(json.dumps(made, ensure_ascii=False))
            out["bad"].append(json.dumps(unusable, ensure_ascii=False))
            out["error"].append(error)
        return {**out, "batch": list(rows["batch"]), "pid": [os.getpid()] * len(rows["batch"])}


def _pickled_error(error: Exception) -> bytes:
    """``error`` pickled, or a RuntimeError with its type and message if it does not pickle."""
    logger.exception("batch failed on a Ray worker")  # the full traceback, in the worker's log
    try:
        return pickle.dumps(error)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))


def generate_on_ray(
    stage,
    config: Any,
    todo: list,
    append: Callable[[list[dict]], None],
    done: dict,
    summary,
    adapter: str | None,
) -> None:
    """Make and append the records of ``todo`` on the Ray cluster ``config.ray``.

    Same contract as the runner's local loop: appends each batch's records with ``append`` (the
    output object's)
    (skipping ids already in ``done``), adds them to ``done``, counts them in ``summary.made``
    and reports unusable images in ``summary.bad_items``.
    """
    ray = import_ray()
    batch_size = config.batch_size
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    started_here = _connect(ray, config.ray, config.ray_timeout)
    try:
        workers, gpus = pool_size(ray, config)
        logger.info(
            "%s: %d items to make (%d already done), in %d batches of up to %d, backend %s, "
            "on Ray (%s): %d workers with %g GPUs and %g CPUs each",
            stage.name,
            len(todo),
            summary.already_done,
            len(batches),
            batch_size,
            getattr(config, "backend", "hf"),
            config.ray,
            workers,
            gpus,
            config.worker_cpus,
        )
        rows = _pipeline(ray, stage, config, batches, adapter, workers, gpus)
        _append_rows(stage, rows, batches, append, done, summary)
    finally:
        if started_here:
            ray.shutdown()


def _connect(ray, address: str, timeout_s: float = 30.0) -> bool:
    """Join (or start, for ``local``) the cluster; ``True`` if this call started the connection.

    A process already connected (a test's cluster, a notebook) keeps its connection. An address
    where nothing answers within ``timeout_s`` is refused before Ray is asked: Ray 2.60 retries
    an unreachable head for minutes without a word.
    """
    if ray.is_initialized():
        return False
    why = unreachable(address, timeout_s)
    if why is not None:
        raise RayError(f"--ray {address}: {why}; {_START_HINT}")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    except ConnectionError as e:
        raise RayError(f"--ray {address}: no Ray cluster there ({e}); {_START_HINT}") from None
    return True


_START_HINT = (
    "start one (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others) "
    "or use --ray local"
)


def head_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` that ``address`` names (``HOST:PORT``, ``ray://HOST:PORT``, ``[IPv6]:PORT``;
    ``auto`` reads ``RAY_ADDRESS``), or ``None`` where Ray finds the cluster itself (``local``,
    ``auto`` without ``RAY_ADDRESS``, an address without a port)."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's head, its client
# server) answers with its own SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def unreachable(address: str, timeout_s: float) -> str | None:
    """Why no Ray head answers at ``address`` within ``timeout_s``, or ``None``: a gRPC server
    (as Ray's head is) answers there, or Ray finds the cluster itself (see
    :func:`head_endpoint`). Anything else (refused, no route, silence, another protocol) is
    named, so that Ray's own minutes of retries are never entered."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return None
    where = f"{endpoint[0]}:{endpoint[1]}"
    try:
        with socket.create_connection(endpoint, timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            connection.sendall(_H2_PREFACE)
            frame = connection.recv(9)
    except TimeoutError:
        return f"nothing answered at {where} within {timeout_s:g} s (ray_timeout)"
    except OSError as e:  # refused, no route, unknown host, reset
        return f"no Ray cluster at {where} ({e.strerror or e})"
    if len(frame) < 4 or frame[3] != _H2_SETTINGS:
        return f"what answers at {where} is not a Ray head (no gRPC reply)"
    return None


def pool_size(ray, config: Any) -> tuple[int, float]:
    """``(workers, GPUs per worker)``: the config's, or from the cluster's GPUs when unset."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = config.worker_gpus if config.worker_gpus is not None else (1.0 if cluster_gpus else 0.0)
    if gpus > 0 and gpus > cluster_gpus:
        raise RayError(
            f"worker_gpus: {gpus:g} GPUs per worker, but the Ray cluster has {cluster_gpus:g}"
        )
    workers = config.workers
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus)) if gpus > 0 else 1
    return workers, gpus


def _pipeline(ray, stage, config, batches: Sequence[list], adapter, workers: int, gpus: float):
    """The Ray Data dataset of the made batches, in batch order."""
    context = ray.data.DataContext.get_current()
    # Rows come back in batch order, so the records file is in the order one process writes.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the runner's own bar counts items
    worker_stage = WorkerStage(
        stage.name, stage.item_id, stage.image_of, stage.make_records, stage.load_image
    )
    source = ray.data.from_items(
        [{"batch": number, "items": pickle.dumps(batch)} for number, batch in enumerate(batches)],
        # One block per batch: a restarted worker redoes one batch, not a block of them.
        override_num_blocks=max(1, len(batches)),
    )
    with warnings.catch_warnings():
        # Ray Data's default is to restart a worker and retry its batch forever (a batch that
        # kills every worker would never end); bounding it takes these two actor options,
        # which Ray 2.60 warns will move elsewhere in 2.64 (pyproject.toml caps ray below it).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return source.map_batches(
            BatchWorker,
            fn_constructor_args=(worker_stage, config, adapter),
            batch_size=1,  # one row: one stic batch, its boundaries as one process cuts them
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=config.worker_cpus,
            num_gpus=gpus,
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
        )


def fresh_records(records: list[dict], batch_ids: set[str], done: dict) -> list[dict]:
    """The records of a returned batch to append: one per id of the batch not in ``done`` yet.

    A worker's batch may come back twice (a restarted worker redoes it), out of order, partial,
    or with a record repeated; records of ids the batch does not hold are not this batch's.
    """
    fresh: dict[str, dict] = {}
    for record in records:
        record_id = record["id"]
        if record_id in batch_ids and record_id not in done:
            fresh.setdefault(record_id, record)
    return list(fresh.values())


def _append_rows(stage, rows, batches, append: Callable, done: dict, summary) -> None:
    """Append each arriving batch's records (new ids only), as the runner's local loop does."""
    seconds = 0.0
    began = time.monotonic()
    with tqdm(total=sum(len(b) for b in batches), desc=stage.name, unit=stage.unit) as bar:
        for row in rows.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])
            batch = batches[int(row["batch"])]
            batch_ids = {stage.item_id(item) for item in batch}
            records = fresh_records(json.loads(row["records"]), batch_ids, done)
            if records:
                append(records)
                done.update((r["id"], r) for r in records)
                summary.made += len(records)
            summary.bad_items.update(json.loads(row["bad"]))
            seconds += float(row["seconds"])
            bar.update(len(batch))
    if summary.made:
        logger.info(
            "%s: %d made in %.0f s on Ray (workers generating %.0f s in all)",
            stage.name,
            summary.made,
            time.monotonic() - began,
            seconds,
        )
