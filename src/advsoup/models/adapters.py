"""Adapters: domain-specific parameters added to a timm model, and adversarial soups.

An adapter gives a few parameters of a timm network a second, adversarial copy.
The network then runs at a soup weight ``w``: 0 is clean mode (the original
parameters), 1 is robust mode (the adversarial copies), anything in between
interpolates the two copies linearly (an adversarial model soup). ``w`` may be
one value per sample, so one forward pass carries a co-training batch whose
clean half uses the clean copies and whose adversarial half the adversarial
ones; for dual BatchNorm each half is then normalised with its own batch
statistics (AdvProp).

Two mechanisms cover every variant:

* :class:`DualParams` wraps a leaf module (LayerNorm, Linear, BatchNorm2d) and
  runs it with the clean, adversarial or interpolated values of some of its
  parameters (and buffers) through ``torch.func.functional_call``. Per-sample
  weights are served by running each group of equal weights separately: the
  network outside the adapter stays one fused pass.
* :class:`TokenSoup` is a ``torch.nn.utils.parametrize`` parametrization of the
  ViT class token: timm's ``_pos_embed`` expands whatever ``cls_token`` returns,
  so a per-sample token of shape (B, 1, D) goes through unchanged.

Why not timm's SplitBatchNorm2d: it routes by fixed batch chunks while
training and always uses the main BN at eval, so it has no robust mode and no
soups; DualParams generalises it.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

Weight = Union[float, torch.Tensor]


class SoupState:
    """The soup weight of one forward pass, shared by every adapter of a model."""

    def __init__(self) -> None:
        self.w: Weight = 0.0
        # For per-sample weights: (value, slice or index tensor) per group of equal weights.
        self.groups: Optional[List[Tuple[float, Union[slice, torch.Tensor]]]] = None

    @contextlib.contextmanager
    def use(self, w: Weight) -> Iterator[None]:
        prev = (self.w, self.groups)
        self.w, self.groups = _normalise(w)
        try:
            yield
        finally:
            self.w, self.groups = prev


def _normalise(w: Weight) -> Tuple[Weight, Optional[list]]:
    if isinstance(w, torch.Tensor) and w.ndim > 0:
        if w.ndim != 1:
            raise ValueError(f"a per-sample soup weight must be 1-D (one per sample), got shape {tuple(w.shape)}")
        if bool(((w < 0) | (w > 1)).any()):
            raise ValueError("soup weights must lie in [0, 1] (0 = clean mode, 1 = robust mode)")
        values = torch.unique(w)
        if len(values) == 1:
            return float(values[0]), None
        groups = []
        for v in values.tolist():
            idx = torch.nonzero(w == v).flatten()
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            groups.append((v, slice(lo, hi) if hi - lo == len(idx) else idx))
        return w, groups
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"soup weight {w} outside [0, 1] (0 = clean mode, 1 = robust mode)")
    return w, None


def _mix(clean: torch.Tensor, adv: torch.Tensor, w: float) -> torch.Tensor:
    if w == 0.0:
        return clean
    if w == 1.0:
        return adv
    if not clean.is_floating_point():  # e.g. BN's num_batches_tracked
        return clean
    return torch.lerp(clean, adv, w)


class DualParams(nn.Module):
    """A leaf module whose listed parameters (and buffers) have an adversarial copy."""

    def __init__(self, module: nn.Module, state: SoupState, params: Sequence[str],
                 buffers: Sequence[str] = ()) -> None:
        super().__init__()
        self.clean = module
        self._state = state
        self.param_names = tuple(p for p in params if getattr(module, p, None) is not None)
        self.buffer_names = tuple(b for b in buffers if getattr(module, b, None) is not None)
        self.adv_params = nn.ParameterDict(
            {n: nn.Parameter(getattr(module, n).detach().clone()) for n in self.param_names})
        for n in self.buffer_names:
            self.register_buffer(f"adv_{n}", getattr(module, n).detach().clone())

    def _values(self, w: float) -> Dict[str, torch.Tensor]:
        vals = {n: _mix(getattr(self.clean, n), self.adv_params[n], w) for n in self.param_names}
        vals.update({n: _mix(getattr(self.clean, n), getattr(self, f"adv_{n}"), w)
                     for n in self.buffer_names})
        return vals

    def _run(self, w: float, x: torch.Tensor) -> torch.Tensor:
        if w == 0.0:
            return self.clean(x)
        if self.training and self.buffer_names and w != 1.0:
            raise ValueError("dual BatchNorm trains only at soup weights 0 and 1: batch statistics of an "
                             "interpolated BN are undefined; evaluate soups in eval mode")
        # strict=False: parameters not listed stay the module's own (shared by both domains).
        return functional_call(self.clean, self._values(w), (x,), strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._state
        if state.groups is None:
            return self._run(float(state.w), x)
        parts = [(idx, self._run(v, x[idx])) for v, idx in state.groups]
        if all(isinstance(i, slice) for i, _ in parts) and \
                [i.start for i, _ in parts] == sorted(i.start for i, _ in parts):
            return torch.cat([y for _, y in parts], dim=0)
        out = parts[0][1].new_empty((x.shape[0],) + parts[0][1].shape[1:])
        for idx, y in parts:
            out[idx] = y
        return out

    def extra_repr(self) -> str:
        return f"dual={list(self.param_names) + list(self.buffer_names)}"


class TokenSoup(nn.Module):
    """Parametrization of a class token: clean token, adversarial token, or their soup."""

    def __init__(self, token: torch.Tensor, state: SoupState) -> None:
        super().__init__()
        self.adv = nn.Parameter(token.detach().clone())
        self._state = state

    def forward(self, clean: torch.Tensor) -> torch.Tensor:
        w = self._state.w
        if isinstance(w, torch.Tensor):  # per sample: (B,) -> (B, 1, D), expanded as-is by timm
            return torch.lerp(clean, self.adv, w.to(clean.dtype).view(-1, *([1] * (clean.ndim - 1))))
        return _mix(clean, self.adv, w)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value  # assigning cls_token sets the clean token


# ---- the adapter variants: which parameters of a timm model get a copy ----------------------

def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _wrap(net: nn.Module, state: SoupState, kinds: tuple, params: Sequence[str],
          buffers: Sequence[str] = (), within: str = "") -> None:
    targets = [n for n, m in net.named_modules() if isinstance(m, kinds) and n.startswith(within) and n]
    if not targets:
        raise ValueError(f"the model has no {', '.join(k.__name__ for k in kinds)} layer to adapt")
    for name in targets:
        _replace(net, name, DualParams(net.get_submodule(name), state, params, buffers))


def _token(net: nn.Module, state: SoupState) -> None:
    if getattr(net, "cls_token", None) is None:
        raise ValueError("the token adapter needs a ViT with a class token (class_token=True)")
    parametrize.register_parametrization(net, "cls_token", TokenSoup(net.cls_token, state), unsafe=True)


ADAPTERS = {
    "none": lambda net, state: None,
    "token": _token,
    # every LayerNorm's affine parameters: the ViT analogue of dual BN
    "layernorm": lambda net, state: _wrap(net, state, (nn.LayerNorm,), ("weight", "bias")),
    # every bias of the Linear layers (attention, MLP, head)
    "bias": lambda net, state: _wrap(net, state, (nn.Linear,), ("bias",)),
    # a separate classifier (weights and bias)
    "head": lambda net, state: _replace(net, "head", DualParams(net.head, state, ("weight", "bias"))),
    # AdvProp: affine parameters and running statistics of every BatchNorm
    "batchnorm": lambda net, state: _wrap(net, state, (nn.BatchNorm2d,), ("weight", "bias"),
                                          ("running_mean", "running_var", "num_batches_tracked")),
}


class AdaptedModel(nn.Module):
    """A timm network with input normalisation and an adapter, called as ``model(x, w)``.

    ``x`` holds images in [0, 1] (attacks work in that space); ``w`` is the
    soup weight, a float or one value per sample.
    """

    def __init__(self, net: nn.Module, adapter: str, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter '{adapter}'; choose one of {sorted(ADAPTERS)}")
        self.adapter = adapter
        self.state = SoupState()
        ADAPTERS[adapter](net, self.state)
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, w: Weight = 0.0) -> torch.Tensor:
        if isinstance(w, torch.Tensor) and w.ndim > 0 and len(w) != len(x):
            raise ValueError(f"{len(w)} soup weights for a batch of {len(x)}")
        with self.state.use(w):
            return self.net((x - self.mean) / self.std)

    # ---- parameter bookkeeping ----
    def adversarial_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """The adversarial copies: what the adapter adds to the plain network."""
        return [(n, p) for n, p in self.named_parameters() if _is_adv(n)]

    def domain_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """Both copies of every domain-specific parameter (what adapter-only fine-tuning trains)."""
        adv = {n for n, _ in self.adversarial_parameters()}
        clean = set()
        for n, m in self.named_modules():
            if isinstance(m, DualParams):
                clean |= {f"{n}.clean.{p}" for p in m.param_names}
        if self.adapter == "token":
            clean.add("net.parametrizations.cls_token.original")
        return [(n, p) for n, p in self.named_parameters() if n in adv | clean]

    def num_domain_parameters(self) -> int:
        return sum(p.numel() for _, p in self.adversarial_parameters())

    # ---- plain timm state dicts ----
    def load_plain_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load a plain timm state dict into both copies of every adapted parameter.

        Strict both ways, like ``load_state_dict``: a missing key or one the
        network does not have (another architecture's weights) is an error.
        """
        mapped = {}
        for key in self.net.state_dict():
            plain = plain_key(key)
            if plain not in state_dict:
                raise KeyError(f"the plain state dict has no '{plain}' (needed for '{key}'): "
                               "is it the state dict of the same timm architecture?")
            mapped[key] = state_dict[plain]
        unused = sorted(set(state_dict) - {plain_key(k) for k in mapped})
        if unused:
            raise KeyError(f"the plain state dict has {len(unused)} key(s) this network does not have, e.g. "
                           f"{unused[:3]}: is it the state dict of the same timm architecture?")
        self.net.load_state_dict(mapped)

    def plain_state_dict(self, w: float) -> Dict[str, torch.Tensor]:
        """The plain timm state dict of the soup at weight w (for export to timm)."""
        out = {}
        for n, m in self.net.named_modules():
            if isinstance(m, DualParams):
                for k, v in m._values(w).items():
                    out[f"{n}.{k}"] = v.detach().clone()
        for key, value in self.net.state_dict().items():
            plain = plain_key(key)
            if _is_adv(key) or plain in out:
                continue
            out[plain] = value.detach().clone()
        if self.adapter == "token":
            with self.state.use(w):
                out["cls_token"] = self.net.cls_token.detach().clone()
        return out


def _is_adv(name: str) -> bool:
    return (".adv_params." in name or name.rsplit(".", 1)[-1].startswith("adv_")
            or name.endswith("cls_token.0.adv"))


def plain_key(key: str) -> str:
    """The timm name of an adapted model's (clean) state-dict entry."""
    if key == "parametrizations.cls_token.original":
        return "cls_token"
    if key.startswith("parametrizations.cls_token.0."):
        return "cls_token"
    if ".adv_params." in key:
        mod, _, p = key.partition(".adv_params.")
        return f"{mod}.{p}"
    head, _, last = key.rpartition(".")
    if last.startswith("adv_"):
        return f"{head}.{last[4:]}"
    return key.replace(".clean.", ".").removeprefix("clean.")
