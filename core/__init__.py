"""Stream-batch diffusion: schedules, the rolling latent buffer, guidance, the similarity filter, the prompt
cache and the threaded frame pipeline. Knows nothing of cameras, hotkeys or OBS, nor which runtime runs the model."""
