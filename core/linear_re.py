"""Regular expressions matched in linear time: Python's own parser reads the pattern, and the match
runs as a Thompson NFA (a set of states advanced one character at a time), so no pattern can make a
search backtrack: time is at most (pattern states) x (text length), whatever the pattern.

Supported: literals, `.`, character classes (ranges, `\\d \\w \\s` and their negations, negated
sets), groups, alternation, `* + ? {m,n}` (greedy or lazy: for a yes/no search they are the same),
`^ $ \\A \\Z \\b \\B`. Backreferences and lookarounds cannot be matched without backtracking and are
refused with a sentence; so is a pattern that expands to more than MAX_STATES states.
"""
from __future__ import annotations

try:
    import re._constants as C
    import re._parser as P
except ImportError:  # Python 3.10
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

MAX_STATES = 5000


class PatternError(ValueError):
    """A pattern this engine cannot run in linear time (or an invalid one)."""


def _category(cat, ch: str) -> bool:
    if cat is C.CATEGORY_DIGIT:
        return ch.isdigit()
    if cat is C.CATEGORY_NOT_DIGIT:
        return not ch.isdigit()
    if cat is C.CATEGORY_WORD:
        return ch.isalnum() or ch == "_"
    if cat is C.CATEGORY_NOT_WORD:
        return not (ch.isalnum() or ch == "_")
    if cat is C.CATEGORY_SPACE:
        return ch.isspace()
    if cat is C.CATEGORY_NOT_SPACE:
        return not ch.isspace()
    raise PatternError(f"unsupported character category {cat}")


def _class(items, ignore_case):
    negate = bool(items) and items[0][0] is C.NEGATE
    checks = []
    for op, av in items[1:] if negate else items:
        if op is C.LITERAL:
            checks.append(lambda ch, c=chr(av): ch == c)
        elif op is C.RANGE:
            checks.append(lambda ch, lo=av[0], hi=av[1]: lo <= ord(ch) <= hi)
        elif op is C.CATEGORY:
            checks.append(lambda ch, cat=av: _category(cat, ch))
        else:
            raise PatternError(f"unsupported item {op} in a character class")

    def test(ch):
        hit = any(f(ch) for f in checks) or (ignore_case and any(f(ch.swapcase()) for f in checks))
        return hit != negate
    return test


