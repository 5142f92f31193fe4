"""Templates, clean-up, the store and the explanation job's control flow (FakeLLM; no model)."""

from __future__ import annotations

import pytest

from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.errors import ReasonrecError
from reasonrec.explain.cleanup import clean, first_sentence
from reasonrec.explain.generate import ExplainConfig, Explainer, shard_samples
from reasonrec.explain.store import Entry, ExplanationStore, make_key
from reasonrec.explain.templates import DOMAINS, load_templates
from reasonrec.llm.base import GenerationParams, Prompt, sentence_end
from tests.fakes import FakeLLM


@pytest.fixture(scope="module")
def tiny():
    return prepare(read("ml-100k"), PrepareConfig(max_users=4, last_n_per_user=6))


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_renders_every_task(domain):
    t = load_templates(domain)
    assert {"positive", "negative", "aspects", "general", "summary", "alt_positive", "alt_negative",
            "direct"} <= set(t.tasks)
    for task in t.tasks:
        p = t.render(task, ["first item profile", "second item profile"], "the candidate profile")
        text = p.messages[-1][1]
        assert "first item profile" in text and "{" not in text
    prof = t.profile_prompt({"item_id": "7", "title": "Thing", "categories": "A, B"}, max_words=20)
    assert "20 words" in prof.messages[-1][1] and prof.prefix == "Thing is"
    assert t.template_id("positive") == f"{domain}/positive@v{t.version}"


def test_positive_and_negative_share_a_long_prefix():
    t = load_templates("movie")
    history = [f"profile of movie {i} " * 5 for i in range(5)]
    pos = t.render("positive", history, "cand").messages[-1][1]
    neg = t.render("negative", history, "cand").messages[-1][1]
    common = 0
    while pos[common] == neg[common]:
        common += 1
    assert common > 0.8 * len(pos[:pos.index("cand")])


def test_unknown_variant_and_domain_are_clear():
    with pytest.raises(ReasonrecError, match="unknown variant 'nope'"):
        load_templates("movie").variant_tasks("nope")
    with pytest.raises(ReasonrecError, match="no prompt templates for domain 'cars'"):
        load_templates("cars")


@pytest.mark.parametrize("cont, want, repairs, ok", [
    (" the consumer loves comedy. And then more.", "The consumer watched this movie because the consumer loves comedy.",
     ["kept_first_sentence"], True),
    (" The consumer watched this movie because it is funny.", "The consumer watched this movie because it is funny.",
     ["stripped_echo"], True),
    (" Explanation: it is good fun for kids", "The consumer watched this movie because it is good fun for kids.",
     ["stripped_label", "added_period"], True),
    (" the movie the movie the movie the movie is great", "The consumer watched this movie because the movie.",
     ["cut_repetition", "added_period"], False),
    ("", "The consumer watched this movie because", [], False),
    (" Dr. Smith directs it well.", "The consumer watched this movie because Dr. Smith directs it well.", [], True),
    (" 1. it is a fun heist film. 2. It stars", "The consumer watched this movie because it is a fun heist film.",
     ["stripped_enumerator", "kept_first_sentence"], True),
    (" 1.", "The consumer watched this movie because", ["stripped_enumerator"], False),
    (" of the genres: 1.", "The consumer watched this movie because of the genres:", [], False),
    (" of: 1. its cast 2. its music 3.", "The consumer watched this movie because of: 1. its cast 2. its music.",
     ["cut_list_number", "added_period"], True),
    (" 1. it is long. 2. It is", "The consumer watched this movie because it is long.",
     ["stripped_enumerator", "kept_first_sentence"], True),
    (" he rated it 5. Then more", "The consumer watched this movie because he rated it 5.", ["kept_first_sentence"], True),
])
def test_clean(cont, want, repairs, ok):
    out = clean("The consumer watched this movie because", cont)
    assert out.text == want
    assert out.ok is ok
    for r in repairs:
        assert r in out.repairs


def test_first_sentence_keeps_abbreviations():
    assert first_sentence("It stars Mr. Bean. Then")[0] == "It stars Mr. Bean."


@pytest.mark.parametrize("text, end", [
    ("genres: 1. Comedy 2. Drama", None),                       # a list still running: not done
    ("genres: 1. Comedy 2. Drama. Next", "genres: 1. Comedy 2. Drama."),
    ("1. The consumer likes it. More", "1. The consumer likes it."),
    ("he rated it 5. Then", "he rated it 5."),                  # a number ending a sentence
    ("in 1997. Then", "in 1997."),
])
def test_stop_rule_reads_list_numbers(text, end):
    m = sentence_end(text)
    assert (text[: m.end()] if m else None) == end


