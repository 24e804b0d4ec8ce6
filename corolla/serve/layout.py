"""The page's layout and events (serve/page.py has their handlers): columns that wrap on a narrow
screen, one Stop per kind of job, the named API endpoints, and the history kept in the browser."""
from __future__ import annotations

import gradio as gr

from .. import editing, limits
from ..conditioning import DEFAULT_GUIDANCE
from ..samplers import SamplingSettings
from . import photos
from .page import AUTO_GRID, Page, dropdown, number, random_seed, sampler_choices, slider, species_choices

COLUMN_PX = 300  # a column's narrowest: below two of them side by side, they stack


def build(page: Page, refresh_s: float = 5.0) -> gr.Blocks:
    engine = page.engine(page.default)
    with gr.Blocks(title="corolla", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        gr.Markdown("## corolla: sample, edit and interpolate with a diffusion model")
        model, about = _model_picker(page)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = _generate_tab(page, engine, model, about)
            with gr.Tab("Edit", id="edit"):
                photo, edit_tabs = _edit_tab(page, engine, model)
            with gr.Tab("Interpolate", id="interpolate"):
                first_photo = _interpolate_tab(page, engine, model)
            if page.run is not None:
                with gr.Tab("Training", id="run"):
                    _run_tab(page, refresh_s)
        _sends(page, generate, tabs, edit_tabs, photo, first_photo)
        history = generate["history"]
        blocks.load(page.load_history, history, [history, generate["history_gallery"]], api_visibility="private")
    return blocks


def _sampler_fields(engine, grid_label: str = "Time grid (auto: uniform for ddim, log-SNR for the others)"):
    names, grids = sampler_choices()
    sampler = dropdown(names, value=SamplingSettings.sampler, label="Sampler")
    grid = dropdown(grids, value=AUTO_GRID, label=grid_label)
    eta = slider(0, 1, value=SamplingSettings.eta, step=0.05, label="eta (ddim only: 0 deterministic, 1 DDPM-like)")
    return sampler, grid, eta


def _model_picker(page: Page):
    """Above the tabs: the one model that every tab's jobs use."""
    with gr.Row(equal_height=False):  # in columns, which stack on a narrow screen (a Markdown alone does not)
        with gr.Column(scale=1, min_width=COLUMN_PX):
            model = dropdown(page.catalogue.labels, value=page.default, label="Model (for every tab)",
                             elem_id="model")
        with gr.Column(scale=2, min_width=COLUMN_PX):
            about = gr.Markdown(page.catalogue.describe(page.default), elem_id="model-info")
    return model, about


def _generate_tab(page: Page, engine, model, about) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=COLUMN_PX):
            species = dropdown(species_choices(engine.classes), value=[], multiselect=True, filterable=True,
                               label="Species: one row each, in the order chosen (none: one unconditional grid)",
                               visible=bool(engine.classes), elem_id="species")
            guidance = slider(0, 10, value=DEFAULT_GUIDANCE, step=0.5, visible=bool(engine.classes),
                              label=f"Guidance (0 unconditional, 1 conditional; up to {limits.MAX_GUIDANCE:g})",
                              elem_id="guidance")
            with gr.Row(equal_height=True):
                seed = number(SamplingSettings.seed, label="Seed", elem_id="seed", min_width=100)
                first = number(0, label="First image", elem_id="first", min_width=100,
                               info="image i of a seed is the same in any batch")
                dice = gr.Button("Random seed", elem_id="random-seed", size="sm", min_width=80)
            count = slider(1, engine.max_images, value=min(16, engine.max_images), step=1, label="Images (per row)",
                           elem_id="count")
            steps = slider(1, engine.limits.max_steps, value=SamplingSettings.steps, step=1, label="Steps",
                           elem_id="steps")
            with gr.Accordion("Sampler, time grid, eta", open=False):
                sampler, grid, eta = _sampler_fields(engine)
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-button")
            status = gr.Markdown(elem_id="generate-status")
            with gr.Accordion("Make again from a PNG's recipe", open=False):
                png = gr.File(file_types=[".png"], label="A PNG made by corolla (page or command)",
                              elem_id="recipe-png")
                recipe_note = gr.Markdown(elem_id="recipe-note")
        with gr.Column(scale=2, min_width=COLUMN_PX):
            preview = gr.Image(label="Preview: the network's prediction at each step", format="png",
                               interactive=False, elem_id="preview", height=256, buttons=[])
            gallery = gr.Gallery(label="Results (click one to enlarge it and see its recipe)", columns=4,
                                 format="png", elem_id="results", height="auto", object_fit="contain")
            with gr.Row():
                grid_file = gr.DownloadButton("Download the grid", visible=False, elem_id="download-grid")
                zip_file = gr.DownloadButton("Download all (zip)", visible=False, elem_id="download-zip")
            with gr.Group(visible=False) as chosen_box:
                chosen = gr.Markdown(elem_id="chosen-recipe")
                with gr.Row():
                    reuse = gr.Button("Reuse this seed", size="sm", elem_id="reuse-seed")
                    to_edit = gr.Button("Send to edit", size="sm", elem_id="send-edit")
                    to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="send-inpaint")
                    to_interpolate = gr.Button("Send to interpolate", size="sm", elem_id="send-interpolate")
                    one_file = gr.DownloadButton("Download this image", size="sm", elem_id="download-one")
            history_gallery = gr.Gallery(label="History (kept in this browser; click one to show it again)",
                                         columns=8, height=150, allow_preview=False, object_fit="contain",
                                         fit_columns=False, elem_id="history")
    current, selected = gr.State(None), gr.State(None)
    history = gr.BrowserState([], storage_key="corolla-history")
    fields = [model, species, guidance, seed, first, count, steps, sampler, grid, eta]
    model.input(page.model_controls, model, [about, species, guidance, count, steps], api_visibility="private")
    dice.click(random_seed, None, seed, api_visibility="private", queue=False)
    job = go.click(page.generate, fields, [preview, status, gallery, grid_file, zip_file, current],
                   api_name="generate", concurrency_id="generate", concurrency_limit=1,
                   show_progress_on=[gallery])
    job.success(page.remember, [current, history], [history, history_gallery], api_visibility="private")
    stop.click(None, None, None, cancels=[job], api_visibility="private")
    gallery.select(page.choose, current, [chosen, chosen_box, one_file, selected], api_visibility="private")
    reuse.click(page.reuse, [current, selected], fields, api_visibility="private")
    png.upload(page.from_png, png, [*fields, recipe_note], api_visibility="private")
    history_gallery.select(page.open_history, history, [gallery, current, grid_file, zip_file, status],
                           api_visibility="private")
    return dict(current=current, selected=selected, to_edit=to_edit, to_inpaint=to_inpaint,
                to_interpolate=to_interpolate, history=history, history_gallery=history_gallery)


