"""Models and datasets on disk: loading what a stage saved (with one-line errors for what is missing or damaged),
saving them atomically, checking a checkpoint's task against its model, a base's fingerprint, and a saved dataset's
columns as tensors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
import yaml

from barrierlab.errors import UserError
from barrierlab.tokenizer import ANSWER0, vocab_size


def first_line(err: Exception) -> str:
    """An exception as a short phrase for a one-line error."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- saving, atomically
def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final``: the old one leaves by a rename, so a kill leaves
    either of the two whole (or, between the renames, none: the stage that wrote it rebuilds it on its rerun),
    never a half-deleted one."""
    if final.exists():
        trash = final.parent / f".old_{final.name}"
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def _staging(final: Path) -> Path:
    """An empty temporary sibling of ``final`` to write into before ``replace_dir``."""
    tmp = final.parent / f".tmp_{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def save_model_dir(final: Path, model, tokenizer, extra_files: dict[str, str] | None = None, state: dict | None = None):
    """``save_pretrained`` into a temporary sibling, then rename: a kill never leaves half a model. ``state``: a
    checkpoint's trainer state (``trainer_state.pt``, written last: its presence marks a complete checkpoint)."""
    final = Path(final)
    tmp = _staging(final)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if state is not None:
        torch.save(state, tmp / "trainer_state.pt")
    replace_dir(tmp, final)


def save_dataset(dataset, final: Path) -> None:
    """``save_to_disk`` into a temporary sibling, then ``replace_dir``."""
    final = Path(final)
    tmp = _staging(final)
    dataset.save_to_disk(str(tmp))
    replace_dir(tmp, final)


# ---------------------------------------------------------------------------------------------- models
BASE_EXPECTED = "a pretraining run folder as base (make pretrain writes runs/base)"


def load_model_dir(path: Path, expected: str = "a run folder, its model/ or one of its checkpoints/step_N"):
    """(model, tokenizer, task.json) of a model folder written by a stage, loaded with the Auto classes; where there is
    none, the one-line error says to pass ``expected`` (or to finish the run whose model/ it is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import barrierlab.models  # noqa: F401  (registers the linear policy with the Auto classes)

    path = Path(path)
    if not (path / "config.json").exists() or not (path / "task.json").exists():
        what = f"no barrierlab checkpoint at '{path}' (config.json and task.json expected)"
        if (path.parent / "config.yaml").exists():  # the model/ of a run that has not finished
            raise UserError(f"{what}; check the path, or finish the run in '{path.parent}' first (rerun the make "
                            "pretrain / make posttrain command that started it: a killed run resumes)")
        raise UserError(f"{what}; pass {expected}")
    try:
        task_info = json.loads((path / "task.json").read_text())
        # no hub kernels: nothing to download them from, and with them every train()/eval() re-kernelizes
        model = AutoModelForCausalLM.from_pretrained(str(path), use_kernels=False)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # a truncated or hand-edited file: transformers, safetensors and json raise many kinds
        raise UserError(f"checkpoint '{path}' cannot be loaded ({first_line(err)}); it is damaged or incomplete: "
                        "rerun the stage that wrote it") from None
    check_task_fits(path, model, task_info)
    return model, tokenizer, task_info


def check_base(path: Path) -> None:
    """Refuse, in one line that names the folder to pass, a post-training run given as ``--base``: it has a model but
    no eval prompts, and its config.yaml records the base it was trained from."""
    try:
        config = yaml.safe_load((Path(path) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return
    if isinstance(config, dict) and "reward" in config:  # a post-training config: a pretraining one has no reward
        recorded = config.get("base")
        where = f"the base it was trained from, --base {recorded}" if isinstance(recorded, str) else BASE_EXPECTED
        raise UserError(f"base: '{path}' is a post-training run, not a pretraining base; pass {where}")


def load_base(path: Path):
    """``load_model_dir`` of the pretraining run ``path`` (``--base``), after ``check_base``."""
    check_base(path)
    return load_model_dir(Path(path) / "model", BASE_EXPECTED)


def check_task_fits(path: Path, model, task_info: dict) -> None:
    """The checkpoint's task.json describes the task its model was built for: its answer symbols are the model's
    vocabulary, and its sequences fit the model's context (an edited or copied task.json fails here, not deep in a
    stage)."""
    from barrierlab.tasks import TASKS

    try:
        k, d, N = (int(task_info["task"][key]) for key in ("k", "d", "N"))
        continuous = TASKS[task_info["task"].get("name", "cluster_bits")].continuous
    except (KeyError, TypeError, ValueError):
        raise UserError(f"checkpoint '{path}': task.json lacks the task's name, k, d and N; rerun the stage that wrote "
                        "it") from None
    context = getattr(model.config, "max_position_embeddings", None)
    prompt_len = 3 if continuous else d + 2
    # a transformer reads a continuous prompt through its projection of dimension d, and only then
    prompt_dim = getattr(model.config, "prompt_dim", None) if context is not None else None
    if model.config.vocab_size != vocab_size(k) or (context is not None and prompt_len + N > context) or \
            (context is not None and prompt_dim != (d if continuous else None)):
        raise UserError(f"checkpoint '{path}': its task.json (k = {k}, d = {d}, N = {N}) is not the task of its model "
                        f"(vocabulary {model.config.vocab_size}, context {context}); restore the task.json written "
                        "with this model")


def model_fingerprint(model_dir: Path) -> str:
    """A hash of a model folder's weights and task.json: which base a post-training run was started from."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "task.json"):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def check_same_base(recorded: str, fingerprint: str, base: str, run_path: Path) -> None:
    """Refuse to resume a post-training run whose checkpoint ``recorded`` another base than the one at ``base`` now
    (the folder was rebuilt or replaced since): its curves would join two experiments."""
    if recorded != fingerprint:
        raise UserError(f"the base '{base}' is not the one {run_path} was trained from (its model or task.json changed "
                        "since); put that base back, or start a new --run.run_dir from this one")


