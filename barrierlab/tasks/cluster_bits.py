"""The default task: a discrete version of the paper's clustered linear-argmax rule.

A prompt is ``d`` bits drawn from a mixture of ``C`` clusters (cluster c has a fixed centre bit-string;
each bit is flipped with probability ``flip_prob``). With ``s = ±1`` bits,
``y*_1 = argmax(W1 s)`` and ``y*_i = argmax(W1 s + W2[:, y*_{i-1}])``. ``W1 (k×d)`` and ``W2 (k×k)``
are drawn once from the task seed; with ``per_cluster_rule`` each cluster has its own pair, so nothing
learnt on one cluster transfers to another.
"""

from __future__ import annotations

import warnings

import torch

from barrierlab.tokenizer import prompt_ids


class ClusterBitsTask:
    continuous = False

    def __init__(
        self, *, d: int, k: int, N: int, num_clusters: int, flip_prob: float, per_cluster_rule: bool, seed: int
    ):
        self.d, self.k, self.N, self.num_clusters = d, k, N, num_clusters
        self.flip_prob = flip_prob
        self.per_cluster_rule = per_cluster_rule
        gen = torch.Generator().manual_seed(seed)
        rules = num_clusters if per_cluster_rule else 1
        # W1 s and W2 columns on the same scale, so each answer depends on both the prompt and y_{i-1}
        self.W1 = torch.randn(rules, k, d, generator=gen, dtype=torch.float64) / d**0.5
        self.W2 = torch.randn(rules, k, k, generator=gen, dtype=torch.float64)
        self.centres = torch.zeros(num_clusters, d, dtype=torch.long)
        self.well_placed = [self._draw_cluster(c, gen) for c in range(num_clusters)]
        if not all(self.well_placed):
            bad = [c for c, ok in enumerate(self.well_placed) if not ok]
            warnings.warn(f"clusters {bad} could not be well placed (too few bits d, symbols k or length N for "
                          f"{num_clusters} clusters): their answers may coincide or vary within the cluster", stacklevel=2)

    def _draw_cluster(self, c: int, gen: torch.Generator, attempts: int = 2000) -> bool:
        """Draw cluster c's centre (and its own rule) until it is well placed, keeping the last try otherwise.

        Well placed: ≥ d/4 bits from earlier centres (clusters are told apart easily), a correct response
        no earlier centre has (an off-support cluster cannot borrow an on-support answer), an answer that is
        not one symbol repeated (the rule's fixed points are its most stable answers), and at most a
        quarter of single-bit flips change that response (a cluster's prompts mostly share their answer,
        which keeps the per-prompt base likelihood close to the cluster's design).
        """
        rule = c if self.per_cluster_rule else 0
        for _ in range(attempts):
            self.centres[c] = torch.randint(0, 2, (self.d,), generator=gen)
            if self.per_cluster_rule:
                self.W1[rule] = torch.randn(self.k, self.d, generator=gen, dtype=torch.float64) / self.d**0.5
                self.W2[rule] = torch.randn(self.k, self.k, generator=gen, dtype=torch.float64)
            centre = self.centres[c : c + 1]
            answer = self.targets(centre, torch.tensor([c]))
            far = bool(((self.centres[:c] != centre).sum(-1) >= max(1, self.d // 4)).all())
            earlier = self.targets(self.centres[:c], torch.arange(c)) if c else answer[:0]
            new_answer = not bool((earlier == answer).all(-1).any())
            neighbours = centre ^ torch.eye(self.d, dtype=torch.long)
            moved = (self.targets(neighbours, torch.full((self.d,), c)) != answer).any(-1).double().mean()
            varied = answer.unique().numel() >= min(2, self.k, self.N)
            if far and new_answer and varied and moved <= 0.25:
                return True
        return False

    @property
    def prompt_len(self) -> int:
        return self.d + 2

    def prompts(self, bits: torch.Tensor) -> torch.Tensor:
        return prompt_ids(bits)

    def tracked_prompts(self) -> None:
        return None

    def state_dict(self) -> dict:
        """The drawn centres and rule, saved beside every checkpoint so later stages rebuild this exact task."""
        return {"centres": self.centres.tolist(), "W1": self.W1.tolist(), "W2": self.W2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.centres = torch.tensor(state["centres"], dtype=torch.long)
        self.W1 = torch.tensor(state["W1"], dtype=torch.float64)
        self.W2 = torch.tensor(state["W2"], dtype=torch.float64)

    def sample_prompts(self, n, generator, clusters=None):
        if clusters is None:
            clusters = torch.randint(0, self.num_clusters, (n,), generator=generator)
        flips = torch.rand(n, self.d, generator=generator) < self.flip_prob
        bits = self.centres[clusters] ^ flips.long()
        return bits, clusters

    def targets(self, bits, cluster):
        rule = cluster if self.per_cluster_rule else torch.zeros_like(cluster)
        s = (2 * bits - 1).to(torch.float64)
        base = torch.einsum("nkd,nd->nk", self.W1[rule], s)
        W2 = self.W2[rule]  # (n, k, k): column j is the bonus after symbol j
        y = torch.empty(bits.shape[0], self.N, dtype=torch.long)
        y[:, 0] = base.argmax(-1)
        for i in range(1, self.N):
            bonus = torch.gather(W2, 2, y[:, i - 1].view(-1, 1, 1).expand(-1, self.k, 1)).squeeze(-1)
            y[:, i] = (base + bonus).argmax(-1)
        return y
