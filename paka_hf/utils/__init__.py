"""The bottom layer: small rules every other layer shares, each written once.

- :mod:`~paka_hf.utils.errors`: user-facing errors (:class:`~paka_hf.utils.errors.PaKAUserError`: one line
  ``error: ...``, exit status 2) and the checks that raise them;
- :mod:`~paka_hf.utils.paths`: whether a name is a local path or a Hub id, checked before any network call;
- :mod:`~paka_hf.utils.files`: the names of the files and folders of an output folder and its checkpoints;
- :mod:`~paka_hf.utils.paper`: the paper's title, arXiv id, citation and Hub tags;
- :mod:`~paka_hf.utils.imaging`: any decoded PIL image → upright 8-bit RGB;
- :mod:`~paka_hf.utils.schedules`: the cosine schedule of the teacher momentum and the weight decay.

Imports nothing from the rest of ``paka_hf``, so any layer can use it.
"""
