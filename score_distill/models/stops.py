"""Where a generated turn ends: stop strings, shared by every backend (no torch import).

The model interface promises that a turn's text ends with the stop string when one was hit.
The local engine cuts its own decoded text with `stop_cut`. An OpenAI-style server instead
removes the stop string from the reply and reports only `finish_reason: "stop"`, which it
also reports for a natural end of message; `restore_stop` puts the stop string back when the
reply shows it was hit: the server names it (vLLM's `stop_reason`), or the stop string is a
closing tag such as `</code>` whose opening tag the reply left open.

    stop_cut("x = 1</code> junk", ("</code>",))                            # -> 12
    restore_stop("<code>x = 1", "stop", None, ("</code>",))                # -> ("<code>x = 1</code>", "stop")
"""

from __future__ import annotations

from collections.abc import Sequence


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """The index just past the first completed stop string in `text`, or None if none
    occurs. "First completed" is the one ending earliest, as a token-by-token scan sees it.

    >>> stop_cut("a</code>b</first_thought>", ("</first_thought>", "</code>"))
    8
    >>> stop_cut("no stop here", ("</code>",)) is None
    True
    """
    ends = [i + len(s) for s in stops if s and (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def tail_window(stops: Sequence[str]) -> int:
    """How many trailing tokens to decode to see any stop string complete: a token carries at
    least one byte, plus one for a multi-byte character split across tokens.

    >>> tail_window(("</code>", "</first_thought>"))
    18
    """
    return max((len(s.encode()) for s in stops), default=0) + 2


def _left_open(text: str, stop: str) -> bool:
    """Whether `stop` is a closing tag `</name>` whose `<name>` is open at the end of text.

    >>> _left_open("<code>x", "</code>"), _left_open("<code>x</code>", "</code>"), _left_open("x", "END")
    (True, False, False)
    """
    if not (stop.startswith("</") and stop.endswith(">")):
        return False
    opening = "<" + stop[2:]
    return text.rfind(opening) > text.rfind(stop)


def restore_stop(text: str, finish_reason: str, stop_reason: object, stops: Sequence[str]) -> tuple[str, str]:
    """A server reply's text and finish reason in our terms: ("stop" with the text ending at
    the stop string) / "eos" (the model ended its message) / "length" (token cap).

    >>> restore_stop("<first_thought>plan", "stop", None, ("</first_thought>", "</code>"))
    ('<first_thought>plan</first_thought>', 'stop')
    >>> restore_stop("The answer is 4.", "stop", None, ("</code>",))
    ('The answer is 4.', 'eos')
    >>> restore_stop("a END b", "stop", None, ("END",))
    ('a END', 'stop')
    >>> restore_stop("x", "stop", "END", ("END",))
    ('xEND', 'stop')
    >>> restore_stop("<code>x = 1", "length", None, ("</code>",))
    ('<code>x = 1', 'length')
    """
    cut = stop_cut(text, stops)
    if cut is not None:  # the server ignored `stop` or kept the string: cut after the first one
        return text[:cut], "stop"
    if finish_reason == "length":
        return text, "length"
    if finish_reason == "stop":
        if isinstance(stop_reason, str) and stop_reason in stops:
            return text + stop_reason, "stop"
        for stop in stops:
            if _left_open(text, stop):
                return text + stop, "stop"
    return text, "eos"
