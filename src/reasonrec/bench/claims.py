"""Claims as data: each entry under a spec's `claims:` says what is compared and by which rule, and
`evaluate` turns it into a verdict (holds / does not hold / inconclusive) and the evidence.

    - text: "LR-Recsys beats the best baseline on AUC (Table 2)"   # what the report prints
      direction: better           # better | not_worse | same | rises | share_above_uniform |
                                  # between_groups | harder_gain_more
      a: lr-recsys                # an experiment id
      b: {best_of: {tag: baseline}}   # an id, or the best row (per metric, by mean) of a tag on a's
                                      # slice at 100% of the training data (`users:` to pick another)
      metrics: [auc]              # [auc, logloss, rmse, mae]; only those both rows have count
      test: paired_t              # per-seed paired t (one-sample t against a single-run row;
                                  # DeLong on AUC when there is a single seed)
      alpha: 0.05
      family: do-no-harm          # optional: claims of one family are also read together (below)

Rules. better: a significantly better than b on every compared metric (does not hold when
significantly worse on any; `min_gain`: the first metric's mean gain must also reach it).
not_worse: a significantly worse on no metric (`max_drop`: and the mean AUC drop at most that).
same: no metric differs significantly. rises: `rows: [{id, x}, ...]`, each row's per-seed gain over b
on the first metric, OLS on x: holds when the slope is > 0 with p < alpha. share_above_uniform: the
attention share of `inputs` [pos, neg] in a's runs, one-sample t over seeds against the uniform
len(inputs)/T. between_groups: per test sample the attention difference `contrast` [neg, pos],
compared (Welch t) between samples with label `higher_in` [0] and the others: holds when it is
larger there. harder_gain_more: the per-sample loss reduction of a over b regressed (OLS) on the
models' disagreement (Figure 6; `task`).

Families: the verdicts above test each claim at its own alpha, so a family of many such claims
(one per model, two metrics each) shows some "significant" differences by chance alone even when
nothing differs. `family_summary` reads the pairwise claims sharing a `family` together: how many
of their tests reach p < alpha, how many that is expected to be with no effect at all, and which
survive Holm's step-down correction over the whole family. It adds a reading; it changes no verdict.

Templating: `for_each: {model: [ncf, deepfm]}` repeats the entry with `{model}` replaced in every
string (several keys: every combination); `for_each: [{a: x, b: y}, ...]` lists the bindings.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np

from reasonrec.bench import stats
from reasonrec.errors import ReasonrecError

DIRECTIONS = ("better", "not_worse", "same", "rises", "share_above_uniform", "between_groups",
              "harder_gain_more")
TESTS = ("paired_t",)
ALL_METRICS = ("auc", "logloss", "rmse", "mae")
_KEYS = {"text", "direction", "a", "b", "metrics", "test", "alpha", "max_drop", "min_gain", "rows", "task",
         "inputs", "contrast", "higher_in", "for_each", "family"}


# --- parsing -----------------------------------------------------------------------------------------

def _fill(obj, binding: dict):
    if isinstance(obj, str):
        for k, v in binding.items():
            obj = obj.replace("{" + k + "}", str(v))
        return obj
    if isinstance(obj, list):
        return [_fill(x, binding) for x in obj]
    if isinstance(obj, dict):
        return {k: _fill(v, binding) for k, v in obj.items()}
    return obj


def _bindings(for_each, where: str) -> list[dict]:
    if for_each is None:
        return [{}]
    if isinstance(for_each, dict) and all(isinstance(v, list) for v in for_each.values()):
        return [dict(zip(for_each, combo)) for combo in itertools.product(*for_each.values())]
    if isinstance(for_each, list) and all(isinstance(b, dict) for b in for_each):
        return [dict(b) for b in for_each]
    raise ReasonrecError(f"{where}: for_each is a mapping of lists or a list of mappings")


def parse_claims(raw: list, ids, where: str = "<spec>") -> list[dict]:
    """Expand `for_each`, fill defaults and check every entry (ids must name experiments)."""
    if not isinstance(raw, list):
        raise ReasonrecError(f"{where}: claims is a list")
    out = []
    for i, entry in enumerate(raw):
        here = f"{where}: claims[{i}]"
        if not isinstance(entry, dict):
            raise ReasonrecError(f"{here}: a mapping")
        unknown = set(entry) - _KEYS
        if unknown:
            raise ReasonrecError(f"{here}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        body = {k: v for k, v in entry.items() if k != "for_each"}
        for binding in _bindings(entry.get("for_each"), here):
            out.append(_check(_fill(copy.deepcopy(body), binding), set(ids), here))
    return out


def _check(c: dict, ids: set, where: str) -> dict:
    def need_id(ref, name):
        if isinstance(ref, dict) and set(ref) == {"best_of"} and isinstance(ref["best_of"], dict):
            return
        if not isinstance(ref, str) or ref not in ids:
            raise ReasonrecError(f"{where}: {name} {ref!r} is not an experiment id (or {{best_of: {{tag: ...}}}})")

    if not c.get("text"):
        raise ReasonrecError(f"{where}: text is required")
    c.setdefault("direction", "better")
    if c["direction"] not in DIRECTIONS:
        raise ReasonrecError(f"{where}: direction '{c['direction']}': choose one of {list(DIRECTIONS)}")
    c.setdefault("test", "paired_t")
    if c["test"] not in TESTS:
        raise ReasonrecError(f"{where}: test '{c['test']}': choose one of {list(TESTS)}")
    c["alpha"] = float(c.get("alpha", stats.ALPHA))
    c["metrics"] = list(c.get("metrics") or ALL_METRICS)
    bad = [m for m in c["metrics"] if m not in stats.METRICS]
    if bad:
        raise ReasonrecError(f"{where}: unknown metric(s) {bad}; choose from {sorted(stats.METRICS)}")
    if c["direction"] != "rises":          # a rises claim's rows play a's part
        need_id(c.get("a"), "a")
    if c["direction"] in ("better", "not_worse", "same", "rises", "harder_gain_more"):
        need_id(c.get("b"), "b")
    if c["direction"] == "rises":
        rows = c.get("rows")
        if not isinstance(rows, list) or len(rows) < 2 or not all(isinstance(r, dict) and "x" in r for r in rows):
            raise ReasonrecError(f"{where}: rises needs rows: [{{id: ..., x: ...}}, ...] (at least two)")
        for r in rows:
            need_id(r.get("id"), "rows.id")
    c.setdefault("inputs", ["pos", "neg"])
    c.setdefault("contrast", ["neg", "pos"])
    c.setdefault("higher_in", 0)
    return c


# --- evaluation --------------------------------------------------------------------------------------

def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _p(c) -> float:
    if not np.isfinite(c.p) and c.metric == "auc":
        return c.delong_p         # one seed: DeLong is the only test there is
    return c.p


def _sign(c, alpha: float) -> int:
    return stats.sign(c.diff, _p(c), stats.METRICS[c.metric][1], alpha)


def resolve(ref, results, metric: str, anchor: str | None) -> str | None:
    """An id as it stands, or the best row of a `best_of` filter on the anchor's slice."""
    if isinstance(ref, str):
        return ref
    filt = dict(ref["best_of"])
    users = filt.pop("users", "same")
    if users == "same":
        users = results.users_of(anchor) if anchor else None
    return results.best(metric, users=users, **filt)


