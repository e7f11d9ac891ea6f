"""LoRA adapters on the frozen Wan decoder (Scheme B), through peft.

Targets are chosen by module type, never by a name pattern: every ``CausalConv3d`` and
``nn.Conv2d`` of ``vae.model.decoder`` except ``time_conv`` (the temporal upsampling convs
never run for one frame, so their adapters would get no gradient). ``nn.Conv2d`` gets peft's
own ``lora.Conv2d``; ``CausalConv3d`` gets ``CausalConv3dLora``, registered with peft as a
custom module, because peft's ``lora.Conv3d`` builds its adapter with the base layer's
``padding`` (zero for a causal conv, whose padding is applied in ``forward``).

``CausalConv3dLora``'s ``lora_A`` is itself a causal conv with the base layer's kernel,
stride and padding, and its ``lora_B`` a 1x1x1 causal conv; both are folded like the base
(``FoldedCausalConv3d``), so for one frame the whole layer runs as 2-D convolutions, and
they take the same frame cache as the base for videos. ``lora_B`` starts at zero: a fresh
adapter is an exact no-op.

Adapter files (``save_lora``/``read_lora``) are safetensors holding only ``lora_A``/``lora_B``
weights under the decoder's module names, with the rank, alpha, targets and the fingerprint
and width of the VAE they were trained on in the metadata.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import layer as peft_lora
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from delit_cache.utils.atomic import atomic_path
from delit_cache.utils.errors import DelitError

LORA_FORMAT = "delit-lora"
ADAPTER = "default"  # peft's adapter name; stripped from the keys we write
EXCLUDED = ("time_conv",)  # module names (last part) never adapted: idle for one frame
_KEY = re.compile(r"^decoder\.[\w.]+\.lora_[AB]\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter set is: its size and where it sits."""

    rank: int = 16  # LoRA rank r (adapter inner width)
    alpha: float = 16.0  # LoRA alpha: the update is scaled by alpha / rank
    targets: tuple[str, ...] = ()  # decoder module names adapted (empty: chosen by type)

    def check(self) -> None:
        """``DelitError`` for a rank below 1 or an alpha that is not a finite positive number."""
        if self.rank < 1:
            raise DelitError(f"--lora-rank {self.rank}: must be >= 1")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise DelitError(f"--lora-alpha {self.alpha}: must be a finite number > 0")


def _causal_conv_classes():
    from delit_cache.vae.diffsynth_wan import CausalConv3d, fold_single_frame

    return CausalConv3d, fold_single_frame


