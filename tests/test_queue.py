import pytest
import torch

from mocolab.queue import KeyQueue


@pytest.mark.parametrize("K,B", [(10, 3), (7, 7), (12, 5), (5, 8)])
def test_fifo_order_across_wraparound(K, B):
    q = KeyQueue(K, 2)
    seen = []
    for step in range(9):
        k = torch.arange(step * B, (step + 1) * B, dtype=torch.float32)[:, None].repeat(1, 2)
        q.enqueue(k)
        seen += k[:, 0].tolist()
        expect = seen[-K:]  # the newest K keys, oldest first
        got = ordered(q)[:, 0].tolist()
        if len(seen) >= K:
            assert got == expect
        else:  # not yet full: the newest keys are the last len(seen) slots of the ordered view
            assert got[-len(seen):] == seen
    assert int(q.ptr) == (9 * B) % K if B < K else int(q.ptr) == 0


def ordered(q: KeyQueue) -> torch.Tensor:
    """The keys oldest first (K x C): the slot at the pointer is the oldest."""
    return torch.roll(q.keys, -int(q.ptr), dims=0)


def test_every_key_of_the_batch_is_kept_at_wrap():
    q = KeyQueue(10, 1)
    q.enqueue(torch.arange(8.0)[:, None])
    q.enqueue(torch.arange(8.0, 13.0)[:, None])  # wraps: slots 8, 9, 0, 1, 2
    assert sorted(q.keys[:, 0].tolist()) == [3.0, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert int(q.ptr) == 3


def test_queue_is_saved_in_state_dict():
    q = KeyQueue(6, 4)
    q.enqueue(torch.randn(4, 4))
    q2 = KeyQueue(6, 4)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.keys, q.keys) and int(q2.ptr) == 4
