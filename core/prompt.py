"""Danbooru-style prompt grammar: parse, normalize, classify and render tags in the order and
spelling each model family was trained on (Anima, Illustrious, NoobAI, Pony). Comfy-free.

A prompt is comma-separated items. An item is a tag, a weighted tag `(tag:1.2)` / `(tag)`, a
weighted group `(a, b:1.1)` (kept whole), or a natural-language sentence (kept last, verbatim).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .names import CONVENTIONS  # noqa: E402,F401  (the CLI offers them without importing this module)

QUALITY = ["masterpiece", "best quality", "amazing quality", "high quality", "great quality", "good quality",
           "normal quality", "low quality", "worst quality", "very aesthetic", "aesthetic", "displeasing",
           "very displeasing", "absurdres", "highres", "lowres"]
PERIODS = ["newest", "recent", "mid", "early", "old"]
RATING_LEVEL = {  # canonical level per spelling
    "safe": "general", "general": "general", "rating_safe": "general", "rating:general": "general",
    "sensitive": "sensitive", "rating:sensitive": "sensitive",
    "nsfw": "questionable", "questionable": "questionable", "rating_questionable": "questionable",
    "rating:questionable": "questionable",
    "explicit": "explicit", "rating_explicit": "explicit", "rating:explicit": "explicit",
}
RATING_SPELLING = {
    "anima": {"general": "safe", "sensitive": "sensitive", "questionable": "nsfw", "explicit": "explicit"},
    "illustrious": {"general": "general", "sensitive": "sensitive", "questionable": "nsfw", "explicit": "explicit"},
    "pony": {"general": "rating_safe", "sensitive": "rating_questionable", "questionable": "rating_questionable",
             "explicit": "rating_explicit"},
}
RATING_SPELLING["noobai"] = RATING_SPELLING["illustrious"]
META = ["ye-pop", "deviantart"]
EMOTICONS = {"^_^", ">_<", "o_o", "0_0", "=_=", "u_u", "@_@", "._.", ";_;", "t_t", "x_x", "+_+", "-_-", "|_|",
             "^_^;", "<o>_<o>", "(o)_(o)", "^_^)", "=^_^=", "o_o;", "@_@;", ">_o", "0_o", "o_0"}
# quality <-> score equivalents used when converting between conventions
QUALITY_TO_SCORE = {"masterpiece": "score_9", "best quality": "score_8_up", "good quality": "score_7_up"}
SCORE_TO_QUALITY = {v: k for k, v in QUALITY_TO_SCORE.items()}
PONY_DEFAULT_SCORES = ["score_9", "score_8_up", "score_7_up"]

NEGATIVE = {
    "anima": "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia",
    "illustrious": "lowres, worst quality, low quality, bad anatomy, bad hands, jpeg artifacts, signature, "
                   "watermark, username, blurry",
    "noobai": "worst quality, old, early, low quality, lowres, signature, username, logo, bad hands, mutated hands",
    "pony": "score_6, score_5, score_4, source_furry, source_pony, source_cartoon",
}

_SCORE = re.compile(r"^score_[1-9](_up)?$")
_YEAR = re.compile(r"^year \d{4}$")
_COUNT = re.compile(r"^(\d+\+?(girl|boy|other)s?|multiple (girls|boys|others)|no humans)$")
_SOURCE = re.compile(r"^source_(anime|cartoon|furry|pony)$")
_WEIGHT = re.compile(r"^\((.*):\s*([0-9]*\.?[0-9]+)\s*\)$", re.S)


@dataclass
class Item:
    text: str                 # normalized, unescaped tag text (or the sentence)
    weight: str | None = None  # "1.2", "1.1" for bare (tag), None for plain
    kind: str = "general"     # quality score period rating count character series artist meta source general group nl

    def render(self, text=None):
        t = escape(text if text is not None else self.text) if self.kind not in ("nl", "group") else (text or self.text)
        if self.weight is None:
            return t
        if self.kind == "group":
            return t
        return f"({t}:{self.weight})"


@dataclass
class Prompt:
    items: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what a conversion changed or could not carry over


def unescape(s: str) -> str:
    return s.replace("\\(", "(").replace("\\)", ")")


def escape(s: str) -> str:
    return re.sub(r"(?<!\\)([()])", r"\\\1", s)


def split_top(text: str) -> list[str]:
    """Split at commas outside parentheses. Only parentheses that pair up nest (escaped ones never
    do), so a stray '(' or ')' elsewhere in the prompt leaves the other groups intact."""
    out = []
    for seg in _split(text, _paired(text)):
        # commas inside parentheses only group when one pair of them encloses the whole item
        if "," in seg and not encloses(seg):
            out += _split(seg, {})
        else:
            out.append(seg)
    return out


def encloses(seg: str) -> bool:
    """True when the item is one parenthesised group: '(a, b)', not '(a) (b)' or '(a, b\\)'."""
    return seg.startswith("(") and _paired(seg).get(0) == len(seg) - 1


def _tokens(text: str):
    """(position, token): an escaped parenthesis is one two-character token, never a bracket."""
    i = 0
    while i < len(text):
        n = 2 if text[i] == "\\" and text[i + 1:i + 2] in ("(", ")") else 1
        yield i, text[i:i + n]
        i += n


def _paired(text: str) -> dict[int, int]:
    """Unescaped parentheses that have a partner: position -> the partner's position."""
    stack, pairs = [], {}
    for i, tok in _tokens(text):
        if tok == "(":
            stack.append(i)
        elif tok == ")" and stack:
            j = stack.pop()
            pairs[j], pairs[i] = i, j
    return pairs


