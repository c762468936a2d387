""" Looking into built models: soft masks and responses (``masks``), figures of them (``figures``), MAC counts
(``flops``), a model's numbers (``summary``) and inference BN folding (``fuse``). Builds on the models. """