def _edit_tab(page: Page, engine, model):
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=COLUMN_PX):
            photo = gr.Image(type="filepath", label="Photo: drop one here, paste or upload",
                             sources=["upload", "clipboard"], elem_id="photo", height=280)
            square = gr.Image(label="The central square the model uses (the rest is left out)", interactive=False,
                              elem_id="square", height=280, format="png")
        with gr.Column(scale=2, min_width=COLUMN_PX):
            with gr.Tabs() as edit_tabs:
                with gr.Tab("SDEdit", id="sdedit"):
                    strength = slider(0, 1, value=0.6, step=0.05, elem_id="strength",
                                      label="Strength: 0 keeps the photo, 1 samples afresh")
                    edit_steps = slider(1, engine.limits.max_steps, value=SamplingSettings.steps, step=1, label="Steps",
                                        elem_id="edit-steps")
                    edit_seed = number(SamplingSettings.seed, label="Seed", elem_id="edit-seed")
                    with gr.Accordion("Sampler, time grid, eta", open=False):
                        sampler, grid, eta = _sampler_fields(engine)
                    with gr.Row():
                        edit_go = gr.Button("Edit", variant="primary", elem_id="edit-button")
                        edit_stop = gr.Button("Stop", variant="stop", elem_id="edit-stop")
                with gr.Tab("Inpaint", id="inpaint"):
                    editor = gr.ImageEditor(type="numpy", label="Paint over what to fill (brush, eraser, undo)",
                                            sources=[], transforms=[], layers=False, image_mode="RGBA",
                                            brush=gr.Brush(colors=[photos.BRUSH], color_mode="fixed"),
                                            eraser=gr.Eraser(), elem_id="mask-editor", height=420,
                                            canvas_size=(512, 512), format="png")
                    box, paint_box = _box_fields()
                    inpaint_steps = slider(1, engine.limits.max_steps, value=editing.INPAINTING.steps, step=1,
                                           label="Steps", elem_id="inpaint-steps")
                    with gr.Row():
                        resample = slider(1, 20, value=editing.RESAMPLE, step=1,
                                          label="Resample (RePaint's R; 1: plain)", elem_id="inpaint-resample")
                        jump = slider(1, 20, value=editing.JUMP, step=1, label="Jump (RePaint's J)",
                                      elem_id="inpaint-jump")
                    inpaint_seed = number(SamplingSettings.seed, label="Seed", elem_id="inpaint-seed")
                    with gr.Row():
                        inpaint_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
                        inpaint_stop = gr.Button("Stop", variant="stop", elem_id="inpaint-stop")
            photo_status = gr.Markdown(elem_id="photo-status")
            shown = gr.Gallery(label="The photo as the model takes it, the mask, the result", columns=3,
                               format="png", elem_id="photo-result", height="auto", object_fit="contain")
            result_file = gr.DownloadButton("Download the result", visible=False, elem_id="download-edit")
    photo.change(page.photo_changed, photo, [square, editor, *box], api_visibility="private")
    paint_box.click(page.paint_box, [photo, editor, *box], editor, api_visibility="private")
    outputs = [shown, photo_status, result_file]
    edit_job = edit_go.click(page.edit, [model, photo, strength, edit_steps, edit_seed, sampler, grid, eta], outputs,
                             api_name="edit", concurrency_id="photos", concurrency_limit=1,
                             show_progress_on=[shown])
    inpaint_job = inpaint_go.click(page.inpaint, [model, photo, editor, inpaint_steps, resample, jump, inpaint_seed],
                                   outputs, api_name="inpaint", concurrency_id="photos", concurrency_limit=1,
                                   show_progress_on=[shown])
    edit_stop.click(None, None, None, cancels=[edit_job], api_visibility="private")
    inpaint_stop.click(None, None, None, cancels=[inpaint_job], api_visibility="private")
    return photo, edit_tabs


