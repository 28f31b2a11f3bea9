"""A batch's images, loaded the same way by the runner's loop and by a Ray worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stic.runtime.images import ImageError, load_image, resolve_image_path


def load_batch_images(
    stage: Any, batch: Sequence, root: str, bad: dict[str, str]
) -> tuple[list, list]:
    """The batch's items whose image loads (or that need none), with their images.

    ``stage``: a :class:`~stic.stages.runner.GenerationStage` (or a Ray worker's copy of its
    ``item_id``, ``image_of`` and ``load_image``); an item whose image cannot be used is left out
    and reported in ``bad`` (item id -> why).
    """
    kept, images = [], []
    for item in batch:
        relative = stage.image_of(item)
        try:
            if stage.load_image is not None:
                image = stage.load_image(item)
            else:
                image = None if relative is None else load_image(resolve_image_path(root, relative))
        except (ImageError, ValueError) as e:
            bad[stage.item_id(item)] = f"{relative}: {e}"
            continue
        kept.append(item)
        images.append(image)
    return kept, images
