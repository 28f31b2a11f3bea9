"""What every stage does alike, written once: claim the output, skip what is done, append
crash-safely, finish, and report in one summary type.

A generating stage (pairs, infuse, eval, bench) hands :func:`run_generation` its selected items
and three functions that say only what differs: the item's id, the item's image, and how a batch
of items with their loaded images becomes records, given a generation backend
(:mod:`stic.modeling.backends`: ``--backend hf|vllm``). The runner:

1. refuses an output that is or holds an input, or that another run holds (a lock), and checks
   the manifest (resume, skip, refuse, or ``--overwrite``);
2. reads the records already made (a torn last line from a kill is cut) and keeps the items
   that have none;
3. loads each batch's images (an unreadable one is reported in ``bad_items``, never fatal),
   opens the backend (loads the model) only when a batch needs it, and appends the batch's
   records, fsynced; it logs the plan (items, batches) first and an ETA after the first batches.
   With ``config.ray`` set, the same batches are made by a pool of Ray workers instead and this
   process appends what they return (:mod:`stic.stages.ray_pool`);
4. if anything changed, writes the output from the selected items' records (``finish``) and a
   complete manifest. One definition of complete: the manifest says complete, the selection is
   the one it recorded, and no selected item lacks a record.

The training stages share :func:`claim_output` (the stage's
:class:`~stic.runtime.output.Output`) and :class:`StageSummary` with it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

from stic.modeling.backends import lazy_backend
from stic.runtime.files import read_jsonl
from stic.runtime.output import Output
from stic.stages.batches import load_batch_images

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


@dataclass
class StageSummary:
    """What one run of a stage did; every ``run_<stage>`` returns one.

    ``up_to_date``: the output was already complete for this config, so nothing ran.
    ``items``: the items the stage covers (after ``limit`` and ``shard``); ``already_done`` of them
    had records from an earlier run and ``made`` were made by this one. ``bad_items``: item id ->
    why it could not be used (an unreadable image); those items have no record. ``details``: the
    stage's own figures (accuracy, rejected kinds, training steps...).
    """

    stage: str
    out: str
    up_to_date: bool = False
    items: int = 0
    already_done: int = 0
    made: int = 0
    bad_items: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def claim_output(stage: str, config: Any, adopt: Callable[[], list[str]] | None = None) -> Output:
    """The output object of ``config.out`` for this run (``with claim_output(...) as output``).

    Entering it refuses (before anything is written) an output that is, holds or lies inside an
    input, one another process is writing, and one made with another config (unless
    ``--overwrite``); ``output.status`` says where the stage stands there.
    """
    return Output(stage, config, adopt=adopt)


def selection_hash(ids: Sequence[str]) -> str:
    """Identifies which items a run covered, so a changed ``--limit`` or ``--shard`` is noticed."""
    return hashlib.sha256("\x00".join(ids).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GenerationStage(Generic[Item]):
    """What one generating stage supplies to :func:`run_generation`.

    ``make_records(items, images, backend)`` returns one record (a dict with ``id``) per item,
    in order; ``backend.generate(requests, ..., seeds=...)`` generates
    (:mod:`stic.modeling.backends`). ``image_of`` gives an item's image path relative to
    ``images`` (``None``:
    the item needs no image). ``load_image(item)``, when given, loads the item's image itself
    (images held in the data, e.g. parquet bytes) and raises ImageError or ValueError for one
    that cannot be used; ``image_of`` then only names the image in ``bad_items``. ``finish(records, out)`` writes the output from the records of the
    selected items, in their order; ``None`` when the records file IS the output (pairs).
    ``finish(records, output)`` writes through the :class:`~stic.runtime.output.Output`.
    ``details(records)`` computes the stage's figures from those records. ``adopt(out)`` lists
    why an output without a manifest cannot be resumed (``None``: it never can).
    """

    name: str
    item_id: Callable[[Item], str]
    image_of: Callable[[Item], str | None]
    make_records: Callable[..., list[dict]]
    details: Callable[[list[dict]], dict[str, Any]]
    finish: Callable[[list[dict], Output], None] | None = None
    adopt: Callable[[Path], list[str]] | None = None
    unit: str = "item"
    load_image: Callable[[Item], Any] | None = None


def records_path(stage: GenerationStage, output: Output) -> Path:
    return output.path if stage.finish is None else output.partial


def run_generation(
    stage: GenerationStage,
    config: Any,
    items: Sequence[Item],
    *,
    model=None,
    processor=None,
    adapter: str | None = None,
    known_bad: dict[str, str] | None = None,
    backend=None,
) -> StageSummary:
    """Make a record for every item of ``items`` that has none yet; see the module docstring.

    ``known_bad``: items found unusable before the run (folder entries whose names cannot be ids),
    reported with the rest. ``model``/``processor`` (run by the HF backend) or an open
    ``backend`` may be passed in; otherwise ``config.backend`` is opened on ``config.model``
    (with ``adapter``) the first time a batch needs it, and closed at the end.
    """
    out = Path(config.out)
    ids = [stage.item_id(item) for item in items]
    selection = selection_hash(ids)
    summary = StageSummary(stage.name, str(out), items=len(ids) + len(known_bad or {}))
    summary.bad_items.update(known_bad or {})
    adopt = (lambda: stage.adopt(out)) if stage.adopt is not None else None
    with claim_output(stage.name, config, adopt=adopt) as output:
        status = output.status
        records_file = records_path(stage, output)
        done = {row["id"]: row for row in read_jsonl(records_file, repair=True, key="id")}
        todo = [item for item, item_id in zip(items, ids, strict=True) if item_id not in done]
        summary.already_done = len(ids) - len(todo)
        recorded = (output.recorded or {}).get("summary", {}).get("details", {})
        same_selection = recorded.get("selection") == selection
        if status == "complete" and not todo and same_selection and out.exists():
            summary.up_to_date = True
            summary.details = _details(stage, done, ids, selection)
            return summary
        # Before the manifest: a model path that does not exist, or a backend that is not
        # installed, fails with nothing written.
        with lazy_backend(config, model, processor, adapter, backend) as get_backend:
            if status != "complete":
                output.begin()
            # Records go to the partial file, or (pairs) to the output itself.
            append = functools.partial(output.append, name=records_file.name)
            try:
                if getattr(config, "ray", None) and todo:
                    _check_ray_run(model, backend)
                    from stic.stages.ray_pool import generate_on_ray

                    generate_on_ray(stage, config, todo, append, done, summary, adapter)
                else:
                    _generate(stage, config, todo, append, done, summary, get_backend)
            except BaseException:
                if status == "new" and not records_file.exists():
                    # Failed before its first record: no manifest may claim a run is under way.
                    output.drop_manifest()
                raise
        for reason in summary.bad_items.values():
            logger.warning("%s: left out %s", stage.name, reason)
        summary.details = _details(stage, done, ids, selection)
        if status != "complete" or summary.made or not same_selection:
            if stage.finish is not None:
                stage.finish([done[i] for i in ids if i in done], output)
            output.finish(summary.to_dict())
        return summary


def _check_ray_run(model, backend) -> None:
    if model is not None or backend is not None:
        raise ValueError(
            "--ray: the workers load the model from --model; a loaded model or an open backend "
            "cannot be handed to them (leave ray unset to use it in this process)"
        )


def _generate(
    stage: GenerationStage,
    config: Any,
    todo: list,
    append: Callable[[list[dict]], None],
    done: dict,
    summary: StageSummary,
    get_backend: Callable[[], Any],
) -> None:
    """Make and append the records of ``todo``, batch by batch, with a progress bar."""
    batch_size = config.batch_size
    batches = -(-len(todo) // batch_size)
    logger.info(
        "%s: %d items to make (%d already done), in %d batches of up to %d, backend %s",
        stage.name,
        len(todo),
        summary.already_done,
        batches,
        batch_size,
        getattr(config, "backend", "hf"),
    )
    started = time.monotonic()
    timed = Throughput()
    with tqdm(total=len(todo), desc=stage.name, unit=stage.unit) as bar:
        for number, start in enumerate(range(0, len(todo), batch_size), start=1):
            batch = todo[start : start + batch_size]
            kept, images = load_batch_images(stage, batch, config.images, summary.bad_items)
            if kept:
                backend = get_backend()  # opening it (loading the model) is not throughput
                began = time.monotonic()
                records = stage.make_records(kept, images, backend)
                timed.add(len(kept), time.monotonic() - began)
                append(records)
                done.update((row["id"], row) for row in records)
                summary.made += len(records)
            bar.update(len(batch))
            if number == ETA_AFTER_BATCHES and number < batches and timed.items:
                left = len(todo) - start - len(batch)
                logger.info(
                    "%s: %.2f %s/s over the first %d batches; %d items left, ETA %s",
                    stage.name,
                    timed.rate,
                    stage.unit,
                    number,
                    left,
                    format_duration(left / timed.rate),
                )
    if summary.made:
        elapsed = time.monotonic() - started
        logger.info("%s: %d made in %.0f s", stage.name, summary.made, elapsed)


# The ETA is logged after this many batches: the first includes warm-up (allocator, caches),
# so a rate over a few is closer to the run's.
ETA_AFTER_BATCHES = 3


@dataclass
class Throughput:
    """Items made and seconds spent making them (model loading excluded)."""

    items: int = 0
    seconds: float = 0.0

    def add(self, items: int, seconds: float) -> None:
        self.items += items
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.items / max(self.seconds, 1e-9)


def format_duration(seconds: float) -> str:
    """``3h05m``, ``12m30s`` or ``45s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _details(stage: GenerationStage, done: dict, ids: list[str], selection: str) -> dict:
    return {**stage.details([done[i] for i in ids if i in done]), "selection": selection}
