"""The Gradio page of ``styleforge serve``: one tab per method plus Compare, laid out on :mod:`.handlers`.

The main inputs of each tab are laid out by hand; its "advanced" section is generated from the command's parser
(:func:`styleforge.options.method_options`), so a flag added to a command appears here with its default and help.
Runs share one queue slot (``concurrency_id="gpu"``, limit 1) and a lock (:class:`~.handlers.JobRunner`), so two
requests never use the device at once; Cancel stops the running loop at its next step.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from .. import options
from ..cli import common
from ..errors import InputError
from . import handlers as H

log = logging.getLogger("styleforge.web")

EDITS = 3  # style/mask edits on the region tab
DEFAULT_MAX_FILE_SIZE = "50mb"
RESULT_OUTPUTS = 5  # gallery, files, settings, command, status

_RUNNERS: "weakref.WeakSet[H.JobRunner]" = weakref.WeakSet()


def examples_folder() -> Path | None:
    """The repository's ``examples/`` (present in a source checkout, not in an installed wheel)."""
    folder = Path(__file__).resolve().parents[3] / "examples"
    return folder if (folder / "content_landscape.png").is_file() else None


# ------------------------------------------------------------------------------------ cancel and progress


def _install_cancel_hook() -> None:
    """Check for Cancel at every step the page's progress bar sees (the pipelines' own tqdm loops)."""
    if getattr(gr.Progress, "_styleforge_hook", False):
        return
    update, step = gr.Progress.update, gr.Progress.__next__

    def checked_update(self, *a, **k):
        for runner in list(_RUNNERS):
            runner.check()
        return update(self, *a, **k)

    def checked_next(self):
        for runner in list(_RUNNERS):
            runner.check()
        return step(self)

    gr.Progress.update, gr.Progress.__next__ = checked_update, checked_next
    gr.Progress._styleforge_hook = True


def image_input(label: str, **kw) -> gr.Image:
    """An image upload that reaches the command as the uploaded file, and refuses unreadable files with the
    loaders' own message instead of a decoder error."""
    # filepath + image_mode=None: no re-encoding (EXIF and metadata kept). The check wraps this one instance's
    # preprocess: a gr.Image subclass would make gradio write a .pyi stub beside this file at import.
    image = gr.Image(label=label, type="filepath", image_mode=None, format="png", sources=["upload", "clipboard"],
                     height=kw.pop("height", 240), **kw)
    image.preprocess = _readable_or_refused(image.preprocess, label)
    # refused at upload already: the message, and the slot emptied so the next run works
    image.upload(_upload_checker(label), inputs=image, outputs=image, preprocess=False, show_progress="hidden",
                 concurrency_limit=None, concurrency_id="uploads")  # queued (messages need it), never behind a run
    return image


def _upload_checker(label: str) -> Callable:
    def check(payload):
        path = (payload or {}).get("path") if isinstance(payload, dict) else None
        if not path:
            return gr.skip()
        refusal = H.upload_refusal(path, (payload or {}).get("orig_name") or Path(path).name, label)
        if refusal is None:
            return gr.skip()
        gr.Warning(refusal, duration=None)
        return None

    return check


def _readable_or_refused(preprocess: Callable, label: str) -> Callable:
    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:
            from ..io import load_image

            path = str(getattr(payload, "path", "") or "")
            name = getattr(payload, "orig_name", None) or Path(path).name or "upload"
            try:
                load_image(path, name=label)
            except InputError as refusal:
                raise gr.Error(f"{label}: {H.error_message(refusal, {path: name})}") from None
            raise gr.Error(f"{label}: {name} could not be read ({type(e).__name__})") from None

    return checked


def mask_editor(label: str, layers: Sequence[str]) -> gr.ImageEditor:
    return gr.ImageEditor(
        label=label, type="pil", format="png", image_mode="RGBA", sources=["upload", "clipboard"], height=420,
        brush=gr.Brush(colors=["#ffffff", "#ff3030", "#30a0ff"], default_color="#ffffff", color_mode="fixed",
                       default_size=24),
        layers=gr.LayerOptions(layers=list(layers), allow_additional_layers=False), transforms=(),
        eraser=gr.Eraser(default_size=24))


# ------------------------------------------------------------------------------ advanced controls, generated


