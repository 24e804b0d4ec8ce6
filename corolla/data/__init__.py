"""An image folder as training data: scanning, decoding, caching, labels, the data set download."""
