"""Llama 3.2 Vision: image-and-text conversations, LoRA / QLoRA / full fine-tuning, generation (exact_match).

Everything runs on a tiny ``MllamaForConditionalGeneration`` built in the tests
(conftest ``tiny_mllama``: Llama 3's special tokens and ``<|image|>``, 28-pixel
tiles, up to 4 tiles per image, a PIL image processor) and on a small data set
of coloured shapes generated here as PNG files: the question is the shape's
colour, so the answer can only come from the image.
"""

import base64
import json
import os

import pytest
import torch
from conftest import write_jsonl, write_recipe

from ftcore import hooks
from ftcore.data import IGNORE_INDEX
from ftcore.data.collate import PaddingCollator
from ftcore.data.prepare import prepare_datasets, set_chat_template
from ftcore.errors import DataError
from ftcore.plugins.vision import VisionCollator, open_image
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from test_run import REPO, run_recipe

PLUGINS = load_plugins()
FORMATS = hooks.dataset_formats(PLUGINS)
TEMPLATES = hooks.chat_templates(PLUGINS)
PARTS = hooks.content_parts(PLUGINS)  # the image handler, as a run passes it
SHAPE_COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
QUESTION = "What colour is the shape?"
LANGUAGE_LORA = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def draw(path, colour, i):
    """A coloured square or circle on white; sizes vary, so images get different tile layouts."""
    from PIL import Image, ImageDraw

    width, height = (40 + 3 * (i % 5), 30 + 4 * (i % 3)) if i % 2 else (30 + 2 * (i % 4), 56)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    box = (4, 4, width - 4, height - 4)
    (ImageDraw.Draw(image).ellipse if i % 3 else ImageDraw.Draw(image).rectangle)(box, fill=SHAPE_COLOURS[colour])
    image.save(path)
    return path


