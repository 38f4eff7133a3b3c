import numpy as np
import pytest
import torch

from styleforge.diffusion.pipeline import InversionPipeline
from styleforge.diffusion.prompts import PromptEncoder
from styleforge.errors import ModelNotFoundError


def test_sd1_prompt_encoding(sd1_components):
    enc = PromptEncoder([sd1_components["tokenizer"]], [sd1_components["text_encoder"]])
    c = enc(["a photo of a cat", "a photo of a dog"])
    assert c.embeds.shape == (2, 77, 32) and c.pooled is None
    assert not torch.allclose(c.embeds[0], c.embeds[1])
    assert enc.token_span("A photo of a animal", "animal") == [5]
    assert enc.token_span("A photo of a animal", "zebra") == []
    assert len(enc.token_span("a photo of a xylophone", "xylophone")) > 1  # split into several tokens, all found


def test_sdxl_prompt_encoding(sdxl_components):
    c = sdxl_components
    enc = PromptEncoder([c["tokenizer"], c["tokenizer_2"]], [c["text_encoder"], c["text_encoder_2"]])
    cond = enc("a photo of a cat").with_size(64, 48)
    assert cond.embeds.shape == (1, 77, 64) and cond.pooled.shape == (1, 32)
    assert cond.time_ids.tolist() == [[64, 48, 0, 0, 64, 48]]
    neg = enc("", negative=True)
    assert neg.embeds.abs().sum() == 0 and neg.pooled.abs().sum() == 0  # SDXL base zeros the empty prompt
    kw = cond.unet_kwargs(batch=3)
    assert kw["encoder_hidden_states"].shape[0] == 3 and kw["added_cond_kwargs"]["time_ids"].shape == (3, 6)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_pipeline_from_components_and_from_folder_agree(family, tiny_sd1_folder, tiny_sdxl_folder):
    from styleforge.testing import tiny_components

    folder = tiny_sd1_folder if family == "sd1" else tiny_sdxl_folder
    loaded = InversionPipeline.from_pretrained(folder)
    built = InversionPipeline(**tiny_components(family))
    for p in (loaded, built):
        p.set_progress_bar_config(disable=True)
    assert loaded.family == built.family == family
    assert loaded.model_id == str(folder)
    img = (np.random.RandomState(0).rand(40, 50, 3) * 255).astype(np.uint8)
    a = loaded(img, "a photo of a cat", kind="edit_friendly", num_inference_steps=4, seed=0)
    b = built(img, "a photo of a cat", kind="edit_friendly", num_inference_steps=4, seed=0)
    assert torch.allclose(a.inversion.latents, b.inversion.latents, atol=1e-5)
    assert a.reconstruction[0].size == (40, 32)  # the 5:4 image keeps its aspect ratio, 32 px on the shorter side


def test_pipeline_reconstruction_is_exact_with_kept_last_noise(sd1_components):
    pipe = InversionPipeline(**sd1_components)
    pipe.set_progress_bar_config(disable=True)
    img = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    out = pipe(img, "a cat", kind="edit_friendly", num_inference_steps=5, seed=1, zero_last_noise=False)
    again = pipe.decode_latents(out.inversion.x0[None])
    assert np.abs(np.asarray(out.reconstruction[0], dtype=int) - np.asarray(pipe.to_pil(again)[0], dtype=int)).max() <= 1


def test_loading_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not available"):
        InversionPipeline.from_pretrained("nobody/no-such-model", offline=True)
    with pytest.raises(ModelNotFoundError, match="not a diffusers model folder"):
        InversionPipeline.from_pretrained(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not found"):
        InversionPipeline.from_pretrained(str(tmp_path / "nothing"))
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ModelNotFoundError, match="could not load model"):
        InversionPipeline.from_pretrained(str(tmp_path))


def test_unsupported_architecture_is_refused(sd1_components):
    from diffusers import UNet2DModel

    bad = dict(sd1_components, unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
    with pytest.raises(ModelNotFoundError, match="unsupported architecture"):
        InversionPipeline(**bad)
