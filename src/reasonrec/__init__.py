"""reasonrec: LLM-reasoning-powered, explainable CTR and rating prediction."""

__version__ = "0.1.0"


def load(path):
    """Load a model bundle saved with ``Estimator.save(path)``."""
    from reasonrec.bundle import load_bundle

    return load_bundle(path)
