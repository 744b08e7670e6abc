"""Table-driven tests of the prompt-tag grammar: input -> expected output per convention."""
import os
import subprocess
import sys

import pytest

from modelsmith.core import prompt as P

# (input, convention, expected)
CASES = [
    # ordering for Anima: quality/meta/year/safety, count, character, series, artist, general, natural language
    ("1girl, solo, masterpiece", "anima", "masterpiece, 1girl, solo"),
    ("smile, 1girl, best quality, safe", "anima", "best quality, safe, 1girl, smile"),
    ("year 2024, 1girl, masterpiece", "anima", "masterpiece, year 2024, 1girl"),
    ("newest, explicit, masterpiece, 1girl", "anima", "masterpiece, newest, explicit, 1girl"),
    ("@wlop, 1girl, long hair", "anima", "1girl, @wlop, long hair"),
    ("@@wlop, 1girl", "anima", "1girl, @wlop"),
    ("artist:wlop, 1girl", "anima", "1girl, @wlop"),
    ("1girl, 1boy, hug", "anima", "1girl, 1boy, hug"),
    # a stray parenthesis elsewhere does not break a weighted group apart; it stays, escaped
    ("(red hair, blue eyes:1.2), smile), 1girl", "anima", "1girl, smile\\), (red hair, blue eyes:1.2)"),
    ("1boy, 1girl, hug", "anima", "1boy, 1girl, hug"),
    ("2girls, no humans", "anima", "2girls, no humans"),
    ("1other, cat", "anima", "1other, cat"),
    ("6+girls, crowd", "anima", "6+girls, crowd"),
    ("multiple girls, 3girls", "anima", "multiple girls, 3girls"),
    ("long_hair, blue_eyes", "anima", "long hair, blue eyes"),
    ("Long Hair,   Blue   Eyes", "anima", "long hair, blue eyes"),
    ("  smile  ,  ,, 1girl ", "anima", "1girl, smile"),
    ("smile, smile, 1girl, smile", "anima", "1girl, smile"),
    ("long hair, long_hair", "anima", "long hair"),
    ("score_9, score_8_up, 1girl", "anima", "score_9, score_8_up, 1girl"),
    ("masterpiece, score_9, 1girl", "anima", "masterpiece, score_9, 1girl"),
    ("^_^, 1girl", "anima", "1girl, ^_^"),
    (">_<, smile", "anima", ">_<, smile"),
    ("1girl, ;_;", "anima", "1girl, ;_;"),
    ("hatsune miku (cosplay), 1girl", "anima", "1girl, hatsune miku \\(cosplay\\)"),
    ("hatsune miku \\(cosplay\\), 1girl", "anima", "1girl, hatsune miku \\(cosplay\\)"),
    ("hatsune_miku_(cosplay)", "anima", "hatsune miku \\(cosplay\\)"),
    ("(smile:1.2), 1girl", "anima", "1girl, (smile:1.2)"),
    ("(long_hair:0.8), masterpiece", "anima", "masterpiece, (long hair:0.8)"),
    ("(smile), 1girl", "anima", "1girl, (smile:1.1)"),
    ("(masterpiece:1.2), 1girl", "anima", "(masterpiece:1.2), 1girl"),
    ("(hatsune miku \\(cosplay\\):1.3), 1girl", "anima", "1girl, (hatsune miku \\(cosplay\\):1.3)"),
    ("(smile:.5)", "anima", "(smile:0.5)"),
    ("(red eyes, blue hair:1.1), 1girl", "anima", "1girl, (red eyes, blue hair:1.1)"),
    ("1girl, A girl standing in the rain.", "anima", "1girl, A girl standing in the rain."),
    ("A girl standing in the rain., masterpiece, 1girl", "anima", "masterpiece, 1girl, A girl standing in the rain."),
    ("she is holding a red umbrella under the night sky, 1girl", "anima",
     "1girl, she is holding a red umbrella under the night sky"),
    ("unknowntag123, 1girl", "anima", "1girl, unknowntag123"),
    ("weird-tag, another weird tag", "anima", "weird-tag, another weird tag"),
    ("ye-pop, 1girl, masterpiece", "anima", "masterpiece, ye-pop, 1girl"),
    ("deviantart, landscape", "anima", "deviantart, landscape"),
    ("sensitive, 1girl", "anima", "sensitive, 1girl"),
    ("rating_explicit, 1girl", "anima", "explicit, 1girl"),
    ("rating_safe, 1girl", "anima", "safe, 1girl"),
    ("general, 1girl", "anima", "safe, 1girl"),
    ("source_anime, 1girl", "anima", "1girl"),
    # Illustrious / NoobAI
    ("1girl, masterpiece, best quality, newest, absurdres", "illustrious",
     "masterpiece, best quality, absurdres, newest, 1girl"),
    ("@wlop, 1girl", "illustrious", "1girl, wlop"),
    ("safe, 1girl", "illustrious", "general, 1girl"),
    ("rating_explicit, 1girl", "illustrious", "explicit, 1girl"),
    ("score_9, score_8_up, 1girl", "illustrious", "masterpiece, best quality, 1girl"),
    ("score_6_up, 1girl", "illustrious", "1girl"),
    ("year 2024, very aesthetic, 1girl", "noobai", "very aesthetic, year 2024, 1girl"),
    ("1girl, long_hair, masterpiece", "noobai", "masterpiece, 1girl, long hair"),
    ("nsfw, 1girl", "noobai", "nsfw, 1girl"),
    ("ye-pop, 1girl", "noobai", "1girl"),
    # Pony
    ("1girl, score_9, score_8_up, score_7_up, source_anime, rating_safe", "pony",
     "score_9, score_8_up, score_7_up, source_anime, rating_safe, 1girl"),
    ("masterpiece, best quality, 1girl", "pony", "score_9, score_8_up, 1girl"),
    ("explicit, 1girl", "pony", "rating_explicit, 1girl"),
    ("sensitive, 1girl", "pony", "rating_questionable, 1girl"),
    ("newest, year 2023, 1girl", "pony", "1girl"),
    ("score_9, Score_8_Up, 1girl", "pony", "score_9, score_8_up, 1girl"),
    ("@wlop, 1girl", "pony", "1girl, wlop"),
    ("(score_9:1.1), 1girl", "pony", "(score_9:1.1), 1girl"),
    ("absurdres, 1girl", "pony", "1girl"),
    ("1girl, 1boy", "pony", "1girl, 1boy"),
    ("a cat sitting on a windowsill at dusk.", "pony", "a cat sitting on a windowsill at dusk."),
]


