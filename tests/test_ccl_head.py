"""CCL head: kernel, loss, Stage II centroid update, push bound, confidence, training."""
from __future__ import annotations

import math

import pytest
import torch

from export.models.classifier import build_classifier
from export.models.heads import CCLHead, SoftmaxHead, ccl_confidence, ccl_loss

# One thread: with 2 OpenMP threads on a 2-core machine that is also running
# anything else, every parallel region waits for a time slice (30x slower).
torch.set_num_threads(1)


def _head(weights: list, centroids: list, sigma: float = 0.5) -> CCLHead:
    w = torch.tensor(weights, dtype=torch.float32)
    head = CCLHead(num_features=w.shape[1], num_classes=w.shape[0], centroid_dim=w.shape[2], sigma=sigma)
    with torch.no_grad():
        head.weight.copy_(w)
        head.centroids.copy_(torch.tensor(centroids, dtype=torch.float32))
    return head


def test_kernel_matches_hand_computation():
    # W_0 = I, W_1 = swap; f = (1, 2): W_0^T f = (1, 2), W_1^T f = (2, 1).
    head = _head([[[1, 0], [0, 1]], [[0, 1], [1, 0]]], [[1, 1], [0, 0]], sigma=0.5)
    d = head(torch.tensor([[1.0, 2.0]]))
    # class 0: ||(0, 1)||^2 / 2 = 0.5, / (2 * 0.25) = 1; class 1: ||(2, 1)||^2 / 2 = 2.5 -> 5
    torch.testing.assert_close(d, torch.tensor([[math.exp(-1), math.exp(-5)]]))
    assert head.scores(torch.tensor([[1.0, 2.0]])).equal(d)


def test_loss_is_summed_binary_cross_entropy_averaged_over_the_batch():
    d = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.6, 0.5]])
    labels = torch.tensor([0, 2])
    row0 = -(math.log(0.9) + math.log(0.8) + math.log(0.9))
    row1 = -(math.log(0.7) + math.log(0.4) + math.log(0.5))
    torch.testing.assert_close(ccl_loss(d, labels), torch.tensor((row0 + row1) / 2))


