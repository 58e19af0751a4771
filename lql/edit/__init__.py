"""Knowledge editing: the overlay (patched view over a vindex), ``.vlp`` patches,
INSERT / DELETE machinery, DIFF and COMPILE.  See docs/EDITING.md."""

from .overlay import KNN_THRESHOLD, Overlay, OverlayVindex, overlay_view
from .patch import Patch, PatchOp, read_patch, write_patch

__all__ = ["Overlay", "OverlayVindex", "overlay_view", "Patch", "PatchOp", "read_patch",
           "write_patch", "KNN_THRESHOLD"]