# ---------------------------------------------------------------------------------------------- datasets
def load_dataset_dir(path: Path, columns: list[str]):
    """Load a dataset saved by a stage, or fail with one line saying what is missing."""
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_info.json").exists():
        raise UserError(f"no dataset at '{path}'; run the stage that writes it first (e.g. make pretrain)")
    try:
        dataset = load_from_disk(str(path))
    except Exception as err:  # a truncated Arrow file or hand-edited metadata
        raise UserError(f"dataset '{path}' cannot be loaded ({first_line(err)}); it is damaged: rerun the stage that "
                        "wrote it") from None
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(f"dataset '{path}' lacks column(s) {', '.join(missing)}; rebuild it with the current code")
    if len(dataset) == 0:
        raise UserError(f"dataset '{path}' has no rows; give a dataset with prompts in it (e.g. a base's data/eval_prompts)")
    return dataset


def column_tensor(dataset, name: str) -> torch.Tensor:
    """A column of equal-length lists (or of scalars) of a saved dataset as one tensor, read straight from Arrow
    (converting row by row is some 200 times slower on a large corpus)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.data.column(name).combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.min_max(pc.list_value_length(column)).as_py()
        if lengths["min"] != lengths["max"]:
            raise UserError(f"dataset column '{name}' holds lists of lengths {lengths['min']} to {lengths['max']}; "
                            "every row must have the same length")
        values = torch.from_numpy(column.flatten().to_numpy(zero_copy_only=False).copy()).view(len(column), -1)
    else:
        values = torch.from_numpy(column.to_numpy(zero_copy_only=False).copy())
    return values if values.is_floating_point() else values.long()  # ids index embeddings: int64, as torch.tensor


def prompt_tensors(dataset, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A saved prompt dataset's (prompts, target answer symbols ``(R, N)``) on ``device``: prompt ids ``(R, d + 2)``
    (column ``prompt_ids``), or continuous prompts ``(R, d)`` in float32 (column ``prompt_x``)."""
    if "prompt_x" in dataset.column_names:
        prompts = column_tensor(dataset, "prompt_x").float()
    elif "prompt_ids" in dataset.column_names:
        prompts = column_tensor(dataset, "prompt_ids")
    else:
        raise UserError("a prompt dataset lacks its prompt column (prompt_ids or prompt_x); rebuild it with the current code")
    return prompts.to(device), (column_tensor(dataset, "target_ids") - ANSWER0).to(device)