def test_store_is_durable_and_exports(tmp_path):
    store = ExplanationStore(tmp_path / "s.sqlite")
    p = Prompt.user("hello", prefix="Hi")
    k1 = make_key("m", "movie/positive@v1", p, GenerationParams())
    k2 = make_key("m", "movie/positive@v1", p, GenerationParams(max_new_tokens=10))
    k3 = make_key("m2", "movie/positive@v1", p, GenerationParams())
    assert len({k1, k2, k3}) == 3, "model and decoding params must change the key"
    store.put_many([Entry(k1, "m", "t", "positive", "Hi there.", " there.", "ok")])
    store.close()
    again = ExplanationStore(tmp_path / "s.sqlite")
    assert again.get_many([k1, k2])[k1].text == "Hi there."
    n = again.export_parquet(tmp_path / "x.parquet")
    fresh = ExplanationStore(tmp_path / "t.sqlite")
    assert n == 1 and fresh.import_parquet(tmp_path / "x.parquet") == 1
    assert fresh.import_parquet(tmp_path / "x.parquet") == 0
    # first writer wins, except that a usable imported row replaces a stored failure
    fresh.put_many([Entry(k3, "m2", "t", "positive", "Hi 1.", " 1.", "failed"),
                    Entry(k2, "m", "t", "positive", "Hi you.", " you.", "ok")])
    fixed = ExplanationStore(tmp_path / "fixed.sqlite")
    fixed.put_many([Entry(k3, "m2", "t", "positive", "Hi all.", " all.", "repaired"),
                    Entry(k2, "m", "t", "positive", "Hi me.", " me.", "ok")])
    fixed.export_parquet(tmp_path / "y.parquet")
    assert fresh.import_parquet(tmp_path / "y.parquet") == 1
    got = fresh.get_many([k2, k3])
    assert got[k3].text == "Hi all." and got[k3].status == "repaired" and got[k2].text == "Hi you."


def test_job_generates_once_and_resumes(tiny, tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    t = load_templates("movie")
    llm = FakeLLM()
    ex = Explainer(llm, store, t, ExplainConfig(batch_size=5))
    summaries = ex.run(tiny.samples, tiny.items, progress=False)
    prof, expl = summaries
    n_items = len(set(tiny.samples.item_id) | {i for h in tiny.samples.history for i in h})
    assert prof.generated == n_items
    # profiles travel one per group, a sample's positive and negative together
    assert llm.group_sizes[:n_items] == [1] * n_items
    assert set(llm.group_sizes[n_items:]) == {2}
    assert expl.requested == expl.generated <= 2 * len(tiny.samples)
    # the second run sends nothing: everything is cached
    sent = len(llm.prompts)
    again = ex.run(tiny.samples, tiny.items, progress=False)
    assert len(llm.prompts) == sent
    assert again[1].cached == expl.requested and again[1].generated == 0
    table = ex.lookup(tiny.samples, tiny.items)
    assert len(table) == len(tiny.samples)
    assert table["positive"].str.startswith("The consumer watched this movie because").all()
    assert table["negative"].str.startswith("The consumer did not watch this movie because").all()
    # history items are described by their profiles in the prompts
    assert any("is the consumer likes item" in p.messages[-1][1] for p in llm.prompts[n_items:])


def test_backend_errors_are_retried_on_the_next_run(tiny, tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = FakeLLM(fail_every=7)
    ex = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False, batch_size=4))
    first = ex.run(tiny.samples, tiny.items, progress=False)[0]
    assert first.errors > 0 and first.generated + first.errors == first.requested
    llm.fail_every = 0
    second = ex.run(tiny.samples, tiny.items, progress=False)[0]
    assert second.generated == first.errors and second.cached == first.generated


def test_a_backend_refusing_to_go_on_stops_the_run_and_keeps_earlier_batches(tiny, tmp_path):
    class Refuses(FakeLLM):  # answers two batches, then the server says the model is gone
        def generate_groups(self, groups, params):
            if len(self.calls) == 2:
                raise ReasonrecError("HTTP 404: The model `m` does not exist.")
            return super().generate_groups(groups, params)

    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = Refuses()
    ex = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False, batch_size=2))
    with pytest.raises(ReasonrecError, match="does not exist"):
        ex.run(tiny.samples, tiny.items, progress=False)
    assert len(llm.calls) == 2 and store.count() == 8  # not one call per remaining batch; 2 x 4 texts kept


