"""Plot files: matplotlib.pyplot on the Agg backend, imported only when something is drawn (importing
capsim stays fast and needs no display), and the check that a plot path can be written, run before
any work is done. Every plot of every package goes through these two."""
from __future__ import annotations

import os

IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_plot_path(path) -> None:
    """Raise OSError (one line) unless an image can be written at path; call it before any work is done."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise OSError(f"{p}: is a folder, not a plot file")
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{p}: plot file needs one of the suffixes {', '.join(IMAGE_SUFFIXES)}")
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        raise OSError(f"{p}: cannot write the plot: folder {parent} does not exist")
    existed = os.path.exists(p)
    try:
        with open(p, "ab"):
            pass
    except OSError as e:
        raise OSError(f"{p}: cannot write the plot ({e.strerror or e})") from None
    if not existed:
        os.unlink(p)
