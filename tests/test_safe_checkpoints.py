"""Lightning-1.x DiffAE checkpoints load without Lightning and without running code; malicious pickles are refused.

The fixture is written the way pytorch-lightning 1.4 writes DiffAE's ``last.ckpt``: ``torch.save`` (pickle
protocol 2) of ``{epoch, global_step, pytorch-lightning_version, state_dict, callbacks, optimizer_states,
lr_schedulers, native_amp_scaling_state, hparams_name, hyper_parameters}``, the callback state keyed by the
``ModelCheckpoint`` class itself, ``state_dict`` holding ``model.*`` / ``ema_model.*`` / ``x_T`` (and
``conds_mean`` / ``conds_std`` in the latent model's file), ``hyper_parameters`` DiffAE's
``conf.as_dict_jsonable()``. The Lightning classes come from throwaway modules removed before loading.
"""

import argparse
import os
import sys
import types
import typing
from contextlib import contextmanager

import pytest
import torch

from styleforge.checkpoints import load_checkpoint
from styleforge.errors import ModelNotFoundError
from styleforge.osasis.models import DiffAEAutoencoder, LatentDDIMNet, load_model
from styleforge.osasis.tiny import reinit_zero_layers


@contextmanager
def throwaway_classes(*dotted: str):
    """Register modules holding classes of these dotted names; remove them (and their parents) afterwards."""
    added = []
    classes = {}
    try:
        for full in dotted:
            module, name = full.rsplit(".", 1)
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod not in sys.modules:
                    sys.modules[mod] = types.ModuleType(mod)
                    added.append(mod)
            cls = type(name, (), {"__module__": module})
            setattr(sys.modules[module], name, cls)
            classes[full] = cls
        yield classes
    finally:
        for mod in reversed(added):
            sys.modules.pop(mod, None)


# DiffAE TrainConfig fields of a tiny architecture DiffAE itself could build (GroupNorm(32) everywhere, as DiffAE
# hard-codes); as_dict_jsonable keeps tuples and plain values and drops enums
TINY_HPARAMS = {"img_size": 16, "net_ch": 32, "net_ch_mult": (1, 2), "net_num_res_blocks": 1, "net_attn": (8,),
                "net_beatgans_embed_channels": 32, "dropout": 0.1, "net_beatgans_attn_head": 1,
                "net_enc_channel_mult": (1, 2), "net_enc_num_res_blocks": 1, "style_ch": 16, "batch_size": 64,
                "lr": 0.0001, "warmup": 0, "fp16": True, "net_latent_num_hid_channels": 32, "net_latent_layers": 3,
                "net_latent_skip_layers": [1, 2], "net_latent_time_emb_channels": 8, "net_latent_use_norm": True,
                "net_latent_condition_bias": 1, "name": "ffhq256_autoenc", "model_conf": {"dropout": 0.1}}


class _WarmupLR:
    def __init__(self, warmup):
        self.warmup = warmup

    def __call__(self, step):
        return min(step, self.warmup) / self.warmup


def lightning_ckpt(path, tiny, *, latent: bool = False, hparams=None, extra=None):
    """A faithful Lightning 1.4.x ``last.ckpt`` of DiffAE's ``LitModel`` for the tiny models."""
    ae, lat = tiny["diffae"], tiny["latent"]
    sd = {}
    for root in ("model.", "ema_model."):
        sd.update({root + k: v.clone() for k, v in ae.state_dict().items()})
        if latent:
            sd.update({root + "latent_net." + k: v.clone() for k, v in lat.state_dict().items() if not k.startswith("conds_")})
    sd["x_T"] = torch.randn(2, 3, 16, 16)
    if latent:
        sd["conds_mean"], sd["conds_std"] = lat.conds_mean.clone(), lat.conds_std.clone()
    sd["model.out.2.bias"] = sd["model.out.2.bias"] + 1  # the non-EMA copy differs
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=_WarmupLR(5000))  # DiffAE's schedule: lr_lambdas -> dicts
    with throwaway_classes("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint") as classes:
        ckpt = {
            "epoch": 12, "global_step": 1000, "pytorch-lightning_version": "1.4.5", "state_dict": sd,
            "callbacks": {classes["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]: {
                "monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
                "dirpath": "checkpoints/ffhq256_autoenc"}},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [warmup.state_dict()],
            "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                         "growth_interval": 2000, "_growth_tracker": 7},
            "hparams_name": None, "hyper_parameters": dict(TINY_HPARAMS) if hparams is None else hparams,
            **(extra or {}),
        }
        torch.save(ckpt, path)
    assert "pytorch_lightning" not in sys.modules
    return path


TINY_DIFFAE32 = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                     embed_channels=32, enc_channel_mult=(1, 2), enc_num_res_blocks=1, enc_out_channels=16)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    latent = LatentDDIMNet(num_channels=16, num_hid_channels=32, num_layers=3, num_time_emb_channels=8)
    with torch.no_grad():
        latent.conds_mean.normal_()
        latent.conds_std.uniform_(0.5, 1.5)
    return {"diffae": reinit_zero_layers(DiffAEAutoencoder(**TINY_DIFFAE32)).eval(), "latent": latent.eval()}


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_plain_weights_only_load_refuses_the_lightning_file(tiny, tmp_path):
    """The fixture is a real Lightning-style pickle: plain weights_only loading fails on the callback class."""
    path = lightning_ckpt(tmp_path / "last.ckpt", tiny)
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(path, weights_only=True)


