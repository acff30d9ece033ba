"""The verl adapter inside verl 0.9.1's own classes (run in the verl environment:
`bash scripts/verl_venv.sh`): our agent loop built from configs/verl/agent_loops.yaml as
verl's agent-loop worker builds it, run against a fake token server, its output validated by
verl's AgentLoopOutput; and configs/verl/score_rl.yaml composed against verl's own config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from score_distill.exports import write_verl
from tests.test_rl import secret_item

verl_loop = pytest.importorskip("verl.experimental.agent_loop.agent_loop")  # collected only where verl is

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "verl"


class FakeServerManager:
    """verl's LLMServerClient as a loop calls it: the next scripted turn as a TokenOutput."""

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, list(turns), []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append((request_id, list(prompt_ids), dict(sampling_params)))
        ids = self.tokenizer.encode(self.turns.pop(0), add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed")


def verl_row(tmp_path) -> dict:
    """A row of our parquet as verl's RLHFDataset hands it to `run` (raw_prompt, the columns,
    index and tools_kwargs)."""
    task, item = secret_item()
    write_verl([item], tmp_path / "rl.parquet", {task.id: task})
    [row] = pq.read_table(tmp_path / "rl.parquet").to_pylist()
    return {**row, "raw_prompt": row["prompt"], "index": row["extra_info"]["index"], "tools_kwargs": {}}


def build_loop(tokenizer, server, **overrides):
    """Our loop from the registry file, instantiated the way AgentLoopWorker does it."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    [entry] = OmegaConf.load(CONFIGS / "agent_loops.yaml")
    entry = OmegaConf.merge(entry, overrides)
    cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 2048, "response_length": 2048},
                                                  "model": {}},
                            "data": {"apply_chat_template_kwargs": {}}})
    return hydra.utils.instantiate(entry, trainer_config=DictConfigWrap(cfg), server_manager=server,
                                   tokenizer=tokenizer, processor=None, dataset_cls=RLHFDataset,
                                   data_config=DictConfigWrap(cfg.data), tools=ToolListWrap([]))


def test_our_loop_runs_a_row_inside_verls_classes(tiny_dir, tmp_path):
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    from score_distill.verl_adapter.agent_loop import ScoreAgentLoop

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    server = FakeServerManager(tokenizer, ["<thought>t</thought>\n<code>\ny = secret + 1\nprint(y)\n</code>",
                                           "<thought>t</thought>\n<code>\nfinal_answer(y)\n</code>"])
    loop = build_loop(tokenizer, server, use_key_step=False, sandbox_timeout_s=5.0, search_backend="bm25")
    assert isinstance(loop, ScoreAgentLoop) and loop.settings.max_turns == 8
    out = asyncio.run(loop.run({"temperature": 1.0, "top_p": 1.0, "logprobs": True}, **verl_row(tmp_path)))
    assert isinstance(out, AgentLoopOutput)
    assert out.reward_score == 1.0 and out.num_turns == 2  # the prefix's `secret` was in the sandbox
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    assert 0 in out.response_mask and out.response_mask[0] == 1
    assert {rid for rid, _, _ in server.calls} == {server.calls[0][0]}  # one request id: one conversation
    assert all(params["temperature"] == 1.0 and params["max_tokens"] == 1024 for _, _, params in server.calls)
    assert out.extra_fields["reward_extra_info"]["correct"] == 1.0


def flat_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys |= flat_keys(value, path + ".") if isinstance(value, dict) else {path}
    return keys


def test_score_rl_yaml_composes_against_verls_config_and_sets_only_its_keys():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        ours = compose(config_name="score_rl")
    with initialize_config_dir(config_dir=str(Path(verl_loop.__file__).parents[2] / "trainer" / "config"),
                               version_base=None):
        base = compose(config_name="ppo_trainer")
    mine = OmegaConf.to_container(OmegaConf.load(CONFIGS / "score_rl.yaml"))
    mine.pop("hydra"), mine.pop("defaults")
    known = flat_keys(OmegaConf.to_container(base))
    assert flat_keys(mine) - known == set()  # no key verl would not read
    assert ours.actor_rollout_ref.rollout.n == 16 and ours.data.train_batch_size == 128
    assert ours.actor_rollout_ref.actor.optim.lr == 7e-7 and ours.algorithm.adv_estimator == "grpo"
    assert ours.actor_rollout_ref.rollout.agent.default_agent_loop == "score_distill"
