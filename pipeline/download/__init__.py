"""Download side of build_dataset: a hardened urllib opener and img2dataset run in-process."""

import os

# img2dataset imports albumentations, which checks for updates over the network on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
