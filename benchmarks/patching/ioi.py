"""Indirect object identification (IOI) on a word-level vocabulary, and a small GPT-2 trained on it.

Contract
--------
Prompts are ``LENGTH`` = 18 tokens of one of ``len(TEMPLATES)`` templates,
``<bos> F1 W A and B W W the F2 PLACE , S V a F3 OBJECT to``, where F1, F2 and F3 are filler
words (F1 adverbs, F2 and F3 adjectives) of random lengths that add up to 3. So every prompt
has the same length and its last token ("to", called END) the same position, but the names
move: the model must find the repeated name by content, not by position. ``S`` repeats one
of the two names (the subject); the answer is the other one (the indirect object, IO). Both
orders occur: ABBA (IO first) and BABA (IO second). Every word, name, place and object is
one token of :data:`VOCAB` (no tokenizer, nothing downloaded).

``make_ioi_data(n, seed=0, split="test", corruption="s2_io") -> IOIData``
    ``input_ids`` (n, LENGTH) clean prompts; ``corrupted_ids`` the same prompts with the S2
    token replaced (symmetric token replacement: same length, positions align):
    ``"s2_io"`` puts the IO name at S2 (the corrupted prompt's answer is the other name, so
    the logit difference changes sign); ``"abc"`` puts a third name C at S2 (no name is
    repeated: the answer is undetermined). ``answer`` / ``distractor`` (n,) are the IO and S
    ids of the clean prompt; ``target`` = ``stack([answer, distractor], 1)`` for
    ``output="logit_difference"``. ``positions`` maps every name of :data:`POSITION_NAMES`
    ("IO", "S1", "S2", "END", ...) to an (n,) index tensor. ``split``: name pairs are split
    once (:func:`is_test_pair`, about 1 in 5 pairs held out); "train" draws only training
    pairs, "test" only held-out pairs.

``train_or_load_ioi(quick=False, retrain=False, cache_dir=None, threads=None, verbose=True)
-> (model, info)``
    A ``GPT2LMHeadModel`` (:data:`RECIPE` model settings: 4 layers, 4 heads, n_embd 128)
    trained with next-token loss on every position of ``prompt + answer`` sequences plus the
    answer's loss once more, on training pairs, until held-out accuracy (answer logit above
    every other name) reaches the recipe's target or the step budget ends. Cached as
    ``cache_dir/ioi-gpt2[-quick].pt`` + ``.json`` with the recipe; a cache whose recipe
    differs is retrained. ``info``: ``test_accuracy``, ``test_logit_difference`` (mean IO - S
    logit on held-out prompts), ``train_seconds``, ``steps``, ``config``, ``cache_path``,
    ``loaded_from_cache``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.models import build_gpt2
from benchmarks.train import CACHE_DIR, _clipped_step, _optimizer, _schedule, _shown_path

NAMES = ("Mary", "John", "Alice", "Bob", "Anna", "Tom", "Kate", "Paul", "Lucy", "Mark",
         "Emma", "Jack", "Sara", "Dan", "Rose", "Sam", "Jane", "Mike", "Lily", "Eric",
         "Amy", "Ben", "Eva", "Carl", "Nora", "Fred", "Ruth", "Joe", "Iris", "Ken")
PLACES = ("store", "park", "school", "office", "garden", "station", "market", "beach",
          "library", "house")
OBJECTS = ("drink", "book", "ring", "bone", "kiss", "card", "gift", "ball", "snack", "pen")
#: (opening word, three words before the place, verb after S2); the rest is fixed.
TEMPLATES = (
    ("When", ("went", "to", "the"), "gave"),
    ("After", ("went", "to", "the"), "handed"),
    ("While", ("were", "at", "the"), "gave"),
    ("Once", ("arrived", "at", "the"), "brought"),
    ("When", ("got", "to", "the"), "passed"),
    ("Since", ("stayed", "at", "the"), "sent"),
    ("Then", ("walked", "to", "the"), "threw"),
    ("After", ("ran", "to", "the"), "showed"),
)
ADVERBS = ("then", "later", "today", "so")
ADJECTIVES = ("big", "old", "new", "small", "nice", "red")
FILLERS = 3
LENGTH = 15 + FILLERS
#: The positions named in ``IOIData.positions`` (per prompt: IO and S1 are the first and the
#: second name in ABBA order, the reverse in BABA; the fillers shift everything but END).
POSITION_NAMES = ("bos", "opening", "IO", "and", "S1", "the", "place", ",", "S2", "verb2", "a",
                  "object", "END")

_WORDS: List[str] = ["<pad>", "<bos>", "and", ",", "a", "to", *ADVERBS, *ADJECTIVES]
for _opening, _middle, _verb in TEMPLATES:
    for _w in (_opening, *_middle, _verb):
        if _w not in _WORDS:
            _WORDS.append(_w)
VOCAB: Tuple[str, ...] = tuple(_WORDS) + PLACES + OBJECTS + NAMES
TOKEN = {w: i for i, w in enumerate(VOCAB)}
NAME_IDS = torch.tensor([TOKEN[n] for n in NAMES])

RECIPE: Dict[str, Any] = dict(
    model={"vocab_size": len(VOCAB), "n_positions": 32, "n_embd": 128, "n_layer": 4,
           "n_head": 4},
    max_steps=4000, batch_size=64, lr=1e-3, weight_decay=0.01, warmup_frac=0.03, seed=0,
    n_test=1000, target_accuracy=0.995, eval_every=250,
)
QUICK = dict(model={"vocab_size": len(VOCAB), "n_positions": 32, "n_embd": 32, "n_layer": 2,
                    "n_head": 4}, max_steps=30, n_test=64, eval_every=15)


def is_test_pair(i: int, j: int) -> bool:
    """Whether the unordered name pair (i, j) (indices into NAMES) is held out of training."""
    a, b = min(i, j), max(i, j)
    return (a * 7 + b * 3) % 5 == 0


def decode(ids: Tensor) -> str:
    """One prompt's token ids as words."""
    return " ".join(VOCAB[int(t)] for t in ids)