def advanced_controls(command: str, main: Sequence[str], defaults: dict | None = None,
                      server: H.ServerSettings | None = None) -> list[tuple[options.Option, gr.Component]]:
    """One control per option of ``command`` that is not a main input, grouped as in ``--help``.

    ``defaults`` overrides what a control starts at on the page (the command line still shows the change).
    """
    defaults = dict(defaults or {})
    if server is not None:
        defaults = {**server.values_for(command), **defaults}
    pairs = []
    groups: dict[str, list[options.Option]] = {}
    for option in H.advanced_options(command, main):
        groups.setdefault(option.group or "options", []).append(option)
    with gr.Accordion("Advanced (the command's other options, at its defaults)", open=False):
        for group, members in groups.items():
            gr.Markdown(f"**{group}**")
            with gr.Row(equal_height=False):
                for option in members:
                    pairs.append((option, _control(option, defaults.get(option.dest))))
    return pairs


def _control(option: options.Option, override: Any) -> gr.Component:
    kind = H.control_kind(option)
    value = H.shown_default(option) if override is None else override
    label = option.flag + (" (required)" if option.required else "")
    info = option.help.replace("%(default)s", str(option.default))
    common_kw = dict(label=label, info=info, min_width=220, elem_id=f"opt-{option.dest}")
    if kind == "checkbox":
        return gr.Checkbox(value=bool(value), **common_kw)
    if kind == "dropdown":
        return gr.Dropdown(choices=list(option.choices), value=value, **common_kw)
    if kind == "number":
        return gr.Number(value=value, precision=0 if option.kind == "int" else None, minimum=option.minimum,
                         maximum=option.maximum, **common_kw)
    return gr.Textbox(value="" if value is None else str(value), max_lines=1, **common_kw)


# ------------------------------------------------------------------------------------------- results


def result_panel(label: str = "Result") -> list[gr.Component]:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(label=label, columns=3, height=380, format="png", object_fit="contain",
                                 elem_classes=["sf-result"])
        with gr.Column(scale=2):
            status = gr.Markdown(elem_classes=["sf-status"])
            files = gr.File(label="Download: the command's PNG files, metadata intact", file_count="multiple",
                            interactive=False, height=150, elem_classes=["sf-files"])
            command = gr.Textbox(label="Equivalent command", buttons=["copy"], interactive=False, lines=3,
                                 elem_classes=["sf-command"])
            with gr.Accordion("Settings of this result (its PNG metadata)", open=False):
                settings = gr.JSON(label="settings")
    return [gallery, files, settings, command, status]


def _show(result: H.JobResult | None) -> list:
    """The values of :func:`result_panel`'s outputs (``None``: only their number matters)."""
    if result is None:
        return [None] * RESULT_OUTPUTS
    return [result.images, result.files, result.settings, result.command, f"**{result.message}**"]


class App:
    """The page and its state: server settings, the per-session workspace, the one-job runner."""

    def __init__(self, server: H.ServerSettings, workspace: H.Workspace | None = None):
        self.server = server
        self.workspace = workspace or H.Workspace()
        self.runner = H.JobRunner()
        _RUNNERS.add(self.runner)
        _install_cancel_hook()

    # every run goes through here: one job at a time, errors as one line, the traceback only in the log
    def job(self, kind: str, build: Callable[..., H.JobResult], upload_slots: Sequence[int] = (),
            show: Callable[[H.JobResult], list] = _show):
        def run(request: gr.Request, progress=gr.Progress(track_tqdm=True), *inputs):
            session = getattr(request, "session_hash", None)
            names = {p: Path(p).name for i in upload_slots if i < len(inputs) for p in _paths(inputs[i])}
            try:
                with self.runner.job(session):
                    progress(0, desc="starting")
                    job = self.workspace.new_job(session, kind)
                    result = build(session, job, names, *inputs)
            except H.Cancelled as e:
                gr.Warning(str(e))
                return [gr.update()] * (len(show(None)) - 1) + [f"**{e}**"]
            except Exception as e:  # every failure becomes one readable line; the server keeps serving
                raise gr.Error(H.error_message(e, names), print_exception=False) from None
            return show(result)

        return run

    def cancel(self, request: gr.Request):
        stopped = self.runner.cancel(getattr(request, "session_hash", None))
        return "**cancelling: the run stops at its next step**" if stopped else "nothing of yours is running"

    def wire(self, button: gr.Button, cancel: gr.Button, fn, inputs: list, outputs: list, extra_then=None,
             api_name: str | None = None):
        event = button.click(fn, inputs=inputs, outputs=outputs, concurrency_limit=1, concurrency_id="gpu",
                             show_progress="full", api_name=api_name)
        if extra_then is not None:
            event.then(*extra_then)
        cancel.click(self.cancel, inputs=None, outputs=outputs[-1:], cancels=[event], concurrency_limit=None,
                     concurrency_id="cancel")
        return event


