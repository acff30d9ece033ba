"""The LLM teacher: judge, repair, equivalence and solving with any chat model.

`LLMTeacher` implements the `Teacher` protocol (teachers/base.py) on top of a plain chat
function, `ChatFn = (messages, ChatOptions) -> ChatReply`, so it works over any endpoint:
`chat_fn_from_openai(OpenAIModel(...))` for an OpenAI-compatible server, or any Python
function in tests.

    teacher = LLMTeacher(chat_fn_from_openai(client), model="qwen2.5-72b", cache_dir="runs/x/teacher-cache")
    verdict = teacher.judge(task, steps)            # Verdict, validated
    fixed = teacher.repair(task, steps[:k], steps[k], verdict)
    same = teacher.equivalent(task, prefix, a, b)
    solution = teacher.solve(task)                  # steps, author "teacher", executed

How each operation works:
- judge / equivalent ask for one JSON object (prompts.py) at a low temperature and
  validate it: types, required keys, and for a wrong verdict a first-error step in range.
- repair asks for exactly one step in the agent's format, parsed by the agent's own parser;
  generation stops where an agent's turn stops (`</first_thought>`, `</code>`), and is
  capped as one turn of solving is (`solve_max_tokens`).
  The judge's analysis and suggestion have the gold answer withheld before they reach the
  repair prompt, and a step that writes down an answer the student has not yet seen is
  rejected (leak.py explains the guard and its limits).
- A reply that breaks these rules is the model's mistake: the call is retried (default 2
  more times) with a note saying what was wrong, then `TeacherFailure` is raised. Callers
  catch exactly that and mark the task; they never drop it silently. Transport failures
  (the endpoint is down after the client's own retries) are not the model's mistake and
  propagate as they are.
- solve runs the teacher model as the policy of the shared rollout loop
  (`TeacherPolicy`, a ChatModel over the chat function): the teacher's code runs in the
  same sandbox with the same tools and observation format as the student's, and the
  returned steps carry their observations, with author "teacher".

Every chat call goes through the `TeacherCache` when a cache directory is given: a rerun
with the same inputs makes no call. `usage` counts real calls and the tokens they spent;
`cache_hits` counts calls answered from the cache. Numbers stored in results (such as
`Verdict.tokens`) include cached replies, so a replayed run writes the same records.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from score_distill.agent.format import STOP_STRINGS, next_kind, render_step
from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.config import option
from score_distill.models.base import BatchedStream, Generation, GenRequest, SamplingParams
from score_distill.models.openai_compat import OpenAIModel
from score_distill.models.stops import restore_stop
from score_distill.storage import safe_text
from score_distill.teachers.base import TeacherUsage, Verdict
from score_distill.teachers.cache import CachedReply, TeacherCache, call_key
from score_distill.teachers.leak import leaks_answer, withhold_answer
from score_distill.teachers.prompts import (PROMPT_VERSION, REPLY_SCHEMAS, RETRY_NOTE, ReplyError, equivalence_messages,
                                            judge_messages, parse_equivalence_reply, parse_first_error_reply,
                                            parse_repair_reply, render_steps, repair_messages)
from score_distill.tools.config import ToolConfig
from score_distill.types import Step, Task

T = TypeVar("T")


@dataclass(frozen=True)
class ChatOptions:
    """How to sample one chat reply. `stop` strings end generation; the reply may or may
    not include the stop string that was hit (OpenAI-style servers drop it)."""

    temperature: float = 0.0
    max_tokens: int = 1024
    json_mode: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()
    schema: str | None = None  # the reply's JSON Schema, a key of prompts.REPLY_SCHEMAS (with json_mode)


@dataclass(frozen=True)
class ChatReply:
    """A chat reply: its text, the tokens the call cost (prompt + completion, as the
    endpoint reports them) and why generation ended: "stop" (a stop string), "eos" (the
    model ended its message) or "length" (the token cap), as in `Generation`."""

    text: str
    tokens: int = 0
    finish_reason: str = "stop"


ChatFn = Callable[[list[dict[str, str]], ChatOptions], ChatReply]


class TeacherFailure(RuntimeError):
    """The teacher model kept breaking the reply format (or leaking the answer) after every
    retry. Callers mark the task with it instead of dropping the task, and count `tokens`,
    what the failed attempts cost: a teacher that fails still spends."""

    def __init__(self, op: str, task_id: str, problems: list[str], replies: list[str], tokens: int = 0):
        self.op, self.task_id, self.problems, self.replies, self.tokens = op, task_id, problems, replies, tokens
        super().__init__(f"teacher {op} failed on task {task_id} after {len(problems)} attempts: "
                         + "; ".join(problems))


@dataclass
class LLMTeacherConfig:
    judge_temperature: float = option(0.0, "temperature of judge calls (low: a verdict should be stable)")
    repair_temperature: float = option(0.0, "temperature of repair calls")
    equivalence_temperature: float = option(0.0, "temperature of equivalence calls")
    solve_temperature: float = option(0.0, "temperature of the teacher's turns when it solves a task")
    max_tokens: int = option(1024, "token cap for one judge or equivalence reply")
    solve_max_tokens: int = option(512, "token cap for one turn: of the teacher's solving, and a repair (one step)")
    max_turns: int = option(8, "assistant turns per solution, the plan included")
    retries: int = option(2, "extra attempts after an unusable reply; each is told what was wrong")
    max_observation_chars: int = option(2000, "observations shown in prompts are cut to this many characters")
    json_mode: bool = option(True, "ask the endpoint for JSON in judge and equivalence calls: the reply's JSON "
                                   "schema where it takes one (response_format json_schema), else a JSON object")
    concurrency: int = option(8, "chat calls in flight at once when solving several tasks")
    seed: int = option(0, "seed sent with every call (and base seed of solving)")


class LLMTeacher:
    """The Teacher protocol over a chat function (see the module docstring)."""

    def __init__(self, chat: ChatFn, model: str, config: LLMTeacherConfig | None = None,
                 cache_dir: str | Path | None = None, tools: ToolConfig | None = None):
        self.chat = chat
        self.model = model
        self.config = config or LLMTeacherConfig()
        self.cache = TeacherCache(cache_dir) if cache_dir is not None else None
        self.tools = tools or ToolConfig()
        self.usage = TeacherUsage()
        self.cache_hits = 0
        self._lock = threading.Lock()  # usage and counters: solve() calls from several threads

    # -- one chat call, cached ---------------------------------------------------------

    def call(self, op: str, messages: list[dict[str, str]], options: ChatOptions,
             version: str = PROMPT_VERSION) -> ChatReply:
        """One chat call for operation `op`, answered from the cache when it was made before
        under the same prompt `version` (the teacher's prompts' by default)."""
        key = call_key(version, self.model, messages, dataclasses.asdict(options))
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return ChatReply(cached.text, cached.tokens, cached.finish_reason)
        reply = self.chat(messages, options)
        # Cleaned as the cache stores it, so a first run and its replay see the same text.
        reply = dataclasses.replace(reply, text=safe_text(reply.text))
        with self._lock:
            self.usage.add(op, reply.tokens)
        if self.cache is not None:
            self.cache.put(key, CachedReply(reply.text, reply.tokens, reply.finish_reason))
        return reply

    def _ask(self, op: str, task: Task, messages: list[dict[str, str]], options: ChatOptions,
             parse: Callable[[str], T]) -> tuple[T, int]:
        """Call, parse, and on an unusable reply retry in the same conversation with a note
        saying what was wrong. Returns the parsed value and the tokens of all attempts."""
        problems: list[str] = []
        replies: list[str] = []
        conversation = list(messages)
        tokens = 0
        for _ in range(self.config.retries + 1):
            reply = self.call(op, conversation, options)
            tokens += reply.tokens
            try:
                return parse(reply.text), tokens
            except ReplyError as e:
                problem = str(e)
                if reply.finish_reason == "length":
                    problem += " (the reply was cut off at the token limit: keep it shorter)"
                problems.append(problem)
                replies.append(reply.text)
                conversation = conversation + [{"role": "assistant", "content": reply.text},
                                               {"role": "user", "content": RETRY_NOTE.format(problem=problem)}]
        raise TeacherFailure(op, task.id, problems, replies, tokens)

    def _options(self, temperature: float, schema: str | None) -> ChatOptions:
        json_mode = schema is not None and self.config.json_mode
        return ChatOptions(temperature=temperature, max_tokens=self.config.max_tokens, json_mode=json_mode,
                           seed=self.config.seed, schema=schema if json_mode else None)

    # -- the Teacher protocol ----------------------------------------------------------

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        """Judge a finished trajectory; a wrong verdict names a step in range."""
        if not steps:
            raise ValueError(f"task {task.id}: cannot judge a trajectory with no steps")
        messages = judge_messages(task, steps, self.config.max_observation_chars)
        verdict, tokens = self._ask("judge", task, messages, self._options(self.config.judge_temperature, "judge"),
                                    lambda text: parse_first_error_reply(text, len(steps)))
        verdict.tokens = tokens
        return verdict

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        """One replacement for step len(prefix), without observation (the caller runs it in
        the prefix's interpreter state). Never shown the gold answer; see leak.py."""
        analysis = withhold_answer(verdict.analysis, task.answer)
        suggestion = withhold_answer(verdict.suggestion, task.answer)
        messages = repair_messages(task, prefix, mistaken, analysis, suggestion, self.config.max_observation_chars)
        # What the student has seen: the question and the prefix with full observations.
        known = task.question + "\n" + render_steps(prefix, max_observation_chars=1 << 62)
        kind = next_kind(prefix)

        def parse(text: str) -> Step:
            step = parse_repair_reply(text, kind)
            if leaks_answer(render_step(step), task.answer, known):
                raise ReplyError("the step writes down a value the steps so far have not shown; "
                                 "compute it or look it up in code and print it instead")
            return step

        # The reply is one step: it ends where an agent's turn ends and is capped as a turn is
        # (a model that goes on past it spends tokens on text the parser drops).
        options = dataclasses.replace(self._options(self.config.repair_temperature, None), stop=STOP_STRINGS,
                                      max_tokens=self.config.solve_max_tokens)
        step, tokens = self._ask("repair", task, messages, options, parse)
        step.n_tokens = tokens  # what the fix cost, retries included (callers add it up)
        return step

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        """Whether two steps taken right after `prefix` are equivalent (thought, code, result)."""
        messages = equivalence_messages(task, prefix, a, b, self.config.max_observation_chars)
        (same, _reason), _ = self._ask("equivalent", task, messages,
                                       self._options(self.config.equivalence_temperature, "equivalence"),
                                       parse_equivalence_reply)
        return same

    def solve(self, task: Task) -> list[Step]:
        """A full solution by the teacher acting as the agent (steps executed, author "teacher")."""
        return self.solve_many([task])[0]

    def solve_many(self, tasks: list[Task], sample: int = 0) -> list[list[Step]]:
        """Solve several tasks in one batched rollout (chat calls run concurrently)."""
        config = RolloutConfig(max_turns=self.config.max_turns, max_new_tokens=self.config.solve_max_tokens,
                               temperature=self.config.solve_temperature, batch_size=self.config.concurrency,
                               seed=self.config.seed, stage="teacher-solve")
        policy = TeacherPolicy(self)
        episodes = [Episode(t, sample=sample) for t in tasks]
        trajectories = rollout(policy, episodes, self.tools, config)
        # Each step carries what its chat call cost (prompt + completion; cached replies
        # count what they cost when made), so a solution's teacher tokens add up.
        return [[dataclasses.replace(s, author="teacher", n_tokens=cost)
                 for s, cost in zip(traj.steps, policy.costs(ep.key, len(traj.steps)))]
                for ep, traj in zip(episodes, trajectories)]


class TeacherPolicy:
    """A ChatModel whose turns are the teacher's chat calls (cached, counted under "solve"),
    so the shared rollout loop can run the teacher as an agent."""

    def __init__(self, teacher: LLMTeacher):
        self.teacher = teacher
        self.name = teacher.model
        self._spent: dict[str | None, list[int]] = {}  # per trajectory, each turn's call cost, in order
        self._lock = threading.Lock()

    def costs(self, key: str, n: int) -> list[int]:
        """The token cost of each of a trajectory's first `n` turns (0 for a turn not made)."""
        spent = self._spent.get(key, [])
        return spent[:n] + [0] * (n - len(spent))

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        def one(request: GenRequest) -> Generation:
            options = ChatOptions(temperature=params.temperature, max_tokens=params.max_new_tokens,
                                  seed=request.seed, stop=params.stop)
            start = time.perf_counter()
            reply = self.teacher.call("solve", request.messages, options)
            with self._lock:  # a trajectory has one turn in flight at a time: its list stays in order
                self._spent.setdefault(request.cache_key, []).append(reply.tokens)
            # Idempotent: a chat function that already ended the text at its stop string is
            # left alone; one whose server ignored or dropped the stop string is fixed here.
            text, finish = restore_stop(reply.text, reply.finish_reason, None, params.stop)
            return Generation(text=text, finish_reason=finish, time_s=time.perf_counter() - start)

        if len(requests) <= 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(len(requests), self.teacher.config.concurrency)) as pool:
            return list(pool.map(one, requests))

    def open_stream(self, params: SamplingParams, max_rows: int) -> BatchedStream:
        return BatchedStream(self, params, max_rows)

    def release(self, cache_key: str) -> None:
        """Nothing is kept per trajectory."""


def chat_fn_from_openai(model: OpenAIModel) -> ChatFn:
    """A ChatFn over an OpenAI-compatible client: one `complete` call per chat call (the
    client retries timeouts, 429s and 5xx itself and raises `ModelError` when they run out).
    The stop string a server dropped is put back, and tokens are prompt + completion."""

    def chat(messages: list[dict[str, str]], options: ChatOptions) -> ChatReply:
        schema = (options.schema, REPLY_SCHEMAS[options.schema]) if options.schema else None
        done = model.complete(messages, temperature=options.temperature, max_tokens=options.max_tokens,
                              stop=options.stop, seed=options.seed, json_mode=options.json_mode, json_schema=schema)
        text, finish = restore_stop(done.text, done.finish_reason, done.stop_reason, options.stop)
        return ChatReply(text, tokens=done.prompt_tokens + done.completion_tokens, finish_reason=finish)

    return chat
