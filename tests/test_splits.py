"""Splits: stratified, seeded, order-free, and the paper's test cohort of complete patients."""

import pytest

from input_pipeline.records import splits

ALL = frozenset({"mg", "pre", "mid", "post"})


def _cohort(n: int = 300):
  """Source ids, labels (1 in 3 pCR) and images: every 5th patient misses Mid, every 7th the
  mammogram, every 11th Post."""
  ids = [f"SRC{i:04d}" for i in range(n)]
  labels = [int(i % 3 == 0) for i in range(n)]
  images = [ALL - ({"mid"} if i % 5 == 0 else set()) - ({"mg"} if i % 7 == 0 else set())
            - ({"post"} if i % 11 == 0 else set()) for i in range(n)]
  return ids, labels, images


def test_stratified_split_is_seeded_balanced_and_order_free():
  ids = [f"P{i:012x}" for i in range(200)]
  labels = [int(i % 3 == 0) for i in range(200)]
  a = splits.stratified_split(ids, labels, (0.8, 0.1, 0.1), seed=0)
  b = splits.stratified_split(ids[::-1], labels[::-1], (0.8, 0.1, 0.1), seed=0)
  assert a == b
  assert a != splits.stratified_split(ids, labels, (0.8, 0.1, 0.1), seed=1)
  for split, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
    members = [i for i in ids if a[i] == split]
    assert len(members) == pytest.approx(share * 200, abs=2)
    positives = sum(labels[ids.index(i)] for i in members)
    assert positives / len(members) == pytest.approx(67 / 200, abs=0.05)


def test_complete_test_cohort_moves_the_rest_of_the_quota_to_validation():
  ids, labels, images = _cohort()
  fractions = (0.6, 0.15, 0.25)
  split = splits.assign_splits(ids, labels, images, fractions, seed=3)
  plain = splits.stratified_split(ids, labels, fractions, seed=3)
  has = dict(zip(ids, images))
  assert split.test_cohort == "complete" and split.complete_images == ("mg", "pre", "mid",
                                                                         "post")
  test = [i for i in ids if split.of[i] == "test"]
  assert test and all(has[i] == ALL for i in test)
  # Exactly the quota's incomplete patients moved; train is the random split's train.
  moved = [i for i in ids if plain[i] == "test" and has[i] != ALL]
  assert split.moved_to_validation == len(moved) > 0
  assert all(split.of[i] == "validation" for i in moved)
  assert {i for i in ids if split.of[i] == "train"} == {i for i in ids if plain[i] == "train"}
  assert test == [i for i in ids if plain[i] == "test" and has[i] == ALL]
  # Both labels stay in test, near the cohort's pCR rate (stratified before the selection).
  rate = sum(labels[ids.index(i)] for i in test) / len(test)
  assert rate == pytest.approx(1 / 3, abs=0.1)
  # A function of ids, labels, images and seed only: input order does not matter.
  again = splits.assign_splits(ids[::-1], labels[::-1], images[::-1], fractions, seed=3)
  assert again.of == split.of
  assert splits.assign_splits(ids, labels, images, fractions, seed=3,
                              test_cohort="random").of == plain


def test_complete_means_every_image_the_collection_has():
  ids, labels, _ = _cohort(60)
  # I-SPY2-like: no mammograms anywhere, some patients without Mid.
  images = [frozenset({"pre", "post"} | ({"mid"} if i % 4 else set())) for i in range(60)]
  split = splits.assign_splits(ids, labels, images, (0.5, 0.2, 0.3), seed=0)
  assert split.complete_images == ("pre", "mid", "post")
  assert all("mid" in images[ids.index(i)] for i in ids if split.of[i] == "test")
  # Duke-like: Pre-NAT MRI only: every patient is complete, the split is the random one.
  duke = [frozenset({"pre"})] * 60
  split = splits.assign_splits(ids, labels, duke, (0.5, 0.2, 0.3), seed=0)
  assert split.moved_to_validation == 0
  assert split.of == splits.stratified_split(ids, labels, (0.5, 0.2, 0.3), seed=0)


def test_random_test_split_kept_when_a_label_would_vanish():
  ids, labels, images = _cohort(60)
  images = [ALL if label == 0 else ALL - {"mg"} for label in labels]  # no complete pCR
  split = splits.assign_splits(ids, labels, images, (0.5, 0.2, 0.3), seed=0)
  assert split.test_cohort == "random" and "label [1]" in split.note
  assert split.of == splits.stratified_split(ids, labels, (0.5, 0.2, 0.3), seed=0)
  with pytest.raises(ValueError, match="test_cohort"):
    splits.assign_splits(ids, labels, images, (0.5, 0.2, 0.3), seed=0, test_cohort="paper")