def _paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _split(inputs: Sequence, n_main: int) -> tuple[Sequence, Sequence]:
    return inputs[:n_main], inputs[n_main:]


def _buttons() -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_classes=["sf-run"])
        cancel = gr.Button("Cancel", variant="stop", elem_classes=["sf-cancel"])
    return run, cancel


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    if float(value) != int(float(value)):
        raise InputError(f"expected a whole number, got {value}")
    return int(float(value))


# ---------------------------------------------------------------------------------------------- tabs


REGION_MAIN = ("content", "style", "mask", "strength", "paste_back", "seed")  # laid out by hand on the region tab


def region_tab(app: App) -> None:
    main = REGION_MAIN
    styles, masks = [], []

    def edit(k: int) -> None:
        with gr.Row():
            styles.append(image_input(f"Style {k + 1}", height=170, elem_id=f"region-style-{k + 1}"))
            masks.append(image_input(f"Mask {k + 1}: optional upload (instead of painting layer {k + 1})", height=170,
                                     elem_id=f"region-mask-{k + 1}"))

    with gr.Row():
        with gr.Column(scale=3):
            editor = mask_editor("Content: upload, then paint the region to restyle with the brush (layer k = mask of "
                                 "style k; nothing painted = the whole image)", [f"Mask {k + 1}" for k in range(EDITS)])
            examples = gr.Column()
        with gr.Column(scale=2):
            edit(0)
            strength = gr.Slider(0, 1, value=H.parser_default("region", "strength"), step=0.05, label="--strength",
                                 info=_help("region", "strength"))
            paste_back = gr.Checkbox(value=bool(H.parser_default("region", "paste_back")), label="--paste-back",
                                     info=_help("region", "paste_back"))
            seed = gr.Number(value=H.parser_default("region", "seed"), precision=0, label="--seed")
            with gr.Accordion("More edits (one style and mask each, applied in turn)", open=False):
                for k in range(1, EDITS):
                    edit(k)
    advanced = advanced_controls("region", main, server=app.server)
    run, cancel = _buttons()
    outputs = result_panel()
    folder = examples_folder()
    if folder is not None:
        with examples:
            gr.Examples([[str(folder / "content_landscape.png"), str(folder / "style_coffee.png"), None],
                         [str(folder / "content_landscape.png"), str(folder / "style_astronaut.png"),
                          str(folder / "mask_meadow.png")]],
                        inputs=[editor, styles[0], masks[0]], label="Examples (the bundled model works offline)",
                        example_labels=["landscape + coffee: paint the region", "landscape + astronaut, meadow mask"])

    def build(session, job, names, editor_value, *rest):
        main_values, raws = _split(rest, 2 * EDITS + 3)
        style_paths, mask_uploads = list(main_values[:EDITS]), list(main_values[EDITS:2 * EDITS])
        strength_v, paste_v, seed_v = main_values[2 * EDITS:]
        content, layer_masks = _editor_content(editor_value, job, "content")
        masks_final = []
        for k in range(EDITS):
            if mask_uploads[k]:
                masks_final.append(mask_uploads[k])
            elif k < len(layer_masks) and layer_masks[k] is not None:
                masks_final.append(H.save_mask(layer_masks[k], job, f"mask{k + 1}"))
            else:
                masks_final.append(None)
        extra = H.values_from_controls("region", [o for o, _ in advanced], raws)
        return H.region(job, app.server, content, style_paths, masks_final, strength_v, paste_v, _int(seed_v), extra,
                        names)

    inputs = [editor, *styles, *masks, strength, paste_back, seed, *[c for _, c in advanced]]
    app.wire(run, cancel, app.job("region", build, upload_slots=range(1, 1 + 2 * EDITS)), inputs, outputs, api_name="region")