def test_retry_failed_regenerates_only_the_failed(tiny, tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = FakeLLM(reply=lambda p: " 1." if "did not" in p.prefix else " it is a fine film.")
    first = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False)).run(
        tiny.samples, tiny.items, progress=False)[0]
    assert first.failed == first.generated // 2
    llm.reply = lambda p: " it is too long."
    again = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False)).run(
        tiny.samples, tiny.items, progress=False)[0]
    assert again.generated == 0  # failures are results too: not retried unless asked
    retry = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False, retry_failed=True))
    s = retry.run(tiny.samples, tiny.items, progress=False)[0]
    assert s.generated == first.failed and s.failed == 0 and s.cached == first.generated - first.failed
    table = retry.lookup(tiny.samples, tiny.items)
    assert table["negative"].str.endswith("because it is too long.").all()
    assert table["positive"].str.endswith("because it is a fine film.").all()


def test_retry_failed_also_redoes_outputs_todays_cleanup_rejects(tiny, tmp_path):
    # a row stored as ok by an older clean-up: the list cut off at its first number
    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = FakeLLM(reply=lambda p: " it is fun." if "did not" in p.prefix else " of these movies: 1. Heat 2. Ran")
    ex = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False))
    ex.run(tiny.samples, tiny.items, progress=False)
    jobs = ex.sample_jobs(tiny.samples, ex.item_texts(tiny.items, progress=False, generate=False)[0])
    pos = next(j for j in jobs if j.task == "positive")
    stored = store.get_many([pos.key])[pos.key]
    assert stored.text.endswith("1. Heat 2. Ran.") and stored.status != "failed"
    store.put_many([Entry(pos.key, stored.model_id, stored.template, "positive", "…movies: 1.",
                          " of these movies: 1.", "ok")])
    llm.reply = lambda p: " it is a heist film."
    again = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False, retry_failed=True))
    s = again.run(tiny.samples, tiny.items, progress=False)[0]
    assert s.generated == 1
    assert store.get_many([pos.key])[pos.key].text.endswith("because it is a heist film.")


def test_bad_generations_are_marked_not_crashing(tiny, tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = FakeLLM(reply=lambda p: "" if "did not" in p.prefix else " it is a fine film.")
    ex = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False))
    s = ex.run(tiny.samples, tiny.items, progress=False)[0]
    assert s.failed == s.generated // 2
    table = ex.lookup(tiny.samples, tiny.items)
    assert table["negative"].isna().all() and table["positive"].notna().all()


def test_a_few_failed_texts_are_tolerated_up_to_max_missing(tiny, tmp_path, monkeypatch):
    import reasonrec.pipeline as pipeline

    store = ExplanationStore(tmp_path / "e.sqlite")
    first = {}   # the first negative prompt seen fails clean-up, every other text is usable

    def reply(p):
        if "did not" in p.prefix and not first:
            first["prompt"] = p
        return " of the." if first.get("prompt") is p else " it is a fine film."
    ex = Explainer(FakeLLM(reply=reply), store, load_templates("movie"), ExplainConfig(profiles=False))
    assert ex.run(tiny.samples, tiny.items, progress=False)[0].failed == 1
    monkeypatch.setattr(pipeline, "store_reader", lambda *a, **k: ex)
    n = len(tiny.samples)
    with pytest.raises(ReasonrecError, match=f"1 of {n} samples"):
        pipeline.load_explanations(tiny, profiles=False, max_missing=0.5 / n)
    table, info = pipeline.load_explanations(tiny, profiles=False, max_missing=1.5 / n)
    assert info["coverage"] == round(1 - 1 / n, 4) and int(table["negative"].isna().sum()) == 1


def test_shards_split_the_samples_exactly(tiny):
    parts = [shard_samples(tiny.samples, f"{i}/3") for i in range(3)]
    ids = sorted(i for p in parts for i in p["sample_id"])
    assert ids == sorted(tiny.samples["sample_id"]) and all(len(p) for p in parts)
    for bad in ("3/3", "1-2", "a/b"):
        with pytest.raises(ReasonrecError, match="--shard"):
            shard_samples(tiny.samples, bad)


def test_direct_variant_parses_ratings(tiny, tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    llm = FakeLLM(reply=lambda p: " 4 stars")
    ex = Explainer(llm, store, load_templates("movie"), ExplainConfig(profiles=False, variant="direct"))
    ex.run(tiny.samples, tiny.items, progress=False)
    table = ex.lookup(tiny.samples, tiny.items)
    assert (table["direct"] == "4").all()
