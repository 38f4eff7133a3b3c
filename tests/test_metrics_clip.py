"""CLIP score, CLIP accuracy and CLIP directional similarity with a tiny randomly initialised CLIPModel
(spec pix2pix_zerocon §7 44)."""

import math

import pytest
import torch
import torch.nn.functional as F

from styleforge.metrics import clip as C


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from styleforge.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    config = CLIPConfig(
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), tok


def _imgs(n, seed, h=40, w=48):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_preprocess_resizes_the_short_side_crops_the_centre_and_normalises():
    x = torch.zeros(1, 3, 40, 80)  # mid-grey in [-1, 1]
    pixels = C.clip_preprocess(x, 32)
    assert pixels.shape == (1, 3, 32, 32)
    expected = (0.5 - torch.tensor(C.CLIP_MEAN)) / torch.tensor(C.CLIP_STD)
    assert torch.allclose(pixels[0, :, 5, 5], expected, atol=1e-5)


def test_clip_score_is_the_cosine_of_projected_embeddings(tiny_clip):
    model, tok = tiny_clip
    images = _imgs(2, 1)
    score = C.clip_score(model, tok, images, "a photo of a cat")
    assert score.shape == (2,) and ((score >= -1) & (score <= 1)).all()
    with torch.no_grad():  # by hand from the model outputs
        out = model(input_ids=tok(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids,
                    pixel_values=C.clip_preprocess(images, 32))
    by_hand = F.cosine_similarity(out.image_embeds, out.text_embeds.expand(2, -1), dim=-1)
    assert torch.allclose(score, by_hand, atol=1e-5)


def test_clip_accuracy_counts_ties_as_failures(tiny_clip):
    model, tok = tiny_clip
    images = _imgs(3, 2)
    assert C.clip_accuracy(model, tok, images, "a photo of a cat", "a photo of a cat") == 0.0
    a = C.clip_accuracy(model, tok, images, "a photo of a cat", "a photo of a dog")
    b = C.clip_accuracy(model, tok, images, "a photo of a dog", "a photo of a cat")
    assert a in (0.0, 1 / 3, 2 / 3, 1.0) and a + b == pytest.approx(1.0)  # no exact ties between different texts


def test_directional_similarity_flips_sign_with_the_direction_and_is_nan_without_change(tiny_clip):
    model, tok = tiny_clip
    x, y = _imgs(2, 3), _imgs(2, 4)
    forward = C.clip_directional_similarity(model, tok, x, y, "a photo of a cat", "a painting of a dog")
    backward = C.clip_directional_similarity(model, tok, x, y, "a painting of a dog", "a photo of a cat")
    assert torch.allclose(forward, -backward, atol=1e-6) and (forward.abs() <= 1 + 1e-6).all()
    same = C.clip_directional_similarity(model, tok, x, x, "a photo of a cat", "a painting of a dog")
    assert all(math.isnan(v) for v in same.tolist())


def test_missing_clip_model_is_a_one_line_error():
    from styleforge.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError) as e:
        C.load_clip("nobody/no-such-clip", offline=True)
    assert "nobody/no-such-clip" in str(e.value) and "\n" not in str(e.value)