def _editor_content(value, job: Path, name: str) -> tuple[str | None, list]:
    """(content PNG path, one mask per painted layer) from an image editor's value."""
    if not value or value.get("background") is None:
        return None, []
    content = H.save_input(value["background"], job, name)
    return content, [H.mask_from_layer(layer) for layer in value.get("layers") or []]


def _help(command: str, dest: str) -> str:
    return next((o.help for o in options.method_options(command) if o.dest == dest), "")


def appearance_tab(app: App) -> None:
    main = ("structure", "appearance", "structure_mask", "appearance_mask", "domain", "prompt", "object_noun", "seed",
            "num_inference_steps")
    with gr.Row():
        structure = mask_editor("Structure image (optionally paint its object mask)", ["Object mask"])
        appearance = mask_editor("Appearance image (optionally paint its object mask)", ["Object mask"])
    with gr.Row():
        structure_mask = image_input("Structure mask (optional upload)", height=140)
        appearance_mask = image_input("Appearance mask (optional upload)", height=140)
        with gr.Column():
            domain = gr.Textbox(label="--domain", info=_help("appearance", "domain"), value="object")
            prompt = gr.Textbox(label="--prompt", info=_help("appearance", "prompt"))
            noun = gr.Textbox(label="--object-noun", info=_help("appearance", "object_noun"))
        with gr.Column():
            seed = gr.Number(value=H.parser_default("appearance", "seed"), precision=0, label="--seed")
            steps = gr.Number(value=H.parser_default("appearance", "num_inference_steps"), precision=0, label="--steps",
                              info=_help("appearance", "num_inference_steps"))
    advanced = advanced_controls("appearance", main, server=app.server,
                                 defaults={"save_strip": True, "save_reconstructions": True, "save_masks": True})
    run, cancel = _buttons()
    outputs = result_panel("Transfer, strip, reconstructions and AdaIN masks")

    def build(session, job, names, structure_v, appearance_v, smask_up, amask_up, domain_v, prompt_v, noun_v, seed_v,
              steps_v, *raws):
        s_path, s_layers = _editor_content(structure_v, job, "structure")
        a_path, a_layers = _editor_content(appearance_v, job, "appearance")
        s_mask = smask_up or (H.save_mask(s_layers[0], job, "structure_mask") if s_layers and s_layers[0] else None)
        a_mask = amask_up or (H.save_mask(a_layers[0], job, "appearance_mask") if a_layers and a_layers[0] else None)
        extra = H.values_from_controls("appearance", [o for o, _ in advanced], raws)
        return H.appearance(job, app.server, s_path, a_path, s_mask, a_mask, domain_v, prompt_v, noun_v, _int(seed_v),
                            _int(steps_v), extra, names)

    inputs = [structure, appearance, structure_mask, appearance_mask, domain, prompt, noun, seed, steps,
              *[c for _, c in advanced]]
    app.wire(run, cancel, app.job("appearance", build, upload_slots=(2, 3)), inputs, outputs, api_name="appearance")


def translate_tab(app: App) -> None:
    main = ("image", "source", "target", "source_prompt", "target_prompt", "sentences_source", "sentences_target",
            "caption", "contrastive_weight", "seed", "steps")
    with gr.Row():
        image = image_input("Image", height=300, elem_id="translate-image")
        with gr.Column():
            with gr.Row():
                source = gr.Textbox(label="--source", info=_help("translate", "source"), elem_id="translate-source")
                target = gr.Textbox(label="--target", info=_help("translate", "target"), elem_id="translate-target")
            with gr.Row():
                source_prompt = gr.Textbox(label="--source-prompt", info=_help("translate", "source_prompt"))
                target_prompt = gr.Textbox(label="--target-prompt", info=_help("translate", "target_prompt"))
            with gr.Row():
                sentences_source = gr.File(label="--sentences-source (one sentence a line)", file_types=[".txt"],
                                           type="filepath", height=90)
                sentences_target = gr.File(label="--sentences-target", file_types=[".txt"], type="filepath", height=90)
            caption = gr.Textbox(label="--caption", info=_help("translate", "caption") + " when BLIP's weights are "
                                                                                         "available", elem_id="translate-caption")
            with gr.Row():
                weight = gr.Number(value=H.parser_default("translate", "contrastive_weight"), label="--contrastive-weight",
                                   info=_help("translate", "contrastive_weight"))
                steps = gr.Number(value=H.parser_default("translate", "steps"), precision=0, label="--steps",
                                  elem_id="translate-steps")
                seed = gr.Number(value=H.parser_default("translate", "seed"), precision=0, label="--seed")
    advanced = advanced_controls("translate", main, server=app.server)
    run, cancel = _buttons()
    outputs = result_panel("Translation")

    def build(session, job, names, image_v, source_v, target_v, sp, tp, ss, st, caption_v, weight_v, steps_v, seed_v,
              *raws):
        extra = H.values_from_controls("translate", [o for o, _ in advanced], raws)
        return H.translate(job, app.server, image_v, source_v, target_v, sp, tp, ss, st, caption_v, weight_v,
                           _int(seed_v), _int(steps_v), extra, names)

    inputs = [image, source, target, source_prompt, target_prompt, sentences_source, sentences_target, caption, weight,
              steps, seed, *[c for _, c in advanced]]
    app.wire(run, cancel, app.job("translate", build, upload_slots=(0, 5, 6)), inputs, outputs, api_name="translate")


