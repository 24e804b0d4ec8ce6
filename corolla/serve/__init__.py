"""`corolla serve`: a local web page (Gradio) to sample from a model, edit photos, interpolate and
watch a training run. An optional extra (`pip install 'corolla[serve]'`): the core install does
not import this package. engine.py holds what is computed and checks requests; guards.py the
model's turns and the loopback rule; jobs.py runs a job in a thread for the page; models.py the
models offered; results.py the PNGs made, with their recipes; photos.py reads uploads; page.py
the handlers, layout.py the page, app.py the server."""
