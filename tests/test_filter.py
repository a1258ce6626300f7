"""The web-data filter (pretrain/filter*.py, pretrain/dedup.py): every rule on hand-made documents
(removed with the rule named, or kept), near-duplicates found and unrelated docs kept, MinHash's
Jaccard estimate against the exact value, PII replaced, counts that add up, bad input named by line,
and the `answerkey filter` command."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from answerkey.cli import main
from answerkey.config import ConfigError, build_config
from answerkey.envs import gsm8k
from answerkey.envs.jsonl import jsonl_lines
from answerkey.pretrain.dedup import Dedup, DedupIndex, MinHasher, normalize
from answerkey.pretrain.filter import DocFilter, FilterConfig, InputError, filter_file
from answerkey.pretrain.filter_rules import C4Lines, Pii, PiiFormatter, c4_lines

# Three clean English documents: they pass every rule (asserted below), and each row below breaks one.
CLEAN = [
    "The river runs through the middle of the old town and divides it into two parts.\n"
    "On the north bank there is a market that has been held every Saturday for three hundred years.\n"
    "Farmers bring vegetables, cheese and bread, and the square is full of people by eight o'clock.\n"
    "On the south bank stand the cathedral and the library, both built from the same grey stone.\n"
    "A narrow bridge connects the two halves, and it is closed to cars during the summer months.\n"
    "Visitors often stop in the middle of the bridge to watch the boats pass underneath.\n"
    "In the evening the lamps along the water are lit, and the town becomes quiet again.",
    "Bread has been baked in this region since long before the first written records.\n"
    "The oldest ovens found by archaeologists were dug into the ground and lined with clay.\n"
    "Grain was ground by hand between two stones, which left small pieces of grit in the flour.\n"
    "Over time the mills moved to the rivers, where water wheels could turn much larger stones.\n"
    "The bakers of the town formed a guild that set the price and the weight of every loaf.\n"
    "Anyone who sold a loaf that was too light could be fined or even banned from the market.\n"
    "Today most of the old mills are museums, but a few of them still grind flour for local shops.",
    "Learning to swim as an adult is easier than most people expect, but it takes patience.\n"
    "The first lessons are usually about breathing, because panic starts when the face is wet.\n"
    "A good teacher will let you stand in shallow water until you feel comfortable with it.\n"
    "After that you learn to float on your back, which shows that the water will hold you up.\n"
    "Kicking and arm strokes come later, and they are practised separately at the beginning.\n"
    "Most learners can swim a full length of the pool after about ten lessons of half an hour.\n"
    "The most important thing is to keep going to the pool, even when progress feels slow.",
]
BASE = CLEAN[0]
FRENCH = ("La ville de Lyon est située au confluent du Rhône et de la Saône. Elle est connue pour sa "
          "gastronomie, son histoire et son architecture.\nLes habitants aiment se promener le long des "
          "quais le dimanche, et les marchés sont pleins de fromages, de fruits et de légumes frais.\nAu "
          "cours des siècles, la ville a été un centre important pour le commerce de la soie. "
          "Aujourd'hui, elle attire des visiteurs du monde entier.")
PII_DOC = ("The support team answers questions about the new library system during office hours.\n"
           "Readers who cannot log in should write to Help.Desk@City-Library.org with their card number.\n"
           "The catalogue server moved to 93.184.216.34 last week, and the old address no longer works.\n"
           "Inside the building the terminals still use the private address 192.168.10.20 as before.\n"
           "Please report broken links, missing books and printer problems at the front desk.\n"
           "The library is closed on public holidays and opens late on the first Monday of each month.")
LIST_WORDS = ["internationalization", "telecommunications", "misunderstandings", "responsibilities",
              "characteristically", "incomprehensibility", "unquestionably", "environmentalists"]
NO_WORD_RULES = {stage: {"enabled": False} for stage in ("english", "gopher_quality", "c4")}
GERMAN = ("Die Stadt liegt am Ufer eines großen Flusses und ist für ihre alten Brücken bekannt. Im Sommer "
          "kommen viele Besucher, um die Museen zu besichtigen und in den Parks spazieren zu gehen. Die "
          "Menschen hier sind stolz auf ihre Geschichte, und jedes Jahr findet im Herbst ein großes Fest "
          "statt, bei dem Musik gespielt und gut gegessen wird.")


def lines_of(words: list[str], per_line: int, seed: int, end: str = ".") -> str:
    """Distinct lines of `per_line` words drawn from `words` (seeded), each ending in `end`."""
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(words) for _ in range(per_line)).capitalize() + end
                     for _ in range(12))


SHORT_WORDS = ["a", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no",
               "of", "on", "or", "so", "to", "up", "us", "we", "am", "ox"]
LONG_WORDS = ["internationalization", "characteristically", "unquestionably", "responsibilities",
              "incomprehensible", "telecommunication", "misunderstanding", "the", "of", "and"]
GOPHER_FREE = ["is", "a", "in", "it", "for", "on", "are", "as", "this", "was", "by", "at", "from", "or", "an",
               "market", "river", "people", "stone"]
PARAS = BASE.split("\n")
REPEAT = "farmers bring vegetables, cheese and bread, and the square is full of people by eight o'clock"

# (row id, text, url, config overrides, expected reason or None to keep)
ROWS = [
    *[(f"clean{i}", doc, "https://example.org/page", {}, None) for i, doc in enumerate(CLEAN)],
    ("url_domain", BASE, "https://www.pornhub.com/view?id=1", {}, "url/domain"),
    ("url_subdomain", BASE, "http://videos.xvideos.com/a", {}, "url/domain"),
    ("url_banned_word", BASE, "https://example.com/free-porn-videos/", {}, "url/banned_word"),
    ("url_word_inside_a_name_is_fine", BASE, "https://www.essex.ac.uk/news", {}, None),
    ("url_two_soft_words", BASE, "https://hot-dating.example.net/", {}, "url/soft_banned_words"),
    ("url_one_soft_word", BASE, "https://hot-recipes.example.net/", {}, None),
    ("url_threshold_from_config", BASE, "https://hot-recipes.example.net/",
     {"url": {"soft_word_threshold": 1}}, "url/soft_banned_words"),
    ("french", FRENCH, None, {}, "language/not_english"),
    ("german", GERMAN, None, {}, "language/not_english"),
    ("dup_para_frac", "\n\n".join(PARAS[:4] + PARAS[:3]), None, {}, "gopher_repetition/dup_para_frac"),
    ("dup_para_char_frac", "\n\n".join(["\n".join(PARAS[:4])] + PARAS[4:] + ["\n".join(PARAS[:4])]), None, {},
     "gopher_repetition/dup_para_char_frac"),
    ("dup_line_frac", "\n".join(PARAS + PARAS[:4]), None, {}, "gopher_repetition/dup_line_frac"),
    ("dup_line_char_frac", "\n".join(PARAS + PARAS[:2]), None, {}, "gopher_repetition/dup_line_char_frac"),
    ("top_2_gram", "\n".join(f"{p.rstrip('.')} and of the of the of the of the of the." for p in PARAS), None,
     {}, "gopher_repetition/top_2_gram"),
    ("duplicated_n_grams",
     BASE.replace("Visitors often", f"Some say that {REPEAT} and also {REPEAT}. Visitors often"),
     None, {}, "gopher_repetition/duplicated_5_n_grams"),
    ("short_doc", "\n".join(PARAS[2:4]), None, {}, "gopher_quality/short_doc"),
    ("long_doc", BASE, None, {"gopher_quality": {"max_doc_words": 60}}, "gopher_quality/long_doc"),
    ("below_avg_word_length", lines_of(SHORT_WORDS, 9, 1), None, {}, "gopher_quality/below_avg_word_length"),
    ("above_avg_word_length", lines_of(LONG_WORDS, 9, 2), None, {}, "gopher_quality/above_avg_word_length"),
    ("too_many_hashes", BASE.replace(" the ", " #the "), None, {}, "gopher_quality/too_many_hashes"),
    ("too_many_ellipsis", BASE.replace(" the ", " the… "), None, {},
     "gopher_quality/too_many_ellipsis"),
    ("too_many_bullets", "\n".join(f"- {p}" for p in PARAS), None, {}, "gopher_quality/too_many_bullets"),
    ("too_many_end_ellipsis",
     "\n".join(p.rstrip(".") + ("..." if i % 2 else ".") for i, p in enumerate(PARAS)),
     None, {}, "gopher_quality/too_many_end_ellipsis"),
    ("below_alpha_threshold", "\n".join(f"{p} " + " ".join(str(i * 97 + j * 13) for j in range(12)) + "."
                                         for i, p in enumerate(PARAS)), None, {},
     "gopher_quality/below_alpha_threshold"),
    ("too_few_stop_words", lines_of(GOPHER_FREE, 10, 3), None, {"english": {"enabled": False}},
     "gopher_quality/too_few_stop_words"),
    ("lorem_ipsum", BASE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", None, {},
     "c4/lorem_ipsum"),
    ("curly_bracket", BASE + "\nThe code reads if (x) { return the value of y; } at the end.", None, {},
     "c4/curly_bracket"),
    ("too_few_sentences", " ".join(PARAS[:3]).replace(".", ",") + " and that is all we know about the town.",
     None, {}, "c4/too_few_sentences"),
    ("c4_min_sentences_from_config", BASE, None, {"c4": {"min_sentences": 8}}, "c4/too_few_sentences"),
    ("line_punct_ratio", "\n".join(p.rstrip(".") for p in PARAS), None, {}, "fineweb/line_punct_ratio"),
    ("short_line_ratio",
     "The bread is warm.\nThe river runs north.\nA market opens early.\nCheese comes from "
     "farms.\nThe bridge is narrow.\nBoats pass below it.\nLamps are lit at dusk.\nThe library has maps.\n"
     "Children swim in summer.\nThe mill still turns.\nVisitors take photos.\nThe cathedral is grey.\n"
     "Farmers sell apples too.\nThe square fills up.\nMost shops close at six.", None, {},
     "fineweb/short_line_ratio"),
    ("char_dup_ratio",
     "\n".join(PARAS[:3] + ["The market is open daily."] + PARAS[3:] + ["The market is open daily."]),
     None, {}, "fineweb/char_dup_ratio"),
    ("list_ratio", "\n".join(f"{a} {b}" + ("." if (i + j) % 4 == 0 else "")
                             for i, a in enumerate(LIST_WORDS) for j, b in enumerate(LIST_WORDS) if a != b),
     None, NO_WORD_RULES, "fineweb/list_ratio"),
]


ORDER = ["url", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb", "dedup"]


def config(overrides: dict) -> FilterConfig:
    return build_config(overrides, "test", FilterConfig)


@pytest.mark.parametrize("name, text, url, overrides, expected", ROWS, ids=[row[0] for row in ROWS])
def test_each_rule_on_hand_made_docs(name, text, url, overrides, expected):
    _, reason = DocFilter(config(overrides))(text, url)
    assert reason == expected, f"{name}: expected {expected}, got {reason}"


def test_every_rule_row_is_kept_once_its_stage_is_switched_off():
    """With its stage disabled a row passes that stage; at most a later stage removes it (repeated paragraphs
    are also duplicated lines for FineWeb's stricter rule; Gopher's stop-word rule also catches French)."""
    stage_key = {"language": "english", "c4": "c4", "fineweb": "fineweb", "url": "url",
                 "gopher_repetition": "gopher_repetition", "gopher_quality": "gopher_quality"}
    for name, text, url, overrides, expected in ROWS:
        if expected is None or overrides:
            continue
        stage = stage_key[expected.split("/")[0]]
        _, reason = DocFilter(config({stage: {"enabled": False}}))(text, url)
        assert reason is None or ORDER.index(reason.split("/")[0]) > ORDER.index(expected.split("/")[0]), name
    french = DocFilter(config({"english": {"enabled": False}}))(FRENCH)[1]
    assert french == "gopher_quality/too_few_stop_words"


def test_a_user_blocklist_adds_domains_and_urls(tmp_path):
    listed = tmp_path / "block.txt"
    listed.write_text("# my list\nblocked.example\nhttps://ok.example/page/bad  # one page only\n")
    doc_filter = DocFilter(config({"url": {"blocklist_file": str(listed)}}))
    assert doc_filter(BASE, "https://news.blocked.example/today")[1] == "url/domain"
    assert doc_filter(BASE, "https://ok.example/page/bad/")[1] == "url/listed_url"
    assert doc_filter(BASE, "https://ok.example/page/good")[1] is None
    with pytest.raises(ValueError, match="url.blocklist_file .*missing.txt"):
        DocFilter(config({"url": {"blocklist_file": str(tmp_path / "missing.txt")}}))


def test_c4_drops_boilerplate_lines_and_strips_citations():
    text = (BASE + "\nPlease enable JavaScript to see the comments below."
            "\nRead our privacy policy and terms of use."
            "\nHome\nThe bridge was rebuilt in 1850 after a flood.[3][citation needed]")
    kept, reason = c4_lines(text, C4Lines())
    assert reason is None
    assert kept.splitlines()[:7] == BASE.splitlines()
    assert kept.splitlines()[7:] == ["The bridge was rebuilt in 1850 after a flood."]


def test_pii_replaces_emails_and_public_ips_only_in_turn():
    pii = PiiFormatter(Pii())
    text = ("Write to Jane.Doe@Example.org or bob@mail.example.com. Server 93.184.216.34 and 8.8.8.8, "
            "router 192.168.1.1, loopback 127.0.0.1, office 10.0.0.7.")
    assert pii(text) == ("Write to email@example.com or firstname.lastname@example.org. "
                         "Server 22.214.171.124 and 126.96.36.199, router 192.168.1.1, loopback 127.0.0.1, "
                         "office 10.0.0.7.")
    assert pii("again a@b.org at 1.1.1.1") == "again email@example.com at 188.8.131.52"  # the turn carries on
    assert pii.counts == {"emails": 3, "ips": 3}


def gsm8k_docs(n: int) -> list[str]:
    questions = [row["question"] for _, row, _ in jsonl_lines(gsm8k.TEST)]
    return ["\n".join(questions[i:i + 6]) for i in range(0, 6 * n, 6)]


def few_words_changed(text: str, k: int, seed: int) -> str:
    words = text.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "zebra"
    return " ".join(words)


def test_near_duplicates_are_removed_and_unrelated_docs_kept():
    docs = gsm8k_docs(150)  # 150 unrelated word-problem docs: similar style, different content
    long_doc = "\n".join(CLEAN)
    index = DedupIndex(Dedup())
    texts = [long_doc, *docs, few_words_changed(long_doc, 3, 0), few_words_changed(long_doc, 2, 1), long_doc]
    accepted = [index.add(t) for t in texts]
    assert accepted == [True] * (len(texts) - 1) + [False]  # the last one is an exact copy
    assert index.near_duplicates() == {151, 152}  # both edited copies; the first (original) is kept


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal minima of two signatures: an unbiased estimate of their shingle sets' Jaccard
    similarity."""
    return float(np.mean(a == b))


