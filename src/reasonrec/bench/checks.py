"""Checks of single spec values (tasks, train options, tune grids, controls); spec.py assembles them."""

from __future__ import annotations

from reasonrec.errors import ReasonrecError

TASKS = ("classification", "regression")
CONTROLS = ("shuffled", "oracle")
# what a tune grid may vary -> the type its values are read as (TrainConfig options the harness
# sets itself, or that do not change the numbers, are left out)
TUNABLE = {"embed_dim": int, "dropout": float, "lr": float, "weight_decay": float, "embed_reg": float,
           "batch_size": int, "epochs": int, "patience": int}


def _fail(where: str, message: str):
    raise ReasonrecError(f"{where}: {message}")


def _check_tasks(tasks, where):
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        _fail(where, f"tasks {tasks}: each must be one of {list(TASKS)}")


def _check_train(train: dict, where: str):
    from reasonrec.config import TRAIN_KEYS

    bad = set(train) - TRAIN_KEYS
    if bad:
        _fail(where, f"train: unknown option(s) {sorted(bad)}; TrainConfig has {sorted(TRAIN_KEYS)}")


def _check_tune(tune, where: str) -> dict | None:
    """A grid {option: [values]} with each value read as its option's type; None when empty."""
    if not tune:
        return None
    if not isinstance(tune, dict):
        _fail(where, "tune: a mapping of option -> list of values, e.g. {lr: [0.001, 0.01]}")
    bad = sorted(set(tune) - set(TUNABLE))
    if bad:
        _fail(where, f"tune: cannot tune {bad}; tunable options: {sorted(TUNABLE)}")
    out = {}
    for key, values in tune.items():
        if not isinstance(values, list) or not values:
            _fail(where, f"tune.{key}: a non-empty list of values, e.g. [0.001, 0.01]")
        try:
            values = [_as(TUNABLE[key], v) for v in values]
        except (TypeError, ValueError):
            _fail(where, f"tune.{key}: {values} are not all {TUNABLE[key].__name__}s")
        if len(set(values)) < len(values):
            _fail(where, f"tune.{key}: {values} repeats a value")
        out[str(key)] = values
    return out


def _as(kind: type, value):
    """`value` read as int or float; strings too (YAML reads 1e-3 as a string), bools never."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if kind is int:
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    return number


def _check_control(exp, where: str):
    """An experiment's `control` and `q` (an oracle needs q in [0, 1]; nothing else has one)."""
    if exp.control is None:
        if exp.q is not None:
            _fail(where, "q: only an oracle control (`control: oracle`) has a q")
        return
    if exp.control not in CONTROLS:
        _fail(where, f"control '{exp.control}': choose one of {list(CONTROLS)}")
    if exp.kind != "train" or exp.explanations != "text":
        _fail(where, "control: only trained experiments that read text explanations have controls")
    if exp.control == "oracle":
        try:
            exp.q = float(exp.q)
        except (TypeError, ValueError):
            _fail(where, f"control: oracle needs q, the share of truthful texts (got {exp.q!r})")
        if not 0.0 <= exp.q <= 1.0:
            _fail(where, f"q {exp.q} must be in [0, 1]")
    elif exp.q is not None:
        _fail(where, "q: only an oracle control has a q")
