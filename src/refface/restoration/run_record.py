"""What an archive run has done, kept in its output folder so an interrupted run resumes where it stopped.

`OUT/manifest.json` holds the settings that decide the results; a rerun with other settings is refused,
naming what changed. Each process appends one JSON line per finished photo (its report rows) to its own
`OUT/.progress/rank-N.jsonl`, after the photo's files are written, so a photo either counts as done with all
its files or is restored again. The main process merges every process's lines into the report.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from refface.errors import RefFaceError
from refface.files import write_text_atomically

VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = ".progress"


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs between two recorded settings, naming nested settings by their path (sampling.seed)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(_changes(before, after, f"{prefix}{key}."))
        elif before != after:
            changes.append(f"{prefix}{key} {before!r} now {after!r}")
    return changes


class RunRecord:
    """The manifest and progress files of one output folder, for one process (`rank`)."""

    def __init__(self, folder: Path, settings: dict, rank: int = 0) -> None:
        self.folder, self.settings, self.rank = Path(folder), settings, rank

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    @property
    def progress_folder(self) -> Path:
        return self.folder / PROGRESS

    def exists(self) -> bool:
        return self.manifest.is_file()

    def check(self) -> None:
        """Refuse to resume a run made with other settings (or an unreadable manifest), naming the differences."""
        try:
            recorded = json.loads(self.manifest.read_text())
            old = recorded["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise RefFaceError(
                f"The run record {self.manifest} is unreadable; pass --overwrite to start the run again."
            ) from None
        changed = _changes(old, json.loads(json.dumps(self.settings)))
        if changed:
            raise RefFaceError(
                f"The output folder {self.folder} holds a run made with other settings ({'; '.join(changed)}); "
                "rerun with the same settings to resume it, choose another --output, or pass --overwrite to start "
                "again."
            )

    def start(self, fresh: bool) -> None:
        """Write the manifest (main process); `fresh` forgets what an earlier run did."""
        if fresh:
            shutil.rmtree(self.progress_folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.manifest, json.dumps({"version": VERSION, "settings": self.settings}, indent=1))

    def discard(self) -> None:
        """Forget the run (it wrote nothing worth resuming)."""
        shutil.rmtree(self.progress_folder, ignore_errors=True)
        self.manifest.unlink(missing_ok=True)

    def finished(self) -> dict[str, list[dict]]:
        """Report rows of every photo any process has finished, by photo name (a torn last line is ignored)."""
        done: dict[str, list[dict]] = {}
        for path in sorted(self.progress_folder.glob("rank-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                done[entry["photo"]] = entry["rows"]
        return done

    def record(self, photo: str, rows: list[dict]) -> None:
        """Mark one photo done (after its files are written), with its report rows."""
        self.progress_folder.mkdir(parents=True, exist_ok=True)
        path = self.progress_folder / f"rank-{self.rank}.jsonl"
        torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                torn = existing.read(1) != b"\n"
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(("\n" if torn else "") + json.dumps({"photo": photo, "rows": rows}) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
