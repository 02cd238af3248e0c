import torch
import pytest

from husai_core.errors import HusaiError
from husai_core.task import TaskConfig, answer_leak_positions, make_task, split_indices


def test_default_layout_never_contains_the_answer():
    data = make_task(TaskConfig(p=13))
    assert answer_leak_positions(data) == []
    # the input is a function of (a, b) alone: [a, b, =]
    assert torch.equal(data.tokens[:, 0], data.a) and torch.equal(data.tokens[:, 1], data.b)
    assert (data.tokens[:, 2] == 13).all()
    assert data.answer_pos == 2
    assert torch.equal(data.labels, (data.a + data.b) % 13)


def test_legacy_layout_leaks_the_answer_at_the_read_position():
    data = make_task(TaskConfig(p=13, layout="legacy"))
    assert data.answer_pos == data.tokens.shape[1] - 2
    assert answer_leak_positions(data) == [data.answer_pos]


def test_split_is_deterministic_disjoint_and_sized():
    tr1, te1 = split_indices(113 * 113, 0.3, seed=5)
    tr2, te2 = split_indices(113 * 113, 0.3, seed=5)
    tr3, _ = split_indices(113 * 113, 0.3, seed=6)
    assert torch.equal(tr1, tr2) and torch.equal(te1, te2)
    assert not torch.equal(tr1, tr3)
    assert len(tr1) == round(0.3 * 113 * 113) and len(set(tr1.tolist()) & set(te1.tolist())) == 0
    assert len(tr1) + len(te1) == 113 * 113


def test_split_ignores_global_rng_state():
    torch.manual_seed(0)
    a = split_indices(100, 0.3, 1)[0]
    torch.manual_seed(99)
    assert torch.equal(a, split_indices(100, 0.3, 1)[0])


@pytest.mark.parametrize("kwargs", [{"layout": "bos"}, {"train_frac": 1.5}, {"p": 1}])
def test_bad_task_config(kwargs):
    with pytest.raises(HusaiError):
        TaskConfig(**kwargs)
