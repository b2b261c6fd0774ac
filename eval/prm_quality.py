"""The quality of learned PRMs on the base's eval prompts: AUC and accuracy of their prefix verdicts against the
truth, per split (on/off-support by the base α) and per cluster.

The prefixes measured are every prefix of ``prm_samples`` responses drawn from the base per eval prompt and of y*
itself (so a split where the base never succeeds still holds correct prefixes to tell apart). The verdict is
probability > 0.5 (``learned_prm``'s default threshold).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from barrierlab.loading import load_model_dir
from barrierlab.metrics import fmt_value
from barrierlab.prm import PRM, load_prm, quality_by_group, quality_responses
from rewards import correct_prefixes


def load_prms(named: dict[str, str], base_info: dict) -> dict[str, PRM]:
    """name → PRM, each checked against the base's task (a one-line error otherwise), before anything is written."""
    return {name: load_prm(path, base_info) for name, path in named.items()}


@torch.no_grad()
def measure_prms(prms: dict[str, PRM], base: Path, prompt_set, columns: dict, samples: int, seed: int,
                 batch_size: int) -> dict[str, dict]:
    """name → its label source and cost, and ``quality`` (group → AUC, accuracy, prefixes, correct share) for the
    groups all, onsupport, offsupport and c<cluster>."""
    if not prms:
        return {}
    device = prompt_set.prompts.device
    q0 = load_model_dir(base / "model")[0].to(device).eval()
    k = json.loads((base / "model" / "task.json").read_text())["task"]["k"]
    generator = torch.Generator(device=device).manual_seed(seed)
    rows, responses = quality_responses(q0, prompt_set.prompts, prompt_set.targets, samples, k, generator)
    prompts, truth = prompt_set.prompts[rows], correct_prefixes(responses, prompt_set.targets[rows])
    rows = rows.cpu()
    cluster = torch.tensor(columns["cluster"])[rows]
    split = [columns["split"][i] for i in rows.tolist()]
    groups = {"all": torch.ones(len(split), dtype=torch.bool),
              **{s: torch.tensor([x == s for x in split]) for s in ("onsupport", "offsupport")},
              **{f"c{c}": cluster == c for c in sorted(set(columns["cluster"]))}}
    out = {}
    for name, prm in prms.items():
        probs = torch.cat([prm.prefix_probs(prompts[i : i + batch_size], responses[i : i + batch_size]).cpu()
                           for i in range(0, prompts.shape[0], batch_size)])
        out[name] = {"path": str(prm.path), "kind": prm.kind, "label_source": prm.info["label_source"],
                     "label_queries": prm.info["label_queries"], "clusters": prm.info.get("clusters"),
                     "quality": quality_by_group(probs, truth.cpu(), groups)}
    return out


def prm_table(prms: dict[str, dict]) -> list[str]:
    """The report's table: one row per PRM, AUC / accuracy per split and per cluster."""
    if not prms:
        return []
    groups = list(next(iter(prms.values()))["quality"])
    lines = ["| PRM | labels (verifier queries) | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for name, p in prms.items():
        cells = [f"{fmt_value(p['quality'][g]['auc'])} / {fmt_value(p['quality'][g]['accuracy'])}" for g in groups]
        on = "all clusters" if p["clusters"] is None else f"clusters {p['clusters']}"
        lines.append(f"| {name} | {p['label_source']}, {on} ({p['label_queries']:,}) | " + " | ".join(cells) + " |")
    return lines
