"""`ScoreAgentLoop`: verl's agent-loop interface (verl 0.9.1, `verl.experimental.agent_loop.
agent_loop.AgentLoopBase`) around `episode.run_episode`. Imported by verl's agent-loop workers
through configs/verl/agent_loops.yaml; importing it needs verl.

verl builds one loop object per rollout, passing the YAML entry's keys (our `LoopSettings`)
as keyword arguments, and awaits `run(sampling_params, **row)` with the parquet row's
columns. The episode runs in a worker thread (our sandbox and rollout loop are synchronous);
each turn's generation goes back to verl's event loop through `server_manager.generate`, one
request id per rollout so the server's prefix cache keeps the conversation. The teacher that
judges key steps is built once per worker process and shared by its loops (its memo too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from score_distill.train.rewards import KeyStepJudge
from score_distill.verl_adapter.episode import LoopSettings, TokenServer, run_episode


@functools.lru_cache(maxsize=None)
def shared_judge(teacher: str, settings: LoopSettings) -> KeyStepJudge:
    """One judge per teacher and tool settings in this process."""
    from score_distill.teachers.load import load_teacher

    return KeyStepJudge(load_teacher(teacher, tools=settings.tools()))


@register("score_distill")
class ScoreAgentLoop(AgentLoopBase):
    """SCoRe-RL's rollout: from the verified prefix, key-step reward (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = {f.name for f in dataclasses.fields(LoopSettings)}
        mine = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        kwargs.pop("name", None)
        kwargs.pop("tools", None)  # verl's tool list: our tools are our own sandbox and search
        super().__init__(*args, **kwargs)
        self.settings = LoopSettings(**mine)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        loop = asyncio.get_running_loop()
        request_id = uuid.uuid4().hex

        def generate(prompt_ids: list[int], params: dict[str, Any]) -> tuple[list[int], list[float] | None]:
            future = asyncio.run_coroutine_threadsafe(
                self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids,
                                             sampling_params={**sampling_params, **params}), loop)
            out = future.result()
            return list(out.token_ids), list(out.log_probs) if out.log_probs is not None else None

        judge = shared_judge(self.settings.teacher, self.settings) if self.settings.use_key_step else None
        server = TokenServer(self.tokenizer, generate, {})
        result = await asyncio.to_thread(run_episode, kwargs, server, self.tokenizer, self.settings, judge,
                                         int(kwargs.get("index", 0)), int(self.rollout_config.response_length))
        return AgentLoopOutput(
            prompt_ids=result.prompt_ids, response_ids=result.response_ids, response_mask=result.response_mask,
            response_logprobs=result.response_logprobs, reward_score=result.reward, num_turns=result.num_turns,
            metrics={"generate_sequences": result.generate_s, "tool_calls": result.tools_s},
            extra_fields={"reward_extra_info": {"correct": float(result.correct), "finished": float(result.finished),
                                                "key_step_fix": float(result.reward_kind == "chosen")},
                          "turn_scores": [], "tool_rewards": []})
