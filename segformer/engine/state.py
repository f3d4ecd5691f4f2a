"""Resumable training state: a folder of periodic checkpoints stamped with the settings' hash.

The folder is deliberately NOT a declared Snakemake output (Snakemake deletes the declared outputs of
a failed job, which would throw away the progress a resume needs). A rerun with the same settings
resumes from the newest checkpoint; a rerun with changed settings starts over and says so; the
folder is removed once the final model has been written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from segformer.io import atomic_path, write_json

log = logging.getLogger(__name__)

_STATE_NAME = re.compile(r"^state_(\d{8})\.ckpt$")


def settings_hash(settings: dict) -> str:
    """A stable hash of everything that determines the training run's result."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StateDir:
    """Periodic checkpoints of a training run, keeping the newest `keep`."""

    def __init__(self, path: str | Path, settings: dict, keep: int = 2):
        self.path = Path(path)
        self.settings = settings
        self.hash = settings_hash(settings)
        self.keep = keep

    @property
    def stamp_file(self) -> Path:
        return self.path / "settings.json"

    def stamped_hash(self) -> str | None:
        """The settings hash the folder is stamped with; None when it has no stamp (yet). The stamp is
        written atomically, so a reader sees the old one or the new one, never part of one."""
        try:
            return json.loads(self.stamp_file.read_text()).get("hash")
        except FileNotFoundError:
            return None

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(iteration, file) pairs, oldest first."""
        if not self.path.is_dir():
            return []
        found = []
        for file in self.path.iterdir():
            match = _STATE_NAME.match(file.name)
            if match:
                found.append((int(match.group(1)), file))
        return sorted(found)

    def open(self) -> Path | None:
        """Prepare the folder; return the newest checkpoint to resume from, or None to start fresh."""
        stamped = self.stamped_hash()
        if stamped is not None:
            if stamped == self.hash and self.checkpoints():
                iteration, file = self.checkpoints()[-1]
                log.info("resuming from %s (iteration %d)", file, iteration)
                return file
            if stamped != self.hash:
                log.warning(
                    "training settings changed since the saved state in %s (hash %s, now %s): starting over",
                    self.path, stamped, self.hash,
                )
        self.remove()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.stamp_file, {"hash": self.hash, "settings": self.settings})
        return None

    def save(self, iteration: int, save_obj, append_dict: dict | None = None) -> Path:
        """Write state_ITER.ckpt atomically, then drop all but the newest `keep`."""
        import mindspore as ms

        target = self.path / f"state_{iteration:08d}.ckpt"
        with atomic_path(target) as tmp:
            ms.save_checkpoint(save_obj, str(tmp), append_dict=append_dict)
        for _, old in self.checkpoints()[: -self.keep]:
            old.unlink()
        return target

    def remove(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
