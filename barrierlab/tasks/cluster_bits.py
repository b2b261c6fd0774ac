"""The default task: a discrete version of the paper's clustered linear-argmax rule.

A prompt is ``d`` bits drawn from a mixture of ``C`` clusters (cluster c has a fixed centre bit-string;
each bit is flipped with probability ``flip_prob``). With ``s = ±1`` bits,
``y*_1 = argmax(W1 s)`` and ``y*_i = argmax(W1 s + W2[:, y*_{i-1}])``. ``W1 (k×d)`` and ``W2 (k×k)``
are drawn once from the task seed; with ``per_cluster_rule`` each cluster has its own pair, so nothing
learnt on one cluster transfers to another.
"""

from __future__ import annotations

import torch


class ClusterBitsTask:
    def __init__(
        self, *, d: int, k: int, N: int, num_clusters: int, flip_prob: float, per_cluster_rule: bool, seed: int
    ):
        self.d, self.k, self.N, self.num_clusters = d, k, N, num_clusters
        self.flip_prob = flip_prob
        self.per_cluster_rule = per_cluster_rule
        gen = torch.Generator().manual_seed(seed)
        rules = num_clusters if per_cluster_rule else 1
        # Redraw until the clusters are told apart easily (centres ≥ d/4 bits apart) and no two centres
        # share a correct response: otherwise an off-support cluster could borrow an on-support answer.
        for _ in range(1000):
            self.centres = torch.randint(0, 2, (num_clusters, d), generator=gen)
            # W1 s and W2 columns on the same scale, so each answer depends on both the prompt and y_{i-1}
            self.W1 = torch.randn(rules, k, d, generator=gen, dtype=torch.float64) / d**0.5
            self.W2 = torch.randn(rules, k, k, generator=gen, dtype=torch.float64)
            if self._well_separated():
                break

    def _well_separated(self) -> bool:
        C = self.num_clusters
        if C == 1:
            return True
        distance = (self.centres[:, None] != self.centres[None]).sum(-1) + self.d * torch.eye(C, dtype=torch.long)
        answers = self.targets(self.centres, torch.arange(C))
        return bool(distance.min() >= max(1, self.d // 4)) and len({tuple(a) for a in answers.tolist()}) == C

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

    def cluster_of(self, bits):
        hamming = (bits.unsqueeze(1) != self.centres.unsqueeze(0)).sum(-1)
        return hamming.argmin(-1)
