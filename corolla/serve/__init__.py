"""`corolla serve`: a local web page to sample from a model, interpolate, edit photos and watch a
training run. An optional extra (`pip install 'corolla[serve]'`): the core install does not import
this package. engine.py holds what is computed, photos.py reads uploads, app.py is the HTTP side."""
