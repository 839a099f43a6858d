import torch
import torch.nn.functional as F

from mocolab.eval.knn import knn_accuracy, knn_predict


def test_knn_is_perfect_on_separable_clusters():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(5, 16), dim=1) * 5
    labels = torch.arange(5).repeat_interleave(40)
    bank = F.normalize(centers[labels] + 0.3 * torch.randn(200, 16), dim=1)
    test_y = torch.arange(5).repeat_interleave(10)
    test = F.normalize(centers[test_y] + 0.3 * torch.randn(50, 16), dim=1)
    assert knn_accuracy(bank, labels, test, test_y, 5, k=20, t=0.1) == 100.0


def test_knn_weights_votes_by_similarity():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    query = F.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    # two class-1 neighbours are far, one class-0 neighbour is close: exp(s/t) weighting wins
    assert knn_predict(query, bank, labels, 2, k=3, t=0.1).item() == 0
    # with a huge temperature, votes are nearly equal, and the majority wins
    assert knn_predict(query, bank, labels, 2, k=3, t=100.0).item() == 1
