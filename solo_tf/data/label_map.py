"""The label map: dataset category ids <-> the model's contiguous class indices.

Datasets keep their own category ids (COCO's run 1..90 with gaps); the model predicts a
contiguous index 0..C-1. Index ``i`` is the ``i``-th smallest category id. The map travels
with checkpoints and exports as ``label_map.json``::

    {"categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
"""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Category ids and names in contiguous-index order (position = index)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    _index: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = tuple(int(i) for i in self.ids)
        names = tuple(str(n) for n in self.names)
        if len(ids) != len(names):
            raise ValueError(f"label map: {len(ids)} ids but {len(names)} names")
        duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if duplicates:
            raise ValueError(f"label map: duplicate category ids {duplicates}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_index", {cid: k for k, cid in enumerate(ids)})

    @classmethod
    def from_coco_categories(cls, categories: list[dict]) -> LabelMap:
        """Builds the map from COCO ``categories`` entries, sorted by id."""
        for k, category in enumerate(categories):
            if not isinstance(category, dict) or "id" not in category or "name" not in category:
                raise ValueError(f"category #{k} needs an 'id' and a 'name': {category!r}")
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        return cls(ids=tuple(c["id"] for c in ordered), names=tuple(c["name"] for c in ordered))

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def class_ids(self) -> np.ndarray:
        """int32 [C]: category id of each contiguous index."""
        return np.asarray(self.ids, dtype=np.int32)

    def index_of(self, category_id: int) -> int:
        """Contiguous index of a dataset category id; KeyError naming it when unknown."""
        try:
            return self._index[int(category_id)]
        except KeyError:
            raise KeyError(
                f"category id {category_id} is not in the label map (ids {list(self.ids)})"
            ) from None

    def names_by_id(self) -> dict[int, str]:
        """Dataset category id -> name."""
        return dict(zip(self.ids, self.names, strict=True))

    def to_dict(self) -> dict:
        return {"categories": [{"id": i, "name": n} for i, n in self.names_by_id().items()]}

    @classmethod
    def from_dict(cls, data: dict) -> LabelMap:
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
            raise ValueError('a label map is {"categories": [{"id": ..., "name": ...}, ...]}')
        # The file's order is the index order: keep it (it is sorted when we write it).
        categories = data["categories"]
        cls.from_coco_categories(categories)  # validates the entries
        return cls(
            ids=tuple(c["id"] for c in categories), names=tuple(c["name"] for c in categories)
        )

    def to_json(self, path: str) -> None:
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def from_json(cls, path: str) -> LabelMap:
        with tf.io.gfile.GFile(path, "r") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
