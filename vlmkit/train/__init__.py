"""Training: contrastive (dual encoder), align (stage 1) and instruct (stage 2), resumable and torchrun-ready.

The inference package never imports this one (as open_clip keeps open_clip_train apart).
"""
