"""The analyses a config asks for, run on a trained network: results, arrays and figures
(:mod:`.run`), and one ``resnet-dyn-analyze`` job (:mod:`.job`). The mathematics lives in
:mod:`resnet_dyn.dynamics`; checkpoints are read by :mod:`resnet_dyn.models.checkpoints`."""
