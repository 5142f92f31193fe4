"""Diagnostic control rows and the probe that measures how much a text set says about the label.

- `shuffled_texts`: the real texts permuted across samples within each split (a negative control:
  the texts keep their wording and variety but lose their link to the sample).
- `oracle_texts`: texts written from the labels, true for a share q of the samples (a positive
  control: how much a model could gain from texts that carry a known amount of signal).
- `probe_auc`: the test AUC of a logistic regression on the train split's text codes alone, so a
  row's gain can be read against how informative its codes are.
- `probe_lift`: what the codes add to a logistic regression on one-hot user and item ids (test AUC
  with the codes minus without). Texts that mostly restate who the user is and what the item is
  can score a probe AUC of 0.6 and still add nothing a recommender does not already know.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ORACLE_SALT = 0x5EED0AC1E
# (positive column, negative column) phrasings; several per side so the encoder sees varied text
LIKE = (("The user will enjoy {title}.", "Nothing here should put the user off."),
        ("{title} matches what the user likes.", "There is little the user would dislike here."),
        ("The user is going to love {title}.", "No reason to skip this one."))
DISLIKE = (("The user will not enjoy {title}.", "This is not what the user looks for."),
           ("{title} does not suit the user.", "The user tends to avoid movies like this."),
           ("The user is unlikely to like {title}.", "This clashes with the user's taste."))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread uint64 per input, the same on every machine."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def oracle_truthful(sample_ids, q: float) -> np.ndarray:
    """Which samples' oracle texts state the true label. One uniform draw per sample, independent of
    q and of the run seed, so a sample truthful at q stays truthful at every larger q."""
    u = _mix(np.asarray(sample_ids, dtype=np.int64).astype(np.uint64) ^ np.uint64(ORACLE_SALT))
    return (u >> np.uint64(11)).astype(np.float64) / float(1 << 53) < q


def oracle_texts(samples: pd.DataFrame, items: pd.DataFrame, q: float,
                 columns: tuple[str, str] = ("positive", "negative")) -> pd.DataFrame:
    """sample_id + two text columns that claim the user likes (or dislikes) the item: the true label
    for a share q of the samples, the opposite for the rest."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q} is not a probability")
    titles = samples[["item_id"]].merge(items[["item_id", "title"]], on="item_id", how="left")["title"]
    titles = titles.fillna("this movie").astype(str).to_numpy()
    ids = samples["sample_id"].to_numpy()
    likes = np.where(oracle_truthful(ids, q), samples["label"].to_numpy() == 1, samples["label"].to_numpy() != 1)
    pick = (_mix(ids.astype(np.int64).astype(np.uint64)) % np.uint64(len(LIKE))).astype(int)
    pos, neg = [], []
    for title, like, k in zip(titles, likes, pick):
        p, n = (LIKE if like else DISLIKE)[k]
        pos.append(p.format(title=title))
        neg.append(n)
    return pd.DataFrame({"sample_id": ids, columns[0]: pos, columns[1]: neg}).sort_values(
        "sample_id").reset_index(drop=True)


def shuffled_texts(table: pd.DataFrame, samples: pd.DataFrame, seed: int, columns) -> pd.DataFrame:
    """`table` with its text columns permuted across the samples of each split, every column by the
    same permutation (a sample's positive and negative texts stay a pair)."""
    out = table.copy()
    split = samples.set_index("sample_id")["split"]
    where = out["sample_id"].map(split).fillna("none").to_numpy()
    rng = np.random.default_rng([int(seed), 104729])
    order = np.arange(len(out))
    for name in sorted(set(where)):
        idx = np.flatnonzero(where == name)
        order[idx] = idx[rng.permutation(len(idx))]
    for col in columns:
        out[col] = out[col].to_numpy()[order]
    return out


def probe_auc(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test AUC of a standardised logistic regression (C=1) on text codes alone; nan when a split
    has a single class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y).astype(int), np.asarray(test_y).astype(int)
    if len(np.unique(train_y)) < 2 or len(np.unique(test_y)) < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(np.asarray(train_x, dtype=float), train_y)
    return float(roc_auc_score(test_y, model.predict_proba(np.asarray(test_x, dtype=float))[:, 1]))


def probe_lift(train: pd.DataFrame, train_x: np.ndarray, test: pd.DataFrame, test_x: np.ndarray) -> float:
    """Test AUC of a logistic regression (C=1) on one-hot user and item ids plus the standardised
    codes, minus the same without the codes; `train`/`test` carry user_id, item_id and label."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = train["label"].to_numpy().astype(int), test["label"].to_numpy().astype(int)
    if len(np.unique(train_y)) < 2 or len(np.unique(test_y)) < 2:
        return float("nan")

    vocabs = {col: {v: i for i, v in enumerate(pd.unique(train[col]))} for col in ("user_id", "item_id")}

    def one_hot(part: pd.DataFrame) -> sp.csr_matrix:
        blocks = []
        for col, vocab in vocabs.items():
            idx = part[col].map(vocab)
            seen = idx.notna().to_numpy()                     # ids unseen in train get no column
            rows = np.flatnonzero(seen)
            blocks.append(sp.csr_matrix((np.ones(len(rows)), (rows, idx[seen].astype(int))),
                                        shape=(len(part), len(vocab))))
        return sp.hstack(blocks).tocsr()

    scale = StandardScaler().fit(np.asarray(train_x, dtype=float))
    ids_train, ids_test = one_hot(train), one_hot(test)
    aucs = []
    for with_codes in (False, True):
        x_tr, x_te = ids_train, ids_test
        if with_codes:
            x_tr = sp.hstack([x_tr, scale.transform(np.asarray(train_x, dtype=float))]).tocsr()
            x_te = sp.hstack([x_te, scale.transform(np.asarray(test_x, dtype=float))]).tocsr()
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x_tr, train_y)
        aucs.append(roc_auc_score(test_y, model.predict_proba(x_te)[:, 1]))
    return float(aucs[1] - aucs[0])