def test_loss_stays_finite_at_zero_and_one():
    d = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = ccl_loss(d, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(d.grad).all()


def test_stage_two_update_matches_hand_computation():
    eye = [[1, 0], [0, 1]]
    head = _head([eye, eye, eye], [[0, 0], [2, 0], [0, 2]])
    features = torch.tensor([[1.0, 1.0], [3.0, 1.0], [2.0, 2.0]])
    head.update_centroids(features, torch.tensor([0, 0, 1]), gamma=0.5, beta=0.1, push_bound=100.0)
    # pull: class 0 -> mean (2, 1) - (0, 0); class 1 -> (2, 2) - (2, 0); class 2 absent: none.
    # push: e_c - mean of the others: (-1, -1), (2, -1), (-1, 2).
    expected = torch.tensor([
        [0 + 0.5 * 2 + 0.1 * -1, 0 + 0.5 * 1 + 0.1 * -1],
        [2 + 0.5 * 0 + 0.1 * 2, 0 + 0.5 * 2 + 0.1 * -1],
        [0 + 0.1 * -1, 2 + 0.1 * 2],
    ])
    torch.testing.assert_close(head.centroids, expected)


def test_push_is_cut_to_land_on_the_bound():
    eye = [[1, 0], [0, 1]]
    head = _head([eye, eye, eye], [[0, 0], [2, 0], [0, 2]])
    # Spread before: max ||e_c - mean_others|| / sqrt(M) = sqrt(5 / 2). The full
    # push (beta = 0.5) would scale it by 1 + 0.5 * 3/2; the bound allows 1.2.
    bound = 1.2 * math.sqrt(2.5)
    head.update_centroids(torch.zeros(1, 2), torch.tensor([0]), gamma=0.0, beta=0.5, push_bound=bound)
    mean = torch.tensor([2 / 3, 2 / 3])
    before = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(head.centroids, mean + 1.2 * (before - mean))


def _spread(e: torch.Tensor) -> float:
    c, m = e.shape
    others = (e.sum(0, keepdim=True) - e) / (c - 1)
    return ((e - others).norm(dim=1).max() / math.sqrt(m)).item()


def test_push_bound_holds_after_many_updates():
    torch.manual_seed(0)
    head = CCLHead(16, 5, centroid_dim=8)
    mean_before = head.centroids.mean(0).clone()
    labels = torch.arange(5)
    for _ in range(2000):
        head.update_centroids(torch.randn(5, 16), labels, gamma=0.0, beta=0.05, push_bound=0.5)
    assert _spread(head.centroids) == pytest.approx(0.5, rel=1e-4)
    torch.testing.assert_close(head.centroids.mean(0), mean_before)


def test_centroids_stay_bounded_with_pull_and_run_away_without_the_bound():
    def run(bound: float) -> float:
        torch.manual_seed(0)
        head = CCLHead(16, 5, centroid_dim=8)
        for _ in range(1000):
            labels = torch.randint(0, 5, (8,))
            head.update_centroids(torch.randn(8, 16), labels, gamma=0.05, beta=0.05, push_bound=bound)
        return head.centroids.norm(dim=1).max().item()

    assert run(0.5) < 2.0
    assert run(math.inf) > 1e3


def test_confidence_formula():
    d = torch.tensor([[0.9, 0.1, 0.05], [0.5, 0.5, 0.0], [0.02, 0.01, 0.0]])
    torch.testing.assert_close(ccl_confidence(d), torch.tensor([0.85, 0.5, 0.99]))


def test_softmax_head_scores_are_probabilities_of_its_logits():
    torch.manual_seed(0)
    head = SoftmaxHead(8, 4)
    f = torch.randn(3, 8)
    torch.testing.assert_close(head.scores(f), head(f).softmax(1))
    torch.testing.assert_close(head.scores(f).sum(1), torch.ones(3))


def test_training_with_both_stages_separates_toy_blobs():
    torch.manual_seed(0)
    means = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    labels = torch.randint(0, 3, (256,))
    x = means[labels] + 0.5 * torch.randn(256, 2)
    encoder = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                  torch.nn.LayerNorm(16))
    head = CCLHead(16, 3, centroid_dim=8)
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for step in range(80):
        idx = torch.randint(0, 256, (32,))
        loss = ccl_loss(head(encoder(x[idx])), labels[idx])        # Stage I
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():                                     # Stage II
            head.update_centroids(encoder(x[idx]), labels[idx])
        losses.append(loss.item())
    with torch.no_grad():
        d = head(encoder(x))
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    assert (d.argmax(1) == labels).float().mean() > 0.95


def test_classifier_loss_falls_in_a_few_steps_on_stripes():
    # Horizontal versus vertical stripes, through the whole tiny CrossFormer-CCL.
    torch.manual_seed(0)
    model = build_classifier("crossformer_tiny_test", 32, num_classes=2)
    stripes = (torch.arange(32) // 4 % 2).float() * 2 - 1
    images = torch.stack([stripes[:, None].expand(32, 32), stripes[None, :].expand(32, 32)])
    labels = torch.tensor([0, 1] * 4)
    x = images[labels].unsqueeze(1).expand(-1, 3, -1, -1) + 0.3 * torch.randn(8, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = ccl_loss(model.head(model.features(x)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.head.update_centroids(model.features(x), labels)
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    assert model.head_kind == "ccl" and model(x).shape == (8, 2)


def test_build_classifier_rejects_unknown_heads():
    with pytest.raises(ValueError, match="unknown head"):
        build_classifier("crossformer_tiny_test", 32, 3, head="svm")
    assert build_classifier("crossformer_tiny_test", 32, 3, head="softmax").head_kind == "softmax"
