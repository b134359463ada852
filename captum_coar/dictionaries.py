"""Dictionary features as components: the latents of a sparse autoencoder or a transcoder.

Contract
--------
A :class:`Dictionary` wraps an encoder and a decoder trained on one site of a model: a
sparse autoencoder (SAE) reads the site's activation ``a`` and reconstructs it; a transcoder
(``transcoder=True``) reads the module's first input and predicts its output. They may be
``nn.Module`` objects, any pair of callables (with ``parameters=`` naming the tensors they
use), or one object with ``encode`` and ``decode`` methods (an SAELens SAE, a
:class:`~captum_coar.sparse_autoencoder.SparseAutoencoder`).
:func:`dictionary_latents` declares every latent as one component of kind ``"latent"``,
labelled by site and index (``transformer.h.1.mlp/latent[17]``); combine with other
components by ``+``.

Gating. At the site the hooks compute the latents ``z = encode(x)`` (``x = a`` for an SAE, the
module's input for a transcoder), gate them like any activation, ``z_g = r_z + g * (z -
r_z)``, and return ``a + decode(z_g) - decode(z)``: the reconstruction error ``a -
decode(z)`` is kept, so with every gate at 1 (``z_g`` is ``z`` bit for bit) the model is
exactly the original model, and ablating latent ``i`` removes exactly its decoded
contribution (``(z_i - r_i) * W_dec[i]`` for a linear decoder). Every gate method sees the
latent vector ``z`` as the group's activation, so the replacement ``r_z`` is, by strategy:

- ``"weights"`` and ``"zero"``: 0 (a latent whose decoder row is zeroed contributes nothing);
- :class:`~captum_coar.ablation.ConstantAblation` ``(c)``: ``c``;
- :class:`~captum_coar.ablation.ResampleAblation` and ``baselines=``
  (:class:`~captum_coar.ablation.PatchAblation`): the latents of the reference / paired
  baseline example, i.e. ``encode`` of its activation (of its input for a transcoder);
- :class:`~captum_coar.ablation.MeanAblation`: the mean of ``z`` over the reference inputs
  (the latent's mean activation; ``encode(mean a)`` would be a value the latent does not
  take on average, the encoder being nonlinear).

Methods. COAR, leave-one-out, AtP, AtP* (``qk_fix="all"`` fixes latents too), gate IG,
``baselines=``, :class:`~captum_coar.interop.GatedForward`, the evaluation functions and the
hook edits (:func:`~captum_coar.edits.ablate_persistently`) all work over latents. Refused,
with a message naming these: conductance, internal influence and gradient x parameter (they
sum the site's features per unit; a latent is no slice of them) and weight edits
(:func:`~captum_coar.edits.zero_components`, ``apply_edit`` with ``"weights"`` / ``"zero"``,
``edited_state_dict``: a latent is no slice of any weight of the model).

Identity. :class:`Dictionary` is a frozen dataclass whose fields -- ``name``, ``kind``
(``"sae"`` / ``"transcoder"``), ``n_latents`` and ``parameters`` (a hash of the values of
every parameter and buffer it uses and of its modules' reprs) -- enter :attr:`ComponentSet.fingerprint` and so COAR's
identities; the encoder and decoder ride along outside the fields, so ``+``, ``subset`` and
:func:`~captum_coar.positions.at_positions` keep them. The dictionary must not change after it
is declared: a hook that finds one of its tensors written in place since (an optimiser step,
``load_state_dict``) or replaced raises; declare it again. The model is never modified; the
dictionary is called as it is (``eval()`` it, on the model's device). Activations are cast to
the dictionary's dtype and the change back to the site's dtype. The site's features must lie
on its last axis.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .components import ComponentGroup, ComponentSet

__all__ = ["Dictionary", "dictionary_latents"]

KIND = "latent"


@dataclass(frozen=True, init=False)
class Dictionary:
    """An SAE or a transcoder for one site; each latent becomes a component.

    Args:
        encoder: ``x -> z`` (``(..., d_in) -> (..., n_latents)``): a module or callable, or an
            object with ``encode`` and ``decode`` methods (then leave ``decoder`` out).
        decoder: ``z -> reconstruction`` (``(..., n_latents) -> (..., d_out)``).
        n_latents: the number of latents (read from the decoder's ``in_features``, the
            owner's ``n_latents`` / ``d_sae`` or its ``W_dec`` when not given).
        transcoder: encode the module's first input and add to its output (site
            ``"output"``), instead of encoding the site's activation itself.
        name: a name for labels, messages and fingerprints (default: the owner's type name).
        parameters: the tensors (or modules) plain callables use; modules, and the modules
            bound methods belong to, are found by themselves.

    Raises:
        TypeError: an encoder or decoder that is not callable.
        ValueError: no tensor identifies the dictionary, or ``n_latents`` cannot be read.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from captum_coar import Dictionary, SparseAutoencoder, ablated, dictionary_latents
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
        >>> sae = SparseAutoencoder(d_in=6, n_latents=10).eval()
        >>> latents = dictionary_latents(model, {"1": Dictionary(sae)})
        >>> x = torch.randn(3, 4)
        >>> with ablated(latents, torch.ones(10)):  # every latent kept: exactly the model
        ...     kept = model(x)
        >>> torch.allclose(kept, model(x))
        True
    """

    name: str
    kind: str
    n_latents: int
    parameters: str
    if TYPE_CHECKING:  # set in __init__ / _snapshot, outside the dataclass fields
        _encode: Callable[[Tensor], Tensor]
        _decode: Callable[[Tensor], Tensor]
        _owners: List[nn.Module]
        _given: List[Any]
        _state: Tuple[Tuple[Tensor, int], ...]
        _dtype: torch.dtype
        _device: torch.device

    def __init__(self, encoder: Any, decoder: Any = None, *, n_latents: Optional[int] = None,
                 transcoder: bool = False, name: Optional[str] = None,
                 parameters: Optional[Sequence[Any]] = None) -> None:
        if decoder is None:
            if not (callable(getattr(encoder, "encode", None))
                    and callable(getattr(encoder, "decode", None))):
                raise TypeError(
                    f"Dictionary got one object ({type(encoder).__name__}) without encode and"
                    " decode methods; give Dictionary(encoder, decoder), or an object with"
                    " encode() and decode() (an SAE module)")
            encoder, decoder = encoder.encode, encoder.decode
        for role, value in (("encoder", encoder), ("decoder", decoder)):
            if not callable(value):
                raise TypeError(f"Dictionary: the {role} must be callable (a module or a"
                                f" function), got {type(value).__name__}")
        owners = _owners(encoder, decoder, parameters)
        tensors = _tensors(owners, parameters)
        default = type(owners[0]).__name__ if owners else getattr(encoder, "__qualname__", "")
        label = str(name or default or "dictionary")
        if not tensors:
            raise ValueError(
                f"Dictionary {label!r}: its encoder and decoder are plain callables and no tensor"
                " identifies them, so fingerprints could not tell two dictionaries apart; pass"
                " parameters=[W_enc, b_enc, W_dec, b_dec] (the tensors they use) or modules")
        object.__setattr__(self, "name", label)
        object.__setattr__(self, "kind", "transcoder" if transcoder else "sae")
        object.__setattr__(self, "n_latents", _latent_count(n_latents, encoder, decoder, owners,
                                                            label))
        object.__setattr__(self, "_encode", encoder)
        object.__setattr__(self, "_decode", decoder)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_given", list(parameters or []))
        self._snapshot()

    def _snapshot(self) -> None:
        """Hash the tensors now and remember them (identity and version) to detect changes."""
        from .coar._fingerprint import tensor_fingerprint

        tensors = _tensors(self._owners, self._given)
        first = next((t for t in tensors if t.is_floating_point()), tensors[0])
        # module reprs carry settings that are no tensor (an SAE's activation function, its k)
        object.__setattr__(self, "parameters", tensor_fingerprint(
            [tensors, [repr(owner) for owner in self._owners]]))
        object.__setattr__(self, "_state", _state(tensors))
        object.__setattr__(self, "_dtype", first.dtype)
        object.__setattr__(self, "_device", first.device)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Dictionary":
        """A copy over copied tensors (hashed again: the copy describes its own tensors)."""
        twin = object.__new__(type(self))
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            object.__setattr__(twin, key, copy.deepcopy(value, memo))
        twin._snapshot()
        return twin

    # ------------------------------------------------------------------ use
    def encode(self, x: Tensor) -> Tensor:
        """The latents ``z`` of ``x`` (cast to the dictionary's dtype), checked."""
        if x.device != self._device:
            raise ValueError(
                f"dictionary {self.name!r} is on {self._device} but the activation is on"
                f" {x.device}; move the dictionary to the model's device")
        if x.is_floating_point() and x.dtype != self._dtype:
            x = x.to(self._dtype)
        z = self._encode(x)
        if not isinstance(z, Tensor) or z.shape[:-1] != x.shape[:-1] or (
                z.shape[-1] != self.n_latents):
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"dictionary {self.name!r}: the encoder turned {tuple(x.shape)} into {shape};"
                f" expected {tuple(x.shape[:-1]) + (self.n_latents,)} (n_latents on the last"
                " axis, the features of the site on the last axis of its activation)")
        return z

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction of latents ``z``."""
        return self._decode(z)

    def substitute(self, group: ComponentGroup, activation: Tensor, source: Any,
                   on_latents: Callable[[Tensor], Tensor]) -> Tensor:
        """``activation + decode(on_latents(z)) - decode(z)``; ``activation`` itself when
        ``on_latents`` returns ``z`` (the hooks call this at the group's site)."""
        self._check_unchanged()
        if self.kind == "transcoder" and not isinstance(source, Tensor):
            raise TypeError(f"transcoder {self.name!r} at {group.module_name!r}: the module's"
                            f" first input is a {type(source).__name__}, not a tensor")
        z = self.encode(source if self.kind == "transcoder" else activation)
        gated = on_latents(z)
        if gated is z:
            return activation
        change = self.decode(gated) - self.decode(z)
        if change.shape != activation.shape:
            raise ValueError(
                f"dictionary {self.name!r} at {group.module_name!r}: the decoder gives"
                f" {tuple(change.shape)} but the {group.site} is {tuple(activation.shape)}")
        return activation + change.to(activation.dtype)

    def check_group(self, group: ComponentGroup) -> None:
        """``ValueError`` unless ``group`` declares this dictionary's latents consistently."""
        problems = []
        if group.n_units != self.n_latents:
            problems.append(f"n_units={group.n_units} (the dictionary has {self.n_latents}"
                            " latents)")
        if group.unit_size != 1 or group.unit_axis != -1:
            problems.append(f"unit_size={group.unit_size}, unit_axis={group.unit_axis} (latents"
                            " are unit_size=1 on unit_axis=-1)")
        if group.site not in ("output", "input"):
            problems.append(f"site={group.site!r} (a dictionary reads a module's output or"
                            " input)")
        elif self.kind == "transcoder" and group.site != "output":
            problems.append(f"site={group.site!r} (a transcoder writes the module's output:"
                            " site='output')")
        if problems:
            raise ValueError(f"group {group.module_name!r} with dictionary {self.name!r}: "
                             + "; ".join(problems) + ". Declare it with dictionary_latents()")

    def _check_unchanged(self) -> None:
        if not _same_state(_state(_tensors(self._owners, self._given)), self._state):
            raise RuntimeError(
                f"dictionary {self.name!r} changed after it was declared (a tensor was written"
                " in place, e.g. by an optimiser step or load_state_dict, or replaced), so its"
                " parameter hash, fingerprints and fitted strategies describe another"
                " dictionary; build Dictionary(...) and the components again")


def dictionary_latents(model: nn.Module, dictionaries: Mapping[str, Dictionary],
                       site: str = "output", output_index: Optional[int] = None,
                       positions: Sequence[Any] = ()) -> ComponentSet:
    """Every latent of every dictionary as a component, one group per module.

    Args:
        model: the model.
        dictionaries: module name -> :class:`Dictionary` trained on that module's site.
        site: ``"output"`` (the module's output) or ``"input"`` (its first input; SAEs only).
        output_index: for modules that return a tuple (a transformer block), the element
            the dictionary reads (0: the hidden states).
        positions: token positions (see :mod:`captum_coar.positions`): each latent at each.

    Returns:
        A :class:`ComponentSet` whose components are labelled ``<module>/latent[i]``.

    Example:
        >>> from torch import nn
        >>> from captum_coar import Dictionary, SparseAutoencoder, dictionary_latents
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
        >>> latents = dictionary_latents(model, {"1": Dictionary(SparseAutoencoder(6, 10).eval())})
        >>> latents.n_components, latents.labels[0]
        (10, '1/latent[0]')
    """
    if not isinstance(dictionaries, Mapping) or not dictionaries:
        raise TypeError("dictionaries must be a non-empty mapping {module name: Dictionary},"
                        f" got {dictionaries!r}")
    groups = []
    for module_name, dictionary in dictionaries.items():
        if not isinstance(dictionary, Dictionary):
            raise TypeError(f"dictionaries[{module_name!r}] must be a Dictionary, got"
                            f" {type(dictionary).__name__}; wrap it: Dictionary(sae) or"
                            " Dictionary(encoder, decoder)")
        groups.append(ComponentGroup(module_name, KIND, dictionary.n_latents, site=site,
                                     output_index=output_index, positions=tuple(positions),
                                     dictionary=dictionary))
    return ComponentSet(model, groups)


# ---------------------------------------------------------------------- helpers
def _owners(encoder: Any, decoder: Any, parameters: Optional[Sequence[Any]]) -> List[nn.Module]:
    """The modules the callables are or belong to, and modules in ``parameters``, once each."""
    found: Dict[int, nn.Module] = {}
    for item in [encoder, decoder] + [p for p in parameters or [] if isinstance(p, nn.Module)]:
        owner = item if isinstance(item, nn.Module) else getattr(item, "__self__", None)
        if isinstance(owner, nn.Module):
            found.setdefault(id(owner), owner)
    return list(found.values())


def _tensors(owners: Sequence[nn.Module], parameters: Optional[Sequence[Any]]) -> List[Tensor]:
    """Every parameter and buffer of the owners and every tensor given, once each, in order."""
    found: Dict[int, Tensor] = {}
    for owner in owners:
        for tensor in list(owner.parameters()) + list(owner.buffers()):
            found.setdefault(id(tensor), tensor)
    for item in parameters or []:
        if isinstance(item, Tensor):
            found.setdefault(id(item), item)
        elif not isinstance(item, nn.Module):
            raise TypeError(f"parameters= holds tensors or modules, got {type(item).__name__}")
    return list(found.values())


def _state(tensors: Sequence[Tensor]) -> Tuple[Tuple[Tensor, int], ...]:
    """Every tensor (held, so no other tensor can take its id) and its in-place version
    counter (-1 for inference-mode tensors, which have none)."""
    def version(tensor: Tensor) -> int:
        try:
            return int(tensor._version)
        except RuntimeError:
            return -1
    return tuple((t, version(t)) for t in tensors)


def _same_state(now: Sequence[Tuple[Tensor, int]], then: Sequence[Tuple[Tensor, int]]) -> bool:
    return len(now) == len(then) and all(
        a is b and u == v for (a, u), (b, v) in zip(now, then))


def _latent_count(given: Optional[int], encoder: Any, decoder: Any,
                  owners: Sequence[nn.Module], name: str) -> int:
    if given is not None:
        if int(given) < 1:
            raise ValueError(f"dictionary {name!r}: n_latents={given} must be positive")
        return int(given)
    if isinstance(decoder, nn.Linear):
        return int(decoder.in_features)
    for owner in owners:
        for attribute in ("n_latents", "d_sae"):
            value = getattr(owner, attribute, None)
            if isinstance(value, int):
                return value
        weight = getattr(owner, "W_dec", None)
        if isinstance(weight, Tensor) and weight.dim() == 2:
            return int(weight.shape[0])
        config = getattr(getattr(owner, "cfg", None), "d_sae", None)
        if isinstance(config, int):
            return config
    raise ValueError(f"dictionary {name!r}: cannot read the number of latents from its encoder"
                     f" ({type(encoder).__name__}) or decoder ({type(decoder).__name__});"
                     " pass n_latents=...")