def _split(text: str, nesting: dict[int, int]) -> list[str]:
    parts, depth, cur = [], 0, []
    for i, tok in _tokens(text):
        if i in nesting:
            depth += 1 if tok == "(" else -1
        elif tok in (",", "\n") and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(tok)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def is_sentence(s: str) -> bool:
    words = s.split()
    return (len(words) >= 3 and s.rstrip()[-1:] in ".!?" and not is_emoticon(s)) or len(words) >= 7


def is_emoticon(s: str) -> bool:
    return s in EMOTICONS or (len(s) <= 5 and "_" in s and not re.search(r"[a-z]{2}", s))


def normalize_tag(s: str) -> str:
    s = re.sub(r"\\(?![()])", "", s)  # a backslash only ever escapes a parenthesis
    s = unescape(s).strip()
    if is_emoticon(s.lower()):
        return s.lower()
    s = s.lower()
    if _SCORE.match(s) or _SOURCE.match(s) or s.startswith("rating_"):
        return s
    s = s.replace("_", " ")
    s = re.sub(r"\s+", " ", s).strip()
    return s


def classify(tag: str) -> str:
    if tag in QUALITY:
        return "quality"
    if _SCORE.match(tag):
        return "score"
    if tag in PERIODS or _YEAR.match(tag):
        return "period"
    if tag in RATING_LEVEL:
        return "rating"
    if _COUNT.match(tag):
        return "count"
    if _SOURCE.match(tag):
        return "source"
    if tag in META:
        return "meta"
    if tag.startswith("@"):
        return "artist"
    return "general"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


def parse(text: str) -> Prompt:
    p = Prompt()
    text = _CONTROL.sub("", text or "")
    for seg in split_top(text):
        weight = None
        body = seg
        enclosed = encloses(seg)
        m = _WEIGHT.match(seg) if enclosed else None
        if m:
            body, weight = m.group(1).strip(), m.group(2)
            if weight.startswith("."):
                weight = "0" + weight
        elif enclosed:
            body, weight = seg[1:-1].strip(), "1.1"
        if weight is not None and split_top(body) != [body]:
            p.items.append(Item(seg, weight, "group"))
            continue
        if is_sentence(unescape(body)) and weight is None:
            p.items.append(Item(body.strip(), None, "nl"))
            continue
        tag = normalize_tag(body)
        if not tag:
            continue
        if weight is None and is_sentence(tag):  # reads as a sentence once underscores are spaces
            p.items.append(Item(tag, None, "nl"))
            continue
        if tag.startswith("artist:"):
            tag = "@" + tag[len("artist:"):].strip()
        if tag.startswith("@"):
            tag = "@" + re.sub(r"^[@\s]+", "", tag)
            if tag == "@":
                continue  # an '@' with no name says nothing
        p.items.append(Item(tag, weight, classify(tag)))
    return p


def _key(item: Item) -> str:
    return item.text.lstrip("@") if item.kind == "artist" else item.text


def dedupe(items: list) -> list:
    seen, out = set(), []
    for it in items:
        k = (it.kind == "nl", _key(it))
        if k in seen:
            continue
        seen.add(k)
        out.append(it)
    return out