class _NFA:
    """States: ('char', test, next) | ('split', a, b) | ('assert', kind, next) | ('match',)."""

    def __init__(self, ignore_case):
        self.states = []
        self.ignore_case = ignore_case

    def new(self, *state) -> int:
        if len(self.states) >= MAX_STATES:
            raise PatternError(f"the pattern expands to more than {MAX_STATES} states")
        self.states.append(list(state))
        return len(self.states) - 1

    def patch(self, outs, target):
        for idx, slot in outs:
            self.states[idx][slot] = target

    # each build returns (start, [dangling (state, slot)])
    def seq(self, items):
        start, outs = None, []
        for op, av in items:
            s, o = self.one(op, av)
            if start is None:
                start = s
            else:
                self.patch(outs, s)
            outs = o
        if start is None:  # the empty pattern: a no-op split with both arms dangling to the same place
            s = self.new("split", None, None)
            return s, [(s, 1), (s, 2)]
        return start, outs

    def char(self, test):
        s = self.new("char", test, None)
        return s, [(s, 2)]

    def one(self, op, av):
        ic = self.ignore_case
        if op is C.LITERAL:
            c = chr(av)
            return self.char((lambda ch: ch == c or ch.swapcase() == c) if ic else (lambda ch: ch == c))
        if op is C.NOT_LITERAL:
            c = chr(av)
            return self.char((lambda ch: ch != c and ch.swapcase() != c) if ic else (lambda ch: ch != c))
        if op is C.ANY:
            return self.char(lambda ch: ch != "\n")
        if op is C.IN:
            return self.char(_class(av, ic))
        if op is C.SUBPATTERN:
            return self.seq(av[-1])
        if op is C.BRANCH:
            alts = [self.seq(b) for b in av[1]]
            start, outs = alts[-1]
            for s, o in reversed(alts[:-1]):
                start = self.new("split", s, start)
                outs = o + outs
            return start, outs
        if op in (C.MAX_REPEAT, C.MIN_REPEAT) or op is getattr(C, "POSSESSIVE_REPEAT", None):
            lo, hi, body = av
            if lo > 1000 or (hi is not C.MAXREPEAT and hi > 1000):
                raise PatternError("a repeat count over 1000")
            start, outs = None, []
            for _ in range(lo):  # the required copies
                s, o = self.seq(body)
                if start is None:
                    start = s
                else:
                    self.patch(outs, s)
                outs = o
            if hi is C.MAXREPEAT:  # then a loop
                s, o = self.seq(body)
                split = self.new("split", s, None)
                self.patch(o, split)
                if start is None:
                    start = split
                else:
                    self.patch(outs, split)
                return start, [(split, 2)]
            for _ in range(hi - lo):  # then optional copies
                s, o = self.seq(body)
                split = self.new("split", s, None)
                if start is None:
                    start = split
                else:
                    self.patch(outs, split)
                outs = o + [(split, 2)]
            if start is None:
                s = self.new("split", None, None)
                return s, [(s, 1), (s, 2)]
            return start, outs
        if op is C.AT:
            s = self.new("assert", av, None)
            return s, [(s, 2)]
        if op in (C.GROUPREF, getattr(C, "GROUPREF_EXISTS", None), C.ASSERT, C.ASSERT_NOT):
            raise PatternError("backreferences and lookarounds cannot be matched without backtracking")
        raise PatternError(f"unsupported construct {op}")


def _word(ch) -> bool:
    return ch is not None and (ch.isalnum() or ch == "_")


def _holds(kind, text, i) -> bool:
    prev = text[i - 1] if i > 0 else None
    cur = text[i] if i < len(text) else None
    if kind in (C.AT_BEGINNING, C.AT_BEGINNING_STRING):
        return i == 0
    if kind is C.AT_END:
        return i == len(text) or (i == len(text) - 1 and text[i] == "\n")
    if kind is C.AT_END_STRING:
        return i == len(text)
    if kind is C.AT_BOUNDARY:
        return _word(prev) != _word(cur)
    if kind is C.AT_NON_BOUNDARY:
        return _word(prev) == _word(cur)
    raise PatternError(f"unsupported anchor {kind}")


class LinearPattern:
    """compile(pattern).search(text) -> bool, in time linear in the text."""

    def __init__(self, pattern: str):
        try:
            parsed = P.parse(pattern)
        except Exception as e:  # re.error and the parser's own errors
            raise PatternError(f"not a valid regular expression ({e})") from None
        nfa = _NFA(bool(parsed.state.flags & C.SRE_FLAG_IGNORECASE))
        start, outs = nfa.seq(list(parsed))
        nfa.patch(outs, nfa.new("match"))
        self.pattern, self.states, self.start = pattern, nfa.states, start

    def _closure(self, ids, text, i):
        out, stack, seen = [], list(ids), set()
        while stack:
            s = stack.pop()
            if s is None or s in seen:
                continue
            seen.add(s)
            st = self.states[s]
            if st[0] == "split":
                stack.extend((st[2], st[1]))
            elif st[0] == "assert":
                if _holds(st[1], text, i):
                    stack.append(st[2])
            else:
                out.append(s)
        return out

    def search(self, text: str) -> bool:
        current = []
        for i in range(len(text) + 1):
            current = self._closure(current + [self.start], text, i)  # a match may start at any position
            if any(self.states[s][0] == "match" for s in current):
                return True
            if i == len(text):
                break
            ch = text[i]
            current = [self.states[s][2] for s in current if self.states[s][0] == "char" and self.states[s][1](ch)]
        return False


def compile(pattern: str) -> LinearPattern:  # noqa: A001  (the re-module spelling)
    return LinearPattern(pattern)
