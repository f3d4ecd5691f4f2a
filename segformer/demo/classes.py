"""The Cityscapes train classes the demo guarantees: those in every scene, those scheduled per frame, and
which of them a drawn labelIds image shows."""

from __future__ import annotations

import math

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import name2label

TRAIN_CLASSES = tuple(
    label.name for label in sorted(CITYSCAPES_LABELS, key=lambda label: label.trainId) if 0 <= label.trainId < 255
)
# In every scene by construction; the other 15 are scheduled as "featured" classes.
ALWAYS_PRESENT = ("road", "sidewalk", "building", "sky")
FEATURED_CLASSES = tuple(name for name in TRAIN_CLASSES if name not in ALWAYS_PRESENT)
# label id -> train id, to check which train classes a drawn labelIds image holds.
LABEL_ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _label in CITYSCAPES_LABELS:
    if _label.id >= 0:
        LABEL_ID_TO_TRAIN_ID[_label.id] = _label.trainId
# Featured classes per frame: as many as fit in one small frame, so that every class is frequent
# enough to be learnt quickly; it also sets the fewest frames per split.
MAX_FEATURED_PER_FRAME = 4
MIN_FRAMES_PER_SPLIT = math.ceil(len(FEATURED_CLASSES) / MAX_FEATURED_PER_FRAME)


def base_label(name: str) -> str:
    """cargroup -> car; names cityscapesscripts knows (polegroup included) stay as they are."""
    return name[: -len("group")] if name not in name2label and name.endswith("group") else name


def visible_train_classes(label_ids: np.ndarray) -> set[str]:
    train_ids = np.unique(LABEL_ID_TO_TRAIN_ID[label_ids])
    return {TRAIN_CLASSES[t] for t in train_ids if t < len(TRAIN_CLASSES)}