class CausalConv3dLora(peft_lora.Conv3d):
    """peft LoRA layer for DiffSynth's ``CausalConv3d``: the adapter pads the causal way.

    ``forward(x, cache_x=None)`` has the base layer's signature; ``module`` points at the
    base layer so DiffSynth's decoder (``check_is_instance``) still hands it the frame cache.
    """

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs) -> None:
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)
        causal_cls, fold = _causal_conv_classes()
        base = self.get_base_layer()
        padding = (base._padding[4] // 2, base._padding[2], base._padding[0])
        a = causal_cls(base.in_channels, r, base.kernel_size, base.stride, padding, bias=False)
        b = causal_cls(r, base.out_channels, 1, bias=False)
        enabled = getattr(base, "fold_enabled", True)
        fold(a, enabled)
        fold(b, enabled)
        self.lora_A[adapter_name], self.lora_B[adapter_name] = a, b
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    @property
    def module(self) -> nn.Module:
        return self.get_base_layer()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling * B @ A`` as a kernel of the base's shape (B is 1x1x1, so this is exact)."""
        a = self.lora_A[adapter].weight.float()
        b = self.lora_B[adapter].weight.float().flatten(1)
        delta = torch.einsum("or,ri...->oi...", b, a) * self.scaling[adapter]
        return delta.to(self.get_base_layer().weight.dtype)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        result = self.base_layer(x, cache_x)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            h = b(a(x.to(a.weight.dtype), cache_x))
            result = result + (h * self.scaling[name]).to(result.dtype)
        return result


def _module_names(decoder: nn.Module) -> list[str]:
    """Decoder module names adapted by type: causal 3-D and 2-D convs, ``time_conv`` left out."""
    causal_cls, _ = _causal_conv_classes()
    names = []
    for name, module in decoder.named_modules():
        if isinstance(module, BaseTunerLayer):
            raise DelitError("the decoder holds LoRA adapters already")
        if name.rsplit(".", 1)[-1] in EXCLUDED:
            continue
        if isinstance(module, causal_cls | nn.Conv2d):
            names.append(name)
    return names


def _full_rank(conv: nn.Module) -> int:
    """The largest useful LoRA rank of a convolution: min(out channels, in channels x kernel)."""
    weight = conv.weight
    return min(int(weight.shape[0]), int(weight[0].numel()))


def target_names(vae) -> tuple[str, ...]:
    """Names (under ``vae.model.decoder``) of the modules that get adapters."""
    return tuple(_module_names(vae.model.decoder))


def add_lora(vae, spec: LoraSpec) -> LoraSpec:
    """Inject fresh adapters (``lora_B`` zero: outputs unchanged) into ``vae``'s decoder.

    Adapter weights get ``requires_grad``; everything else stays frozen. Returns the spec
    with its ``targets`` filled in.
    """
    spec.check()
    causal_cls, _ = _causal_conv_classes()
    decoder = vae.model.decoder
    found = _module_names(decoder)
    targets = spec.targets or tuple(found)
    unknown = sorted(set(targets) - set(found))
    if unknown:
        raise DelitError(f"LoRA targets not among the decoder's convolutions: {unknown[:3]}")
    full = max(_full_rank(decoder.get_submodule(name)) for name in targets)
    if spec.rank > full:  # refused before peft allocates adapters of that width
        raise DelitError(
            f"--lora-rank {spec.rank}: above the full rank of every adapted convolution "
            f"(at most {full} here)"
        )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        init_lora_weights=True,
    )
    config._register_custom_module({causal_cls: CausalConv3dLora})
    inject_adapter_in_model(config, decoder, adapter_name=ADAPTER)
    dev, dtype = vae.device, vae.dtype
    for name, p in decoder.named_parameters():
        is_lora = ".lora_" in name
        p.requires_grad_(is_lora)
        if is_lora:
            p.data = p.data.to(device=dev, dtype=dtype)
    return LoraSpec(spec.rank, spec.alpha, tuple(targets))


def lora_layers(vae) -> list[tuple[str, BaseTunerLayer]]:
    """(name, layer) of every LoRA layer in ``vae``'s decoder."""
    return [(n, m) for n, m in vae.model.decoder.named_modules() if isinstance(m, BaseTunerLayer)]


def lora_parameters(vae) -> list[nn.Parameter]:
    """The adapter weights (what train-lora optimises)."""
    return [p for n, p in vae.model.decoder.named_parameters() if ".lora_" in n]


