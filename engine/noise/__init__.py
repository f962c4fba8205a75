"""Noise models: simulation (``ct`` low-dose CT, ``physics`` raw sensor noise), blind estimation of raw
Poisson–Gaussian noise (``estimate``), its variance stabilisation (``vst``), Bayer packing (``cfa``) and
camera noise profiles calibrated from dark frames (``pnnp``), and what the photo methods make of a
network's output (``guard``: the photo's low band, the detail guard)."""
