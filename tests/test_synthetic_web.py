"""The demo's synthetic web and conversations: no held-out leak, the filter removes exactly the junk."""

import json

import pytest

from answerkey.config import load_config
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.filter import FilterConfig, filter_file
from answerkey.pretrain.synthetic_web import leaked, web_documents

WORLD = dict(difficulty=1, kinds=["chain", "story"], steps=3, test_size=500)


@pytest.fixture(scope="module")
def env():
    return SyntheticEnv(**WORLD)


def test_no_held_out_problem_appears_in_the_corpus_or_the_conversations(env):
    docs = web_documents(env, n_docs=3000, seed=0)
    conversations = solution_conversations(env, terse_fraction=0.5, seed=0)
    texts = [d["text"] for d in docs] + [m["content"] for c in conversations for m in c]
    assert leaked(texts, env) == []
    # the check itself finds a leak: one held-out worked solution planted in a page
    planted = env.problems("test")[7]
    # chain + story
    same_steps = [p.id for p in env.problems("test") if p.meta["solution"] == planted.meta["solution"]]
    assert planted.id in same_steps
    assert leaked([*texts, f"Answer: {planted.meta['solution']}"], env) == same_steps


def test_the_demo_filter_removes_the_junk_and_keeps_the_pages(env, tmp_path):
    docs = web_documents(env, n_docs=1000, junk_fraction=0.1, seed=1)
    src, out = tmp_path / "web.jsonl", tmp_path / "kept.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_config("examples/filter_demo.toml", [], FilterConfig)
    metrics = filter_file(src, out, cfg)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    junk_hosts = ("portal.example", "ecole.example", "casino-viagra-deals.example", "template.example")
    assert not [d for d in kept if any(h in d["url"] for h in junk_hosts)]
    assert len({d["text"] for d in kept}) == len(kept)  # one of each mirrored pair (whichever came first)
    assert metrics["filter/docs_in"] == 1000 and metrics["filter/docs_kept"] == len(kept) == 900


def test_conversations_mix_terse_and_worked_answers_deterministically(env):
    a = solution_conversations(env, terse_fraction=0.5, seed=0)
    assert a == solution_conversations(env, terse_fraction=0.5, seed=0)
    terse = [c for c in a if c[-1]["content"].startswith("####")]
    assert 0.45 < len(terse) / len(a) < 0.55
    assert all(c[-1]["content"] == f"#### {c[-1]['content'].split()[-1]}" for c in terse)
    assert all(not c[-1]["content"].startswith("####")
               for c in solution_conversations(env, terse_fraction=0.0))
    with pytest.raises(ValueError, match="terse_fraction"):
        solution_conversations(env, terse_fraction=1.5)