def evaluate(claim: dict, results) -> tuple[str, str]:
    """(verdict, evidence) of one parsed claim on a Results."""
    return _EVALUATORS[claim["direction"]](claim, results)


def _comparisons(claim: dict, results) -> list[tuple[str, object]]:
    """(b's id, comparison) of a pairwise claim, one per metric both rows have."""
    out = []
    for m in claim["metrics"]:
        b = resolve(claim["b"], results, m, claim["a"])
        c = results.compare(claim["a"], b, m) if b and results.has(b) else None
        if c is not None and np.isfinite(c.diff):
            out.append((b, c))
    return out


def _pairwise(claim: dict, results) -> tuple[str, str]:
    a, alpha = claim["a"], claim["alpha"]
    if not results.has(a):
        return "inconclusive", f"missing results ({a})"
    found = _comparisons(claim, results)
    comps = [c for _, c in found]
    parts = [f"{c.text()} vs {results.label(b)}" for b, c in found]
    if not comps:
        return "inconclusive", f"missing results ({a} vs {claim['b']})"
    signs = [_sign(c, alpha) for c in comps]
    evidence = f"{results.label(a)}: " + "; ".join(parts)
    direction = claim["direction"]
    if direction == "same":
        return stats.verdict_same(signs), evidence
    if direction == "better":
        verdict = stats.verdict_better(signs)
        if claim.get("min_gain") is not None and verdict == "holds":
            first = comps[0]
            gain = first.diff if stats.METRICS[first.metric][1] else -first.diff
            evidence += f"; gain {gain:+.4f} (needed ≥ {float(claim['min_gain']):g})"
            if gain < float(claim["min_gain"]):
                verdict = "does not hold"
        return verdict, evidence
    verdict = stats.verdict_not_worse(signs)
    auc = next((c for c in comps if c.metric == "auc"), None)
    if claim.get("max_drop") is not None and auc is not None:
        evidence += f"; AUC drop {-auc.diff:+.4f} (allowed ≤ {float(claim['max_drop']):g})"
        if -auc.diff > float(claim["max_drop"]):
            verdict = "does not hold"
    return verdict, evidence


def _slope_verdict(slope: float, p: float, alpha: float) -> str:
    if not (np.isfinite(slope) and np.isfinite(p)) or p >= alpha:
        return "inconclusive"
    return "holds" if slope > 0 else "does not hold"