def test_minhash_estimates_the_exact_jaccard_of_5_gram_sets():
    hasher = MinHasher(Dedup())
    base = "\n".join(CLEAN)

    def grams(text: str) -> set[str]:
        words = normalize(text).split()
        return {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}

    for k in (2, 8, 20, 40):
        other = few_words_changed(base, k, k)
        exact = len(grams(base) & grams(other)) / len(grams(base) | grams(other))
        estimate = estimated_jaccard(hasher.signature(base), hasher.signature(other))
        assert abs(estimate - exact) < 0.15, (k, exact, estimate)  # 112 hashes: std <= 0.05


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_counts_add_up_and_kept_docs_are_written_with_their_fields(tmp_path):
    rows = [{"text": text, "url": url, "id": name} for name, text, url, overrides, _ in ROWS if not overrides]
    rows += [{"text": PII_DOC, "id": "pii"}, {"text": CLEAN[1] + "\n ", "id": "exact_copy"},
             {"text": few_words_changed("\n".join(CLEAN), 2, 5), "id": "edited"},
             {"text": "\n".join(CLEAN), "id": "joined"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    metrics = filter_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", FilterConfig())
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    removed = {k.removeprefix("filter/removed/"): v
               for k, v in metrics.items() if k.startswith("filter/removed/")}
    assert metrics["filter/docs_in"] == len(rows) == metrics["filter/docs_kept"] + sum(removed.values())
    assert metrics["filter/docs_kept"] == len(kept)
    assert [r["id"] for r in kept] == ["clean0", "clean1", "clean2", "pii", "edited"]
    # the two URL rows that pass carry clean0's text, so they are exact copies, as is the padded clean1
    # "joined" is a near copy of "edited"
    assert removed["dedup/exact"] == 3 and removed["dedup/minhash"] == 1
    assert sum(v for k, v in removed.items() if not k.startswith("dedup/")) == len(rows) - 9
    assert "Help.Desk@City-Library.org" not in kept[3]["text"] and "93.184.216.34" not in kept[3]["text"]
    assert "192.168.10.20" in kept[3]["text"]
    assert metrics["filter/pii/emails"] == metrics["filter/pii/ips"] == 1


@pytest.mark.parametrize("content, message", [
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"in.jsonl:2: not valid UTF-8"),
    (b'{"text": "fine"}\n\n{"text": oops}\n', r"in.jsonl:3: not valid JSON"),
    (b'{"body": "no text field"}\n', r"in.jsonl:1: expected an object with a 'text' string, got NoneType"),
    (b'["a list"]\n', r"in.jsonl:1: expected an object with a 'text' string, got list"),
    (b'{"text": "ok", "url": 7}\n', r"in.jsonl:1: 'url' must be a string"),
])
def test_bad_input_is_named_by_file_and_line_and_leaves_no_output(tmp_path, content, message):
    (tmp_path / "in.jsonl").write_bytes(content)
    with pytest.raises(InputError, match=message):
        filter_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]


def test_the_cli_filters_with_a_config_and_overrides_and_reports_per_rule(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"text": doc} for doc in CLEAN] + [{"text": FRENCH}])
    (tmp_path / "f.toml").write_text("[c4]\nmin_sentences = 8\n")
    argv = ["filter", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--config",
            str(tmp_path / "f.toml")]
    assert main(argv + ["--c4.min_sentences=5"]) == 0
    out = capsys.readouterr().out
    assert "language/not_english" in out and "kept" in out
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert main(argv) == 0 and "c4/too_few_sentences" in capsys.readouterr().out
    assert main(["filter", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    assert "nope.jsonl does not exist" in " ".join(capsys.readouterr().out.split())


def test_unknown_or_mistyped_config_keys_are_named():
    with pytest.raises(ConfigError, match=r"gopher_quality.min_words: unknown key"):
        config({"gopher_quality": {"min_words": 3}})
    with pytest.raises(ConfigError, match=r"fineweb.line_punct_thr: .*got 'high'"):
        config({"fineweb": {"line_punct_thr": "high"}})