@pytest.mark.parametrize("text,conv,expected", CASES)
def test_normalize_table(text, conv, expected):
    assert P.normalize(text, conv) == expected


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_nothing_dropped_silently():
    for text, conv, _ in CASES:
        items = P.parse(text).items
        out = P.normalize(text, conv)
        notes = P.conversion_notes(text, conv)
        for it in P.dedupe(items):
            shown = it.text.lstrip("@") in out.replace("\\(", "(").replace("\\)", ")") or it.text in out
            assert shown or any(it.text in n for n in notes), (text, conv, it)


def test_conversion_notes():
    assert "score_6_up: no illustrious equivalent, dropped" in P.conversion_notes("score_6_up", "illustrious")
    assert "rating_explicit -> explicit" in P.conversion_notes("rating_explicit", "anima")
    assert "explicit -> rating_explicit" in P.conversion_notes("explicit", "pony")


BUILD = [
    (dict(quality="masterpiece, best quality", period="year 2025", rating="safe", count="1girl",
          character="hatsune miku", series="vocaloid", artist="wlop", general="long hair, twintails",
          description="She waves at the viewer."), "anima",
     "masterpiece, best quality, year 2025, safe, 1girl, hatsune miku, vocaloid, @wlop, long hair, twintails, "
     "She waves at the viewer."),
    (dict(artist="@wlop", count="1girl"), "anima", "1girl, @wlop"),
    (dict(character="frieren", series="sousou no frieren", count="1girl", quality="masterpiece"), "illustrious",
     "masterpiece, 1girl, frieren, sousou no frieren"),
    (dict(count="1girl", general="smile"), "pony", "score_9, score_8_up, score_7_up, 1girl, smile"),
    (dict(character="kirisame_marisa_(touhou)"), "anima", "kirisame marisa \\(touhou\\)"),
]


@pytest.mark.parametrize("fields,conv,expected", BUILD)
def test_build(fields, conv, expected):
    assert P.build(conv, **fields) == expected


def test_negative_presets():
    assert P.negative("anima") == "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
    for c in P.CONVENTIONS:
        assert P.negative(c)


