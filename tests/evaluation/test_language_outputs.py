"""Language-model outputs: known answers by hand, padding on either side, Captum conventions."""

import copy

import pytest
import torch
from toy_models import tiny_gpt2

from captum_coar import ComponentAblation, attention_heads
from captum_coar.engine import evaluate_masks
from captum_coar.language_outputs import (
    ContinuationLogProb,
    LanguageModelForward,
    LogitDifference,
    TokenLogProb,
)
from captum_coar.outputs import SequenceMargin, resolve_output


@pytest.fixture
def lm():
    model = tiny_gpt2(n_layer=2, n_head=4, n_embd=32, vocab=50)
    rows = [torch.tensor([5, 9, 12, 7, 3, 8]), torch.tensor([11, 4, 6, 2])]
    return model, rows


def padded(rows, side, pad_id=0):
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(length - len(r), length) if side == "left" else slice(0, len(r))
        ids[i, cols] = r
        mask[i, cols] = 1
    return ids, mask


def by_hand(model, row):
    with torch.no_grad():
        return torch.log_softmax(model(row[None]).logits[0], dim=-1)  # (len, vocab)


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_log_prob_and_logit_difference_at_last_real_position(lm, side):
    model, rows = lm
    ids, mask = padded(rows, side)
    forward = LanguageModelForward(model)
    with torch.no_grad():
        out = forward(ids, mask)
    tokens = torch.tensor([3, 17])
    expected = torch.stack([by_hand(model, r)[-1, t] for r, t in zip(rows, tokens)])
    torch.testing.assert_close(TokenLogProb()(out, tokens), expected, rtol=1e-5, atol=1e-5)
    pair = torch.tensor([[3, 4], [17, 1]])
    with torch.no_grad():
        last = [model(r[None]).logits[0, -1] for r in rows]
    expected_diff = torch.stack([lg[a] - lg[b] for lg, (a, b) in zip(last, pair.tolist())])
    torch.testing.assert_close(LogitDifference()(out, pair), expected_diff, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_continuation_log_prob_sums_the_continuation_tokens(lm, side):
    model, rows = lm
    ids, mask = padded(rows, side)
    target = torch.tensor([[7, 3, 8], [6, 2, -100]])  # last 3 and last 2 real tokens
    with torch.no_grad():
        out = LanguageModelForward(model)(ids, mask)
    expected = []
    for r, n in zip(rows, (3, 2)):
        logp = by_hand(model, r)
        expected.append(sum(logp[len(r) - n - 1 + j, r[len(r) - n + j]] for j in range(n)))
    torch.testing.assert_close(ContinuationLogProb()(out, target), torch.stack(expected),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ContinuationLogProb(mean=True)(out, target),
                               torch.stack(expected) / torch.tensor([3.0, 2.0]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must equal the last tokens"):
        ContinuationLogProb()(out, torch.tensor([[7, 3, 9], [6, 2, -100]]))
    with pytest.raises(ValueError, match="left-aligned"):
        ContinuationLogProb()(out, torch.tensor([[-100, 3, 8], [6, 2, -100]]))


def test_sequence_margin_counts_only_real_tokens(lm):
    model, rows = lm
    ids, mask = padded(rows, "right")
    with torch.no_grad():
        out = LanguageModelForward(model)(ids, mask)
        expected = torch.stack([SequenceMargin()(model(r[None]).logits, r[None])[0] for r in rows])
    torch.testing.assert_close(SequenceMargin()(out, ids), expected, rtol=1e-5, atol=1e-5)


def test_classification_output_on_a_language_model_names_the_lm_outputs(lm):
    model, rows = lm
    ids = rows[0][None].repeat(2, 1)
    heads = attention_heads(model)
    with pytest.raises(ValueError, match=r"`output` must be a language-model output.*token_log_prob"
                                         r".*got 'margin'"):
        evaluate_masks(model, heads, ids, torch.ones(1, heads.n_components, dtype=torch.bool),
                       target=5)
    with pytest.raises(ValueError, match="`target` must be one token id per row"):
        resolve_output("token_log_prob")(model(ids), None)


def test_leave_one_out_through_captum_conventions_matches_zeroed_heads(lm):
    """(input_ids, attention_mask) as a tuple of inputs, batched two ways, equals the model
    with one head's columns of c_proj zeroed, row by row."""
    model, rows = lm
    ids, mask = padded(rows, "left")
    heads = attention_heads(model, ["transformer.h.1.attn"])
    tokens = torch.tensor([3, 17])
    forward = LanguageModelForward(model)
    loo = ComponentAblation(forward, heads).attribute((ids, mask), target=tokens,
                                                     output="token_log_prob")
    one_at_a_time = ComponentAblation(forward, heads).attribute(
        (ids, mask), target=tokens, output="token_log_prob", perturbations_per_eval=1)
    torch.testing.assert_close(loo[0], one_at_a_time[0], rtol=1e-5, atol=1e-5)
    for head in range(4):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            edited.transformer.h[1].attn.c_proj.weight[head * 8:(head + 1) * 8] = 0
        for i, (r, t) in enumerate(zip(rows, tokens)):
            full, ablated_value = by_hand(model, r)[-1, t], by_hand(edited, r)[-1, t]
            torch.testing.assert_close(loo[0][i, head], full - ablated_value, rtol=1e-4, atol=1e-5)
