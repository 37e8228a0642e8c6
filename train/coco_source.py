"""COCO-format detection folders: images plus an `instances.json`, so any COCO-style dataset
trains and evaluates (`--task detection --data-dir DIR`).

Layout: `DIR/train/` and `DIR/val/`, each holding `instances.json` (COCO's `images`,
`annotations` with `bbox` = [x, y, width, height] in pixels, `categories`) and the images it
names (`file_name` relative to that folder); `val/` is optional. Crowd annotations
(`iscrowd`) and boxes without area are left out, as effdet's COCO parser does. Categories are
numbered 0..K-1 in the order of their ids (COCO's 1..90 with gaps become 0..79); the names
are the training split's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ANNOTATIONS = "instances.json"


class CocoFolderSource:
    """One split of a COCO-format folder (grain `RandomAccessDataSource` protocol, picklable).

    Records: {"image": encoded bytes, "boxes": [M, 4] float32 xyxy pixels, "classes": [M]
    int32, "index": int64}.
    """

    def __init__(self, folder: str | Path, category_ids: list[int] | None = None):
        self.folder = Path(folder)
        path = self.folder / ANNOTATIONS
        try:
            data = json.loads(path.read_text())
            images, categories = data["images"], data["categories"]
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist (a COCO-format folder holds {ANNOTATIONS})") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not COCO instances JSON: {e}") from None
        self.category_ids = category_ids or sorted(int(c["id"]) for c in categories)
        self.class_names = tuple({int(c["id"]): str(c["name"]) for c in categories}.get(i, str(i))
                                 for i in self.category_ids)
        index = {cid: k for k, cid in enumerate(self.category_ids)}
        per_image: dict[int, list] = {int(im["id"]): [] for im in images}
        for a in data.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            if a.get("iscrowd", 0) or w <= 0 or h <= 0 or int(a["category_id"]) not in index:
                continue
            per_image.setdefault(int(a["image_id"]), []).append((x, y, x + w, y + h, index[int(a["category_id"])]))
        self._files = [str(im["file_name"]) for im in images]
        self._objects = [np.asarray(per_image[int(im["id"])], np.float32).reshape(-1, 5) for im in images]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, record_key: int) -> dict[str, Any]:
        key = int(record_key)
        data = (self.folder / self._files[key]).read_bytes()
        objects = self._objects[key]
        return {"image": data, "boxes": objects[:, :4], "classes": objects[:, 4].astype(np.int32),
                "index": np.int64(key)}

    def describe(self, record_key: int) -> str:
        return str(self.folder / self._files[record_key])

    def __repr__(self) -> str:
        return f"CocoFolderSource({self.folder}, {len(self)} images)"
