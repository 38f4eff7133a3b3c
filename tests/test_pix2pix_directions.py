"""Edit directions, sentence sources, the embedding cache, direction files and captioning (spec §7 A)."""

import pytest
import torch

from styleforge.errors import InputError
from styleforge.pix2pix_zerocon import Pix2PixZeroConPipeline
from styleforge.pix2pix_zerocon.captioning import resolve_caption
from styleforge.pix2pix_zerocon.directions import (EditDirection, EmbeddingCache, apply_direction,
                                                   direction_from_embeddings, direction_from_sentences,
                                                   load_embedding, prompt_variations, read_sentences,
                                                   template_sentences)

WIDTH = 32


class LinearStubEncoder:
    """E(sentence)[pos] = token vector + position vector: linear and position-wise, so swaps are exact."""

    def __init__(self, length=77, width=8):
        g = torch.Generator().manual_seed(0)
        self.tokens, self.positions, self.length = {}, torch.randn(length, width, generator=g), length
        self.g, self.width, self.calls = g, width, 0

    def _vec(self, word):
        if word not in self.tokens:
            self.tokens[word] = torch.randn(self.width, generator=self.g)
        return self.tokens[word]

    def __call__(self, sentences):
        self.calls += 1
        out = self.positions.repeat(len(sentences), 1, 1)
        for i, s in enumerate(sentences):
            for j, word in enumerate(["<bos>"] + s.split() + ["<eos>"]):
                out[i, j] += self._vec(word)
        return out


@pytest.fixture(scope="module")
def pipe(sd1_components):
    return Pix2PixZeroConPipeline(**sd1_components)


def test_direction_sign_is_target_minus_source():
    enc = LinearStubEncoder()
    d = direction_from_sentences(enc, ["a cat sits here"], ["a dog sits here"])
    assert torch.allclose(enc(["a cat x"]) + d.delta, enc(["a dog x"]), atol=1e-6)


def test_direction_shape_antisymmetry_and_identical_lists(pipe):
    enc = pipe.encode_sentences
    src, tgt = ["a photo of a cat", "a cat on the sofa"], ["a photo of a dog", "a dog", "a dog in the garden"]
    d = direction_from_sentences(enc, src, tgt)
    assert d.delta.shape == (1, 77, WIDTH) and d.delta.dtype == torch.float32
    assert d.num_source == 2 and d.num_target == 3
    assert torch.allclose(direction_from_sentences(enc, tgt, src).delta, -d.delta, atol=1e-6)
    assert torch.equal(direction_from_sentences(enc, src, src).delta, torch.zeros_like(d.delta))
    # order and duplication do not matter for a mean
    shuffled = direction_from_sentences(enc, src[::-1] * 3, tgt[::-1] * 2)
    assert torch.allclose(shuffled.delta, d.delta, atol=1e-6)
    # the causal text encoder sees only BOS at position 0, whatever the sentence
    assert d.delta[:, 0].abs().max() < 1e-6
    assert d.delta[:, 1:].abs().max() > 1e-3


def test_mean_embeddings_are_cached_per_model_and_sentence_list(tmp_path):
    enc = LinearStubEncoder()
    cache = EmbeddingCache(tmp_path)
    first = direction_from_sentences(enc, ["a cat"], ["a dog"], model_id="m1", cache=cache)
    calls = enc.calls
    again = direction_from_sentences(enc, ["a cat"], ["a dog"], model_id="m1", cache=cache)
    assert enc.calls == calls and torch.equal(first.delta, again.delta)  # both means read from disk
    direction_from_sentences(enc, ["a cat"], ["a horse"], model_id="m1", cache=cache)
    assert enc.calls == calls + 1  # the cat mean is shared, only the horse mean is new
    direction_from_sentences(enc, ["a cat"], ["a dog"], model_id="m2", cache=cache)
    assert enc.calls == calls + 3  # another model: nothing reused
    assert len(list(tmp_path.glob("*.safetensors"))) == 5  # m1: cat, dog, horse; m2: cat, dog


def test_pix2pix_zero_embedding_files_load_as_they_are(tmp_path):
    g = torch.Generator().manual_seed(1)
    cat, dog = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    torch.save(cat, tmp_path / "cat.pt")
    torch.save(dog.half(), tmp_path / "dog.pt")  # pix2pix-zero's horse/zebra files are fp16
    loaded = load_embedding(tmp_path / "dog.pt")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, dog.half().float())
    d = direction_from_embeddings(load_embedding(tmp_path / "cat.pt"), loaded)
    assert torch.equal(d.delta, dog.half().float() - cat)
    # directions written by us round-trip in both formats
    for name in ("d.safetensors", "d.pt"):
        back = EditDirection.load(d.save(tmp_path / name))
        assert torch.equal(back.delta, d.delta)
    torch.save(torch.randn(77, 768), tmp_path / "flat.pt")
    assert load_embedding(tmp_path / "flat.pt").shape == (1, 77, 768)


