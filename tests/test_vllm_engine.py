"""The vLLM backend's contract, without vLLM or a GPU: a fake engine shaped like vLLM's
offline `LLM` (token-id prompts in, `RequestOutput`-shaped objects out, stop strings, token
caps, an end-of-message token, a prefix cache) plays a scripted policy. Through the one
rollout loop it must give the same episodes and metrics as the scripted model playing the
same policy, and its outputs must map onto our `Generation` exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.config import UsageError
from score_distill.metrics import summarize
from score_distill.models.base import GenRequest, SamplingParams
from score_distill.models.scripted import ScriptedModel
from score_distill.models.stops import stop_cut
from score_distill.models.vllm_engine import VLLMModel, build_llm, generation
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import Task

TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))


@dataclass
class FakeSamplingParams:
    """The fields of vLLM's `SamplingParams` the backend sets."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None


@dataclass
class FakeLLM:
    """`generate(prompts, sampling_params, use_tqdm)` as vLLM's offline engine answers it:
    the policy's reply is emitted token by token until a stop string completes (kept in the
    text), the token cap, or the reply's end (then an end-of-message token, not in the text).
    Prompt tokens seen before (a shared prefix) count as cached, as vLLM's prefix cache does."""

    tokenizer: object
    policy: object
    calls: list = field(default_factory=list)
    seen: list = field(default_factory=list)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            ids = prompt["prompt_token_ids"]
            cached = max((common(ids, s) for s in self.seen), default=0) // 4 * 4  # whole blocks of 4
            self.seen.append(ids)
            reply = self.policy(self.tokenizer.decode(ids))
            target = self.tokenizer.encode(reply, add_special_tokens=False)
            tokens, text, finish, stop_reason = [], "", "length", None
            for tok in target:
                if len(tokens) == sp.max_tokens:
                    break
                tokens.append(tok)
                text = self.tokenizer.decode(tokens)
                cut = stop_cut(text, sp.stop or ())
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    stop_reason = next(s for s in sp.stop if text.endswith(s))
                    break
            else:
                if len(tokens) < sp.max_tokens:
                    tokens.append(self.tokenizer.eos_token_id)
                    finish = "stop"
            logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in tokens]
            done = SimpleNamespace(text=text, token_ids=tokens, logprobs=logprobs, finish_reason=finish,
                                   stop_reason=stop_reason)
            outs.append(SimpleNamespace(outputs=[done], prompt_token_ids=ids, num_cached_tokens=cached))
        return outs


def common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def policy(prompt: str) -> str:
    """Plans, computes, answers; reads only the turn count of the prompt, so the scripted
    model and the fake engine are asked the same thing."""
    turns = prompt.count("<|im_start|>assistant") - 1
    if turns == 0:
        return "<first_thought>add the numbers</first_thought>"
    if turns == 1:
        return "<thought>add</thought>\n<code>\nx = 40 + 2\nprint(x)\n</code>"
    return "<thought>done</thought>\n<code>\nfinal_answer(x)\n</code>"


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from score_distill.models.builtin import builtin_path

    return AutoTokenizer.from_pretrained(builtin_path("tiny"))


def vllm_model(tokenizer, fake_policy=policy) -> tuple[VLLMModel, FakeLLM]:
    llm = FakeLLM(tokenizer, fake_policy)
    return VLLMModel("tiny", llm=llm, sampling_params=FakeSamplingParams, tokenizer=tokenizer), llm


