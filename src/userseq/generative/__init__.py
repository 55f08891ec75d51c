"""Generative retrieval: semantic IDs, an encoder-decoder that writes the next item, beam search
and Diverse Beam Search (docs/generative.md)."""