def test_bad_embedding_files_are_refused(tmp_path):
    torch.save(torch.randn(2, 77, 8), tmp_path / "batch.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    for name in ("batch.pt", "junk.pt", "missing.pt"):
        with pytest.raises(InputError):
            load_embedding(tmp_path / name)
    with pytest.raises(InputError, match="shape"):
        direction_from_embeddings(torch.zeros(1, 77, 8), torch.zeros(1, 77, 16))


def test_edit_multiplier_is_linear():
    c = torch.randn(1, 77, 8)
    delta = torch.randn(1, 77, 8)
    assert torch.allclose(apply_direction(c, delta, 2.0) - c, 2 * (apply_direction(c, delta, 1.0) - c), atol=1e-6)
    with pytest.raises(InputError, match="another model"):
        apply_direction(c, torch.zeros(1, 77, 4))


def test_template_sentences_and_prompt_variations():
    cats = template_sentences("cat", 1000)
    assert len(cats) == 1000 == len(set(cats)) and all("cat" in s for s in cats)
    assert template_sentences("cat", 7) == cats[:7]
    dogs = template_sentences("dog", 1000)
    assert [s.replace("dog", "cat") for s in dogs] == cats  # identical contexts on both sides
    assert template_sentences("owl", 3)[0] == "a photo of an owl"
    variations = prompt_variations("a cat on a sofa", 20)
    assert variations[0] == "a cat on a sofa" and len(variations) == 20 and all("a cat on a sofa" in v for v in variations)
    with pytest.raises(InputError):
        template_sentences("  ")


def test_sentence_files(tmp_path):
    (tmp_path / "s.txt").write_text("a cat\n\n  a cat on a mat  \n")
    assert read_sentences(tmp_path / "s.txt") == ["a cat", "a cat on a mat"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="not found"):
        read_sentences(tmp_path / "nope.txt")


def test_pipeline_builds_each_kind_of_edit(pipe, tmp_path):
    words = pipe.build_direction(source="cat", target="dog", num_sentences=30, cache=False)
    assert words.num_source == 30 and words.source == "cat"
    prompts = pipe.build_direction(source_prompt="a photo of a cat", target_prompt="a photo of a dog", cache=False)
    expected = pipe.encode_sentences(["a photo of a dog"]) - pipe.encode_sentences(["a photo of a cat"])
    assert prompts.num_source == 1 and torch.allclose(prompts.delta, expected, atol=1e-6)
    (tmp_path / "src.txt").write_text("a photo of a cat\n")
    (tmp_path / "tgt.txt").write_text("a photo of a dog\n")
    banks = pipe.build_direction(source_sentences=tmp_path / "src.txt", target_sentences=tmp_path / "tgt.txt", cache=False)
    assert torch.allclose(banks.delta, prompts.delta, atol=1e-6)
    ready = pipe.build_direction(direction=prompts.save(tmp_path / "d.safetensors"))
    assert torch.equal(ready.delta, prompts.delta) and ready.source == "a photo of a cat"


def test_pipeline_refuses_unclear_edits(pipe):
    with pytest.raises(InputError, match="no edit"):
        pipe.build_direction()
    with pytest.raises(InputError, match="not several"):
        pipe.build_direction(source="cat", target="dog", source_prompt="a cat", target_prompt="a dog")
    with pytest.raises(InputError, match="both"):
        pipe.build_direction(source="cat")
    with pytest.raises(InputError, match="width"):
        pipe.build_direction(direction=torch.zeros(1, 77, 768))
    with pytest.raises(InputError, match="unknown sentence source"):
        pipe.build_direction(source="cat", target="dog", sentence_source="gpt3")


def test_caption_resolution():
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    assert resolve_caption(img, "  a cat  ") == "a cat"
    assert resolve_caption(img, None, lambda image: "a stub caption") == "a stub caption"
    with pytest.raises(InputError, match="--caption"):
        resolve_caption(img, None, None)
    with pytest.raises(InputError, match="empty"):
        resolve_caption(img, "   ")
    # tests run offline and BLIP's weights are not here: one clear message naming both ways out
    with pytest.raises(InputError, match="--caption.*blip-image-captioning-base"):
        resolve_caption(img, None, "auto")


def _tiny_blip_folder(folder):
    """A randomly initialised BLIP captioner with a 14-word vocabulary, saved like a hub snapshot."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "cat", "dog", "photo", "of", "on", "the", "sofa"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    text = BlipTextConfig(vocab_size=len(words), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64, bos_token_id=5,
                          pad_token_id=0, sep_token_id=3, eos_token_id=3)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                            projection_dim=32)).eval().save_pretrained(folder)
    return folder


def test_blip_captions_when_its_weights_are_available(pipe, tmp_path):
    folder = _tiny_blip_folder(tmp_path / "blip")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = pipe(image, source="cat", target="dog", sentence_source="single", captioner=str(folder),
               num_inference_steps=1, seed=0, output_type="latent")
    words = out.caption.split()
    # LAVIS-like decoding: at least min_length tokens, all from the captioner's vocabulary
    assert len(words) >= 9 and set(words) <= {"a", "cat", "dog", "photo", "of", "on", "the", "sofa"}
    assert out.params["caption"] == out.caption