def pair_tab(app: App) -> None:
    with gr.Tab("Apply"):
        main = ("styles", "prompt", "image", "style_scale", "seed", "steps")
        with gr.Row():
            with gr.Column():
                trained = gr.Dropdown(label="Styles trained in this session (several blend)", multiselect=True, choices=[])
                refresh = gr.Button("Refresh the list", size="sm")
                uploaded = gr.File(label="or style files (style.safetensors)", file_count="multiple",
                                   file_types=[".safetensors"], type="filepath", height=90)
                prompt = gr.Textbox(label="--prompt (required)", info=_help("pair", "prompt"))
            with gr.Column():
                image = image_input("--image (optional): restyle this photo", height=200)
                scale = gr.Textbox(label="--style-scale", value=H.shown_default(H.find_option("pair", "style_scale")),
                                   info=_help("pair", "style_scale"))
                with gr.Row():
                    steps = gr.Number(value=H.parser_default("pair", "steps"), precision=0, label="--steps")
                    seed = gr.Number(value=H.parser_default("pair", "seed"), precision=0, label="--seed")
        advanced = advanced_controls("pair", main, server=app.server)
        run, cancel = _buttons()
        outputs = result_panel("Styled image")

        def build(session, job, names, trained_v, uploaded_v, prompt_v, image_v, scale_v, steps_v, seed_v, *raws):
            by_name = {p.name: str(p) for p in app.workspace.styles(session)}
            chosen = [by_name[n] for n in trained_v or [] if n in by_name] + list(uploaded_v or [])
            names = {**names, **{v: f"{k}/" for k, v in by_name.items()}}
            extra = H.values_from_controls("pair", [o for o, _ in advanced], raws)
            return H.pair_apply(job, app.server, chosen, prompt_v, image_v, scale_v, _int(seed_v), _int(steps_v),
                                extra, names)

        inputs = [trained, uploaded, prompt, image, scale, steps, seed, *[c for _, c in advanced]]
        app.wire(run, cancel, app.job("pair-apply", build, upload_slots=(1, 3)), inputs, outputs, api_name="pair_apply")

    def style_choices(request: gr.Request):
        return gr.update(choices=[p.name for p in app.workspace.styles(getattr(request, "session_hash", None))])

    refresh.click(style_choices, None, trained, queue=False)

    with gr.Tab("Train"):
        main = ("content", "styled", "style_word", "subject", "iterations", "seed")
        with gr.Row():
            content = image_input("--content: the photo")
            styled = image_input("--styled: the same scene in the style")
            with gr.Column():
                words = gr.Textbox(label="--style (required)", info=_help("pair-train", "style_word"))
                subject = gr.Textbox(label="--subject", value=H.parser_default("pair-train", "subject"),
                                     info=_help("pair-train", "subject"))
                iterations = gr.Number(value=H.parser_default("pair-train", "iterations"), precision=0,
                                       label="--iterations", info=_help("pair-train", "iterations"))
                seed_t = gr.Number(value=H.parser_default("pair-train", "seed"), precision=0, label="--seed")
        advanced_t = advanced_controls("pair-train", main, server=app.server)
        run_t, cancel_t = _buttons()
        outputs_t = result_panel("Validation images (if any); the style folder to download")

        def build_train(session, job, names, content_v, styled_v, words_v, subject_v, iterations_v, seed_v, *raws):
            style_dir = app.workspace.new_folder(session, "styles", words_v or "style")
            extra = H.values_from_controls("pair-train", [o for o, _ in advanced_t], raws)
            return H.pair_train(job, style_dir, app.server, content_v, styled_v, words_v, subject_v, _int(iterations_v),
                                _int(seed_v), extra, names)

        inputs_t = [content, styled, words, subject, iterations, seed_t, *[c for _, c in advanced_t]]
        app.wire(run_t, cancel_t, app.job("pair-train", build_train, upload_slots=(0, 1)), inputs_t, outputs_t,
                 extra_then=(style_choices, None, trained), api_name="pair_train")


