"""Config errors: each is one line naming file, key and what is allowed; exit code 2; no traceback."""

from __future__ import annotations

import errno
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from barrierlab.config import dump_yaml, load_config, to_dict
from barrierlab.errors import UserError
from eval.config import EvalStageConfig
from experiments.bench import BenchConfig
from experiments.crosscheck import CrosscheckConfig
from experiments.sweep import ExperimentConfig
from posttrain.config import PosttrainConfig
from pretrain.config import PretrainConfig
from tests.conftest import ROOT, TINY, run_stage, wait_for


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def error_of(tmp_path, text: str, cls=PretrainConfig, argv=()) -> str:
    with pytest.raises(UserError) as info:
        load_config(cls, ["--config", write(tmp_path, text), *argv])
    return str(info.value)


def test_defaults_and_yaml_load(tmp_path):
    cfg = load_config(PretrainConfig, ["--config", write(tmp_path, "task: {k: 4, N: 5}\n")])
    assert (cfg.task.k, cfg.task.N, cfg.task.d) == (4, 5, 16)


def test_unknown_key_suggests_the_close_one(tmp_path):
    msg = error_of(tmp_path, "task:\n  flip_porb: 0.1\n")
    assert "cfg.yaml" in msg and "task.flip_porb" in msg and "did you mean 'flip_prob'" in msg


def test_unknown_top_level_section(tmp_path):
    msg = error_of(tmp_path, "trian: {steps: 3}\n")
    assert "key 'trian'" in msg and "did you mean 'train'" in msg


def test_misspelt_bool_is_an_error_not_truthy(tmp_path):
    msg = error_of(tmp_path, "task: {per_cluster_rule: fasle}\n")
    assert "task.per_cluster_rule" in msg and "true or false" in msg and "'fasle'" in msg


def test_posttrain_literal_lists_allowed_values(tmp_path):
    msg = error_of(tmp_path, "algo: {baseline: fasle}\n", cls=PosttrainConfig)
    assert "algo.baseline" in msg and "'group_mean'" in msg and "'rloo'" in msg


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("task: {N: -3}\n", "task.N", "≥ 1"),
        ("task: {k: 1}\n", "task.k", "≥ 2"),
        ("task: {flip_prob: 1.5}\n", "task.flip_prob", "[0, 1]"),
        ("profile: [{coverage: sequence, p: 1.2}]\n", "profile[0].p", "[0, 1]"),
        ("profile: [{coverage: token}]\n", "profile[0].q", "needs q"),
        ("profile: [{coverage: exact, p: 0.5}]\n", "profile[0].p", "only used by coverage 'sequence'"),
        ("task: {N: 60}\nmodel: {context: 64}\n", "task.N", "exceeds model.context"),
        ("train: {steps: 10.5}\n", "train.steps", "an integer"),
        ("data: {corpus_size: 0}\n", "data.corpus_size", "≥ 1"),
        ("data: {eval_prompts_per_cluster: -5}\n", "data.eval_prompts_per_cluster", "≥ 1"),
        ("run: {seed: 100000000000000000000000}\n", "run.seed", "must be in 0 … 2147483647"),
        ("task: {seed: -1}\n", "task.seed", "must be in 0 … 2147483647"),
    ],
)
def test_out_of_range_values(tmp_path, text, key, words):
    msg = error_of(tmp_path, text)
    assert f"key '{key}'" in msg and words in msg and "cfg.yaml" in msg


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("algo: {behaviour: teacher_forcing, baseline: batch_mean}\n", "algo.baseline", "zeroes every advantage: use none"),
        ("optim: {optimizer: adaptive, grad_clip: 1.0}\n", "optim.grad_clip", "must be 0 with optim.optimizer 'adaptive'"),
        ("optim: {optimizer: adaptive}\nalgo: {kl_coef: 0.1}\n", "algo.kl_coef", "must be 0 with optim.optimizer 'adaptive'"),
        ("algo: {scale_std: true, baseline: rloo, group_size: 2}\n", "algo.scale_std", "with baseline 'rloo' it would do nothing"),
    ],
)
def test_posttrain_combinations_that_would_do_nothing_or_be_ignored(tmp_path, text, key, words):
    msg = error_of(tmp_path, text, PosttrainConfig)
    assert f"key '{key}'" in msg and words in msg and "cfg.yaml" in msg


