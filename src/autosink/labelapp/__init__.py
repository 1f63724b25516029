"""Human-in-the-loop labeling web app (`autosink label serve`).

A local web page that lists episodes with their review state and opens one as a timeline of
frames (model output, faucet state, automatic label and confidence, human label), labelled
from the keyboard. Saving writes ``data/labels/<episode>.csv`` through
:func:`autosink.data.labels.write_human_labels`; the ``label`` DVC stage reads those files.

Standard library HTTP server (:mod:`autosink.labelapp.server`), data access
(:mod:`autosink.labelapp.data`), static page files in ``static/`` (plain HTML/CSS/JS).
"""

from autosink.labelapp.data import LabelData
from autosink.labelapp.server import LabelServer, serve

__all__ = ["LabelData", "LabelServer", "serve"]
