"""The provenance line writers record in outputs (DICOM DerivationDescription, NIfTI ``descrip``), and
how a file QuietLens wrote is recognised by it."""
from __future__ import annotations

from ..image import Image

DENOISED, WRITTEN = "Denoised with QuietLens", "Written by QuietLens"
STAMPS = (DENOISED, WRITTEN)  # every provenance line starts with one: how a file QuietLens wrote is known


def provenance_text(image: Image) -> str:
    """One line naming the software, method, parameters and model that made ``image``, from
    ``meta['provenance']`` (set by the pipeline; optional), for savers that record provenance."""
    from .. import __version__

    prov = image.meta.get("provenance") or {}
    text = f"{DENOISED if prov.get('method') else WRITTEN} {prov.get('version') or __version__}"
    if prov.get("method"):
        params = ", ".join(f"{k}={v:g}" for k, v in (prov.get("params") or {}).items())
        text += f", method {prov['method']}" + (f" ({params})" if params else "")
    if prov.get("model_sha256"):
        text += f", model sha256 {prov['model_sha256']}"
    return text
