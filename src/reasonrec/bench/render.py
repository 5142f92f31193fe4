"""`reasonrec bench report`: REPORT.md + PNG figures from a spec's results alone (no training).

Reads `benchmarks/results/<spec>/` (results.csv, spec.json, status.json, insights.json, texts.csv and the
runs' .npz predictions) and writes `benchmarks/<spec>/REPORT.md` and `benchmarks/<spec>/figures/`.

Significance: per-seed paired t-tests (one-sample t against a deterministic row such as
LLM-direct) decide the stars and the claims; DeLong's test on the seed-averaged test predictions
is reported beside every AUC comparison. *** p < 0.01, ** p < 0.05. Every comparison is made on
the samples both rows share (rows on a user sub-slice are compared with the reference run on the
same sub-slice). The claims are the spec's `claims:` entries, evaluated by bench/claims.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reasonrec.bench.claims import evaluate, family_summary, parse_claims
from reasonrec.bench.figures import Figures
from reasonrec.bench.results import Results, _cell, _md_table, _users
from reasonrec.bench.tables import TABLE_TAGS, Tables


class Report(Tables, Figures):
    """REPORT.md: the table and figure sections, and the spec's claims with their verdicts."""

    def __init__(self, results: Results, report_dir: Path, claims: list[dict] | None = None):
        self.r = results
        self.dir = Path(report_dir)
        self.fig_dir = self.dir / "figures"
        # spec.json holds the parsed claims of the spec the results were run with; a caller holding
        # the spec file passes its claims, so editing a claim needs no rerun
        self.claim_entries = claims if claims is not None else self.r.spec.get("claims") or []
        self.claims: list[tuple[str, str, str]] = []    # (claim, verdict, evidence)
        self.figures: list[str] = []
        self.main = self._main_slice()

    # -- helpers --

    def _main_slice(self):
        """The slice of the headline comparisons (Table 3, figures, claims): all users when an
        LR-Recsys row ran on them, else the largest sub-slice an LR-Recsys row ran on."""
        sizes = {_users(self.r.meta[i]) for i in self.r.ids("ours") if self.r.has(i)}
        if not sizes or None in sizes:
            return None
        return max(sizes)

    def caption(self, ids: list[str]) -> str:
        spec = self.r.spec
        card = spec.get("card") or {}
        infos = [self.r.row_info(i) for i in ids if self.r.has(i)]
        slices = sorted({i["slice"] for i in infos})
        llms = sorted({i["llm"] for i in infos if i["llm"] != "—"})
        seeds = sorted({i["seeds"] for i in infos})
        ds = f"{card.get('dataset', '?')} (`{spec.get('dataset_dir', '?')}`)"
        return (f"*Dataset: {ds}; slice: {' / '.join(slices) or '—'}; LLM: {' / '.join(llms) or 'none'}; "
                f"seeds: {' / '.join(seeds) or '—'}.*")

    def metric_row(self, exp_id: str, label: str, metrics, marks: dict | None = None) -> list[str]:
        info = self.r.row_info(exp_id)
        cells = [label, info["slice"], info["llm"], info["seeds"]]
        for m, _ in metrics:
            mean, std, n = self.r.mean_std(exp_id, m)
            cells.append(_cell(mean, std, n, (marks or {}).get(m, "")))
        return cells

    def not_run(self, ids: list[str]) -> list[str]:
        lines = []
        for i in ids:
            if self.r.has(i):
                continue
            st = self.r.status.get(i, {})
            msg = (st.get("message") or "not run yet").splitlines()[0]
            cmd = st.get("command")
            lines.append(f"- `{i}` ({self.r.label(i)}): {st.get('state', 'not run')} — {msg}"
                         + (f"; generate with `{cmd}`" if cmd else ""))
        return lines

    def evaluate_claims(self):
        self.claims = [(c["text"], *evaluate(c, self.r)) for c in self.claim_entries]

    def claims_section(self) -> str:
        lines = ["## Claims", "",
                 "Verdicts are computed from the numbers above, not written by hand. Rules: a comparison counts a "
                 "metric as better/worse when its per-seed paired t-test (one-sample t against a deterministic row; "
                 "DeLong for AUC when there is a single seed) gives p < 0.05. \"A beats B\" **holds** when A is "
                 "significantly better on every compared metric (AUC, LogLoss, RMSE, MAE, whichever both rows have), "
                 "**does not hold** when A is significantly worse on any, and is **inconclusive** otherwise. "
                 "\"A matches B\" holds unless A is significantly worse on some metric; \"A and B do not differ\" "
                 "holds when no metric differs significantly. Figure claims use the stated OLS slope / t-test rule. "
                 "Each claim is an entry under `claims:` in the spec (the rules: `reasonrec.bench.claims`).",
                 "", _md_table(["claim", "verdict", "evidence"],
                               [[c, f"**{v}**", e] for c, v, e in self.claims]), ""]
        counts = pd.Series([v for _, v, _ in self.claims]).value_counts().to_dict() if self.claims else {}
        lines += [f"Summary: {counts.get('holds', 0)} hold, {counts.get('does not hold', 0)} do not hold, "
                  f"{counts.get('inconclusive', 0)} inconclusive.", ""]
        families = family_summary(self.claim_entries, self.r)
        if families:
            lines += ["Read as families (`family:` in the spec; this changes no verdict above):", "", *families, ""]
        return "\n".join(lines)

    def _save(self, fig, name: str):
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.fig_dir / name, dpi=110)
        self.figures.append(name)

    def build(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.fig_dir.glob("*.png") if self.fig_dir.is_dir() else []:
            old.unlink()
        body = [self.header(), self.table2(), self.explanations_table(), self.table3(),
                *(self.variant_table(k) for k in TABLE_TAGS), self.figure6(), self.figure7(),
                self.informativeness(), self.insights(), self.texts_table()]
        body = [part for part in body if part]
        self.evaluate_claims()
        text = "\n".join(body[:1] + [self.claims_section()] + body[1:] + [self.appendix()])
        f = self.dir / "REPORT.md"
        f.write_text(text.rstrip() + "\n")
        return f


def build_report(results_dir: str | Path, report_dir: str | Path, claims: list | None = None) -> Path:
    """REPORT.md for one spec's results; `claims` (raw spec entries) replace those in spec.json."""
    results = Results(Path(results_dir))
    if claims is not None:
        claims = parse_claims(claims, set(results.meta), str(results_dir))
    return Report(results, Path(report_dir), claims).build()