def test_cli_prompt():
    r = subprocess.run([sys.executable, "-m", "modelsmith", "prompt", "--convention", "anima", "1girl, masterpiece, @@wlop"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "masterpiece, 1girl, @wlop"
    r = subprocess.run([sys.executable, "-m", "modelsmith", "prompt", "--convention", "pony", "--negative", "x"],
                       capture_output=True, text=True)
    assert P.negative("pony") in r.stdout


def test_prompt_node_to_sampler(run_graph, tiny_files):
    """The builder's CONDITIONING goes straight into core KSampler on a tiny SDXL model."""
    g = {"1": {"class_type": "ModelsmithCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl.safetensors", "prediction": "auto"}},
         "2": {"class_type": "ModelsmithAnimaPrompt", "inputs": {
             "convention": "illustrious", "quality": "masterpiece", "score": "", "period": "newest", "rating": "safe",
             "count": "1girl", "character": "", "series": "", "artist": "@wlop", "general": "smile", "description": "",
             "clip": ["1", 1]}},
         "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 2], "negative": ["2", 3],
                                                    "latent_image": ["3", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
         "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
         "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}
    executor, _ = run_graph(g)
    assert executor.history_result["outputs"]["2"]["text"][0] == "masterpiece, newest, general, 1girl, wlop, smile"
    assert executor.history_result["outputs"]["6"]["images"]


def test_normalize_node_over_http(server):
    g = {"1": {"class_type": "ModelsmithTagNormalize", "inputs": {"text": "smile, 1girl, @@wlop, masterpiece",
                                                                   "convention": "anima"}}}
    hist = server.queue_and_wait(g)
    assert hist["outputs"]["1"]["text"][0] == "masterpiece, 1girl, @wlop, smile"


@pytest.mark.parametrize("text,conv,expected", CASES)
def test_round_trip_table(text, conv, expected):
    once = P.normalize(text, conv)
    assert P.normalize(once, conv) == once


from hypothesis import example, given, settings, strategies as st  # noqa: E402

_pieces = st.sampled_from(["1girl", "1boy", "masterpiece", "score_9", "@wlop", "@@x", "long_hair", "(smile:1.2)",
                           "(smile)", "^_^", "hatsune miku \\(cosplay\\)", "name (series)", "year 2024", "newest",
                           "rating_explicit", "safe", "A girl in the rain.", "source_anime", "ye-pop", "(a, b:1.1)",
                           "Big  Tag", "x", "", " ", "(", ")", "\\", ":", "((double))", "(tag:abc)"])


@settings(max_examples=int(os.environ.get("MODELSMITH_FUZZ_EXAMPLES", 300)), deadline=None)
@given(st.lists(st.one_of(_pieces, st.text(max_size=12), st.text(alphabet="(),:\\@_ ab.1!^;", max_size=10)),
                max_size=12), st.sampled_from(P.CONVENTIONS))
# found by a long run of this test: a stray ')' left in the output used to make the whole prompt
# unbalanced on the second pass, which then split the weighted group apart
@example(["(a, b:1.1)", "(", "0)_0_!"], "anima")
# and: a '(' paired with a ')' that is not the item's last character does not make a group
@example(["(", "1girl", ")\\)"], "anima")
def test_round_trip_fuzz(parts, conv):
    text = ", ".join(parts)
    once = P.normalize(text, conv)
    assert isinstance(once, str)
    assert P.normalize(once, conv) == once


@pytest.mark.parametrize("text", ["", "   ", ",,,,", "(((", ")))", "(smile:1.2", "smile:1.2)", "\x00\x01\x07 tag\x1b[31m",
                                  "tag\u200b, \ufeff1girl", "(a, b:1.1), \\", "(, 1girl, )0", "1girl, @", "@ @", "11 1_., 1", "a" * 100_000, ", ".join(["tag%d" % i for i in range(10_000)])])
def test_bad_input_gives_a_usable_result(text):
    for conv in P.CONVENTIONS:
        out = P.normalize(text, conv)
        assert isinstance(out, str)
        assert "\x00" not in out and "\x1b" not in out
        assert P.normalize(out, conv) == out


def test_anima_troubleshooting_notes_from_the_guide():
    """No artist tag -> the style varies; Danbooru tags only -> plain backgrounds; neither note once an
    @artist and a description are there; other conventions get none."""
    from modelsmith.core import prompt as P
    plain = P.build("anima", quality="masterpiece", count="1girl", general="smile, long hair")
    notes = P.anima_advice(plain)
    assert any("No artist tag" in n and "@artist" in n for n in notes)
    assert any("Danbooru tags only" in n and "natural-language" in n for n in notes)
    full = P.build("anima", quality="masterpiece", count="1girl", artist="wlop", general="smile",
                   description="A girl smiles in a sunlit garden full of roses.")
    assert P.anima_advice(full) == []


def test_sampler_settings_far_from_the_record_are_named():
    from modelsmith.core import registry
    assert registry.settings_advice("anima", 1024, 1024, 30, 4.0) == []
    far = registry.settings_advice("anima", 512, 512, 100, 9.0)
    assert len(far) == 3 and "1.0 MP" in far[0] and "about 30" in far[1] and "about 4" in far[2]
    assert registry.settings_advice("anima", 1024, 1024, 8, 1.0, "turbo") == []  # turbo's own settings
