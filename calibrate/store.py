"""Where `capsim calibrate SOURCES` keeps its profile when no -o is given, so that `capsim validate
SOURCES` (no --profile) validates that profile: one file per set of sources, under
$CAPSIM_PROFILE_DIR (default ~/.cache/capsim/profiles)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def store_dir() -> Path:
    return Path(os.environ.get("CAPSIM_PROFILE_DIR") or Path.home() / ".cache" / "capsim" / "profiles")


def _canonical(source: str) -> str:
    p = Path(source)
    return str(p.resolve()) if p.exists() else source  # 'seed' and other names stay as given


def stored_profile_path(sources: list[str]) -> Path:
    """The profile file of these sources: the same whatever their order or spelling of the path."""
    canon = sorted({_canonical(s) for s in sources})
    digest = hashlib.sha1("\n".join(canon).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(Path(c).name or c for c in canon[:2]))[:60].strip("-")
    return store_dir() / f"{slug or 'profile'}-{digest}.json"