def test_the_rollout_gives_the_same_episodes_and_metrics_through_the_vllm_backend(tokenizer) -> None:
    tasks = [Task(id=f"t{i}", question=f"what is 40 + 2? ({i})", answer="42", suite="math") for i in range(3)]
    render = lambda messages: tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # noqa: E731
    cfg = RolloutConfig(max_turns=5, max_new_tokens=64, batch_size=4)
    episodes = [Episode(t) for t in tasks]
    scripted = rollout(ScriptedModel(lambda messages: policy(render(messages))), episodes, TOOLS, cfg)
    model, llm = vllm_model(tokenizer)
    served = rollout(model, episodes, TOOLS, cfg)

    def shape(traj):
        return [(s.kind, s.thought, s.code, s.observation, s.final_answer) for s in traj.steps], traj.final_answer

    assert [shape(t) for t in served] == [shape(t) for t in scripted]
    scores = [[t.score(tr.final_answer) for t, tr in zip(tasks, trajs)] for trajs in (scripted, served)]
    same = ("accuracy", "ci95", "n", "finish_rate", "mean_turns")
    a, b = (summarize(list(trajs), s) for trajs, s in zip((scripted, served), scores))
    assert {k: a[k] for k in same} == {k: b[k] for k in same} and a["accuracy"] == 1.0
    # Every request went in as our chat template's token ids, seeded per row.
    prompts, params = llm.calls[0]
    assert all(isinstance(p["prompt_token_ids"], list) for p in prompts) and all(sp.seed is not None for sp in params)


def test_outputs_map_onto_generations_exactly(tokenizer) -> None:
    model, llm = vllm_model(tokenizer, lambda prompt: "<thought>t</thought>\n<code>\nprint(1)\n</code> and more")
    messages = [{"role": "user", "content": "q"}]
    stop = SamplingParams(max_new_tokens=64, stop=("</code>",), seed=3)
    [g] = model.generate([GenRequest(messages, seed=11)], stop)
    assert g.text.endswith("</code>") and g.finish_reason == "stop" and "and more" not in g.text
    assert len(g.token_ids) == len(g.logprobs) > 0 and g.logprobs[0] == -0.5
    assert llm.calls[-1][1][0].seed == 11 and llm.calls[-1][1][0].include_stop_str_in_output
    # The same prompt again: vLLM's prefix cache serves what it saw (whole blocks).
    [again] = model.generate([GenRequest(messages)], stop)
    assert again.cached_tokens > 0 and again.prompt_tokens + again.cached_tokens == len(model.encode(messages))
    assert llm.calls[-1][1][0].seed == 3  # the call's seed plus the row index
    [cap] = model.generate([GenRequest(messages)], SamplingParams(max_new_tokens=3))
    assert cap.finish_reason == "length" and len(cap.token_ids) == 3
    eos_model, _ = vllm_model(tokenizer, lambda prompt: "plain words")
    [eos] = eos_model.generate([GenRequest(messages)], SamplingParams(max_new_tokens=64, stop=("</code>",)))
    assert eos.finish_reason == "eos" and eos.token_ids[-1] == tokenizer.eos_token_id and eos.text == "plain words"


def test_an_aborted_request_is_the_servers_fault_not_an_empty_turn() -> None:
    from score_distill.models.base import ModelError

    done = SimpleNamespace(text="", token_ids=[], logprobs=None, finish_reason="abort", stop_reason=None)
    with pytest.raises(ModelError, match="finish_reason 'abort'"):
        generation(SimpleNamespace(outputs=[done], prompt_token_ids=[1, 2]), 0.0)


def test_without_vllm_the_engine_is_one_line_naming_the_extra(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_vllm(name, *a, **kw):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(UsageError, match=r"pip install -e '.\[vllm\]'"):
        build_llm("x", None)


def test_the_vllm_engine_is_chosen_by_name_and_needs_a_gpu(monkeypatch) -> None:
    from score_distill import devices
    from score_distill.models.load import load_model

    monkeypatch.setattr(devices, "_cuda", lambda: (False, 0))
    with pytest.raises(UsageError, match="the vllm engine runs on a CUDA GPU; the device here is cpu"):
        load_model("tiny", engine="vllm", device="auto")
    with pytest.raises(ValueError, match="engine 'vlm'"):
        load_model("tiny", engine="vlm")
    built = []
    monkeypatch.setattr(devices, "_cuda", lambda: (True, 1))
    monkeypatch.setattr("score_distill.models.vllm_engine.build_llm",
                        lambda path, config: built.append(config) or (object(), FakeSamplingParams))
    model = load_model("tiny", engine="vllm", device="cuda", dtype="bfloat16")
    assert isinstance(model, VLLMModel) and built[0].dtype == "bfloat16" and built[0].enable_prefix_caching
