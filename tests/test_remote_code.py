"""A checkpoint as the stages save it loads like any HF model in an interpreter where barrierlab cannot be imported:
the linear policy through the modeling file and ``auto_map`` it carries (``trust_remote_code=True``), the transformer
with the plain Auto classes; both give the likelihoods barrierlab computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from barrierlab.loading import load_model_dir, save_model_dir
from barrierlab.loglinear import LinearPolicyConfig
from barrierlab.models import LinearPolicyLM, ModelConfig, build_model
from barrierlab.policy import target_stats
from barrierlab.tokenizer import ANSWER0, BIT0, BOS, PAD, SEP, build_tokenizer, prompt_ids, response_ids

K, N, D = 3, 4, 5

# Runs in a fresh interpreter: an import of any project package fails (the editable install would otherwise find
# it from anywhere); then each checkpoint is loaded with the Auto classes alone and scored on the given sequences.
CLEAN_LOAD = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"barrierlab", "rewards", "pretrain", "posttrain", "eval", "experiments", "tests"}:
            raise ModuleNotFoundError(f"{name} is blocked")

sys.meta_path.insert(0, Blocked())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = {}
for case in json.load(sys.stdin):
    model = AutoModelForCausalLM.from_pretrained(case["path"], **case["kwargs"]).eval()
    text_ids = AutoTokenizer.from_pretrained(case["path"], **case["kwargs"])(case["text"])["input_ids"]
    ids, P, (a0, a1) = torch.tensor(case["ids"]), case["prompt_len"], case["answers"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, P - 1 : -1].float()  # the positions that predict the response
    full = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None])  # over the whole vocabulary
    policy = torch.log_softmax(logits[..., a0:a1], -1).gather(-1, ids[:, P:, None] - a0)  # over the answers
    out[case["path"]] = {"class": type(model).__module__, "text_ids": text_ids,
                         "full": full.sum((1, 2)).tolist(), "policy": policy.sum((1, 2)).tolist()}
try:
    import barrierlab
    out["barrierlab"] = "imported"
except ModuleNotFoundError:
    out["barrierlab"] = "blocked"
print(json.dumps(out))
"""


def load_in_clean_interpreter(cases: list[dict], cwd: Path) -> dict:
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-I", "-c", CLEAN_LOAD], input=json.dumps(cases), cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # nothing else on stdout: no prompt to trust remote code


def saved_checkpoint(kind: str, path: Path) -> Path:
    """A model folder as the stages write it (``save_model_dir``: weights, tokenizer, task.json), of a policy with
    random, non-uniform weights."""
    model = build_model(ModelConfig(kind=kind, layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0)
    if kind == "linear":
        with torch.no_grad():
            model.W1.copy_(torch.randn(K, D, generator=torch.Generator().manual_seed(0)))
            model.W2.copy_(torch.randn(K, K + 1, generator=torch.Generator().manual_seed(1)))
    task = json.dumps({"task": {"k": K, "d": D, "N": N}})
    save_model_dir(path, model, build_tokenizer(K), {"task.json": task})
    return path


def test_checkpoints_load_without_barrierlab(tmp_path):
    linear_dir, transformer_dir = saved_checkpoint("linear", tmp_path / "linear"), saved_checkpoint("transformer",
                                                                                                    tmp_path / "llama")
    config = json.loads((linear_dir / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "loglinear.LinearPolicyConfig",
                                  "AutoModelForCausalLM": "loglinear.LinearPolicyLM"}
    assert (linear_dir / "loglinear.py").read_text() == Path(sys.modules[LinearPolicyConfig.__module__].__file__).read_text()
    assert "auto_map" not in json.loads((transformer_dir / "config.json").read_text())
    assert not list(transformer_dir.glob("*.py"))

    generator = torch.Generator().manual_seed(2)
    prompts = prompt_ids(torch.randint(0, 2, (8, D), generator=generator))
    targets = torch.randint(0, K, (8, N), generator=generator)
    ids = torch.cat([prompts, response_ids(targets)], dim=1).tolist()
    cases, expected = [], {}
    for model_dir, kwargs in ((linear_dir, {"trust_remote_code": True}), (transformer_dir, {})):
        model, _, _ = load_model_dir(model_dir)  # barrierlab's own loading, no remote code
        assert isinstance(model, LinearPolicyLM) == (model_dir == linear_dir)
        expected[str(model_dir)] = target_stats(model.eval(), prompts, targets, K)[0]
        cases.append({"path": str(model_dir), "kwargs": kwargs, "ids": ids, "prompt_len": prompts.shape[1],
                      "answers": [ANSWER0, ANSWER0 + K], "text": "[BOS] 0 1 [SEP] a0"})
    got = load_in_clean_interpreter(cases, tmp_path / "clean")

    assert got["barrierlab"] == "blocked"
    assert got[str(linear_dir)]["class"].startswith("transformers_modules.")  # the checkpoint's own file
    assert got[str(transformer_dir)]["class"] == "transformers.models.llama.modeling_llama"
    for path, want in expected.items():  # log q(y*|x): the policy is the softmax over the k answers
        assert got[path]["text_ids"] == [BOS, BIT0, BIT0 + 1, SEP, ANSWER0]
        assert want.std() > 0.1  # non-uniform policies: the comparison means something
        assert torch.allclose(torch.tensor(got[path]["policy"]), want, atol=1e-5), (got[path], want)
    # the linear model's other logits are masked: over the whole vocabulary its likelihoods are the policy's too
    assert torch.allclose(torch.tensor(got[str(linear_dir)]["full"]), expected[str(linear_dir)], atol=1e-5)


def test_linear_config_defaults_are_the_tokenizer_layout():
    config = LinearPolicyConfig(d=3, k=5)
    assert (config.pad_token_id, config.bos_token_id, config.sep_token_id, config.bit0_token_id,
            config.answer0_token_id, config.vocab_size) == (PAD, BOS, SEP, BIT0, ANSWER0, ANSWER0 + 5)
