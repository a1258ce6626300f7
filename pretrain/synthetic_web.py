"""A small synthetic web and a set of chat conversations, made from the synthetic problem world.

    docs = web_documents(env, n_docs=6000, seed=0)     # [{"url": ..., "text": ...}], junk included
    conversations = bootstrap.solution_conversations(env, terse_fraction=0.5, seed=0)   # the SFT data

This is the offline stand-in for the talk's first stage ("download and process the internet"): the
documents are what a crawl of a tiny arithmetic-minded web would hold — worksheets of addition and
subtraction facts, short stories that do their sums out loud, question-and-answer pages — plus the
kind of junk the filter exists for (mirrored copies, cookie banners, pages in French, spam behind a
blocked URL, lorem ipsum). `answerkey filter` removes the junk;
pretraining on what is left gives a base model that knows its facts but has never seen a chat.

Held-out problems never leak: stories and Q&A pages are written only from the world's *train*
split, and the fact sheets hold two-operand facts (`7 + 5 = 12`), which are never a multi-step
problem. `leaked(texts, env)` finds any held-out worked solution in a set of texts (the demo's
disjointness test calls it on the corpus and the conversations).

The SFT data beside it is `bootstrap.solution_conversations`: each training problem asked, and answered
the way a human demonstrator would — usually showing the steps, sometimes (`terse_fraction`) just the answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from answerkey.envs.base import Env, Problem
from answerkey.envs.synthetic import MAX_NUMBER, NAMES

OPENINGS = (
    "Practice makes perfect, and these are the facts we keep coming back to in class.",
    "Here is a page of sums to read out loud with a friend before the quiz on Friday.",
    "Teachers often ask us to learn these by heart, so that longer problems are easy.",
    "Copy each line into your notebook and check the answer with your fingers or with beads.",
)


def web_documents(env: Env, n_docs: int = 6000, junk_fraction: float = 0.1,
                  seed: int = 0) -> list[dict[str, str]]:
    """`n_docs` documents (`url`, `text`) in a shuffled order, about `junk_fraction` of them junk.

    The clean part: one worksheet per (number, + or -), then a story page and a Q&A page for each of
    up to a third of the clean budget of training problems (drawn without replacement, so no two pages
    tell the same problem the same way), then timed drills of random facts to fill the rest.
    """
    if n_docs < 10 or not 0 <= junk_fraction < 1:
        raise ValueError(f"web_documents needs n_docs >= 10 and 0 <= junk_fraction < 1, got {n_docs}, "
                         f"{junk_fraction}")
    rng = random.Random(f"web-{seed}")
    train = [p for p in env.problems("train") if p.meta.get("solution")]
    if not train:
        raise ValueError(f"{type(env).__name__} has no training problems with meta['solution'] to write "
                         "about")
    hi = MAX_NUMBER[getattr(env, "difficulty", 1)]
    n_clean = round(n_docs * (1 - junk_fraction))
    docs = [fact_sheet(a, op, hi) for a in range(2 * hi + 1) for op in "+-" if op == "+" or a > 0]
    told = rng.sample(train, min(len(train), n_clean // 3))
    docs += [story_page(p, i) for i, p in enumerate(told)]
    docs += [qa_page(rng, p, i) for i, p in enumerate(rng.sample(train, len(told)))]
    docs += [drill(rng, hi, i) for i in range(max(0, n_clean - len(docs)))]
    docs += junk(rng, docs, n_docs - len(docs))
    rng.shuffle(docs)
    return docs


def fact_sheet(a: int, op: str, hi: int) -> dict[str, str]:
    """Every sum (or difference) of `a` with 1..hi, in order, as a worksheet."""
    facts = [f"{a} {op} {b} = {a + b if op == '+' else a - b}."
             for b in range(1, hi + 1) if op == "+" or b <= a]
    verb = "adding to" if op == "+" else "taking away from"
    text = (f"{OPENINGS[a % len(OPENINGS)]} These are the facts for {verb} {a}, and there is one on each "
            "line.\n" + "\n".join(facts)
            + f"\nThat is the whole table for {a}. Try to say each one without looking at the answer.")
    return {"url": f"https://sheets.example/{'add' if op == '+' else 'sub'}/{a}", "text": text}


def drill(rng: random.Random, hi: int, i: int) -> dict[str, str]:
    """Mixed facts in random order, as a timed drill."""
    lines: dict[str, None] = {}  # distinct facts, in drawing order
    # The bound is redrawn at every check, so most drills hold 9-11 facts (rarely 15-16). Kept on purpose:
    # the demo's corpus and results come from it. Drills of a uniform 8-16 facts teach the base model so
    # many sums that SFT alone nearly saturates the held-out problems and RL has little left to show.
    while len(lines) < rng.randint(8, 16):
        a, b = rng.randint(0, 2 * hi), rng.randint(1, hi)
        lines[f"{a} + {b} = {a + b}." if rng.random() < 0.5 or b > a else f"{a} - {b} = {a - b}."] = None
    text = (f"Drill number {i}. {rng.choice(OPENINGS)} Time yourself and see how fast you can go.\n"
            + "\n".join(lines) + "\nWell done! Come back tomorrow and try to beat your time.")
    return {"url": f"https://drills.example/{i}", "text": text}


def story_page(p: Problem, i: int) -> dict[str, str]:
    """A training problem told as a story that does its sums out loud."""
    steps, answer = p.meta["solution"].split("\n")[0], p.answer
    text = (f"{p.prompt} Let us work it out one step at a time, the way the teacher showed us. {steps} "
            f"So the answer is {answer}. It is always easier when you write down each step and the number "
            "you get.")
    return {"url": f"https://stories.example/{i}", "text": text}


def qa_page(rng: random.Random, p: Problem, i: int) -> dict[str, str]:
    """A question-and-answer page: a training problem with its worked solution and final `####` line."""
    name = rng.choice(NAMES)
    text = (f"Question asked by {name}: {p.prompt}\nAnswer: {p.meta['solution']}\n"
            f"Thanks, that makes sense to me now. I did not know that you could do it in steps like that.")
    return {"url": f"https://answers.example/q/{i}", "text": text}


def junk(rng: random.Random, clean: Sequence[dict[str, str]], n: int) -> list[dict[str, str]]:
    """`n` documents a web filter should remove, in equal shares of each kind."""
    kinds = [_copy, _cookies, _french, _spam, _lorem]
    return [kinds[k % len(kinds)](rng, clean, k) for k in range(n)]


def _copy(rng, clean, k):
    doc = rng.choice(clean)
    return {"url": doc["url"] + f"?ref=mirror{k}", "text": doc["text"]}


def _cookies(rng, clean, k):
    lines = ["Accept all cookies", "This website uses cookies to improve your experience.", "Privacy policy",
             "Terms of use", "Sign in", "Menu", "Home", "Contact us"]
    return {"url": f"https://portal.example/{k}", "text": "\n".join(rng.sample(lines, len(lines)))}


def _french(rng, clean, k):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    text = (f"Bonjour à tous ! Aujourd'hui nous apprenons les additions. {a} plus {b} font {a + b}. "
            "Les élèves de la classe écrivent les réponses dans leur cahier et la maîtresse les corrige "
            "avec un stylo rouge. Nous continuerons demain avec les soustractions, et puis avec les tables.")
    return {"url": f"https://ecole.example/{k}", "text": text}


def _spam(rng, clean, k):
    text = ("Win a free phone now! Click here to claim your prize, limited offer, act today, buy now, "
            "cheap pills, best casino bonus, free money, click here click here click here.")
    return {"url": f"https://casino-viagra-deals.example/win/{k}", "text": text}


def _lorem(rng, clean, k):
    return {"url": f"https://template.example/{k}",
            "text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * rng.randint(3, 8)}


def leaked(texts: Iterable[str], env: Env) -> list[str]:
    """Ids of held-out problems whose worked steps or prompt appear in any of `texts` (should be empty)."""
    held_out = [(p.id, p.prompt, p.meta["solution"].split("\n")[0])
                for p in env.problems("test") if p.meta.get("solution")]
    blob = "\n".join(texts)
    return [pid for pid, prompt, steps in held_out if prompt in blob or steps in blob]