@dataclass
class IOIData:
    """Clean and corrupted IOI prompts with answers and named positions (module docstring)."""

    input_ids: Tensor
    corrupted_ids: Tensor
    answer: Tensor
    distractor: Tensor
    positions: Dict[str, Tensor]
    corruption: str

    @property
    def target(self) -> Tensor:
        """``(n, 2)`` = [answer, distractor] ids: the target of ``output="logit_difference"``."""
        return torch.stack([self.answer, self.distractor], dim=1)


def _draw_pair(g: torch.Generator, split: str) -> Tuple[int, int]:
    while True:
        i, j = torch.randperm(len(NAMES), generator=g)[:2].tolist()
        if split == "any" or is_test_pair(i, j) == (split == "test"):
            return i, j


def make_ioi_data(n: int, seed: int = 0, split: str = "test",
                  corruption: str = "s2_io") -> IOIData:
    """``n`` clean/corrupted IOI prompts; see the module docstring."""
    if split not in ("train", "test", "any"):
        raise ValueError(f"split must be 'train', 'test' or 'any'; got {split!r}")
    if corruption not in ("s2_io", "abc"):
        raise ValueError(f"corruption must be 's2_io' or 'abc'; got {corruption!r}")
    g = torch.Generator().manual_seed(seed)

    def pick(words: Sequence[str]) -> str:
        return words[int(torch.randint(len(words), (1,), generator=g))]

    ids = torch.zeros(n, LENGTH, dtype=torch.long)
    answer, distractor = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    at = {name: torch.zeros(n, dtype=torch.long) for name in POSITION_NAMES}
    third = torch.zeros(n, dtype=torch.long)
    for r in range(n):
        io, s = _draw_pair(g, split)
        opening, middle, verb = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=g))]
        cuts = torch.randint(FILLERS + 1, (2,), generator=g).sort().values.tolist()
        f1, f2, f3 = cuts[0], cuts[1] - cuts[0], FILLERS - cuts[1]
        io_first = bool(torch.randint(2, (1,), generator=g))
        first, second = (io, s) if io_first else (s, io)
        words = (["<bos>"] + [pick(ADVERBS) for _ in range(f1)]
                 + [opening, NAMES[first], "and", NAMES[second], *middle]
                 + [pick(ADJECTIVES) for _ in range(f2)] + [pick(PLACES), ",", NAMES[s], verb, "a"]
                 + [pick(ADJECTIVES) for _ in range(f3)] + [pick(OBJECTS), "to"])
        ids[r] = torch.tensor([TOKEN[w] for w in words])
        answer[r], distractor[r] = TOKEN[NAMES[io]], TOKEN[NAMES[s]]
        others = [k for k in range(len(NAMES)) if k not in (io, s)]
        third[r] = TOKEN[NAMES[others[int(torch.randint(len(others), (1,), generator=g))]]]
        shift = f1 + f2
        roles = dict(bos=0, opening=1 + f1, IO=(2 if io_first else 4) + f1, S1=(4 if io_first
                     else 2) + f1, the=7 + f1, place=8 + shift, S2=10 + shift, verb2=11 + shift,
                     a=12 + shift, object=LENGTH - 2, END=LENGTH - 1, **{"and": 3 + f1,
                                                                        ",": 9 + shift})
        for name in POSITION_NAMES:
            at[name][r] = roles[name]
    rows = torch.arange(n)
    corrupted = ids.clone()
    corrupted[rows, at["S2"]] = answer if corruption == "s2_io" else third
    positions = at
    return IOIData(ids, corrupted, answer, distractor, positions, corruption)


