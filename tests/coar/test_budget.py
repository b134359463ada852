"""Large default budgets are said before any collecting pass; progress bars appear when a run
is long and someone watches; the options accept None (automatic) for the bar."""

from __future__ import annotations

import itertools

import pytest
import torch
from coar_fixtures import CountingForward
from torch import nn

import captum_coar.coar._budget as budget
from captum_coar.coar import ComponentAblationRegression, StopWhen, tensor_batches
from captum_coar.coar._options import CollectionOptions
from captum_coar.selectors import linear_neurons


def _wide(hidden):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3)).eval()
    return model, linear_neurons(model, ["0"]), torch.randn(3, 4), torch.tensor([0, 1, 2])


def test_a_large_default_is_warned_about_with_its_size_and_time_before_collecting():
    model, components, x, y = _wide(2_001)  # 10 N = 20,010 > 20,000
    counter = CountingForward(model, fail_after=1)  # the one timed pass, then stop
    coar = ComponentAblationRegression(counter, components)
    with pytest.warns(UserWarning, match=r"n_masks defaults to 10 x N = 20,010 masks for"
                      r" N = 2,001 components: 20,010 forward passes per example, about"
                      r" \S+ (s|min|h) for these 3 example\(s\).*n_masks='auto'"):
        with pytest.raises(KeyboardInterrupt):
            coar.attribute(x, target=y)
    assert counter.calls == 2  # the timed pass, then the first pass of the collection: refused
    coar = ComponentAblationRegression(CountingForward(model, fail_after=1), components)
    with pytest.warns(UserWarning, match=r"about \S+ (s|min|h) per 1,000 examples"):
        with pytest.raises(KeyboardInterrupt):
            coar.collect_statistics(tensor_batches(x, y))


def test_no_warning_for_a_chosen_budget_or_a_small_default(recwarn):
    model, components, x, y = _wide(2_001)
    budget.warn_large_default(30_000, 2_001, 30_000, 3, model, (x,))
    budget.warn_large_default(None, 1_000, 10_000, 3, model, (x,))
    assert not [w for w in recwarn if "n_masks defaults" in str(w.message)]


def test_automatic_progress_appears_for_long_runs_where_someone_watches(monkeypatch):
    clock = itertools.chain([0.0, 1.0, 30.0], itertools.repeat(40.0))  # 1 s for 10%: 10 s
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(budget, "interactive", lambda: True)
    shown = []
    monkeypatch.setattr(budget, "progress",
                        lambda total, enabled, desc: shown.append(enabled) or _Bar())
    bar = budget.AutoProgress(100, None, "work", seconds=10.0)
    bar.update(10)
    assert shown == [False]  # projected 10 s: not more than 10 s
    bar.update(10)
    assert shown == [False, True] and bar.bar.count == 20  # starts at the work done
    monkeypatch.setattr(budget, "interactive", lambda: False)
    assert not budget.AutoProgress(100, None, "work").watch  # nobody watches: never
    assert budget.AutoProgress(100, True, "work").bar is not None


def test_interactive_is_off_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert budget.interactive() is False


def test_options_take_none_for_the_automatic_bar():
    assert CollectionOptions().show_progress is None
    with pytest.raises(ValueError, match=r"`show_progress` must be True, False or None"):
        CollectionOptions(show_progress="yes")


class _Bar:
    def __init__(self):
        self.count = 0

    def update(self, n=1):
        self.count += n

    def close(self):
        pass


def test_an_adaptive_attribute_hashes_the_model_once(monkeypatch):
    import captum_coar.coar._fingerprint as fingerprint

    model, components, x, y = _wide(12)
    hashed = []
    real = fingerprint._hash_model
    monkeypatch.setattr(fingerprint, "_hash_model", lambda m: hashed.append(1) or real(m))
    coar = ComponentAblationRegression(model, components)
    coar.attribute(x, target=y, n_masks=30, ablation_fraction=0.3)
    assert len(hashed) == 1
    coar.attribute(x, target=y, n_masks="auto", ablation_fraction=0.3, stop_when=StopWhen(
        criterion="correlation", tol=1e-9, first_masks=12, max_masks=48, n_validation=6))
    rounds = coar.last_result_.settings["adaptive"]["rounds"]
    assert len(rounds) == 3 and len(hashed) == 2  # one more call, one more hash (not 1 + 4)
    assert fingerprint._REUSED is None  # the reuse ends with the call
