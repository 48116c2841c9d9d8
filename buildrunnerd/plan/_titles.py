"""Task titles that say what to do: "Issue and hash API tokens in `todo_api/auth.py`"."""

from __future__ import annotations

import re

__all__ = ["task_title"]

_MAX_TITLE_CHARS = 90
_MAX_WORDS = 9
_SPAN = re.compile(r"`([^`\n]*)`")
_FILE_SUBJECT = re.compile(
    r"^(?:(?:a|an|the|new)\s+)?`([^`\n]+)`\s*(?:(?:module|file|class|script|component|"
    r"service|package|library|helper|page|screen|view|struct|handler|test file)\s+)?",
    re.I,
)
_LABEL = re.compile(r"^([A-Z][\w/-]{0,20}(?: [\w/-]{1,20}){0,2}):\s+(\S.*)$")
_MODAL_WORDS = frozenset("is are must should shall will can".split())
_MODAL = re.compile(r"^(?:is |are |must |should |shall |will |can )+", re.I)
_PARENS = re.compile(r"\s*\([^()]*\)")
# Where the first instruction of a sentence ends: a connector word (after a few words), a
# dash, a clause mark, or (later) a list comma. Word by word: a regex alternation over every
# position cost ~10 us a title, and a big plan has ten thousand titles.
_CONNECTORS = frozenset("so with which that where including e.g. because when using via".split())
_AND_THEN = frozenset("then also create creates store stores return returns write writes".split())
_DASHES = frozenset("- – —".split())
_DANGLING = frozenset("and or the a an of to in on for with by".split())
_QUERY = re.compile(r"\?\S*")
_NOT_VERBS = frozenset(
    "a an the it this that these those each every all any users user people someone when if "
    "given there no only both either errors error its their our your my".split()
)
_KEEP_S = ("ss", "us", "is", "ous")


def _imperative(word: str) -> str:
    """"issues" -> "Issue", "applies" -> "Apply", "checks" -> "Check"."""
    low = word.lower()
    if low.endswith("ies") and len(low) > 4:
        return word[:-3].capitalize() + "y"
    if low.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2].capitalize()
    if low.endswith("s") and not low.endswith(_KEEP_S) and len(low) > 3:
        return word[:-1].capitalize()
    return word[:1].upper() + word[1:]


def _clause(text: str, *, third_person: bool = False) -> str:
    """The first instruction of ``text``; with ``third_person`` ("issues tokens and stores
    their hash"), a second verb after "and" starts the next instruction."""
    if "(" in text:
        text = _PARENS.sub("", text).split(" (", 1)[0]
    if "?" in text:
        text = _QUERY.sub("", text)  # "GET /todos?done=false&q=milk" -> "GET /todos"
    words = text.split()[: _MAX_WORDS + 1]
    lows = [w.lower() for w in words]
    out: list[str] = []
    chars = 0
    for n, word in enumerate(words):
        low = lows[n]
        if chars >= 16 and (low in _CONNECTORS or (low == "and" and n + 1 < len(words) and (
            lows[n + 1] in _AND_THEN or (third_person and lows[n + 1].endswith("s")
                                         and not lows[n + 1].endswith(_KEEP_S)
                                         and lows[n + 1] not in _NOT_VERBS)
        ))):
            break
        if low in _DASHES:
            break
        out.append(word)
        chars += len(word) + 1
        last = word[-1]
        if last in ";:." or (last == "," and chars >= 24) or len(out) >= _MAX_WORDS:
            break
    while len(out) > 2 and out[-1].lower() in _DANGLING:
        out.pop()
    return " ".join(out).rstrip(".,;:")


def task_title(text: str, files: list[str], feature: str, fallback: str) -> str:
    """A title from the first thing a task must do (its first requirement or criterion).

    The file the sentence names becomes the place ("... in `todo_api/auth.py`"); a sentence
    about a file ("`auth.py` issues tokens") becomes an instruction ("Issue tokens"). Text
    that does not start with a verb keeps the feature's name in front.
    """
    named = set(files)
    if "(" in feature:
        feature = _PARENS.sub("", feature).strip() or feature  # "Rules (Functional Spec)"
    stripped = text.strip()
    # "`x.py` issues ...", "A `x.py` module opens ...": the sentence is about the file.
    starts_with_file = False
    if "`" in stripped:
        m = _FILE_SUBJECT.match(stripped)
        starts_with_file = m is not None and m.group(1) in named
        if m is not None and starts_with_file:
            stripped = stripped[m.end():]
        stripped = _SPAN.sub(lambda s: "" if s.group(1) in named else s.group(0), stripped)
    body = " ".join(stripped.split())
    if body[:7].split(" ", 1)[0].lower() in _MODAL_WORDS:
        body = _MODAL.sub("", body)
    labelled = _LABEL.match(body) if ":" in body[:70] else None
    if labelled is not None and not starts_with_file:
        # "Endpoint: `POST /api/x`", "Input: a URL": the label says what the value is.
        body = f"{labelled.group(1).lower()} {labelled.group(2)}"
        starts_with_file = False
        clause = _clause(body)
        title = f"{feature}: {clause}" if len(clause) >= 4 else fallback
        return _with_place(title, files)
    clause = _clause(body, third_person=starts_with_file) if body else ""
    words = clause.split()
    if not words or len(clause) < 4:
        title = fallback
    elif starts_with_file and words[0].lower() not in _NOT_VERBS:
        title = " ".join([_imperative(words[0]), *words[1:]])
    elif words[0][:1].isupper() and words[0].lower() not in _NOT_VERBS and not (
        words[0].lower().endswith("s") and not words[0].lower().endswith(_KEEP_S)
    ) and not words[0].lower().endswith(("ing", "ed")):
        title = clause  # already an instruction: "Persist users ...", "Add retry ..."
    else:
        title = f"{feature}: {clause}"
    return _with_place(title, files)


def _with_place(title: str, files: list[str]) -> str:
    if files:
        where = f"`{files[0]}`" + (f" (+{len(files) - 1})" if len(files) > 1 else "")
        title = f"{title} in {where}"
    if len(title) > _MAX_TITLE_CHARS:
        title = title[: _MAX_TITLE_CHARS - 1].rstrip() + "…"
    return title
