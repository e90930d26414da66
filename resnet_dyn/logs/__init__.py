"""Where results are logged beyond the job folder: the one W&B set-up of every job."""