ORDER = {
    "anima": ["quality", "score", "meta", "period", "rating", "count", "character", "series", "artist", "general",
              "group", "nl"],
    "illustrious": ["quality", "period", "rating", "count", "character", "series", "artist", "general", "group", "nl"],
    "pony": ["score", "source", "rating", "count", "character", "series", "artist", "general", "group", "nl"],
}
ORDER["noobai"] = ORDER["illustrious"]


def convert(prompt: Prompt, convention: str) -> Prompt:
    """Respell special tags for `convention`; what has no equivalent is dropped and noted."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    out = Prompt(notes=list(prompt.notes))
    for it in prompt.items:
        k = it.kind
        if k == "rating":
            new = RATING_SPELLING[convention][RATING_LEVEL[it.text]]
            if new != it.text:
                out.notes.append(f"{it.text} -> {new}")
            out.items.append(Item(new, it.weight, "rating"))
        elif k == "score" and convention in ("illustrious", "noobai"):
            if it.text in SCORE_TO_QUALITY:
                out.notes.append(f"{it.text} -> {SCORE_TO_QUALITY[it.text]}")
                out.items.append(Item(SCORE_TO_QUALITY[it.text], it.weight, "quality"))
            else:
                out.notes.append(f"{it.text}: no {convention} equivalent, dropped")
        elif k == "quality" and convention == "pony":
            if it.text in QUALITY_TO_SCORE:
                out.notes.append(f"{it.text} -> {QUALITY_TO_SCORE[it.text]}")
                out.items.append(Item(QUALITY_TO_SCORE[it.text], it.weight, "score"))
            else:
                out.notes.append(f"{it.text}: no pony equivalent, dropped")
        elif k in ("period", "meta") and convention == "pony":
            out.notes.append(f"{it.text}: no pony equivalent, dropped")
        elif k == "meta" and convention != "anima":
            out.notes.append(f"{it.text}: no {convention} equivalent, dropped")
        elif k == "source" and convention != "pony":
            out.notes.append(f"{it.text}: no {convention} equivalent, dropped")
        else:
            out.items.append(it)
    return out


def render(prompt: Prompt, convention: str) -> str:
    items = dedupe(convert(prompt, convention).items)
    order = ORDER[convention]
    ranked = sorted(range(len(items)), key=lambda i: (order.index(items[i].kind) if items[i].kind in order else
                                                      order.index("general"), i))
    parts = []
    for i in ranked:
        it = items[i]
        if it.kind == "artist":
            name = it.text.lstrip("@")
            parts.append(it.render("@" + name if convention == "anima" else name))
        else:
            parts.append(it.render())
    return ", ".join(parts)


def normalize(text: str, convention: str = "anima") -> str:
    """Clean and reorder any prompt for a convention."""
    return render(parse(text), convention)


def conversion_notes(text: str, convention: str) -> list[str]:
    return convert(parse(text), convention).notes


def build(convention: str = "anima", *, quality="", score="", period="", rating="", count="", character="",
          series="", artist="", general="", description="") -> str:
    """A prompt from builder fields; character/series/artist fields set those kinds explicitly."""
    p = Prompt()
    for text, forced in ((quality, None), (score, None), (period, None), (rating, None), (count, None),
                         (character, "character"), (series, "series"), (artist, "artist"), (general, None)):
        for it in parse(text).items:
            if forced and it.kind not in ("nl", "group"):
                it.kind = forced
                if forced == "artist":
                    it.text = "@" + it.text.lstrip("@")
            p.items.append(it)
    if description and description.strip():
        p.items.append(Item(description.strip(), None, "nl"))
    if convention == "pony" and not any(i.kind == "score" for i in p.items) and not quality.strip():
        p.items[:0] = [Item(s, None, "score") for s in PONY_DEFAULT_SCORES]
    return render(p, convention)


def anima_advice(text: str) -> list[str]:
    """The seed guide's fixes for Anima's common complaints, for a prompt: no artist tag (the style
    varies from image to image) and tags only (plain, monotone backgrounds)."""
    items = parse(text).items
    notes = []
    if not any(i.kind == "artist" for i in items):
        notes.append("No artist tag: Anima's style will vary from image to image; add an @artist tag for a "
                     "steady style.")
    if items and not any(i.kind == "nl" for i in items):
        notes.append("Danbooru tags only: Anima tends to give plain, monotone backgrounds; add a natural-language "
                     "description of the scene (the description field).")
    return notes


def negative(convention: str) -> str:
    return NEGATIVE[convention]