def oneshot_tab(app: App) -> None:
    with gr.Tab("Apply"):
        main = ("run", "input", "seed")
        with gr.Row():
            with gr.Column():
                trained = gr.Dropdown(label="Run trained in this session", choices=[])
                refresh = gr.Button("Refresh the list", size="sm")
                run_path = gr.Textbox(label="or --run: a run folder on this machine", info=_help("oneshot", "run"))
            photos = gr.File(label="--input: photos (FFHQ-aligned faces for the FFHQ model)", file_count="multiple",
                             file_types=["image"], type="filepath")
            seed = gr.Number(value=H.parser_default("oneshot", "seed"), precision=0, label="--seed")
        advanced = advanced_controls("oneshot", main, server=app.server)
        run, cancel = _buttons()
        outputs = result_panel("Stylized photos")

        def build(session, job, names, trained_v, path_v, photos_v, seed_v, *raws):
            runs = {p.name: str(p) for p in app.workspace.runs(session)}
            run_folder = runs.get(trained_v) if trained_v else ((path_v or "").strip() or None)
            extra = H.values_from_controls("oneshot", [o for o, _ in advanced], raws)
            return H.oneshot_apply(job, app.server, run_folder, list(photos_v or []), _int(seed_v), extra,
                                   {**names, **{v: f"{k}/" for k, v in runs.items()}})

        inputs = [trained, run_path, photos, seed, *[c for _, c in advanced]]
        app.wire(run, cancel, app.job("oneshot-apply", build, upload_slots=(2,)), inputs, outputs, api_name="oneshot_apply")

    def run_choices(request: gr.Request):
        return gr.update(choices=[p.name for p in app.workspace.runs(getattr(request, "session_hash", None))])

    refresh.click(run_choices, None, trained, queue=False)

    with gr.Tab("Train"):
        main = ("style", "style_photo", "iterations", "seed")
        with gr.Row():
            style = image_input("--style: the artwork")
            photo = image_input("--style-photo: its photo-like counterpart (`styleforge oneshot prepare`)")
            with gr.Column():
                iterations = gr.Number(value=None, precision=0, label="--iterations", info=_help("oneshot-train", "iterations"))
                seed_t = gr.Number(value=H.parser_default("oneshot-train", "seed"), precision=0, label="--seed")
        advanced_t = advanced_controls("oneshot-train", main, server=app.server)
        run_t, cancel_t = _buttons()
        outputs_t = result_panel("Samples of the run")

        def build_train(session, job, names, style_v, photo_v, iterations_v, seed_v, *raws):
            run_dir = app.workspace.new_folder(session, "runs", Path(style_v).stem if style_v else "run")
            extra = H.values_from_controls("oneshot-train", [o for o, _ in advanced_t], raws)
            return H.oneshot_train(job, run_dir, app.server, style_v, photo_v, _int(iterations_v), _int(seed_v), extra,
                                   names)

        inputs_t = [style, photo, iterations, seed_t, *[c for _, c in advanced_t]]
        app.wire(run_t, cancel_t, app.job("oneshot-train", build_train, upload_slots=(0, 1)), inputs_t, outputs_t,
                 extra_then=(run_choices, None, trained), api_name="oneshot_train")


