"""Run a trained corolla model without PyTorch: ONNX export, and sampling with numpy and onnxruntime.

- corolla.portable.export (needs torch): export_onnx writes a folder with the EMA network as
  denoiser.onnx (BatchNorm folded by corolla.folding, dynamic batch, the class as an input of a conditional model)
  and sampler.json (what a sampler needs), after checking onnxruntime's output against PyTorch's.
- corolla.portable.sampling (numpy and onnxruntime only): load such a folder and generate with
  corolla's samplers and grids; the same seed gives the PyTorch float32 images to within 1/255.
- corolla.portable.web (needs torch): build writes that folder with a static page beside it, and
  onnxruntime-web's WASM files, so that a browser generates images with no server of its own.
- corolla.portable.folder (no torch): the folder's files, and reading and checking sampler.json.
- corolla.portable.noise (numpy only): torch's CPU generator (mt19937 and torch.randn) in numpy,
  so that image i of a seed starts from the noise PyTorch gives it.
- corolla.portable.mix (numpy only): ClassMix, a class drawn for each image at a mix of classes,
  the same draw in PyTorch's sampling, the ONNX sampler and (from the export's class_mix) the page.
- corolla.portable.upsampling (numpy only): a cascade's bicubic upsampling, as torch's.
- corolla.portable.arrays (numpy only): the array backends that let corolla.schedules and
  corolla.samplers run on numpy arrays as well as torch tensors.

Nothing here is imported with the package, so a service without torch imports only what it uses.
"""