def _rises(claim: dict, results) -> tuple[str, str]:
    metric = claim["metrics"][0]
    larger = stats.METRICS[metric][1]
    b = resolve(claim["b"], results, metric, claim["rows"][0]["id"])
    vb = results.values(b, metric) if b else None
    if vb is None or not len(vb):
        return "inconclusive", f"missing results ({claim['b']})"
    xs, gains, means = [], [], []
    for row in claim["rows"]:
        va = results.values(row["id"], metric)
        common = va.index.intersection(vb.index)
        if not len(common):
            continue
        g = (va.loc[common] - vb.loc[common]).to_numpy() * (1 if larger else -1)
        xs += [float(row["x"])] * len(g)
        gains += g.tolist()
        means.append(f"x={row['x']}: {g.mean():+.4f}")
    fit = stats.ols(xs, gains)
    evidence = (f"{stats_label(metric)} gain over {results.label(b)} — " + ", ".join(means) +
                f"; OLS slope {fit['slope']:+.4f}, p={_fmt_p(fit['p'])}, n={fit['n']}")
    return _slope_verdict(fit["slope"], fit["p"], claim["alpha"]), evidence


def stats_label(metric: str) -> str:
    return {"auc": "AUC", "logloss": "LogLoss", "rmse": "RMSE", "mae": "MAE"}.get(metric, metric)


def _share(claim: dict, results) -> tuple[str, str]:
    a, inputs = claim["a"], list(claim["inputs"])
    per_seed, names = results.attention_shares(a, claim.get("task"), inputs)
    if not names:
        return "inconclusive", f"no attention shares stored ({a})"
    uniform = len(inputs) / len(names)
    res = stats.compare_seeds(per_seed, [uniform])
    evidence = (f"{' + '.join(inputs)}: {np.mean(per_seed):.1%} of the attention over {len(per_seed)} seed(s) "
                f"(uniform {len(inputs)}/{len(names)} = {uniform:.1%}); one-sample t p={_fmt_p(res['p'])}")
    return _slope_verdict(res["diff"], res["p"], claim["alpha"]), evidence


def _between(claim: dict, results) -> tuple[str, str]:
    from scipy import stats as sps

    a, (x, y), group = claim["a"], claim["contrast"], int(claim["higher_in"])
    p = results.attention_frame(a, claim.get("task"))
    if p is None or x not in p or y not in p:
        return "inconclusive", f"no attention shares stored ({a})"
    d = (p[x] - p[y]).to_numpy(float)
    inside = p["label"].to_numpy() == group
    if inside.sum() < 2 or (~inside).sum() < 2:
        return "inconclusive", "too few samples in a group"
    t = sps.ttest_ind(d[inside], d[~inside], equal_var=False)
    diff = float(d[inside].mean() - d[~inside].mean())
    evidence = (f"mean {x} − {y}: {d[inside].mean():+.4f} (label {group}, n={int(inside.sum())}) vs "
                f"{d[~inside].mean():+.4f} (others, n={int((~inside).sum())}); Welch t p={_fmt_p(float(t.pvalue))}")
    return _slope_verdict(diff, float(t.pvalue), claim["alpha"]), evidence


def _harder(claim: dict, results) -> tuple[str, str]:
    task = claim.get("task") or "regression"
    metric = "rmse" if task == "regression" else "auc"
    a = claim["a"]
    b = resolve(claim["b"], results, metric, a)
    pool = results.pool(claim["b"], a)
    found = results.uncertainty_gain(a, b, pool, task) if b else None
    if found is None:
        return "inconclusive", "no predictions to compare"
    fit = found["fit"]
    return (_slope_verdict(fit["slope"], fit["p"], claim["alpha"]),
            f"vs {results.label(b)}: slope {fit['slope']:+.5f}, p={_fmt_p(fit['p'])}, n={fit['n']}")


def family_summary(claims: list[dict], results) -> list[str]:
    """One line per `family` of pairwise claims: tests at p < alpha, the count expected by chance,
    and the tests still significant after Holm's correction over the family."""
    families: dict[str, list] = {}
    for claim in claims:
        if claim.get("family") and claim["direction"] in ("better", "not_worse", "same") and results.has(claim["a"]):
            for _, c in _comparisons(claim, results):
                p = _p(c)
                if np.isfinite(p):
                    families.setdefault(claim["family"], []).append((claim, c, float(p)))
    lines = []
    for name, tests in families.items():
        alpha = tests[0][0]["alpha"]
        adjusted = stats.holm([p for _, _, p in tests])
        raw = [f"{results.label(cl['a'])} {stats_label(c.metric)} (p={_fmt_p(p)})" for cl, c, p in tests if p < alpha]
        kept = [f"{results.label(cl['a'])} {stats_label(c.metric)} (Holm p={_fmt_p(q)})"
                for (cl, c, _), q in zip(tests, adjusted) if q < alpha]
        lines.append(f"- Family **{name}**: {len({id(cl) for cl, _, _ in tests})} claims, {len(tests)} tests; "
                     f"{len(raw)} at p < {alpha:g} ({', '.join(raw) or 'none'}), where {alpha * len(tests):.1f} are "
                     f"expected by chance if nothing differed; after Holm's correction over the family: "
                     f"{', '.join(kept) or 'none'}.")
    return lines


_EVALUATORS = {"better": _pairwise, "not_worse": _pairwise, "same": _pairwise, "rises": _rises,
               "share_above_uniform": _share, "between_groups": _between, "harder_gain_more": _harder}
