"""Where results are logged beyond the job folder: the one W&B set-up of every job
(:mod:`.wandb_run`) and every W&B object the analyses log (:mod:`.wandb_charts`)."""