@torch.no_grad()
def evaluate_ioi(model: nn.Module, data: IOIData) -> Dict[str, float]:
    """Accuracy (answer above every other name at END) and mean logit difference IO - S."""
    model.eval()
    logits = model(input_ids=data.input_ids).logits[:, -1]
    names = logits[:, NAME_IDS]
    best = NAME_IDS[names.argmax(-1)]
    diff = logits.gather(1, data.target).diff(dim=1).neg().squeeze(1)
    return {"accuracy": float((best == data.answer).float().mean()),
            "logit_difference": float(diff.mean())}


def _loss(model: nn.Module, data: IOIData) -> Tensor:
    seq = torch.cat([data.input_ids, data.answer[:, None]], dim=1)
    logits = model(input_ids=seq[:, :-1]).logits
    every = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
    return every + F.cross_entropy(logits[:, -1], data.answer)


def recipe(quick: bool = False) -> Dict[str, Any]:
    """The training recipe (a fresh dict) of ``train_or_load_ioi``."""
    rec = json.loads(json.dumps(RECIPE))
    if quick:
        rec.update(json.loads(json.dumps(QUICK)))
    return rec


def _train(rec: Dict[str, Any], verbose: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    test = make_ioi_data(rec["n_test"], seed=10_000_019, split="test")
    model = build_gpt2(seed=rec["seed"], **rec["model"])
    opt = _optimizer(model, rec["lr"], rec["weight_decay"])
    total, bs = rec["max_steps"], rec["batch_size"]
    sched = _schedule(opt, total, rec["warmup_frac"])
    t0, step, run_loss, scores = time.time(), 0, 0.0, {"accuracy": 0.0}
    while step < total:
        model.train()
        batch = make_ioi_data(bs, seed=rec["seed"] * 1_000_003 + step, split="train")
        loss = _loss(model, batch)
        _clipped_step(model, opt, sched, loss)
        step += 1
        run_loss += loss.item()
        if step % rec["eval_every"] == 0 or step == total:
            scores = evaluate_ioi(model, test)
            if verbose:
                print(f"[train] ioi: step {step}/{total} loss {run_loss / rec['eval_every']:.4f}"
                      f" held-out acc {scores['accuracy']:.4f} logit diff"
                      f" {scores['logit_difference']:.2f} ({time.time() - t0:.0f}s)", flush=True)
            run_loss = 0.0
            if scores["accuracy"] >= rec["target_accuracy"]:
                break
    model.eval()
    scores = evaluate_ioi(model, test)
    return model, dict(test_accuracy=scores["accuracy"],
                       test_logit_difference=scores["logit_difference"],
                       train_seconds=time.time() - t0, steps=step, n_test=rec["n_test"],
                       dataset="IOI (held-out name pairs)")


def train_or_load_ioi(quick: bool = False, retrain: bool = False,
                      cache_dir: Optional[os.PathLike] = None, threads: Optional[int] = None,
                      verbose: bool = True) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load the cached IOI GPT-2 or train and cache it; see the module docstring."""
    rec = recipe(quick)
    if threads is not None:
        torch.set_num_threads(threads)
    cache = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    stem = cache / ("ioi-gpt2" + ("-quick" if quick else ""))
    pt, side = stem.with_suffix(".pt"), stem.with_suffix(".json")
    if not retrain and pt.is_file() and side.is_file():
        info = json.loads(side.read_text())
        if info.get("config") == rec:
            model = build_gpt2(seed=rec["seed"], **rec["model"])
            model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
            info.update(cache_path=_shown_path(pt), loaded_from_cache=True)
            return model.eval(), info
    model, info = _train(rec, verbose)
    info.update(config=rec, threads=torch.get_num_threads(), torch_version=torch.__version__)
    cache.mkdir(parents=True, exist_ok=True)
    side.unlink(missing_ok=True)  # weights first, description last (atomic renames)
    tmp_pt, tmp_side = pt.with_suffix(".pt.tmp"), side.with_suffix(".json.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp_pt)
    tmp_side.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_pt, pt)
    os.replace(tmp_side, side)
    info.update(cache_path=_shown_path(pt), loaded_from_cache=False)
    return model, info