def test_command_line_override_and_its_errors(tmp_path):
    cfg = load_config(PretrainConfig, ["--config", write(tmp_path, "{}"), "--task.k", "5", "--model.kind=linear"])
    assert cfg.task.k == 5 and cfg.model.kind == "linear"
    with pytest.raises(UserError, match="command line: key 'task.k'"):
        load_config(PretrainConfig, ["--config", write(tmp_path, "{}"), "--task.k", "1"])
    with pytest.raises(UserError, match="did you mean 'steps'"):
        load_config(PretrainConfig, ["--train.stesp", "3"])
    with pytest.raises(UserError, match="needs a value"):
        load_config(PretrainConfig, ["--task.k"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(PretrainConfig, ["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(PretrainConfig, ["--config", write(tmp_path, "task: {k: [\n")])


def test_cli_prints_one_line_and_exits_2(tmp_path):
    bad = write(tmp_path, "task: {per_cluster_rule: fasle}\n")
    proc = run_stage("pretrain", "--config", bad, "--run.run_dir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_every_shipped_config_loads():
    from eval.config import EvalStageConfig
    from experiments.bench import BenchConfig
    from experiments.crosscheck import CrosscheckConfig
    from experiments.paper import PaperConfig
    from experiments.prm import PRMExperimentConfig
    from experiments.sweep import ExperimentConfig
    from rewards.train_prm.config import TrainPRMConfig

    kinds = {"pretrain": PretrainConfig, "posttrain": PosttrainConfig, "eval": EvalStageConfig, "scaling": ExperimentConfig,
             "alpha": ExperimentConfig, "crosscheck": CrosscheckConfig, "bench": BenchConfig, "prm": PRMExperimentConfig,
             "train": TrainPRMConfig, "paper": PaperConfig}
    paths = sorted(Path(TINY.parent).rglob("*.yaml"))
    assert len(paths) >= 30
    for path in paths:  # the file name says which config it is: pretrain_1m.yaml, scaling.yaml, train_exact.yaml, ...
        kind = kinds[path.name.split("_")[0].split(".")[0]]
        cfg = load_config(kind, ["--config", str(path)])
        if kind is ExperimentConfig:
            assert cfg.experiment == path.stem, path


def test_floats_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; configs read it as the number everyone means, in files and on the command line
    cfg = load_config(PosttrainConfig, ["--config", write(tmp_path, "optim: {lr: 3e-4}\n"), "--algo.temperature", "1E0"])
    assert cfg.optim.lr == 3e-4 and cfg.algo.temperature == 1.0
    assert load_config(PosttrainConfig, ["--config", str(TINY / "posttrain_outcome.yaml"), "--optim.lr=2e-3"]).optim.lr == 2e-3


@pytest.mark.parametrize("optimizer, lr", [("adam", 1e-3), ("sgd", 1e-3), ("adagrad", 0.1), ("adaptive", 1.0)])
def test_an_unset_learning_rate_is_the_optimisers_default_and_saved_as_such(tmp_path, optimizer, lr):
    # adaptive's lr multiplies the theory's step: left unset, the step is the theory's own
    cfg = load_config(PosttrainConfig, ["--config", write(tmp_path, f"optim: {{optimizer: {optimizer}}}\n")])
    assert cfg.optim.lr == lr and f"lr: {lr}" in dump_yaml(cfg)


@pytest.mark.parametrize("cls, argv, words", [
    (CrosscheckConfig, ["--seeds", "[0, 0]"], "key 'seeds': lists 0 more than once; give each once"),
    (CrosscheckConfig, ["--backends", "[native, trl, native]"], "key 'backends': lists native more than once"),
    (ExperimentConfig, ["--Ns", "[3, 4, 3]"], "key 'Ns': lists 3 more than once"),
    (ExperimentConfig, ["--clusters", "[1, 1]"], "key 'clusters': lists 1 more than once"),
    (BenchConfig, ["--batch_sizes", "[64, 64]"], "key 'batch_sizes': lists 64 more than once"),
])
def test_a_drivers_runs_are_listed_once_each(cls, argv, words):
    # a repeated seed ran the same run twice, and crosscheck counted it as a spread of 0 across seeds
    with pytest.raises(UserError, match=re.escape(words)):
        load_config(cls, list(argv))


@pytest.mark.parametrize("text, argv, words", [
    ("optim: {lr: .inf}\n", [], "key 'optim.lr': expected a finite number, got inf"),
    ("algo: {temperature: .nan}\n", [], "key 'algo.temperature': expected a finite number, got nan"),
    ("", ["--optim.lr", "1e400"], "key 'optim.lr': expected a finite number, got inf"),  # YAML reads it as inf
    ("optim: {max_steps: 1:00}\n", [], "key 'optim.max_steps': expected an integer, got '1:00'"),  # not 60
    ("run: {seed: 010}\n", [], "key 'run.seed': expected an integer, got '010'"),  # not octal 8
])
def test_numbers_are_finite_and_integers_decimal(tmp_path, text, argv, words):
    assert words in error_of(tmp_path, text, PosttrainConfig, argv)


@pytest.mark.parametrize("text, argv, words", [
    ("optim: {lr: 0.01, lr: 0.02}\n", [], "not valid YAML at line 1 (key 'lr' given twice)"),
    ("optim: {lr: 0.01}\n", ["--optim.lr", "--optim.batch_size", "8"], "--optim.lr needs a value"),
    ("optim: {lr: 0.01}\n", ["--algo.temperature"], "--algo.temperature needs a value"),
    # a flag without a value that is no key at all: the unknown key is the mistake to report
    ("optim: {lr: 0.01}\n", ["--verbose"], "command line: --verbose: unknown key; allowed keys: backend, base, run"),
    ("optim: {lr: 0.01}\n", ["--optim.lrr", "--optim.batch_size", "8"], "--optim.lrr: unknown key (did you mean 'lr'?)"),
    ("optim: {lr: 0.01}\n", ["--config"], "--config needs a value"),
    ("optim: {lr: 0.01}\n", ["--config="], "--config needs a value"),
])
def test_duplicate_keys_and_flags_without_values(tmp_path, text, argv, words):
    assert words in error_of(tmp_path, text, PosttrainConfig, argv)


def test_config_that_is_a_folder_or_not_text(tmp_path):
    with pytest.raises(UserError, match="is a folder; pass a YAML file"):
        load_config(PretrainConfig, ["--config", str(TINY)])
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_config(PretrainConfig, ["--config", str(binary)])


def test_a_bad_list_item_from_the_command_line_is_blamed_on_it(tmp_path):
    msg = error_of(tmp_path, "task: {k: 4}\n", argv=["--profile", "[{coverage: foo}]"])
    assert msg.startswith("command line: key 'profile[0].coverage'")


def test_help_lists_every_field_with_its_type_default_and_doc(capsys):
    with pytest.raises(SystemExit) as info:
        load_config(PosttrainConfig, ["--help"], default_config="configs/posttrain_outcome.yaml", prog="posttrain")
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage: python -m posttrain [--config FILE] [--section.key value ...]\n"
                                                    "  --config FILE\n      a YAML config (default "
                                                    "configs/posttrain_outcome.yaml): its values replace the defaults")
    # a section's defaults are its own: post-training's run folder and checkpoint interval, not RunConfig's
    assert "  --run.run_dir (a string; default runs/posttrain)" in out
    assert "  --run.checkpoint_every (an integer; default 100)" in out
    # defaults as a config file or the command line writes them
    assert "  --run.progress (true or false; default true)" in out and "  --optim.lr (a number or null; default null)" in out
    assert "  --optim.grad_clip (a number; default 0.0)\n      Clip the gradient norm to this value" in out
    assert "  --reward.params (a mapping; default {})" in out and "\n[algo] Behaviour policy, advantages" in out


def test_ctrl_c_exits_130_with_the_resume_hint(capsys):
    from barrierlab.errors import cli_entry

    @cli_entry
    def stage(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        stage([])
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted: the last checkpoint is intact; re-run the same command to resume\n"


@pytest.mark.parametrize("error, words", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/r/metrics.jsonl"),
     "error: no space left on the device (runs/r/metrics.jsonl); free some and re-run the same command"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 800000000000 bytes"),
     "error: out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate 800000000000 bytes); "
     "lower the batch size"),
    (MemoryError(), "error: out of memory (MemoryError); lower the batch size"),
])
def test_running_out_of_disk_or_memory_is_one_line(capsys, error, words):
    from barrierlab.errors import cli_entry

    @cli_entry
    def stage(argv):
        raise error

    with pytest.raises(SystemExit) as info:
        stage([])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith(words) and err.count("\n") == 1


def test_other_runtime_errors_keep_their_traceback():
    from barrierlab.errors import cli_entry

    @cli_entry
    def stage(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        stage([])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("stage", ["pretrain", "posttrain", "eval", "experiments.bench"])
def test_ctrl_c_while_a_stage_imports_is_one_line_and_writes_nothing(tmp_path, stage):
    # the stage as a terminal starts it: Ctrl-C not ignored (a suite run as a background job would pass SIG_IGN on)
    proc = subprocess.Popen([sys.executable, "-m", stage, "--out_dir" if "." in stage or stage == "eval" else "--run.run_dir",
                             str(tmp_path / "run")], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # once torch's library is mapped, the stage's package has set its handler and is importing (seconds to go)
    maps = Path(f"/proc/{proc.pid}/maps")
    assert wait_for(lambda: "libtorch" in maps.read_text(), 60, every=0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and err == "interrupted while starting, before anything was written\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cls, text, key, words", [
    (CrosscheckConfig, "posttrain_configs: {outcome: 3}\n", "posttrain_configs.outcome", "expected a string, got 3"),
    (ExperimentConfig, "posttrain_configs: {outcome: [a]}\n", "posttrain_configs.outcome", "expected a string, got ['a']"),
    (EvalStageConfig, "checkpoints: {run: 3}\n", "checkpoints", "expected a mapping (a string → a string) or a list"),
])
def test_typed_mappings_check_their_entries(tmp_path, cls, text, key, words):
    msg = error_of(tmp_path, text, cls)
    assert f"key '{key}'" in msg and words in msg and "cfg.yaml" in msg


def test_weight_decay_without_adamw_is_refused(tmp_path):
    from pretrain.config import load_pretrain_config

    with pytest.raises(UserError, match="train.weight_decay 0.1: only adamw decays weights, and train.optimizer is adagrad"):
        load_pretrain_config(["--config", write(tmp_path, "model: {kind: linear}\ntrain: {weight_decay: 0.1}\n")])


def test_the_dataclass_defaults_are_the_default_base():
    """A config file that sets nothing pretrains configs/pretrain.yaml's base (but for where and how often it saves)."""
    shipped = to_dict(load_config(PretrainConfig, ["--config", str(ROOT / "configs" / "pretrain.yaml")]))
    defaults = to_dict(PretrainConfig())
    shipped["run"].pop("checkpoint_every"), defaults["run"].pop("checkpoint_every")
    assert shipped == defaults


def test_every_configs_folder_has_what_each_make_target_reads():
    makefile = (ROOT / "Makefile").read_text()
    names = set(re.findall(r"\$\(CONFIGS\)/([a-z_]+)\.yaml", makefile))
    names |= {f"posttrain_{reward}" for reward in ("outcome", "process")}  # posttrain_$(REWARD).yaml
    assert {"pretrain", "eval", "scaling", "alpha", "crosscheck", "bench"} <= names
    for folder in ("configs", "configs/gpu", "configs/tiny"):
        assert [n for n in sorted(names) if not (ROOT / folder / f"{n}.yaml").exists()] == [], folder


def test_a_mapping_of_folders_keeps_command_line_values_as_typed(tmp_path):
    from eval.config import EvalStageConfig

    cfg = load_config(EvalStageConfig, ["--config", write(tmp_path, "checkpoints: {}\n"), "--checkpoints.run", "2024",
                                        "--checkpoints.old", "007"])
    assert cfg.checkpoints == {"run": "2024", "old": "007"}  # folder names, not the numbers 2024 and 7


@pytest.mark.parametrize("folder", ["configs", "configs/gpu"])
def test_the_pipelines_two_arms_spend_equal_reward_query_budgets(folder):
    """The barrier is read off at equal reward queries: the outcome and process runs get the same budget."""
    arms = {reward: load_config(PosttrainConfig, ["--config", str(ROOT / folder / f"posttrain_{reward}.yaml")])
            for reward in ("outcome", "process")}
    assert arms["outcome"].reward.name == "outcome" and arms["process"].reward.name == "process"
    budgets = {reward: cfg.optim.max_queries for reward, cfg in arms.items()}
    assert budgets["outcome"] == budgets["process"] is not None
    assert all(cfg.optim.max_steps * cfg.optim.batch_size > budgets[r] for r, cfg in arms.items())  # the budget binds
