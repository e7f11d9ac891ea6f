"""Memory of a train-lora step: backward through the Wan decoder with adapters, 512 x 512.

Usage (from the repository root)::

    python benchmarks/lora_memory.py --device cuda --batch-size 4            # measurement
    python benchmarks/lora_memory.py --device cpu --batch-size 4 --count-batch 1   # estimate

Random weights of the real architecture (``--dim 96``), LoRA rank 16 on every target,
``--precision`` (bf16 autocast by default), one flat-lit latent per image decoded and an L1 loss backpropagated into
the adapters, with and without activation checkpointing of the decoder blocks.

* On CUDA it reports ``torch.cuda.max_memory_allocated`` over the step (a measurement: weights,
  activations, gradients, the allocator's view).
* On CPU there is no such counter, so it reports an **estimate of activation memory only**:
  the bytes autograd saves for backward (distinct storages, counted by
  ``torch.autograd.graph.saved_tensors_hooks`` in one forward at ``--count-batch`` images and
  scaled linearly to ``--batch-size``). With checkpointing, a block keeps only its input until
  backward recomputes it, so the estimate is: tensors saved outside the blocks + every block's
  input + the largest single block's saved tensors. Weights (the frozen VAE: 0.5 GB in float32),
  gradients and allocator slack come on top.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime

import torch
import torch.nn.functional as F

from delit_cache.utils.device import resolve_device
from delit_cache.utils.machine import device_name
from delit_cache.vae import new_wan_vae
from delit_cache.vae.grad_checkpoint import checkpoint_decoder_blocks
from delit_cache.vae.lora import LoraSpec, add_lora

GIB = 2**30


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _step(vae, z: torch.Tensor, device: torch.device, precision: str) -> None:
    with _autocast(device, precision):
        out = vae.decode(z, clamp=False)
    F.l1_loss(out.float(), torch.full_like(out, 0.5, dtype=torch.float32)).backward()


def measure_cuda(vae, z: torch.Tensor, device: torch.device, precision: str) -> float:
    """Peak ``max_memory_allocated`` (GiB) over one forward + backward."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    _step(vae, z, device, precision)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / GIB


def count_saved(vae, z: torch.Tensor, precision: str) -> dict[str, float]:
    """Bytes saved for backward per decoder block (one forward, no checkpointing) and the
    bytes of every block's input."""
    decoder = vae.model.decoder
    blocks = [*decoder.middle, *decoder.upsamples]
    current = ["outside"]
    saved: dict[str, int] = {}
    seen: set[int] = set()
    inputs = 0

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            saved[current[0]] = saved.get(current[0], 0) + t.untyped_storage().nbytes()
        return t

    def pre(i):
        def hook(_module, args):
            nonlocal inputs
            current[0] = f"block{i}"
            inputs += args[0].numel() * args[0].element_size()

        return hook

    def post(_module, _args, _out):
        current[0] = "outside"

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre(i)))
        handles.append(block.register_forward_hook(post))
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, _autocast(z.device, precision):
        vae.decode(z, clamp=False)
    for h in handles:
        h.remove()
    per_block = [v for k, v in saved.items() if k != "outside"]
    return {
        "outside": saved.get("outside", 0),
        "blocks_total": sum(per_block),
        "largest_block": max(per_block),
        "block_inputs": inputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dim", type=int, default=96, help="VAE width (96: the real Wan 2.1)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--count-batch", type=int, default=1, help="CPU: images counted")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", choices=("bf16", "no"), default="bf16", help="autocast")
    args = parser.parse_args()
    device = resolve_device(args.device)
    vae = new_wan_vae(args.dim, device=device)
    add_lora(vae, LoraSpec(args.rank, float(args.rank)))
    h = args.size // 8
    print(f"# lora_memory: dim {args.dim}, {args.size} x {args.size}, LoRA rank {args.rank}, "
          f"mixed precision {args.precision}, {device_name(device)}, torch {torch.__version__}, "
          f"{datetime.date.today()}")  # fmt: skip
    if device.type == "cuda":
        z = torch.randn(args.batch_size, 16, h, h, device=device)
        plain = measure_cuda(vae, z, device, args.precision)
        checkpoint_decoder_blocks(vae)
        ckpt = measure_cuda(vae, z, device, args.precision)
        print("| batch | checkpointing | max_memory_allocated (GiB, measured) |")
        print("| --- | --- | --- |")
        print(f"| {args.batch_size} | off | {plain:.2f} |")
        print(f"| {args.batch_size} | on | {ckpt:.2f} |")
        return
    z = torch.randn(args.count_batch, 16, h, h, device=device)
    c = count_saved(vae, z, args.precision)
    scale = args.batch_size / args.count_batch
    plain = (c["outside"] + c["blocks_total"]) * scale / GIB
    ckpt = (c["outside"] + c["block_inputs"]) * scale / GIB + c["largest_block"] * scale / GIB
    print(f"estimate from saved-for-backward bytes at batch {args.count_batch}, scaled to "
          f"{args.batch_size}: activations only, not a measurement")  # fmt: skip
    print("| batch | checkpointing | activations held for backward (GiB, estimate) |")
    print("| --- | --- | --- |")
    print(f"| {args.batch_size} | off | {plain:.2f} |")
    print(f"| {args.batch_size} | on | {ckpt:.2f} |")


if __name__ == "__main__":
    main()