def _box_fields():
    """A box to paint into the mask, in the photo's pixels (the editor has no box tool)."""
    gr.Markdown("Or paint a box, in the photo's pixels from its top left (`corolla inpaint --box X,Y,W,H`):")
    with gr.Row(equal_height=True):
        box = [number(None, label=name, elem_id=f"box-{name}", min_width=70) for name in ("x", "y", "width", "height")]
        paint = gr.Button("Paint this box", size="sm", elem_id="paint-box", min_width=90)
    return box, paint


def _interpolate_tab(page: Page, engine, model):
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=COLUMN_PX):
            gr.Markdown("Between image 0 of two seeds, or between two photos (both inverted to their noise).")
            with gr.Row():
                first = number(3, label="From seed", elem_id="interp-first", min_width=100)
                second = number(7, label="To seed", elem_id="interp-second", min_width=100)
            with gr.Row():
                first_photo = gr.Image(type="filepath", label="or from a photo", sources=["upload", "clipboard"],
                                       elem_id="interp-first-photo", height=160, min_width=120)
                second_photo = gr.Image(type="filepath", label="to a photo", sources=["upload", "clipboard"],
                                        elem_id="interp-second-photo", height=160, min_width=120)
            frames = slider(2, engine.limits.max_frames, value=editing.FRAMES, step=1, label="Frames",
                            elem_id="interp-frames")
            steps = slider(1, engine.limits.max_steps, value=SamplingSettings.steps, step=1, label="Steps",
                           elem_id="interp-steps")
            with gr.Row():
                go = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
                stop = gr.Button("Stop", variant="stop", elem_id="interp-stop")
            status = gr.Markdown(elem_id="interp-status")
        with gr.Column(scale=2, min_width=COLUMN_PX):
            frame = gr.Image(label="Frame", format="png", interactive=False, elem_id="frame", height=320)
            scrubber = gr.Slider(0, editing.FRAMES - 1, value=0, step=1, label="Frame", visible=False,
                                 elem_id="interp-slider")
            weight = gr.Markdown(elem_id="interp-weight")
            gif = gr.DownloadButton("Download the GIF", visible=False, elem_id="download-gif")
    frames_result = gr.State(None)
    job = go.click(page.interpolate, [model, first, second, first_photo, second_photo, frames, steps],
                   [frame, status, scrubber, gif, frames_result], api_name="interpolate", concurrency_id="generate",
                   concurrency_limit=1, show_progress_on=[frame])
    job.success(page.frame, [frames_result, scrubber], [frame, weight], api_visibility="private")
    stop.click(None, None, None, cancels=[job], api_visibility="private")
    scrubber.change(page.frame, [frames_result, scrubber], [frame, weight], api_visibility="private", queue=False)
    return first_photo


def _run_tab(page: Page, refresh_s: float) -> None:
    view = page.run.view()
    status = gr.Markdown(view.status, elem_id="run-status")
    curves = gr.LinePlot(view.curves, x="step", y="loss", color="curve", label="Loss", elem_id="loss-curve",
                         height=300)
    grids = gr.Gallery(list(view.grids), label="Sample grids, newest first", columns=4, height=480,
                       format="png", elem_id="run-grids", object_fit="contain")
    shown = gr.State(view.grids)
    timer = gr.Timer(refresh_s)

    def refresh(before):
        now = page.run.view()
        return now.status, now.curves, list(now.grids) if now.grids != before else gr.skip(), now.grids
    timer.tick(refresh, shown, [status, curves, grids, shown], api_visibility="private", concurrency_id="run",
               concurrency_limit=None, show_progress="hidden")


def _sends(page: Page, generate: dict, tabs, edit_tabs, photo, first_photo) -> None:
    """A result image sent to another tab."""
    chosen = [generate["current"], generate["selected"]]
    generate["to_edit"].click(lambda *a: (page.send(*a), gr.Tabs(selected="edit"), gr.Tabs(selected="sdedit")),
                              chosen, [photo, tabs, edit_tabs], api_visibility="private")
    generate["to_inpaint"].click(lambda *a: (page.send(*a), gr.Tabs(selected="edit"), gr.Tabs(selected="inpaint")),
                                 chosen, [photo, tabs, edit_tabs], api_visibility="private")
    generate["to_interpolate"].click(lambda *a: (page.send(*a), gr.Tabs(selected="interpolate")), chosen,
                                     [first_photo, tabs], api_visibility="private")