def compare_tab(app: App) -> None:
    from ..compare import available_methods

    main = ("pairs", "methods", "size", "seed", "list_methods", "outputs")
    with gr.Row():
        contents = gr.File(label="Content images (paired with the references in upload order)", file_count="multiple",
                           file_types=["image"], type="filepath")
        references = gr.File(label="Reference images", file_count="multiple", file_types=["image"], type="filepath")
        with gr.Column():
            methods = gr.CheckboxGroup(choices=list(available_methods()), value=["region"], label="--methods")
            # a text box: empty means the command's default (each method's own size); a number box would send 0
            size = gr.Textbox(value="", max_lines=1, label="--size", info=_help("compare", "size"))
            seed = gr.Number(value=H.parser_default("compare", "seed"), precision=0, label="--seed")
    advanced = advanced_controls("compare", main, server=app.server)
    run, cancel = _buttons()
    outputs = result_panel("Grid (rows: pairs, columns: methods)")
    table = gr.Dataframe(label="Metrics (mean over the pairs)", interactive=False)

    def build(session, job, names, contents_v, references_v, methods_v, size_v, seed_v, *raws):
        extra = H.values_from_controls("compare", [o for o, _ in advanced], raws)
        return H.compare(job, app.server, list(contents_v or []), list(references_v or []), list(methods_v or []),
                         _int(size_v), _int(seed_v), extra, names)

    def show(result):  # the metrics table goes before the status line
        shown = _show(result)
        return [*shown[:-1], None if result is None else _table(result), shown[-1]]

    inputs = [contents, references, methods, size, seed, *[c for _, c in advanced]]
    app.wire(run, cancel, app.job("compare", build, upload_slots=(0, 1), show=show), inputs,
             [*outputs[:-1], table, outputs[-1]], api_name="compare")


def _table(result: H.JobResult):
    import pandas as pd

    return pd.DataFrame(result.table or [], columns=result.headers or ["method"])


def models_panel(app: App) -> None:
    def describe():
        loaded = common.loaded_models()
        lines = [f"- `{' / '.join(str(k) for k in key)}`" for key in loaded] or ["- none yet"]
        s = app.server
        return (f"Server: model `{s.model or 'each command’s default'}`, region model `{s.region_model or 'bundled'}`, "
                f"device `{s.device}`, dtype `{s.dtype}`{', offline' if s.offline else ''}.  \n"
                "Models kept loaded between runs (one per model, device and dtype):\n" + "\n".join(lines))

    with gr.Accordion("Models", open=False):
        info = gr.Markdown(describe())
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm")
            unload = gr.Button("Unload all models", size="sm")
    refresh.click(describe, None, info, queue=False)

    def unload_all():
        with app.runner.job(None):  # waits for a running job: its model stays until it finishes
            common.unload_models()
        return describe()

    unload.click(unload_all, None, info, concurrency_limit=1, concurrency_id="gpu")


CSS = """
.sf-status p { margin: 0.2em 0; }
footer { display: none !important; }
"""


def build_app(server: H.ServerSettings | None = None, workspace: H.Workspace | None = None) -> tuple[gr.Blocks, App]:
    """The page (not launched) and its state."""
    common.keep_models(True)
    app = App(server or H.ServerSettings(), workspace)
    with gr.Blocks(title="styleforge", delete_cache=(600, 3600)) as page:
        gr.Markdown("## styleforge\nReference-based image stylization: the five methods and their comparison, on the "
                    "same code as the `styleforge` command line. Every result comes with its PNG (metadata included) "
                    "and the equivalent command.")
        models_panel(app)
        tabs = (("Region", "region", region_tab), ("Cross-Image Attention", "appearance", appearance_tab),
                ("Translate", "translate", translate_tab), ("Pair", "pair", pair_tab),
                ("One-shot", "oneshot", oneshot_tab), ("Compare", "compare", compare_tab))
        for title, key, lay_out in tabs:
            with gr.Tab(title, elem_id=f"tab-{key}"):
                lay_out(app)

        def end_session(request: gr.Request):  # the page was closed: its run stops, its files go
            session = getattr(request, "session_hash", None)
            app.runner.cancel(session)
            app.workspace.end_session(session)

        page.unload(end_session)
    page.queue(default_concurrency_limit=1, max_size=32)
    return page, app


def launch(page: gr.Blocks, app: App, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, block: bool = True):
    folder = examples_folder()
    return page.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                       allowed_paths=[str(folder)] if folder else None, show_error=False, quiet=True,
                       prevent_thread_lock=not block, css=CSS, footer_links=[])