def shape_rows(folder, n, start=0):
    """Rows in the message-parts format, images as paths relative to the data file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        colour = list(SHAPE_COLOURS)[i % 3]
        draw(folder / "images" / f"shape{i}.png", colour, i)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"images/shape{i}.png"},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": colour}]}]})
    return rows


@pytest.fixture
def shapes(tmp_path):
    folder = tmp_path / "data"
    return write_jsonl(folder / "shapes.jsonl", shape_rows(folder, 36))


@pytest.fixture(scope="module")
def processor(tiny_mllama):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_mllama, backend="pil")


@pytest.fixture
def vision_tokenizer(processor):
    return processor.tokenizer


def collator(processor, cache_size=256):
    tok = processor.tokenizer
    return VisionCollator(processor.image_processor, tok.convert_tokens_to_ids("<|image|>"),
                          PaddingCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id),
                          cache_size=cache_size)


def make_recipe(**keys):
    return validate(RawRecipe({"base_model": "unused/model", "chat_template": "llama3_2_vision", **keys}, None),
                    PLUGINS)


def prepare(tokenizer, data, **keys):
    recipe = make_recipe(datasets=[{"path": str(data), "type": "chat_template"}], **keys)
    return prepare_datasets(recipe, tokenizer, FORMATS, set_chat_template(recipe, tokenizer, TEMPLATES), parts=PARTS)


def vision_recipe(tmp_path, model, data, **keys):
    return {**dict(base_model=str(model), datasets=[{"path": str(data), "type": "chat_template"}],
                   chat_template="llama3_2_vision", val_set_size=6, sequence_len=64, micro_batch_size=6,
                   max_steps=18, learning_rate=5e-3, lr_scheduler="constant", logging_steps=1, seed=0,
                   output_dir=str(tmp_path / "out")), **keys}


# ── data: rows, labels, images ───────────────────────────────────────────────


def test_labels_train_the_reply_and_its_end_of_turn_only(vision_tokenizer, shapes):
    data = prepare(vision_tokenizer, shapes)
    tok = vision_tokenizer
    image_id = tok.convert_tokens_to_ids("<|image|>")
    example = data.examples[0]
    ids, labels = example["input_ids"], example["labels"]
    text = tok.apply_chat_template(json.loads(shapes.read_text().splitlines()[0])["messages"], tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>" + QUESTION +
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    reply = tok("red<|eot_id|>", add_special_tokens=False)["input_ids"]
    start = len(ids) - len(reply)
    for position, (token, label) in enumerate(zip(ids, labels)):  # token by token
        if position >= start:
            assert label == token, (position, tok.convert_ids_to_tokens(token))
        else:
            assert label == IGNORE_INDEX, (position, tok.convert_ids_to_tokens(token))
    assert ids.count(image_id) == 1 and labels[ids.index(image_id)] == IGNORE_INDEX
    assert example["images"] == [{"path": str((shapes.parent / "images" / "shape0.png").resolve())}]
    assert data.stats["train"]["trained_tokens"] == len(reply) * 36


def test_the_collator_builds_images_masks_and_never_trains_padding_or_image_tokens(processor, shapes):
    from transformers.models.mllama.processing_mllama import (convert_sparse_cross_attention_mask_to_dense,
                                                              get_cross_attention_token_mask)

    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image|>")
    data = prepare(tok, shapes)
    text_only = {"input_ids": tok("hello there")["input_ids"], "labels": tok("hello there")["input_ids"]}
    examples = [data.examples[0], text_only, data.examples[1]]
    # labels of the image token set as trained: the collator must still mask it
    examples[2] = {**examples[2], "labels": list(examples[2]["input_ids"])}
    collate = collator(processor, cache_size=1)
    batch = collate(examples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (labels[ids == image_id] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all() and (mask[1] == 0).any()
    assert batch["pixel_values"].shape[:3] == (3, 1, 4) and batch["pixel_values"].shape[-2:] == (28, 28)
    assert not batch["pixel_values"][1].any()  # the text-only row has no image
    # the same numbers as the transformers processor gives for these images and tokens
    images = [[open_image(e["images"][0])] for e in (examples[0], examples[2])]
    expected = processor.image_processor(images=images, return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][[0, 2]], expected["pixel_values"])
    assert torch.equal(batch["aspect_ratio_ids"][[0, 2]], expected["aspect_ratio_ids"])
    token_masks = [get_cross_attention_token_mask(row.tolist(), image_id) for row in ids]
    dense = convert_sparse_cross_attention_mask_to_dense(token_masks, [[*t] for t in
                                                         [expected["num_tiles"][0], [], expected["num_tiles"][1]]],
                                                         4, ids.shape[1])
    assert torch.equal(batch["cross_attention_mask"], torch.from_numpy(dense))
    assert len(collate.cache) == 1  # bounded: images beyond cache_size are not kept


def test_cross_attention_mask_for_several_and_adjacent_images():
    from transformers.models.mllama.processing_mllama import (convert_sparse_cross_attention_mask_to_dense,
                                                              get_cross_attention_token_mask)

    from ftcore.plugins.vision import cross_attention_mask

    image = 9
    rows = [[1, image, image, 5, 6, image, 7, 8], [1, 2, image, 4, 5, 6, 0, 0], [1, image, 3, image, 5, 6, 7, 8]]
    tiles = [[2, 4, 1], [3], [1, 2]]
    ours = cross_attention_mask(torch.tensor(rows), image, tiles, 4)
    sparse = [get_cross_attention_token_mask(r, image) for r in rows]
    theirs = convert_sparse_cross_attention_mask_to_dense(sparse, tiles, 4, 8)
    assert torch.equal(ours, torch.from_numpy(theirs))
    assert ours[0, 1:5, 0, :2].all() and ours[0, 1:5, 1].sum() == 4 * 4 - 4  # adjacent images seen together


def test_images_column_base64_url_and_text_only_rows_mix(vision_tokenizer, tmp_path):
    folder = tmp_path / "data"
    rows = shape_rows(folder, 3)
    png = draw(folder / "images" / "extra.png", "blue", 1)
    encoded = base64.b64encode(png.read_bytes()).decode()
    rows += [
        {"images": ["images/shape0.png"], "messages": [{"role": "user", "content": QUESTION},
                                                       {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "base64": encoded}, {"type": "text",
                                                                                            "text": QUESTION}]},
                      {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "url": png.as_uri()}, {"type": "text",
                                                                                           "text": QUESTION}]},
                      {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": "What is red?"}, {"role": "assistant", "content": "a colour"}]},
        {"images": ["images/shape2.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": "blue"}]},
    ]
    data = prepare(vision_tokenizer, write_jsonl(folder / "mixed.jsonl", rows))
    image_id = vision_tokenizer.convert_tokens_to_ids("<|image|>")
    assert data.stats["train"]["rows_kept"] == 8
    column, b64, url, text, placeholder = data.examples[3:]
    assert placeholder == data.examples[2]  # an image part without a source takes the column's image
    assert column["images"] == [{"path": str((folder / "images" / "shape0.png").resolve())}]
    assert column["input_ids"] == data.examples[0]["input_ids"]  # the column's image goes before the question
    assert b64["images"] == [{"base64": encoded}] and url["images"] == [{"url": png.as_uri()}]
    assert "images" not in text and image_id not in text["input_ids"]


def test_a_hub_data_set_with_an_image_column_keeps_row_references_not_images(vision_tokenizer, processor,
                                                                              monkeypatch, tmp_path):
    """The shape of HuggingFaceH4/llava-instruct-mix-vsft: image parts without a source, PIL images beside."""
    import datasets
    from PIL import Image

    from ftcore.plugins import vision

    pictures = [Image.open(draw(tmp_path / f"{i}.png", colour, i)).convert("RGB")
                for i, colour in enumerate(["red", "green"])]
    rows = {"messages": [[{"role": "user", "content": [{"type": "image", "text": None, "index": 0},
                                                       {"type": "text", "text": QUESTION, "index": None}]},
                          {"role": "assistant", "content": [{"type": "text", "text": colour, "index": None}]}]
                         for colour in ("red", "green")],
            "images": [[picture] for picture in pictures]}
    table = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": [{"type": datasets.Value("string"),
                      "text": datasets.Value("string"), "index": datasets.Value("int64")}]}],
        "images": datasets.Sequence(datasets.Image())}))
    loads = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append((a, k)) or table)
    monkeypatch.setattr("ftcore.hub.cached", lambda *a, **k: True)  # as if downloaded: offline is no obstacle
    vision._hub_dataset.cache_clear()
    recipe = make_recipe(datasets=[{"path": "someone/llava-like", "type": "chat_template"}])
    data = prepare_datasets(recipe, vision_tokenizer, FORMATS, set_chat_template(recipe, vision_tokenizer, TEMPLATES),
                            parts=PARTS)
    assert [e["images"] for e in data.examples] == [
        [{"dataset": "someone/llava-like", "name": None, "split": "train", "revision": None, "data_files": None,
          "row": row, "column": "images", "index": 0}] for row in (0, 1)]
    batch = collator(processor)(data.examples)
    expected = processor.image_processor(images=[[p] for p in pictures], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    assert len(loads) == 2  # read once to prepare, once (then cached) for the images
    vision._hub_dataset.cache_clear()


# ── bad images ───────────────────────────────────────────────────────────────


def broken_rows(folder):
    rows = shape_rows(folder, 4)
    rows[1]["messages"][0]["content"][0]["path"] = "images/nowhere.png"
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    rows[2]["messages"][0]["content"][0]["path"] = "images/corrupt.png"
    rows[3]["messages"][0]["content"].insert(0, {"type": "image", "path": "images/shape0.png"})
    return rows


@pytest.mark.parametrize("row, message", [
    (2, r"missing\.jsonl: row 2: image 1: image file \S+/images/nowhere\.png does not exist"),
    (3, r"missing\.jsonl: row 3: image 1: cannot read image \S+/images/corrupt\.png: UnidentifiedImageError"),
    (4, r"missing\.jsonl: row 4: 2 images, more than the 1 the model accepts in one row \(vision\.max_images\)"),
])
def test_a_bad_image_stops_preparation_naming_file_row_and_image(vision_tokenizer, tmp_path, row, message):
    folder = tmp_path / "data"
    rows = broken_rows(folder)
    keep = [rows[0], rows[row - 1]]
    data = write_jsonl(folder / "missing.jsonl", keep)
    with pytest.raises(DataError, match=message.replace(f"row {row}", "row 2")):
        prepare(vision_tokenizer, data)


def test_bad_images_are_skipped_and_counted_with_on_invalid_example_skip(vision_tokenizer, tmp_path):
    folder = tmp_path / "data"
    data = prepare(vision_tokenizer, write_jsonl(folder / "rows.jsonl", broken_rows(folder)),
                   on_invalid_example="skip")
    assert data.stats["train"]["rows_dropped"] == {"missing image": 1, "unreadable image": 1, "too many images": 1}
    assert data.stats["train"]["rows_kept"] == 1
    two = prepare(vision_tokenizer, write_jsonl(folder / "two.jsonl", broken_rows(folder)[3:]),
                  vision={"max_images": 2})
    assert len(two.examples[0]["images"]) == 2  # within the limit the recipe sets


def test_image_parts_need_a_vision_tokenizer(llama, tmp_path):
    folder = tmp_path / "data"
    rows = shape_rows(folder, 2)
    rows[1] = {"images": ["images/shape1.png"], "messages": [{"role": "user", "content": QUESTION},
                                                             {"role": "assistant", "content": "green"}]}
    recipe = make_recipe(datasets=[{"path": str(write_jsonl(folder / "d.jsonl", rows)), "type": "chat_template"}],
                         chat_template="llama3", on_invalid_example="skip")
    with pytest.raises(DataError, match="no training examples"):
        prepare_datasets(recipe, llama, FORMATS, set_chat_template(recipe, llama, TEMPLATES), parts=PARTS)


# ── without the vision plugin ────────────────────────────────────────────────


def test_with_the_vision_plugin_blocked_image_rows_are_bad_rows_and_nothing_opens_them(vision_tokenizer, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "vision")
    plugins = load_plugins()
    assert "vision" not in plugins.info and "image" not in hooks.content_parts(plugins)
    folder = tmp_path / "data"
    rows = shape_rows(folder, 2)
    rows[1]["messages"][0]["content"][0]["path"] = "images/nowhere.png"  # vision would say "missing image"
    rows += [{"images": ["images/shape0.png"], "messages": [{"role": "user", "content": QUESTION},
                                                           {"role": "assistant", "content": "red"}]},
             {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "red"}]}]
    data = write_jsonl(folder / "rows.jsonl", rows)

    def prepare_without(**keys):
        keys = {"base_model": "unused/model", "chat_template": "llama3_2_vision",
                "datasets": [{"path": str(data), "type": "chat_template"}], **keys}
        recipe = validate(RawRecipe(keys, None), plugins)
        return prepare_datasets(recipe, vision_tokenizer, hooks.dataset_formats(plugins),
                                set_chat_template(recipe, vision_tokenizer, hooks.chat_templates(plugins)),
                                parts=hooks.content_parts(plugins), plugins=plugins)

    skipped = prepare_without(on_invalid_example="skip")
    assert skipped.stats["train"]["rows_dropped"] == {"unsupported content": 3}
    assert len(skipped.examples) == 1 and "images" not in skipped.examples[0]  # the text-only row trains
    with pytest.raises(DataError, match=r"rows\.jsonl: row 1: message 0: unsupported content part .*: no installed "
                                        r"plugin handles 'image' parts"):
        prepare_without()
    rows_file = write_jsonl(folder / "rows.jsonl", rows[2:])
    assert rows_file == data
    with pytest.raises(DataError, match=r"row 1: field 'images' holds image parts, but no installed plugin handles "
                                        r"'image' parts"):
        prepare_without()


def test_with_the_vision_plugin_deleted_text_conversations_still_prepare(tiny_llama, tmp_path):
    """The built-in removed from a copy of the tree, as if moved into its own package and not installed."""
    import subprocess
    import sys

    from ftcore.testing import tree_without

    site = tree_without("vision", tmp_path / "site")
    folder = tmp_path / "data"
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]},
                          {"role": "assistant", "content": "red"}]},
            {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "blue"}]},
            *shape_rows(folder, 1)]
    data = write_jsonl(folder / "chat.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), chat_template="llama3",
                          on_invalid_example="skip", datasets=[{"path": str(data), "type": "chat_template"}])
    env = {k: v for k, v in os.environ.items() if k != "FTCORE_DISABLE_PLUGINS"}
    done = subprocess.run([sys.executable, "-m", "ftcore", "preprocess", str(recipe), "--dump", "dump.jsonl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": site, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    probe = "import importlib.util as u; print(u.find_spec('ftcore.plugins.vision'))"
    probe = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           env={**env, "PYTHONPATH": site})
    assert probe.stdout.strip() == "None"  # the copy really has no vision plugin
    assert "unsupported content" in done.stdout  # the image row: dropped and counted, not a crash
    records = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == [1, 2]
    assert records[0]["text"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>")


def test_prepared_images_survive_the_cache(vision_tokenizer, shapes, tmp_path):
    from ftcore.data.cache import load_or_prepare

    recipe = make_recipe(datasets=[{"path": str(shapes), "type": "chat_template"}],
                         dataset_prepared_path=str(tmp_path / "cache"))
    template = set_chat_template(recipe, vision_tokenizer, TEMPLATES)
    first = load_or_prepare(recipe, vision_tokenizer, FORMATS, template, parts=PARTS)
    second = load_or_prepare(recipe, vision_tokenizer, FORMATS, template, parts=PARTS)
    assert second.stats["cache"]["reused"] and second.examples == first.examples
    assert all(e["images"][0]["path"].endswith(".png") for e in second.examples)


# ── recipes ──────────────────────────────────────────────────────────────────


def test_preprocess_dump_names_each_examples_images(tiny_mllama, tmp_path):
    from ftcore.cli import main

    folder = tmp_path / "data"
    rows = shape_rows(folder, 3)
    encoded = base64.b64encode((folder / "images" / "shape2.png").read_bytes()).decode("ascii")
    rows[2]["messages"][0]["content"][0] = {"type": "image", "base64": encoded}
    rows.append({"messages": [{"role": "user", "content": "No picture here"},
                              {"role": "assistant", "content": "fine"}]})
    data = write_jsonl(folder / "mixed.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", **vision_recipe(tmp_path, tiny_mllama, data, val_set_size=0))
    assert main(["preprocess", str(recipe), "--dump", str(tmp_path / "dump.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text().splitlines()]
    assert [r.get("images") for r in records] == [
        [{"path": str((folder / "images" / "shape0.png").resolve())}],
        [{"path": str((folder / "images" / "shape1.png").resolve())}],
        [{"base64": f"<{len(encoded):,} characters>"}],  # the image's size, not megabytes of text
        None]
    assert all(r["text"].count("<|image|>") == (1 if r.get("images") else 0) for r in records)


def test_sample_packing_with_a_vision_model_is_refused_before_training(tiny_mllama, shapes, tmp_path):
    from ftcore.errors import RecipeError

    keys = vision_recipe(tmp_path, tiny_mllama, shapes, adapter="lora", sample_packing=True)
    with pytest.raises(RecipeError, match="sample_packing: cannot pack conversations with images"):
        run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["llama32-vision-lora", "llama32-vision-qlora"])
def test_shipped_vision_recipes_validate(name):
    import subprocess
    import sys

    path = REPO / "recipes" / f"{name}.yaml"
    assert path.read_text().startswith(f"# ftcore run recipes/{name}.yaml")
    done = subprocess.run([sys.executable, "-m", "ftcore", "validate", str(path)], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_size_on_a_text_model_is_an_error(tiny_llama, chat_file):
    with pytest.raises(Exception, match="image_size: is set but .* is not a vision model"):
        validate(RawRecipe({"base_model": str(tiny_llama), "image_size": 448,
                            "datasets": [{"path": str(chat_file), "type": "chat_template"}]}, None), PLUGINS)


# ── training runs ────────────────────────────────────────────────────────────


def lora_modules(state_dict_keys):
    return {key.split(".lora_")[0] for key in state_dict_keys if ".lora_" in key}


def model_logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_lora_learns_to_read_the_image_and_the_adapter_reloads_with_plain_peft(tiny_mllama, shapes, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    keys = vision_recipe(tmp_path, tiny_mllama, shapes, adapter="lora", lora_r=8, lora_alpha=16,
                         evaluators=["loss", "exact_match"], eval_on_start=True, eval_steps=18)
    result = run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    m, out = result.metrics, result.output_dir
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["eval_loss_final"] < m["eval_loss_initial"]
    # three colours, six held-out shapes: above a third means the answers come from the images
    assert m["eval_accuracy_initial"] == 0.0 and m["eval_accuracy_final"] > 0.5
    adapted = lora_modules(load_file(out / "adapter_model.safetensors"))
    assert adapted and not any("vision_model" in k or "multi_modal_projector" in k for k in adapted)
    assert {k.rsplit(".", 1)[-1] for k in adapted} == LANGUAGE_LORA
    assert any(".cross_attn." in k for k in adapted) and any(".self_attn." in k for k in adapted)

    processor = AutoProcessor.from_pretrained(out, backend="pil")  # the run folder holds the processor
    assert processor.tokenizer.chat_template == result.tokenizer.chat_template
    base = AutoModelForImageTextToText.from_pretrained(tiny_mllama, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out)
    data = prepare(result.tokenizer, shapes)
    batch = collator(processor)(data.examples[:3])
    torch.testing.assert_close(model_logits(reloaded, batch), model_logits(result.model, batch), rtol=0, atol=1e-5)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_mllama, dtype=torch.float32)
    assert (model_logits(plain, batch) - model_logits(reloaded, batch)).abs().max() > 1e-3


def test_qlora_quantizes_the_language_model_only(tiny_mllama, shapes, tmp_path):
    from safetensors.torch import load_file

    keys = vision_recipe(tmp_path, tiny_mllama, shapes, adapter="qlora", load_in_4bit=True, max_steps=8,
                         val_set_size=0)
    result = run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    model, m = result.model, result.metrics
    assert m["train_loss_last"] < m["train_loss_first"]
    kinds = {}
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "fc1", "multi_modal_projector")) and not hasattr(module, "base_layer"):
            part = "vision" if ("vision_model" in name or "projector" in name) else "language"
            kinds.setdefault(part, set()).add(type(module).__name__)
        elif hasattr(module, "base_layer") and name.endswith("q_proj"):
            kinds.setdefault("language", set()).add(type(module.base_layer).__name__)
    assert kinds == {"language": {"Linear4bit"}, "vision": {"Linear"}}
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    adapted = lora_modules(load_file(result.output_dir / "adapter_model.safetensors"))
    assert adapted and not any("vision_model" in k for k in adapted)


def test_full_fine_tuning_trains_the_language_model_with_the_vision_tower_frozen(tiny_mllama, shapes, tmp_path):
    from transformers import AutoModelForImageTextToText

    keys = vision_recipe(tmp_path, tiny_mllama, shapes, max_steps=4, val_set_size=0, learning_rate=1e-3)
    result = run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    before = AutoModelForImageTextToText.from_pretrained(tiny_mllama, dtype=torch.float32).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(result.output_dir, dtype=torch.float32).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any("vision_model" in k or "multi_modal_projector" in k for k in changed), [k for k in changed if "language" not in k]
    assert any("language_model.layers.2.cross_attn" in k for k in changed)
    assert any("language_model.layers.0.mlp" in k for k in changed)


# ── the exact_match evaluator ────────────────────────────────────────────────


def test_exact_match_scores_generations_after_normalising_case_and_space(processor, shapes):
    """``exact_match``, now the generation plugin's older name: the same score, image rows batched."""
    from ftcore.evaluation import EvalContext
    from ftcore.plugins.generation import evaluate_exact_match, last_reply

    tok = processor.tokenizer
    data = prepare(tok, shapes)
    examples = data.examples[:4]
    answers = ["  RED ", "green", "Blue  sky", "red"]  # right (case, space), right, wrong, right
    seen = []

    class Model:
        def generate(self, input_ids, attention_mask, pixel_values, cross_attention_mask, **kwargs):
            seen.append((input_ids, attention_mask, pixel_values, kwargs))
            replies = [tok(answers[i] + "<|eot_id|>", add_special_tokens=False)["input_ids"]
                       for i in range(len(input_ids))]
            width = max(len(r) for r in replies)
            eot = tok.convert_tokens_to_ids("<|eot_id|>")
            return torch.cat([input_ids, torch.tensor([r + [eot] * (width - len(r)) for r in replies])], dim=1)

    ctx = EvalContext(model=Model(), tokenizer=tok, recipe=make_recipe(), dataset=examples,
                      collator=collator(processor), batch_size=2)
    assert evaluate_exact_match(ctx) == {"accuracy": 0.75}
    start, _end = last_reply(examples[0])
    ids, mask, pixels, options = seen[0]
    assert ids[0][mask[0].bool()].tolist() == examples[0]["input_ids"][:start]  # the prompt stops before the reply
    assert pixels.shape[:2] == (4, 1) and options["do_sample"] is False  # one image per prompt, greedy


