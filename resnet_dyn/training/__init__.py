"""Everything Lightning: the training module, its callbacks and loggers, checkpoint files,
preemption, and one training job (:func:`resnet_dyn.training.job.run_job`)."""
