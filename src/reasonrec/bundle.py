"""`reasonrec.load(path)`: a saved model bundle back as a fitted estimator."""

from __future__ import annotations


def load_bundle(path):
    from reasonrec.estimator import Recommender

    return Recommender.load(path)
