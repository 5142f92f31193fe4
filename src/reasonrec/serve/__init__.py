"""HTTP service over a model bundle and the explanation store (FastAPI + uvicorn).

`create_app(bundle_dir, store_path, llm=...)` builds the app; `serve(...)` runs it;
`precompute(...)` fills the store for users' top-N candidates before (or beside) serving.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from reasonrec.serve.app import create_app as _create

    return _create(*args, **kwargs)


def serve(*args, **kwargs):
    from reasonrec.serve.app import serve as _serve

    return _serve(*args, **kwargs)


def precompute(*args, **kwargs):
    from reasonrec.serve.precompute import precompute as _precompute

    return _precompute(*args, **kwargs)
