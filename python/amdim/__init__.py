"""amdim: AMDIM's two augmented views for PyTorch, from amdim-load.

    import amdim
    loader = amdim.Loader("data.lmdb", batch=256, workers=8, epochs=2, seed=3)
    for b in loader:          # b.view1, b.view2: torch.uint8 (B, H, W, 3), zero-copy
        x1 = amdim.normalize(b.view1, device="cuda")

docs/python.md has the whole contract."""
from .loader import Batch, Loader, LoaderError
from .normalize import mean_std, normalize

__version__ = "0.1.0"
__all__ = ["Loader", "Batch", "LoaderError", "normalize", "mean_std"]
