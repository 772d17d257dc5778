"""The synthetic task's ground-truth identity score: the right person scores high, others and blurs do not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refface.data.synthetic import PhotoVariation, SyntheticReferenceDataset
from refface.data.synthetic_identity import SyntheticIdentityScorer
from refface.errors import RefFaceError


@pytest.mark.parametrize(("size", "variation"), [(32, PhotoVariation()), (48, PhotoVariation(3.0, 1.0))])
def test_the_true_photo_scores_one_and_other_people_score_near_zero(size, variation):
    dataset = SyntheticReferenceDataset(12, 3, size, split="test", flip=False, variation=variation)
    scorer = SyntheticIdentityScorer(dataset)
    others = []
    for identity in range(12):
        photo = identity % 3
        truth = scorer.score(dataset.photo(identity, photo), identity, photo)
        assert truth.correct and truth.nearest == identity and truth.similarity == pytest.approx(1.0, abs=1e-3)
        other = (identity + 5) % 12  # another person in exactly the target's pose, lighting and expression
        imposter = scorer.score(dataset.render_as(other, identity, photo), identity, photo)
        assert not imposter.correct and imposter.nearest == other
        others.append(imposter.similarity)
    assert np.mean(others) < 0.1


def test_an_identity_free_average_scores_zero_and_a_blur_scores_below_the_truth():
    dataset = SyntheticReferenceDataset(10, 2, 32, split="val", flip=False)
    scorer = SyntheticIdentityScorer(dataset)
    for identity in range(0, 10, 3):
        average = scorer.candidates(identity, 1).mean(axis=0)
        assert abs(scorer.score(average, identity, 1).similarity) < 1e-4
        sharp = dataset.photo(identity, 1)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)
        assert scorer.score(blurred, identity, 1).similarity < scorer.score(sharp, identity, 1).similarity - 0.1


def test_bad_images_and_splits_are_refused():
    dataset = SyntheticReferenceDataset(3, 2, 32, flip=False)
    scorer = SyntheticIdentityScorer(dataset)
    with pytest.raises(RefFaceError, match="32x32 RGB"):
        scorer.score(np.zeros((16, 16, 3), np.uint8), 0, 0)
    with pytest.raises(RefFaceError, match="x 3 RGB"):
        scorer.score(np.zeros((32, 32)), 0, 0)
    with pytest.raises(RefFaceError, match="No photo 5"):
        scorer.score(dataset.photo(0, 0), 0, 5)
    with pytest.raises(RefFaceError, match="at least 2 identities"):
        SyntheticIdentityScorer(SyntheticReferenceDataset(1, 2, 32))