def lora_state(vae) -> dict[str, torch.Tensor]:
    """Adapter weights keyed ``decoder.<module>.lora_A.weight`` (CPU, float32, detached)."""
    out = {}
    for name, tensor in vae.model.decoder.state_dict().items():
        if ".lora_" in name:
            key = "decoder." + name.replace(f".{ADAPTER}.", ".")
            out[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def load_lora_state(vae, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy adapter weights (``lora_state`` keys) into ``vae``'s injected adapters."""
    own = vae.model.decoder.state_dict()
    targets = {}
    for key in own:
        if ".lora_" in key:
            targets["decoder." + key.replace(f".{ADAPTER}.", ".")] = key
    missing, extra = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected {extra[0]}"
        raise DelitError(f"{where}: adapters do not fit this decoder ({what})")
    params = dict(vae.model.decoder.named_parameters())
    with torch.no_grad():
        for key, name in targets.items():
            p = params[name]
            if tuple(state[key].shape) != tuple(p.shape):
                raise DelitError(
                    f"{where}: {key} has shape {tuple(state[key].shape)}, this decoder needs "
                    f"{tuple(p.shape)} (adapters for another rank or VAE width)"
                )
            p.copy_(state[key].to(device=p.device, dtype=p.dtype))


def merge_lora(vae) -> int:
    """Fold every adapter into its base weight and put the plain base layer back.

    Afterwards the decoder is plain DiffSynth again (original state-dict keys); returns the
    number of layers merged.
    """
    decoder = vae.model.decoder
    layers = lora_layers(vae)
    with torch.no_grad():
        for name, layer in layers:
            layer.merge(adapter_names=[ADAPTER])
            parent_name, _, child = name.rpartition(".")
            parent = decoder.get_submodule(parent_name) if parent_name else decoder
            base = layer.get_base_layer()
            base.requires_grad_(False)
            setattr(parent, child, base)
    return len(layers)


# ----------------------------------------------------------------------------------------------
# Files


def save_lora(vae, spec: LoraSpec, path: str | Path, extra: dict | None = None) -> Path:
    """Write the adapters alone (safetensors, atomic) with their spec and the VAE's identity."""
    from safetensors.torch import save_file

    meta = {
        "format": LORA_FORMAT,
        "rank": str(spec.rank),
        "alpha": repr(float(spec.alpha)),
        "targets": json.dumps(list(spec.targets)),
        "vae_fingerprint": str(vae.fingerprint),
        "vae_dim": str(vae.dim),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(lora_state(vae), str(tmp), metadata=meta)
    return path


def read_lora(path: str | Path) -> tuple[LoraSpec, dict[str, torch.Tensor], dict[str, str]]:
    """(spec, adapter weights, metadata) of an adapter file; ``DelitError`` in one line for
    anything else (no file, not safetensors, other tensors, a rank that the weights contradict)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DelitError(f"{path}: no such LoRA adapter file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DelitError(f"{path}: not a safetensors file ({first[:120]})") from None
    if meta.get("format") != LORA_FORMAT:
        raise DelitError(f"{path}: not a delit LoRA adapter file (metadata format is "
                         f"{meta.get('format')!r}, expected {LORA_FORMAT!r})")  # fmt: skip
    foreign = [k for k in state if not _KEY.match(k)]
    if foreign:
        raise DelitError(f"{path}: holds {len(foreign)} tensor(s) that are not LoRA adapters "
                         f"(e.g. {foreign[0]})")  # fmt: skip
    if not state:
        raise DelitError(f"{path}: holds no adapter weights")
    try:
        spec = LoraSpec(int(meta["rank"]), float(meta["alpha"]), tuple(json.loads(meta["targets"])))
        int(meta["vae_dim"])
    except (KeyError, ValueError, TypeError):
        raise DelitError(f"{path}: LoRA metadata is malformed") from None
    spec.check()
    for key, tensor in state.items():
        inner = (
            tensor.shape[0] if ".lora_A." in key else tensor.shape[1] if tensor.dim() > 1 else -1
        )
        if inner != spec.rank:
            raise DelitError(f"{path}: {key} has rank {inner}, the file says rank {spec.rank}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise DelitError(f"{path}: {key} is not finite floating point")
    return spec, state, meta


def apply_lora_file(vae, path: str | Path) -> LoraSpec:
    """Load the adapter file ``path`` into ``vae`` (unmerged); refuses another VAE's adapters."""
    spec, state, meta = read_lora(path)
    if meta.get("vae_fingerprint") != vae.fingerprint or int(meta["vae_dim"]) != vae.dim:
        raise DelitError(
            f"{path}: adapters for another VAE (trained on {meta.get('vae_fingerprint')}, "
            f"width {meta['vae_dim']}; given {vae.fingerprint}, width {vae.dim})"
        )
    spec = add_lora(vae, spec)
    load_lora_state(vae, state, str(path))
    for p in lora_parameters(vae):
        p.requires_grad_(False)
    return spec
