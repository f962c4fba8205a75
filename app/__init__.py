"""QuietLens desktop app (PySide6). Only engine calls here; no image maths."""