def test_the_shipped_lora_recipe_runs_on_a_tiny_model_and_its_adapter_loads_with_plain_peft(tiny_mllama, shapes,
                                                                                             tmp_path):
    """The issue's check: the real recipe, base model and data swapped for tiny local ones."""
    import subprocess
    import sys

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ftcore", "run", str(REPO / "recipes" / "llama32-vision-lora.yaml"),
         f"base_model={tiny_mllama}", f"datasets=[{{path: {shapes}, type: chat_template}}]", "max_steps=3",
         f"output_dir={out}", "optimizer=adamw_torch", "micro_batch_size=2", "gradient_accumulation_steps=2",
         "val_set_size=3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and "eval_exact_match_initial" in run["metrics"]
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_mllama), out)
    assert model.peft_config["default"].r == 16
    adapted = lora_modules(load_file(out / "adapter_model.safetensors"))
    assert adapted and not any("vision_model" in k for k in adapted)


@pytest.mark.parametrize("keys, vision_adapted", [
    ({"lora_target_linear": True}, False),
    ({"lora_target_modules": ["q_proj", "fc1"]}, False),
    ({"freeze_mm_modules": False}, True),
])
def test_lora_targets_stay_in_the_language_model_while_the_vision_modules_are_frozen(tiny_mllama, keys,
                                                                                       vision_adapted):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from ftcore.api import Stash
    from ftcore.plugins import lora, vision

    recipe = make_recipe(adapter="lora", **keys)
    model = AutoModelForImageTextToText.from_pretrained(tiny_mllama, dtype=torch.float32)
    stash = Stash()
    vision.prepare_model(recipe, model, None, stash)
    adapted = lora_modules(get_peft_model(model, lora.lora_config(recipe, model, stash)).state_dict())
    assert any("language_model" in k for k in adapted)
    assert any("vision_model" in k for k in adapted) == vision_adapted
    assert not any("multi_modal_projector" in k for k in adapted)


