"""A verl custom reward function (`reward.custom_reward_function.path` /
`.name=compute_score`, verl 0.9.1) for rows of our RL parquet that another agent loop ran:
the outcome reward of the response's last `final_answer(...)` whose argument is a literal,
scored as the row's suite scores (1.0 / 0.0). The key-step reward needs our rollout (the
sandbox state of the prefix, the judge): rows run by `ScoreAgentLoop` carry it in
`reward_score`, and verl then never calls this function. Needs no verl to import.

    compute_score("score-distill/math", "...<code>\\nfinal_answer(42)\\n</code>", "42")   # 1.0
"""

from __future__ import annotations

import ast
import re
from typing import Any

FINAL_CALL = re.compile(r"final_answer\((.*?)\)\s*(?:\n|$)", re.S)


def final_answer_literal(text: str) -> str | None:
    """The argument of the last `final_answer(...)` call in `text` when it is a literal
    (a number or a string); None for anything that needs running.

    >>> final_answer_literal("<code>\\nfinal_answer('Ada Lovelace')\\n</code>"), final_answer_literal("final_answer(x + 1)")
    ('Ada Lovelace', None)
    """
    calls = FINAL_CALL.findall(text)
    if not calls:
        return None
    try:
        value = ast.literal_eval(calls[-1].strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None,
                  **kwargs: Any) -> float:
    """1.0 when the response's literal final answer is the gold one under its suite's scorer
    (`data_source` "score-distill/<suite>"), else 0.0.

    >>> compute_score("score-distill/math", "<code>\\nfinal_answer(42.0)\\n</code>", "42")
    1.0
    >>> compute_score("score-distill/math", "no answer", "42")
    0.0
    """
    from score_distill.tasks.scoring import score_answer

    answer = final_answer_literal(solution_str)
    if answer is None:
        return 0.0
    suite = data_source.split("/", 1)[1] if data_source.startswith("score-distill/") else data_source
    question = (extra_info or {}).get("question", "")
    return 1.0 if score_answer(suite, answer, str(ground_truth), question).correct else 0.0
