"""`corolla serve`: a local web page to sample from a model, interpolate between seeds and watch a
training run. An optional extra (`pip install 'corolla[serve]'`): the core install does not import
this package; engine.py holds what is computed, app.py the HTTP side."""
