"""`gpt2 batch`: JSON Lines in, resumable JSON Lines out, on local workers or a Ray cluster."""
