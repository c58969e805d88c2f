"""Domain-agnostic UniMAE core: embeddings, encoder, masking, MAE objectives, checkpoints, engine.

``unimae.core`` never imports a domain plugin (dependencies point apps -> domains -> core).
"""
