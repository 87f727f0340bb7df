"""Shared pieces of the runtime tests: tiny models saved as Hugging Face folders, networks, in-process workers.

The models are random-init configs (2 layers, width 32-48) whose weights are redrawn with a wide
spread and saved, so greedy decoding produces varied tokens: a wrong KV cache, position or hidden
state on any worker changes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, VisionEncoderDecoderConfig, ViTConfig

from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.models import load_adapter
from runtime.stages import StagePlan, build_stage_plan
from runtime.worker import Worker
from tests.helpers import spread_weights

torch.set_num_threads(1)

TOKEN = "test-token"
VIT = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=96)


def configs() -> dict[str, object]:
    gpt2 = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None,
                      eos_token_id=None)
    llama = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    dec = GPT2Config(vocab_size=53, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                     eos_token_id=None)
    ved = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**VIT), dec)
    ved.decoder_start_token_id, ved.pad_token_id = 1, 0
    return {"gpt2": gpt2, "llama": llama, "vit": ViTConfig(**VIT), "ved": ved}


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, cfg in configs().items():
        folder = tmp_path_factory.mktemp(f"rt-{name}")
        cfg.save_pretrained(folder)
        adapter = load_adapter(str(folder))
        spread_weights(adapter.model, seed=7)
        adapter.model.save_pretrained(folder)
        out[name] = folder
    return out


_adapters: dict[str, ModelAdapter] = {}


def adapter(folders: dict[str, Path], name: str) -> ModelAdapter:
    """One loaded adapter per family, shared by the in-process workers and the reference runs (workers
    keep their state per request, so sharing the weights is safe)."""
    if name not in _adapters:
        _adapters[name] = load_adapter(str(folders[name]))
    return _adapters[name]


def network(names: Sequence[str] = ("A", "B", "C"), *, bandwidth_bps: float = 1e9, latency_s: float = 0.0,
            slowdown: dict[str, float] | None = None, hardware: dict[str, str] | None = None,
            chain: bool = False) -> SimpleNamespace:
    """A NetworkState-shaped object: nodes fully connected (or a chain A-B-C with `chain`)."""
    slowdown, hardware = slowdown or {}, hardware or {}
    nodes = [SimpleNamespace(name=n, hardware=hardware.get(n, "cpu"), slowdown=slowdown.get(n, 1.0), address=None)
             for n in names]
    pairs = list(zip(names, names[1:], strict=False)) if chain else [
        (a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    links = [SimpleNamespace(a=a, b=b, bandwidth_bps=bandwidth_bps, latency_s=latency_s, directed=False, trace=None)
             for a, b in pairs]
    return SimpleNamespace(nodes=nodes, links=links, source=names[0], sink=None)


def stage_plan(ad: ModelAdapter, assignment: Sequence[str], addresses: dict[str, str], *, net: object = None,
               version: int = 1, **kw: object) -> StagePlan:
    net = net or network(sorted(set(assignment) | {"A"}))
    sp = build_stage_plan(version=version, model=ad.name, units=ad.units(), phases=ad.phases(InputSpec()),
                          edges=ad.edges(), assignment=assignment, network=net, **kw)
    nodes = tuple(dataclasses.replace(n, address=addresses.get(n.name)) for n in sp.nodes)
    return dataclasses.replace(sp, nodes=nodes)


@contextlib.asynccontextmanager
async def running_workers(ad: ModelAdapter, names: Sequence[str] = ("A", "B", "C"),
                          **kw: object) -> AsyncIterator[tuple[dict[str, Worker], dict[str, str]]]:
    workers = {n: Worker(n, adapter=ad, token=TOKEN, **kw) for n in names}
    addresses = {}
    try:
        for n, w in workers.items():
            addresses[n] = await w.start("127.0.0.1:0")
        yield workers, addresses
    finally:
        for w in workers.values():
            await w.stop()