@pytest.mark.slow
def test_the_vision_module_installed_as_its_own_distribution_works_unchanged(tiny_mllama, shapes, tmp_path):
    """plugins/vision.py, byte for byte, as the only module of a pip package, on an ftcore without it."""
    import shutil
    import subprocess
    import sys

    from ftcore.testing import tree_without

    core = tree_without("vision", tmp_path / "core")
    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(REPO / "plugins" / "vision.py", source / "ftcore_vision.py")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "ftcore-vision"\nversion = "9.9.0"\ndependencies = ["ftcore"]\n\n'
        '[project.entry-points.ftcore]\nvision = "ftcore_vision"\n\n[tool.setuptools]\npy-modules = ["ftcore_vision"]\n')
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**{k: v for k, v in os.environ.items() if k != "FTCORE_DISABLE_PLUGINS"},
           "PYTHONPATH": os.pathsep.join([core, str(site)]), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run([sys.executable, "-m", "ftcore", "plugins", "--json"], capture_output=True, text=True,
                             env=env)
    rows = {row["name"]: row for row in json.loads(listing.stdout)["plugins"]}
    assert (rows["vision"]["source"], rows["vision"]["package"], rows["vision"]["version"]) == \
        ("entry point", "ftcore-vision", "9.9.0")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ftcore", "run", str(REPO / "recipes" / "llama32-vision-lora.yaml"),
         f"base_model={tiny_mllama}", f"datasets=[{{path: {shapes}, type: chat_template}}]", "max_steps=2",
         f"output_dir={out}", "optimizer=adamw_torch", "micro_batch_size=2", "val_set_size=3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and "eval_exact_match_initial" in run["metrics"]
    assert {"name": "vision", "package": "ftcore-vision"}.items() <= next(
        p for p in run["plugins"] if p["name"] == "vision").items()
    assert "processor_config.json" in run["files"]  # the plugin's save_artifacts saved the processor
