"""Whole-photo restoration workflows: who each face is, their references, restoring, pasting back, reporting.

`PhotoRestorer` is the one place that joins the face tools and a pipeline; the CLI, the web service and
video support are adapters over it, each filling one `RestoreSettings` (`settings`) with its user's choices.
`people` says who the faces can be, `reference_store` encodes each person's references once (and keeps them
between runs), `archive` streams folders of photos through a restorer resumably and in shards, and `report`
writes what happened to every face.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refface.lazy import lazy_exports

# Loaded on first use: the command line reads `settings` to build its arguments, without the face tools.
_LAZY = {
    "FaceResult": "refface.restoration.photo_restorer",
    "People": "refface.restoration.people",
    "Person": "refface.restoration.people",
    "PhotoRestorer": "refface.restoration.photo_restorer",
    "PhotoResult": "refface.restoration.photo_restorer",
    "ReferenceSource": "refface.restoration.settings",
    "ReferenceStore": "refface.restoration.reference_store",
    "RestoreSettings": "refface.restoration.settings",
}

if TYPE_CHECKING:
    from refface.restoration.people import People, Person
    from refface.restoration.photo_restorer import FaceResult, PhotoRestorer, PhotoResult
    from refface.restoration.reference_store import ReferenceStore
    from refface.restoration.settings import ReferenceSource, RestoreSettings


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "FaceResult",
    "People",
    "Person",
    "PhotoRestorer",
    "PhotoResult",
    "ReferenceSource",
    "ReferenceStore",
    "RestoreSettings",
]