def test_lightning_checkpoint_loads_without_lightning(tiny, tmp_path):
    path = lightning_ckpt(tmp_path / "last.ckpt", tiny, latent=True)
    obj = load_checkpoint(path, "DiffAE checkpoint")
    assert obj["callbacks"] == {} and obj["global_step"] == 1000 and obj["hyper_parameters"]["net_ch"] == 32
    assert obj["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-4 and obj["lr_schedulers"][0]["lr_lambdas"] == [{"warmup": 5000}]
    # the architecture comes from the saved TrainConfig fields (no config passed), EMA weights by default
    ae = load_model(DiffAEAutoencoder, path)
    assert ae.config.model_channels == 32 and _same(ae, tiny["diffae"])
    assert not torch.equal(load_model(DiffAEAutoencoder, path, use_ema=False).out[2].bias, ae.out[2].bias)
    lat = load_model(LatentDDIMNet, path)
    assert lat.config.num_layers == 3 and _same(lat, tiny["latent"])
    assert "pytorch_lightning" not in sys.modules


def test_omegaconf_and_namespace_hyperparameters_are_dropped(tiny, tmp_path):
    names = ("omegaconf.dictconfig.DictConfig", "omegaconf.base.ContainerMetadata")
    with throwaway_classes(*names) as classes:
        meta = classes[names[1]]()
        meta.__dict__.update(ref_type=typing.Any, object_type=dict, key_type=typing.Any, element_type=typing.Any,
                             optional=True, key=None, flags={}, resolver_cache={})
        conf = classes[names[0]]()
        conf.__dict__.update(_metadata=meta, _parent=None, _content={"lr": 1e-4})
        hp = {"conf": conf, "args": argparse.Namespace(lr=1e-4, gpus=[0])}
        # Lightning 1.4 with omegaconf hparams also stores their type under "hparams_type"
        path = lightning_ckpt(tmp_path / "omega.ckpt", tiny, hparams=hp, extra={"hparams_type": classes[names[0]]})
    assert "omegaconf" not in sys.modules
    obj = load_checkpoint(path)
    assert obj["hyper_parameters"] == {} and "hparams_type" not in obj and set(obj["state_dict"]) >= {"ema_model.out.2.weight", "x_T"}
    assert _same(load_model(DiffAEAutoencoder, path, config=TINY_DIFFAE32), tiny["diffae"])


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_run_nothing(tiny, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny["diffae"].state_dict(), "payload": _RunsCode(marker)}, path)
    with pytest.raises(ModelNotFoundError, match=r"evil\.ckpt is not a DiffAE checkpoint .*system.*unsafe"):
        load_checkpoint(path, "DiffAE checkpoint")
    with pytest.raises(ModelNotFoundError, match="unsafe"):
        load_model(DiffAEAutoencoder, path, config=TINY_DIFFAE32)
    assert not marker.exists()
    # a global under an allowed (Lightning) name is only ever a stand-in, even while the real function is importable
    with throwaway_classes("pytorch_lightning.utilities.Runner") as classes:
        runner = classes["pytorch_lightning.utilities.Runner"]
        runner.__init__ = lambda self, p: open(p, "w").close()
        payload = type("Payload", (), {"__reduce__": lambda self: (runner, (str(marker),))})()
        torch.save({"state_dict": {"w": torch.ones(2)}, "cb": payload}, tmp_path / "e2.ckpt")
        obj = load_checkpoint(tmp_path / "e2.ckpt")
    assert not marker.exists() and set(obj) == {"state_dict"} and torch.equal(obj["state_dict"]["w"], torch.ones(2))


def test_oneshot_apply_with_a_lightning_diffae(tiny, tmp_path):
    """``oneshot apply --checkpoint iter_200.pt --model last.ckpt``: the DiffAE path of the CLI reads the Lightning file."""
    import numpy as np
    from PIL import Image

    from styleforge.cli.main import main

    last = lightning_ckpt(tmp_path / "last.ckpt", tiny)
    ckpt = tmp_path / "iter_200.pt"
    torch.save({"iter": 200, "diffae_B": tiny["diffae"].state_dict(), "model_map": {}, "optim_map": {}}, ckpt)
    rs = np.random.RandomState(0)
    for name in ("art.png", "p0.png"):
        Image.fromarray(rs.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    assert main(["oneshot", "apply", "--checkpoint", str(ckpt), "--model", str(last), "--style", str(tmp_path / "art.png"),
                 "--input", str(tmp_path / "p0.png"), "-o", str(out), "--encode-steps", "4", "--decode-steps", "4"]) == 0
    assert (out / "p0.png").exists()
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _RunsCode(tmp_path / "pwned")}, evil)
    assert main(["oneshot", "apply", "--checkpoint", str(ckpt), "--model", str(evil), "--style", str(tmp_path / "art.png"),
                 "--input", str(tmp_path / "p0.png"), "-o", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "pwned").exists()


def test_oneshot_defaults_are_the_released_recipe():
    """Training defaults to the official plan and SPN grid-index input; text edits to normalised CLIP inputs."""
    from styleforge.cli.main import build_parser
    from styleforge.osasis.train import TrainConfig

    parser = build_parser()
    train = parser.parse_args(["oneshot", "train", "--style", "a.png", "-o", "run"])
    assert (train.plan, train.spn_time_input, train.clip_preprocess) == ("official", "grid_index", "official")
    assert (TrainConfig().plan, TrainConfig().spn_time_input) == ("official", "grid_index")
    apply = parser.parse_args(["oneshot", "apply", "--run", "run", "--input", "p.png", "-o", "out"])
    assert apply.clip_preprocess == "proper"
    pair = parser.parse_args(["pair", "apply", "--style", "s", "--prompt", "p", "-o", "o.png"])
    assert (pair.scheduler, pair.style_start, pair.style_scale) == ("euler", None, [3.0])
