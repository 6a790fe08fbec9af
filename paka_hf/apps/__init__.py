"""The apps layer: what a person looks at, built on a trained model.

- :mod:`~paka_hf.apps.explorer`: the Gradio feature explorer (base and post-trained model side by side);
- :mod:`~paka_hf.apps.space`: that explorer as a Gradio Space next to the model on the Hub;
- :mod:`~paka_hf.apps.pictures`: the PCA, clustering and retrieval pictures of the model card and the explorer;
- :mod:`~paka_hf.apps.demo`: the offline demo's tiny model and generated images (``make demo``).

May import every layer below it (:mod:`paka_hf.training` and down); of the other layers only :mod:`paka_hf.commands`
imports it.
Gradio is an optional extra (``pip install 'paka_hf[app]'``): importing this package does not need it.
"""
