"""Tests of the config machinery: option help, from_dict, dotted overrides with type
conversion, YAML save/load round trips and command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from score_distill.cli import COMMANDS, main
from score_distill.config import (UsageError, add_arguments, apply_overrides, from_dict, load_yaml, option,
                                  overrides_from_args, save_config, to_dict)
from score_distill.precision import Bf16


@dataclass
class Optim:
    lr: float = option(1e-5, "learning rate")
    steps: int = option(10, "optimiser steps")
    betas: list[float] = option([0.9, 0.99], "Adam betas")


@dataclass
class Demo:
    name: str = option("demo", "run name")
    seed: int | None = option(None, "seed (None: random)")
    model_path: str | None = option(None, "a model directory")
    verbose: bool = option(False, "print more")
    tags: list[str] = option([], "free-form tags")
    extra: dict[str, int] = option({}, "extra counters")
    optim: Optim = field(default_factory=Optim, metadata={"help": "optimiser"})


def test_option_carries_help_and_copies_mutable_defaults() -> None:
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(Demo)}
    assert helps["name"] == "run name" and helps["tags"] == "free-form tags"
    a, b = Demo(), Demo()
    a.tags.append("x")
    a.optim.betas.append(0.5)
    assert b.tags == [] and b.optim.betas == [0.9, 0.99]


def test_from_dict_builds_nested_sections_and_converts_types() -> None:
    cfg = from_dict(Demo, {"name": "r", "seed": "7", "verbose": True, "optim": {"lr": "0.5", "steps": 3.0}})
    assert cfg == Demo(name="r", seed=7, verbose=True, optim=Optim(lr=0.5, steps=3))
    assert isinstance(cfg.optim.steps, int) and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("data,match", [
    ({"nmae": "x"}, "unknown keys"),
    ({"optim": {"lr": 1, "momentum": 0.9}}, "unknown keys"),
    ({"optim": 3}, "expected a mapping"),
    ({"optim": {"steps": 2.5}}, "Optim.steps"),
    ({"optim": {"steps": "many"}}, "cannot read"),
    ({"verbose": 1}, "Demo.verbose"),
    ({"verbose": "perhaps"}, "Demo.verbose"),
])
def test_from_dict_rejects_unknown_keys_and_unreadable_values(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_dict(Demo, data)


def test_apply_overrides_with_dotted_keys_and_types() -> None:
    cfg = apply_overrides(Demo(), ["optim.lr=1e-3", "optim.steps=20", "seed=3", "verbose=true", "tags=[a, b]",
                                   "optim.betas=[0.8, 0.9]", "extra={n: 2}", "name=run-1"])
    assert cfg.optim == Optim(lr=1e-3, steps=20, betas=[0.8, 0.9])
    assert (cfg.seed, cfg.verbose, cfg.tags, cfg.extra, cfg.name) == (3, True, ["a", "b"], {"n": 2}, "run-1")


def test_apply_overrides_does_not_touch_the_original() -> None:
    base = Demo()
    apply_overrides(base, ["optim.lr=0.5", "tags=[x]"])
    assert base == Demo()


@pytest.mark.parametrize("raw", ["none", "None", "null", "~"])
def test_none_for_optional_fields(raw: str) -> None:
    assert apply_overrides(Demo(seed=4), [f"seed={raw}"]).seed is None


def test_override_a_whole_section() -> None:
    cfg = apply_overrides(Demo(), ["optim={lr: 2, steps: 5}"])
    assert cfg.optim == Optim(lr=2.0, steps=5)


@pytest.mark.parametrize("override,match", [
    ("optim.momentum=0.9", "unknown key"),
    ("nmae=x", "unknown key"),
    ("name.first=x", "is not a section"),
    ("optim", "not key=value"),
    ("optim.steps=abc", "cannot read"),
    ("seed=1.5", "cannot read"),
])
def test_bad_overrides_raise(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_overrides(Demo(), [override])


@pytest.mark.parametrize("raw", ["1.10", "no", "null", "0x1F"])
def test_string_fields_keep_the_text_given(raw: str) -> None:
    assert apply_overrides(Demo(), [f"name={raw}"]).name == raw


def test_bool_is_not_an_int() -> None:
    with pytest.raises(ValueError):
        apply_overrides(Demo(), ["optim.steps=true"])


# --- YAML ----------------------------------------------------------------------------------

def test_yaml_save_load_round_trip(tmp_path: Path) -> None:
    cfg = Demo(name="r", seed=None, model_path="runs/m", verbose=True, tags=["a"], extra={"k": 1},
               optim=Optim(lr=3e-4, steps=7, betas=[0.5, 0.6]))
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, path)
    assert load_yaml(Demo, path) == cfg
    assert yaml.safe_load(path.read_text())["optim"]["steps"] == 7  # readable YAML, nested


def test_load_yaml_partial_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text("name: preset\noptim:\n  lr: 0.01\n")
    cfg = load_yaml(Demo, path, overrides=["optim.steps=99"])
    assert cfg == Demo(name="preset", optim=Optim(lr=0.01, steps=99))
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(Demo, tmp_path / "empty.yaml") == Demo()
    (tmp_path / "typo.yaml").write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_yaml(Demo, tmp_path / "typo.yaml")


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
demos = st.builds(
    Demo, name=st.text(max_size=30), seed=st.none() | st.integers(-(2**40), 2**40),
    model_path=st.none() | st.text(max_size=20), verbose=st.booleans(), tags=st.lists(st.text(max_size=8), max_size=3),
    extra=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    optim=st.builds(Optim, lr=finite, steps=st.integers(0, 10**9), betas=st.lists(finite, max_size=3)))


def sampling_section() -> Optim:
    return Optim(lr=0.5, steps=3, betas=[0.1])


@dataclass
class Outer:
    plain: Optim = field(default_factory=Optim, metadata={"help": "the class's defaults"})
    tuned: Optim = field(default_factory=sampling_section, metadata={"help": "its own defaults"})


@dataclass
class Wrapper:
    outer: Outer = field(default_factory=lambda: Outer(tuned=Optim(lr=9.0, steps=9, betas=[9.0])),
                         metadata={"help": "a section whose default sets a nested section"})


def test_a_partial_section_keeps_its_fields_defaults_not_its_classs(tmp_path: Path) -> None:
    """`rl: {rollout: {max_new_tokens: 128}}` once built a bare RolloutConfig (greedy, stage
    eval) instead of the RL rollout's defaults (T=1.0): the study's RL sampled at T=0 and its
    log-prob ratios divided by zero. A section given in part is read over its field's default,
    at every depth."""
    path = tmp_path / "partial.yaml"
    path.write_text("tuned:\n  steps: 4\nplain:\n  steps: 4\n")
    cfg = load_yaml(Outer, path)
    assert cfg.tuned == Optim(lr=0.5, steps=4, betas=[0.1])
    assert cfg.plain == Optim(steps=4)
    assert from_dict(Wrapper, {"outer": {"tuned": {"lr": 1.0}}}).outer.tuned == Optim(lr=1.0, steps=9, betas=[9.0])
    assert apply_overrides(Outer(), ["tuned.lr=2"]).tuned == Optim(lr=2.0, steps=3, betas=[0.1])


def test_the_presets_rl_rollouts_sample() -> None:
    """Every shipped preset, read as the pipeline reads it: RL and MPS sample (the presets
    give only part of those sections), evaluation is greedy."""
    from score_distill.pipeline import RunConfig
    from score_distill.stages.mps import mps_rollout_config
    from score_distill.train.rl import rl_rollout_config

    for preset in sorted(Path("configs").glob("*.yaml")):
        if "rl" not in (yaml.safe_load(preset.read_text()) or {}) and "mps_rollout" not in preset.read_text():
            continue
        cfg = load_yaml(RunConfig, preset)
        assert cfg.rl.rollout.temperature == rl_rollout_config().temperature == 1.0, preset
        assert cfg.rl.rollout.stage == "rl", preset
        assert cfg.mps_rollout.temperature > 0 and cfg.mps_rollout.stage == mps_rollout_config().stage, preset
        assert cfg.eval_rollout.temperature == 0.0, preset


def test_rl_refuses_greedy_rollouts() -> None:
    from score_distill.train.rl import RLOptions

    with pytest.raises(UsageError, match="temperature must be above 0"):
        from_dict(RLOptions, {"rollout": {"temperature": 0.0}})
    with pytest.raises(UsageError, match="temperature must be above 0"):
        apply_overrides(RLOptions(), ["rollout.temperature=0"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(demos)
def test_yaml_round_trip_of_any_values(tmp_path: Path, cfg: Demo) -> None:
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_yaml(Demo, path) == cfg


def test_to_dict_is_plain_data() -> None:
    assert to_dict(Demo())["optim"] == {"lr": 1e-5, "steps": 10, "betas": [0.9, 0.99]}


# --- command line --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    return parser


def test_flags_for_every_scalar_field_with_help() -> None:
    text = _parser().format_help()
    for flag in ("--name", "--seed", "--model-path", "--verbose", "--tags", "--optim.lr", "--optim.steps"):
        assert flag in text
    assert "learning rate" in text and "run name" in text
    assert "--optim " not in text  # a section is not a flag itself


def test_only_given_flags_become_overrides() -> None:
    args = _parser().parse_args(["--optim.lr", "0.25", "--seed", "5", "--model-path", "m/x", "--verbose", "true"])
    overrides = overrides_from_args(args, Demo)
    assert sorted(overrides) == sorted(["optim.lr=0.25", "seed=5", "model_path=m/x", "verbose=true"])
    cfg = apply_overrides(Demo(), overrides)
    assert cfg == Demo(seed=5, model_path="m/x", verbose=True, optim=Optim(lr=0.25))
    assert overrides_from_args(_parser().parse_args([]), Demo) == []


def test_flags_override_a_yaml_preset(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    save_config(Demo(name="preset", optim=Optim(lr=0.1, steps=3)), path)
    args = _parser().parse_args(["--optim.steps", "8"])
    cfg = load_yaml(Demo, path, overrides_from_args(args, Demo))
    assert cfg == Demo(name="preset", optim=Optim(lr=0.1, steps=8))


def test_a_bf16_setting_reads_true_false_or_auto_and_nothing_else():
    @dataclasses.dataclass
    class P:
        bf16: Bf16 = option("auto", "precision")

    assert [apply_overrides(P(), [f"bf16={v}"]).bf16 for v in ("true", "false", "auto")] == [True, False, "auto"]
    assert from_dict(P, {"bf16": False}).bf16 is False and from_dict(P, {"bf16": "auto"}).bf16 == "auto"
    for bad in ("maybe", "null", "1.5"):
        with pytest.raises(UsageError, match="P.bf16: cannot read .* as bool or 'auto'"):
            apply_overrides(P(), [f"bf16={bad}"])
    with pytest.raises(UsageError, match="P.bf16"):
        from_dict(P, {"bf16": 3})


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command: str, capsys) -> None:
    """`--help` lists every flag with its help text (a `%` in one once broke argparse's)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--help" in capsys.readouterr().out


def test_a_diverged_update_is_one_line_and_exit_4(tmp_path: Path, monkeypatch, capsys) -> None:
    import score_distill.cli as cli
    from score_distill.train.diverged import NonFiniteUpdate

    def diverge(command: str) -> None:
        raise NonFiniteUpdate("the update's gradient norm is nan\n(second line)")

    monkeypatch.setattr(cli, "refuse_ranks", diverge)
    assert main(["rl", "--model", "m", "--items", "i", "--out", str(tmp_path)]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("score-distill rl: the update's gradient norm is nan") and "\n" not in err
