"""core/linear_re.py: the same answers as Python's re on every pattern it accepts, in time linear in
the text (patterns that make re backtrack for minutes finish at once)."""
import re
import time

import pytest
from hypothesis import given, settings, strategies as st

from modelsmith.core import linear_re
from modelsmith.core.errors import ModelsmithError
from modelsmith.core.quantize import excluded, parse_exclude

PATTERNS = [r"attn2\.to_[kv]", r"blocks\.(0|1)\.", r"^final_layer", r"norm$", r"(a|ab)*c", r"x{2,3}y?",
            r"[^a-c]+\d", r"\bblocks\b", r"emb(ed)?der", r"a.*b.*c", r"(?i)LLM_adapter", r"", r"a??b+?",
            r"t_embedder|x_embedder|final_layer", r"\w+\.\W", r"[a-f0-9]{4}", r"(ab){0,2}$", r"\Ablocks", r"\s|x\Z"]
TEXTS = ["blocks.0.attn2.to_k", "blocks.12.attn2.to_q", "final_layer.linear", "llm_adapter.norm", "abababc", "xxy",
         "ddd9", "net.blocks.3", "embedder", "embder", "a1b2c3", "LLM_ADAPTER.x", "", "aab", "t_embedder.1",
         "w.!", "beef", "abab", "x", "a b"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_same_answers_as_re(pattern):
    compiled = linear_re.compile(pattern)
    for text in TEXTS:
        assert compiled.search(text) is bool(re.search(pattern, text)), (pattern, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.*+?|()[]^$", min_size=1, max_size=10), st.text(alphabet="ab.", max_size=12))
def test_random_patterns_agree_with_re(pattern, text):
    try:
        expected = bool(re.search(pattern, text))
    except re.error:
        with pytest.raises(linear_re.PatternError):
            linear_re.compile(pattern)
        return
    try:
        compiled = linear_re.compile(pattern)
    except linear_re.PatternError:
        return  # refused (a construct it cannot run in linear time): never a wrong answer
    assert compiled.search(text) is expected, (pattern, text)


def test_patterns_that_freeze_a_backtracking_engine_finish_at_once():
    name = "a" * 30 + "."  # the layer names are short; re takes exponential/polynomial time on these
    for pattern in (r".*.*.*.*.*.*.*.*.*.*.*.*!", r"(a+)+$!", r"(a|aa)*!", r"(.*a){12}!"):
        patterns = parse_exclude(pattern)
        t = time.perf_counter()
        assert excluded(name * 3, patterns) is False
        assert time.perf_counter() - t < 2.0, pattern


@pytest.mark.parametrize("pattern", [r"(a)\1", r"a(?=b)", r"(?<!x)y", "x" * 201, r"a{2000}", r"[z-a]"])
def test_what_cannot_run_in_linear_time_or_is_invalid_is_one_sentence(pattern):
    with pytest.raises(ModelsmithError, match="exclude"):
        parse_exclude(pattern)
