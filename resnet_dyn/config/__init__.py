"""From configs to objects: ``_target_`` instantiation with one-line errors (:mod:`.build`),
value checks (:mod:`.checks`), and Hydra callbacks run before any job (:mod:`.hydra_callbacks`)."""
