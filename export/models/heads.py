"""Classification heads on a backbone feature vector f (B, N).

Each head has `forward(f)`, the output that training uses (CCL: kernel values
D; softmax: logits), and `scores(f)`, the output the exported graph ends with
(CCL: D; softmax: probabilities).

CCL (class centroid learning, see shared/DESIGN.md and the CrossFormer-CCL
paper, eqs. 1-4): per class c a matrix W_c (N x M) and a centroid e_c (M);
D_c = exp(-(1/M) ||W_c^T f - e_c||^2 / (2 sigma^2)). W trains by gradient
(Stage I); the centroids are a buffer moved by `update_centroids` (Stage II).

Defaults and why:
- sigma = 0.1: DUQ's length scale (van Amersfoort et al. 2020, same kernel with
  the same 1/M). With centroids of scale 0.2 a sample at its own centroid
  scores 1 and one at a random other centroid about exp(-4) = 0.02.
- W ~ N(0, 0.2^2 / N) instead of the paper's N(0, 0.2^2): f leaves a LayerNorm,
  so ||f||^2 ~ N and the paper's init gives W_c^T f a variance of 0.04 N
  (20 for N = 512); every D underflows to 0 and the loss has no gradient.
  Scaling by 1/N gives W_c^T f the centroids' own scale 0.2 whatever N is, and
  an initial D of about exp(-4) for every class. Centroids: N(0, 0.2^2) as in the paper.
- gamma = 0.05: the pull is an EMA of the class's batch mean with a memory of
  about 20 batches. DUQ keeps a slower EMA (momentum 0.999) but trains far
  longer; 20 batches smooths a batch's few samples of a rare class while
  keeping up with features that move every step.
- beta = 0.005: ten times weaker than the pull, so the data lead. The push
  e_c - mean_{j != c} e_j equals C/(C-1) (e_c - mean_j e_j), so it expands
  all centroids uniformly about their mean, by about 0.5 % a step; from the
  initial spread it reaches the bound in roughly 300 steps.
- push_bound = 0.5: the push stops once the farthest centroid is 0.5 RMS (per
  coordinate, i.e. ||e_c - mean_{j != c} e_j|| / sqrt(M)) from the mean of the
  others, which is 5 sigma: a sample sitting on another class's centroid
  scores exp(-12.5) ~ 4e-6 there, enough separation; beyond it the push would
  only make W grow to follow. The bound is enforced by shrinking the common
  push rate, which keeps the push's geometry (a uniform expansion), stops it
  exactly at the bound, and leaves the mean of the centroids where it was.
"""
from __future__ import annotations

import math

import torch
from torch import nn

INIT_STD = 0.2
DEFAULT_CENTROID_DIM = 128
DEFAULT_SIGMA = 0.1
DEFAULT_GAMMA = 0.05
DEFAULT_BETA = 0.005
DEFAULT_PUSH_BOUND = 0.5
# log(D) for the true class keeps its gradient down to D = 1e-30; log(1 - D)
# for the other classes is cut at D = 1 - 1e-6, the float32 resolution below 1.
_D_MIN = 1e-30
_D_MAX = 1.0 - 1e-6


