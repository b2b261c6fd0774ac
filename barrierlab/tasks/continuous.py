"""The authors' own tasks: continuous prompts ``x ∈ R^d`` and one hidden linear-argmax rule for every input.

``y*_1 = argmax(W1* x)`` and ``y*_i = argmax(W1* x + W2*[:, y*_{i-1}])`` with ``W1* (k×d)`` and ``W2* (k×k)`` of
N(0, 1) entries, drawn once from the task seed (no 1/√d scaling: ‖x‖ = √d, as in the authors' code). They are the
authors' draw itself: their code seeds torch with its seed and draws W1* then W2* first, in float32, so task seed s
is their seed s's rule (kept in float64 after the draw, for exact argmaxes).
- ``gaussian_mixture``: M components (one per profile entry) whose means are the basis vectors ``e_{j mod d}``;
  ``x = √d (e_j + ε) / ‖e_j + ε‖`` with isotropic noise ``ε ~ N(0, σ² I)`` clipped to norm ≤ σ. The M components'
  noise-free inputs ``√d e_j`` are the centres that Figure 1 tracks.
- ``rademacher``: ``x`` uniform in {±1}^d (one component).
The model-facing prompt is ``x`` itself, as float32 ``(n, d)``: the linear model reads it as its features, the
transformer through a learned projection (docs/tasks.md)."""

from __future__ import annotations

import torch


class ContinuousRuleTask:
    """The shared hidden rule; subclasses say how ``x`` is drawn."""

    continuous = True
    prompt_len = 3  # the transformer's prompt positions: [BOS] [X] [SEP]

    def __init__(self, *, d: int, k: int, N: int, num_clusters: int, seed: int):
        self.d, self.k, self.N, self.num_clusters = d, k, N, num_clusters
        gen = torch.Generator().manual_seed(seed)
        self.W1 = torch.randn(k, d, generator=gen).double()
        self.W2 = torch.randn(k, k, generator=gen).double()

    def state_dict(self) -> dict:
        return {"W1": self.W1.tolist(), "W2": self.W2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.W1 = torch.tensor(state["W1"], dtype=torch.float64)
        self.W2 = torch.tensor(state["W2"], dtype=torch.float64)

    def prompts(self, x: torch.Tensor) -> torch.Tensor:
        """The model-facing prompt tensor of inputs ``x``: x itself, in float32."""
        return x.float()

    def targets(self, x: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        base = x.double() @ self.W1.T  # (n, k), once for all positions
        # after[b, j]: the symbol that follows symbol j on input b, argmax_y(W1 x + W2[y, j]), tabulated once (max over
        # the middle dimension vectorises; its indices are argmax's, the first maximum)
        after = (base.unsqueeze(2) + self.W2).max(1).indices
        return follow(after, base.max(-1).indices, self.N)


def follow(after: torch.Tensor, first: torch.Tensor, N: int) -> torch.Tensor:
    """``(n, N)`` sequences that start at ``first`` and step by the successor table ``after`` ``(n, k)``, by doubling:
    positions ``[m, 2m)`` are the successor's m-th power applied to positions ``[0, m)``, so 2 log2 N gathers."""
    y = torch.empty(first.shape[0], N, dtype=torch.long, device=after.device)
    y[:, 0] = first
    power, m = after, 1
    while m < N:
        n = min(m, N - m)
        torch.gather(power, 1, y[:, :n], out=y[:, m : m + n])
        if m + n < N:
            power = power.gather(1, power)
        m += n
    return y


def clip_norm(noise: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row scaled down to norm ≤ ``max_norm`` (rows already inside are kept)."""
    norms = noise.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return noise * (max_norm / norms).clamp(max=1.0)


def to_sqrt_d(x: torch.Tensor) -> torch.Tensor:
    """Each row rescaled to norm √d."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * x.shape[1] ** 0.5


class GaussianMixtureTask(ContinuousRuleTask):
    def __init__(self, *, d: int, k: int, N: int, num_clusters: int, sigma: float, seed: int):
        super().__init__(d=d, k=k, N=N, num_clusters=num_clusters, seed=seed)
        self.sigma = sigma
        self.means = torch.zeros(num_clusters, d)
        self.means[torch.arange(num_clusters), torch.arange(num_clusters) % d] = 1.0

    def sample_prompts(self, n, generator, clusters=None):
        if clusters is None:
            clusters = torch.randint(0, self.num_clusters, (n,), generator=generator)
        noise = clip_norm(torch.randn(n, self.d, generator=generator) * self.sigma, self.sigma)
        return to_sqrt_d(self.means[clusters] + noise), clusters

    def tracked_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The M noise-free inputs ``√d e_j`` and their components: the prompts Figure 1 tracks."""
        return to_sqrt_d(self.means.clone()), torch.arange(self.num_clusters)


class RademacherTask(ContinuousRuleTask):
    def sample_prompts(self, n, generator, clusters=None):
        x = 2.0 * torch.randint(0, 2, (n, self.d), generator=generator).float() - 1.0
        return x, torch.zeros(n, dtype=torch.long)

    def tracked_prompts(self) -> None:
        return None
