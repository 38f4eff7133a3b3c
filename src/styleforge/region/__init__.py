"""Region-wise photorealistic style transfer (TCP: a swapping autoencoder with code-consistency and
content-alignment losses). See ``inference.RegionStylizer`` for use and ``train`` for training."""
