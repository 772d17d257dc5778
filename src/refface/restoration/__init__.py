"""Whole-photo restoration workflows: who each face is, their references, restoring, pasting back, reporting.

`PhotoRestorer` is the one place that joins the face tools and a pipeline; the CLI, the web service and
video support are adapters over it. `people` says who the faces can be, `reference_store` encodes each
person's references once (and keeps them between runs), `archive` streams folders of photos through a
restorer resumably and in shards, and `report` writes what happened to every face.
"""

from refface.restoration.people import People, Person
from refface.restoration.photo_restorer import FaceResult, PhotoRestorer, PhotoResult
from refface.restoration.reference_store import ReferenceStore

__all__ = ["FaceResult", "People", "Person", "PhotoRestorer", "PhotoResult", "ReferenceStore"]