class CCLHead(nn.Module):
    def __init__(self, num_features: int, num_classes: int,
                 centroid_dim: int = DEFAULT_CENTROID_DIM, sigma: float = DEFAULT_SIGMA) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("CCL needs at least two classes")
        self.num_features = num_features
        self.num_classes = num_classes
        self.centroid_dim = centroid_dim
        self.sigma = sigma
        self.weight = nn.Parameter(
            torch.randn(num_classes, num_features, centroid_dim) * (INIT_STD / math.sqrt(num_features)))
        self.register_buffer("centroids", torch.randn(num_classes, centroid_dim) * INIT_STD)

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """W_c^T f for every class: (B, N) -> (B, C, M)."""
        # One (N, C*M) matrix product rather than an einsum: it exports as a single
        # MatMul, which INT8 quantisers and TensorRT handle.
        w = self.weight.permute(1, 0, 2).reshape(self.num_features, -1)
        return (f @ w).reshape(f.shape[0], self.num_classes, self.centroid_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Kernel values D (B, C) in (0, 1]."""
        sq = (self.embed(f) - self.centroids).pow(2).mean(dim=-1)
        return torch.exp(sq * (-0.5 / self.sigma ** 2))

    def scores(self, f: torch.Tensor) -> torch.Tensor:
        return self(f)

    @torch.no_grad()
    def update_centroids(self, features: torch.Tensor, labels: torch.Tensor,
                         gamma: float = DEFAULT_GAMMA, beta: float = DEFAULT_BETA,
                         push_bound: float = DEFAULT_PUSH_BOUND) -> None:
        """Stage II on one batch: features f (B, N) from the updated network, labels (B,).

        `centroid_sums` then `apply_centroid_update`; data-parallel training sums
        the two statistics over all processes in between.
        """
        sums, counts = self.centroid_sums(features, labels)
        self.apply_centroid_update(sums, counts, gamma, beta, push_bound)

    @torch.no_grad()
    def centroid_sums(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class, the sum of W_c^T f(x) over the batch's samples of class c (C, M) and their count (C,).

        Computed in the centroids' dtype (float32), whatever the features' dtype.
        """
        e = self.centroids
        z = torch.bmm(features.unsqueeze(1).to(e.dtype), self.weight[labels].to(e.dtype)).squeeze(1)
        sums = torch.zeros_like(e).index_add_(0, labels, z)
        counts = torch.bincount(labels, minlength=e.shape[0]).to(e.dtype)
        return sums, counts

    @torch.no_grad()
    def apply_centroid_update(self, sums: torch.Tensor, counts: torch.Tensor,
                              gamma: float = DEFAULT_GAMMA, beta: float = DEFAULT_BETA,
                              push_bound: float = DEFAULT_PUSH_BOUND) -> None:
        """Move the centroids given a batch's `centroid_sums`.

        e_c += gamma * mean_{x of class c}(W_c^T f(x) - e_c) + b * (e_c - mean_{j != c} e_j),
        the pull only for classes present in the batch, all terms from the
        centroids before the update. b = beta unless that would take the
        farthest centroid past `push_bound` (RMS per coordinate) from the mean
        of the others; then b is the rate that lands it on the bound, or 0
        when it is already beyond.
        """
        e = self.centroids
        c, m = e.shape
        counts = counts.to(e.dtype).unsqueeze(1)
        pull = torch.where(counts > 0, sums.to(e.dtype) / counts.clamp_min(1.0) - e, torch.zeros_like(e))

        push = e - (e.sum(dim=0, keepdim=True) - e) / (c - 1)
        spread = push.norm(dim=1).max() / math.sqrt(m)
        # The push scales every e_c - mean(e) by 1 + b C/(C-1), and the spread with it.
        rate = ((push_bound / spread.clamp_min(1e-12) - 1.0) * (c - 1) / c).clamp(0.0, beta)
        e.add_(gamma * pull + rate * push)


def ccl_loss(d: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of D (B, C) against one-hot labels, summed over classes, mean over batch."""
    target = nn.functional.one_hot(labels, d.shape[1]).to(d.dtype)
    log_d = torch.log(d.clamp_min(_D_MIN))
    log_not_d = torch.log1p(-d.clamp_max(_D_MAX))
    return -(target * log_d + (1.0 - target) * log_not_d).sum(dim=1).mean()


def ccl_confidence(d: torch.Tensor) -> torch.Tensor:
    """Paper eq. 4: c = 1 - sum_c D_c + max_c D_c, per row of D (B, C)."""
    return 1.0 - d.sum(dim=1) + d.max(dim=1).values


class SoftmaxHead(nn.Module):
    """Linear baseline: forward gives logits for cross-entropy, scores the probabilities."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)

    def scores(self, f: torch.Tensor) -> torch.Tensor:
        return self(f).softmax(dim=1)
