"""tiny-captioner: the scene generator, the caption parser, BLEU-4, the shipped model's quality and
the `aiflow caption` command."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.captioner.data import SPLITS, fixed_examples, sample_split_scene, split_of, training_batch
from profiler.captioner.evaluate import corpus_bleu, evaluate_model, score
from profiler.captioner.inference import BUILTIN_DIR, caption_files
from profiler.captioner.parse import ParseError, parse
from profiler.captioner.scenes import TEMPLATES, Scene, Shape, caption, render, sample_scene
from profiler.captioner.tokenizer import build_tokenizer

SHIPPED = BUILTIN_DIR / "tiny-captioner"
REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(2)


def _scenes(seed: int, n: int) -> list[tuple[Scene, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        out.append((scene, [caption(scene, rng) for _ in range(3)]))
    return out


# ---- generator and splits ----------------------------------------------------------------------------

def test_generator_is_seeded() -> None:
    assert _scenes(7, 50) == _scenes(7, 50)
    assert _scenes(7, 50) != _scenes(8, 50)
    scene = sample_scene(random.Random(3))
    a, b = render(scene, random.Random(5)), render(scene, random.Random(5))
    assert a.size == (64, 64) and a.tobytes() == b.tobytes()


def test_scene_space_covers_every_attribute() -> None:
    scenes = [s for s, _ in _scenes(1, 3000)]
    assert {len(s.shapes) for s in scenes} == {1, 2}
    assert len({s.background for s in scenes}) == 3
    shapes = [sh for s in scenes for sh in s.shapes]
    assert len({sh.kind for sh in shapes}) == 3 and len({sh.colour for sh in shapes}) == 6
    assert len({sh.size for sh in shapes}) == 2 and len({sh.position for sh in shapes}) == 5
    assert all(len({sh.position for sh in s.shapes}) == len(s.shapes) for s in scenes)


def test_splits_never_share_a_scene() -> None:
    sets = {split: {e.scene for e in fixed_examples(split, 150)} for split in SPLITS}
    assert all(len(s) == 150 for s in sets.values())
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    for split, scenes in sets.items():
        assert all(split_of(s) == split for s in scenes)
    rng = random.Random(0)
    assert all(split_of(sample_split_scene(rng, "train")) == "train" for _ in range(200))
    # the rule holds out about a tenth of all scenes for test
    held = sum(split_of(s) == "test" for s, _ in _scenes(2, 2000)) / 2000
    assert 0.06 < held < 0.14


def test_training_batch_shapes() -> None:
    tok = build_tokenizer()
    pixels, labels = training_batch(random.Random(0), tok, 8)
    assert pixels.shape == (8, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    for row in labels.tolist():
        ids = [i for i in row if i != -100]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


# ---- captions and the parser -------------------------------------------------------------------------

def test_parse_inverts_every_template() -> None:
    rng = random.Random(11)
    wordings = set()
    for _ in range(400):
        scene = sample_scene(rng)
        for t in range(len(TEMPLATES)):
            text = caption(scene, rng, t)
            wordings.add(text)
            assert parse(text) == scene, text
    assert len(wordings) > 1500  # the wording really varies


def test_parse_rejects_wrong_captions() -> None:
    good = "a small red circle at the top left and a big blue square in the middle on a white background"
    assert parse(good) == Scene("white", (Shape("top left", "small", "red", "circle"),
                                          Shape("center", "large", "blue", "square")))
    for bad in (
        good.replace("red ", ""),                       # a shape without a colour
        good.replace("white", "purple"),                # no background colour
        good.replace("middle", "top left"),             # two shapes at one place
        good.replace("big", "big small"),               # two sizes
        good.replace("circle", "hexagon"),              # unknown word
        "two shapes on a gray background a small red circle at the top left",  # count disagrees
        "on a gray background",                         # no shape
    ):
        with pytest.raises(ParseError):
            parse(bad)


def test_tokenizer_covers_every_caption_word(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for _, captions in _scenes(4, 200):
        for text in captions:
            ids = loaded(text, add_special_tokens=False)["input_ids"]
            assert loaded.unk_token_id not in ids and len(ids) == len(text.split())
            assert loaded.decode(ids) == text


# ---- BLEU-4 ------------------------------------------------------------------------------------------

def test_bleu_known_cases() -> None:
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # precisions 5/6, 3/5, 2/4, 1/3 by hand; equal lengths, so no brevity penalty
    got = corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert got == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # all n-grams match but the hypothesis is 4 words against 6: brevity penalty exp(1 - 6/4)
    assert corpus_bleu(["the cat sat on"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(-0.5))
    # clipping by the most any single reference holds; the closest reference length counts
    assert corpus_bleu(["the the the"], [["the cat", "the the"]], max_n=1) == pytest.approx(2 / 3)
    # corpus level: n-gram counts are pooled, not sentence scores averaged
    pooled = corpus_bleu(["a b c d", "a b c e"], [["a b c d"], ["a b c d"]])
    assert pooled == pytest.approx((7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25)  # each alone: 1.0 and 0.0
    assert corpus_bleu(["x y z w"], [["a b c d"]]) == 0.0


def test_score_counts_meaning_not_wording() -> None:
    rng = random.Random(5)
    scenes = [sample_scene(rng) for _ in range(20)]
    refs = [[caption(s, rng, t) for t in range(len(TEMPLATES))] for s in scenes]
    right = score(scenes, [caption(s, rng) for s in scenes], refs)
    assert right.scene_accuracy == 1.0 and all(v == 1.0 for v in right.attribute_accuracy.values())
    wrong = score(scenes, [r[0].replace(s.background, "white" if s.background != "white" else "black")
                           for s, r in zip(scenes, refs, strict=True)], refs)
    assert wrong.scene_accuracy == 0.0 and wrong.attribute_accuracy["background"] == 0.0
    assert wrong.attribute_accuracy["colour"] == 1.0


# ---- the shipped model -------------------------------------------------------------------------------

needs_weights = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(),
                                   reason="profiler/builtin/tiny-captioner/model.safetensors is not shipped")


@needs_weights
def test_shipped_model_quality_on_held_out_scenes() -> None:
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(SHIPPED)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    scores, captions = evaluate_model(model, tokenizer, split="test", n=100)
    assert scores.scene_accuracy >= 0.9, (scores, captions[:10])
    assert scores.bleu4 > 0.5
    record = json.loads((SHIPPED / "training.json").read_text())
    assert record["test"]["scene_accuracy"] >= 0.9 and record["options"]["steps"] > 0


@needs_weights
def test_adapter_and_direct_model_caption_alike(tmp_path: Path) -> None:
    pytest.importorskip("profiler.models", reason="the adapter layer (profiler.models) is not installed")
    paths = []
    for i, e in enumerate(fixed_examples("test", 6)):
        path = tmp_path / f"{i}.png"
        render(e.scene).save(path)
        paths.append(path)
    assert caption_files(paths, use_adapter=True) == caption_files(paths, use_adapter=False)


def _aiflow(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from orchestrator.cli import main; sys.argv[0] = 'aiflow'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


@needs_weights
def test_caption_command_on_files_of_any_size(tmp_path: Path) -> None:
    scene = fixed_examples("test", 1)[0].scene
    big = tmp_path / "big.png"
    render(scene).resize((300, 300)).save(big)  # not 64 px: the command resizes
    jpeg = tmp_path / "photo.jpg"
    render(scene).resize((120, 90)).save(jpeg, quality=95)
    done = _aiflow("caption", str(big), str(jpeg), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["image"] for r in rows] == [str(big), str(jpeg)]
    assert rows[0]["caption"] == caption_files([big], use_adapter=False)[0]
    assert all(r["caption"] and r["scene"] for r in rows)


def test_caption_command_errors_are_one_line(tmp_path: Path) -> None:
    missing = _aiflow("caption", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.png" in missing.stderr
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    hook = _aiflow("caption", str(not_image), "--network", "n.yaml")
    assert hook.returncode == 2 and "--plan" in hook.stderr


def test_train_tiny_run_saves_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    from profiler.captioner.train import TrainOptions, train

    record = train(TrainOptions(steps=2, eval_every=2, val_scenes=3, test_scenes=3), tmp_path)
    assert record["data_seed"] == 0 and record["final_train_loss"] > 0 and record["test"]["scenes"] == 3
    assert json.loads((tmp_path / "training.json").read_text())["options"]["steps"] == 2
    model = VisionEncoderDecoderModel.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.decoder_start_token_id == tok.bos_token_id
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
