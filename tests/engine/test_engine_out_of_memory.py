"""Out-of-memory recovery of the batched engine, with an injected out-of-memory error."""

import pytest
import torch
from toy_models import tiny_gpt2

from captum_coar import attention_heads
from captum_coar._memory import ROW_BUDGETS, is_out_of_memory
from captum_coar.engine import evaluate_masks


class FailsAbove:
    """The model, raising ``torch.OutOfMemoryError`` for batches of more than ``limit`` rows."""

    def __init__(self, model, limit):
        self.model, self.limit, self.batches = model, limit, []

    def __call__(self, ids):
        self.batches.append(ids.shape[0])
        if ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(ids).logits[:, -1]


def test_rows_per_pass_halve_on_out_of_memory_and_the_size_is_remembered():
    model = tiny_gpt2()
    heads = attention_heads(model)
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    masks = torch.rand(20, heads.n_components, generator=torch.Generator().manual_seed(1)) > 0.5
    expected = evaluate_masks(lambda x: model(x).logits[:, -1], heads, ids, masks, target=4,
                              output="logit", max_rows=3)  # one gate row per pass
    flaky = FailsAbove(model, limit=13)  # 4 gate rows x 3 examples fit, 5 do not
    got = evaluate_masks(flaky, heads, ids, masks, target=4, output="logit", max_rows=60)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # 20 gate rows x 3 examples = 60 input rows fail, then 10 x 3 and 5 x 3; 2 x 3 fit and
    # the remaining passes keep that size (no computed row is run twice)
    assert flaky.batches == [60, 30, 15] + [6] * 10
    assert ROW_BUDGETS.get(model) == 6
    # a second call starts at the remembered size: no out-of-memory error this time
    flaky.batches.clear()
    again = evaluate_masks(flaky, heads, ids, masks, target=4, output="logit", max_rows=60)
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-6)
    assert max(flaky.batches) <= flaky.limit
    ROW_BUDGETS.forget(model)


def test_one_row_that_does_not_fit_and_other_errors_raise():
    model = tiny_gpt2()
    heads = attention_heads(model)
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    masks = torch.ones(4, heads.n_components, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="out of memory with one gate row of 3 examples"):
        evaluate_masks(FailsAbove(model, limit=2), heads, ids, masks, target=4, output="logit")
    ROW_BUDGETS.forget(model)

    def broken(x):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        evaluate_masks(broken, heads, ids, masks, target=4, output="logit")
    assert ROW_BUDGETS.get(model) is None
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))
